"""Evaluation of a segmenter on annotated images, following the quality protocol (light).

For every image: predict a full-resolution probability map, segment it into cells and compare
with the ground-truth mask at three levels:

- pixels: confusion counts at the threshold and probability histograms
  (:class:`neuroseg.metrics.PixelAccumulator`), summed over images, so precision, recall, F1,
  ROC AUC and average precision are those of all pixels of all images together;
- objects by centroid distance <= ``radius`` (FNC "detection") and by IoU >= ``iou``
  ("segmentation"), summed over images (micro precision / recall / F1);
- counts: the mean absolute error of the per-image cell count.

True cells are the instances of the ground-truth label image where there is one (touching cells
apart), else the 4-connected components of the ground-truth mask (touching cells of a semantic
mask are one cell); predicted cells come from :func:`neuroseg.predict.segment`, or are given
(a model's own instance labels, the classical baseline's). Instances are also matched at IoU
0.5, 0.55, ..., 0.95 (:func:`neuroseg.metrics.iou_matching`), pooled over images into
precision, recall, F1, AP = TP / (TP + FP + FN) per threshold and their mean (``iou`` in
:func:`combine`), as StarDist and the DSB 2018 challenge report them.

:func:`evaluate_one` works on one image and returns small plain data (picklable, no image
arrays) so that an orchestrator can map it over images in parallel; :func:`combine` aggregates
the results; :func:`evaluate_images` does both in a loop. :func:`summary` gives the JSON-ready
scores and :func:`report_plots` the PNG figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from neuroseg import storage
from neuroseg.masks import label_mask
from neuroseg.metrics import (
    PixelAccumulator,
    as_bool_mask,
    iou_matching,
    iou_scores,
    match_by_iou,
    match_objects,
    object_scores,
)
from neuroseg.predict import segment

__all__ = [
    "combine",
    "evaluate_images",
    "evaluate_one",
    "report_plots",
    "score_prediction",
    "summary",
]

PredictProb = Callable[[np.ndarray], np.ndarray]
_COUNTS = ("tp", "fp", "fn", "n_true", "n_pred", "precision", "recall", "f1")


def _params(threshold, min_area, watershed, radius, iou) -> dict:
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    if int(min_area) != min_area or min_area < 0:
        raise ValueError(f"min_area must be an integer >= 0, got {min_area!r}")
    if not float(radius) >= 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    if not 0 < float(iou) <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    return {
        "threshold": float(threshold),
        "min_area": int(min_area),
        "watershed": bool(watershed),
        "radius": float(radius),
        "iou": float(iou),
    }


def score_prediction(
    image_id: str,
    prob: np.ndarray,
    true_mask: np.ndarray,
    *,
    threshold: float = 0.5,
    min_area: int = 0,
    watershed: bool = False,
    radius: float = 40.0,
    iou: float = 0.5,
    true_labels: np.ndarray | None = None,
    pred_labels: np.ndarray | None = None,
) -> dict:
    """Score one probability map (and its cells) against the ground truth.

    Parameters
    ----------
    image_id : str
        Name used in messages and in the per-image table.
    prob : (H, W) float array
        Cell probabilities at full image resolution.
    true_mask : (H, W) array
        Ground truth: boolean, 0/255 integers (``> 127``) or 0..1 floats (``> 0.5``).
    threshold, min_area, watershed
        Segmentation options (:func:`neuroseg.predict.segment`); ``threshold`` also defines the
        pixel confusion matrix.
    radius : float
        Centroid matching radius in pixels.
    iou : float
        IoU matching threshold of the ``iou`` entry.
    true_labels : (H, W) integer array, optional
        Instance ground truth (0 background); true cells are its labels instead of the
        components of ``true_mask`` (which may then be None).
    pred_labels : (H, W) integer array, optional
        Predicted cells; default: :func:`neuroseg.predict.segment` of ``prob``.

    Returns
    -------
    dict
        ``image_id``, ``shape``, ``params``, ``pixel`` (accumulator state), ``centroid`` and
        ``iou`` (match counts and scores), ``iou_thresholds`` (:func:`iou_matching` counts at
        0.5..0.95), ``true_count``, ``pred_count``, ``true_areas``, ``pred_areas`` (int64).
    """
    params = _params(threshold, min_area, watershed, radius, iou)
    prob = np.asarray(prob)
    if true_labels is not None:
        true_labels = np.asarray(true_labels)
        if not np.issubdtype(true_labels.dtype, np.integer):
            raise ValueError(f"{image_id}: true labels must be integers, got {true_labels.dtype}")
        truth = true_labels > 0
        reference = true_labels.shape
    else:
        true_mask = np.asarray(true_mask)
        reference = true_mask.shape
    if prob.ndim != 2 or prob.shape != reference:
        raise ValueError(
            f"{image_id}: probability map {prob.shape} and ground truth {reference} must be "
            "the same (H, W) shape"
        )
    if true_labels is None:
        truth = as_bool_mask(true_mask, name=f"{image_id}: mask")
        true_labels, _ = label_mask(truth, connectivity=4)
    if pred_labels is None:
        pred_labels, _ = segment(
            prob, threshold=params["threshold"], min_area=params["min_area"], watershed=watershed
        )
    else:
        pred_labels = np.asarray(pred_labels)
        if pred_labels.shape != prob.shape:
            raise ValueError(
                f"{image_id}: predicted labels {pred_labels.shape} differ from {prob.shape}"
            )
    pixel = PixelAccumulator(threshold=params["threshold"]).update(truth, prob)
    by_centroid = match_objects(true_labels, pred_labels, radius=params["radius"])
    by_iou = match_by_iou(true_labels, pred_labels, iou=params["iou"])
    true_areas, pred_areas = _areas(true_labels), _areas(pred_labels)
    return {
        "image_id": str(image_id),
        "shape": tuple(int(s) for s in prob.shape),
        "params": params,
        "pixel": pixel.state(),
        "centroid": {k: by_centroid[k] for k in _COUNTS},
        "iou": {k: by_iou[k] for k in _COUNTS},
        "iou_thresholds": iou_matching(true_labels, pred_labels),
        "true_count": int(true_areas.size),
        "pred_count": int(pred_areas.size),
        "true_areas": true_areas,
        "pred_areas": pred_areas,
    }


def _areas(labels: np.ndarray) -> np.ndarray:
    """Pixel count of every label present (any ids, not necessarily 1..n)."""
    _, counts = np.unique(labels[labels > 0], return_counts=True)
    return counts.astype(np.int64)


def evaluate_one(
    image_id: str,
    image: np.ndarray,
    true_mask: np.ndarray,
    predict_prob: PredictProb,
    *,
    threshold: float = 0.5,
    min_area: int = 0,
    watershed: bool = False,
    radius: float = 40.0,
    iou: float = 0.5,
) -> dict:
    """Predict one image with ``predict_prob(image) -> (H, W) prob`` and score it.

    The image is ``(H, W[, C])`` of any dtype (what ``predict_prob`` accepts), ``true_mask``
    of shape ``(H, W)``. Returns the dict of :func:`score_prediction` plus ``predict_seconds``.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or 0 in image.shape:
        raise ValueError(f"{image_id}: image must be (H, W[, C]), got shape {image.shape}")
    if np.shape(true_mask) != image.shape[:2]:
        raise ValueError(
            f"{image_id}: mask shape {np.shape(true_mask)} differs from image shape "
            f"{image.shape[:2]}"
        )
    start = time.perf_counter()
    prob = np.asarray(predict_prob(image))
    seconds = time.perf_counter() - start
    if prob.shape != image.shape[:2]:
        raise ValueError(
            f"{image_id}: predict_prob returned shape {prob.shape}, expected {image.shape[:2]}"
        )
    result = score_prediction(
        image_id, prob, true_mask, threshold=threshold, min_area=min_area,
        watershed=watershed, radius=radius, iou=iou,
    )  # fmt: skip
    result["predict_seconds"] = seconds
    return result


