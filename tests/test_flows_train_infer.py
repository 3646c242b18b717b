"""Training, evaluation and nightly inference flows on a real Prefect API, local and moto S3.

One tiny model is trained per module (a few seconds) and shared by the inference tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuroseg import storage
from neuroseg.images import encode_png
from neuroseg.synth import synth_plate

pytestmark = pytest.mark.slow
SIZE = {"height": 256, "width": 320}
STABLE = [
    "image_id",
    "cell_id",
    "centroid_x",
    "centroid_y",
    "area_px",
    "bbox_width",
    "mean_intensity",
    "model_version",
]


def _artifacts() -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts() if a.key}


@pytest.fixture(scope="module")
def trained(prefect_api, tmp_path_factory):
    """Ingest, prepare and train the tiny preset; evaluation and promotion chained."""
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from flows.train import TrainParams, train

    root = str(tmp_path_factory.mktemp("train-root"))
    src = str(tmp_path_factory.mktemp("src"))
    for i in range(5):  # small images: ask for enough cells explicitly
        s = synth_plate(seed=3 + i, n_cells=5, **SIZE)
        storage.write_bytes(
            storage.join(src, "datasets", "syn", "images", f"s{i}.png"), encode_png(s.image)
        )
        storage.write_bytes(
            storage.join(src, "datasets", "syn", "masks", f"s{i}.png"), encode_png(s.mask)
        )
    ingest(IngestParams(source=storage.join(src, "datasets", "syn"), root=root, dataset="syn"))
    prepare(PrepareParams(root=root, dataset="syn", tile=128, min_overlap=32))
    result = train(TrainParams(root=root, dataset="syn", preset="tiny", model_name="tiny"))
    return {"root": root, "result": result}


def test_train_registers_evaluates_and_promotes(trained):
    root, res = trained["root"], trained["result"]
    assert res["device"] == "CPU"
    cfg = storage.read_json(storage.join(res["model_uri"], "config.json"))
    assert cfg["architecture"] == "unet" and cfg["tile"] == 128
    assert 0.0 < cfg["threshold"] < 1.0  # chosen by the sweep on the val split
    ev = res["evaluation"]
    assert ev["promoted"] is True  # first model: no production to beat
    prod = storage.read_json(storage.join(root, "models", "tiny", "production.json"))
    assert prod["version"] == res["version"]
    metrics = storage.read_json(storage.join(res["model_uri"], "metrics.json"))
    px = metrics["scores"]["pixel"]
    (tn, fp), (fn, tp) = px["confusion"]
    # every test pixel is counted once, and the truth holds both classes; how the tiny
    # model splits them is up to its training (at a low threshold it may call all "cell")
    assert tn + fp + fn + tp == px["n_pixels"] > 0
    assert px["n_pixels"] % (SIZE["height"] * SIZE["width"]) == 0
    assert tn + fp > 0 and px["support"] == fn + tp > 0
    assert px["recall"] == pytest.approx(tp / (tp + fn))
    report = metrics["report_uri"]
    for png in ("confusion.png", "roc_pr.png", "history.png", "cell_sizes.png"):
        assert storage.read_bytes(storage.join(report, png))[:4] == b"\x89PNG"
    keys = _artifacts()
    for k in (
        "eval-tiny-confusion-matrix",
        "eval-tiny-classification-report",
        "eval-tiny-summary",
        "eval-tiny-counts",
        "train-tiny-history",
    ):
        assert k in keys, k
    # phases each left a checkpoint and a done-record in the run folder
    work = storage.join(root, "training", res["run_id"])
    assert len(storage.list_files(work, suffixes=(".keras",))) == 3


def test_second_model_is_not_promoted_unless_better(trained):
    from flows.evaluate import EvaluateParams, evaluate

    root, res = trained["root"], trained["result"]
    # re-evaluating the production model itself never promotes anything new
    again = evaluate(
        EvaluateParams(root=root, dataset="syn", model=f"tiny@{res['version']}", promote=True)
    )
    assert again["promoted"] is False and "already" in again["decision"]


def test_resume_skips_finished_phases(trained, caplog):
    from flows.train import TrainParams, train

    root, res = trained["root"], trained["result"]
    work = storage.join(root, "training", res["run_id"])
    before = storage.read_json(storage.join(work, "phase-0.json"))
    storage.delete(storage.join(work, "phase-2.json"))  # as if killed during the last phase
    out = train(
        TrainParams(
            root=root,
            dataset="syn",
            preset="tiny",
            model_name="tiny",
            run_id=res["run_id"],
            evaluate=False,
        )
    )
    assert storage.read_json(storage.join(work, "phase-0.json")) == before  # not retrained
    assert storage.exists(storage.join(work, "phase-2.json"))
    assert out["version"] != res["version"]


def _uploads(root: str, *, corrupt: bool = True) -> None:
    for p, plate in enumerate(("P001", "P002")):
        for i in range(2):
            s = synth_plate(seed=50 + 10 * p + i, n_cells=4, **SIZE)
            storage.write_bytes(
                storage.join(root, "uploads", plate, f"{plate}_{i}.png"), encode_png(s.image)
            )
    if corrupt:
        storage.write_bytes(storage.join(root, "uploads", "P002", "broken.png"), b"\x89PNG oops")


def _night(root: str, model: str, **kw):
    from flows.infer import InferParams, nightly_inference

    return nightly_inference(InferParams(root=root, model=model, **kw))


def _table(root: str) -> pd.DataFrame:
    from neuroseg.inference import read_cells

    df = read_cells(storage.join(root, "cells"))
    return df.sort_values(["image_id", "cell_id"]).reset_index(drop=True)


def _assert_labels_equal_table(root: str, table: pd.DataFrame) -> None:
    """Every image's label image holds exactly its rows: one label per row, same centroid."""
    from neuroseg.images import read_labels
    from neuroseg.inference import labels_file_uri

    files = storage.list_files(storage.join(root, "labels"))
    assert len(files) == table["image_id"].nunique() or len(table) == 0
    for (plate, image_id), rows in table.groupby(["plate_id", "image_id"], observed=True):
        labels = read_labels(labels_file_uri(root, str(plate), str(image_id)))
        ids = np.unique(labels[labels > 0])
        assert list(ids) == sorted(rows["cell_id"])
        for row in rows.itertuples():
            rr, cc = np.nonzero(labels == row.cell_id)
            assert rr.size == row.area_px
            assert abs(cc.mean() - row.centroid_x) < 1e-6
            assert abs(rr.mean() - row.centroid_y) < 1e-6


