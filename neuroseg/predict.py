"""Whole-image prediction by tiles, and segmentation of probability maps into cells (light).

The seed notebook's ``applyModelToImage``: cut the image into 400x400 tiles with >= 100 px
overlap, predict every tile, upscale the 50x50 predictions to 400x400, blend overlapping tiles
with a minimum, then flood-fill the thresholded map to count cells. Here the model is any callable
``(n, T, T, 3) uint8 -> (n, s, s) float`` (e.g. ``ModelBundle.predict_tiles``), so this module does
not import TensorFlow; tiling and stitching come from :mod:`neuroseg.tiling`.

A model with a ``three_class`` head (``config["head"]``) predicts background / interior /
boundary probabilities ``(n, s, s, 3)``; :func:`segment_image` turns them into instances with
:func:`neuroseg.instances.instances_from_classes` and the parameters in ``config["postprocess"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from neuroseg.masks import label_mask, relabel_raster
from neuroseg.normalize import input_scale, input_spec, model_input, resize_planes, scaled_shape
from neuroseg.tiling import BLENDS, UPSCALE_METHODS, crop_tiles, stitch, tile_grid, upscale_tiles

__all__ = [
    "RESCALE_DEFAULTS",
    "RESCALE_PAD",
    "SIZE_GROUPS",
    "TTA_MODES",
    "check_postprocess_by_size",
    "check_rescale",
    "check_tta",
    "foreground_box",
    "postprocess",
    "postprocess_params",
    "predict_image",
    "predict_input",
    "predict_probabilities",
    "prepare_input",
    "relabel_raster",
    "segment",
    "segment_image",
    "size_group",
    "typical_cell_area",
]

PredictTiles = Callable[[np.ndarray], Any]

#: Test-time augmentation: the input's flips whose predictions (flipped back) are averaged.
#: Each entry is (flip rows, flip columns); ``none`` is the plain prediction.
TTA_MODES: dict[str, tuple[tuple[bool, bool], ...]] = {
    "none": ((False, False),),
    "flip2": ((False, False), (True, True)),
    "flips": ((False, False), (False, True), (True, False), (True, True)),
}
_EIGHT = np.ones((3, 3), dtype=bool)


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.float32):
        raise ValueError(
            f"image must be an (H, W, 3) uint8 or float32 (0..255) array, got shape "
            f"{image.shape} dtype {image.dtype}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def _check_output(out, n: int, tile: int, output_size: int | None) -> np.ndarray:
    out = np.asarray(out)
    if out.ndim == 4 and out.shape[-1] == 1:
        out = out[..., 0]
    if out.ndim not in (3, 4) or out.shape[0] != n or out.shape[1] != out.shape[2]:
        raise ValueError(
            f"predict_tiles must return ({n}, s, s) or ({n}, s, s, C) probabilities for {n} "
            f"tiles, got shape {out.shape}"
        )
    size = out.shape[1]
    if output_size is not None and size != output_size:
        raise ValueError(f"model output is {size}x{size} but output_size is {output_size}")
    if size > tile:
        raise ValueError(f"model output {size}x{size} is larger than the {tile}x{tile} tile")
    if not np.issubdtype(out.dtype, np.floating):
        raise ValueError(f"predict_tiles must return float probabilities, got dtype {out.dtype}")
    return out.astype(np.float32, copy=False)


def predict_probabilities(
    predict_tiles: PredictTiles,
    image: np.ndarray,
    *,
    tile: int = 400,
    output_size: int | None = None,
    min_overlap: int = 100,
    blend: str = "min",
    upscale: str = "bilinear",
    batch_size: int = 8,
) -> np.ndarray:
    """Cell probability of every pixel of an image, predicted tile by tile.

    Parameters
    ----------
    predict_tiles : callable
        ``predict_tiles(tiles)`` with ``tiles`` an ``(n, tile, tile, 3)`` uint8 batch returns
        ``(n, s, s)`` (or ``(n, s, s, 1)``) float probabilities, ``s <= tile``, or ``(n, s, s,
        C)`` for a multi-channel head (each channel upscaled and blended alike).
    image : (H, W, 3) uint8 or float32 array
        Model input of any size on the 0..255 scale (:func:`neuroseg.normalize.model_input`);
        sides shorter than ``tile`` are padded with 0 (black).
    tile : int
        Tile side in pixels (400 in the seed).
    output_size : int or None
        Expected model output side (50 for the seed's shallow model); None accepts any.
    min_overlap : int
        Minimum overlap of neighbouring tiles (100 in the seed).
    blend : {"min", "mean", "taper"}
        How overlapping tiles combine (:func:`neuroseg.tiling.stitch`); ``min`` is the seed's.
    upscale : {"bilinear", "nearest", "seed"}
        How outputs smaller than the tile are resized to it (:func:`neuroseg.tiling.upscale_tiles`).
    batch_size : int
        Tiles per call of ``predict_tiles``.

    Returns
    -------
    (H, W) float32 array, or (H, W, C) for a multi-channel head
        Stitched probabilities.
    """
    image = _check_image(image)
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    if upscale not in UPSCALE_METHODS:
        raise ValueError(f"upscale must be one of {', '.join(UPSCALE_METHODS)}, got {upscale!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if output_size is not None and not 0 < int(output_size) <= int(tile):
        raise ValueError(f"output_size must be in 1..tile ({tile}), got {output_size!r}")
    height, width = image.shape[:2]
    grid = tile_grid(height, width, tile=tile, min_overlap=min_overlap)
    outputs = []
    for start in range(0, len(grid), int(batch_size)):
        part = grid[start : start + int(batch_size)]
        batch = crop_tiles(image, part, tile=tile, pad_value=0)
        out = _check_output(predict_tiles(batch), len(part), tile, output_size)
        if out.shape[1] != tile:
            out = upscale_tiles(out, size=tile, method=upscale)
        outputs.append(out)
    return stitch(np.concatenate(outputs), grid, (height, width), blend=blend)


def prepare_input(config: Mapping, image: np.ndarray, *, channel: int | None = None):
    """The model input of a decoded image as the model's config declares it.

    ``config["input"]`` (absent = the legacy fixed 0..255 RGB) goes to
    :func:`neuroseg.normalize.model_input`. An 8-bit RGB image for a fixed-scale RGB model is
    passed on as ``uint8`` unchanged (the same numbers, a quarter of the memory).
    """
    spec = input_spec(config.get("input"))
    image = np.asarray(image)
    if (
        spec["normalization"] == "fixed"
        and spec["channels"] == "rgb"
        and channel is None
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
    ):
        return image
    return model_input(image, spec, channel=channel)


def predict_image(
    bundle: Any, image: np.ndarray, *, batch_size: int = 8, channel: int | None = None
) -> np.ndarray:
    """Probability map of a decoded image with a loaded model bundle.

    The image (any dtype and channel count, e.g. from ``neuroseg.images.decode_native``) is
    turned into the model's declared input by :func:`prepare_input` (``channel`` picks one
    channel of a multi-channel image), then predicted by :func:`predict_input`.

    Returns
    -------
    (H, W) float32 array, or (H, W, C) for a multi-channel head
    """
    config: Mapping = getattr(bundle, "config", None) or {}
    return predict_input(
        bundle, prepare_input(config, image, channel=channel), batch_size=batch_size
    )


def check_tta(mode: str) -> str:
    """`mode` if it names a :data:`TTA_MODES` entry, else a ValueError listing them."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


