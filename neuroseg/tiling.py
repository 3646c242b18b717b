"""Tiling of images into overlapping square tiles, and stitching of tile predictions (light).

The seed notebook cuts each image into ``tile x tile`` sub-images with at least ``min_overlap``
pixels of overlap (``EvenlySpacedPartitions``, float positions that PIL's ``crop`` and the
stitching loop round with Python's ``round``), downscales the masks to 50x50 with PIL ``NEAREST``,
upscales the 50x50 predictions back and blends them with a minimum. This module does the same with
integer positions and vectorised numpy, fixes the division by zero for sides <= ``tile`` (one tile
at 0, the image padded) and adds ``mean`` and ``taper`` blends.

Round trip (every blend is exact when overlapping tiles agree):

>>> import numpy as np
>>> image = np.arange(30 * 50, dtype=np.float32).reshape(30, 50)
>>> grid = tile_grid(30, 50, tile=16, min_overlap=4)
>>> tiles = crop_tiles(image, grid, tile=16)
>>> bool((stitch(tiles, grid, image.shape, blend="taper") == image).all())
True
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache

import numpy as np

__all__ = [
    "BLENDS",
    "UPSCALE_METHODS",
    "axis_positions",
    "config_stride",
    "crop_tiles",
    "downscale_masks",
    "stitch",
    "stride",
    "taper_window",
    "tile_grid",
    "upscale_tiles",
]

#: Blends of :func:`stitch`.
BLENDS = ("min", "mean", "taper")
#: Methods of :func:`upscale_tiles`.
UPSCALE_METHODS = ("bilinear", "nearest", "seed")


def _positive_int(value, name: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _check_tiling(tile, min_overlap) -> tuple[int, int]:
    tile = _positive_int(tile, "tile")
    try:
        min_overlap = operator.index(min_overlap)
    except TypeError:
        raise ValueError(f"min_overlap must be an integer, got {min_overlap!r}") from None
    if not 0 <= min_overlap < tile:
        raise ValueError(f"min_overlap must be in [0, tile={tile}), got {min_overlap}")
    return tile, min_overlap


def axis_positions(length: int, *, tile: int = 400, min_overlap: int = 100) -> list[int]:
    """Start positions of the tiles along one axis.

    The seed's ``EvenlySpacedPartitions`` for one side: the fewest tiles with at least
    ``min_overlap`` pixels of overlap, evenly spaced from 0 to ``length - tile``; its float
    positions ``advance * i`` (same arithmetic) rounded with Python's ``round`` (half to even),
    as the notebook's crop and stitching did. A side ``<= tile`` gets one tile at 0.

    Parameters
    ----------
    length : int
        Side length in pixels, > 0.
    tile : int, optional
        Tile side in pixels, > ``min_overlap``.
    min_overlap : int, optional
        Minimum overlap of neighbouring tiles in pixels, >= 0.

    Returns
    -------
    list of int
        Increasing positions in ``[0, max(length - tile, 0)]``.
    """
    length = _positive_int(length, "length")
    tile, min_overlap = _check_tiling(tile, min_overlap)
    if length <= tile:
        return [0]
    n = math.ceil((length - min_overlap) / (tile - min_overlap))
    overlap = (length - n * tile) / (1 - n)
    advance = tile - overlap
    return [round(advance * i) for i in range(n)]


def tile_grid(height: int, width: int, *, tile: int = 400, min_overlap: int = 100) -> np.ndarray:
    """Top-left corners of the overlapping tiles that cover an image.

    Parameters
    ----------
    height, width : int
        Image size in pixels, > 0.
    tile : int, optional
        Tile side in pixels, > ``min_overlap`` (400 in the seed).
    min_overlap : int, optional
        Minimum overlap of neighbouring tiles, >= 0 (100 in the seed).

    Returns
    -------
    (n, 2) int64 array
        ``(row, col)`` of each tile, in the seed's order (columns outer, rows inner). Every pixel
        is covered; neighbouring tiles overlap by at least ``min_overlap`` pixels on sides longer
        than ``tile``; a side ``<= tile`` has a single tile at 0 (:func:`crop_tiles` pads it).
    """
    rows = axis_positions(height, tile=tile, min_overlap=min_overlap)
    cols = axis_positions(width, tile=tile, min_overlap=min_overlap)
    grid = np.empty((len(cols), len(rows), 2), dtype=np.int64)
    grid[:, :, 0] = np.asarray(rows, dtype=np.int64)[None, :]
    grid[:, :, 1] = np.asarray(cols, dtype=np.int64)[:, None]
    return grid.reshape(-1, 2)


def _check_grid(grid, shape: tuple[int, int]) -> np.ndarray:
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.shape[1] != 2 or not np.issubdtype(grid.dtype, np.integer):
        raise ValueError(f"grid must be an (n, 2) integer array of (row, col), got {grid.shape}")
    height, width = shape
    if grid.size and (grid.min() < 0 or grid[:, 0].max() >= height or grid[:, 1].max() >= width):
        raise ValueError(f"grid positions must lie inside the {height}x{width} image")
    return grid.astype(np.int64, copy=False)


def crop_tiles(image, grid, *, tile: int = 400, pad_value=0) -> np.ndarray:
    """Cut tiles out of an image.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Image or mask.
    grid : (n, 2) int array
        Top-left ``(row, col)`` of each tile, inside the image (:func:`tile_grid`).
    tile : int, optional
        Tile side in pixels.
    pad_value : scalar, optional
        Value of the pixels of tiles that reach past the bottom or right edge (0, as PIL's
        ``crop`` outside the image in the seed).

    Returns
    -------
    (n, tile, tile) or (n, tile, tile, C) array
        Same dtype as ``image``.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be a non-empty (H, W) or (H, W, C) array, got {image.shape}")
    tile = _positive_int(tile, "tile")
    height, width = image.shape[:2]
    grid = _check_grid(grid, (height, width))
    out = np.empty((len(grid), tile, tile, *image.shape[2:]), dtype=image.dtype)
    for i, (r, c) in enumerate(grid.tolist()):
        rh, cw = min(tile, height - r), min(tile, width - c)
        out[i, :rh, :cw] = image[r : r + rh, c : c + cw]
        if rh < tile or cw < tile:
            out[i, rh:] = pad_value
            out[i, :rh, cw:] = pad_value
    return out


