"""Segmentation scores: pixel level, object level, count error and threshold sweep (light).

Pure numpy/scipy; no TensorFlow. All functions take arrays in ``(row, col)`` order.

Conventions
-----------
- A pixel is predicted *cell* when its probability is strictly greater than the threshold
  (``prob > threshold``), as the seed notebook did (``p > 0.5``).
- Ground-truth masks may be boolean, integer (foreground is ``> 127``, the seed's threshold for
  0/255 masks) or floating point (foreground is ``> 0.5``).
- ``zero_division``: a precision or recall whose denominator is zero (no predictions, or no true
  cells) takes the value ``zero_division`` (default ``1.0``, like scikit-learn's
  ``zero_division=1``): an image with no true and no predicted cells scores precision = recall =
  F1 = 1. F1 is ``2 tp / (2 tp + fp + fn)``, so it is 0 whenever there is something to find or
  something found and nothing matches, and ``zero_division`` only when both sides are empty.
- ROC AUC and average precision are computed from probabilities binned into ``N_BINS = 1001``
  equal bins (``round(p * 1000)``). They are *exact* for the probabilities rounded to 3 decimals
  (ties treated as scikit-learn does: trapezoidal ROC, step-wise AP); against the unrounded
  probabilities the difference is below 1e-3 in practice (it comes only from pairs of pixels whose
  probabilities differ by less than 0.0005). Binning makes them fast (a 1600x1200 image takes a few
  milliseconds) and lets :class:`PixelAccumulator` sum them over any number of images.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

__all__ = [
    "IOU_THRESHOLDS",
    "N_BINS",
    "PixelAccumulator",
    "as_bool_mask",
    "iou_matching",
    "iou_scores",
    "iou_summary",
    "match_by_iou",
    "match_objects",
    "object_scores",
    "pixel_scores",
    "prf",
    "rank_grid",
    "reweighted_iou_scores",
    "threshold_sweep",
]

N_BINS = 1001
"""Number of probability bins used for ROC AUC, average precision and the curves."""

_FOUR = ndi.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _ratio(num: float, den: float, zero_division: float) -> float:
    return float(num) / float(den) if den else float(zero_division)


def prf(tp: int, fp: int, fn: int, *, zero_division: float = 1.0) -> dict:
    """Precision, recall and F1 from counts.

    Parameters
    ----------
    tp, fp, fn : int
        True positives, false positives, false negatives.
    zero_division : float
        Value of a ratio whose denominator is zero (see module docstring).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (floats).
    """
    return {
        "precision": _ratio(tp, tp + fp, zero_division),
        "recall": _ratio(tp, tp + fn, zero_division),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
    }


def as_bool_mask(mask: np.ndarray, *, name: str = "mask") -> np.ndarray:
    """Foreground of a ground-truth mask as a boolean array.

    Boolean arrays are used as they are; integer masks are ``> 127`` (0/255 masks, the seed's
    threshold); floating-point masks are ``> 0.5``.
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.integer):
        return mask > 127
    if np.issubdtype(mask.dtype, np.floating):
        return mask > 0.5
    raise ValueError(f"{name}: expected a boolean, integer or float array, got dtype {mask.dtype}")


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-D label image (rows, cols), got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer label image, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: label values must be >= 0 (0 is background)")
    return labels


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label ids present (sorted, > 0) and the image relabelled to 0..k (same order)."""
    flat = labels.ravel()
    top = int(flat.max()) if flat.size else 0
    if top <= max(flat.size, 1):
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids, lut[flat].reshape(labels.shape)
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids.size and ids[0] == 0:
        ids = ids[1:]
    else:
        inverse = inverse + 1
    return ids, inverse.reshape(labels.shape).astype(np.int64)


def _compact_pair(true_labels, pred_labels) -> tuple:
    """Checked, same-shaped label images as ``(ids_t, compact_t, ids_p, compact_p)``."""
    true_labels = _check_labels(true_labels, "true_labels")
    pred_labels = _check_labels(pred_labels, "pred_labels")
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"label shapes differ: true {true_labels.shape}, pred {pred_labels.shape}")
    return (*_compact(true_labels), *_compact(pred_labels))


def _centroids(compact: np.ndarray, k: int) -> np.ndarray:
    """(k, 2) centroids (row, col) of labels 1..k of a compact label image."""
    if k == 0:
        return np.zeros((0, 2))
    flat = compact.ravel()
    rows, cols = np.divmod(np.arange(flat.size), compact.shape[1])
    area = np.bincount(flat, minlength=k + 1)[1:].astype(float)
    r = np.bincount(flat, weights=rows, minlength=k + 1)[1:] / area
    c = np.bincount(flat, weights=cols, minlength=k + 1)[1:] / area
    return np.column_stack([r, c])


def _assign(score: np.ndarray, feasible: np.ndarray, *, maximize: bool) -> np.ndarray:
    """One-to-one assignment with the most matches, then the best total score.

    Rows and columns without any feasible pair are dropped first; infeasible pairs get a cost
    large enough that a matching with more feasible pairs always wins. Returns (k, 2) indices.
    """
    rows = np.flatnonzero(feasible.any(axis=1))
    cols = np.flatnonzero(feasible.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    sub_f = feasible[np.ix_(rows, cols)]
    sub = score[np.ix_(rows, cols)].astype(float)
    cost = -sub if maximize else sub
    cost = cost - cost[sub_f].min()  # feasible costs in [0, span]
    span = float(cost[sub_f].max()) if sub_f.any() else 0.0
    big = (span + 1.0) * (min(sub.shape) + 1)
    cost = np.where(sub_f, cost, big)
    r, c = linear_sum_assignment(cost)
    keep = sub_f[r, c]
    return np.column_stack([rows[r[keep]], cols[c[keep]]]).astype(np.int64)


def _result(pairs, ids_t, ids_p, values, key, zero_division) -> dict:
    tp = len(pairs)
    fp = len(ids_p) - tp
    fn = len(ids_t) - tp
    out = {"tp": tp, "fp": fp, "fn": fn, "n_true": len(ids_t), "n_pred": len(ids_p)}
    out.update(prf(tp, fp, fn, zero_division=zero_division))
    out["pairs"] = np.column_stack([ids_t[pairs[:, 0]], ids_p[pairs[:, 1]]]).astype(np.int64)
    out[key] = values
    return out


# --------------------------------------------------------------------------------------------
# object matching
# --------------------------------------------------------------------------------------------
def match_objects(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    *,
    radius: float = 40.0,
    zero_division: float = 1.0,
) -> dict:
    """Match true and predicted objects one-to-one by centroid distance ("detection").

    A pair may match when the Euclidean distance between the centroids is ``<= radius`` pixels
    (FNC v2 uses 40 px). Among the one-to-one matchings with the most pairs, the one with the
    smallest total distance is taken (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    true_labels, pred_labels : (H, W) int arrays
        Label images, 0 = background; label values need not be consecutive.
    radius : float
        Largest centroid distance of a match, in pixels.
    zero_division : float
        See the module docstring.

    Returns
    -------
    dict
        ``tp, fp, fn, n_true, n_pred`` (ints), ``precision, recall, f1`` (floats), ``pairs``
        ((k, 2) int64 array of ``(true_label, pred_label)``) and ``distances`` ((k,) float).
    """
    true_labels = _check_labels(true_labels, "true_labels")
    pred_labels = _check_labels(pred_labels, "pred_labels")
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"label shapes differ: true {true_labels.shape}, pred {pred_labels.shape}")
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    ids_t, ct = _compact(true_labels)
    ids_p, cp = _compact(pred_labels)
    dist = cdist(_centroids(ct, ids_t.size), _centroids(cp, ids_p.size))
    pairs = _assign(dist, dist <= radius, maximize=False)
    return _result(pairs, ids_t, ids_p, dist[pairs[:, 0], pairs[:, 1]], "distances", zero_division)


def iou_table(true_labels: np.ndarray, pred_labels: np.ndarray) -> dict:
    """Intersection over union of every overlapping (true, pred) label pair.

    Returns
    -------
    dict
        ``true_ids`` (n,), ``pred_ids`` (m,) present labels and ``iou`` (n, m) float array
        (0 where the objects do not overlap).
    """
    ids_t, ct, ids_p, cp = _compact_pair(true_labels, pred_labels)
    nt, np_ = ids_t.size, ids_p.size
    area_t = np.bincount(ct.ravel(), minlength=nt + 1)[1:]
    area_p = np.bincount(cp.ravel(), minlength=np_ + 1)[1:]
    both = (ct > 0) & (cp > 0)
    codes = (ct[both] - 1) * np_ + (cp[both] - 1)
    inter = np.bincount(codes, minlength=nt * np_).reshape(nt, np_) if nt and np_ else None
    if inter is None:
        iou = np.zeros((nt, np_))
    else:
        union = area_t[:, None] + area_p[None, :] - inter
        iou = inter / np.maximum(union, 1)
    return {"true_ids": ids_t, "pred_ids": ids_p, "iou": iou}


def match_by_iou(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    *,
    iou: float = 0.5,
    zero_division: float = 1.0,
) -> dict:
    """Match true and predicted objects one-to-one by overlap ("segmentation").

    A pair may match when its intersection over union is ``>= iou``; the one-to-one matching with
    the most pairs and then the largest total IoU is taken (for ``iou > 0.5`` it is unique).

    Parameters
    ----------
    true_labels, pred_labels : (H, W) int arrays
        Label images, 0 = background.
    iou : float
        Smallest IoU of a match, in (0, 1].

    Returns
    -------
    dict
        As :func:`match_objects`, with ``ious`` ((k,) float) instead of ``distances``.
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    table = iou_table(true_labels, pred_labels)
    m = table["iou"]
    pairs = _assign(m, m >= iou, maximize=True)
    return _result(
        pairs, table["true_ids"], table["pred_ids"], m[pairs[:, 0], pairs[:, 1]], "ious",
        zero_division,
    )  # fmt: skip


def object_scores(per_image_results: Iterable[Mapping], *, zero_division: float = 1.0) -> dict:
    """Aggregate per-image matches into object scores and the count error.

    Parameters
    ----------
    per_image_results : iterable of dict
        Results of :func:`match_objects` or :func:`match_by_iou` (keys ``tp, fp, fn, n_true,
        n_pred``), optionally with an ``image_id``.

    Returns
    -------
    dict
        Summed ``tp, fp, fn``; micro ``precision, recall, f1``; ``count_mae`` (mean over images of
        ``|n_pred - n_true|``, NaN with no images), ``count_bias`` (mean of ``n_pred - n_true``),
        ``n_images`` and ``per_image``: a list of ``{image_id, true_count, pred_count, tp, fp,
        fn}``.
    """
    per_image = []
    for i, r in enumerate(per_image_results):
        per_image.append(
            {
                "image_id": str(r.get("image_id", i)),
                "true_count": int(r["n_true"]),
                "pred_count": int(r["n_pred"]),
                "tp": int(r["tp"]),
                "fp": int(r["fp"]),
                "fn": int(r["fn"]),
            }
        )
    tp = sum(r["tp"] for r in per_image)
    fp = sum(r["fp"] for r in per_image)
    fn = sum(r["fn"] for r in per_image)
    diff = np.array([r["pred_count"] - r["true_count"] for r in per_image], dtype=float)
    out = {"tp": tp, "fp": fp, "fn": fn, "n_images": len(per_image)}
    out.update(prf(tp, fp, fn, zero_division=zero_division))
    out["count_mae"] = float(np.abs(diff).mean()) if diff.size else float("nan")
    out["count_bias"] = float(diff.mean()) if diff.size else float("nan")
    out["per_image"] = per_image
    return out


# --------------------------------------------------------------------------------------------
# IoU scores at thresholds 0.5:0.95 (StarDist / DSB 2018)
# --------------------------------------------------------------------------------------------
IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
"""IoU thresholds of the instance scores: 0.5 to 0.95 in steps of 0.05 (DSB 2018, COCO)."""

# Largest dense (true x pred) overlap table counted with one np.bincount; above it the
# overlapping pixel codes are counted with np.unique instead.
_DENSE_PAIRS = 1 << 23


def _overlaps(ct: np.ndarray, cp: np.ndarray, nt: int, npr: int):
    """Sparse overlap of two compact label images.

    Returns (ti, pi, inter) for every overlapping (true, pred) pair (0-based ids, pixel counts)
    and the areas of the true and predicted objects.
    """
    t = ct.ravel()
    p = cp.ravel()
    area_t = np.bincount(t, minlength=nt + 1)[1:]
    area_p = np.bincount(p, minlength=npr + 1)[1:]
    if nt == 0 or npr == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, area_t, area_p
    if (nt + 1) * (npr + 1) <= max(_DENSE_PAIRS, t.size):
        table = np.bincount(t * (npr + 1) + p, minlength=(nt + 1) * (npr + 1))
        table = table.reshape(nt + 1, npr + 1)[1:, 1:]
        ti, pi = np.nonzero(table)
        inter = table[ti, pi]
    else:
        both = (t > 0) & (p > 0)
        codes, inter = np.unique((t[both] - 1) * npr + (p[both] - 1), return_counts=True)
        ti, pi = np.divmod(codes, npr)
    return ti, pi, inter, area_t, area_p


def _check_thresholds(thresholds) -> list[float]:
    out = [float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=float))]
    if not out or not all(0.0 < t <= 1.0 for t in out):
        raise ValueError(f"IoU thresholds must be a non-empty sequence in (0, 1], got {thresholds}")
    return out


