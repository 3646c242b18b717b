"""What a segmentation got wrong, object by object: error analysis by known categories (light).

Counting errors come from a few kinds of mistake, and each calls for a different fix (a size
filter, a splitting rule, more context in the network, more annotated cells). After centroid
matching (:func:`neuroseg.metrics.match_objects`, FNC v2's "detection" rule), every unmatched
object is put in the first category whose rule it meets:

false positives (predicted objects without a true partner)

- ``fragment``: overlaps a true cell that another prediction matched (a cell cut in pieces);
- ``offset``: overlaps a true cell that no prediction matched (the cell was found, but the
  predicted object's centroid lies beyond the radius: a soma with neurites attached, or two
  cells merged into one);
- ``border``: touches the image border;
- ``thin``: its inscribed radius (the largest distance from a pixel inside it to its outside) is
  under ``thin_radius`` px: a neurite segment or a crossing of neurites, not a cell body;
- ``blob``: anything else (debris, autofluorescence, or a cell the annotators did not mark).

misses (true cells without a predicted partner)

- ``merged``: overlaps a prediction that matched another true cell (touching cells as one);
- ``offset``: overlaps a prediction that matched nothing (see above);
- ``small``: under ``min_area`` px (the post-processing's size filter drops such objects);
- ``border``: touches the image border;
- ``dim``: its mean intensity is under ``dim_fraction`` of the median over the image's true
  cells;
- ``missed``: anything else.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import ndimage as ndi

__all__ = ["FP_KINDS", "MISS_KINDS", "classify_errors"]

FP_KINDS = ("fragment", "offset", "border", "thin", "blob")
MISS_KINDS = ("merged", "offset", "small", "border", "dim", "missed")


def _touches_border(labels: np.ndarray, n: int) -> np.ndarray:
    """(n + 1,) bool: whether each label reaches the outermost row or column."""
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    out = np.zeros(n + 1, bool)
    out[np.unique(edge)] = True
    out[0] = False
    return out


def _overlap_sets(a: np.ndarray, b: np.ndarray, na: int) -> list[set]:
    """For each label of ``a`` (index 1..na), the set of labels of ``b`` it overlaps."""
    both = (a > 0) & (b > 0)
    out: list[set] = [set() for _ in range(na + 1)]
    for i, j in set(zip(a[both].tolist(), b[both].tolist(), strict=True)):
        out[i].add(j)
    return out


def classify_errors(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    *,
    image: np.ndarray | None = None,
    radius: float = 40.0,
    min_area: int = 0,
    thin_radius: float = 6.0,
    dim_fraction: float = 0.5,
) -> dict:
    """Match true and predicted objects by centroid, then name each error's kind.

    Parameters
    ----------
    true_labels, pred_labels : (H, W) int arrays
        Label images (0 = background), consecutive labels ``1..n``.
    image : (H, W) float array, optional
        The grey image, for the ``dim`` rule (without it no miss is ``dim``).
    radius : float
        Centroid matching radius, px.
    min_area : int
        The post-processing's smallest object, px (``small`` misses are under it).
    thin_radius : float
        Predicted objects whose inscribed radius is under it are ``thin``.
    dim_fraction : float
        True cells darker than this fraction of the image's median cell are ``dim``.

    Returns
    -------
    dict
        ``tp, fp, fn, n_true, n_pred``; ``fp_kinds`` and ``miss_kinds`` (``{kind: count}``
        over :data:`FP_KINDS` / :data:`MISS_KINDS`); ``false_positives`` and ``misses``: one
        dict per error with ``label``, ``kind``, ``area``, ``centroid`` (row, col) and
        ``radius`` (inscribed, px).
    """
    from neuroseg.metrics import match_objects

    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    m = match_objects(true_labels, pred_labels, radius=radius)  # checks the label shapes
    if image is not None and np.shape(image) != true_labels.shape:
        raise ValueError(f"image shape {np.shape(image)} != label shape {true_labels.shape}")
    nt, npr = int(true_labels.max(initial=0)), int(pred_labels.max(initial=0))
    matched_t = np.zeros(nt + 1, bool)
    matched_p = np.zeros(npr + 1, bool)
    matched_t[m["pairs"][:, 0]] = True
    matched_p[m["pairs"][:, 1]] = True
    t_over = _overlap_sets(true_labels, pred_labels, nt)
    p_over = _overlap_sets(pred_labels, true_labels, npr)
    t_border, p_border = _touches_border(true_labels, nt), _touches_border(pred_labels, npr)
    area_t = np.bincount(true_labels.ravel(), minlength=nt + 1)
    area_p = np.bincount(pred_labels.ravel(), minlength=npr + 1)
    # the inscribed radius: the distance transform's peak inside each object (a 1-px gap
    # between touching labels is enough: objects are measured on their own pixels)
    dist_p = _inscribed(pred_labels, npr)
    dist_t = _inscribed(true_labels, nt)
    cells = np.arange(1, nt + 1)
    if image is not None and nt:
        mean_t = np.zeros(nt + 1)
        mean_t[1:] = ndi.mean(np.asarray(image, float), true_labels, index=cells)
        dim_below = dim_fraction * float(np.median(mean_t[1:]))
    cent_t = _centroids(true_labels, nt)
    cent_p = _centroids(pred_labels, npr)

    fps = []
    for j in np.flatnonzero(~matched_p[1:]) + 1:
        over = p_over[j]
        kind = _first(
            fragment=any(matched_t[i] for i in over),
            offset=bool(over),
            border=p_border[j],
            thin=dist_p[j] < thin_radius,
            blob=True,
        )
        fps.append(_row(j, kind, area_p, cent_p, dist_p))
    misses = []
    for i in np.flatnonzero(~matched_t[1:]) + 1:
        over = t_over[i]
        kind = _first(
            merged=any(matched_p[j] for j in over),
            offset=bool(over),
            small=area_t[i] < min_area,
            border=t_border[i],
            dim=image is not None and mean_t[i] < dim_below,
            missed=True,
        )
        misses.append(_row(i, kind, area_t, cent_t, dist_t))
    return {
        **{k: int(m[k]) for k in ("tp", "fp", "fn", "n_true", "n_pred")},
        "fp_kinds": _tally(fps, FP_KINDS),
        "miss_kinds": _tally(misses, MISS_KINDS),
        "false_positives": fps,
        "misses": misses,
    }


def _first(**rules: bool) -> str:
    """The first kind whose rule holds (keyword order is the rules' order)."""
    return next(kind for kind, holds in rules.items() if holds)


def _inscribed(labels: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n + 1)
    if n:
        edges = labels != ndi.grey_erosion(labels, size=3)  # 1-px rings where labels meet
        dist = ndi.distance_transform_edt((labels > 0) & ~(edges & (labels > 0)))
        out[1:] = ndi.maximum(dist, labels, index=np.arange(1, n + 1)) + 1.0
    return out


def _centroids(labels: np.ndarray, n: int) -> np.ndarray:
    """(n + 1, 2) centroids (row, col) indexed by label, row 0 unused."""
    from neuroseg.metrics import _centroids as centroids

    return np.vstack([np.zeros((1, 2)), centroids(labels, n)])


def _row(label: int, kind: str, area, cent, dist) -> dict:
    return {
        "label": int(label),
        "kind": kind,
        "area": int(area[label]),
        "centroid": [round(float(cent[label][0]), 1), round(float(cent[label][1]), 1)],
        "radius": round(float(dist[label]), 1),
    }


def _tally(rows: list[dict], kinds: tuple[str, ...]) -> dict:
    c = Counter(r["kind"] for r in rows)
    return {k: int(c.get(k, 0)) for k in kinds}