def _flip(a: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    if rows:
        a = a[::-1]
    if cols:
        a = a[:, ::-1]
    return a


def predict_input(bundle: Any, x: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
    """Probability map of a prepared model input (:func:`prepare_input`'s result).

    Reads ``tile`` (400), ``output_size`` (None), ``min_overlap`` (100), ``blend`` ("min") and
    ``upscale`` ("bilinear") from ``bundle.config`` (defaults in brackets) and predicts with
    ``bundle.predict_tiles``; see :func:`predict_probabilities`. When the config has
    ``max_whole_pixels`` (three-class U-Nets) and the image has at most that many pixels, it is
    predicted in one call of ``bundle.predict_whole`` instead (no tiles, no overlaps computed
    twice).

    ``config["tta"]`` (``"none"`` when absent; see :data:`TTA_MODES`) averages the predictions
    of the flipped inputs, each flipped back: ``flips`` costs 4 predictions, ``flip2`` 2.

    A model whose input spec has a ``scale`` (:func:`neuroseg.normalize.input_scale`) predicts
    the input resized by it; the maps are resized back (bilinear) to the input's rows and
    columns, so post-processing and measurements stay in the image's own pixels. A config with
    a ``rescale`` rule (:func:`check_rescale`) predicts an image of small cells a second time,
    at the rule's scale.
    """
    config: Mapping = getattr(bundle, "config", None) or {}
    scale = input_scale(config.get("input"))
    total = _predict_at(bundle, config, x, scale, config.get("tta") or "none", batch_size)
    rule = check_rescale(config.get("rescale"))
    if rule and rule["scale"] != scale and size_group(total, rule["below_area"]) == "small":
        # small cells: the network sees the image again, larger (the rule's scale), over the
        # box that holds the first pass's cells; an image without cells is not predicted twice
        box = foreground_box(total, pad=RESCALE_PAD)
        total = np.array(total, dtype=np.float32)  # a writable copy
        other = _predict_at(bundle, config, x[box], rule["scale"], rule["tta"], batch_size)
        if rule["mode"] == "replace":
            total[box] = other
        else:
            total[box] = (total[box] + other) / np.float32(2)
    return total


#: Context in image pixels around the first pass's cells that the second pass of a
#: ``rescale`` rule sees (:func:`foreground_box`).
RESCALE_PAD = 64


def foreground_box(probs: np.ndarray, *, pad: int = 0) -> tuple[slice, slice]:
    """Row and column slices of the box holding every pixel whose cell (binary maps) or
    foreground (``1 - p_background``, three-class maps) probability is above 0.5, widened by
    ``pad`` pixels each way within the image; the whole image when there is none."""
    probs = np.asarray(probs)
    plane = (1.0 - probs[..., 0]) if probs.ndim == 3 else probs
    inside = plane > 0.5
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return slice(0, inside.shape[0]), slice(0, inside.shape[1])
    return tuple(
        slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + 1 + pad, n))
        for idx, n in ((rows, inside.shape[0]), (cols, inside.shape[1]))
    )