def _match_component(iou: np.ndarray, thr: float) -> tuple[int, float]:
    """StarDist's assignment on one connected block of the overlap graph: (tp, sum of IoU)."""
    n_matched = min(iou.shape)
    costs = -(iou >= thr).astype(float) - iou / (2 * n_matched)
    r, c = linear_sum_assignment(costs)
    chosen = iou[r, c]
    ok = chosen >= thr
    return int(ok.sum()), float(chosen[ok].sum())


def iou_matching(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    *,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict:
    """One-to-one IoU matching of one image at several thresholds, as counts to pool later.

    At each threshold ``thr`` the matching is StarDist's (``stardist.matching.matching``): the
    assignment (Hungarian, :func:`scipy.optimize.linear_sum_assignment`) that maximises first the
    number of pairs with ``IoU >= thr`` and then the total IoU of the assigned pairs (StarDist's
    costs ``-(iou >= thr) - iou / (2 n_matched)``); true positives are the assigned pairs with
    ``IoU >= thr``. For ``thr > 0.5`` it is simply every pair with ``IoU >= thr`` (an object
    has at most one partner above 0.5). The overlaps are counted sparsely (one
    :func:`numpy.bincount` of the combined labels) and the assignment is solved per connected
    block of overlapping objects, so a 520x696 image with 150 nuclei takes a few milliseconds.

    Differences from StarDist: IoU is compared in float64 (exact for pixel counts), StarDist
    rounds it to float32 first; they can only disagree for an IoU within about 1e-7 of a
    threshold, i.e. objects of millions of pixels.

    Parameters
    ----------
    true_labels, pred_labels : (H, W) int arrays
        Label images of any integer dtype, 0 = background; values need not be consecutive.
    thresholds : sequence of float
        IoU thresholds in (0, 1] (default :data:`IOU_THRESHOLDS`, 0.5:0.95).

    Returns
    -------
    dict
        Plain, picklable, JSON-able: ``thresholds`` (list of float), per threshold ``tp``,
        ``fp``, ``fn`` (lists of int) and ``sum_matched_iou`` (list of float: the IoU summed over
        the true positives), ``n_true``, ``n_pred`` (int). Pool over images with
        :func:`iou_scores`.
    """
    thresholds = _check_thresholds(thresholds)
    ids_t, ct, ids_p, cp = _compact_pair(true_labels, pred_labels)
    nt, npr = int(ids_t.size), int(ids_p.size)
    ti, pi, inter, area_t, area_p = _overlaps(ct, cp, nt, npr)
    iou = inter / (area_t[ti] + area_p[pi] - inter)

    blocks = None  # connected blocks of the overlap graph, computed only when needed
    tps, sums = [], []
    for thr in thresholds:
        ok = iou >= thr
        # an object with two candidate partners at this threshold (only possible for thr <= 0.5)
        t_deg = np.bincount(ti[ok], minlength=nt)
        p_deg = np.bincount(pi[ok], minlength=npr)
        if (t_deg <= 1).all() and (p_deg <= 1).all():
            # the candidate pairs are disjoint: the optimal assignment takes all of them
            tps.append(int(ok.sum()))
            sums.append(float(iou[ok].sum()))
            continue
        if blocks is None:
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import connected_components

            graph = coo_matrix((np.ones(ti.size), (ti, nt + pi)), shape=(nt + npr, nt + npr))
            _, comp = connected_components(graph, directed=False)
            blocks = comp[ti]  # block of each overlapping pair
        conflict = np.zeros(blocks.max() + 1, dtype=bool)
        conflict[blocks[ok & ((t_deg[ti] > 1) | (p_deg[pi] > 1))]] = True
        simple = ok & ~conflict[blocks]
        tp, total = int(simple.sum()), float(iou[simple].sum())
        for b in np.flatnonzero(conflict):
            sel = blocks == b
            rows, r_inv = np.unique(ti[sel], return_inverse=True)
            cols, c_inv = np.unique(pi[sel], return_inverse=True)
            dense = np.zeros((rows.size, cols.size))
            dense[r_inv, c_inv] = iou[sel]
            k, s = _match_component(dense, thr)
            tp += k
            total += s
        tps.append(tp)
        sums.append(total)
    return {
        "thresholds": thresholds,
        "tp": tps,
        "fp": [npr - k for k in tps],
        "fn": [nt - k for k in tps],
        "n_true": nt,
        "n_pred": npr,
        "sum_matched_iou": sums,
    }


def iou_scores(results: Iterable[Mapping], *, zero_division: float = 1.0) -> dict:
    """Pool :func:`iou_matching` results over images into the field's instance scores.

    Counts are summed over the images first, then turned into ratios, as StarDist's
    ``matching_dataset(..., by_image=False)`` does (so an image with many objects weighs more than
    one with few). Per threshold:

    - ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``, ``f1 = 2tp / (2tp + fp + fn)``;
    - ``ap = tp / (tp + fp + fn)``: StarDist's ``accuracy``, the Data Science Bowl 2018's
      "average precision" at one threshold; ``mean_ap`` is its mean over the thresholds (the
      DSB 2018 score for 0.5:0.95);
    - ``mean_true_score`` = summed matched IoU / n_true, ``mean_matched_score`` = summed matched
      IoU / tp, ``panoptic_quality`` = summed matched IoU / (tp + fp/2 + fn/2) (Kirillov et al.).

    Zero division follows this module's convention, not StarDist's: a ratio whose denominator is
    zero is ``zero_division`` (1.0: nothing to find and nothing found is perfect), and
    ``mean_matched_score`` with no match is 0 unless both sides are empty (as F1). StarDist gives 0
    in every such case; ``zero_division=0.0`` reproduces it. The two differ only when a side is
    empty over all the pooled images (e.g. precision with no predictions at all).

    Parameters
    ----------
    results : iterable of dict
        :func:`iou_matching` results (same thresholds), optionally with an ``image_id``.
    zero_division : float
        See above.

    Returns
    -------
    dict
        ``thresholds``; per threshold (lists in the order of ``thresholds``) ``tp, fp, fn,
        precision, recall, f1, ap, mean_true_score, mean_matched_score, panoptic_quality``;
        ``mean_ap``; ``ap_50``, ``f1_50`` (at IoU 0.5, None when 0.5 is not a threshold);
        ``count_mae`` (mean over images of ``|n_pred - n_true|``), ``count_bias`` (mean of
        ``n_pred - n_true``); ``n_images``, ``n_true``, ``n_pred`` (totals); ``table``: one row
        per threshold (``threshold, tp, fp, fn, precision, recall, f1, ap, mean_true_score,
        mean_matched_score, panoptic_quality``) for a Markdown table.

    Raises
    ------
    ValueError
        No results, or results computed at different thresholds.
    """
    results = list(results)
    if not results:
        raise ValueError("iou_scores needs the result of at least one image")
    thresholds = [float(t) for t in results[0]["thresholds"]]
    k = len(thresholds)
    tp, fp, fn = (np.zeros(k, dtype=np.int64) for _ in range(3))
    sums = np.zeros(k)
    diffs = []
    for i, r in enumerate(results):
        if [float(t) for t in r["thresholds"]] != thresholds:
            raise ValueError(
                f"result {r.get('image_id', i)} has thresholds {list(r['thresholds'])}, "
                f"the first has {thresholds}"
            )
        tp += np.asarray(r["tp"], dtype=np.int64)
        fp += np.asarray(r["fp"], dtype=np.int64)
        fn += np.asarray(r["fn"], dtype=np.int64)
        sums += np.asarray(r["sum_matched_iou"], dtype=float)
        diffs.append(int(r["n_pred"]) - int(r["n_true"]))
    n_true = sum(int(r["n_true"]) for r in results)
    n_pred = sum(int(r["n_pred"]) for r in results)
    zd = float(zero_division)

    table = []
    for j, thr in enumerate(thresholds):
        a, b, c, s = int(tp[j]), int(fp[j]), int(fn[j]), float(sums[j])
        row = {"threshold": thr, "tp": a, "fp": b, "fn": c}
        row.update(prf(a, b, c, zero_division=zd))
        row["ap"] = _ratio(a, a + b + c, zd)
        row["mean_true_score"] = _ratio(s, a + c, zd)
        row["mean_matched_score"] = s / a if a else (zd if b + c == 0 else 0.0)
        row["panoptic_quality"] = _ratio(s, a + b / 2 + c / 2, zd)
        table.append(row)

    out: dict = {"thresholds": thresholds}
    for key in ("tp", "fp", "fn", "precision", "recall", "f1", "ap", "mean_true_score",
                "mean_matched_score", "panoptic_quality"):  # fmt: skip
        out[key] = [row[key] for row in table]
    out["mean_ap"] = float(np.mean(out["ap"]))
    at_50 = next((row for row in table if abs(row["threshold"] - 0.5) < 1e-12), None)
    out["ap_50"] = at_50["ap"] if at_50 else None
    out["f1_50"] = at_50["f1"] if at_50 else None
    diffs = np.asarray(diffs, dtype=float)
    out["count_mae"] = float(np.abs(diffs).mean())
    out["count_bias"] = float(diffs.mean())
    out["n_images"] = len(results)
    out["n_true"] = n_true
    out["n_pred"] = n_pred
    out["table"] = table
    return out


# --------------------------------------------------------------------------------------------
# pixel level
# --------------------------------------------------------------------------------------------
def _bins(prob: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(prob, 0.0, 1.0) * (N_BINS - 1)).astype(np.intp)


class PixelAccumulator:
    """Sum pixel confusion counts and probability histograms over many images.

    Parameters
    ----------
    threshold : float
        A pixel is predicted cell when ``prob > threshold``.

    Examples
    --------
    >>> acc = PixelAccumulator(threshold=0.5)
    >>> for prob, mask in pairs:  # doctest: +SKIP
    ...     acc.update(mask, prob)
    >>> acc.scores()["f1"]  # doctest: +SKIP
    """

    def __init__(self, *, threshold: float = 0.5):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.confusion = np.zeros((2, 2), dtype=np.int64)  # [[tn, fp], [fn, tp]]
        self.pos_hist = np.zeros(N_BINS, dtype=np.int64)
        self.neg_hist = np.zeros(N_BINS, dtype=np.int64)

    def update(self, y_true: np.ndarray, y_prob: np.ndarray) -> PixelAccumulator:
        """Add one image (or any batch of pixels): ``y_true`` mask, ``y_prob`` same shape."""
        t = as_bool_mask(y_true, name="y_true").ravel()
        p = np.asarray(y_prob)
        if p.shape != np.shape(y_true):
            raise ValueError(f"y_prob shape {p.shape} differs from y_true shape {np.shape(y_true)}")
        if not np.issubdtype(p.dtype, np.floating):
            raise ValueError(f"y_prob: expected probabilities as floats, got dtype {p.dtype}")
        p = p.ravel()
        if p.size and not np.isfinite(p).all():
            raise ValueError("y_prob contains NaN or infinite values")
        b = _bins(p)
        both = np.bincount(b * 2 + t, minlength=2 * N_BINS)
        self.neg_hist += both[0::2]
        self.pos_hist += both[1::2]
        pred = p > self.threshold
        code = np.bincount(t.astype(np.intp) * 2 + pred, minlength=4)
        self.confusion += code.reshape(2, 2)
        return self

    def merge(self, other: PixelAccumulator) -> PixelAccumulator:
        """Add another accumulator's counts (same threshold) into this one."""
        if other.threshold != self.threshold:
            raise ValueError("cannot merge accumulators with different thresholds")
        self.confusion += other.confusion
        self.pos_hist += other.pos_hist
        self.neg_hist += other.neg_hist
        return self

    def state(self) -> dict:
        """Plain-data state (for passing between processes); see :meth:`from_state`."""
        return {
            "threshold": self.threshold,
            "confusion": self.confusion.tolist(),
            "pos_hist": self.pos_hist.copy(),
            "neg_hist": self.neg_hist.copy(),
        }

    @classmethod
    def from_state(cls, state: Mapping) -> PixelAccumulator:
        acc = cls(threshold=state["threshold"])
        acc.confusion += np.asarray(state["confusion"], dtype=np.int64)
        acc.pos_hist += np.asarray(state["pos_hist"], dtype=np.int64)
        acc.neg_hist += np.asarray(state["neg_hist"], dtype=np.int64)
        return acc

    def _cumulative(self) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative tp, fp for thresholds at each bin, from the highest bin down."""
        tps = np.cumsum(self.pos_hist[::-1])
        fps = np.cumsum(self.neg_hist[::-1])
        return tps, fps

    def curves(self) -> dict:
        """ROC and precision-recall curves from the probability histograms.

        Returns
        -------
        dict
            ``fpr, tpr`` (ROC, starting at (0, 0)), ``recall, precision`` (PR, recall
            increasing), ``thresholds`` (bin centres, decreasing, for the points after the first),
            ``roc_auc``, ``average_precision``.
        """
        tps, fps = self._cumulative()
        keep = np.flatnonzero((self.pos_hist + self.neg_hist)[::-1])  # occupied bins
        tps, fps = tps[keep], fps[keep]
        thresholds = (N_BINS - 1 - keep) / (N_BINS - 1)
        pos, neg = int(self.pos_hist.sum()), int(self.neg_hist.sum())
        tpr = np.r_[0.0, tps / pos] if pos else np.full(keep.size + 1, np.nan)
        fpr = np.r_[0.0, fps / neg] if neg else np.full(keep.size + 1, np.nan)
        precision = np.r_[1.0, tps / np.maximum(tps + fps, 1)]
        recall = tpr.copy()
        return {
            "fpr": fpr,
            "tpr": tpr,
            "recall": recall,
            "precision": precision,
            "thresholds": thresholds,
            "roc_auc": self.roc_auc(),
            "average_precision": self.average_precision(),
        }

    def roc_auc(self) -> float:
        """Area under the ROC curve (NaN unless both classes are present)."""
        pos, neg = int(self.pos_hist.sum()), int(self.neg_hist.sum())
        if not pos or not neg:
            return float("nan")
        tps, fps = self._cumulative()
        tpr = np.r_[0.0, tps / pos]
        fpr = np.r_[0.0, fps / neg]
        return float(np.trapezoid(tpr, fpr))

    def average_precision(self) -> float:
        """Average precision, ``sum (R_n - R_{n-1}) P_n`` (NaN without positive pixels)."""
        pos = int(self.pos_hist.sum())
        if not pos:
            return float("nan")
        tps, fps = self._cumulative()
        recall = np.r_[0.0, tps / pos]
        precision = tps / np.maximum(tps + fps, 1)
        return float(np.sum(np.diff(recall) * precision))

    def scores(self, *, zero_division: float = 1.0) -> dict:
        """Pixel scores of the cell class (see :func:`pixel_scores`)."""
        (tn, fp), (fn, tp) = self.confusion.tolist()
        n = tn + fp + fn + tp
        rows = self.confusion.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = np.where(rows > 0, self.confusion / np.maximum(rows, 1), np.nan)
        out = prf(tp, fp, fn, zero_division=zero_division)
        out.update(
            {
                "support": int(tp + fn),
                "accuracy": _ratio(tp + tn, n, float("nan")),
                "confusion": [[int(tn), int(fp)], [int(fn), int(tp)]],
                "confusion_normalized": norm.tolist(),
                "roc_auc": self.roc_auc(),
                "average_precision": self.average_precision(),
                "n_pixels": int(n),
                "threshold": self.threshold,
            }
        )
        return out


def pixel_scores(
    y_true: np.ndarray, y_prob: np.ndarray, *, threshold: float = 0.5, zero_division: float = 1.0
) -> dict:
    """Pixel-level scores of the cell class from probabilities.

    Parameters
    ----------
    y_true : array of any shape
        Ground-truth mask (boolean, 0/255 integers or 0..1 floats; see :func:`as_bool_mask`).
    y_prob : float array, same shape
        Cell probabilities in [0, 1] (values outside are clipped for the curves).
    threshold : float
        A pixel is predicted cell when ``prob > threshold``.

    Returns
    -------
    dict
        ``precision, recall, f1`` of the cell class, ``support`` (true cell pixels),
        ``accuracy``, ``confusion`` ``[[tn, fp], [fn, tp]]`` counts, ``confusion_normalized``
        (rows sum to 1; NaN for an empty row), ``roc_auc`` and ``average_precision`` (binned, see
        the module docstring; NaN when undefined), ``n_pixels``, ``threshold``.
    """
    return (
        PixelAccumulator(threshold=threshold)
        .update(y_true, y_prob)
        .scores(zero_division=zero_division)
    )


# --------------------------------------------------------------------------------------------
# threshold sweep
# --------------------------------------------------------------------------------------------
def threshold_sweep(
    probs: Sequence[np.ndarray],
    true_masks: Sequence[np.ndarray],
    *,
    thresholds: Sequence[float] = tuple(np.linspace(0.1, 0.9, 17)),
    min_areas: Sequence[int] = (0, 50, 100, 200, 400),
    radius: float = 40.0,
) -> dict:
    """Choose the probability threshold and minimum object area that maximise object F1.

    Objects are the 4-connected components of ``prob > threshold`` with at least ``min_area``
    pixels (as :func:`neuroseg.predict.segment` without watershed); they are matched to the
    components of the true masks by centroid distance (:func:`match_objects`).

    Parameters
    ----------
    probs : sequence of (H, W) float arrays
    true_masks : sequence of (H, W) masks, same shapes
    thresholds, min_areas : sequences
        The grid to search.
    radius : float
        Matching radius in pixels.

    Returns
    -------
    dict
        ``best_threshold``, ``best_min_area``, ``best_f1``, ``best_count_mae`` and ``table``: a
        list of dicts ``{threshold, min_area, tp, fp, fn, precision, recall, f1, count_mae}``.
        Ties in F1 go to the smaller count MAE, then to the earlier row (thresholds outer,
        min_areas inner, in the order given).
    """
    probs = list(probs)
    true_masks = list(true_masks)
    if len(probs) != len(true_masks):
        raise ValueError(f"got {len(probs)} probability maps but {len(true_masks)} masks")
    if not probs:
        raise ValueError("threshold_sweep needs at least one image")
    thresholds = [float(t) for t in thresholds]
    min_areas = [int(a) for a in min_areas]
    if not thresholds or not min_areas:
        raise ValueError("thresholds and min_areas must not be empty")
    true_labels = []
    for i, (p, m) in enumerate(zip(probs, true_masks, strict=True)):
        if np.shape(p) != np.shape(m) or np.ndim(p) != 2:
            raise ValueError(f"image {i}: prob shape {np.shape(p)} vs mask shape {np.shape(m)}")
        true_labels.append(ndi.label(as_bool_mask(m), structure=_FOUR)[0])

    counts = np.zeros((len(thresholds), len(min_areas), len(probs), 5), dtype=np.int64)
    for ti, t in enumerate(thresholds):
        for k, (p, tl) in enumerate(zip(probs, true_labels, strict=True)):
            lab, n = ndi.label(np.asarray(p) > t, structure=_FOUR)
            area = np.bincount(lab.ravel(), minlength=n + 1)
            for ai, a in enumerate(min_areas):
                keep = area >= a
                keep[0] = False
                filtered = np.where(keep[lab], lab, 0)
                r = match_objects(tl, filtered, radius=radius)
                counts[ti, ai, k] = (r["tp"], r["fp"], r["fn"], r["n_true"], r["n_pred"])

    table = []
    for ti, t in enumerate(thresholds):
        for ai, a in enumerate(min_areas):
            c = counts[ti, ai]
            tp, fp, fn = (int(x) for x in c[:, :3].sum(axis=0))
            row = {"threshold": t, "min_area": a, "tp": tp, "fp": fp, "fn": fn}
            row.update(prf(tp, fp, fn))
            row["count_mae"] = float(np.abs(c[:, 4] - c[:, 3]).mean())
            table.append(row)
    best = max(enumerate(table), key=lambda ir: (ir[1]["f1"], -ir[1]["count_mae"], -ir[0]))[1]
    return {
        "best_threshold": best["threshold"],
        "best_min_area": best["min_area"],
        "best_f1": best["f1"],
        "best_count_mae": best["count_mae"],
        "table": table,
    }


def rank_grid(points: Sequence[Mapping], matches: Sequence[Sequence[Mapping]]) -> dict:
    """Score every point of a parameter grid and pick the best (the validation sweeps' rule).

    Parameters
    ----------
    points : sequence of mappings
        The grid points (parameter name -> value).
    matches : sequence of sequences of :func:`iou_matching` results
        Per point, one result per validation image.

    Returns
    -------
    dict
        ``best`` (index of the point with the highest pooled mean AP over IoU 0.5:0.95, then
        the highest F1 at 0.5, then the first in grid order), ``scores`` (its
        :func:`iou_scores`) and ``table`` (one row per point: its parameters, ``mean_ap``,
        ``ap_50``, ``f1_50``, ``count_mae``).
    """
    table, all_scores = [], []
    for p, m in zip(points, matches, strict=True):
        s = iou_scores(m)
        all_scores.append(s)
        row = dict(p)
        row.update(
            mean_ap=s["mean_ap"], ap_50=s["ap_50"], f1_50=s["f1_50"], count_mae=s["count_mae"]
        )
        table.append(row)
    if not table:
        raise ValueError("rank_grid needs at least one grid point")
    best = max(range(len(points)), key=lambda i: (table[i]["mean_ap"], table[i]["f1_50"], -i))
    return {"best": best, "scores": all_scores[best], "table": table}


def reweighted_iou_scores(
    tables: Mapping[str, Sequence[Mapping]], scale: Mapping[str, float]
) -> dict:
    """Pooled scores of several sets with each set's counts scaled first.

    An estimate of what a test of another composition would score: e.g. a test split of 22
    BBBC039 and 68 DSB images re-weighted to 50 + 50 with ``scale = {"bbbc039": 50 / 22,
    "dsb2018": 50 / 68}``. Each set's TP, FP and FN at every IoU threshold are multiplied by its
    scale, summed over the sets and turned into F1 and AP = TP / (TP + FP + FN).

    Parameters
    ----------
    tables : mapping of set name -> sequence of rows
        Per set, the rows of :func:`iou_scores`' ``table`` (``threshold, tp, fp, fn``), the
        same thresholds in the same order for every set.
    scale : mapping of set name -> float
        The factor of each set's counts (>= 0; every set of ``tables`` needs one).

    Returns
    -------
    dict
        ``f1_50`` and ``ap_50`` (the first threshold's), ``mean_ap`` (over all thresholds).
    """
    if not tables or set(tables) != set(scale) or any(not v >= 0 for v in scale.values()):
        raise ValueError(f"need one scale >= 0 per set: sets {sorted(tables)}, scale {scale}")
    rows = list(zip(*tables.values(), strict=True))
    for same in rows:
        if len({float(r["threshold"]) for r in same}) != 1:
            raise ValueError("the sets' tables must list the same IoU thresholds in order")
    counts = [
        [sum(scale[name] * r[key] for name, r in zip(tables, same, strict=True))
         for key in ("tp", "fp", "fn")]
        for same in rows
    ]  # fmt: skip
    aps = [_ratio(tp, tp + fp + fn, 1.0) for tp, fp, fn in counts]
    return {"f1_50": prf(*counts[0])["f1"], "ap_50": aps[0], "mean_ap": float(np.mean(aps))}


def iou_summary(results: Iterable[Mapping]) -> dict | None:
    """:func:`iou_scores` in the compact form model cards and score files keep (None if empty).

    ``n_images, n_true, n_pred, f1_50, ap_50, mean_ap, count_mae, count_bias`` and ``table``
    (one row per IoU threshold: ``threshold, tp, fp, fn, precision, recall, f1, ap``).
    """
    results = list(results)
    if not results:
        return None
    s = iou_scores(results)
    keep = ("threshold", "tp", "fp", "fn", "precision", "recall", "f1", "ap")
    out = {
        k: s[k]
        for k in (
            "n_images", "n_true", "n_pred", "f1_50", "ap_50", "mean_ap", "count_mae", "count_bias"
        )
    }  # fmt: skip
    out["table"] = [{k: row[k] for k in keep} for row in s["table"]]
    return out
