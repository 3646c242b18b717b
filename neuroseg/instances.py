"""Instance-aware targets and post-processing: three classes keep touching nuclei apart (light).

Caicedo et al. 2019 (BBBC039) showed that a U-Net predicting three classes per pixel,
*background*, *interior* and *boundary*, separates touching nuclei far better than one
predicting cell/background: the boundary class draws a line between two touching nuclei, so
their interiors are apart even where their outlines touch. This module (numpy, scipy and
scikit-image; no TensorFlow) holds both ends of that:

- :func:`three_class_targets`: the training target of an instance label image;
- :func:`instances_from_classes`: instance labels from the predicted class probabilities
  (markers = connected interiors, grown by a watershed over the foreground);
- :func:`sweep_postprocessing`: the post-processing parameters chosen on validation images by
  the pooled mean AP over IoU 0.5:0.95 (:mod:`neuroseg.metrics`), as the classical baseline's
  are (:func:`neuroseg.baseline.tune_classical`);
- :func:`sweep_leave_one_out`: the same choice, nested in a leave-one-image-out evaluation on a
  handful of images (each image scored with parameters chosen on the others), by centroid F1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import product

import numpy as np
from scipy import ndimage as ndi

from neuroseg.masks import relabel_raster
from neuroseg.metrics import iou_matching, prf, rank_grid

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "CENTRE",
    "CLASS_NAMES",
    "INTERIOR",
    "MARKERS",
    "POSTPROCESS_DEFAULTS",
    "POSTPROCESS_GRID",
    "centre_targets",
    "instances_from_classes",
    "open_objects",
    "separation_targets",
    "split_objects",
    "sweep_leave_one_out",
    "sweep_postprocessing",
    "three_class_targets",
    "typical_area",
]

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
CLASS_NAMES = ("background", "interior", "boundary")
#: Channel of the centre map (:func:`centre_targets`) that a three-class head may add.
CENTRE = 3
#: What seeds the watershed: the interior probability, or the predicted centre map (4-channel
#: heads only).
MARKERS = ("interior", "centre")

#: Parameters of :func:`instances_from_classes` a three-class model's config carries
#: (``config["postprocess"]``) until the validation sweep replaces them.
POSTPROCESS_DEFAULTS = {
    "interior_threshold": 0.5,
    "foreground_threshold": 0.5,
    "min_area": 15,
    "min_marker_area": 0,
    "markers": "interior",
    "small_peak": 1.0,
    "open_radius": 0,
    "min_area_fraction": 0.0,
    "split_fraction": 0.0,
}
#: The default grid of :func:`sweep_postprocessing` (8 x 5 x 3 x 2 x 3 = 720 points; 80
#: watersheds per image, the rest is cheap filtering and matching: about 3 s per 520x696
#: image for the first 240 points). ``small_peak`` below 1 keeps the confident objects under
#: ``min_area``: the micronuclei a model trained with ``small_object_area`` finds. The
#: foreground threshold of a model trained with Dice on the object classes is often above 0.5;
#: the interior thresholds reach 0.95 because a confident model's interiors stay joined across
#: the neck between touching nuclei up to about 0.9 (the shipped ``nuclei`` model: BBBC039
#: validation F1 at IoU 0.5 0.912 with markers at 0.7, 0.935 at 0.95).
POSTPROCESS_GRID = {
    "interior_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    "foreground_threshold": (0.4, 0.5, 0.6, 0.7, 0.8),
    "min_area": (10, 25, 40),
    "min_marker_area": (0, 4),
    "small_peak": (1.0, 0.9, 0.8),
}
#: Added to the grid for probability maps with a centre channel (both marker kinds compete).
CENTRE_GRID = {"markers": MARKERS}
_TUNABLE = tuple(POSTPROCESS_DEFAULTS)
_FOUR = ndi.generate_binary_structure(2, 1)


def _diamond(radius: int) -> np.ndarray:
    r = np.abs(np.arange(-radius, radius + 1))
    return (r[:, None] + r[None, :]) <= radius


def three_class_targets(
    labels: np.ndarray, *, boundary_width: int = 1, small_area: int = 0
) -> np.ndarray:
    """Background / interior / boundary classes of an instance label image.

    A pixel of an object is *boundary* when a pixel within ``boundary_width`` steps (city-block
    distance: the 4-neighbours for width 1) carries another value, background or another object;
    the other object pixels are *interior*. Width 1 is
    ``skimage.segmentation.find_boundaries(labels, mode="inner")``: between two touching nuclei it
    draws a line two pixels wide (one from each side). Pixels outside the image do not count as
    another value, so an object cut by the image (or tile) edge has no boundary along the cut.

    With ``small_area``, objects under that many pixels get a boundary one pixel wide whatever
    ``boundary_width`` is: a micronucleus 5 px across is all boundary at width 2, so nothing of
    it could seed a marker of its own, and the watershed gives it to the nucleus beside it.

    Parameters
    ----------
    labels : (H, W) integer array
        0 background, any positive id per object (ids need not be consecutive).
    boundary_width : int
        Thickness of the boundary ring inside each object, in pixels (>= 1).
    small_area : int
        Objects under this many pixels have a 1-pixel boundary (0: none).

    Returns
    -------
    (H, W) uint8 array
        0 background, 1 interior, 2 boundary (:data:`BACKGROUND`, :data:`INTERIOR`,
        :data:`BOUNDARY`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 2-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if isinstance(boundary_width, bool) or int(boundary_width) != boundary_width:
        raise ValueError(f"boundary_width must be an integer >= 1, got {boundary_width!r}")
    if boundary_width < 1:
        raise ValueError(f"boundary_width must be an integer >= 1, got {boundary_width!r}")
    small_area = _check_count("small_area", small_area)
    foreground = labels > 0
    out = foreground.astype(np.uint8)  # interior until shown otherwise
    if not foreground.any():
        return out
    lab = labels.astype(np.int64, copy=False)
    edge = _edges(lab, int(boundary_width))
    if small_area and boundary_width > 1:
        small = _small_objects(lab, small_area)
        if small.any():
            edge = np.where(small, _edges(lab, 1), edge)
    out[foreground & edge] = BOUNDARY
    return out


def _small_objects(ids: np.ndarray, small_area: int) -> np.ndarray:
    """The pixels of the objects (ids > 0) under ``small_area`` pixels."""
    return (np.bincount(ids.ravel())[ids] < small_area) & (ids > 0)


def _edges(lab: np.ndarray, width: int) -> np.ndarray:
    """Pixels with another value within ``width`` city-block steps (the image edge is not one)."""
    footprint = _diamond(width)
    high = ndi.maximum_filter(lab, footprint=footprint, mode="nearest")
    low = ndi.minimum_filter(lab, footprint=footprint, mode="nearest")
    return (high != lab) | (low != lab)


def _check_probs(probs) -> np.ndarray:
    probs = np.asarray(probs)
    shape_ok = probs.ndim == 3 and probs.shape[2] in (3, 4)
    if not shape_ok or not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(
            "probs must be an (H, W, 3) float array of background/interior/boundary "
            "probabilities (H, W, 4 with a centre map), "
            f"got shape {probs.shape} dtype {probs.dtype}"
        )
    return probs


def _check_markers(markers: str, probs: np.ndarray | None = None) -> str:
    """A known marker kind, available in ``probs`` (when given)."""
    if markers not in MARKERS:
        raise ValueError(f"markers must be one of {MARKERS}, got {markers!r}")
    if markers == "centre" and probs is not None and probs.shape[2] <= CENTRE:
        raise ValueError(
            "markers='centre' needs a model that predicts a centre map (H, W, 4), "
            f"got shape {probs.shape}"
        )
    return markers


def centre_targets(labels: np.ndarray) -> np.ndarray:
    """The centre map of an instance label image: each object's distance to its own outline.

    Per object, the Euclidean distance of its pixels to the nearest pixel outside it (background
    or another object), divided by the object's largest such distance: 1 at the object's
    centre, falling to ``1 / max`` on its outline, 0 outside. Unlike the interior class, it dips
    at the neck between two touching nuclei, so thresholding it keeps their cores apart whatever
    their sizes. An object cut by the image (or tile) edge continues past the cut, as in
    :func:`three_class_targets`: its distances do not fall towards the edge.

    Parameters
    ----------
    labels : (H, W) integer array
        0 background, any positive id per object.

    Returns
    -------
    (H, W) float32 array in [0, 1]
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 2-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    out = np.zeros(labels.shape, np.float32)
    height, width = labels.shape
    for index, box in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False))):
        if box is None:
            continue
        rows, cols = box
        own = labels[box] == index + 1
        padded = np.pad(own, 1)
        # continue the object past an image edge it touches
        if rows.start == 0:
            padded[0] = padded[1]
        if rows.stop == height:
            padded[-1] = padded[-2]
        if cols.start == 0:
            padded[:, 0] = padded[:, 1]
        if cols.stop == width:
            padded[:, -1] = padded[:, -2]
        dist = ndi.distance_transform_edt(padded)[1:-1, 1:-1]
        top = dist[own].max()
        out[box][own] = dist[own] / top
    return out


def separation_targets(labels: np.ndarray, *, radius: int = 2, small_area: int = 0) -> np.ndarray:
    """Pixels between close objects: where two touching or nearly touching nuclei must part.

    A pixel (object or background) is a *separation* pixel when the square window of side
    ``2 * radius + 1`` around it (clipped to the image) holds pixels of two or more different
    objects: the contact line of touching nuclei and the narrow background gaps between close
    ones, the pixels a merge gets wrong. The three-class losses weigh their cross-entropy
    ``1 + separation_weight`` times (the idea of the U-Net paper's separation-border weights,
    Ronneberger et al. 2015, as a flat band instead of a Gaussian of the distances).

    With ``small_area``, the pixels of every object under that many pixels and the ring one
    pixel wide around it are marked too: micronuclei and other small objects (BBBC039 annotates
    them; 5 % of its nuclei are under 40 px) are few pixels of a tile, which an unweighted loss
    lets the model miss.

    Parameters
    ----------
    labels : (H, W) integer array
        0 background, any positive id per object.
    radius : int
        Half the window's side (>= 1): gaps up to ``2 * radius - 1`` pixels are marked.
    small_area : int
        Objects under this many pixels are marked whole, with a 1-pixel ring (0: none).

    Returns
    -------
    (H, W) bool array
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 2-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if isinstance(radius, bool) or int(radius) != radius or radius < 1:
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}")
    small_area = _check_count("small_area", small_area)
    ids = labels.astype(np.int64, copy=False)
    size = 2 * int(radius) + 1
    top = ndi.maximum_filter(ids, size=size, mode="constant", cval=0)
    # background and the outside count as larger than any id for the minimum
    none = int(ids.max(initial=0)) + 1
    low = ndi.minimum_filter(np.where(ids > 0, ids, none), size=size, mode="constant", cval=none)
    out = (top > 0) & (low < top)
    if small_area and none > 1:
        out |= ndi.binary_dilation(_small_objects(ids, small_area), structure=np.ones((3, 3), bool))
    return out