def combine(results: Iterable[Mapping]) -> dict:
    """Aggregate per-image results of :func:`evaluate_one` / :func:`score_prediction`.

    Returns
    -------
    dict
        ``n_images``, ``params``; ``pixel``: pixel scores of all pixels together
        (:meth:`neuroseg.metrics.PixelAccumulator.scores`); ``curves``: ROC and PR curves for
        :func:`neuroseg.plots.roc_pr_png`; ``objects`` (centroid matching) and ``objects_iou``
        (IoU matching): :func:`neuroseg.metrics.object_scores` with ``count_mae``;
        ``iou``: :func:`neuroseg.metrics.iou_scores` (pooled precision, recall, F1, AP per
        IoU threshold 0.5..0.95, ``mean_ap``, ``f1_50``, ``count_mae``, ``table``; None for
        results without ``iou_thresholds``);
        ``per_image``: list of ``{image_id, true_count, pred_count, tp, fp, fn, iou_tp,
        predict_seconds}``; ``true_areas`` and ``pred_areas``: all cell areas.
    """
    results = list(results)
    if not results:
        raise ValueError("nothing to combine: no evaluated images")
    params = results[0]["params"]
    for r in results[1:]:
        if r["params"] != params:
            raise ValueError(f"{r['image_id']}: evaluated with {r['params']}, others with {params}")
    seen: set[str] = set()
    for r in results:
        if r["image_id"] in seen:
            raise ValueError(f"image {r['image_id']!r} appears twice")
        seen.add(r["image_id"])
    acc = PixelAccumulator(threshold=params["threshold"])
    for r in results:
        acc.merge(PixelAccumulator.from_state(r["pixel"]))
    objects = object_scores([{**r["centroid"], "image_id": r["image_id"]} for r in results])
    objects_iou = object_scores([{**r["iou"], "image_id": r["image_id"]} for r in results])
    per_image = [
        {
            "image_id": r["image_id"],
            "true_count": r["true_count"],
            "pred_count": r["pred_count"],
            "tp": r["centroid"]["tp"],
            "fp": r["centroid"]["fp"],
            "fn": r["centroid"]["fn"],
            "iou_tp": r["iou"]["tp"],
            "predict_seconds": r.get("predict_seconds", float("nan")),
        }
        for r in results
    ]
    with_iou = [r["iou_thresholds"] for r in results if r.get("iou_thresholds")]
    return {
        "n_images": len(results),
        "params": dict(params),
        "pixel": acc.scores(),
        "curves": acc.curves(),
        "objects": objects,
        "objects_iou": objects_iou,
        "iou": iou_scores(with_iou) if len(with_iou) == len(results) else None,
        "per_image": per_image,
        "true_areas": np.concatenate([np.asarray(r["true_areas"]) for r in results]),
        "pred_areas": np.concatenate([np.asarray(r["pred_areas"]) for r in results]),
    }


