"""Pixel size and channel names from real encoded files (tifffile, Pillow): known answers."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from neuroseg.imagemeta import ImageMeta, image_meta
from neuroseg.images import decode_native
from neuroseg.measure import UM_COLUMNS, cell_records

NAMES = ["DAPI", "NeuN", "c-Fos"]


def _tiff(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kw)
    return buf.getvalue()


def _ome(array: np.ndarray, size: float = 0.65, unit: str = "µm", **meta) -> bytes:
    return _tiff(
        array,
        ome=True,
        photometric="minisblack",
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": size,
            "PhysicalSizeY": size,
            "PhysicalSizeXUnit": unit,
            "PhysicalSizeYUnit": unit,
            "Channel": {"Name": NAMES},
            **meta,
        },
    )


def _scene():
    """Three cells on a 3-channel 16-bit plane (CYX): each cell has its own constant value
    per channel, the background 0."""
    labels = np.zeros((64, 80), np.int32)
    labels[5:15, 10:30] = 1  # 200 px
    rr, cc = np.indices(labels.shape)
    labels[(rr - 40) ** 2 + (cc - 50) ** 2 <= 10**2] = 2
    labels[50:60, 2:5] = 3  # 30 px
    values = {1: (100, 2000, 0), 2: (300, 0, 4095), 3: (50, 60, 70)}
    image = np.zeros((3, 64, 80), np.uint16)
    for cell, per_channel in values.items():
        for c, v in enumerate(per_channel):
            image[c][labels == cell] = v
    return labels, image, values


WHEN = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
LINEAGE = dict(
    plate_id="P1",
    image_id="i",
    image_uri="u",
    image_sha256="s",
    model_name="m",
    model_version="v",
    processed_at=WHEN,
)


def _records(data: bytes, labels: np.ndarray):
    meta = image_meta(data)
    image = decode_native(data, name="x.tif")
    return cell_records(
        labels,
        image,
        None,
        **LINEAGE,
        pixel_size_um=meta.pixel_size_um,
        channel_names=meta.channel_names,
    )


def test_ome_tiff_gives_exact_um_and_per_channel_means():
    labels, image, values = _scene()
    data = _ome(image)
    assert image_meta(data) == ImageMeta(0.65, tuple(NAMES), "ome")
    df = _records(data, labels)
    areas = [int((labels == i).sum()) for i in (1, 2, 3)]
    np.testing.assert_allclose(df["area_um2"], np.array(areas) * 0.4225, rtol=1e-12)
    assert df["area_um2"].iloc[0] == pytest.approx(84.5)
    assert (df["pixel_size_um"] == 0.65).all()
    for row, cell in zip(df.itertuples(), (1, 2, 3), strict=True):
        dapi, neun, cfos = values[cell]
        assert (row.mean_intensity_dapi, row.mean_intensity_neun, row.mean_intensity_c_fos) == (
            dapi,
            neun,
            cfos,
        )
        assert row.max_intensity_c_fos == cfos
        assert row.integrated_intensity_neun == neun * areas[cell - 1]


def test_tiff_resolution_in_cm_or_inch_gives_the_same_um():
    labels, image, _ = _scene()
    per_cm = 1 / 0.65e-4  # pixels per centimetre of 0.65 µm pixels
    cm = _tiff(image, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    inch = _tiff(image, resolution=(per_cm * 2.54,) * 2, resolutionunit="INCH")
    for data in (cm, inch):
        meta = image_meta(data)
        assert meta.source == "tiff-resolution"
        assert meta.pixel_size_um == pytest.approx(0.65, rel=1e-6)
        assert meta.channel_names is None
    df = _records(cm, labels)
    ome = _records(_ome(image), labels)
    np.testing.assert_allclose(df["area_um2"], ome["area_um2"], rtol=1e-6)
    assert [c for c in df.columns if c.startswith("mean_intensity_")] == [
        "mean_intensity_c0",
        "mean_intensity_c1",
        "mean_intensity_c2",
    ]
    np.testing.assert_array_equal(df["mean_intensity_c1"], ome["mean_intensity_neun"])


def test_png_gives_null_um_columns():
    labels, image, values = _scene()
    buf = io.BytesIO()
    Image.fromarray(image[0]).save(buf, format="PNG")  # a 16-bit grey PNG
    data = buf.getvalue()
    assert image_meta(data) == ImageMeta()
    df = _records(data, labels)
    assert df[list(UM_COLUMNS)].isna().all().all()
    assert df["mean_intensity_c0"].tolist() == [values[i][0] for i in (1, 2, 3)]


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])  # ImageJ's ASCII spellings
def test_imagej_tiff_pixel_size(unit):
    image = np.zeros((2, 16, 16), np.uint16)
    data = _tiff(image, imagej=True, resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": unit})
    meta = image_meta(data)
    assert meta.source == "imagej" and meta.pixel_size_um == pytest.approx(0.325, rel=1e-6)


def test_imagej_nm_and_ome_nm():
    image = np.zeros((3, 16, 16), np.uint16)
    data = _tiff(image[0], imagej=True, resolution=(1 / 325, 1 / 325), metadata={"unit": "nm"})
    assert image_meta(data).pixel_size_um == pytest.approx(0.325, rel=1e-6)
    assert image_meta(_ome(image, size=650, unit="nm")).pixel_size_um == pytest.approx(0.65)


def test_sizes_never_guessed():
    image = np.zeros((16, 16), np.uint16)
    # tifffile's default tags (1 pixel per unit, no unit), and no resolution tags at all
    assert image_meta(_tiff(image)) == ImageMeta()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="TIFF")
    assert image_meta(buf.getvalue()).pixel_size_um is None
    # an image editor's 72 dpi is a display default (353 µm), not a microscope's pixel
    dpi72 = _tiff(image, resolution=(72, 72), resolutionunit="INCH")
    assert image_meta(dpi72).pixel_size_um is None
    # non-square pixels: no single size
    oblong = _tiff(image, resolution=(1 / 0.65e-4, 1 / 1.3e-4), resolutionunit="CENTIMETER")
    assert image_meta(oblong).pixel_size_um is None
    # OME without a physical size still names its channels
    three = np.zeros((3, 16, 16), np.uint16)
    bare = _tiff(
        three,
        ome=True,
        photometric="minisblack",
        metadata={"axes": "CYX", "Channel": {"Name": NAMES}},
    )
    assert image_meta(bare) == ImageMeta(None, tuple(NAMES), None)
    # not an image, a truncated TIFF: no metadata, no error
    assert image_meta(b"") == ImageMeta()
    assert image_meta(_ome(three)[:200]) == ImageMeta()