def _check_fraction(name: str, value) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _grow(probs: np.ndarray, interior_threshold: float, foreground_threshold: float,
          min_marker_area: int, markers: str = "interior") -> np.ndarray:  # fmt: skip
    """Watershed of the foreground from the markers; labels not yet renumbered."""
    from skimage.segmentation import watershed

    seed_map = probs[..., CENTRE if markers == "centre" else INTERIOR]
    foreground = (1.0 - probs[..., BACKGROUND]) > foreground_threshold
    seeds, n = ndi.label((seed_map > interior_threshold) & foreground, structure=_FOUR)
    if n and min_marker_area > 0:
        area = np.bincount(seeds.ravel(), minlength=n + 1)
        small = area < min_marker_area
        small[0] = False
        seeds[small[seeds]] = 0
    if seeds.any():
        labels = watershed(-seed_map, seeds, mask=foreground).astype(np.int32)
        top = int(seeds.max())
    else:
        labels, top = np.zeros(foreground.shape, np.int32), 0
    # foreground without a marker (an object all boundary, a dropped small marker) stays an
    # object of its own rather than vanishing
    missed = foreground & (labels == 0)
    if missed.any():
        extra, _ = ndi.label(missed, structure=_FOUR)
        labels[missed] = extra[missed] + top
    return labels


