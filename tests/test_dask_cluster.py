"""A standing Dask cluster, reached by address as a lab's cluster would be: a `dask scheduler`
and two `dask worker` processes (one thread each) on 127.0.0.1 run the prepare flow and the
nightly inference. Their tables equal a thread-pool run's, and the model is loaded once per
worker process, not once per image or per night. Slow: real processes, TensorFlow in each."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from neuroseg import storage, synth
from neuroseg.cluster import StandingCluster
from tests.conftest import REPO

SIZE = {"height": 256, "width": 320}
VOLATILE = ["processed_at", "flow_run_id", "image_uri"]  # when, which run, which root


def _cells(root: str) -> pd.DataFrame:
    df = pd.read_parquet(storage.join(root, "cells")).drop(columns=VOLATILE)
    df["plate_id"] = df["plate_id"].astype(str)
    return df.sort_values(["plate_id", "image_id", "cell_id"]).reset_index(drop=True)


def _prepared(result: dict) -> dict:
    out = result["prepared_uri"]
    return {
        "version": result["version"],
        "tiles": storage.read_parquet(storage.join(out, "tiles.parquet")),
        "cells": storage.read_parquet(storage.join(out, "cells.parquet")),
        "splits": storage.read_json(storage.join(out, "splits.json")),
    }


def _night(kind: str, root: str, source: str, dataset: str, address: str | None) -> dict:
    from flows.infer import InferParams, nightly_inference
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from tasks.common import ExecutorConfig

    executor = (
        ExecutorConfig(kind="threads", workers=2)
        if kind == "threads"
        else ExecutorConfig(kind="dask", address=address)
    )
    ingest(IngestParams(source=dataset, root=root, dataset="synth"))
    prep = prepare(
        PrepareParams(root=root, dataset="synth", tile=128, min_overlap=32, executor=executor)
    )
    assert not prep["cached"]
    shutil.copytree(os.path.join(source, "uploads"), os.path.join(root, "uploads"))
    night = nightly_inference(InferParams(root=root, model="default", executor=executor))
    assert night["images"] == 4 and night["failed"] == 0
    return {"prepared": _prepared(prep), "cells": _cells(root)}


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "masks", "--workers", "2"],
        ["bench", "orchestration", "--workers", "2", "--dask-address", "tcp://127.0.0.1:1"],
        ["bench", "orchestration", "--workers", "0"],
    ],
)
def test_bench_cluster_options_are_checked(argv, capsys):
    """Refused before Prefect is imported (its log handler would keep capsys's stream)."""
    from neuroseg.cli import main

    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("neuroseg: error: ")


@pytest.mark.slow
def test_standing_cluster_runs_prepare_and_nightly_like_threads(prefect_api, tmp_path):
    from flows.bench import bench_dask_cluster
    from tasks.infer import cache_info

    dataset = synth.write_dataset(str(tmp_path / "incoming"), name="synth", images=3, **SIZE)
    source = str(tmp_path / "plates")
    synth.write_uploads(source, plates=2, images_per_plate=2, seed=5, **SIZE)
    threads = _night("threads", str(tmp_path / "threads"), source, dataset, None)

    cluster = StandingCluster(2, nthreads=1, cwd=str(REPO), idle_timeout=600)
    try:
        cluster.start()
        address = cluster.address
        assert address.startswith("tcp://127.0.0.1:") and cluster.n_workers() == 2
        dask = _night("dask", str(tmp_path / "dask"), source, dataset, address)
        with cluster.client() as client:
            after_night = client.run(cache_info)
        # a second night on the same standing cluster (the bench, by address) loads nothing
        bench = bench_dask_cluster(address=address, images=2, seed=7, **SIZE)
        with cluster.client() as client:
            after_bench = client.run(cache_info)
    finally:
        procs = list(cluster.procs)
        cluster.close()
    assert procs and all(p.poll() is not None for p in procs), "cluster processes left running"

    # the same tables as on threads
    assert dask["prepared"]["version"] == threads["prepared"]["version"]
    assert dask["prepared"]["splits"] == threads["prepared"]["splits"]
    for name in ("tiles", "cells"):
        pd.testing.assert_frame_equal(dask["prepared"][name], threads["prepared"][name])
    assert len(threads["cells"]) > 0
    pd.testing.assert_frame_equal(dask["cells"], threads["cells"])

    # the model was loaded in both worker processes, once each, and served every image
    def served(info: dict) -> dict[int, dict]:
        """Per worker pid: model loads and cache hits (all models together)."""
        return {
            i["pid"]: {k: sum(m[k] for m in i["models"]) for k in ("loads", "hits")}
            for i in info.values()
        }

    night = served(after_night)
    assert len(night) == 2 and os.getpid() not in night, after_night
    assert [m["loads"] for m in night.values()] == [1, 1], after_night
    assert sum(m["loads"] + m["hits"] for m in night.values()) == 4  # one call per image
    later = served(after_bench)
    assert later.keys() == night.keys() and [m["loads"] for m in later.values()] == [1, 1]
    assert bench["model_loads"] == [1, 1] and bench["mode"] == "address"
    (run,) = bench["runs"]
    assert run["workers"] == 2 and run["images"] == 2 and run["failed"] == 0
    assert run["images_per_second"] > 0 and bench["scaling_efficiency"] is None
    assert bench["projection"]["worker_seconds_per_image"] == pytest.approx(
        2 / run["images_per_second"]
    )