def _pil_nearest_index(src: int, dst: int) -> np.ndarray:
    # Pillow's ImagingScaleAffine: x = scale / 2, x += scale per output pixel, index = int(x).
    scale = src / dst
    x = 0.0 + scale * 0.5
    out = np.empty(dst, dtype=np.intp)
    for i in range(dst):
        out[i] = min(int(x), src - 1)
        x += scale
    return out


def _check_stack(tiles, name: str) -> np.ndarray:
    tiles = np.asarray(tiles)
    if tiles.ndim not in (3, 4) or 0 in tiles.shape[1:3]:
        raise ValueError(f"{name} must be an (n, rows, cols[, C]) array, got shape {tiles.shape}")
    return tiles


def downscale_masks(masks, *, size: int = 50) -> np.ndarray:
    """Downscale tiles with PIL's ``NEAREST`` rule, as the seed's ``resize((50, 50), NEAREST)``.

    Parameters
    ----------
    masks : (n, T, T) or (n, T, T, C) array
        Mask (or any) tiles.
    size : int, optional
        Output side.

    Returns
    -------
    (n, size, size[, C]) array
        Same dtype; pixel ``i`` samples source pixel ``int((i + 0.5) * T / size)`` (for 400 to 50:
        ``masks[:, 4::8, 4::8]``).
    """
    masks = _check_stack(masks, "masks")
    size = _positive_int(size, "size")
    rows = _pil_nearest_index(masks.shape[1], size)
    cols = _pil_nearest_index(masks.shape[2], size)
    return masks[:, rows][:, :, cols]