def instances_from_classes(
    probs: np.ndarray,
    *,
    interior_threshold: float = POSTPROCESS_DEFAULTS["interior_threshold"],
    foreground_threshold: float = POSTPROCESS_DEFAULTS["foreground_threshold"],
    min_area: int = POSTPROCESS_DEFAULTS["min_area"],
    min_marker_area: int = POSTPROCESS_DEFAULTS["min_marker_area"],
    markers: str = POSTPROCESS_DEFAULTS["markers"],
    small_peak: float = POSTPROCESS_DEFAULTS["small_peak"],
    open_radius: int = POSTPROCESS_DEFAULTS["open_radius"],
    min_area_fraction: float = POSTPROCESS_DEFAULTS["min_area_fraction"],
    split_fraction: float = POSTPROCESS_DEFAULTS["split_fraction"],
) -> tuple[np.ndarray, int]:
    """Instance labels from background / interior / boundary probabilities.

    1. foreground = ``1 - p_background > foreground_threshold``;
    2. markers = 4-connected components of ``p_interior > interior_threshold`` within the
       foreground (with ``markers="centre"``: of the predicted centre map, channel 3, above
       that threshold); markers under ``min_marker_area`` pixels are dropped;
    3. a marker-seeded watershed (:func:`skimage.segmentation.watershed`) of ``-p_interior``
       (or of the negated centre map) restricted to the foreground gives every foreground pixel
       to a marker, so objects keep their boundary ring and touching nuclei split along the
       predicted boundary; foreground that no marker reaches (an object predicted all
       boundary) is an object of its own;
    4. with ``open_radius`` > 0, every object is opened by a disk of that radius
       (:func:`open_objects`): parts thinner than the disk (neurites, a dendrite attached to
       a soma) are cut away, an object all thinner vanishes, and pieces an object falls into
       become objects of their own;
    5. with ``split_fraction`` > 0, an object whose distance map has several peaks standing
       out by at least that fraction of the image's typical cell radius is cut along the
       valleys between them (:func:`split_objects`): touching cells whose interiors the
       network joined, with a neck between them;
    6. objects under ``min_area`` pixels, or under ``min_area_fraction`` of the image's
       typical object (:func:`typical_area`: the area of the object holding the median
       foreground pixel), are dropped, unless their peak interior probability is above
       ``small_peak`` (a confident micronucleus; 1: none is kept), and the rest numbered
       ``1..n`` in raster order of their first pixel (:func:`neuroseg.masks.relabel_raster`).
       The fraction follows the cells' size from image to image (a magnification, a cell
       type): 0.25 drops pieces under a quarter of a typical cell whether cells are 800 or
       4,000 px.

    Parameters
    ----------
    probs : (H, W, 3) or (H, W, 4) float array
        Class probabilities (a softmax: channels background, interior, boundary), optionally
        followed by a centre map in [0, 1] (:func:`centre_targets`, learnt).
    interior_threshold, foreground_threshold : float
        In ``[0, 1)``; ``interior_threshold`` applies to the map that seeds the markers.
    min_area, min_marker_area : int
        Smallest object and smallest marker, in pixels (0: keep all).
    markers : {"interior", "centre"}
        The map that seeds the watershed; ``"centre"`` needs the 4th channel.
    small_peak : float
        In ``[0, 1]``: objects under ``min_area`` whose interior probability peaks above it
        are kept (1: none).
    open_radius : int
        Radius in pixels of the disk that opens every object (0: none).
    min_area_fraction : float
        In ``[0, 1)``: smallest object as a fraction of the image's typical object (0: none).
    split_fraction : float
        In ``[0, 1)``: the smallest dynamic of a distance-map peak that makes a cell of its own,
        as a fraction of the typical object's radius (0: no splitting).

    Returns
    -------
    labels : (H, W) int32 array
    n : int
    """
    probs = _check_probs(probs)
    labels = _grow(
        probs,
        _check_fraction("interior_threshold", interior_threshold),
        _check_fraction("foreground_threshold", foreground_threshold),
        _check_count("min_marker_area", min_marker_area),
        _check_markers(markers, probs),
    )
    labels = open_objects(labels, radius=_check_count("open_radius", open_radius))
    labels = split_objects(labels, fraction=_check_fraction("split_fraction", split_fraction))
    min_area = _smallest(labels, _check_count("min_area", min_area),
                         _check_fraction("min_area_fraction", min_area_fraction))  # fmt: skip
    return _keep(labels, probs, min_area, _check_peak(small_peak))