@pytest.mark.parametrize("where", ["local", "s3"])
def test_nightly_inference_idempotent_and_crash_safe(prefect_api, where, tmp_path, request):
    model = "default"  # the shipped model: it finds real cells, so rows can be compared
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        root_a, root_b = f"{bucket}/a", f"{bucket}/b"
    else:
        root_a, root_b = str(tmp_path / "a"), str(tmp_path / "b")
    _uploads(root_a)
    first = _night(root_a, model)
    assert first["images"] == 4 and first["failed"] == 1
    assert storage.exists(
        storage.join(root_a, "quarantine", "uploads", "P002", "broken.png.reason.txt")
    )
    table = _table(root_a)
    assert len(table) == first["cells"] > 0
    # one HTML report per plate, linked from a link artifact; the broken upload is listed
    assert first["reports"]["P002"] == storage.join(root_a, "reports", "plates", "P002.html")
    page = storage.read_bytes(first["reports"]["P002"]).decode()
    assert page.count('<figure class="card"') == 2 and "broken.png" in page
    assert {"plate-report-p001", "plate-report-p002"} <= set(_artifacts())
    assert set(table["plate_id"].astype(str)) <= {"P001", "P002"}
    assert (
        table.groupby("image_id")["cell_id"]
        .apply(lambda s: list(s) == list(range(1, len(s) + 1)))
        .all()
    )
    _assert_labels_equal_table(root_a, table)
    # the same night again: nothing new, the table is unchanged
    second = _night(root_a, model)
    assert second["images"] == 0 and second["failed"] == 0
    assert second["skipped"] == 5  # the quarantined upload is not retried until replaced
    pd.testing.assert_frame_equal(_table(root_a), table)
    # a crash halfway: one plate done, then a crash between an image's Parquet write and its
    # record; the re-run completes the rest and the table equals the uninterrupted run's
    _uploads(root_b, corrupt=False)
    _night(root_b, model, plates=["P001"])
    done = storage.list_files(storage.join(root_b, "manifests", "processed"))
    assert {u.rsplit("/", 2)[-2] for u in done} == {"P001"}
    storage.delete(storage.join(root_b, "manifests", "processed", "P001", "P001_1.json"))
    _night(root_b, model)
    pd.testing.assert_frame_equal(_table(root_b)[STABLE], table[STABLE])
    _assert_labels_equal_table(root_b, _table(root_b))
    # filters are pushed down to the hive partitions
    only = pd.read_parquet(
        storage.join(root_b, "cells"),
        filters=[("plate_id", "==", "P001")],
        storage_options=storage.storage_options(root_b) or None,
    )
    assert len(only) == (table["plate_id"].astype(str) == "P001").sum()
    assert "nightly-plates" in _artifacts()


