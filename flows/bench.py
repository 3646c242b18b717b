"""``neuroseg bench orchestration``: what Prefect costs over calling the library directly.

All variants run in ONE process and one call, each on a fresh temporary storage root (so no
manifest, processed record or prepared-version cache skips work), and the results are ratios:
this machine is shared and noisy, and absolute seconds drift between runs.

(a) Nightly inference of a plate: :func:`flows.infer.nightly_inference` against
    :func:`neuroseg.benchmarks.inference.library_plate` (the same model load, pending search
    and :func:`neuroseg.inference.process_image` with overlays, in a plain loop). The flow runs
    twice: with one worker thread (the same concurrency as the loop: the ratio is the
    orchestration overhead, target < 15 %) and with the default executor (two threads, what the
    nightly deployment runs); the loop runs before and after the flows and its mean is the
    reference, which cancels a steady drift of the machine's load. Each flow run loads the
    model itself (the per-process model cache of ``tasks.infer`` is emptied first), as the loop
    does. On this shared 2-core machine the load of other users moves a 25 s run by several
    seconds, as much as the overhead itself; so the orchestration seconds are also measured
    on a plate of the same number of small images (256x320: a tenth of a second of work per
    image, run twice each, alternating) and related to the full-size loop
    (``projected_overhead_ratio``).
(b) Ingest + prepare of an annotated synthetic dataset: the ``ingest`` and ``prepare`` flows
    (default executors) against ``discover_dataset`` + ``ingest_one`` in a loop, then
    ``prepare_image`` in a loop + ``finalize``.
(c) The prepare flow on its thread pool against a temporary local Dask cluster (2 worker
    processes; cluster start-up included, as a nightly run on a fresh cluster would pay it).

Before timing, one trivial flow run starts the API client (and, without ``PREFECT_API_URL``,
Prefect's temporary in-process server: ``prefect_startup_seconds``) and one prediction warms
TensorFlow, so neither one-off cost lands on the first variant.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from prefect import flow

from neuroseg import storage
from neuroseg.benchmarks.inference import bench_model_uri, count_rows, library_plate, load_average

__all__ = ["OVERHEAD_TARGET", "bench_dask_cluster", "bench_orchestration"]

#: Target of the Prefect overhead on nightly inference (flow seconds / loop seconds - 1).
OVERHEAD_TARGET = 0.15
DATASET = "synthetic"
#: Image size of the isolated overhead measurement.
SMALL = {"height": 256, "width": 320}


@flow(name="bench-warmup")
def _warmup() -> int:
    return 1


def _timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def _copy_tree(src: str, dst: str) -> None:
    shutil.copytree(src, dst)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- (a) inference


def _flow_plate(root: str, model_uri: str, workers: int) -> dict:
    import tasks.infer
    from flows.infer import InferParams, nightly_inference
    from tasks.common import ExecutorConfig

    tasks.infer._BUNDLES.clear()  # the flow loads its model, like the loop
    params = InferParams(
        root=root, model=model_uri, executor=ExecutorConfig(kind="threads", workers=workers)
    )
    seconds, summary = _timed(nightly_inference, params)
    cells_uri = storage.join(root, "cells")
    return {
        "seconds": seconds,
        "workers": workers,
        "images": summary["images"],
        "failed": summary["failed"],
        "cells": summary["cells"],
        "rows": count_rows(cells_uri),
    }


def _inference(tmp: str, model_uri: str, *, images: int, height: int, width: int, seed: int):
    from neuroseg import synth

    source = os.path.join(tmp, "inference-source")
    synth.write_uploads(
        source, plates=1, images_per_plate=images, seed=seed, height=height, width=width
    )
    order = ("library", "flow_1_thread", "flow_default", "library_again")  # ABBA-like: drift
    roots = {}
    for name in order:
        roots[name] = os.path.join(tmp, f"infer-{name}")
        _copy_tree(os.path.join(source, "uploads"), os.path.join(roots[name], "uploads"))
    runs = {}
    for name in order:
        if name.startswith("library"):
            runs[name] = library_plate(roots[name], model_uri)
        else:
            runs[name] = _flow_plate(roots[name], model_uri, 1 if name == "flow_1_thread" else 2)
        runs[name]["images_per_second"] = runs[name]["images"] / runs[name]["seconds"]
    lib = (runs["library"]["seconds"] + runs["library_again"]["seconds"]) / 2
    extra = runs["flow_1_thread"]["seconds"] - lib
    overhead = extra / lib
    small = _overhead_small(tmp, model_uri, images=images, seed=seed)
    projected = small["overhead_seconds"] / lib
    return {
        **runs,
        "small_images": small,
        "projected_overhead_ratio": projected,
        "library_seconds": lib,
        "overhead_ratio": overhead,
        "overhead_seconds": extra,
        "overhead_seconds_per_image": extra / images,
        "overhead_ratio_default_executor": runs["flow_default"]["seconds"] / lib - 1.0,
        "target": {
            "overhead_below": OVERHEAD_TARGET,
            "met": bool(overhead < OVERHEAD_TARGET),
            "met_projected": bool(projected < OVERHEAD_TARGET),
        },
        "same_rows": len({r["rows"] for r in runs.values()}) == 1,
        "note": "library_seconds is the mean of the loop run before and after the flows; "
        "overhead = flow with 1 thread (same concurrency as the loop) over it. "
        "projected_overhead_ratio = orchestration seconds measured on small images "
        "(small_images, where noise in the work is small) over library_seconds",
    }


def _overhead_small(tmp: str, model_uri: str, *, images: int, seed: int, repeat: int = 2):
    """Orchestration seconds on a plate of small images, where the work is a fraction of a
    second per image: loop and 1-thread flow alternate ``repeat`` times, medians kept."""
    import statistics

    from neuroseg import synth

    source = os.path.join(tmp, "overhead-source")
    synth.write_uploads(source, plates=1, images_per_plate=images, seed=seed, **SMALL)
    times: dict[str, list[float]] = {"library": [], "flow": []}
    for i in range(repeat):
        for name in ("library", "flow"):
            root = os.path.join(tmp, f"overhead-{name}-{i}")
            _copy_tree(os.path.join(source, "uploads"), os.path.join(root, "uploads"))
            if name == "library":
                times[name].append(library_plate(root, model_uri)["seconds"])
            else:
                times[name].append(_flow_plate(root, model_uri, 1)["seconds"])
    lib, fl = statistics.median(times["library"]), statistics.median(times["flow"])
    return {
        "image_size": [SMALL["height"], SMALL["width"]],
        "images": images,
        "library_seconds": lib,
        "flow_seconds": fl,
        "overhead_seconds": fl - lib,
        "runs": times,
    }


# ----------------------------------------------------------------------------- (b, c) prepare


def _library_ingest(root: str, dataset_uri: str) -> list[dict]:
    from neuroseg import ingest

    cands, problems = ingest.discover_dataset(dataset_uri, DATASET)
    if problems:
        raise ValueError(f"{dataset_uri}: unexpected problems in the synthetic dataset: {problems}")
    return [ingest.ingest_one(root, cand) for cand in cands]


def _library_prepare(root: str, *, tile: int, min_overlap: int, seed: int) -> dict:
    from neuroseg import ingest, prepare

    records = ingest.read_manifest(root, "datasets", DATASET).to_dict("records")
    version = prepare.prepared_version(records, tile=tile, min_overlap=min_overlap, seed=seed)
    out = prepare.prepared_uri(root, DATASET, version)
    metas = [
        prepare.prepare_image(
            out, r["image_id"], r["image_uri"], r["mask_uri"], tile=tile, min_overlap=min_overlap
        )
        for r in records
    ]
    params = {"tile": tile, "min_overlap": min_overlap, "seed": seed}
    summary = prepare.finalize(out, metas, seed=seed, params=params)
    return {"tiles": summary["tiles"], "cells": summary["n_cells"], "version": version}


def _flow_prepare(root: str, executor: dict, *, tile: int, min_overlap: int, seed: int) -> dict:
    from flows.prepare import ExecutorConfig, PrepareParams, prepare

    params = PrepareParams(
        root=root,
        dataset=DATASET,
        tile=tile,
        min_overlap=min_overlap,
        seed=seed,
        executor=ExecutorConfig(**executor),
    )
    result = prepare(params)
    if result["cached"]:
        raise RuntimeError(f"{root}: prepare reused a cached version; the bench needs fresh roots")
    return {"tiles": result["tiles"], "cells": result["cells"], "version": result["version"]}


def _ingest_prepare(tmp: str, *, images: int, height: int, width: int, seed: int) -> dict:
    from flows.ingest import IngestParams, ingest
    from neuroseg import synth

    dataset = synth.write_dataset(
        os.path.join(tmp, "prepare-source"),
        name=DATASET,
        images=images,
        seed=seed,
        height=height,
        width=width,
    )
    tile = min(400, height, width) // 8 * 8
    kw = {"tile": tile, "min_overlap": tile // 4, "seed": seed}

    root = os.path.join(tmp, "prep-library")
    t_ingest, ingested = _timed(_library_ingest, root, dataset)
    t_prepare, lib = _timed(_library_prepare, root, **kw)
    library = {
        "seconds": t_ingest + t_prepare,
        "ingest_seconds": t_ingest,
        "prepare_seconds": t_prepare,
        "ingested": sum(r["status"] == "ingested" for r in ingested),
        **lib,
    }

    root = os.path.join(tmp, "prep-flow")
    t_ingest, summary = _timed(ingest, IngestParams(source=dataset, root=root, dataset=DATASET))
    t_prepare, fl = _timed(_flow_prepare, root, {"kind": "threads", "workers": 2}, **kw)
    flows_ = {
        "seconds": t_ingest + t_prepare,
        "ingest_seconds": t_ingest,
        "prepare_seconds": t_prepare,
        "ingested": summary["ingested"],
        **fl,
    }

    executors = {}
    for name, executor in (
        ("threads", {"kind": "threads", "workers": 2}),
        ("dask", {"kind": "dask", "workers": 2}),
    ):
        root = os.path.join(tmp, f"prep-{name}")
        _library_ingest(root, dataset)  # untimed: (c) compares the preparation only
        seconds, res = _timed(_flow_prepare, root, executor, **kw)
        executors[name] = {"seconds": seconds, "workers": 2, **res}
    same = {(r["tiles"], r["cells"], r["version"]) for r in (library, flows_, *executors.values())}
    return {
        "ingest_prepare": {
            "library": library,
            "flows": flows_,
            "ratio": flows_["seconds"] / library["seconds"],
            "tile": tile,
            "note": "flows use their default executors (ingest: Prefect's thread pool; "
            "prepare: 2 threads); the library runs one image after another",
        },
        "prepare_executors": {
            **executors,
            "dask_over_threads": executors["dask"]["seconds"] / executors["threads"]["seconds"],
            "note": "dask time includes starting and stopping the local cluster",
        },
        "same_results": len(same) == 1,
    }


# ----------------------------------------------------------------------------- entry point


def bench_orchestration(
    *, images: int = 20, height: int = 1200, width: int = 1600, seed: int = 0
) -> dict:
    """Compare the flows with the library called directly, in one run (see the module notes).

    Parameters
    ----------
    images : int
        Images of the plate (a) and of the annotated dataset (b, c).
    height, width : int
        Image size (the lab's 1200x1600).
    seed : int
        Seed of the synthetic data (and of the fallback model).

    Returns
    -------
    dict
        JSON-able: ``model``, ``load_average`` (1-minute, at start and end),
        ``prefect_startup_seconds``, ``warmup_seconds``,
        ``inference`` (``library``, ``flow_1_thread``, ``flow_default``, ``library_again``:
        ``seconds``, ``images_per_second``, ``images``, ``cells``, ``rows``;
        ``library_seconds`` (mean of the loops), ``overhead_ratio`` (1 thread),
        ``overhead_seconds``, ``overhead_seconds_per_image``, ``small_images``,
        ``projected_overhead_ratio``,
        ``overhead_ratio_default_executor``, ``target``, ``same_rows``), ``ingest_prepare``
        (``library``, ``flows``, ``ratio``) and ``prepare_executors`` (``threads``, ``dask``,
        ``dask_over_threads``), ``same_results``.
    """
    images = _check_int("images", images, 1)
    height = _check_int("height", height, 16)
    width = _check_int("width", width, 16)
    load_start = load_average()
    t_prefect, _ = _timed(_warmup)
    with tempfile.TemporaryDirectory(prefix="neuroseg-bench-orchestration-") as tmp:
        model_uri, model_name = bench_model_uri(tmp, seed=seed)
        t_warm, _ = _timed(_warm_tensorflow, model_uri)
        inference = _inference(tmp, model_uri, images=images, height=height, width=width, seed=seed)
        prep = _ingest_prepare(tmp, images=images, height=height, width=width, seed=seed)
    return {
        "model": model_name,
        "images": images,
        "image_size": [height, width],
        "prefect_api": _api_url(),
        "load_average": [load_start, load_average()],
        "prefect_startup_seconds": t_prefect,
        "warmup_seconds": t_warm,
        "inference": inference,
        **prep,
    }


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "temporary in-process server"


def _warm_tensorflow(model_uri: str) -> None:
    import numpy as np

    from neuroseg.registry import load_model

    bundle = load_model(model_uri)
    bundle.predict_tiles(np.zeros((1, bundle.tile, bundle.tile, 3), np.uint8))


# -------------------------------------------------------------------------- standing Dask cluster

#: Images of the night the README projects from the measured per-image cost.
NIGHT_IMAGES = 100_000
#: Per worker process: one task at a time, and TensorFlow kept to one core (so that N workers
#: use N cores and the scaling measures the cluster, not TensorFlow's own threads).
ONE_CORE_ENV = {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}


def _warm_worker(model_uri: str) -> int:
    """Run on every Dask worker before timing: TensorFlow imported, model cached, one predict."""
    import numpy as np

    from tasks.infer import get_bundle

    bundle = get_bundle(model_uri, "fp32")
    bundle.predict_tiles(np.zeros((1, bundle.tile, bundle.tile, 3), np.uint8))
    return os.getpid()


def _dask_night(tmp: str, source: str, model_uri: str, address: str, workers: int) -> dict:
    from flows.infer import InferParams, nightly_inference
    from tasks.common import ExecutorConfig

    root = os.path.join(tmp, f"dask-{workers}-workers")
    _copy_tree(os.path.join(source, "uploads"), os.path.join(root, "uploads"))
    params = InferParams(
        root=root, model=model_uri, executor=ExecutorConfig(kind="dask", address=address)
    )
    seconds, summary = _timed(nightly_inference, params)
    return {
        "workers": workers,
        "seconds": seconds,
        "images": summary["images"],
        "failed": summary["failed"],
        "cells": summary["cells"],
        "rows": count_rows(storage.join(root, "cells")),
        "images_per_second": summary["images"] / seconds,
    }


def bench_dask_cluster(
    *,
    address: str | None = None,
    workers: int = 2,
    images: int = 20,
    height: int = 1200,
    width: int = 1600,
    seed: int = 0,
) -> dict:
    """Nightly inference on a standing Dask cluster: images per second by number of workers.

    With ``address``, the cluster there is used as it is (one measurement with all its
    workers). Without, a local standing cluster is started (``neuroseg.cluster``: a
    ``dask scheduler`` and worker processes on 127.0.0.1, one thread and one TensorFlow core
    each) and measured with 1, 2, ..., ``workers`` workers, one worker added before each
    measurement. Start-up is excluded: before each timed night every worker has imported
    TensorFlow, loaded the model into its cache (``tasks.infer.get_bundle``) and predicted once,
    and the flow's own process has the model cached too. Each night runs on a fresh storage
    root holding the same plate of ``images`` synthetic uploads.

    Returns
    -------
    dict
        JSON-able: ``mode``, ``address``, ``cpu_count``, ``load_average`` (start, end),
        ``cluster_start_seconds``, ``warm_seconds`` (per measurement), ``runs`` (per number of
        workers: ``seconds``, ``images_per_second``, ``images``, ``cells``, ``rows``,
        ``failed``), ``scaling_efficiency`` (ips with 2 workers / (2 x ips with 1), None
        without both), ``efficiency`` (ips_k / (k x ips_1) per k), ``model_loads`` (per worker
        process; 1 each when the cache works), ``same_rows`` and ``projection``
        (``NIGHT_IMAGES`` images from the cost of one image on one worker).
    """
    from distributed import Client

    from neuroseg import synth
    from neuroseg.cluster import StandingCluster
    from tasks.infer import cache_info, get_bundle

    images = _check_int("images", images, 1)
    workers = _check_int("workers", workers, 1)
    height = _check_int("height", height, 16)
    width = _check_int("width", width, 16)
    load_start = load_average()
    _timed(_warmup)
    cluster = None
    with tempfile.TemporaryDirectory(prefix="neuroseg-bench-dask-") as tmp:
        model_uri, model_name = bench_model_uri(tmp, seed=seed)
        t_flow_model, _ = _timed(get_bundle, model_uri, "fp32")  # resolve-model in the flow
        source = os.path.join(tmp, "source")
        synth.write_uploads(
            source, plates=1, images_per_plate=images, seed=seed, height=height, width=width
        )
        try:
            if address is None:
                cluster = StandingCluster(0, env=ONE_CORE_ENV).start()
                address, counts = cluster.address, list(range(1, workers + 1))
            else:
                counts = [None]
            runs, warm = [], []
            for k in counts:
                if k is not None:
                    cluster.add_worker()
                with Client(address, set_as_default=False) as client:
                    t_warm, _ = _timed(client.run, _warm_worker, model_uri)
                    n = len(client.scheduler_info(n_workers=-1)["workers"])
                warm.append(t_warm)
                runs.append(_dask_night(tmp, source, model_uri, address, n))
            with Client(address, set_as_default=False) as client:
                loads = client.run(cache_info)
        finally:
            if cluster is not None:
                cluster.close()
    by_k = {r["workers"]: r["images_per_second"] for r in runs}
    one = by_k.get(1)
    efficiency = {str(k): v / (k * one) for k, v in by_k.items()} if one else {}
    model_loads = sorted(
        m["loads"]
        for info in loads.values()
        for m in info["models"]
        if m["uri"] == model_uri and m["precision"] == "fp32"
    )
    return {
        "mode": "address" if cluster is None else "local standing cluster",
        "address": address if cluster is None else "127.0.0.1 (started by the bench)",
        "model": model_name,
        "images": images,
        "image_size": [height, width],
        "cpu_count": os.cpu_count(),
        "worker": "1 thread, TensorFlow on 1 core" if cluster is not None else "as configured",
        "load_average": [load_start, load_average()],
        "cluster_start_seconds": cluster.start_seconds if cluster is not None else None,
        "flow_process_model_load_seconds": t_flow_model,
        "warm_seconds": warm,
        "runs": runs,
        "scaling_efficiency": efficiency.get("2"),
        "efficiency": efficiency,
        "model_loads": model_loads,
        "same_rows": len({r["rows"] for r in runs}) == 1 and not any(r["failed"] for r in runs),
        "projection": _projection(runs),
        "note": "start-up excluded: each worker has TensorFlow and the model loaded before the "
        "timed night; seconds are the whole flow (find pending, mapping on Dask, writes)",
    }


def _projection(runs: list[dict]) -> dict:
    """A ``NIGHT_IMAGES`` night from the measured cost: worker-seconds per image with the
    fewest workers measured, and the workers an 8-hour night needs at the efficiency measured
    with the most workers (capped at 1)."""
    import math

    base = min(runs, key=lambda r: r["workers"])
    top = max(runs, key=lambda r: r["workers"])
    per_image = base["workers"] / base["images_per_second"]  # worker-seconds per image
    worker_hours = NIGHT_IMAGES * per_image / 3600
    eff = min(1.0, top["images_per_second"] / top["workers"] * per_image)
    return {
        "images": NIGHT_IMAGES,
        "worker_seconds_per_image": per_image,
        "worker_hours": worker_hours,
        "efficiency_used": eff,
        "workers_for_8_hours": math.ceil(worker_hours / 8 / eff),
        "hours_with_measured_workers": {
            str(r["workers"]): NIGHT_IMAGES / r["images_per_second"] / 3600 for r in runs
        },
    }
