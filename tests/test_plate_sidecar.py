"""A plate folder's plate.json gives its pixel size: validated, and copied by ingestion."""

from __future__ import annotations

import numpy as np
import pytest

from neuroseg import storage
from neuroseg.images import encode_png
from neuroseg.inference import plate_sidecar
from neuroseg.ingest import discover_uploads, ingest_one


def test_plate_sidecar_reads_and_validates(tmp_path):
    image = str(tmp_path / "P1" / "a.png")
    assert plate_sidecar(image) == {}
    storage.write_json(str(tmp_path / "P1" / "plate.json"), {"pixel_size_um": 0.65})
    assert plate_sidecar(image) == {"pixel_size_um": 0.65}
    for bad, match in [
        ({"pixel_size_um": -1}, "positive number"),
        ({"pixel_size_um": "0.65"}, "positive number"),
        ({"pixel_size": 0.65}, "of 'pixel_size_um' only"),
        ([0.65], "of 'pixel_size_um' only"),
    ]:
        storage.write_json(str(tmp_path / "P1" / "plate.json"), bad)
        with pytest.raises(ValueError, match=match) as err:
            plate_sidecar(image)
        assert str(tmp_path / "P1" / "plate.json") in str(err.value)


def test_ingestion_copies_the_plate_sidecar(tmp_path):
    source, root = tmp_path / "microscope", str(tmp_path / "root")
    img = np.zeros((40, 50, 3), np.uint8)
    img[10:20, 10:20] = 200
    for name in ("a.png", "b.png"):
        storage.write_bytes(str(source / "P7" / name), encode_png(img))
    storage.write_json(str(source / "P7" / "plate.json"), {"pixel_size_um": 0.325})
    cands, problems = discover_uploads(str(source))
    assert len(cands) == 2 and not problems  # the sidecar is no upload and no problem
    assert [ingest_one(root, c)["status"] for c in cands] == ["ingested", "ingested"]
    copied = storage.join(root, "uploads", "P7", "plate.json")
    assert storage.read_json(copied) == {"pixel_size_um": 0.325}
    assert plate_sidecar(storage.join(root, "uploads", "P7", "a.png"))["pixel_size_um"] == 0.325
