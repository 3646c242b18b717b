"""Real microscope input: lossless decoding, input as the model declares it, label images out.

The model here is a real Keras model saved in the registry and loaded back: a 1x1 convolution
whose output is the mean of its three input planes / 255, i.e. the normalised brightness, so
the cells of a drawn image are known exactly whatever the bit depth of the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from neuroseg import registry
from neuroseg.images import (
    ImageDecodeError,
    decode_labels,
    decode_native,
    encode_labels,
    read_labels,
)
from neuroseg.metrics import match_by_iou
from neuroseg.normalize import (
    channel_max,
    input_scale,
    input_spec,
    model_input,
    percentile_normalize,
    resize_planes,
    scaled_shape,
    select_channels,
)
from neuroseg.predict import prepare_input, segment_image
from neuroseg.segment_files import segment_files
from tests.conftest import register_grey_model

SHAPE = (120, 160)
CENTRES = [(30, 40), (30, 58), (80, 110), (95, 30)]  # the first two touch


def scene(rng=None) -> np.ndarray:
    """(H, W) float 0..1: bright discs on a dim noisy background."""
    rng = rng or np.random.default_rng(0)
    rr, cc = np.indices(SHAPE)
    img = 0.08 + 0.02 * rng.standard_normal(SHAPE)
    for r, c in CENTRES:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= 10**2] = 0.7 + 0.05 * rng.standard_normal()
    return np.clip(img, 0, 1)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def versions() -> dict[str, bytes]:
    """One scene as an 8-bit, a 12-bit-in-16-bit and a full-range 16-bit PNG, and a float TIFF."""
    img = scene()
    tif = io.BytesIO()
    tifffile.imwrite(tif, img.astype(np.float32))
    return {
        "8": png_bytes(np.round(img * 255).astype(np.uint8)),
        "12in16": png_bytes(np.round(img * 4095).astype(np.uint16)),
        "16": png_bytes(np.round(img * 65535).astype(np.uint16)),
        "float": tif.getvalue(),
    }


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory) -> str:
    """A registered grey, percentile-normalised model: probability = normalised brightness."""
    return register_grey_model(str(tmp_path_factory.mktemp("registry")))


# ----------------------------------------------------------------------------- decoding


def test_decode_keeps_dtype_and_values():
    v = versions()
    eight = decode_native(v["8"], name="a.png")
    twelve = decode_native(v["12in16"], name="b.png")
    sixteen = decode_native(v["16"], name="c.png")
    assert eight.shape == (*SHAPE, 1) and eight.dtype == np.uint8
    assert twelve.dtype == np.uint16 and 3000 < twelve.max() <= 4095
    assert sixteen.dtype == np.uint16 and sixteen.max() > 40000
    floats = decode_native(v["float"], name="d.tif")
    assert floats.dtype == np.float32 and floats.shape == (*SHAPE, 1)
    np.testing.assert_array_equal(floats[..., 0], scene().astype(np.float32))


def test_multi_page_and_multi_channel_tiff_become_channels():
    rng = np.random.default_rng(1)
    pages = rng.integers(0, 4096, (2, 30, 40), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, pages)  # two pages, one per channel
    out = decode_native(buf.getvalue(), name="two.tif")
    assert out.shape == (30, 40, 2) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[..., 1], pages[1])
    rgb16 = rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb16, photometric="rgb")
    np.testing.assert_array_equal(decode_native(buf.getvalue(), name="rgb.tif"), rgb16)


def test_rgba_is_composited_and_truncated_tiff_is_one_line_error():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    out = decode_native(png_bytes(rgba), name="a.png")
    assert out.shape == (8, 8, 3) and out[0, 0, 0] == 100
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ones((64, 64), np.uint16))
    with pytest.raises(ImageDecodeError, match=r"^cut\.tif: ") as err:
        decode_native(buf.getvalue()[:300], name="cut.tif")
    assert "\n" not in str(err.value)


def test_label_images_round_trip_and_colour_labels_are_refused(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 2:6] = 7
    labels[10:15, 3:9] = 300
    data, suffix = encode_labels(labels)
    assert suffix == ".png"
    np.testing.assert_array_equal(decode_labels(data, name="l.png"), labels)
    big = np.arange(70_000, dtype=np.int32).reshape(280, 250)
    data, suffix = encode_labels(big)
    assert suffix == ".tif"
    (tmp_path / "big.tif").write_bytes(data)
    np.testing.assert_array_equal(read_labels(tmp_path / "big.tif"), big)
    with pytest.raises(ImageDecodeError, match="one channel"):
        decode_labels(png_bytes(np.zeros((4, 4, 3), np.uint8)), name="rgb.png")


# ----------------------------------------------------------------------------- normalisation


def test_model_input_is_independent_of_bit_depth():
    v = versions()
    spec = input_spec({"channels": "grey", "normalization": "percentile"})
    inputs = {k: model_input(decode_native(b, name=k), spec) for k, b in v.items()}
    for k, x in inputs.items():
        assert x.shape == (*SHAPE, 3) and x.dtype == np.float32, k
        assert x.min() >= 0 and x.max() <= 255, k
    # 8-bit rounding is the only difference: at most a few grey levels on the 0..255 scale
    for k in ("12in16", "16", "float"):
        assert np.abs(inputs[k] - inputs["8"]).max() < 4.0, k


def test_legacy_models_see_8_bit_as_is_and_16_bit_stretched():
    v = versions()
    legacy = input_spec(None)
    assert legacy == {"channels": "rgb", "normalization": "fixed", "percentiles": [1.0, 99.8]}
    eight = decode_native(v["8"], name="a")
    np.testing.assert_array_equal(model_input(eight, legacy)[..., 1], eight[..., 0])
    twelve = model_input(decode_native(v["12in16"], name="b"), legacy)
    assert twelve.max() > 200  # not the black image of `value // 257`
    rgb = np.zeros((4, 4, 3), np.uint8)
    assert prepare_input({}, rgb) is rgb  # 8-bit RGB goes to old models unchanged


def test_channel_selection_and_errors():
    two = np.stack([np.full((4, 4), 10, np.uint16), np.full((4, 4), 900, np.uint16)], axis=2)
    assert select_channels(two, channels="grey")[0, 0, 0] == 900  # max over channels
    assert select_channels(two, channels="grey", channel=0)[0, 0, 0] == 10
    assert select_channels(two[..., :1], channels="rgb").shape == (4, 4, 3)
    with pytest.raises(ValueError, match="channel 2 is out of range"):
        select_channels(two, channels="grey", channel=2)
    with pytest.raises(ValueError, match="normalization"):
        input_spec({"normalization": "zscore"})
    flat = percentile_normalize(np.full((5, 5), 7, np.uint16))
    assert flat.max() == 0.0  # a flat image is not stretched into noise


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [2, 3, 5])
def test_channel_max_equals_numpy_max_over_channels(dtype, channels):
    rng = np.random.default_rng(channels)
    image = (rng.random((37, 53, channels)) * 4000).astype(dtype)
    if dtype == np.float32:
        image[3, 4, 1] = np.nan  # propagates, as in ndarray.max
    out = channel_max(image)
    assert out.dtype == image.dtype and out.shape == image.shape[:2]
    np.testing.assert_array_equal(out, image.max(axis=2))
    np.testing.assert_array_equal(select_channels(image, channels="grey")[..., 0], out)
    np.testing.assert_array_equal(channel_max(image[..., 0]), image[..., 0])  # (H, W) as is
    with pytest.raises(ValueError, match="shape"):
        channel_max(np.zeros((2, 3, 0)))


# ----------------------------------------------------------------------------- same cells


def test_8_12_16_bit_and_float_versions_give_the_same_cells(grey_model):
    bundle = registry.load_model(grey_model)
    results = {}
    for key, data in versions().items():
        labels, n, _ = segment_image(bundle, decode_native(data, name=key), watershed=True)
        results[key] = (labels, n)
    ref, n_ref = results["8"]
    assert n_ref == len(CENTRES)  # the touching pair is split
    for key, (labels, n) in results.items():
        assert n == n_ref, key
        assert match_by_iou(ref, labels, iou=0.95)["f1"] == 1.0, key


def test_segment_writes_label_images_equal_to_the_table(tmp_path, grey_model):
    v = versions()
    (tmp_path / "P1").mkdir()
    (tmp_path / "P1" / "a12.png").write_bytes(v["12in16"])
    (tmp_path / "P1" / "b8.png").write_bytes(v["8"])
    out = tmp_path / "cells.parquet"
    df = segment_files(
        [str(tmp_path / "P1" / "a12.png"), str(tmp_path / "P1" / "b8.png")],
        out=str(out),
        model=grey_model,
        watershed=True,
        labels=str(tmp_path / "labels"),
    )
    for image_id, rows in df.groupby("image_id"):
        labels = read_labels(tmp_path / "labels" / f"{image_id}.png")
        assert sorted(np.unique(labels[labels > 0])) == sorted(rows["cell_id"])
        for row in rows.itertuples():
            rr, cc = np.nonzero(labels == row.cell_id)
            assert rr.size == row.area_px
            assert abs(cc.mean() - row.centroid_x) < 1e-9 and abs(rr.mean() - row.centroid_y) < 1e-9
    # mean_intensity is in the file's own units: 12-bit values for the 16-bit file
    means = df.groupby("image_id")["mean_intensity"].max()
    assert means["a12"] > 2000 and means["b8"] < 256
    assert isinstance(pd.read_parquet(out), pd.DataFrame)


def test_channel_out_of_range_is_reported_and_skipped(tmp_path, grey_model, capsys):
    (tmp_path / "a.png").write_bytes(versions()["8"])
    with pytest.raises(ValueError, match="none of the 1 image"):
        segment_files([str(tmp_path / "a.png")], out=str(tmp_path / "c.parquet"),
                      model=grey_model, channel=1)  # fmt: skip
    err = [x for x in capsys.readouterr().err.splitlines() if "skipped" in x]
    assert len(err) == 1 and "a.png" in err[0] and "channel 1" in err[0]


def test_shipped_model_names(tmp_path):
    """`--model fnc` is the default (FNC) model; a shipped name resolves without a registry."""
    assert registry.shipped_model_uri("fnc") == registry.default_model_uri()
    assert registry.resolve_model_uri(str(tmp_path), "fnc") == registry.default_model_uri()
    nuclei = registry.shipped_model_uri("nuclei")
    if (Path(nuclei) / "config.json").exists():
        assert registry.resolve_model_uri(str(tmp_path), "nuclei") == nuclei


# ----------------------------------------------------------------------------- input scale


def test_input_scale_is_validated_and_absent_at_one():
    grey = {"channels": "grey", "normalization": "percentile"}
    assert "scale" not in input_spec(grey) and "scale" not in input_spec({**grey, "scale": 1})
    assert input_spec({**grey, "scale": "0.5"})["scale"] == 0.5
    assert input_scale(None) == 1.0 and input_scale({**grey, "scale": 0.5}) == 0.5
    for bad in (0, -1, 5, "half"):
        with pytest.raises(ValueError, match="input scale"):
            input_spec({**grey, "scale": bad})


def test_resize_planes_averages_images_and_keeps_label_ids():
    image = np.zeros((40, 60, 3), np.float32)
    image[:, ::2] = 200.0  # stripes one pixel wide: a shrunk image averages them
    half = resize_planes(image, scaled_shape(image.shape, 0.5))
    assert half.shape == (20, 30, 3) and half.dtype == np.float32
    assert np.allclose(half[2:-2, 2:-2], 100.0, atol=1.0)
    grey8 = np.repeat(np.arange(40 * 60, dtype=np.uint8).reshape(40, 60, 1), 3, axis=2)
    small = resize_planes(grey8, (20, 30))
    assert small.dtype == np.uint8 and (small[..., 0] == small[..., 2]).all()
    labels = np.zeros((40, 60), np.int32)
    labels[4:20, 4:20], labels[20:36, 30:56] = 70000, 3  # ids beyond 16 bits survive
    down = resize_planes(labels, (20, 30), nearest=True)
    assert down.dtype == np.int32 and set(np.unique(down)) == {0, 3, 70000}
    assert (down == 70000).sum() == 64 and (down == 3).sum() == 8 * 13
    back = resize_planes(np.zeros((20, 30, 3), np.float32), (40, 60))
    assert back.shape == (40, 60, 3)
    with pytest.raises(ValueError, match="integer labels"):
        resize_planes(image, (20, 30), nearest=True)


def test_a_model_declaring_a_scale_sees_the_resized_image_and_gives_full_size_cells(
    tmp_path, grey_model, monkeypatch
):
    """The same brightness model declared at scale 0.5 predicts a 60 x 80 input for a
    120 x 160 image, and its labels (at the image's own size) hold the same cells."""
    import neuroseg.predict as predict

    image = decode_native(versions()["12in16"], name="scene")
    plain = registry.load_model(grey_model)
    half = registry.load_model(grey_model)
    half.config = {**half.config, "input": {**half.config["input"], "scale": 0.5}}
    seen = []
    real = predict._predict_once
    monkeypatch.setattr(
        predict, "_predict_once", lambda b, c, x, n: seen.append(x.shape) or real(b, c, x, n)
    )
    ref, n_ref, _ = segment_image(plain, image, min_area=20)
    labels, n, prob = segment_image(half, image, min_area=20)
    assert seen == [(*SHAPE, 3), (SHAPE[0] // 2, SHAPE[1] // 2, 3)]
    assert labels.shape == prob.shape == SHAPE
    assert n == n_ref == len(CENTRES) - 1  # the touching pair is one component, unsplit
    assert match_by_iou(ref, labels, iou=0.8)["f1"] == 1.0