#: ``config["rescale"]``'s keys and defaults (:func:`check_rescale`).
RESCALE_DEFAULTS = {"below_area": 0.0, "scale": 1.0, "tta": "none", "mode": "mean"}


def check_rescale(rule: Mapping | None) -> dict | None:
    """A model config's ``rescale`` rule, completed and checked (None: no rule).

    ``{"below_area": A, "scale": S, "tta": T, "mode": M}``: when the cells of the first
    prediction (at the input spec's scale) are typically smaller than ``A`` image pixels
    (:func:`typical_cell_area`; an image without any is predicted once), the box holding the
    first prediction's cells, widened by :data:`RESCALE_PAD` pixels (:func:`foreground_box`),
    is predicted again resized by ``S`` with test-time flips ``T``, and there those maps
    are averaged with the first (``M = "mean"``, the default: on the FNC samples' held-out
    images, both passes over the whole image, it beat replacing, red F1 0.775 against
    0.711) or replace them (``"replace"``); elsewhere the first maps stay. A model that
    learnt its cells at one size (the ``fnc`` model: somata of 15-35 px at half scale) then
    sees images of small cells (the 200x red images' 500-900 px somata) at the size it knows,
    without a per-image setting.
    """
    if not rule:
        return None
    unknown = sorted(set(rule) - set(RESCALE_DEFAULTS))
    if unknown:
        raise ValueError(f"rescale: unknown keys {unknown}; known: {', '.join(RESCALE_DEFAULTS)}")
    out = {**RESCALE_DEFAULTS, **rule}
    try:
        out["below_area"], out["scale"] = float(out["below_area"]), float(out["scale"])
    except (TypeError, ValueError):
        raise ValueError(f"rescale: below_area and scale must be numbers, got {rule!r}") from None
    input_spec({"scale": out["scale"]})  # the input spec's range and message
    check_tta(out["tta"])
    if out["below_area"] < 0 or out["mode"] not in ("replace", "mean"):
        raise ValueError(f"rescale: below_area must be >= 0 and mode replace or mean, got {rule!r}")
    return out


def typical_cell_area(probs: np.ndarray) -> float:
    """The typical cell's area in pixels in a probability map, before any post-processing.

    :func:`neuroseg.instances.typical_area` of the 4-connected components of the interior
    (three-class maps) or cell (binary maps) probability above 0.5: the area of the component
    holding the median such pixel. Cheap (one labelling), and close to the cells' size where
    they stand apart; joined cells make it larger.
    """
    from neuroseg.instances import INTERIOR, typical_area

    probs = np.asarray(probs)
    plane = probs[..., INTERIOR] if probs.ndim == 3 else probs
    components, _ = ndi.label(plane > 0.5)
    return typical_area(components)


