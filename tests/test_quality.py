"""Image quality: known answers, and blurred / saturated copies of real images flagged."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from neuroseg.images import read_native
from neuroseg.quality import (
    IMAGE_COLUMNS,
    focus_score,
    image_record,
    plate_flags,
    saturated_fraction,
)

WHEN = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def test_saturated_fraction_counts_pixels_at_full_scale_only():
    img = np.full((100, 100, 2), 40, np.uint8)
    img[:10, :10, 1] = 255  # 1 % of channel 1 at 8-bit full scale
    assert saturated_fraction(img) == pytest.approx(0.01)
    img[:10, :10, 1] = 254  # bright, but not at full scale
    assert saturated_fraction(img) == 0.0
    cam = np.full((50, 40), 300, np.uint16)
    cam[:5] = 4095  # a 12-bit camera at its full scale in a 16-bit file
    assert saturated_fraction(cam) == pytest.approx(0.1)
    cam[:5] = 4000
    assert saturated_fraction(cam) == 0.0
    assert saturated_fraction(np.ones((8, 8), np.float32)) == 0.0  # float: no full scale


def test_focus_score_falls_with_blur_and_ignores_scale():
    rng = np.random.default_rng(0)
    sharp = np.zeros((128, 128), np.float64)
    sharp[rng.integers(0, 128, 60), rng.integers(0, 128, 60)] = 1.0
    sharp = ndimage.gaussian_filter(sharp, 1.5)
    as8 = np.round(sharp / sharp.max() * 200).astype(np.uint8)
    as16 = as8.astype(np.uint16) * 16  # the same image, 12-bit
    assert focus_score(as16) == pytest.approx(focus_score(as8), rel=1e-9)
    blurred = ndimage.gaussian_filter(as8.astype(np.float64), 3)
    assert focus_score(blurred) < 0.2 * focus_score(as8)
    assert focus_score(np.full((32, 32), 7, np.uint8)) == 0.0


def test_plate_flags_known_answers():
    rows = pd.DataFrame(
        {
            "plate_id": ["A"] * 5 + ["B", "B"],
            "image_id": [*"abcde", "f", "g"],
            "focus_score": [1.0, 1.1, 0.9, 0.3, 1.0, 0.01, 1.0],
            "saturated_fraction": [0, 0, 0.02, 0, 0.004, 0, 0],
            "empty": [False, False, False, False, True, False, False],
        }
    )
    out = plate_flags(rows)
    assert out["quality_flags"].tolist() == ["", "", "saturated", "out_of_focus", "empty", "", ""]
    assert out["focus_relative"].iloc[3] == pytest.approx(0.3)
    # plate B has two images: too few to tell a blurred one from its neighbour
    assert not out.loc[out.plate_id == "B", "out_of_focus"].any()


def _record(image, image_id):
    return image_record(
        image,
        cells=1,
        plate_id="FNC",
        image_id=image_id,
        image_uri=image_id,
        image_sha256="0" * 64,
        pixel_size_um=None,
        model_name="m",
        model_version="v",
        processed_at=WHEN,
    )


@pytest.mark.fnc
def test_blurred_and_saturated_copies_of_a_real_image_are_flagged(fnc_root):
    """The six real FNC samples as one plate, with a defocused copy (Gaussian sigma 3 px, its
    own pixel noise added back, as a camera would record it) and an over-exposed copy (4x,
    clipped) of one: the copies are flagged, the originals are not."""
    files = sorted(fnc_root.glob("*/images/*"))
    assert len(files) == 6
    rows = [_record(read_native(str(f)), f.stem) for f in files]
    original = read_native(str(files[-1]))
    x = original.astype(np.float64)
    noise = x - ndimage.gaussian_filter(x, sigma=(1, 1, 0))
    noise = np.random.default_rng(0).permutation(noise.reshape(-1, 3)).reshape(x.shape)
    defocused = ndimage.gaussian_filter(x, sigma=(3, 3, 0)) + noise
    rows.append(_record(np.clip(np.round(defocused), 0, 255).astype(np.uint8), "blurred"))
    rows.append(_record(np.clip(x * 4, 0, 255).astype(np.uint8), "saturated"))
    table = plate_flags(pd.DataFrame(rows))
    assert list(table.columns[: len(IMAGE_COLUMNS)]) == list(IMAGE_COLUMNS)
    flags = dict(zip(table.image_id, table.quality_flags, strict=True))
    assert flags.pop("blurred") == "out_of_focus"
    assert flags.pop("saturated") == "saturated"
    assert set(flags.values()) == {""}, flags


def test_image_table_reads_schema_1_and_2_files_as_one(tmp_path):
    """Version 2 adds ``confidence``; a plate's rows written before it read back as null."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from neuroseg import storage
    from neuroseg.quality import IMAGE_SCHEMA, read_image_table, write_image_record

    root = tmp_path / "images" / "plate_id=P1"
    img = np.zeros((32, 32), np.uint8)
    new = image_record(
        img,
        cells=2,
        plate_id="P1",
        image_id="new",
        image_uri="new.png",
        image_sha256="1" * 64,
        pixel_size_um=None,
        model_name="m",
        model_version="v2",
        processed_at=WHEN,
        confidence=0.25,
    )
    write_image_record(new, str(root / "new.parquet"))
    assert pq.read_schema(root / "new.parquet").metadata[b"neuroseg.image_schema_version"] == b"2"
    old_schema = pa.schema(
        [f for f in IMAGE_SCHEMA if f.name not in ("confidence", "plate_id")],
        metadata={"neuroseg.image_schema_version": "1"},
    )
    old = {k: v for k, v in {**new, "image_id": "old"}.items() if k in old_schema.names}
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([old], schema=old_schema), buf)
    storage.write_bytes(str(root / "old.parquet"), buf.getvalue())
    table = read_image_table(str(tmp_path / "images")).set_index("image_id")
    assert table.loc["new", "confidence"] == 0.25
    assert np.isnan(table.loc["old", "confidence"]) and table.loc["old", "cells"] == 2
    assert (table["plate_id"] == "P1").all()
