"""Instance ground truth: labels/ and COCO datasets through ingestion and preparation.

Two touching discs must stay two instances from the label image to the prepared tiles and the
cell table; a 12-bit grey image is prepared as the declared (percentile) input.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from neuroseg import storage
from neuroseg.datasets import find_fnc_samples
from neuroseg.ingest import discover_dataset, ingest_one, read_manifest

SHAPE = (96, 128)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def touching(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit grey image (uint16) of two touching discs and a third one, and its labels."""
    rng = np.random.default_rng(seed)
    rr, cc = np.indices(SHAPE)
    labels = np.zeros(SHAPE, np.int32)
    for k, (r, c) in enumerate([(40, 40), (40, 62), (70, 100)], start=1):
        labels[((rr - r) ** 2 + (cc - c) ** 2 <= 12**2) & (labels == 0)] = k * 10  # ids 10, 20, 30
    image = 300 + rng.integers(0, 40, SHAPE)
    image[labels > 0] += 2500
    return image.astype(np.uint16), labels


def write_label_dataset(source: str, n: int = 3) -> None:
    for i in range(n):
        image, labels = touching(i)
        storage.write_bytes(storage.join(source, "images", f"n{i}.png"), _png(image))
        storage.write_bytes(
            storage.join(source, "labels", f"n{i}.png"), _png(labels.astype(np.uint16))
        )
    image, labels = touching(9)
    storage.write_bytes(storage.join(source, "images", "bad.png"), _png(image))
    storage.write_bytes(
        storage.join(source, "labels", "bad.png"), _png(labels[:50].astype(np.uint16))
    )


def test_labels_are_found_ingested_and_wrong_sizes_quarantined(tmp_path):
    src, root = str(tmp_path / "src"), str(tmp_path / "root")
    write_label_dataset(src)
    samples = find_fnc_samples(src)
    assert [s.labels_uri is not None for s in samples] == [True] * 4
    assert all(s.mask_uri is None for s in samples)
    found, problems = discover_dataset(src, "nuc")
    assert problems == []
    results = {c.image_id: ingest_one(root, c) for c in found}
    assert results["bad"]["status"] == "quarantined"
    assert "label image is 128x50, image is 128x96" in results["bad"]["reason"]
    assert "\n" not in results["bad"]["reason"]
    ok = results["n0"]
    assert ok["status"] == "ingested" and ok["n_instances"] == 3 and ok["dtype"] == "uint16"
    assert storage.exists(ok["labels_uri"])
    # idempotent; a changed label image is ingested again
    assert ingest_one(root, found[1])["status"] == "skipped"
    storage.write_bytes(samples[1].labels_uri, _png(np.zeros(SHAPE, np.uint16)))
    assert ingest_one(root, discover_dataset(src, "nuc")[0][1])["status"] == "ingested"


