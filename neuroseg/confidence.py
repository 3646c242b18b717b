"""How sure the model is of an image's segmentation, from its own output (light; no TensorFlow).

The nightly run stores one score per image (:func:`image_confidence`, column ``confidence`` of
the per-image table, :mod:`neuroseg.quality`), so that a person corrects the images the model
is least sure of first (``neuroseg review``). The score reads only what the model predicted for
the image: the probability maps (``(H, W)`` for a binary head, ``(H, W, 3|4)`` background /
interior / boundary [/ centre] for a three-class head) and the objects made of them.

:func:`confidence_measures` computes every candidate measure that costs no second prediction;
``scripts/measure_confidence.py`` ranks them by Spearman's correlation with each image's real
F1 on images with ground truth (README, "Review, correct, adapt"). The chosen one,
:data:`CONFIDENCE_MEASURE`, is what :func:`image_confidence` returns.

Measures (all in 0..1, higher = more confident):

- ``fg_certain``: of the pixels the model calls at all likely cell (foreground probability
  above 0.2), the share it is sure of (above 0.8); 1 when there are none.
- ``margin``: the mean, over those pixels, of the gap between the two most probable classes
  (binary: ``|2p - 1|``): low where the model hesitates between interior and boundary (whether
  two touching cells are one object or two) as well as between cell and background.
- ``object_fg``: the mean, over predicted objects, of the object's mean foreground probability.
- ``object_margin``: the mean, over predicted objects, of the object's mean class margin.
- ``objects_sure``: the share of predicted objects whose mean class margin is above 0.6.

Images without any foreground pixel or object score 1 on the measures that need them: the model
is sure there is nothing (an empty field is flagged ``empty`` by the quality table anyway).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CONFIDENCE_MEASURE",
    "MEASURES",
    "confidence_measures",
    "foreground_probability",
    "image_confidence",
]

#: Every measure :func:`confidence_measures` returns, in order.
MEASURES = ("fg_certain", "margin", "object_fg", "object_margin", "objects_sure")

#: The measure stored as an image's ``confidence`` (chosen on the nuclei validation split by
#: ``scripts/measure_confidence.py``; README, "Review, correct, adapt").
CONFIDENCE_MEASURE = "objects_sure"

_LIKELY, _SURE, _SURE_OBJECT = 0.2, 0.8, 0.6


def _check(probs: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim not in (2, 3) or (probs.ndim == 3 and probs.shape[2] not in (1, 3, 4)):
        raise ValueError(
            "probs must be (H, W) cell probabilities or (H, W, 3|4) class probabilities, got "
            f"shape {probs.shape}"
        )
    if probs.ndim == 3 and probs.shape[2] == 1:
        probs = probs[..., 0]
    if labels is not None and np.shape(labels) != probs.shape[:2]:
        raise ValueError(f"labels {np.shape(labels)} and probs {probs.shape[:2]} differ in size")
    return probs


def foreground_probability(probs: np.ndarray) -> np.ndarray:
    """``(H, W) float32``: the cell probability (binary) or ``1 - p_background``."""
    probs = _check(probs, None)
    if probs.ndim == 2:
        return probs.astype(np.float32, copy=False)
    return (1.0 - probs[..., 0]).astype(np.float32)


def _margin(probs: np.ndarray) -> np.ndarray:
    """Gap between the two most probable classes per pixel (binary: ``|2p - 1|``)."""
    if probs.ndim == 2:
        return np.abs(2.0 * probs.astype(np.float32) - 1.0)
    classes = probs[..., :3].astype(np.float32, copy=False)
    top = classes.max(axis=2)
    # the second largest of three: the sum less the largest and the smallest
    second = classes.sum(axis=2) - top - classes.min(axis=2)
    return top - second


def confidence_measures(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every candidate confidence measure of one image (see the module): ``{name: 0..1}``.

    Parameters
    ----------
    probs : (H, W) or (H, W, 3|4) float array
        The model's output at the image's size: cell probabilities (binary head) or
        background / interior / boundary [/ centre] probabilities (three-class head).
    labels : (H, W) integer array
        The objects post-processing made of them (0 background).

    Returns
    -------
    dict
        One float per name in :data:`MEASURES`.
    """
    probs = _check(probs, labels)
    labels = np.asarray(labels)
    fg = foreground_probability(probs)
    margin = _margin(probs)
    likely = fg > _LIKELY
    n_likely = int(np.count_nonzero(likely))
    out = {
        "fg_certain": (float(np.count_nonzero(fg > _SURE)) / n_likely if n_likely else 1.0),
        "margin": float(margin[likely].mean(dtype=np.float64)) if n_likely else 1.0,
    }
    flat = labels.ravel()
    inside = flat > 0
    if not inside.any():
        out.update(object_fg=1.0, object_margin=1.0, objects_sure=1.0)
        return out
    _, ids = np.unique(flat[inside], return_inverse=True)
    area = np.bincount(ids).astype(np.float64)
    obj_fg = np.bincount(ids, weights=fg.ravel()[inside]) / area
    obj_margin = np.bincount(ids, weights=margin.ravel()[inside]) / area
    out.update(
        object_fg=float(obj_fg.mean()),
        object_margin=float(obj_margin.mean()),
        objects_sure=float(np.mean(obj_margin > _SURE_OBJECT)),
    )
    return out


def image_confidence(probs: np.ndarray, labels: np.ndarray) -> float:
    """The confidence of one segmented image: :data:`CONFIDENCE_MEASURE` of
    :func:`confidence_measures` (0..1; review the lowest first).

    Computed on the objects' pixels only (the class margin of the whole image is not needed):
    the same number, a fraction of the work on a large image with few cells.
    """
    probs = _check(probs, labels)
    flat = np.asarray(labels).ravel()
    inside = np.flatnonzero(flat)
    if not inside.size:
        return 1.0
    pixels = probs.reshape(flat.size, -1)[inside]
    if probs.ndim == 2:
        margin = np.abs(2.0 * pixels[:, 0].astype(np.float32) - 1.0)
    else:
        margin = _margin(pixels[:, None, :])
    _, ids = np.unique(flat[inside], return_inverse=True)
    obj_margin = np.bincount(ids, weights=np.ravel(margin)) / np.bincount(ids)
    return float(np.mean(obj_margin > _SURE_OBJECT))