def _smallest(labels: np.ndarray, min_area: int, fraction: float) -> int:
    """The smallest object kept: ``min_area``, or ``fraction`` of the typical object if larger."""
    if fraction <= 0:
        return min_area
    return max(min_area, int(np.ceil(fraction * typical_area(labels))))


def typical_area(labels: np.ndarray) -> float:
    """The area of the object that holds the median foreground pixel of a label image.

    The area-weighted median of the objects' areas: half the foreground lies in objects at
    least this large. Unlike the plain median it is not pulled down by many small specks
    (a few hundred pixels of debris weigh little against the cells' thousands). 0 for an
    empty image.
    """
    area = np.bincount(np.asarray(labels).ravel())[1:]
    area = np.sort(area[area > 0])
    if area.size == 0:
        return 0.0
    cum = np.cumsum(area, dtype=np.int64)
    return float(area[np.searchsorted(cum, cum[-1] / 2.0)])


def _between_objects(labels: np.ndarray) -> np.ndarray:
    """Pixels of an object next to a pixel of another object (4-neighbours): the seams
    between touching objects, which an opening must not bridge."""
    seam = np.zeros(labels.shape, bool)
    for a, b, sa, sb in (
        (labels[1:], labels[:-1], seam[1:], seam[:-1]),
        (labels[:, 1:], labels[:, :-1], seam[:, 1:], seam[:, :-1]),
    ):
        d = (a != b) & (a > 0) & (b > 0)
        sa |= d
        sb |= d
    return seam


