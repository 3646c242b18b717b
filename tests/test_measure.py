"""Per-cell records: known shapes, the published schema and a Parquet round trip."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skimage.measure import regionprops

from neuroseg.measure import (
    CELL_COLUMNS,
    CELL_SCHEMA,
    SCHEMA_VERSION,
    UM_COLUMNS,
    cell_records,
    cell_schema,
    channel_columns,
    channel_labels,
    table_schema,
    to_arrow,
)
from neuroseg.predict import relabel_raster

WHEN = dt.datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=dt.UTC)
LINEAGE = dict(
    plate_id="P001",
    image_id="img_01",
    image_uri="s3://bucket/uploads/P001/img_01.png",
    image_sha256="ab" * 32,
    model_name="fnc-unet",
    model_version="v3",
    processed_at=WHEN,
    flow_run_id="0b4f-run",
)


@pytest.fixture
def scene():
    """A 10x20 rectangle, a radius-15 disc and a one-pixel cell on the border."""
    labels = np.zeros((100, 120), dtype=np.int32)
    labels[10:20, 30:50] = 1  # rows 10..19, cols 30..49
    rr, cc = np.indices(labels.shape)
    labels[(rr - 60) ** 2 + (cc - 60) ** 2 <= 15**2] = 2
    labels[99, 0] = 3
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    image[labels == 1] = (30, 60, 90)  # channel mean 60
    image[labels == 2] = (200, 200, 0)
    prob = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    prob[labels == 2] = 0.6
    return labels, image, prob


def test_known_shapes(scene):
    labels, image, prob = scene
    df = cell_records(labels, image, prob, **LINEAGE)
    rgb = [c for label in ("c0", "c1", "c2") for c in channel_columns(label)]
    assert list(df.columns) == [*CELL_COLUMNS, *rgb]
    assert df["cell_id"].tolist() == [1, 2, 3]
    assert df[list(UM_COLUMNS)].isna().all().all()  # no pixel size given: null, not guessed
    rect = df.iloc[0]
    assert rect["area_px"] == 200
    assert (rect["bbox_x"], rect["bbox_y"], rect["bbox_width"], rect["bbox_height"]) == (
        30,
        10,
        20,
        10,
    )
    assert rect["centroid_x"] == pytest.approx(39.5) and rect["centroid_y"] == pytest.approx(14.5)
    assert rect["mean_intensity"] == pytest.approx(60.0)
    assert rect["mean_probability"] == pytest.approx(0.8)
    assert not rect["touches_border"]
    assert rect["solidity"] == pytest.approx(1.0)
    assert rect["orientation"] == pytest.approx(-np.pi / 2) or rect["orientation"] == pytest.approx(
        np.pi / 2
    )  # major axis along the columns
    props = regionprops(labels)
    assert rect["perimeter"] == pytest.approx(props[0].perimeter)
    assert rect["major_axis_length"] == pytest.approx(props[0].axis_major_length)
    disc = df.iloc[1]
    assert disc["eccentricity"] < 0.05
    assert disc["major_axis_length"] == pytest.approx(disc["minor_axis_length"], rel=0.01)
    assert disc["major_axis_length"] == pytest.approx(30, rel=0.05)
    assert disc["mean_intensity"] == pytest.approx(400 / 3)
    assert disc["mean_probability"] == pytest.approx(0.6)
    assert (disc["centroid_x"], disc["centroid_y"]) == (pytest.approx(60), pytest.approx(60))
    dot = df.iloc[2]
    assert dot["area_px"] == 1 and dot["touches_border"] and dot["eccentricity"] == 0.0
    assert (df["plate_id"] == "P001").all() and (df["flow_run_id"] == "0b4f-run").all()
    assert (df["processed_at"] == pd.Timestamp(WHEN)).all()


def test_dtypes_follow_schema_and_empty_image(scene):
    labels, image, prob = scene
    df = cell_records(labels, image, prob, **LINEAGE)
    empty = cell_records(np.zeros_like(labels), image, prob, **LINEAGE)
    assert len(empty) == 0
    assert list(empty.columns) == list(df.columns)
    assert empty.dtypes.to_dict() == df.dtypes.to_dict()
    assert str(df["processed_at"].dtype) == "datetime64[us, UTC]"
    assert df["cell_id"].dtype == np.int32 and df["area_px"].dtype == np.int64
    for table in (to_arrow(df), to_arrow(empty)):
        assert table.schema.equals(cell_schema(["c0", "c1", "c2"]), check_metadata=True)
    assert to_arrow(df[list(CELL_COLUMNS)]).schema.equals(CELL_SCHEMA, check_metadata=True)
    assert CELL_SCHEMA.metadata[b"neuroseg.schema_version"] == b"3" == str(SCHEMA_VERSION).encode()
    um = [f for f in CELL_SCHEMA if f.name in UM_COLUMNS]
    assert [f.name for f in um] == list(UM_COLUMNS)
    assert all(f.type == pa.float64() and f.nullable for f in um)


def test_parquet_round_trip(scene, tmp_path):
    labels, image, prob = scene
    df = cell_records(labels, image, prob, **{**LINEAGE, "flow_run_id": None})
    path = tmp_path / "cells.parquet"
    pq.write_table(to_arrow(df), path)
    assert pq.read_schema(path).equals(cell_schema(["c0", "c1", "c2"]), check_metadata=True)
    assert pq.read_table(path).column("area_um2").null_count == len(df)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, df)
    assert back["flow_run_id"].isna().all()


def test_processed_at_is_converted_to_utc(scene):
    labels, image, prob = scene
    cet = dt.timezone(dt.timedelta(hours=1))
    df = cell_records(
        labels, image, None, **{**LINEAGE, "processed_at": "2025-03-04T06:06:07.123456+01:00"}
    )
    assert df["processed_at"].iloc[0] == pd.Timestamp(WHEN)
    assert df["mean_probability"].isna().all()
    df = cell_records(labels, image, prob, **{**LINEAGE, "processed_at": WHEN.astimezone(cet)})
    assert df["processed_at"].iloc[0] == pd.Timestamp(WHEN)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"processed_at": dt.datetime(2025, 1, 1)}, "timezone-aware"),
        ({"processed_at": "yesterday"}, "processed_at"),
        ({"plate_id": ""}, "plate_id"),
        ({"flow_run_id": 5}, "flow_run_id"),
    ],
)
def test_lineage_validation(scene, change, message):
    labels, image, prob = scene
    with pytest.raises(ValueError, match=message):
        cell_records(labels, image, prob, **{**LINEAGE, **change})


def test_array_validation(scene):
    labels, image, prob = scene
    with pytest.raises(ValueError, match="like the labels"):
        cell_records(labels, image[:-1], prob, **LINEAGE)
    with pytest.raises(ValueError, match="real dtype"):
        cell_records(labels, image.astype(np.complex64), prob, **LINEAGE)
    with pytest.raises(ValueError, match="prob shape"):
        cell_records(labels, image, prob[:-1], **LINEAGE)
    gappy = np.where(labels == 2, 5, labels)
    with pytest.raises(ValueError, match=r"1\.\.n"):
        cell_records(gappy, image, prob, **LINEAGE)


def test_to_arrow_rejects_wrong_columns(scene):
    labels, image, prob = scene
    df = cell_records(labels, image, prob, **LINEAGE)
    with pytest.raises(ValueError, match="missing columns"):
        to_arrow(df.drop(columns=["solidity"]))
    with pytest.raises(ValueError, match="unexpected"):
        to_arrow(df.assign(extra=1))
    assert isinstance(to_arrow(df), pa.Table)


def test_mean_intensity_in_the_image_units(scene):
    """A 12-bit grey image gives mean_intensity in camera units; channels are averaged."""
    labels, image, prob = scene
    grey = image[..., 0].astype(np.uint16) * 16  # 0..4080, as a 12-bit camera writes
    df16 = cell_records(labels, grey, prob, **LINEAGE)
    df8 = cell_records(labels, image[..., :1], prob, **LINEAGE)
    np.testing.assert_allclose(df16["mean_intensity"], 16 * df8["mean_intensity"])
    two = np.stack([grey, np.zeros_like(grey)], axis=2)
    df2 = cell_records(labels, two, prob, **LINEAGE)
    np.testing.assert_allclose(df2["mean_intensity"], df16["mean_intensity"] / 2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_means_are_those_of_each_cells_own_pixels(dtype):
    """mean_intensity and mean_probability, summed over the cells' pixels only, equal the
    plain per-cell means of a random multi-channel image (background pixels count for none)."""
    rng = np.random.default_rng(3)
    labels = np.zeros((60, 80), np.int32)
    for i, (r, c) in enumerate(rng.integers(5, 55, (7, 2)), start=1):
        labels[max(r - 4, 0) : r + 4, c : c + 9] = i
    labels, n = relabel_raster(labels)
    image = (rng.random((60, 80, 3)) * 1000).astype(dtype)
    prob = rng.random((60, 80)).astype(np.float32)
    df = cell_records(labels, image, prob, **LINEAGE)
    assert len(df) == n > 3
    for row in df.itertuples():
        own = labels == row.cell_id
        assert row.mean_intensity == pytest.approx(image[own].astype(np.float64).mean(), rel=1e-12)
        assert row.mean_probability == pytest.approx(prob[own].astype(np.float64).mean(), rel=1e-12)
        for c in range(3):
            values = image[..., c][own].astype(np.float64)
            got = df.loc[row.Index]
            assert got[f"mean_intensity_c{c}"] == pytest.approx(values.mean(), rel=1e-12)
            assert got[f"integrated_intensity_c{c}"] == pytest.approx(values.sum(), rel=1e-12)
            assert got[f"max_intensity_c{c}"] == values.max()


def test_known_physical_units_and_channels(scene):
    """0.65 µm pixels: the µm columns are the pixel columns scaled (areas by 0.4225), and each
    channel's mean, sum and maximum are those of the cell's own pixels."""
    labels, image, prob = scene
    df = cell_records(
        labels, image, prob, **LINEAGE, pixel_size_um=0.65, channel_names=["DAPI", "NeuN", "c-Fos"]
    )
    rect, disc = df.iloc[0], df.iloc[1]
    assert (df["pixel_size_um"] == 0.65).all()
    assert rect["area_um2"] == pytest.approx(200 * 0.65**2) == pytest.approx(84.5)
    assert rect["centroid_x_um"] == pytest.approx(39.5 * 0.65)
    assert rect["centroid_y_um"] == pytest.approx(14.5 * 0.65)
    for col in ("perimeter", "major_axis_length", "minor_axis_length"):
        np.testing.assert_allclose(df[f"{col}_um"], df[col] * 0.65)
    assert (rect["mean_intensity_dapi"], rect["mean_intensity_neun"]) == (30.0, 60.0)
    assert rect["mean_intensity_c_fos"] == 90.0
    assert rect["integrated_intensity_neun"] == 60.0 * 200
    assert rect["max_intensity_c_fos"] == 90.0
    assert disc["mean_intensity_dapi"] == 200.0 and disc["max_intensity_c_fos"] == 0.0
    assert disc["integrated_intensity_dapi"] == 200.0 * disc["area_px"]
    assert to_arrow(df).schema.equals(cell_schema(["dapi", "neun", "c_fos"]))


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), True, "0.65"])
def test_pixel_size_must_be_positive(scene, bad):
    labels, image, prob = scene
    with pytest.raises(ValueError, match="pixel_size_um"):
        cell_records(labels, image, prob, **LINEAGE, pixel_size_um=bad)


def test_channel_labels():
    assert channel_labels(["DAPI", "NeuN 488", "c-Fos"], 3) == ["dapi", "neun_488", "c_fos"]
    assert channel_labels(None, 2) == ["c0", "c1"]
    assert channel_labels(["DAPI"], 2) == ["c0", "c1"]  # not one name per channel
    assert channel_labels(["GFP", "gfp"], 2) == ["c0", "c1"]  # not distinct once lower-cased
    assert channel_labels(["GFP", "---"], 2) == ["c0", "c1"]  # nothing left of a name
    with pytest.raises(ValueError, match="channel label"):
        channel_columns("NeuN")


def test_table_schema_unifies_channels_and_old_files(scene):
    """Files of different channels and a version-2 file read as one table: core columns
    first, each channel column once, plate_id last; columns a file lacks read as null."""
    labels, image, prob = scene
    named = to_arrow(cell_records(labels, image, prob, **LINEAGE, channel_names=["a", "b", "c"]))
    grey = to_arrow(cell_records(labels, image[..., :1], prob, **LINEAGE))
    v2 = pa.schema([f for f in grey.schema if f.name in CELL_COLUMNS and f.name not in UM_COLUMNS])
    schema = table_schema([v2, grey.schema, named.schema])
    extra = [*channel_columns("c0"), *channel_columns("a"), *channel_columns("b")]
    extra += channel_columns("c")
    core = [c for c in CELL_COLUMNS if c != "plate_id"]
    assert schema.names == [*core, *extra, "plate_id"]
    assert schema.metadata[b"neuroseg.schema_version"] == b"3"