def test_reprocess_with_a_new_model_replaces_rows(trained, tmp_path):
    root = str(tmp_path / "r")
    _uploads(root, corrupt=False)
    first = _night(root, "default")
    new = trained["result"]
    # without --reprocess a new model version leaves processed images alone
    assert _night(root, new["model_uri"])["images"] == 0
    again = _night(root, new["model_uri"], reprocess=True)
    assert again["images"] == first["images"] == 4
    records = storage.list_files(storage.join(root, "manifests", "processed"))
    assert {storage.read_json(u)["model_version"] for u in records} == {new["version"]}
    table = _table(root)
    assert set(table["model_version"]) <= {new["version"]}  # no row of the old model is left
    assert len(table) == again["cells"]  # replaced, not appended
    _assert_labels_equal_table(root, table)


def test_fine_tune_starts_from_a_registered_model(trained):
    """`init_model`: the run starts from the registered weights (a learning rate of ~0 leaves
    them as they were), records them in its lineage, and refuses a different network; the
    data are prepared with every image in train (no val or test split)."""
    from flows.prepare import PrepareParams, prepare
    from flows.train import TrainParams, train
    from neuroseg.registry import load_model

    root, res = trained["root"], trained["result"]
    latest = storage.join(root, "prepared", "syn", "latest.json")
    before = storage.read_json(latest)
    try:
        out = prepare(
            PrepareParams(
                root=root, dataset="syn", tile=128, min_overlap=32, val_fraction=0, test_fraction=0
            )
        )
        assert out["version"] != before["version"]  # the split is part of the version
        splits = storage.read_json(storage.join(out["prepared_uri"], "splits.json"))
        assert (len(splits["train"]), splits["val"], splits["test"]) == (5, [], [])

        def run(**kw):
            return train(
                TrainParams(
                    root=root, dataset="syn", preset="tiny", learning_rate=1e-12,
                    evaluate=False, promote=False, **kw,
                )
            )  # fmt: skip

        def weights(uri):
            return [w.numpy() for w in load_model(uri, fold=False).model.trainable_weights]

        base = weights(res["model_uri"])
        tuned = run(model_name="tuned", init_model=f"tiny@{res['version']}")
        scratch = run(model_name="scratch")
        same = zip(base, weights(tuned["model_uri"]), strict=True)
        assert all(np.allclose(a, b, atol=1e-6) for a, b in same)
        fresh = zip(base, weights(scratch["model_uri"]), strict=True)
        assert not all(np.allclose(a, b, atol=1e-3) for a, b in fresh)
        lineage = storage.read_json(storage.join(tuned["model_uri"], "lineage.json"))
        assert lineage["init_model"]["model"] == f"tiny@{res['version']}"
        with pytest.raises(ValueError, match=r"init_model 'nuclei' .* width 16"):
            run(model_name="wrong", init_model="nuclei")
    finally:
        storage.write_json(latest, before)