def open_objects(labels: np.ndarray, *, radius: int) -> np.ndarray:
    """Every object of a label image opened by a disk of ``radius`` pixels.

    A morphological opening (erosion then dilation by the same Euclidean disk, computed with
    two distance transforms) keeps the parts of an object at least ``2 * radius + 1`` px
    thick: a cell body keeps its shape, while the neurites attached to it, and an object that
    is all neurite (a segment or a crossing of stained processes), are cut away. Touching
    objects are opened apart (their seam is not crossed). What is left is relabelled by
    4-connected pieces, so an object cut in two (two somata joined by a dendrite) becomes two.

    Parameters
    ----------
    labels : (H, W) integer array
        0 background.
    radius : int
        Disk radius in pixels; 0 returns ``labels`` unchanged.

    Returns
    -------
    (H, W) int32 array
        Labels ``1..k`` (not in raster order; :func:`neuroseg.masks.relabel_raster` orders
        them).
    """
    radius = _check_count("radius", radius)
    labels = np.asarray(labels)
    if radius == 0 or not labels.any():
        return labels
    inside = (labels > 0) & ~_between_objects(labels)
    core = ndi.distance_transform_edt(inside) > radius
    opened = (ndi.distance_transform_edt(~core) <= radius) & inside
    pieces, _ = ndi.label(opened, structure=_FOUR)
    return pieces.astype(np.int32, copy=False)


def split_objects(labels: np.ndarray, *, fraction: float) -> np.ndarray:
    """Objects cut where their distance map has several clear peaks (touching cells apart).

    The Euclidean distance of every object pixel to the background or to another object
    peaks once in a round cell and once per cell in two touching cells joined by a neck. A
    peak counts when it stands out by at least ``h = fraction * r`` from the saddle that joins
    it to a higher one (its *dynamic*: :func:`skimage.morphology.h_maxima`), where ``r`` is the
    radius of a disc with the image's typical object area (:func:`typical_area`), so the rule
    follows the cells' size from image to image. Each object holding several such peaks is
    split by a watershed of the negated distance map from them; an object with one peak, or
    none (smaller than ``h``), is left whole. Objects never merge.

    Parameters
    ----------
    labels : (H, W) integer array
        0 background.
    fraction : float
        In ``[0, 1)``; 0 returns ``labels`` unchanged. Two discs of radius ``r`` whose neck is
        ``2 w`` wide split when ``r - w >= fraction * r``.

    Returns
    -------
    (H, W) int32 array
        The objects' labels, and new ones above them for the pieces they lose (not in raster
        order: :func:`neuroseg.masks.relabel_raster` orders them).
    """
    fraction = _check_fraction("fraction", fraction)
    labels = np.asarray(labels)
    if fraction == 0 or not labels.any():
        return labels
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    h = fraction * float(np.sqrt(typical_area(labels) / np.pi))
    inside = (labels > 0) & ~_between_objects(labels)
    out = labels.astype(np.int32, copy=True)
    top = int(out.max())
    # object by object, in its bounding box (most of an image is background, and the
    # h-maxima's reconstruction costs as many pixels as it is given)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        mine = labels[box] == index
        dist = ndi.distance_transform_edt(inside[box] & mine)
        if dist.max(initial=0) < h:
            continue
        peaks, n = ndi.label(h_maxima(dist, h) & mine, structure=np.ones((3, 3), bool))
        if n < 2:
            continue
        parts = watershed(-dist, peaks, mask=mine)
        # pixels no peak reached (a seam pixel walled in by other objects) join the first
        cut = mine & (parts > 1)
        out[box][cut] = parts[cut] + top - 1
        top += n - 1
    return out


