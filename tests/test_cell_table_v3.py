"""The nightly flow writes schema version 3 (µm, every channel) and reads older partitions.

A real Prefect API, a real registered Keras model (probability = green / 255, so the cells of a
drawn image are known), real OME-TIFF and PNG files."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuroseg import storage
from neuroseg.inference import cells_file_uri, processed_record_uri, read_cells
from neuroseg.measure import CELL_COLUMNS, UM_COLUMNS, cell_records
from tests.test_segment_files import NAMES3, _ome_tiff, discs, green_model, write_png

__all__ = ["green_model"]  # the fixture, shared with test_segment_files

pytestmark = pytest.mark.slow


def _version2_partition(root: str) -> None:
    """One image's rows as a version-2 file held them: no µm, no channel columns."""
    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15] = 1
    df = cell_records(
        labels,
        np.full((40, 40, 1), 7, np.uint8),
        None,
        plate_id="P0",
        image_id="old",
        image_uri="s3://old/P0/old.png",
        image_sha256="0" * 64,
        model_name="m",
        model_version="v0",
        processed_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    )
    keep = [c for c in CELL_COLUMNS if c not in UM_COLUMNS and c != "plate_id"]
    table = pa.Table.from_pandas(df[keep], preserve_index=False)
    table = table.replace_schema_metadata({"neuroseg.schema_version": "2"})
    uri = cells_file_uri(storage.join(root, "cells"), "P0", "old")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue())


