"""neuroseg.tiling: the seed's partitions and PIL resizes, exact stitching round trips."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from neuroseg import reference
from neuroseg.tiling import (
    BLENDS,
    axis_positions,
    crop_tiles,
    downscale_masks,
    stitch,
    taper_window,
    tile_grid,
    upscale_tiles,
)


def seed_grid(height, width, tile, min_overlap):
    """The seed's partitions as (row, col), rounded as PIL's crop and its stitching did."""
    parts = reference.EvenlySpacedPartitions(width, height, tile, min_overlap)
    return np.array([(round(p.y), round(p.x)) for p in parts], dtype=np.int64).reshape(-1, 2)


# --- tile_grid -----------------------------------------------------------------------------


def test_grid_equals_seed_for_every_size_above_the_tile():
    for side in range(401, 2501):
        floats = reference.EvenlySpacedPartitions(side, 401, 400, 100)
        expected = sorted({round(p.x) for p in floats})
        assert axis_positions(side, tile=400, min_overlap=100) == expected, side


@pytest.mark.parametrize("shape", [(1200, 1600), (1704, 2272), (401, 2500), (999, 1001)])
def test_grid_order_and_values_equal_seed(shape):
    grid = tile_grid(*shape)
    np.testing.assert_array_equal(grid, seed_grid(*shape, 400, 100))
    assert grid.dtype == np.int64


def test_seed_grid_of_the_notebook():
    grid = tile_grid(1200, 1600)
    assert len(grid) == 20  # 4 rows x 5 columns
    assert np.unique(grid[:, 0]).tolist() == [0, 267, 533, 800]  # 266.67 and 533.33 rounded
    assert np.unique(grid[:, 1]).tolist() == [0, 300, 600, 900, 1200]
    assert grid[:5].tolist() == [[0, 0], [267, 0], [533, 0], [800, 0], [0, 300]]


def test_small_sides_get_one_padded_tile_where_the_seed_fails():
    with pytest.raises(ZeroDivisionError):
        reference.EvenlySpacedPartitions(400, 1200, 400, 100)
    assert reference.EvenlySpacedPartitions(50, 1200, 400, 100) == []  # no tile at all
    assert tile_grid(400, 1600)[:, 0].tolist() == [0] * 5
    assert tile_grid(1, 1).tolist() == [[0, 0]]
    assert tile_grid(350, 50).tolist() == [[0, 0]]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 2500),
    st.integers(2, 600).flatmap(lambda t: st.tuples(st.just(t), st.integers(0, t - 1))),
)
def test_axis_positions_properties(side, tile_overlap):
    tile, overlap = tile_overlap
    pos = axis_positions(side, tile=tile, min_overlap=overlap)
    assert pos[0] == 0
    assert all(isinstance(p, int) for p in pos)
    if side <= tile:
        assert pos == [0]
        return
    assert pos[-1] == side - tile  # covered to the last pixel, inside the image
    gaps = np.diff(pos)
    assert np.all(gaps > 0)
    assert np.all(tile - gaps >= overlap)  # neighbours overlap by at least min_overlap
    # the fewest tiles that can do it: one tile less, overlapping by min_overlap, falls short
    assert (len(pos) - 2) * (tile - overlap) + tile < side
    floats = reference.EvenlySpacedPartitions(side, tile + 1, tile, overlap)
    assert sorted({round(p.x) for p in floats}) == pos


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2500), st.integers(1, 2500))
def test_default_grid_covers_every_pixel(height, width):
    grid = tile_grid(height, width)
    covered = np.zeros((height, width), bool)
    for r, c in grid:
        assert 0 <= r < height and 0 <= c < width
        covered[r : r + 400, c : c + 400] = True
    assert covered.all()


def test_validation():
    with pytest.raises(ValueError, match="min_overlap"):
        tile_grid(100, 100, tile=50, min_overlap=50)
    with pytest.raises(ValueError, match="min_overlap"):
        tile_grid(100, 100, tile=50, min_overlap=-1)
    with pytest.raises(ValueError, match="tile"):
        tile_grid(100, 100, tile=0, min_overlap=0)
    with pytest.raises(ValueError, match="length"):
        tile_grid(0, 100)
    with pytest.raises(ValueError, match="integer"):
        tile_grid(10.5, 100)
    image = np.zeros((10, 10))
    with pytest.raises(ValueError, match="inside"):
        crop_tiles(image, np.array([[0, 10]]), tile=4)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        crop_tiles(image, np.array([0, 0]), tile=4)
    tiles = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="2 tiles but 1"):
        stitch(tiles, np.array([[0, 0]]), (10, 10))
    with pytest.raises(ValueError, match="blend"):
        stitch(tiles, np.array([[0, 0], [4, 4]]), (10, 10), blend="max")
    with pytest.raises(ValueError, match="shape"):
        stitch(tiles, np.array([[0, 0], [4, 4]]), (10, 0))
    with pytest.raises(ValueError, match="method"):
        upscale_tiles(tiles, size=8, method="cubic")
    with pytest.raises(ValueError, match="seed"):
        upscale_tiles(np.zeros((1, 4, 4, 2)), size=8, method="seed")


# --- crop_tiles ----------------------------------------------------------------------------


def test_crop_equals_seed_pil_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1000, 1300, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (1000, 1300), dtype=np.uint8)
    parts = reference.EvenlySpacedPartitions(1300, 1000, 400, 100)
    crops = reference.CropImage(Image.fromarray(image), Image.fromarray(mask), parts)
    grid = tile_grid(1000, 1300)
    tiles, mtiles = crop_tiles(image, grid), crop_tiles(mask, grid)
    assert tiles.shape == (len(parts), 400, 400, 3) and tiles.dtype == np.uint8
    for i, crop in enumerate(crops):
        np.testing.assert_array_equal(tiles[i], np.asarray(crop.image))
        np.testing.assert_array_equal(mtiles[i], np.asarray(crop.mask))


def test_crop_pads_small_images_like_pil():
    image = np.arange(300 * 70 * 3, dtype=np.uint32).reshape(300, 70, 3).astype(np.uint8)
    tiles = crop_tiles(image, tile_grid(300, 70), tile=400)
    assert tiles.shape == (1, 400, 400, 3)
    pil = Image.fromarray(image).crop((0, 0, 400, 400))  # PIL fills with 0 outside
    np.testing.assert_array_equal(tiles[0], np.asarray(pil))
    padded = crop_tiles(image[..., 0], np.array([[0, 0]]), tile=400, pad_value=7)
    assert (padded[0, 300:] == 7).all() and (padded[0, :, 70:] == 7).all()


# --- resizes -------------------------------------------------------------------------------


def pil_resize(array, size, resample):
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


@pytest.mark.parametrize(("src", "dst"), [(400, 50), (400, 37), (123, 50), (30, 50), (50, 50)])
def test_downscale_equals_pil_nearest(src, dst):
    rng = np.random.default_rng(src)
    masks = rng.integers(0, 256, (3, src, src), dtype=np.uint8)
    ours = downscale_masks(masks, size=dst)
    assert ours.shape == (3, dst, dst) and ours.dtype == np.uint8
    for i in range(3):
        np.testing.assert_array_equal(ours[i], pil_resize(masks[i], dst, Image.NEAREST))
    if (src, dst) == (400, 50):
        np.testing.assert_array_equal(ours, masks[:, 4::8, 4::8])


@pytest.mark.parametrize(("src", "dst"), [(50, 400), (37, 400), (7, 60), (50, 50)])
def test_upscale_bilinear_and_nearest_equal_pil(src, dst):
    rng = np.random.default_rng(dst)
    prob = rng.random((2, src, src), dtype=np.float32)
    bilinear = upscale_tiles(prob, size=dst)
    nearest = upscale_tiles(prob, size=dst, method="nearest")
    assert bilinear.dtype == nearest.dtype == np.float32
    for i in range(2):  # PIL's float ("F") resizes
        np.testing.assert_allclose(
            bilinear[i], pil_resize(prob[i], dst, Image.BILINEAR), rtol=0, atol=3e-7
        )
        np.testing.assert_array_equal(nearest[i], pil_resize(prob[i], dst, Image.NEAREST))
    flat = upscale_tiles(np.full((1, src, src), 0.3, np.float32), size=dst)
    assert (flat == np.float32(0.3)).all()  # constant stays exactly constant
    multi = upscale_tiles(np.stack([prob, 1 - prob], axis=-1), size=dst)
    np.testing.assert_allclose(multi[..., 0], bilinear, atol=1e-7)


def test_upscale_seed_is_the_notebooks_uint8_pil_resize():
    rng = np.random.default_rng(1)
    prob = rng.random((3, 50, 50), dtype=np.float32)
    ours = upscale_tiles(prob, size=400, method="seed")
    for i in range(3):
        img = Image.fromarray(np.uint8(prob[i].reshape((50, 50)) * 255))
        expected = np.array(img.resize((400, 400)), dtype=np.uint8)
        np.testing.assert_array_equal(ours[i], expected.astype(np.float32) / 255)


# --- stitch --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1200, 1600), (1704, 2272), (401, 1033)])
def test_min_blend_equals_seed_apply_model_to_image(shape):
    height, width = shape
    rng = np.random.default_rng(height)
    grid = tile_grid(height, width)
    parts = reference.EvenlySpacedPartitions(width, height, 400, 100)
    pred = rng.random((len(grid), 50, 50, 1), dtype=np.float32)  # a model's output
    expected = reference.stitchPredictions(pred, parts, width, height)
    ours = stitch(upscale_tiles(pred[..., 0], size=400, method="seed"), grid, shape, blend="min")
    np.testing.assert_array_equal(ours, expected.astype(np.float32) / 255)


def test_blends_on_known_overlaps():
    grid = np.array([[0, 0], [0, 2]])
    tiles = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 4.0)]).astype(np.float32)
    out_min = stitch(tiles, grid, (4, 6), blend="min")
    out_mean = stitch(tiles, grid, (4, 6), blend="mean")
    assert out_min[0].tolist() == [1, 1, 1, 1, 4, 4]
    assert out_mean[0].tolist() == [1, 1, 2.5, 2.5, 4, 4]
    taper = stitch(tiles, grid, (4, 6), blend="taper")
    w = taper_window(4, 4)[0]
    # column 2 is the first tile's column 2 and the second tile's column 0
    expected = (w[2] * 1.0 + w[0] * 4.0) / (w[2] + w[0])
    assert taper[0, 2] == pytest.approx(expected, rel=1e-6)
    assert 1.0 < taper[0, 3] < 4.0


def test_mean_and_taper_equal_weighted_averages():
    rng = np.random.default_rng(5)
    height, width, tile = 150, 230, 64
    grid = tile_grid(height, width, tile=tile, min_overlap=20)
    tiles = rng.random((len(grid), tile, tile), dtype=np.float32)
    window = taper_window(tile, tile).astype(np.float64)
    for blend, w in (("mean", np.ones_like(window)), ("taper", window)):
        num = np.zeros((height, width))
        den = np.zeros((height, width))
        for t, (r, c) in zip(tiles, grid, strict=True):
            num[r : r + tile, c : c + tile] += w * t
            den[r : r + tile, c : c + tile] += w
        np.testing.assert_allclose(
            stitch(tiles, grid, (height, width), blend=blend), num / den, rtol=1e-5, atol=1e-6
        )


def test_taper_window_is_smooth_positive_and_peaks_in_the_middle():
    w = taper_window(400, 400)
    assert w.dtype == np.float32 and w.shape == (400, 400)
    assert w.min() > 0 and w.max() <= 1
    assert w[200, 200] > 0.99 and w[0, 0] < 1e-4
    np.testing.assert_array_equal(w, w.T)
    assert np.all(np.diff(w[200, :200]) >= 0)


@st.composite
def tilings(draw):
    tile = draw(st.integers(4, 64))
    overlap = draw(st.integers(0, tile - 1))
    limit = min(300, tile + 12 * (tile - overlap))  # at most 13 x 13 tiles
    return draw(st.integers(1, limit)), draw(st.integers(1, limit)), tile, overlap


@settings(max_examples=80, deadline=None)
@given(tilings(), st.sampled_from(BLENDS), st.booleans())
def test_round_trip_is_exact_for_every_blend(tiling, blend, channels):
    height, width, tile, overlap = tiling
    rng = np.random.default_rng(height * 1000 + width)
    shape = (height, width, 2) if channels else (height, width)
    image = rng.random(shape, dtype=np.float32)
    grid = tile_grid(height, width, tile=tile, min_overlap=overlap)
    tiles = crop_tiles(image, grid, tile=tile, pad_value=np.nan)
    out = stitch(tiles, grid, (height, width), blend=blend)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("shape", [(1200, 1600), (2500, 2500), (300, 350), (1704, 2272)])
def test_round_trip_full_size(shape, blend):
    rng = np.random.default_rng(7)
    image = rng.random(shape, dtype=np.float32)
    grid = tile_grid(*shape)
    out = stitch(crop_tiles(image, grid), grid, shape, blend=blend)
    np.testing.assert_array_equal(out, image)


def test_round_trip_of_uint8_rgb_and_uncovered_pixels():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (500, 700, 3), dtype=np.uint8)
    grid = tile_grid(500, 700)
    for blend in BLENDS:
        out = stitch(crop_tiles(image, grid), grid, (500, 700), blend=blend)
        np.testing.assert_array_equal(out, image.astype(np.float32))
    partial = stitch(np.ones((1, 4, 4), np.float32), np.array([[2, 2]]), (8, 8), blend="min")
    assert partial.sum() == 16 and partial[:2].sum() == 0 and partial[6:].sum() == 0
    for blend in ("mean", "taper"):
        partial = stitch(np.ones((1, 4, 4), np.float32), np.array([[2, 2]]), (8, 8), blend=blend)
        assert partial.sum() == 16


def test_module_is_light():
    code = "import sys, neuroseg.tiling; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