def test_coco_instances_become_label_images(tmp_path):
    src, root = str(tmp_path / "coco"), str(tmp_path / "root")
    image, _ = touching(0)
    storage.write_bytes(storage.join(src, "images", "c0.png"), _png(image))
    coco = {
        "images": [{"id": 1, "file_name": "c0.png", "height": SHAPE[0], "width": SHAPE[1]}],
        "annotations": [
            {"id": 1, "image_id": 1, "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 30, 30]]},
            {"id": 2, "image_id": 1, "iscrowd": 0, "segmentation": [[30, 10, 50, 10, 50, 30]]},
        ],
    }
    storage.write_bytes(storage.join(src, "annotations.json"), json.dumps(coco).encode())
    [cand], _ = discover_dataset(src, "coco")
    rec = ingest_one(root, cand)
    assert rec["status"] == "ingested" and rec["n_instances"] == 2
    from neuroseg.images import read_labels

    labels = read_labels(rec["labels_uri"])
    assert set(np.unique(labels)) == {0, 1, 2}
    assert ingest_one(root, cand)["status"] == "skipped"


def test_prepare_keeps_touching_instances_apart_and_normalises_12_bit(tmp_path):
    from neuroseg.prepare import finalize, prepare_image, prepared_version

    src, root = str(tmp_path / "src"), str(tmp_path / "root")
    write_label_dataset(src)
    for cand in discover_dataset(src, "nuc")[0]:
        ingest_one(root, cand)
    records = read_manifest(root, "datasets", "nuc").to_dict("records")
    assert len(records) == 3
    spec = {"channels": "grey", "normalization": "percentile"}
    legacy = prepared_version(records, tile=64, min_overlap=16, seed=0)
    version = prepared_version(records, tile=64, min_overlap=16, seed=0, input=spec)
    assert version != legacy
    out = storage.join(root, "prepared", "nuc", version)
    metas = [
        prepare_image(
            out,
            r["image_id"],
            r["image_uri"],
            r["mask_uri"] if isinstance(r["mask_uri"], str) else None,
            tile=64,
            min_overlap=16,
            labels_uri=r["labels_uri"],
            input=spec,
        )
        for r in records
    ]
    summary = finalize(out, metas, seed=0, params={"tile": 64, "input": spec})
    assert summary["n_cells"] == 9  # 3 instances per image, the touching pair is two
    cells = storage.read_parquet(storage.join(out, "cells.parquet"))
    assert sorted(cells.loc[cells.image_id == "n0", "cell_id"]) == [10, 20, 30]
    with np.load(io.BytesIO(storage.read_bytes(storage.join(out, "tiles", "n0.npz")))) as z:
        images, labels, masks, grid = z["images"], z["labels"], z["masks"], z["grid"]
    assert images.dtype == np.uint8 and images.shape[1:] == (64, 64, 3)
    assert labels.dtype == np.int32 and labels.shape == masks.shape == images.shape[:3]
    # the tile covering both touching discs holds both ids; the mask merges them
    both = [i for i in range(len(grid)) if {10, 20} <= set(np.unique(labels[i]))]
    assert both
    assert set(np.unique(masks[both[0]])) == {0, 255}
    # percentile-normalised: cells bright, background dark, whatever the 12-bit scale
    cell_px = images[both[0]][labels[both[0]] > 0]
    bg_px = images[both[0]][labels[both[0]] == 0]
    assert cell_px.mean() > 200 and bg_px.mean() < 60


@pytest.mark.slow
def test_prepare_flow_with_labels_and_grey_percentile_input(prefect_api, tmp_path):
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare

    src, root = str(tmp_path / "src"), str(tmp_path / "root")
    write_label_dataset(src, n=4)
    ingest(IngestParams(root=root, source=src, dataset="nuc"))
    out = prepare(
        PrepareParams(
            root=root,
            dataset="nuc",
            tile=64,
            min_overlap=16,
            channels="grey",
            normalization="percentile",
        )
    )
    assert out["cells"] == 12 and not out["cached"]
    summary = storage.read_json(storage.join(out["prepared_uri"], "summary.json"))
    assert summary["params"]["input"]["normalization"] == "percentile"
    assert summary["params"]["input"]["channels"] == "grey"
    again = prepare(
        PrepareParams(
            root=root, dataset="nuc", tile=64, min_overlap=16, channels="grey",
            normalization="percentile",
        )
    )  # fmt: skip
    assert again["cached"] and again["version"] == out["version"]


@pytest.mark.slow
def test_evaluate_folder_with_labels_reports_iou_table(prefect_api, tmp_path):
    """`neuroseg evaluate --images FOLDER` with labels/: IoU scores for every method."""
    from prefect.client.orchestration import get_client

    from flows.evaluate import EvaluateParams, evaluate

    src, root = str(tmp_path / "src"), str(tmp_path / "root")
    write_label_dataset(src, n=3)
    storage.delete(storage.join(src, "images", "bad.png"))
    out = evaluate(EvaluateParams(root=root, model="default", images=src))
    figures = out["key_figures"]
    # the classical nuclei baseline finds the three discs, the touching pair split in two
    assert figures["classical_f1_iou50"] == 1.0
    assert figures["classical_mean_ap"] > 0.5
    assert 0.0 <= figures["mean_ap"] <= 1.0 and 0.0 <= figures["baseline_mean_ap"] <= 1.0
    metrics = storage.read_json(storage.join(out["report_uri"], "metrics.json"))
    iou = metrics["classical"]["iou"]
    assert iou["thresholds"][0] == 0.5 and len(iou["ap"]) == 10
    assert iou["n_true"] == 9 and metrics["classical"]["tuning"]["source"] == "defaults"
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts() if a.key}
    from neuroseg.registry import default_model_uri

    name = storage.read_json(storage.join(default_model_uri(), "config.json"))["name"]
    assert f"eval-{name}-iou" in keys  # the shipped default is named fnc