def evaluate_images(
    samples: Iterable[tuple[str, np.ndarray, np.ndarray]],
    predict_prob: PredictProb,
    *,
    threshold: float = 0.5,
    min_area: int = 0,
    watershed: bool = False,
    radius: float = 40.0,
    iou: float = 0.5,
) -> dict:
    """Evaluate ``predict_prob`` on ``(image_id, image, true_mask)`` samples; see :func:`combine`.

    Images are processed one at a time (only one image is held in memory).
    """
    return combine(
        evaluate_one(
            image_id,
            image,
            mask,
            predict_prob,
            threshold=threshold,
            min_area=min_area,
            watershed=watershed,
            radius=radius,
            iou=iou,
        )
        for image_id, image, mask in samples
    )


def summary(evaluation: Mapping) -> dict:
    """The scores of :func:`combine` as JSON-ready data (for ``metrics.json`` and artifacts).

    Keeps ``n_images``, ``params``, ``pixel``, ``objects`` and ``objects_iou`` (without their
    per-image lists), ``iou`` (the scores at IoU 0.5..0.95) and ``per_image``; drops curves and
    areas. NaN becomes ``null``.
    """
    out = {
        "n_images": evaluation["n_images"],
        "params": evaluation["params"],
        "pixel": evaluation["pixel"],
        "objects": {k: v for k, v in evaluation["objects"].items() if k != "per_image"},
        "objects_iou": {k: v for k, v in evaluation["objects_iou"].items() if k != "per_image"},
        "iou": evaluation.get("iou"),
        "per_image": evaluation["per_image"],
    }
    return storage.to_jsonable(out)


def report_plots(
    evaluation: Mapping, *, baseline: Mapping | None = None, names: Sequence[str] = ("model",)
) -> dict[str, bytes]:
    """The evaluation's figures as PNG bytes, keyed by file name.

    Parameters
    ----------
    evaluation : mapping
        Result of :func:`combine`.
    baseline : mapping, optional
        Another :func:`combine` result (e.g. the Otsu baseline) drawn on the ROC/PR panels.
    names : sequence of str
        Legend names: ``names[0]`` for the evaluation (and ``"baseline"`` for the baseline).

    Returns
    -------
    dict of str to bytes
        ``confusion.png``, ``roc_pr.png``, ``cell_sizes.png``, ``counts.png``.
    """
    from neuroseg import plots

    curves: Mapping = evaluation["curves"]
    if baseline is not None:
        curves = {names[0]: evaluation["curves"], "baseline": baseline["curves"]}
    per_image = evaluation["per_image"]
    return {
        "confusion.png": plots.confusion_png(evaluation["pixel"]["confusion"]),
        "roc_pr.png": plots.roc_pr_png(curves),
        "cell_sizes.png": plots.size_histogram_png(
            evaluation["pred_areas"], true_areas=evaluation["true_areas"]
        ),
        "counts.png": plots.count_scatter_png(
            [r["true_count"] for r in per_image], [r["pred_count"] for r in per_image]
        ),
    }