@lru_cache(maxsize=32)
def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Half-pixel centres (as PIL and cv2): source coordinate of output pixel i, edges clamped.
    x = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    x = np.clip(x, 0.0, src - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    frac = (x - i0).astype(np.float32)
    for a in (i0, i1, frac):
        a.setflags(write=False)
    return i0, i1, frac


def _lerp(a: np.ndarray, b: np.ndarray, frac: np.ndarray) -> np.ndarray:
    # a + f * (b - a): exact where a == b (constant regions stay constant).
    out = b - a
    out *= frac
    out += a
    return out


def upscale_tiles(prob, *, size: int = 400, method: str = "bilinear") -> np.ndarray:
    """Upscale tile predictions back to the tile size.

    Parameters
    ----------
    prob : (n, s, s) or (n, s, s, C) array
        Probabilities in [0, 1] (model output, e.g. 50x50).
    size : int, optional
        Output side (the tile, 400 in the seed).
    method : {"bilinear", "nearest", "seed"}, optional
        ``bilinear``: linear interpolation between pixel centres (half-pixel convention as PIL
        and OpenCV, edges clamped), in float; ``nearest``: PIL's nearest rule; ``seed``: the
        notebook's ``Image.fromarray(uint8(p * 255)).resize((size, size))`` (PIL's default
        bicubic on 8 bits) divided by 255; only for (n, s, s).

    Returns
    -------
    (n, size, size[, C]) float32 array
    """
    if method not in UPSCALE_METHODS:
        raise ValueError(f"method must be one of {', '.join(UPSCALE_METHODS)}, got {method!r}")
    prob = _check_stack(prob, "prob")
    size = _positive_int(size, "size")
    n, src_rows, src_cols = prob.shape[:3]
    if method == "nearest":
        rows = _pil_nearest_index(src_rows, size)
        cols = _pil_nearest_index(src_cols, size)
        return prob.astype(np.float32, copy=False)[:, rows][:, :, cols]
    if method == "seed":
        if prob.ndim != 3:
            raise ValueError(f"method 'seed' needs (n, s, s) tiles, got shape {prob.shape}")
        from PIL import Image

        out = np.empty((n, size, size), dtype=np.float32)
        for i in range(n):
            img = Image.fromarray(np.uint8(prob[i] * 255))
            out[i] = np.asarray(img.resize((size, size)), dtype=np.uint8)
        out /= 255
        return out
    prob = prob.astype(np.float32, copy=False)
    r0, r1, rf = _linear_taps(src_rows, size)
    c0, c1, cf = _linear_taps(src_cols, size)
    extra = (1,) * (prob.ndim - 3)
    tmp = _lerp(prob[:, r0], prob[:, r1], rf.reshape(1, -1, 1, *extra))
    return _lerp(tmp[:, :, c0], tmp[:, :, c1], cf.reshape(1, 1, -1, *extra))


@lru_cache(maxsize=16)
def _taper_1d(length: int) -> np.ndarray:
    # sin^2 window over pixel centres: 1 in the middle, smooth, > 0 at the edges.
    x = (np.arange(length, dtype=np.float64) + 0.5) / length
    w = np.sin(np.pi * x) ** 2
    w = np.maximum(w, 1e-3)
    return w.astype(np.float32)


def taper_window(rows: int, cols: int) -> np.ndarray:
    """Weights of the ``taper`` blend: ``w(r) * w(c)``, ``w = max(sin^2(pi (i + 0.5) / n), 1e-3)``.

    Returns
    -------
    (rows, cols) float32 array
        In ``(0, 1]``; largest in the middle of the tile, smallest at its corners.
    """
    rows = _positive_int(rows, "rows")
    cols = _positive_int(cols, "cols")
    return np.outer(_taper_1d(rows), _taper_1d(cols))


def stitch(tiles, grid, shape, *, blend: str = "min") -> np.ndarray:
    """Assemble tile predictions into one image.

    Parameters
    ----------
    tiles : (n, T, T) or (n, T, T, C) array
        One prediction per tile, at tile resolution (see :func:`upscale_tiles`).
    grid : (n, 2) int array
        Top-left ``(row, col)`` of each tile (:func:`tile_grid`); tiles may reach past the
        bottom/right edge (their outside part is dropped).
    shape : (H, W)
        Output size.
    blend : {"min", "mean", "taper"}, optional
        Value where tiles overlap: ``min``, the seed's conservative minimum; ``mean``, the plain
        average; ``taper``, an average weighted by :func:`taper_window`, so that the middle of a
        tile counts more than its edges (less seam). All are exact where the overlapping tiles
        agree (the averages are incremental updates ``m += (x - m) * w / W``).

    Returns
    -------
    (H, W) or (H, W, C) float32 array
        Pixels that no tile covers are 0.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    tiles = _check_stack(tiles, "tiles")
    try:
        height, width = (operator.index(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"shape must be positive, got {(height, width)}")
    grid = _check_grid(grid, (height, width))
    if len(grid) != len(tiles):
        raise ValueError(f"{len(tiles)} tiles but {len(grid)} grid positions")
    window = taper_window(*tiles.shape[1:3]) if blend == "taper" else None
    return _stitch_cells(tiles, grid, (height, width), blend, window)


def _stitch_cells(tiles: np.ndarray, grid: np.ndarray, shape, blend: str, window) -> np.ndarray:
    # The tile edges cut the image into rectangular cells, each covered by a fixed list of
    # tiles. A cell covered once is a plain copy (most of the image); only the overlaps are
    # blended, so the cost is about one pass over the image, whatever the number of tiles.
    height, width = shape
    n, th, tw = tiles.shape[:3]
    extra = tiles.shape[3:]
    top, left = grid[:, 0], grid[:, 1]
    bottom, right = np.minimum(top + th, height), np.minimum(left + tw, width)
    row_cuts = np.unique(np.concatenate([[0, height], top, bottom])).tolist()
    col_cuts = np.unique(np.concatenate([[0, width], left, right])).tolist()
    r_first = np.searchsorted(row_cuts, top).tolist()
    r_last = np.searchsorted(row_cuts, bottom).tolist()
    c_first = np.searchsorted(col_cuts, left).tolist()
    c_last = np.searchsorted(col_cuts, right).tolist()
    cover: dict[tuple[int, int], list[int]] = {}
    for t in range(n):  # in tile order: the blend order is the grid order
        for i in range(r_first[t], r_last[t]):
            for j in range(c_first[t], c_last[t]):
                cover.setdefault((i, j), []).append(t)
    top, left = top.tolist(), left.tolist()
    out = np.empty((height, width, *extra), dtype=np.float32)
    channel = (1,) * len(extra)
    for i in range(len(row_cuts) - 1):
        r0, r1 = row_cuts[i], row_cuts[i + 1]
        for j in range(len(col_cuts) - 1):
            c0, c1 = col_cuts[j], col_cuts[j + 1]
            dest = out[r0:r1, c0:c1]
            covering = cover.get((i, j))
            if not covering:
                dest[...] = 0
                continue
            parts = [(r0 - top[t], r1 - top[t], c0 - left[t], c1 - left[t], t) for t in covering]
            a0, a1, b0, b1, t = parts[0]
            dest[...] = tiles[t, a0:a1, b0:b1]
            if blend == "taper":
                total = window[a0:a1, b0:b1].copy()
            for k, (a0, a1, b0, b1, t) in enumerate(parts[1:], start=2):
                values = tiles[t, a0:a1, b0:b1]
                if blend == "min":
                    np.minimum(dest, values, out=dest)
                    continue
                # m += (x - m) * w / W: where x equals m the increment is exactly 0.
                delta = np.subtract(values, dest, dtype=np.float32)
                if blend == "mean":
                    delta /= np.float32(k)
                else:
                    weight = window[a0:a1, b0:b1]
                    total += weight
                    delta *= (weight / total).reshape(weight.shape + channel)
                dest += delta
    return out


def stride(depth: int, space_to_depth: bool = False) -> int:
    """What a U-Net's input sides must be divisible by: ``2**depth``, twice that with the
    space-to-depth stem (here, not in :mod:`neuroseg.models`, so that serving without Keras
    pads whole images to it)."""
    return 2 ** int(depth) * (2 if space_to_depth else 1)


def config_stride(config) -> int:
    """:func:`stride` of a registered model's config (``train.depth``, default 3, and
    ``train.space_to_depth``)."""
    train = config.get("train") or {}
    return stride(int(train.get("depth", 3)), bool(train.get("space_to_depth", False)))
