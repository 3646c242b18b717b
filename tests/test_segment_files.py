"""``neuroseg segment``: image files -> one per-cell Parquet file, with a real registered model.

The model is a real Keras model saved in the registry and loaded back: a 1x1 convolution that
outputs green / 255, so the cells of a drawn image are known exactly.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from neuroseg import registry, storage
from neuroseg.images import encode_png
from neuroseg.measure import CELL_COLUMNS, UM_COLUMNS, cell_schema, channel_columns
from neuroseg.segment_files import segment_files

SHAPE = (100, 150)


@pytest.fixture(scope="module")
def green_model(tmp_path_factory) -> str:
    """A registered model whose probability is the green channel / 255 (64x64 tiles)."""
    import keras

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(1, 1, use_bias=False, name="green")(inputs)
    model = keras.Model(inputs, outputs)
    model.set_weights([np.array([0.0, 1 / 255, 0.0], "f4").reshape(1, 1, 3, 1)])
    root = str(tmp_path_factory.mktemp("registry"))
    return registry.register_model(
        root,
        "green",
        model=model,
        config={"architecture": "green", "tile": 64, "min_overlap": 16, "min_area": 5},
        lineage={"purpose": "test"},
    )


def discs(centres, radius=6, green=255) -> np.ndarray:
    rr, cc = np.indices(SHAPE)
    image = np.zeros((*SHAPE, 3), np.uint8)
    image[..., 0] = 40  # red and blue must not matter
    for (r, c), g in zip(centres, np.broadcast_to(green, len(centres)), strict=True):
        image[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = (200, g, 90)
    return image


def write_png(path, image) -> bytes:
    data = encode_png(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def test_cells_of_good_files_and_one_line_errors_for_bad_ones(tmp_path, green_model, capsys):
    plate = tmp_path / "P007"
    a = write_png(plate / "well_a.png", discs([(20, 30), (70, 120)]))
    b = write_png(plate / "well_b.png", discs([(50, 75), (15, 130), (85, 20)]))
    good = encode_png(discs([(50, 50)]))
    (plate / "broken.png").write_bytes(good[: len(good) // 2])
    (plate / "notes.png").write_bytes(b"not an image\n")
    out = tmp_path / "out" / "cells.parquet"
    files = [
        plate / "well_a.png",
        plate / "broken.png",
        plate / "missing.png",
        plate / "well_b.png",
    ]
    files.append(plate / "notes.png")

    df = segment_files([str(f) for f in files], out=str(out), model=green_model)

    lines = capsys.readouterr().err.strip().splitlines()
    progress = re.compile(r"^\d\d:\d\d:\d\d segment \d+/\d+ images")  # the progress lines
    err = [x for x in lines if not progress.match(x)]
    assert len(err) == 3
    for name, line in zip(("broken.png", "missing.png", "notes.png"), err, strict=True):
        assert str(plate / name) in line and line.startswith("neuroseg segment: skipped ")
    rgb = [c for label in ("c0", "c1", "c2") for c in channel_columns(label)]
    assert list(df.columns) == [*CELL_COLUMNS, *rgb]
    assert df[list(UM_COLUMNS)].isna().all().all()  # PNG: no pixel size
    assert (df.mean_intensity_c1 == 255).all() and (df.max_intensity_c0 == 200).all()
    assert df.groupby("image_id").size().to_dict() == {"well_a": 2, "well_b": 3}
    well_b = df[df.image_id == "well_b"]
    # raster order of first pixel; centroids exact for symmetric discs
    np.testing.assert_allclose(
        well_b[["centroid_y", "centroid_x"]], [(15, 130), (50, 75), (85, 20)]
    )
    assert (df.area_px == df.area_px.iloc[0]).all() and df.area_px.iloc[0] == 113  # r=6 disc
    assert (df.plate_id == "P007").all() and (df.flow_run_id.isna()).all()
    shas = dict(zip(df.image_id, df.image_sha256, strict=False))
    assert shas == {
        "well_a": hashlib.sha256(a).hexdigest(),
        "well_b": hashlib.sha256(b).hexdigest(),
    }
    assert set(df.image_uri) == {str(plate / "well_a.png"), str(plate / "well_b.png")}
    assert (df.model_name == "green").all()
    assert (df.model_version == green_model.rsplit("/", 1)[-1]).all()
    np.testing.assert_allclose(df.mean_probability, 1.0, atol=1e-6)
    np.testing.assert_allclose(df.mean_intensity, (200 + 255 + 90) / 3)
    assert (pd.Timestamp.now(tz="UTC") - df.processed_at).max() < pd.Timedelta(minutes=5)

    table = pq.read_table(out)
    assert table.schema.equals(cell_schema(["c0", "c1", "c2"]), check_metadata=True)
    back = table.to_pandas()
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert [p.name for p in out.parent.iterdir()] == ["cells.parquet"]  # no temp files left


def test_threshold_override_and_model_min_area(tmp_path, green_model):
    # green 150 -> p = 0.59 and 100 -> p = 0.39: the second disc is cell only below 0.39
    image = discs([(20, 30), (70, 120)], green=[150, 100])
    image[50, 60] = (0, 255, 0)  # one-pixel speck: below the model's min_area of 5
    write_png(tmp_path / "x.png", image)
    default = segment_files([str(tmp_path / "x.png")], out=str(tmp_path / "a.parquet"),
                            model=green_model)  # fmt: skip
    low = segment_files([str(tmp_path / "x.png")], out=str(tmp_path / "b.parquet"),
                        model=green_model, threshold=0.3)  # fmt: skip
    assert len(default) == 1 and default.centroid_x.tolist() == [30.0]
    assert len(low) == 2 and sorted(low.centroid_x) == [30.0, 120.0]


def test_watershed_splits_touching_cells(tmp_path, green_model):
    write_png(tmp_path / "pair.png", discs([(50, 60), (50, 78)], radius=10))
    kw = {"model": green_model}
    whole = segment_files([str(tmp_path / "pair.png")], out=str(tmp_path / "a.parquet"), **kw)
    split = segment_files(
        [str(tmp_path / "pair.png")], out=str(tmp_path / "b.parquet"), watershed=True, **kw
    )
    assert len(whole) == 1 and len(split) == 2
    np.testing.assert_allclose(sorted(split.centroid_x), [60, 78], atol=1.5)


def test_file_at_a_root_has_empty_plate_and_cells_table_may_be_empty(tmp_path, green_model):
    write_png(tmp_path / "dark.png", np.zeros((*SHAPE, 3), np.uint8))
    out = tmp_path / "none.parquet"
    df = segment_files([f"file://{tmp_path}/dark.png"], out=str(out), model=green_model)
    assert len(df) == 0 and list(df.columns)[: len(CELL_COLUMNS)] == list(CELL_COLUMNS)
    assert df.attrs == {"images": 1, "failed": 0}
    schema = cell_schema(["c0", "c1", "c2"])
    assert pq.read_table(out).schema.equals(schema) and pq.read_table(out).num_rows == 0
    from neuroseg.segment_files import _plate_id

    assert _plate_id("s3://bucket/a.png") == "" and _plate_id("s3://bucket/P1/a.png") == "P1"


def test_nothing_processed_raises_and_writes_nothing(tmp_path, green_model, capsys):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    out = tmp_path / "cells.parquet"
    with pytest.raises(ValueError, match="none of the 1 image"):
        segment_files([str(tmp_path / "bad.png")], out=str(out), model=green_model)
    assert "bad.png" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"images": []}, "no images"),
        ({"images": "a.png"}, "list"),
        ({"threshold": 1.5}, "threshold"),
        ({"precision": "fp16"}, "precision"),
        ({"out": ""}, "out must"),
    ],
)
def test_bad_arguments(tmp_path, green_model, kw, match):
    args = {"images": [str(tmp_path / "a.png")], "out": str(tmp_path / "c.parquet")}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        segment_files(args.pop("images"), model=green_model, **args)


def test_missing_model_folder(tmp_path):
    write_png(tmp_path / "x.png", discs([(20, 30)]))
    with pytest.raises(registry.ModelNotFoundError, match="not a model folder"):
        segment_files([str(tmp_path / "x.png")], out=str(tmp_path / "c.parquet"),
                      model=str(tmp_path / "nomodel"))  # fmt: skip


def test_command_line(tmp_path, green_model, capsys):
    from neuroseg.cli import main

    write_png(tmp_path / "P1" / "a.png", discs([(20, 30), (70, 120)]))
    out = tmp_path / "cells.parquet"
    rc = main(
        ["segment", str(tmp_path / "P1" / "a.png"), "--out", str(out), "--model", green_model]
    )
    assert rc == 0 and "2 cells in 1 image(s)" in capsys.readouterr().out
    # an image without cells still counts as processed; a bad one is reported as skipped
    write_png(tmp_path / "P1" / "dark.png", np.zeros((*SHAPE, 3), np.uint8))
    (tmp_path / "P1" / "bad.png").write_bytes(b"not an image")
    names = [str(tmp_path / "P1" / n) for n in ("a.png", "dark.png", "bad.png")]
    assert main(["segment", *names, "--out", str(out), "--model", green_model]) == 0
    assert "2 cells in 2 image(s), 1 skipped" in capsys.readouterr().out
    assert storage.read_parquet(str(out)).cell_id.tolist() == [1, 2]
    # --tta flips: four flipped predictions averaged; this model is flip-equivariant, so the
    # same cells come out (a real Keras model on tiles, each flip stitched and flipped back)
    out_tta = tmp_path / "cells-tta.parquet"
    args = ["segment", str(tmp_path / "P1" / "a.png"), "--model", green_model]
    assert main([*args, "--out", str(out_tta), "--tta", "flips"]) == 0
    plain, tta = storage.read_parquet(str(out)), storage.read_parquet(str(out_tta))
    assert tta.cell_id.tolist() == [1, 2] and tta.area_px.tolist() == plain.area_px.tolist()
    with pytest.raises(SystemExit):
        main([*args, "--out", str(out_tta), "--tta", "rot90"])
    assert "invalid choice: 'rot90'" in capsys.readouterr().err


def _ome_tiff(path, image_yxc: np.ndarray, names, size_um: float) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path,
        np.moveaxis(image_yxc, -1, 0),
        ome=True,
        photometric="minisblack",
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": size_um,
            "PhysicalSizeY": size_um,
            "Channel": {"Name": list(names)},
        },
    )


def test_ome_tiff_and_png_in_one_batch_physical_units_and_named_channels(tmp_path, green_model):
    """An OME-TIFF (0.65 µm, named channels) and a PNG in one call: the TIFF's cells get µm
    and their channels' names, the PNG's nulls and c0..c2; each image's columns, null in the
    other's rows. --pixel-size-um gives the PNG a size (and wins over the TIFF's)."""
    from neuroseg.cli import main

    _ome_tiff(tmp_path / "P1" / "ome.tif", discs([(20, 30), (70, 120)]), NAMES3, 0.65)
    write_png(tmp_path / "P1" / "plain.png", discs([(50, 75)]))
    files = [str(tmp_path / "P1" / "ome.tif"), str(tmp_path / "P1" / "plain.png")]
    df = segment_files(files, out=str(tmp_path / "c.parquet"), model=green_model)
    ome, png = df[df.image_id == "ome"], df[df.image_id == "plain"]
    assert len(ome) == 2 and len(png) == 1
    assert (ome.pixel_size_um == 0.65).all()
    np.testing.assert_allclose(ome.area_um2, 113 * 0.65**2)  # r = 6 discs of 113 px
    np.testing.assert_allclose(ome.centroid_x_um, np.array([30, 120]) * 0.65)
    assert (ome.mean_intensity_dapi == 200).all() and (ome.mean_intensity_neun == 255).all()
    assert (ome.integrated_intensity_c_fos == 90 * 113).all()
    assert ome.mean_intensity_c0.isna().all() and png.mean_intensity_dapi.isna().all()
    assert png[list(UM_COLUMNS)].isna().all().all() and (png.mean_intensity_c1 == 255).all()
    back = pq.read_table(tmp_path / "c.parquet").to_pandas()
    assert back["area_um2"].isna().sum() == 1 and back["mean_intensity_neun"].notna().sum() == 2

    out = tmp_path / "given.parquet"
    assert main(["segment", *files, "--out", str(out), "--model", green_model,
                 "--pixel-size-um", "0.5"]) == 0  # fmt: skip
    given = storage.read_parquet(str(out))
    assert (given.pixel_size_um == 0.5).all()
    np.testing.assert_allclose(given.area_um2, 113 * 0.25)


NAMES3 = ("DAPI", "NeuN", "c-Fos")


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "inf"])
def test_pixel_size_option_must_be_positive(tmp_path, capsys, bad):
    from neuroseg.cli import main

    with pytest.raises(SystemExit):
        main(["segment", "a.png", "--out", str(tmp_path / "c.parquet"), "--pixel-size-um", bad])
    err = capsys.readouterr().err
    assert f"--pixel-size-um: must be a positive number of µm, got '{bad}'" in err