def _check_peak(value) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"small_peak must be in [0, 1], got {value!r}")
    return value


def _keep(labels: np.ndarray, probs: np.ndarray, min_area: int, small_peak: float):
    """Drop the objects under ``min_area`` but the confident ones; renumber in raster order."""
    if small_peak >= 1.0 or min_area == 0 or not labels.any():
        return relabel_raster(labels, min_area=min_area)
    area = np.bincount(labels.ravel())
    index = np.flatnonzero((area > 0) & (area < min_area))
    if index.size:
        drop = np.zeros(area.size, bool)
        drop[index] = ndi.maximum(probs[..., INTERIOR], labels, index=index) <= small_peak
        labels = np.where(drop[labels], 0, labels)
    return relabel_raster(labels)


def sweep_postprocessing(
    prob_maps: Sequence[np.ndarray],
    true_labels: Sequence[np.ndarray],
    *,
    grid: Mapping[str, Sequence] | None = None,
) -> dict:
    """Choose the parameters of :func:`instances_from_classes` on validation images.

    Every point of the grid (the product of its value lists; parameters not in it keep
    :data:`POSTPROCESS_DEFAULTS`) is scored by :func:`neuroseg.metrics.iou_scores` pooled over
    the images; the best has the highest mean AP over IoU 0.5:0.95, then the highest F1 at IoU
    0.5, then comes first in the grid. The watershed runs once per image and distinct
    (interior_threshold, foreground_threshold, min_marker_area, markers); ``min_area`` only
    filters.

    Parameters
    ----------
    prob_maps : sequence of (H, W, 3) or (H, W, 4) float arrays
        Predicted class probabilities of the validation images (with a centre map: all 4).
    true_labels : sequence of (H, W) integer arrays
        Their instance label images (same order and shapes).
    grid : mapping, optional
        ``{parameter: values}`` over ``interior_threshold, foreground_threshold, min_area,
        min_marker_area, markers, small_peak, open_radius``; default :data:`POSTPROCESS_GRID`, with
        :data:`CENTRE_GRID` (interior and centre markers compete) when the maps have a centre
        channel.

    Returns
    -------
    dict
        ``params`` (keywords for :func:`instances_from_classes`; store them as a model's
        ``config["postprocess"]``), ``scores`` (the best point's
        :func:`~neuroseg.metrics.iou_scores`) and ``table`` (one row per grid point in grid
        order: its parameters, ``mean_ap``, ``ap_50``, ``f1_50``, ``count_mae``).
    """
    prob_maps, true_labels = list(prob_maps), list(true_labels)
    if grid is None:
        centre = bool(prob_maps) and all(np.shape(p)[-1] > CENTRE for p in prob_maps)
        grid = {**POSTPROCESS_GRID, **(CENTRE_GRID if centre else {})}
    points = _grid_points(grid)
    _check_pairs(prob_maps, true_labels)
    matches: list[list[dict]] = [[] for _ in points]
    for probs, truth in zip(prob_maps, true_labels, strict=True):
        for i, m in enumerate(_grid_scores(probs, truth, points, iou_matching)):
            matches[i].append(m)

    ranked = rank_grid(points, matches)
    params = _params_of(points[ranked["best"]])
    return {"params": params, "scores": ranked["scores"], "table": ranked["table"]}


def _grid_points(grid: Mapping[str, Sequence]) -> list[dict]:
    """The product of a grid's value lists (parameters not in it keep
    :data:`POSTPROCESS_DEFAULTS`), each point checked before any long work."""
    grid = dict(grid)
    unknown = sorted(set(grid) - set(_TUNABLE))
    if unknown:
        raise ValueError(f"unknown grid parameters {unknown}; tunable: {', '.join(_TUNABLE)}")
    values = {k: list(grid.get(k, [POSTPROCESS_DEFAULTS[k]])) for k in _TUNABLE}
    if any(not v for v in values.values()):
        raise ValueError("every grid parameter needs at least one value")
    points = [dict(zip(_TUNABLE, combo, strict=True)) for combo in product(*values.values())]
    for p in points:
        _check_fraction("interior_threshold", p["interior_threshold"])
        _check_fraction("foreground_threshold", p["foreground_threshold"])
        _check_count("min_area", p["min_area"])
        _check_count("min_marker_area", p["min_marker_area"])
        _check_markers(p["markers"])
        _check_peak(p["small_peak"])
        _check_count("open_radius", p["open_radius"])
        _check_fraction("min_area_fraction", p["min_area_fraction"])
        _check_fraction("split_fraction", p["split_fraction"])
    return points


