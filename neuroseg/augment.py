"""Batched TensorFlow graph augmentations: the seed notebook's random shapes and affine warp.

Plus a random intensity change (gamma, contrast, brightness) for percentile-normalised input.

Both functions are pure TF ops on whole batches (no PIL, no numpy, no Python loop over tiles), so
they run inside ``tf.data`` ``map`` calls and ``tf.function`` s, on CPU or GPU.

Randomness is *stateless*: every draw derives from one ``seed`` tensor of shape ``(2,)`` (as
``tf.random.stateless_uniform`` takes it), so the same seed gives the same batch. Pass a
``tf.random.Generator`` as ``generator`` instead to draw the seed from it, or neither to draw it
from TensorFlow's global generator.

Arrays are ``(batch, row, col, channel)``. Images keep their dtype (integers are rounded and
clipped); masks are floats in ``[0, 1]``.
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = [
    "BACKGROUND_DARK",
    "BACKGROUND_LIGHT",
    "GREY_FILL",
    "SHAPE_DARK",
    "SHAPE_LIGHT",
    "augment_batch",
    "random_affine",
    "random_intensity",
    "random_shapes",
]

#: The seed's fill colours of the drawn shapes ("darkYellow", "brightYellow").
SHAPE_DARK = (101, 61, 6)
SHAPE_LIGHT = (247, 237, 15)
#: The seed's background colours for pixels an affine warp leaves uncovered.
BACKGROUND_DARK = (20, 8, 0)
BACKGROUND_LIGHT = (49, 25, 1)
#: Fill colours for grey, percentile-normalised input (its background sits near 0 on 0..255).
GREY_FILL = ((0, 0, 0), (12, 12, 12))


def _seed_tensor(seed, generator) -> tf.Tensor:
    """One ``(2,)`` int64 stateless seed from ``seed``, ``generator`` or the global generator."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None:
        return tf.cast(generator.make_seeds(1)[:, 0], tf.int64)
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    if isinstance(seed, int):
        return tf.constant([seed, 0], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank != 1 or (seed.shape[0] is not None and seed.shape[0] != 2):
        raise ValueError(f"seed must be an int or a shape (2,) integer tensor, got {seed.shape}")
    return tf.cast(seed, tf.int64)


def _split(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    return list(tf.unstack(tf.random.experimental.stateless_split(seed, num=n)))


def _check_images(images) -> tf.Tensor:
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (batch, rows, cols, 3), got shape {images.shape}")
    return images


def _restore_dtype(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    if dtype.is_integer:
        return tf.cast(tf.clip_by_value(tf.round(x), dtype.min, dtype.max), dtype)
    return tf.cast(x, dtype)


def _lerp_colour(c0, c1, frac: tf.Tensor) -> tf.Tensor:
    """The seed's ``lerpColours`` per channel, truncated to integers: (b,) -> (b, 3)."""
    c0 = tf.constant(c0, tf.float32)
    c1 = tf.constant(c1, tf.float32)
    return tf.floor(c0[None, :] * (1.0 - frac[:, None]) + c1[None, :] * frac[:, None])


def random_shapes(
    images,
    *,
    seed=None,
    generator: tf.random.Generator | None = None,
    max_ellipses: int = 2,
    max_rectangles: int = 2,
    size: tuple[float, float] = (25.0, 75.0),
    colours: tuple[tuple[int, int, int], tuple[int, int, int]] = (SHAPE_DARK, SHAPE_LIGHT),
) -> tf.Tensor:
    """Draw the seed's random ellipses and rounded rectangles on a batch of images.

    Per tile: ``randint(0, max_ellipses)`` filled ellipses, then ``randint(0, max_rectangles)``
    filled rounded rectangles (drawn over the ellipses, as the seed does), each with its centre
    uniform in the tile, width and height uniform in ``size``, a fill colour lerped between the
    two ``colours`` (one fraction per shape, truncated to integers) and, for rectangles, a corner
    radius uniform in ``[1, 0.3 * min(width, height)]``. Shapes are rasterised analytically on
    the pixel grid (pixel centres at integer coordinates). Masks are not touched: the shapes are
    distractors, not cells.

    Parameters
    ----------
    images : tensor (b, rows, cols, 3), any real dtype, values 0..255
    seed : int or tensor (2,), optional
        Stateless seed; the same seed draws the same shapes.
    generator : tf.random.Generator, optional
        Draw the stateless seed from this generator instead.
    max_ellipses, max_rectangles : int
        Upper bounds (inclusive) of the shape counts per tile.
    size : (float, float)
        Range of shape widths and heights in pixels.
    colours : two RGB triples
        The ends of the colour lerp.

    Returns
    -------
    tensor (b, rows, cols, 3)
        Same dtype as ``images``.
    """
    images = _check_images(images)
    if max_ellipses < 0 or max_rectangles < 0:
        raise ValueError("max_ellipses and max_rectangles must be >= 0")
    if not 0 < size[0] <= size[1]:
        raise ValueError(f"size must be (low, high) with 0 < low <= high, got {size}")
    dtype = images.dtype
    out = tf.cast(images, tf.float32)
    n_slots = max_ellipses + max_rectangles
    if n_slots == 0:
        return images
    shape = tf.shape(out)
    b, rows, cols = shape[0], shape[1], shape[2]
    s_count_e, s_count_r, s_centre, s_size, s_colour, s_radius = _split(
        _seed_tensor(seed, generator), 6
    )
    n_ell = tf.random.stateless_uniform([b], s_count_e, 0, max_ellipses + 1, dtype=tf.int32)
    n_rect = tf.random.stateless_uniform([b], s_count_r, 0, max_rectangles + 1, dtype=tf.int32)
    unit = tf.random.stateless_uniform([b, n_slots, 2], s_centre)
    centre_r = unit[..., 0] * tf.cast(rows, tf.float32)  # (b, slots)
    centre_c = unit[..., 1] * tf.cast(cols, tf.float32)
    sizes = tf.random.stateless_uniform([b, n_slots, 2], s_size, size[0], size[1])
    half_h, half_w = sizes[..., 0] * 0.5, sizes[..., 1] * 0.5
    frac = tf.random.stateless_uniform([b, n_slots], s_colour)
    u_rad = tf.random.stateless_uniform([b, n_slots], s_radius)
    radius = 1.0 + u_rad * (0.3 * tf.minimum(sizes[..., 0], sizes[..., 1]) - 1.0)
    radius = tf.floor(tf.maximum(radius, 1.0))  # the seed's int(uniform(1, 0.3 * min side))

    grid_r = tf.range(rows, dtype=tf.float32)[None, :, None]  # (1, rows, 1)
    grid_c = tf.range(cols, dtype=tf.float32)[None, None, :]  # (1, 1, cols)
    # Which slot paints each pixel last (0: none); one colour lookup at the end instead of an
    # RGB select per slot.
    owner = tf.zeros([b, rows, cols], tf.int32)
    for k in range(n_slots):  # a fixed, small number of shape slots, not a loop over tiles
        dr = grid_r - centre_r[:, k, None, None]  # (b, rows, 1)
        dc = grid_c - centre_c[:, k, None, None]  # (b, 1, cols)
        hh = half_h[:, k, None, None]
        hw = half_w[:, k, None, None]
        if k < max_ellipses:
            inside = tf.square(dr / hh) + tf.square(dc / hw) <= 1.0
            active = k < n_ell
        else:
            rad = radius[:, k, None, None]
            qr = tf.abs(dr) - (hh - rad)
            qc = tf.abs(dc) - (hw - rad)
            # signed distance to the rounded box <= 0: inside the core box (qr, qc <= 0) or
            # within rad of it
            outer = tf.square(tf.maximum(qr, 0.0)) + tf.square(tf.maximum(qc, 0.0))
            inside = outer <= tf.square(rad)
            active = (k - max_ellipses) < n_rect
        paint = tf.logical_and(inside, active[:, None, None])
        owner = tf.where(paint, k + 1, owner)
    table = _lerp_colour(colours[0], colours[1], tf.reshape(frac, [-1]))
    table = tf.concat([tf.zeros([b, 1, 3]), tf.reshape(table, [b, n_slots, 3])], axis=1)
    colour = tf.gather(table, owner, batch_dims=1)  # (b, rows, cols, 3)
    out = tf.where(owner[..., None] > 0, colour, out)
    return _restore_dtype(out, dtype)


def _affine_matrices(
    seed: tf.Tensor,
    b: tf.Tensor,
    rows: tf.Tensor,
    cols: tf.Tensor,
    *,
    shear: tuple[float, float],
    rotation: tuple[float, float],
    scale: tuple[float, float],
    flip: bool,
) -> tf.Tensor:
    """Forward (source -> destination) affine matrices (b, 3, 3) in (x=col, y=row) pixel space."""
    s_shear, s_rot, s_scale, s_flip = _split(seed, 4)
    sh = tf.random.stateless_uniform([b, 2], s_shear, shear[0], shear[1])
    theta = tf.random.stateless_uniform([b], s_rot, rotation[0], rotation[1]) * (math.pi / 180)
    sc = tf.random.stateless_uniform([b, 2], s_scale, scale[0], scale[1])
    if flip:
        signs = tf.random.stateless_uniform([b, 2], s_flip, 0, 2, dtype=tf.int32)
        signs = tf.cast(signs, tf.float32) * 2.0 - 1.0
    else:
        signs = tf.ones([b, 2])
    zero, one = tf.zeros([b]), tf.ones([b])

    def mat(a, bb, c, d, e, f):
        return tf.reshape(tf.stack([a, bb, c, d, e, f, zero, zero, one], axis=-1), [-1, 3, 3])

    cx = (tf.cast(cols, tf.float32) - 1.0) * 0.5 * one
    cy = (tf.cast(rows, tf.float32) - 1.0) * 0.5 * one
    to_origin = mat(one, zero, -cx, zero, one, -cy)
    back = mat(one, zero, cx, zero, one, cy)
    scaling = mat(sc[:, 0], zero, zero, zero, sc[:, 1], zero)
    shearing = mat(one, sh[:, 0], zero, sh[:, 1], one, zero)
    cos, sin = tf.cos(theta), tf.sin(theta)
    rotating = mat(cos, -sin, zero, sin, cos, zero)
    flipping = mat(signs[:, 0], zero, zero, zero, signs[:, 1], zero)
    # GetRandomImageXForm's order (shear, rotate, scale, flip) about the tile centre; the
    # notebook right-multiplied the scale, which scales about the top-left corner instead.
    return back @ flipping @ rotating @ shearing @ scaling @ to_origin


def random_affine(
    images,
    masks,
    *,
    seed=None,
    generator: tf.random.Generator | None = None,
    shear: tuple[float, float] = (0.0, 0.2),
    rotation: tuple[float, float] = (0.0, 360.0),
    scale: tuple[float, float] = (0.8, 1.5),
    flip: bool = True,
    fill: tuple[tuple[int, int, int], tuple[int, int, int]] = (BACKGROUND_DARK, BACKGROUND_LIGHT),
    binarize: bool = True,
    mask_interpolation: str = "bilinear",
) -> tuple[tf.Tensor, tf.Tensor]:
    """Warp images and masks with the seed's random affine transform, one per tile.

    The transform (``GetRandomImageXForm``) acts about the tile centre: scale x and y by
    ``uniform(*scale)`` each, shear by ``[[1, sx], [sy, 1]]`` with ``sx, sy ~ uniform(*shear)``,
    rotate by ``uniform(*rotation)`` degrees and flip each axis with probability 1/2. Images are
    resampled bilinearly; uncovered pixels take a background colour lerped per tile between the
    two ``fill`` colours, per channel (the notebook's TF pipeline could only fill one grey value).
    Masks get the same transform (bilinear, fill 0); with ``binarize`` they are re-thresholded at
    0.5, so the loss sees hard {0, 1} labels, else they stay soft (fractional at cell edges).
    With ``mask_interpolation="nearest"`` the masks are resampled by nearest neighbour instead
    (fill 0, values kept exactly, ``binarize`` ignored): for class-index maps such as the
    three-class targets of :mod:`neuroseg.instances`, whose thin boundary class bilinear
    resampling would blur.

    One ``ImageProjectiveTransformV3`` call warps image, mask and a coverage channel together;
    the coverage gives the exact per-channel constant fill after bilinear interpolation.

    Parameters
    ----------
    images : tensor (b, rows, cols, 3), any real dtype, values 0..255
    masks : tensor (b, rows, cols) or (b, rows, cols, 1), float in [0, 1]
        With ``mask_interpolation="nearest"`` also ``(b, rows, cols, C)`` of any float values
        (e.g. class ids and a centre map), every channel warped alike.
    seed, generator
        As in :func:`random_shapes`.
    shear, rotation, scale : (low, high)
        Ranges of the shear factors, the rotation angle in degrees and the axis scales.
    flip : bool
        Random horizontal and vertical flips.
    fill : two RGB triples
        Ends of the background colour lerp.
    binarize : bool
        Re-threshold warped masks at 0.5 (bilinear masks only).
    mask_interpolation : {"bilinear", "nearest"}
        Resampling of the masks.

    Returns
    -------
    images : tensor (b, rows, cols, 3), dtype of ``images``
    masks : tensor, shape and float dtype of ``masks``
    """
    if mask_interpolation not in ("bilinear", "nearest"):
        raise ValueError(
            f"mask_interpolation must be 'bilinear' or 'nearest', got {mask_interpolation!r}"
        )
    images = _check_images(images)
    masks = tf.convert_to_tensor(masks)
    squeeze = masks.shape.rank == 3
    if squeeze:
        masks = masks[..., None]
    nearest = mask_interpolation == "nearest"
    if masks.shape.rank != 4 or (masks.shape[-1] != 1 and not nearest):
        raise ValueError(
            f"masks must be (batch, rows, cols[, 1]) (several channels with nearest "
            f"interpolation), got shape {masks.shape}"
        )
    if images.shape[:3].is_fully_defined() and masks.shape[:3].is_fully_defined():
        if images.shape[:3] != masks.shape[:3]:
            raise ValueError(
                f"images {images.shape} and masks {masks.shape} differ in batch or tile size"
            )
    if not masks.dtype.is_floating:
        raise ValueError(f"masks must be floats in [0, 1], got dtype {masks.dtype.name}")
    dtype, mask_dtype = images.dtype, masks.dtype
    shape = tf.shape(images)
    b, rows, cols = shape[0], shape[1], shape[2]
    s_matrix, s_fill = _split(_seed_tensor(seed, generator), 2)
    forward = _affine_matrices(
        s_matrix, b, rows, cols, shear=shear, rotation=rotation, scale=scale, flip=flip
    )
    inverse = tf.linalg.inv(forward)  # the op maps output pixels to input pixels
    transforms = tf.reshape(inverse, [-1, 9])[:, :8]

    parts = [tf.cast(images, tf.float32)]
    if not nearest:
        parts.append(tf.cast(masks, tf.float32))
    stack = tf.concat([*parts, tf.ones_like(masks[..., :1], tf.float32)], axis=-1)

    def warp(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x,
            transforms=transforms,
            output_shape=tf.stack([rows, cols]),
            fill_value=0.0,
            interpolation=interpolation,
            fill_mode="CONSTANT",
        )

    warped = warp(stack, "BILINEAR")
    coverage = warped[..., -1:]
    background = _lerp_colour(fill[0], fill[1], tf.random.stateless_uniform([b], s_fill))
    out_images = warped[..., :3] + (1.0 - coverage) * background[:, None, None, :]
    if nearest:
        out_masks = warp(tf.cast(masks, tf.float32), "NEAREST")
    elif binarize:
        out_masks = tf.cast(warped[..., 3:4] >= 0.5, tf.float32)
    else:
        out_masks = tf.clip_by_value(warped[..., 3:4], 0.0, 1.0)
    out_masks = tf.cast(out_masks, mask_dtype)
    if squeeze:
        out_masks = out_masks[..., 0]
    return _restore_dtype(out_images, dtype), out_masks


def random_intensity(
    images,
    *,
    seed=None,
    generator: tf.random.Generator | None = None,
    gamma: tuple[float, float] = (0.7, 1.4),
    contrast: tuple[float, float] = (0.75, 1.25),
    brightness: tuple[float, float] = (-0.08, 0.08),
) -> tf.Tensor:
    """A random gamma, contrast and brightness change per tile, the same on every channel.

    On the 0..1 scale (``x = images / 255``): ``x ** g`` with ``log g`` uniform in
    ``log(gamma)``, then ``(x - m) * c + m + d`` with ``m`` the tile's mean after the gamma,
    ``c ~ uniform(*contrast)``, ``d ~ uniform(*brightness)``, clipped to 0..1 and back to
    0..255. One draw per tile for all channels, so a grey tile (three equal planes) stays grey.
    It imitates what percentile normalisation leaves different between images and microscopes:
    the curve of the stain's response, the stretch and the background offset.

    Parameters
    ----------
    images : tensor (b, rows, cols, 3), any real dtype, values 0..255
    seed, generator
        As in :func:`random_shapes`.
    gamma, contrast, brightness : (low, high)
        Ranges; ``(1, 1)``, ``(1, 1)`` and ``(0, 0)`` change nothing.

    Returns
    -------
    tensor (b, rows, cols, 3)
        Same dtype as ``images``.
    """
    images = _check_images(images)
    for name, (lo, hi) in (("gamma", gamma), ("contrast", contrast)):
        if not 0 < lo <= hi:
            raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
    if not brightness[0] <= brightness[1]:
        raise ValueError(f"brightness must be (low, high) with low <= high, got {brightness}")
    dtype = images.dtype
    b = tf.shape(images)[0]
    s_gamma, s_contrast, s_bright = _split(_seed_tensor(seed, generator), 3)
    log_g = tf.random.stateless_uniform(
        [b], s_gamma, math.log(gamma[0]), math.log(gamma[1]) + 1e-12
    )
    c = tf.random.stateless_uniform([b], s_contrast, contrast[0], contrast[1] + 1e-12)
    d = tf.random.stateless_uniform([b], s_bright, brightness[0], brightness[1] + 1e-12)
    x = tf.clip_by_value(tf.cast(images, tf.float32) / 255.0, 0.0, 1.0)
    x = tf.pow(x, tf.exp(log_g)[:, None, None, None])
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * c[:, None, None, None] + mean + d[:, None, None, None]
    return _restore_dtype(tf.clip_by_value(x, 0.0, 1.0) * 255.0, dtype)


def augment_batch(
    images,
    masks,
    *,
    seed=None,
    shapes: bool = False,
    affine: bool = False,
    binarize: bool = True,
    intensity: bool = False,
    mask_interpolation: str = "bilinear",
    fill: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The seed generator's order: draw shapes on the images, then warp images and masks.

    Parameters
    ----------
    images : tensor (b, rows, cols, 3)
    masks : tensor (b, rows, cols[, 1]), float in [0, 1]
    seed : int or tensor (2,), optional
    shapes, affine : bool
        Which augmentations to apply.
    binarize, mask_interpolation : bool, str
        Passed to :func:`random_affine`.
    intensity : bool
        :func:`random_intensity` after the shapes, before the warp (images only).
    fill : two RGB triples, optional
        Background colours of :func:`random_affine` (default: the seed's).

    Returns
    -------
    (images, masks) with the input shapes and dtypes.
    """
    images, masks = tf.convert_to_tensor(images), tf.convert_to_tensor(masks)
    s_shapes, s_affine = _split(_seed_tensor(seed, None), 2)
    if shapes:
        images = random_shapes(images, seed=s_shapes)
    if intensity:
        # derived from the shapes' seed, so that the seed's two draws stay as they were
        s_intensity = tf.random.experimental.stateless_fold_in(s_shapes, 7)
        images = random_intensity(images, seed=s_intensity)
    if affine:
        kw = {} if fill is None else {"fill": fill}
        images, masks = random_affine(
            images,
            masks,
            seed=s_affine,
            binarize=binarize,
            mask_interpolation=mask_interpolation,
            **kw,
        )
    return images, masks