def _predict_at(bundle: Any, config: Mapping, x: np.ndarray, scale: float, tta: str,
                batch_size: int) -> np.ndarray:  # fmt: skip
    """Maps of ``x`` predicted resized by ``scale`` with the flips of ``tta``, at ``x``'s size."""
    flips = TTA_MODES[check_tta(tta)]
    full = np.shape(x)[:2]
    if scale != 1.0:  # the model learnt the image at this scale; maps come back at full size
        x = resize_planes(x, scaled_shape(full, scale))
    if len(flips) == 1:
        total = _predict_once(bundle, config, x, batch_size)
    else:
        total = None
        for rows, cols in flips:
            out = _flip(_predict_once(bundle, config, _flip(x, rows, cols), batch_size), rows, cols)
            total = out.copy() if total is None else np.add(total, out, out=total)
        total /= np.float32(len(flips))
    return resize_planes(total, full) if scale != 1.0 else total


def _predict_once(bundle: Any, config: Mapping, x: np.ndarray, batch_size: int) -> np.ndarray:
    x = np.ascontiguousarray(x)
    whole = int(config.get("max_whole_pixels") or 0)
    if whole and hasattr(bundle, "predict_whole") and x.shape[0] * x.shape[1] <= whole:
        return np.asarray(bundle.predict_whole(_check_image(x)), np.float32)
    return predict_probabilities(
        bundle.predict_tiles,
        x,
        tile=int(config.get("tile", 400)),
        output_size=config.get("output_size"),
        min_overlap=int(config.get("min_overlap", 100)),
        blend=config.get("blend", "min"),
        upscale=config.get("upscale", "bilinear"),
        batch_size=batch_size,
    )


def _split_one(object_mask: np.ndarray, min_distance: int, h: float) -> tuple[np.ndarray, int]:
    """Watershed split of one object (a small crop); returns labels 1..k and k."""
    from skimage.feature import peak_local_max
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    distance = ndi.distance_transform_edt(object_mask)
    if distance.max() < h + 1:  # no two seeds h deep above a neck >= 1: keep whole
        return object_mask.astype(np.int32), 1
    # seeds: regional maxima of the distance at least h deep (so a ridge of constant width is
    # one seed, not a string of them) that hold a local peak at least min_distance from others
    regions, _ = ndi.label(h_maxima(distance, h) > 0, structure=_EIGHT)
    peaks = peak_local_max(
        distance, min_distance=min_distance, labels=object_mask.astype(np.int32),
        exclude_border=False,
    )  # fmt: skip
    hit = np.zeros(int(regions.max()) + 1, dtype=bool)
    hit[regions[tuple(peaks.T)]] = True
    hit[0] = False
    markers, k = ndi.label(hit[regions], structure=_EIGHT)
    if k <= 1:
        return object_mask.astype(np.int32), 1
    split = watershed(-distance, markers, mask=object_mask)
    split[object_mask & (split == 0)] = 1  # cannot happen with a 4-connected object; be safe
    return split.astype(np.int32), int(k)


def _split_touching(components: np.ndarray, min_distance: int, h: float) -> np.ndarray:
    """Split every component (labels 1..n) by watershed, one bounding box at a time."""
    out = np.zeros_like(components, dtype=np.int32)
    height, width = components.shape
    offset = 0
    for i, box in enumerate(ndi.find_objects(components), start=1):
        if box is None:
            continue
        rs, cs = box
        rs = slice(max(rs.start - 1, 0), min(rs.stop + 1, height))
        cs = slice(max(cs.start - 1, 0), min(cs.stop + 1, width))
        obj = components[rs, cs] == i
        split, k = _split_one(obj, min_distance, h)
        view = out[rs, cs]
        view[obj] = split[obj] + offset
        offset += k
    return out