def _check_pairs(prob_maps: list, true_labels: list) -> None:
    if not prob_maps or len(prob_maps) != len(true_labels):
        raise ValueError(
            f"need as many probability maps as label images (>= 1), got {len(prob_maps)} "
            f"and {len(true_labels)}"
        )


def _grid_labels(probs, truth, points: list[dict]):
    """``(same, labels)``: instance labels of one image at every grid point, in order. The
    watershed runs once per distinct (interior_threshold, foreground_threshold,
    min_marker_area, markers), and the opening once per ``open_radius`` of each;
    ``min_area``, ``min_area_fraction`` and ``small_peak`` only filter. Points with the same
    ``same`` have the same labels (for a watershed and ``min_area``, the objects ``small_peak``
    keeps only grow as it falls, so equal counts are equal sets): score them once."""
    probs = _check_probs(probs)
    if np.shape(truth) != probs.shape[:2]:
        raise ValueError(f"label shape {np.shape(truth)} != probability map {probs.shape[:2]}")
    grown: dict[tuple, np.ndarray] = {}
    for p in points:
        key = (p["interior_threshold"], p["foreground_threshold"], p["min_marker_area"],
               p["markers"])  # fmt: skip
        if key not in grown:
            markers = _check_markers(key[3], probs)
            grown[key] = _grow(probs, float(key[0]), float(key[1]), int(key[2]), markers)
        opened = (*key, int(p["open_radius"]))
        if opened not in grown:
            grown[opened] = open_objects(grown[key], radius=opened[-1])
        split = (*opened, float(p["split_fraction"]))
        if split not in grown:
            grown[split] = split_objects(grown[opened], fraction=split[-1])
        smallest = _smallest(grown[split], int(p["min_area"]), float(p["min_area_fraction"]))
        labels, n = _keep(grown[split], probs, smallest, float(p["small_peak"]))
        yield (split, smallest, n), labels


def _grid_scores(probs, truth, points: list[dict], score) -> list:
    """``score(truth, labels)`` of one image at every grid point, in order; points whose
    labels are the same (:func:`_grid_labels`) are scored once and share the result."""
    done: dict[tuple, object] = {}
    out = []
    for same, labels in _grid_labels(probs, truth, points):
        if same not in done:
            done[same] = score(truth, labels)
        out.append(done[same])
    return out


def _params_of(point: Mapping) -> dict:
    return {
        "interior_threshold": float(point["interior_threshold"]),
        "foreground_threshold": float(point["foreground_threshold"]),
        "min_area": int(point["min_area"]),
        "min_marker_area": int(point["min_marker_area"]),
        "markers": str(point["markers"]),
        "small_peak": float(point["small_peak"]),
        "open_radius": int(point["open_radius"]),
        "min_area_fraction": float(point["min_area_fraction"]),
        "split_fraction": float(point["split_fraction"]),
    }


def _group_f1(counts: Sequence[Mapping], groups: Sequence[str], members: Sequence[int]) -> float:
    """Mean over the groups among ``members`` of each group's pooled centroid F1."""
    f1s = []
    for g in sorted({groups[j] for j in members}):
        tp, fp, fn = (sum(counts[j][k] for j in members if groups[j] == g)
                      for k in ("tp", "fp", "fn"))  # fmt: skip
        f1s.append(prf(tp, fp, fn)["f1"])
    return float(np.mean(f1s))


