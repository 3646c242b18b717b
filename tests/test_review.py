"""Review and correct: the nightly run's confidence orders the plate report and `neuroseg
review`, whose folder napari/Fiji-style edits go back through `neuroseg ingest` as corrections
(bad ones quarantined with their reason, the rest recorded, one event).

A real Prefect API, a real registered Keras model (probability = green / 255: a dim cell is
found with a probability near 0.5, so the model is unsure of it), real PNG and TIFF files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from neuroseg import storage
from neuroseg.images import decode_labels, encode_labels
from tests.test_segment_files import discs, green_model, write_png

__all__ = ["green_model"]  # the fixture, shared with test_segment_files

# per image: (centre, green) of its discs; green 255 -> probability 1 (sure), 170 -> 0.67
PLATE = {
    "a_sure": [((30, 40), 255), ((70, 110), 255)],
    "b_half": [((30, 40), 255), ((70, 110), 170)],
    "c_dim": [((50, 75), 170)],
}


def _nightly(root: str, model: str) -> dict:
    from flows.infer import InferParams, nightly_inference

    for name, spec in PLATE.items():
        centres, greens = zip(*spec, strict=True)
        write_png(Path(root) / "uploads" / "P1" / f"{name}.png", discs(centres, green=greens))
    return nightly_inference(InferParams(root=root, model=model))


@pytest.mark.slow
def test_review_exports_least_confident_and_corrections_come_back(
    prefect_api, tmp_path, green_model
):
    from flows.ingest import IngestParams, ingest
    from neuroseg.cli import main
    from neuroseg.quality import read_image_table

    root = str(tmp_path / "root")
    night = _nightly(root, green_model)
    assert night["images"] == 3 and night["failed"] == 0
    table = read_image_table(storage.join(root, "images")).set_index("image_id")
    assert table.loc["a_sure", "confidence"] == 1.0
    assert table.loc["b_half", "confidence"] == 0.5
    assert table.loc["c_dim", "confidence"] == 0.0
    rec = storage.read_json(storage.join(root, "manifests", "processed", "P1", "c_dim.json"))
    assert rec["confidence"] == 0.0
    # the plate report lists them review first, with their confidence
    page = storage.read_bytes(night["reports"]["P1"]).decode()
    rows = re.findall(r'class="count-row" data-image-id="([^"]+)"', page)
    assert rows == ["c_dim", "b_half", "a_sure"]
    assert re.findall(r'class="card" id="img-([^"]+)"', page) == rows
    assert "confidence 0.50" in page

    out = tmp_path / "to-correct"
    assert main(["review", "P1", "--root", root, "--out", str(out), "--top", "2"]) == 0
    review = json.loads((out / "review.json").read_text())
    assert [e["image_id"] for e in review["images"]] == ["c_dim", "b_half"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["b_half.png", "c_dim.png"]
    up = Path(root) / "uploads" / "P1" / "b_half.png"
    assert (out / "images" / "b_half.png").read_bytes() == up.read_bytes()
    # labels: 32-bit integer TIFFs (napari opens those as a Labels layer), the nightly ids
    import tifffile

    exported = tifffile.imread(out / "labels" / "b_half.tif")
    assert exported.dtype == np.uint32
    nightly = decode_labels(
        (Path(root) / "labels" / "plate_id=P1" / "b_half.png").read_bytes(), name="b"
    )
    assert np.array_equal(exported, nightly) and exported.max() == 2
    assert "napari" in (out / "README.txt").read_text()
    # a second export never writes over corrections in progress
    assert main(["review", "P1", "--root", root, "--out", str(out)]) == 2

    # corrections: c_dim gets a missed cell painted in, b_half is confirmed as is; then two
    # bad ones: a label image of the wrong size, and an image without a label image
    fixed = decode_labels((out / "labels" / "c_dim.tif").read_bytes(), name="c")
    rr, cc = np.indices(fixed.shape)
    fixed[(rr - 20) ** 2 + (cc - 20) ** 2 <= 25] = fixed.max() + 1
    tifffile.imwrite(out / "labels" / "c_dim.tif", fixed.astype(np.uint32))
    write_png(out / "images" / "d_small.png", discs([(50, 50)]))
    (out / "labels" / "d_small.png").write_bytes(encode_labels(np.ones((10, 10), np.int32))[0])
    write_png(out / "images" / "e_nolabels.png", discs([(50, 50)]))

    summary = ingest(IngestParams(source=str(out), root=root, dataset="lab1"))
    assert summary["kind"] == "corrections"
    assert (summary["ingested"], summary["quarantined"]) == (2, 2)
    reasons = {Path(f["file"]).name: f["reason"] for f in summary["failures"]}
    assert "label image is 10x10, image is 150x100" in reasons["d_small.png"]
    assert "no mask in masks/ nor label image in labels/" in reasons["e_nolabels.png"]
    assert all("\n" not in r for r in reasons.values())
    quarantined = Path(root) / "quarantine" / "corrections" / "lab1"
    assert (quarantined / "d_small.png.reason.txt").read_text().startswith(str(out))
    recs = sorted((Path(root) / "manifests" / "corrections" / "lab1").glob("*.json"))
    assert [p.stem for p in recs] == ["b_half", "c_dim"]
    corrected = Path(root) / "corrections" / "lab1"
    assert np.array_equal(
        decode_labels((corrected / "labels" / "c_dim.tif").read_bytes(), name="c"), fixed
    )
    assert (corrected / "review.json").exists()
    (event,) = summary["events"]
    assert (event["dataset"], event["images"], event["quarantined"]) == ("lab1", 2, 2)
    assert event["edited"] == ["c_dim"] and event["event_id"]
    # nothing new: no second event, nothing duplicated
    again = ingest(IngestParams(source=str(out), root=root, dataset="lab1"))
    assert (again["ingested"], again["skipped"], again["events"]) == (0, 2, [])
    # the training datasets are untouched: corrections live apart
    assert not (Path(root) / "manifests" / "datasets").exists()


def test_review_refuses_unknown_plate_and_bad_top(tmp_path):
    from neuroseg.review import write_review

    with pytest.raises(ValueError, match="no processed image"):
        write_review(str(tmp_path), "P404", str(tmp_path / "out"))
    with pytest.raises(ValueError, match="top must be"):
        write_review(str(tmp_path), "P404", str(tmp_path / "out"), top=0)


def test_adapt_command_says_how_to_make_corrections(prefect_api, tmp_path, capsys):
    from neuroseg.cli import main

    assert main(["adapt", "lab9", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("neuroseg: error: no corrections named 'lab9' under")
    assert "neuroseg review PLATE --out DIR" in err
