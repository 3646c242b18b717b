"""Batched TF augmentations: determinism, alignment, the seed's ranges, per-channel fill."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from neuroseg import augment
from neuroseg.augment import augment_batch, random_affine, random_intensity, random_shapes

NO_WARP = {"rotation": (0.0, 0.0), "scale": (1.0, 1.0), "shear": (0.0, 0.0), "flip": False}


def _square(b=6, n=64, half=8):
    masks = np.zeros((b, n, n, 1), np.float32)
    c = n // 2
    masks[:, c - half : c + half, c - half + 3 : c + half + 3] = 1.0
    images = np.repeat(masks * 255.0, 3, axis=-1)
    return images, masks


def test_random_shapes_shapes_dtypes_and_determinism():
    images = np.full((8, 96, 96, 3), 30, np.uint8)
    a = random_shapes(images, seed=7)
    b = random_shapes(images, seed=7)
    c = random_shapes(images, seed=8)
    assert a.dtype == tf.uint8 and a.shape == images.shape
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    f = random_shapes(images.astype(np.float32), seed=7)
    assert f.dtype == tf.float32
    np.testing.assert_array_equal(f.numpy().astype(np.uint8), a.numpy())


def test_random_shapes_colours_within_the_seeds_range():
    images = np.zeros((16, 128, 128, 3), np.uint8)
    out = random_shapes(images, seed=3).numpy()
    painted = out.reshape(-1, 3)[out.reshape(-1, 3).any(axis=1)]
    assert len(painted) > 0
    lo, hi = np.array(augment.SHAPE_DARK), np.array(augment.SHAPE_LIGHT)
    assert (painted >= lo).all() and (painted <= hi).all()
    # one lerp fraction per shape: the green channel follows the red one
    frac = (painted[:, 0] - lo[0]) / (hi[0] - lo[0])
    np.testing.assert_allclose(painted[:, 1], lo[1] + frac * (hi[1] - lo[1]), atol=2.5)
    # 0-2 ellipses + 0-2 rectangles per tile: at most 4 colours per tile
    for tile in out:
        assert len(np.unique(tile.reshape(-1, 3), axis=0)) <= 5


def test_random_shapes_sizes_follow_the_seed():
    images = np.zeros((40, 300, 300, 3), np.uint8)
    out = random_shapes(images, seed=11, max_ellipses=1, max_rectangles=0).numpy()
    sizes = []
    for tile in out:
        labels, n = ndimage.label(tile.any(axis=-1))
        assert n <= 1
        if n:
            rows, cols = ndimage.find_objects(labels)[0]
            if rows.start > 0 and cols.start > 0 and rows.stop < 300 and cols.stop < 300:
                sizes += [rows.stop - rows.start, cols.stop - cols.start]
    assert sizes and min(sizes) >= 23 and max(sizes) <= 77


def test_rounded_rectangles_are_drawn_with_rounded_corners():
    images = np.zeros((30, 200, 200, 3), np.uint8)
    out = random_shapes(images, seed=5, max_ellipses=0, max_rectangles=1).numpy()
    fills = []
    for tile in out:
        region = tile.any(axis=-1)
        if region.any():
            rows, cols = np.nonzero(region)
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            fills.append(region.sum() / box)
    # a rectangle with corner radius in [1, 0.3 min side] fills 92-100 % of its box
    assert fills and min(fills) > 0.9 and max(fills) <= 1.0
    assert min(fills) < 0.995  # some corners are visibly rounded


def test_shapes_never_touch_the_mask():
    images, masks = _square()
    _, out_masks = augment_batch(images, masks, seed=1, shapes=True, affine=False)
    np.testing.assert_array_equal(out_masks.numpy(), masks)


def test_affine_identity_is_exact():
    images, masks = _square()
    out_images, out_masks = random_affine(images, masks, seed=2, **NO_WARP)
    np.testing.assert_allclose(out_images.numpy(), images, atol=1e-3)
    np.testing.assert_array_equal(out_masks.numpy(), masks)


def test_affine_rotation_by_90_degrees_is_rot90():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    masks = (rng.uniform(size=(2, 32, 32, 1)) > 0.5).astype(np.float32)
    kw = {**NO_WARP, "rotation": (90.0, 90.0)}
    out_images, out_masks = random_affine(images, masks, seed=0, **kw)
    np.testing.assert_allclose(out_images.numpy(), np.rot90(images, -1, axes=(1, 2)), atol=0.05)
    np.testing.assert_array_equal(out_masks.numpy(), np.rot90(masks, -1, axes=(1, 2)))


def test_affine_keeps_image_and_mask_aligned():
    images, masks = _square()
    out_images, soft = random_affine(images, masks, seed=4, binarize=False)
    out_images, soft = out_images.numpy(), soft.numpy()
    assert not np.array_equal(soft, masks)  # it did move
    # where the warp covers the tile (its centre) the image is exactly 255 * the warped mask
    window = np.s_[:, 20:44, 20:44, 0]
    np.testing.assert_allclose(out_images[window], 255.0 * soft[window], atol=1e-2)
    # everywhere: the background fill (<= 49) never crosses the half-way threshold
    np.testing.assert_array_equal(out_images[..., 0] >= 127.5, soft[..., 0] >= 0.5)
    _, hard = random_affine(images, masks, seed=4, binarize=True)
    np.testing.assert_array_equal(hard.numpy(), (soft >= 0.5).astype(np.float32))
    assert set(np.unique(hard.numpy())) <= {0.0, 1.0}
    assert ((soft > 0) & (soft < 1)).any()  # bilinear edges are soft before binarising


def test_affine_fill_is_a_per_tile_per_channel_background_colour():
    images = np.zeros((12, 40, 40, 3), np.float32)
    masks = np.ones((12, 40, 40, 1), np.float32)
    kw = {**NO_WARP, "scale": (0.8, 0.8)}
    out_images, out_masks = random_affine(images, masks, seed=9, **kw)
    corner = out_images.numpy()[:, 0, 0, :]
    lo, hi = np.array(augment.BACKGROUND_DARK), np.array(augment.BACKGROUND_LIGHT)
    assert (corner >= lo).all() and (corner <= hi).all()
    assert len(np.unique(corner[:, 0])) > 6  # a colour per tile
    assert (corner[:, 0] > corner[:, 1]).all()  # per channel, not one grey value
    assert out_masks.numpy()[:, 0, 0, 0].max() == 0.0  # masks fill with 0
    assert out_masks.numpy()[:, 20, 20, 0].min() == 1.0


def test_affine_determinism_dtype_and_graph_mode():
    images, masks = _square(b=4)
    images = images.astype(np.uint8)
    a = random_affine(images, masks[..., 0], seed=5)
    b = random_affine(images, masks[..., 0], seed=5)
    assert a[0].dtype == tf.uint8 and a[1].shape == (4, 64, 64)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    graph = tf.function(lambda x, y, s: augment_batch(x, y, seed=s, shapes=True, affine=True))
    seed = tf.constant([5, 6], tf.int64)
    g1, g2 = (
        graph(images, masks, seed),
        augment_batch(images, masks, seed=seed, shapes=True, affine=True),
    )
    np.testing.assert_array_equal(g1[0].numpy(), g2[0].numpy())
    gen = tf.random.Generator.from_seed(1)
    assert random_affine(images, masks, generator=gen)[0].shape == images.shape


def test_bad_input_raises_value_error():
    images, masks = _square(b=2)
    with pytest.raises(ValueError, match="images must be"):
        random_shapes(images[..., :2], seed=1)
    with pytest.raises(ValueError, match="differ"):
        random_affine(images, masks[:, :32], seed=1)
    with pytest.raises(ValueError, match="floats"):
        random_affine(images, masks.astype(np.uint8), seed=1)
    with pytest.raises(ValueError, match="either seed or generator"):
        random_shapes(images, seed=1, generator=tf.random.Generator.from_seed(1))


def test_nearest_masks_keep_class_indices_and_follow_the_image():
    images, masks = _square(b=6)
    classes = masks * 2.0  # a class-index map: 0 outside, 2 in the square
    out_images, out = random_affine(images, classes, seed=4, mask_interpolation="nearest")
    bilinear_images, soft = random_affine(images, masks, seed=4, binarize=False)
    np.testing.assert_array_equal(out_images.numpy(), bilinear_images.numpy())  # same warp
    out, soft = out.numpy(), soft.numpy()
    assert set(np.unique(out)) <= {0.0, 2.0}  # no value between classes
    # the same warp: nearest agrees with the bilinear mask wherever that one is not an edge
    sure = (soft < 0.01) | (soft > 0.99)
    np.testing.assert_array_equal((out == 2.0)[sure], (soft > 0.5)[sure])
    grey = random_affine(
        np.zeros((4, 32, 32, 3), np.float32),
        np.zeros((4, 32, 32, 1), np.float32),
        seed=2,
        scale=(0.8, 0.8),
        fill=augment.GREY_FILL,
        mask_interpolation="nearest",
    )[0].numpy()
    assert (grey[..., 0] == grey[..., 1]).all() and grey.max() <= 12.0  # grey fill stays grey
    with pytest.raises(ValueError, match="mask_interpolation"):
        random_affine(images, masks, seed=1, mask_interpolation="cubic")


def test_nearest_warps_every_mask_channel_alike():
    images, masks = _square(b=4)
    stacked = np.concatenate([masks * 2.0, masks * 200.0], axis=-1)  # classes and a centre map
    _, one = random_affine(images, masks * 2.0, seed=9, mask_interpolation="nearest")
    _, two = random_affine(images, stacked, seed=9, mask_interpolation="nearest")
    assert two.shape == (4, 64, 64, 2)
    np.testing.assert_array_equal(two.numpy()[..., :1], one.numpy())
    np.testing.assert_array_equal(two.numpy()[..., 1], two.numpy()[..., 0] * 100.0)
    with pytest.raises(ValueError, match="several channels"):
        random_affine(images, stacked / 200.0, seed=9)  # bilinear takes one channel


def test_random_intensity_keeps_grey_range_and_is_seeded():
    rng = np.random.default_rng(0)
    plane = rng.uniform(0, 255, (8, 16, 16, 1)).astype(np.float32)
    images = np.repeat(plane, 3, axis=-1)
    out = random_intensity(images, seed=3).numpy()
    assert out.shape == images.shape and 0.0 <= out.min() and out.max() <= 255.0
    assert (out[..., 0] == out[..., 2]).all()  # one draw for all channels
    assert not np.allclose(out, images)
    np.testing.assert_array_equal(out, random_intensity(images, seed=3).numpy())
    same = random_intensity(images, seed=3, gamma=(1, 1), contrast=(1, 1), brightness=(0, 0))
    np.testing.assert_allclose(same.numpy(), images, atol=1e-3)
    as_uint8 = random_intensity(images.astype(np.uint8), seed=3)
    assert as_uint8.dtype == tf.uint8
    with pytest.raises(ValueError, match="gamma"):
        random_intensity(images, seed=1, gamma=(0, 1))