def sweep_leave_one_out(
    prob_maps: Sequence[np.ndarray],
    true_labels: Sequence[np.ndarray],
    groups: Sequence[str],
    *,
    grid: Mapping[str, Sequence],
    radius: float = 40.0,
    per_group: bool = False,
    partition: Sequence[str] | None = None,
) -> dict:
    """Post-processing chosen for each image on the *other* images (nested leave-one-out).

    For a handful of annotated images whose probability maps each come from a model that did
    not train on that image (leave-one-image-out folds), the parameters used on image ``i`` are
    those of the grid point with the best score on all the images but ``i``; image ``i`` is then
    scored at that point, so no image's score comes from parameters chosen on it. The score is
    the mean over ``groups`` (e.g. stains) of each group's pooled centroid-matching F1
    (:func:`neuroseg.metrics.match_objects`, one-to-one within ``radius`` px), so that a group
    with few cells weighs as much as one with many; ties go to the first point in grid order.
    ``final`` is the point chosen on all the images (what a model trained on all of them
    ships).

    With ``per_group``, the same grid also gives each group post-processing of its own (for
    a model that tells the stains apart at inference, :func:`neuroseg.normalize.stain_of`):
    ``per_image_by_group`` scores image ``i`` with the point best on the other images *of its
    group* (on all the others when it is alone in its group), and ``final_by_group`` holds
    each group's choice on all its images.

    ``partition`` (one label per image, e.g. ``"small"`` / ``"large"`` cells) does the same for
    another grouping of the images, from the same grid scores: ``per_image_by_partition``
    scores image ``i`` with the point of the best pooled F1 on the other images *of its part*
    (on all the others when it is alone), and ``final_by_partition`` holds each part's choice
    on all its images.

    Returns
    -------
    dict
        ``points`` (the grid), ``final`` (params), ``final_score``, and ``per_image``: one dict
        per image with ``params`` (chosen on the others), ``tp, fp, fn, true_count,
        pred_count`` there; with ``per_group`` also ``per_image_by_group`` (the same, chosen
        within the group) and ``final_by_group`` ({group: params}); with ``partition`` also
        ``per_image_by_partition`` and ``final_by_partition``.
    """
    from neuroseg.metrics import match_objects

    prob_maps, true_labels, groups = list(prob_maps), list(true_labels), list(groups)
    _check_pairs(prob_maps, true_labels)
    if len(groups) != len(prob_maps) or len(prob_maps) < 2:
        raise ValueError(
            f"need one group per image and >= 2 images, got {len(groups)} groups for "
            f"{len(prob_maps)} images"
        )
    if partition is not None and len(partition) != len(prob_maps):
        raise ValueError(
            f"need one partition label per image, got {len(partition)} for {len(prob_maps)} images"
        )
    points = _grid_points(grid)
    counts: list[list[dict]] = [[] for _ in points]  # counts[point][image]

    def centroid_counts(truth, labels) -> dict:
        m = match_objects(truth, labels, radius=radius)
        return {"tp": m["tp"], "fp": m["fp"], "fn": m["fn"],
                "true_count": m["n_true"], "pred_count": m["n_pred"]}  # fmt: skip

    for probs, truth in zip(prob_maps, true_labels, strict=True):
        for i, c in enumerate(_grid_scores(probs, truth, points, centroid_counts)):
            counts[i].append(c)

    def best(members: list[int], labels: Sequence[str]) -> tuple[int, float]:
        scores = [_group_f1(c, labels, members) for c in counts]
        k = max(range(len(points)), key=lambda i: (scores[i], -i))
        return k, scores[k]

    everyone = list(range(len(prob_maps)))

    def held_out(labels: Sequence[str] | None) -> list[dict]:
        """Each image scored at the point best on the others (of its own label, if given)."""
        rows = []
        for i in everyone:
            others = [j for j in everyone if j != i]
            if labels is not None:
                others = [j for j in others if labels[j] == labels[i]] or others
            k, _ = best(others, groups if labels is None else labels)
            rows.append({"params": _params_of(points[k]), **counts[k][i]})
        return rows

    def final_by(labels: Sequence[str]) -> dict:
        return {
            g: _params_of(points[best([j for j in everyone if labels[j] == g], labels)[0]])
            for g in sorted(set(labels))
        }

    k, score = best(everyone, groups)
    out = {"points": points, "final": _params_of(points[k]), "final_score": score,
           "per_image": held_out(None)}  # fmt: skip
    if per_group:
        out["per_image_by_group"] = held_out(groups)
        out["final_by_group"] = final_by(groups)
    if partition is not None:
        out["per_image_by_partition"] = held_out(list(partition))
        out["final_by_partition"] = final_by(list(partition))
    return out