@pytest.mark.slow
def test_three_class_model_through_the_flows(prefect_api, tmp_path):
    """labels/ -> grey percentile tiles -> a tiny three-class U-Net -> evaluation with the
    post-processing sweep -> nightly inference of a 12-bit upload with label images out."""
    from flows.infer import InferParams, nightly_inference
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from flows.train import TrainParams, train
    from neuroseg.images import read_labels
    from neuroseg.inference import labels_file_uri, read_cells
    from neuroseg.training import PhaseConfig

    src, root = str(tmp_path / "src"), str(tmp_path / "root")
    write_label_dataset(src, n=7)
    ingest(IngestParams(root=root, source=src, dataset="nuc"))
    prep = prepare(
        PrepareParams(
            root=root, dataset="nuc", tile=64, min_overlap=16, channels="grey",
            normalization="percentile",
        )
    )  # fmt: skip
    assert prep["cells"] == 21
    out = train(
        TrainParams(
            root=root,
            dataset="nuc",
            preset="nuclei",
            model_name="nuc",
            crop=64,
            phases=[
                PhaseConfig(
                    name="1",
                    epochs=1,
                    learning_rate=3e-3,
                    batch_size=4,
                    steps_per_epoch=4,
                    tile_filter="all",
                )
            ],
            promote=True,
        )
    )
    cfg = storage.read_json(storage.join(out["model_uri"], "config.json"))
    assert cfg["head"] == "three_class"
    assert cfg["input"]["channels"] == "grey" and cfg["input"]["normalization"] == "percentile"
    assert set(cfg["postprocess"]) >= {"interior_threshold", "foreground_threshold", "min_area"}
    assert cfg["postprocess_sweep"]["images"] >= 1  # chosen on the val split
    metrics = storage.read_json(storage.join(out["model_uri"], "metrics.json"))
    assert len(metrics["scores"]["iou"]["ap"]) == 10 and metrics["classical"]["iou"]
    # the nightly run segments a 12-bit upload with it and writes its label image
    image, _ = touching(42)
    storage.write_bytes(storage.join(root, "uploads", "P9", "w1.png"), _png(image))
    night = nightly_inference(InferParams(root=root, model="nuc"))
    assert night["images"] == 1 and night["failed"] == 0
    cells = read_cells(storage.join(root, "cells"))
    labels = read_labels(labels_file_uri(root, "P9", "w1"))
    assert sorted(np.unique(labels[labels > 0])) == sorted(cells["cell_id"])
    # test-time augmentation: the evaluation sweeps the post-processing for the averaged flips
    # and stores it beside the plain one; the nightly run serves that mode when asked
    from flows.evaluate import EvaluateParams, evaluate
    from tasks.infer import cache_info

    evaluate(EvaluateParams(root=root, dataset="nuc", model="nuc", split="val", tta="flips"))
    after = storage.read_json(storage.join(out["model_uri"], "config.json"))
    assert after["postprocess"] == cfg["postprocess"]  # the plain choice is kept
    assert set(after["postprocess_tta"]["flips"]) == set(cfg["postprocess"])
    assert after["postprocess_tta_sweep"]["flips"]["images"] >= 1

    def flips_uses() -> int:
        return sum(m["loads"] + m["hits"] for m in cache_info()["models"] if m["tta"] == "flips")

    before = flips_uses()
    storage.write_bytes(storage.join(root, "uploads", "P10", "w1.png"), _png(image))
    night = nightly_inference(InferParams(root=root, model="nuc", tta="flips", plates=["P10"]))
    assert night["images"] == 1 and night["failed"] == 0
    assert flips_uses() == before + 1  # the image was segmented by the bundle serving flips
    assert len(read_cells(storage.join(root, "cells"))) == len(cells) + night["cells"]


@pytest.mark.slow
def test_a_model_prepared_at_half_scale_trains_and_segments_at_full_size(prefect_api, tmp_path):
    """prepare --scale 0.5 tiles the images at half size (labels by nearest neighbour), the
    trained model declares the scale, and segmenting a full-size image gives full-size labels;
    fine-tuning it on data of another scale is allowed (a new pixel size)."""
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from flows.train import TrainParams, train
    from neuroseg import registry
    from neuroseg.predict import segment_image
    from neuroseg.training import PhaseConfig

    src, root = str(tmp_path / "src"), str(tmp_path / "root")
    write_label_dataset(src, n=3)
    ingest(IngestParams(root=root, source=src, dataset="nuc"))
    grey = {"channels": "grey", "normalization": "percentile", "tile": 32, "min_overlap": 8}
    plain = prepare(PrepareParams(root=root, dataset="nuc", **grey))
    prep = prepare(PrepareParams(root=root, dataset="nuc", scale=0.5, **grey))  # trains next
    assert prep["version"] != plain["version"]  # the scale is part of the prepared version
    summary = storage.read_json(storage.join(prep["prepared_uri"], "summary.json"))
    assert summary["params"]["input"]["scale"] == 0.5
    meta = storage.read_json(storage.join(prep["prepared_uri"], "meta", "n0.json"))
    assert (meta["height"], meta["width"]) == (SHAPE[0] // 2, SHAPE[1] // 2)
    assert meta["total_px"] == SHAPE[0] * SHAPE[1]  # the image's own pixels
    with np.load(io.BytesIO(storage.read_bytes(storage.join(prep["prepared_uri"], "tiles",
                                                            "n0.npz")))) as z:  # fmt: skip
        assert {10, 20, 30} <= set(np.unique(z["labels"]))  # every instance survives
    phase = PhaseConfig(name="1", epochs=1, learning_rate=3e-3, batch_size=4,
                        steps_per_epoch=2, tile_filter="all")  # fmt: skip
    out = train(TrainParams(root=root, dataset="nuc", preset="nuclei", model_name="half",
                            crop=32, phases=[phase], evaluate=False, promote=False))  # fmt: skip
    cfg = storage.read_json(storage.join(out["model_uri"], "config.json"))
    assert cfg["input"]["scale"] == 0.5
    image, _ = touching(42)
    labels, _, prob = segment_image(registry.load_model(out["model_uri"]), image)
    assert labels.shape == prob.shape == SHAPE
    assert prepare(PrepareParams(root=root, dataset="nuc", **grey))["cached"]  # latest again
    again = train(TrainParams(root=root, dataset="nuc", preset="nuclei", model_name="full",
                              crop=32, phases=[phase], evaluate=False, promote=False,
                              init_model=f"half@{out['version']}"))  # fmt: skip
    full = storage.read_json(storage.join(again["model_uri"], "config.json"))
    assert "scale" not in full["input"]  # the data's scale, not the parent's
