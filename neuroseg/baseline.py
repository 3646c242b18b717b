"""The classical baseline: Otsu thresholding of the stain brightness (light; no TensorFlow).

A model has to beat this to be worth serving. The method, for an RGB fluorescence image:

1. brightness ``v`` = the largest of the R, G and B values of each pixel (the HSV *value*; it
   follows the yellow stain (R + G) and the red stain (R) alike), smoothed with a Gaussian of
   ``sigma`` pixels to suppress shot noise;
2. ``t`` = Otsu's threshold of ``v`` (:func:`skimage.filters.threshold_otsu`); when the two
   classes it separates differ by less than ``min_contrast`` grey levels (mean above minus mean
   below), the image is taken to hold no stained cells (Otsu would split background noise) and
   ``t`` is raised to the brightest value, so that nothing lies above it;
3. cells are the 4-connected components of ``v > t`` with at least ``min_area`` pixels,
   optionally split by watershed (:func:`neuroseg.predict.segment`).

:func:`otsu_probability` turns ``v`` into a pseudo-probability ``expit((v - t) / softness)``, so
that 0.5 is exactly Otsu's threshold and the pixel and threshold-sweep scores of
:mod:`neuroseg.metrics` apply to the baseline as to a model. It is a monotonic score, not a
calibrated probability.

For nuclei (one fluorescence channel, any bit depth) :func:`classical_segment` is the classical
pipeline a model has to beat: percentile normalisation, Gaussian smoothing, Otsu's threshold and a
distance-transform watershed that splits touching nuclei, with its few parameters chosen on
validation images by :func:`tune_classical` (best mean AP over IoU 0.5:0.95).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import product

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit

from neuroseg.masks import relabel_raster
from neuroseg.metrics import iou_matching, rank_grid
from neuroseg.normalize import channel_max, percentile_normalize, select_channels
from neuroseg.predict import segment

__all__ = [
    "CLASSICAL_DEFAULTS",
    "CLASSICAL_GRID",
    "classical_segment",
    "otsu_probability",
    "otsu_score",
    "otsu_segment",
    "tune_classical",
]


def otsu_score(
    image: np.ndarray, *, sigma: float = 2.0, min_contrast: float = 20.0
) -> tuple[np.ndarray, float]:
    """Smoothed stain brightness and its Otsu threshold.

    Parameters
    ----------
    image : (H, W, 3) uint8 array
        RGB image.
    sigma : float
        Gaussian smoothing in pixels (0 for none).
    min_contrast : float
        Smallest difference, in grey levels, between the mean brightness above and below the
        threshold for the image to count as holding cells (0 to always use Otsu's threshold).

    Returns
    -------
    v : (H, W) float64 array
        Smoothed ``max(R, G, B)``, 0..255.
    t : float
        Otsu's threshold of ``v``, or ``v.max()`` when the contrast is below ``min_contrast``
        (and for a constant image).
    """
    from skimage.filters import threshold_otsu

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(
            f"image must be a non-empty (H, W, 3) uint8 RGB array, got shape {image.shape} "
            f"dtype {image.dtype}"
        )
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if not min_contrast >= 0:
        raise ValueError(f"min_contrast must be >= 0, got {min_contrast!r}")
    v = channel_max(image).astype(np.float64)
    if sigma > 0:
        v = ndi.gaussian_filter(v, sigma)
    top = float(v.max())
    if v.min() == top:
        return v, top
    t = float(threshold_otsu(v))
    above = v > t
    if min_contrast > 0 and v[above].mean() - v[~above].mean() < min_contrast:
        return v, top
    return v, t


def otsu_probability(
    image: np.ndarray, *, sigma: float = 2.0, softness: float = 8.0, min_contrast: float = 20.0
) -> np.ndarray:
    """Pseudo-probability of the baseline: ``expit((v - t) / softness)``.

    Parameters
    ----------
    image : (H, W, 3) uint8 array
    sigma, min_contrast : float
        See :func:`otsu_score`.
    softness : float
        Grey levels over which the score rises from 0.27 to 0.73 around Otsu's threshold.

    Returns
    -------
    (H, W) float32 array
        In (0, 1); 0.5 at Otsu's threshold, above it for brighter pixels.
    """
    if not softness > 0:
        raise ValueError(f"softness must be > 0, got {softness!r}")
    v, t = otsu_score(image, sigma=sigma, min_contrast=min_contrast)
    return expit((v - t) / softness).astype(np.float32)


def otsu_segment(
    image: np.ndarray,
    *,
    sigma: float = 2.0,
    min_contrast: float = 20.0,
    min_area: int = 100,
    watershed: bool = False,
) -> tuple[np.ndarray, int]:
    """Cells found by the baseline.

    Parameters
    ----------
    image : (H, W, 3) uint8 array
    sigma, min_contrast : float
        See :func:`otsu_score`.
    min_area : int
        Smallest cell in pixels (smaller specks are dropped).
    watershed : bool
        Split touching cells (see :func:`neuroseg.predict.segment`).

    Returns
    -------
    labels : (H, W) int32 array
        Cells ``1..n`` in raster order: the components of ``v > t`` (exactly, not through the
        rounded pseudo-probability).
    n : int
    """
    v, t = otsu_score(image, sigma=sigma, min_contrast=min_contrast)
    return segment(v - t, threshold=0.0, min_area=min_area, watershed=watershed)


# --------------------------------------------------------------------------------------------
# classical nuclei baseline: percentile normalisation, Gaussian, Otsu, distance watershed
# --------------------------------------------------------------------------------------------
CLASSICAL_DEFAULTS = {
    "sigma": 1.0,
    "min_distance": 11,
    "min_area": 30,
    "threshold": None,
    "min_cnr": 3.5,
    "percentiles": (1.0, 99.8),
}
"""Default parameters of :func:`classical_segment` (``threshold=None`` is Otsu's): the point of
:data:`CLASSICAL_GRID` that :func:`tune_classical` chose on the validation split of both BBBC039
and DSB 2018 (``scripts/classical_nuclei.py``)."""

CLASSICAL_GRID = {"sigma": (1.0, 2.0), "min_distance": (5, 7, 11), "min_area": (15, 30)}
"""Default grid of :func:`tune_classical` (12 points)."""

_TUNABLE = ("sigma", "min_distance", "min_area", "threshold", "min_cnr")


def _classical_score(image, channel, sigma, percentiles) -> np.ndarray:
    """One plane, percentile-normalised to 0..1 and smoothed: (H, W) float32."""
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    planes = select_channels(image, channels="grey", channel=channel)
    v = percentile_normalize(planes, percentiles=tuple(percentiles))[..., 0]
    if sigma > 0:
        v = ndi.gaussian_filter(v, float(sigma))
    return v


def _classical_foreground(v: np.ndarray, threshold, min_cnr: float) -> np.ndarray:
    """Foreground of the normalised, smoothed plane (all False for an image without cells)."""
    from skimage.filters import threshold_otsu

    if not min_cnr >= 0:
        raise ValueError(f"min_cnr must be >= 0, got {min_cnr!r}")
    if threshold is not None and threshold != "otsu":
        t = float(threshold)
        if not 0.0 <= t < 1.0:
            raise ValueError(f"threshold must be None, 'otsu' or in [0, 1), got {threshold!r}")
        return v > t
    if v.min() == v.max():
        return np.zeros(v.shape, dtype=bool)
    t = float(threshold_otsu(v))
    above = v > t
    below = v[~above]
    contrast = float(v[above].mean() - below.mean())
    noise = float(below.std())
    if min_cnr > 0 and contrast < min_cnr * noise:
        return np.zeros(v.shape, dtype=bool)
    return above


def _classical_split(foreground: np.ndarray, min_distance: int) -> np.ndarray:
    """Distance-transform watershed of a foreground mask: labels (not yet renumbered)."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    components, n = ndi.label(foreground)
    if n == 0:
        return components.astype(np.int32)
    distance = ndi.distance_transform_edt(foreground)
    peaks = peak_local_max(
        distance, min_distance=int(min_distance), labels=components, exclude_border=False
    )
    markers = np.zeros(foreground.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-distance, markers, mask=foreground).astype(np.int32)
    missed = foreground & (labels == 0)  # a component without a peak stays one object
    if missed.any():
        labels[missed] = components[missed] + len(peaks)
    return labels


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def classical_segment(
    image: np.ndarray,
    *,
    channel: int | None = None,
    sigma: float = CLASSICAL_DEFAULTS["sigma"],
    min_distance: int = CLASSICAL_DEFAULTS["min_distance"],
    threshold: float | str | None = CLASSICAL_DEFAULTS["threshold"],
    min_area: int = CLASSICAL_DEFAULTS["min_area"],
    min_cnr: float = CLASSICAL_DEFAULTS["min_cnr"],
    percentiles: tuple[float, float] = CLASSICAL_DEFAULTS["percentiles"],
) -> tuple[np.ndarray, int]:
    """Nuclei by the classical pipeline: the baseline a nucleus model has to beat.

    1. one plane (:func:`neuroseg.normalize.select_channels` with ``channels="grey"``: the
       ``channel`` given, else the maximum over channels), percentile-normalised to 0..1
       (:func:`neuroseg.normalize.percentile_normalize`; so 8-, 12- and 16-bit versions of an
       image give the same cells) and smoothed with a Gaussian of ``sigma`` pixels;
    2. foreground = above Otsu's threshold (or a fixed ``threshold`` on the 0..1 scale). An image
       whose Otsu classes are not apart (``mean above - mean below < min_cnr * std below``, a
       contrast-to-noise ratio, so independent of the scale) holds no cells: 0 objects, not half
       of the noise. Empty BBBC039 fields measure 2.3-2.8 and fields with nuclei 4.5 and more at
       ``sigma=1``; a contrast on the normalised scale cannot tell them apart (the percentile
       stretch brings any noise to 0..1);
    3. touching nuclei split by watershed of the negated distance transform of the foreground,
       seeded with its :func:`skimage.feature.peak_local_max` peaks (at least ``min_distance``
       apart, within each 4-connected component);
    4. objects under ``min_area`` pixels dropped.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, any real dtype (``neuroseg.images.decode_native``).
    channel : int, optional
        Channel to use (0-based); default: the maximum over channels.
    sigma : float
        Gaussian smoothing in pixels (0 for none).
    min_distance : int
        Smallest distance between two seeds in pixels (about the smallest nucleus radius).
    threshold : None, "otsu" or float
        Otsu's threshold (default) or a fixed one on the normalised 0..1 scale (no guard then).
    min_area : int
        Smallest object in pixels.
    min_cnr : float
        Smallest contrast-to-noise ratio of Otsu's classes for an image to hold cells (0: off).
    percentiles : (float, float)
        Normalisation percentiles.

    Returns
    -------
    labels : (H, W) int32 array
        Nuclei ``1..n`` in raster order of their first pixel.
    n : int
    """
    min_distance = _check_int("min_distance", min_distance, 1)
    min_area = _check_int("min_area", min_area, 0)
    v = _classical_score(image, channel, sigma, percentiles)
    foreground = _classical_foreground(v, threshold, min_cnr)
    return relabel_raster(_classical_split(foreground, min_distance), min_area=min_area)


def tune_classical(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    grid: Mapping[str, Sequence] | None = None,
    channel: int | None = None,
) -> dict:
    """Choose the parameters of :func:`classical_segment` on validation images.

    Every point of the grid (the product of its value lists; parameters not in it keep
    :data:`CLASSICAL_DEFAULTS`) is scored with :func:`neuroseg.metrics.iou_scores` pooled over the
    samples; the best has the highest mean AP over IoU 0.5:0.95, then the highest F1 at 0.5, then
    comes first in the grid. Normalisation, smoothing and watershed are computed once per
    distinct value, so the default grid (:data:`CLASSICAL_GRID`, 12 points) costs about 6
    segmentations per image.

    Parameters
    ----------
    samples : sequence of (image, true_labels)
        Validation images (any dtype and channels) with their instance label images.
    grid : mapping, optional
        ``{parameter: values}`` over ``sigma, min_distance, min_area, threshold, min_cnr``.
    channel : int, optional
        See :func:`classical_segment`.

    Returns
    -------
    dict
        ``params`` (the best point with the fixed parameters: keywords for
        :func:`classical_segment`), ``scores`` (its :func:`~neuroseg.metrics.iou_scores`) and
        ``table`` (one row per grid point, in grid order: its parameters, ``mean_ap``, ``ap_50``,
        ``f1_50``, ``count_mae``).
    """
    grid = dict(CLASSICAL_GRID if grid is None else grid)
    unknown = sorted(set(grid) - set(_TUNABLE))
    if unknown:
        raise ValueError(f"unknown grid parameters {unknown}; tunable: {', '.join(_TUNABLE)}")
    values = {k: list(grid.get(k, [CLASSICAL_DEFAULTS[k]])) for k in _TUNABLE}
    if any(not v for v in values.values()):
        raise ValueError("every grid parameter needs at least one value")
    samples = list(samples)
    if not samples:
        raise ValueError("tune_classical needs at least one (image, labels) sample")
    points = [dict(zip(_TUNABLE, combo, strict=True)) for combo in product(*values.values())]
    for p in points:  # validate before the long part
        _check_int("min_distance", p["min_distance"], 1)
        _check_int("min_area", p["min_area"], 0)

    matches: list[list[dict]] = [[] for _ in points]
    percentiles = CLASSICAL_DEFAULTS["percentiles"]
    for image, truth in samples:
        scored, fg, split = {}, {}, {}
        for i, p in enumerate(points):
            s = p["sigma"]
            if s not in scored:
                scored[s] = _classical_score(image, channel, s, percentiles)
            kf = (s, p["threshold"], p["min_cnr"])
            if kf not in fg:
                fg[kf] = _classical_foreground(scored[s], p["threshold"], p["min_cnr"])
            ks = (*kf, p["min_distance"])
            if ks not in split:
                split[ks] = _classical_split(fg[kf], p["min_distance"])
            labels, _ = relabel_raster(split[ks], min_area=p["min_area"])
            matches[i].append(iou_matching(truth, labels))

    ranked = rank_grid(points, matches)
    best, table = ranked["best"], ranked["table"]
    params = dict(points[best])
    params["percentiles"] = tuple(percentiles)
    return {"params": params, "scores": ranked["scores"], "table": table}