def test_nightly_run_writes_um_and_channels_and_reads_old_partitions(
    prefect_api, tmp_path, green_model
):
    from flows.infer import InferParams, nightly_inference

    root = str(tmp_path / "root")
    _version2_partition(root)
    uploads = tmp_path / "root" / "uploads"
    # green 250: below 8-bit full scale, so not saturated
    _ome_tiff(uploads / "P1" / "ome.tif", discs([(20, 30), (70, 120)], green=250), NAMES3, 0.65)
    write_png(uploads / "P2" / "plain.png", discs([(50, 75)]))
    write_png(uploads / "P3" / "unknown.png", discs([(40, 40)]))
    write_png(uploads / "P3" / "dark.png", np.zeros((100, 150, 3), np.uint8))
    # the plate folder's plate.json gives its size; a broken one fails its image, not the night
    write_png(uploads / "P4" / "side.png", discs([(40, 40)]))
    storage.write_json(str(uploads / "P4" / "plate.json"), {"pixel_size_um": 0.4})
    write_png(uploads / "P5" / "bad.png", discs([(40, 40)]))
    storage.write_json(str(uploads / "P5" / "plate.json"), {"pixel_size_um": "big"})

    summary = nightly_inference(
        InferParams(
            root=root,
            model=green_model,
            pixel_size_um={"P2": 0.5},
            markers={"neun": 100, "dapi": "otsu"},
            report=True,
        )
    )
    assert summary["images"] == 5 and summary["failed"] == 1
    rec = storage.read_json(processed_record_uri(root, "P4", "side"))
    assert (rec["pixel_size_um"], rec["pixel_size_source"]) == (0.4, "sidecar")
    assert not storage.exists(processed_record_uri(root, "P5", "bad"))  # retried next night
    page = storage.read_bytes(summary["reports"]["P5"]).decode()
    assert "P5/plate.json: pixel_size_um must be a positive number" in page

    cells = read_cells(storage.join(root, "cells"))
    by = {str(p): rows for p, rows in cells.groupby("plate_id", observed=True)}
    assert sorted(by) == ["P0", "P1", "P2", "P3", "P4"]
    assert (by["P4"].pixel_size_um == 0.4).all()
    ome, png, unknown, old = by["P1"], by["P2"], by["P3"], by["P0"]
    # the OME-TIFF's own size and channel names
    assert len(ome) == 2 and (ome.pixel_size_um == 0.65).all()
    np.testing.assert_allclose(ome.area_um2, 113 * 0.65**2)
    assert (ome.mean_intensity_dapi == 200).all() and (ome.max_intensity_neun == 250).all()
    assert (ome.integrated_intensity_c_fos == 90 * 113).all()
    # a PNG with the plate's size from the parameter; a PNG without: null, never guessed
    assert (png.pixel_size_um == 0.5).all() and (png.area_um2 == 113 * 0.25).all()
    assert (png.mean_intensity_c1 == 255).all() and png.mean_intensity_dapi.isna().all()
    assert unknown[list(UM_COLUMNS)].isna().all().all() and len(unknown) == 1
    # the version-2 partition reads with the new columns, null
    assert len(old) == 1 and old.area_px.iloc[0] == 100
    assert old[list(UM_COLUMNS)].isna().all().all() and old.mean_intensity_c0.isna().all()
    assert cells["area_um2"].dtype == np.float64

    rec = storage.read_json(processed_record_uri(root, "P1", "ome"))
    assert (rec["pixel_size_um"], rec["pixel_size_source"]) == (0.65, "ome")
    rec = storage.read_json(processed_record_uri(root, "P2", "plain"))
    assert (rec["pixel_size_um"], rec["pixel_size_source"]) == (0.5, "parameter")
    rec = storage.read_json(processed_record_uri(root, "P3", "unknown"))
    assert (rec["pixel_size_um"], rec["pixel_size_source"]) == (None, None)
    page = storage.read_bytes(summary["reports"]["P1"]).decode()
    assert '<span class="um2">47.7</span> µm²' in page  # 113 * 0.4225 = 47.74

    # the per-image table: one row per image, with its quality; the discs' green is at 8-bit
    # full scale (113 px of 15,000 per disc: 0.75 % > 0.5 %), the dark image has no cell
    from neuroseg.quality import read_image_table

    images = read_image_table(storage.join(root, "images")).set_index("image_id")
    assert sorted(images.index) == ["dark", "ome", "plain", "side", "unknown"]
    assert images.loc["ome", "cells"] == 2 and images.loc["ome", "pixel_size_um"] == 0.65
    assert images.loc["ome", "channels"] == 3 and images.loc["ome", "dtype"] == "uint8"
    assert images.loc["plain", "saturated_fraction"] == pytest.approx(113 / 15000)
    assert images.loc["plain", "quality_flags"] == "saturated"
    assert images.loc["dark", "quality_flags"] == "empty"
    assert np.isnan(images.loc["unknown", "pixel_size_um"])
    page = storage.read_bytes(summary["reports"]["P3"]).decode()
    assert '<span class="flag">empty</span>' in page and "2 flagged" in page

    # plate summaries: Parquet per plate, a table artifact, the report's table
    from neuroseg.summary import read_plate_summary

    plates = read_plate_summary(root).astype({"plate_id": str}).set_index("plate_id")
    p1 = plates.loc["P1"]
    assert p1["well"] == "all" and p1["images"] == 1 and p1["cells"] == 2
    assert p1["imaged_area_mm2"] == pytest.approx(100 * 150 * 0.65**2 / 1e6)
    assert p1["cells_per_mm2"] == pytest.approx(2 / (100 * 150 * 0.65**2 / 1e6))
    assert p1["median_area_um2"] == pytest.approx(113 * 0.65**2)
    assert p1["fraction_positive_neun"] == 1.0 and p1["threshold_neun"] == 100
    assert np.isnan(p1["fraction_positive_dapi"])  # Otsu needs two distinct means
    p3 = plates.loc["P3"]  # unknown.png saturated (left out), dark.png empty (counted: 0)
    assert (p3["images"], p3["images_flagged"], p3["cells"]) == (2, 1, 0)
    assert p3["cells_in_flagged_images"] == 1 and np.isnan(p3["cells_per_mm2"])
    assert summary["summaries"]["P1"] == storage.join(
        root, "summaries", "plate_id=P1", "summary.parquet"
    )
    page = storage.read_bytes(summary["reports"]["P1"]).decode()
    assert 'class="summary-row" data-well="all"' in page and "neun+ (%)" in page
