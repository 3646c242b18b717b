"""Shape descriptors of every object of a label image at once, as ``regionprops`` defines them.

:func:`skimage.measure.regionprops_table` computes ``perimeter``, ``axis_major_length``,
``axis_minor_length``, ``eccentricity``, ``orientation`` and ``solidity`` object by object,
each from a cropped copy of the object: about 0.8 ms per object, 0.1 s for the 130 nuclei of a
520x696 BBBC039 image, as long as its network's prediction. :func:`shape_table` gives the same
numbers from whole-image passes:

- second moments of every object with :func:`numpy.bincount` (centred on each object's own
  centroid, two passes, so large coordinates lose no precision), then the inertia tensor's
  eigenvalues in closed form: ``axis_*_length = 4 sqrt(eigenvalue)``, ``eccentricity``,
  ``orientation`` (radians, ``0.5 atan2(-2 b, c - a)`` with ``(a, b, c)`` the tensor's entries;
  ``-pi/4`` or ``pi/4`` when ``a == c``, as scikit-image does);
- the 4-neighbourhood perimeter of :func:`skimage.measure.perimeter` (border pixels: a
  4-neighbour belongs to another object or the background; each weighted by its pattern of
  border neighbours of the same object), with one comparison per neighbour direction;
- the convex area as :func:`skimage.morphology.convex_hull_image` counts it (hull of the pixel
  edge midpoints of each row's and column's end pixels, pixels whose centres lie inside or on
  it): the end pixels are found for all objects at once, then one :class:`scipy.spatial.
  ConvexHull` and one :func:`skimage.measure.grid_points_in_poly` per object.

``tests/test_shapes.py`` checks the results against ``regionprops`` on real and random label
images. One caveat, inherited: an object whose two second moments are equal (a square, a
disc) has no defined orientation; scikit-image's answer then depends on the last bits of its
sums, so the two may give different angles for it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHAPE_COLUMNS", "shape_table"]

#: The columns of :func:`shape_table`, named as ``regionprops`` names them.
SHAPE_COLUMNS = (
    "perimeter",
    "axis_major_length",
    "axis_minor_length",
    "eccentricity",
    "orientation",
    "solidity",
)

# skimage.measure.perimeter: weight of each value of the 3x3 convolution [[10, 2, 10],
# [2, 1, 2], [10, 2, 10]] of the border image (odd values: the centre is a border pixel)
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + np.sqrt(2.0)) / 2.0
_EDGES = ((-1, 0), (1, 0), (0, -1), (0, 1))
_DIAGONALS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _shifted(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``out[r, c] = a[r + dr, c + dc]``, 0 outside the image."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)] = a[
        max(0, dr) : h - max(0, -dr), max(0, dc) : w - max(0, -dc)
    ]
    return out


def _perimeters(labels: np.ndarray, n: int) -> np.ndarray:
    inner = labels > 0
    for dr, dc in _EDGES:
        inner &= _shifted(labels, dr, dc) == labels
    border = np.where((labels > 0) & ~inner, labels, 0)
    code = (border > 0).astype(np.uint8)
    for step, weight in ((_EDGES, 2), (_DIAGONALS, 10)):
        for dr, dc in step:
            code += weight * ((_shifted(border, dr, dc) == border) & (border > 0)).astype(np.uint8)
    on = border > 0
    return np.bincount(border[on], weights=_PERIMETER_WEIGHTS[code[on]], minlength=n + 1)[1:]


def _moments(labels: np.ndarray, n: int):
    flat = labels.ravel()
    on = np.flatnonzero(flat)
    lab = flat[on]
    r, c = np.divmod(on, labels.shape[1])
    area = np.bincount(lab, minlength=n + 1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # absent labels: NaN
        dr = r - (np.bincount(lab, weights=r, minlength=n + 1) / area)[lab]
        dc = c - (np.bincount(lab, weights=c, minlength=n + 1) / area)[lab]
        mu20 = np.bincount(lab, weights=dr * dr, minlength=n + 1)[1:]
        mu02 = np.bincount(lab, weights=dc * dc, minlength=n + 1)[1:]
        mu11 = np.bincount(lab, weights=dr * dc, minlength=n + 1)[1:]
        area = area[1:]
        # skimage's inertia tensor [[a, b], [b, c]] = [[mu02, -mu11], [-mu11, mu20]] / mu00
        return mu02 / area, -mu11 / area, mu20 / area


def _axes(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    mean, root = (a + c) / 2.0, np.hypot((a - c) / 2.0, b)
    l1, l2 = np.clip(mean + root, 0.0, None), np.clip(mean - root, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(l1 == 0, 0.0, np.sqrt(np.clip(1.0 - l2 / l1, 0.0, None)))
    orientation = np.where(
        a - c == 0, np.where(b < 0, np.pi / 4.0, -np.pi / 4.0), 0.5 * np.arctan2(-2.0 * b, c - a)
    )
    return {
        "axis_major_length": 4.0 * np.sqrt(l1),
        "axis_minor_length": 4.0 * np.sqrt(l2),
        "eccentricity": ecc,
        "orientation": orientation,
    }


def _hull_points(labels: np.ndarray, n: int):
    """Candidate hull vertices of every object, in doubled (integer) coordinates.

    The midpoints of the four edges of the first and last pixel of every object in every row
    (the pixels between them add no hull vertex; ``convex_hull_image`` also takes the column
    ends, which add none either), without repeats (repeated points can trouble qhull), sorted by
    object: ``(bounds, rows2, cols2)`` with object ``i``'s points at ``bounds[i - 1]:bounds[i]``.
    """
    h, w = labels.shape
    flat = labels.ravel()
    on = np.flatnonzero(flat)  # raster order: within an object's row, columns ascend
    lab = flat[on].astype(np.int64)
    r, c = np.divmod(on, w)
    key = lab * h + r
    order = np.argsort(key, kind="stable")
    k = key[order]
    change = k[1:] != k[:-1]
    ends = order[np.r_[True, change] | np.r_[change, True]]
    rows2 = (2 * r[ends] + 1)[:, None] + np.array([-1, 1, 0, 0])
    cols2 = (2 * c[ends] + 1)[:, None] + np.array([0, 0, -1, 1])
    h2, w2 = 2 * h + 1, 2 * w + 1
    points = np.unique((lab[ends][:, None] * h2 + rows2) * w2 + cols2)
    obj, rest = np.divmod(points, h2 * w2)
    rows2, cols2 = np.divmod(rest, w2)
    return np.searchsorted(obj, np.arange(1, n + 2)), rows2, cols2


def _convex_areas(labels: np.ndarray, n: int) -> np.ndarray:
    from scipy.spatial import ConvexHull, QhullError
    from skimage.measure import grid_points_in_poly

    bounds, rows2, cols2 = _hull_points(labels, n)
    out = np.zeros(n)
    for i in range(n):
        lo, hi = bounds[i], bounds[i + 1]
        if lo == hi:
            continue
        rr, cc = rows2[lo:hi], cols2[lo:hi]
        r0, c0 = rr[0], cc.min()  # sorted by row: the first point is on the top edge
        pts = np.stack([rr - r0 - 1, cc - c0 - 1], axis=1) / 2.0  # the bounding box's frame
        shape = ((rr[-1] - r0) // 2, (cc.max() - c0) // 2)
        try:
            hull = ConvexHull(pts)
        except QhullError:  # as convex_hull_image: an empty hull
            continue
        inside = grid_points_in_poly(shape, hull.points[hull.vertices], binarize=False)
        out[i] = np.count_nonzero(inside >= 1)
    return out


def shape_table(labels: np.ndarray, n: int | None = None) -> dict[str, np.ndarray]:
    """``regionprops``' shape descriptors of objects ``1..n`` of a label image, as float64 arrays.

    Parameters
    ----------
    labels : (H, W) integer array
        0 background, objects ``1..n`` (an absent label gets perimeter 0 and NaN elsewhere).
    n : int, optional
        Number of objects (default: the largest label).

    Returns
    -------
    dict
        :data:`SHAPE_COLUMNS` -> ``(n,)`` float64 arrays in label order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got {labels.shape} {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    labels = labels.astype(np.int64, copy=False)
    n = int(labels.max(initial=0)) if n is None else int(n)
    if n == 0:
        return {name: np.zeros(0) for name in SHAPE_COLUMNS}
    area = np.bincount(labels.ravel(), minlength=n + 1)[1 : n + 1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        solidity = area / _convex_areas(labels, n)
    return {
        "perimeter": _perimeters(labels, n),
        **_axes(*_moments(labels, n)),
        "solidity": solidity,
    }