def segment(
    prob: np.ndarray,
    *,
    threshold: float = 0.5,
    min_area: int = 0,
    watershed: bool = False,
    min_distance: int = 7,
    h: float = 2.0,
) -> tuple[np.ndarray, int]:
    """Cells of a probability map: threshold, label, drop small objects, optionally split.

    Parameters
    ----------
    prob : (H, W) float array
        Cell probabilities.
    threshold : float
        Foreground is ``prob > threshold`` (the seed's ``> 127`` on its 0..255 map is 0.498).
    min_area : int
        Objects with fewer pixels are dropped (after splitting).
    watershed : bool
        Split touching cells: watershed of the negated distance transform of the foreground,
        seeded with its local maxima (:func:`skimage.feature.peak_local_max`, at least
        ``min_distance`` pixels apart, within each 4-connected component) that are at least
        ``h`` deep (:func:`skimage.morphology.h_maxima`). An object without such a seed (a thin
        or flat one) is kept whole.
    min_distance : int
        Smallest distance between two seeds, in pixels (about a cell's smallest radius).
    h : float
        Smallest depth, in pixels of distance, of the neck between two seeds: two touching
        discs of radius r whose neck is w pixels wide are split when ``r - w / 2 >= h``.

    Returns
    -------
    labels : (H, W) int32 array
        0 for background, ``1..n`` in raster order of each cell's first pixel. Without watershed
        these are the 4-connected components of the foreground (the seed's flood fill).
    n : int
        Number of cells.
    """
    prob = np.asarray(prob)
    if prob.ndim != 2 or not (np.issubdtype(prob.dtype, np.floating) or prob.dtype == bool):
        raise ValueError(
            f"prob must be a 2-D float array, got shape {prob.shape} dtype {prob.dtype}"
        )
    if int(min_area) != min_area or min_area < 0:
        raise ValueError(f"min_area must be an integer >= 0, got {min_area!r}")
    if int(min_distance) != min_distance or min_distance < 1:
        raise ValueError(f"min_distance must be an integer >= 1, got {min_distance!r}")
    if not h > 0:
        raise ValueError(f"h must be > 0, got {h!r}")
    foreground = prob > threshold
    labels, n = label_mask(foreground, connectivity=4)
    if watershed and n:
        labels = _split_touching(labels, int(min_distance), float(h))
    if watershed or min_area > 0:
        labels, n = relabel_raster(labels, min_area=int(min_area))
    return labels.astype(np.int32, copy=False), int(n)


