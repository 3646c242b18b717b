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
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit

from neuroseg.predict import segment

__all__ = ["otsu_probability", "otsu_score", "otsu_segment"]


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
    v = image.max(axis=2).astype(np.float64)
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