def segment_image(
    bundle: Any,
    image: np.ndarray,
    *,
    channel: int | None = None,
    threshold: float | None = None,
    min_area: int | None = None,
    watershed: bool | None = None,
    batch_size: int = 8,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Cells of a decoded image with a loaded model: the one path every command uses.

    :func:`predict_image` (input as the model declares it), then :func:`segment` with the
    model's ``threshold``, ``min_area`` and ``watershed`` from ``bundle.config`` unless given.
    A ``three_class`` model (``config["head"]``) is post-processed by
    :func:`neuroseg.instances.instances_from_classes` with ``config["postprocess"]`` instead
    (chosen on validation images by :func:`neuroseg.instances.sweep_postprocessing`);
    ``threshold``, ``min_area`` and ``watershed`` apply to binary models only.

    Returns
    -------
    labels : (H, W) int32 array
        ``0`` background, ``1..n`` cells in raster order.
    n : int
    prob : (H, W) float32 array
        The stitched cell probability map (three_class: the foreground probability
        ``1 - p_background``).
    """
    config: Mapping = getattr(bundle, "config", None) or {}
    prob = predict_image(bundle, image, batch_size=batch_size, channel=channel)
    return postprocess(
        config, prob, threshold=threshold, min_area=min_area, watershed=watershed, image=image
    )


#: The two parts of ``config["postprocess_by_size"]`` (:func:`size_group`).
SIZE_GROUPS = ("small", "large")


def check_postprocess_by_size(spec: Mapping | None) -> dict | None:
    """A model config's ``postprocess_by_size``, checked (None: none).

    ``{"below_area": A, "small": {...}, "large": {...}}``: images whose cells are typically
    smaller than ``A`` pixels (:func:`size_group`) are post-processed with the ``small``
    parameters over ``config["postprocess"]``, the others (images of larger cells, and those
    without any) with ``large``. Cell size, not stain, is what the size-related parameters
    (``open_radius``, ``min_area``, ``min_area_fraction``) depend on, and a grey image has a
    size but no stain to tell.
    """
    if not spec:
        return None
    from neuroseg.instances import POSTPROCESS_DEFAULTS

    unknown = sorted(set(spec) - {"below_area", *SIZE_GROUPS})
    if unknown:
        raise ValueError(
            f"postprocess_by_size: unknown keys {unknown}; known: below_area, "
            + ", ".join(SIZE_GROUPS)
        )
    try:
        below = float(spec.get("below_area"))
    except (TypeError, ValueError):
        below = float("nan")
    if not below > 0:
        raise ValueError(f"postprocess_by_size: below_area must be a number > 0, got {spec!r}")
    out = {"below_area": below}
    for g in SIZE_GROUPS:
        params = dict(spec.get(g) or {})
        wrong = sorted(set(params) - set(POSTPROCESS_DEFAULTS))
        if wrong:
            raise ValueError(f"postprocess_by_size: unknown parameters {wrong} in {g!r}")
        out[g] = params
    return out


def size_group(probs: np.ndarray, below_area: float) -> str:
    """``"small"`` when the map's cells are typically under ``below_area`` pixels
    (:func:`typical_cell_area`, the measure a ``rescale`` rule uses), else ``"large"`` (an
    image without any cell is ``"large"``, as it is predicted once)."""
    return "small" if 0 < typical_cell_area(probs) < below_area else "large"


def postprocess_params(
    config: Mapping, *, stain: str | None = None, size: str | None = None
) -> dict:
    """The instance post-processing a three-class model's config asks for.

    ``config["postprocess"]`` over :data:`neuroseg.instances.POSTPROCESS_DEFAULTS`, updated
    with ``config["postprocess_by_stain"][stain]`` when the model chose post-processing per
    stain and ``stain`` (:func:`neuroseg.normalize.stain_of` of the image) is one of them, then
    with ``config["postprocess_by_size"][size]`` when it chose them per cell size (``size``:
    :func:`size_group` of the image's maps; :func:`check_postprocess_by_size`); when the
    config runs with test-time augmentation (``config["tta"]``) and its evaluation chose
    parameters under that mode (``config["postprocess_tta"][mode]``), those instead: averaged
    flips give smoother maps that want their own thresholds.
    """
    from neuroseg.instances import POSTPROCESS_DEFAULTS

    params = {**POSTPROCESS_DEFAULTS, **(config.get("postprocess") or {})}
    if stain is not None:
        params.update((config.get("postprocess_by_stain") or {}).get(stain) or {})
    by_size = check_postprocess_by_size(config.get("postprocess_by_size"))
    if size is not None and by_size:
        if size not in SIZE_GROUPS:
            raise ValueError(f"size must be one of {', '.join(SIZE_GROUPS)}, got {size!r}")
        params.update(by_size[size])
    mode = config.get("tta") or "none"
    by_mode = config.get("postprocess_tta") or {}
    if mode != "none" and by_mode.get(mode):
        params.update(by_mode[mode])
    return params


def postprocess(
    config: Mapping,
    prob: np.ndarray,
    *,
    threshold: float | None = None,
    min_area: int | None = None,
    watershed: bool | None = None,
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Cells of a predicted probability map as the model's config says: ``(labels, n, prob)``.

    Binary heads: :func:`segment` with ``threshold``, ``min_area`` and ``watershed`` (the
    config's unless given). ``three_class`` heads: :func:`neuroseg.instances.
    instances_from_classes` with ``config["postprocess"]``; the returned ``prob`` is then the
    foreground probability ``1 - p_background``. ``image`` (the decoded image) tells the stain
    to a model with post-processing per stain (``config["postprocess_by_stain"]``); the maps'
    typical cell size picks the part of ``config["postprocess_by_size"]`` (:func:`size_group`).
    """
    if config.get("head") == "three_class":
        from neuroseg.instances import instances_from_classes
        from neuroseg.normalize import stain_of

        if prob.ndim != 3 or prob.shape[2] not in (3, 4):
            raise ValueError(
                "a three_class model must predict (H, W, 3) probabilities (H, W, 4 with a "
                f"centre map), got {prob.shape}"
            )
        by_stain = config.get("postprocess_by_stain") and image is not None
        by_size = check_postprocess_by_size(config.get("postprocess_by_size"))
        params = postprocess_params(
            config,
            stain=stain_of(image) if by_stain else None,
            size=size_group(prob, by_size["below_area"]) if by_size else None,
        )
        labels, n = instances_from_classes(prob, **params)
        return labels, n, np.ascontiguousarray(1.0 - prob[..., 0], dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"a binary model must predict (H, W) probabilities, got {prob.shape}")
    labels, n = segment(
        prob,
        threshold=float(config.get("threshold", 0.5) if threshold is None else threshold),
        min_area=int(config.get("min_area", 0) if min_area is None else min_area),
        watershed=bool(config.get("watershed", False) if watershed is None else watershed),
    )
    return labels, n, prob
