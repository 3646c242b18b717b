"""Shape descriptors of every object of a label image at once, as ``regionprops`` defines them.

:func:`skimage.measure.regionprops_table` computes ``perimeter``, ``axis_major_length``,
``axis_minor_length``, ``eccentricity``, ``orientation`` and ``solidity`` object by object,
each from a cropped copy of the object: 0.10 s for the 129 nuclei of a 520x696 BBBC039 image
on one core here, most of the cost of writing their per-cell records. :func:`shape_table` gives
the same numbers in 0.045 s, with passes over the objects' pixels:

- second moments of every object with :func:`numpy.bincount` (centred on each object's own
  centroid, two passes, so large coordinates lose no precision), then the inertia tensor's
  eigenvalues in closed form: ``axis_*_length = 4 sqrt(eigenvalue)``, ``eccentricity``,
  ``orientation`` (radians, ``0.5 atan2(-2 b, c - a)`` with ``(a, b, c)`` the tensor's entries;
  ``-pi/4`` or ``pi/4`` when ``a == c``, as scikit-image does);
- the 4-neighbourhood perimeter of :func:`skimage.measure.perimeter` (border pixels: a
  4-neighbour belongs to another object or the background; each weighted by its pattern of
  border neighbours of the same object), neighbours looked up by flat index;
- the convex area as :func:`skimage.morphology.convex_hull_image` counts it (pixels whose
  centres lie inside or on the hull of the pixels' edge midpoints): the end pixels of every
  object's runs in every row are found for all objects at once, then one
  :class:`scipy.spatial.ConvexHull` per object (the remaining per-object cost, ~0.1 ms), and
  the grid points inside or on all the hulls are counted at once, row spans in integer
  arithmetic (the points :func:`skimage.measure.grid_points_in_poly` finds, without its
  per-object mask).

``tests/test_shapes.py`` checks the results against ``regionprops`` on real and random label
images (equal to 1e-9). One caveat, inherited: an object whose two second moments are equal (a
square, a disc) has no defined orientation; scikit-image's answer then depends on the last bits
of its sums, so the two may give different angles for it; and -pi/2 and pi/2 are the same axis.
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


def _perimeters(flat: np.ndarray, on: np.ndarray, lab: np.ndarray, stride: int, n: int):
    """skimage's 4-neighbourhood perimeter of every object, from the padded labels ``flat``
    (rows of ``stride`` pixels), the flat indices ``on`` of the objects' pixels and their
    labels ``lab``."""
    edges = (-stride, stride, -1, 1)
    inner = np.ones(on.size, bool)
    for step in edges:
        inner &= flat[on + step] == lab
    idx, own = on[~inner], lab[~inner]
    border = np.zeros(flat.size, flat.dtype)  # labels of the border pixels only
    border[idx] = own
    code = np.ones(idx.size, np.uint8)
    for steps, weight in ((edges, 2), ((-stride - 1, -stride + 1, stride - 1, stride + 1), 10)):
        for step in steps:
            code += weight * (border[idx + step] == own).astype(np.uint8)
    return np.bincount(own, weights=_PERIMETER_WEIGHTS[code], minlength=n + 1)[1 : n + 1]


def _moments(r: np.ndarray, c: np.ndarray, lab: np.ndarray, n: int):
    """Area and skimage's inertia tensor entries ``(a, b, c)`` of objects ``1..n``."""
    area = np.bincount(lab, minlength=n + 1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # absent labels: NaN
        dr = r - (np.bincount(lab, weights=r, minlength=n + 1) / area)[lab]
        dc = c - (np.bincount(lab, weights=c, minlength=n + 1) / area)[lab]
        mu20 = np.bincount(lab, weights=dr * dr, minlength=n + 1)[1:]
        mu02 = np.bincount(lab, weights=dc * dc, minlength=n + 1)[1:]
        mu11 = np.bincount(lab, weights=dr * dc, minlength=n + 1)[1:]
        area = area[1:]
        # skimage's inertia tensor [[a, b], [b, c]] = [[mu02, -mu11], [-mu11, mu20]] / mu00
        return area, (mu02 / area, -mu11 / area, mu20 / area)


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


def _hull_points(flat, on, lab, r, c, n: int):
    """Candidate hull vertices of every object, in doubled (integer) coordinates.

    The midpoints of the four edges of the first and last pixel of every run of an object in a
    row (the pixels between them add no hull vertex; ``convex_hull_image`` takes each row's and
    column's end pixels, whose hull is the same), without repeats (repeated points can trouble
    qhull), sorted by object: ``(bounds, rows2, cols2)``, object ``i``'s points at
    ``bounds[i - 1]:bounds[i]``. Found in one pass over the objects' pixels (``on``, their
    labels ``lab`` and coordinates ``r, c`` in the padded labels ``flat``), no sorting of them.
    """
    ends = np.flatnonzero((flat[on - 1] != lab) | (flat[on + 1] != lab))
    r, c = r[ends], c[ends]
    h2, w2 = 2 * int(r.max()) + 3, 2 * int(c.max()) + 3
    rows2 = (2 * r + 1)[:, None] + np.array([-1, 1, 0, 0])
    cols2 = (2 * c + 1)[:, None] + np.array([0, 0, -1, 1])
    points = np.unique((lab[ends].astype(np.int64)[:, None] * h2 + rows2) * w2 + cols2)
    obj, rest = np.divmod(points, h2 * w2)
    rows2, cols2 = np.divmod(rest, w2)
    return np.searchsorted(obj, np.arange(1, n + 2)), rows2, cols2


def _lattice_counts(owner: np.ndarray, rows2: np.ndarray, cols2: np.ndarray, n: int):
    """Grid points ``(i, j)`` inside or on each object's convex polygon, all objects at once.

    The polygons' vertices are in doubled integer coordinates (``2 i``, ``2 j`` is grid point
    ``(i, j)``), in order around each polygon (``owner`` the object of each vertex, polygons
    contiguous). Every non-horizontal edge meets the rows ``2 i`` it spans at a rational column
    ``num / den``; per object and row, the span is from the smallest crossing to the largest and
    holds ``floor(max / 2) - ceil(min / 2) + 1`` grid points. Integer arithmetic throughout, so
    a point on an edge or a vertex counts exactly as ``grid_points_in_poly``'s O'Rourke test
    finds it (its crossing signs are exact for such coordinates): 1 (inside), 2 (vertex) and 3
    (edge) all count, as ``convex_hull_image`` counts them.
    """
    if not owner.size:
        return np.zeros(n, np.int64)
    # edges: each vertex to the next one of the same polygon (the last back to the first)
    first = np.r_[0, np.flatnonzero(np.diff(owner)) + 1]
    nxt = np.arange(1, owner.size + 1)
    nxt[np.r_[first[1:], owner.size] - 1] = first
    r0, c0, r1, c1 = rows2, cols2, rows2[nxt], cols2[nxt]
    keep = r0 != r1
    swap = r1 < r0
    r0, r1 = np.where(swap, r1, r0), np.where(swap, r0, r1)
    c0, c1 = np.where(swap, c1, c0), np.where(swap, c0, c1)
    r0, c0, r1, c1, obj = r0[keep], c0[keep], r1[keep], c1[keep], owner[keep]
    # the even rows each edge spans, inclusive
    lo = r0 + (r0 & 1)
    hi = r1 - (r1 & 1)
    count = np.maximum((hi - lo) // 2 + 1, 0)
    edge = np.repeat(np.arange(count.size), count)
    step = np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count)
    y = lo[edge] + 2 * step
    den = (r1 - r0)[edge]
    num = c0[edge] * den + (y - r0[edge]) * (c1 - c0)[edge]
    floor_half = num // (2 * den)  # floor(column / 2): den > 0
    ceil_half = -((-num) // (2 * den))
    # per (object, row): the largest floor and the smallest ceiling
    stride = int(rows2.max()) + 2  # more rows than any polygon spans
    key = obj[edge].astype(np.int64) * stride + y // 2
    order = np.argsort(key, kind="stable")
    key, floor_half, ceil_half = key[order], floor_half[order], ceil_half[order]
    starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    span = np.maximum.reduceat(floor_half, starts) - np.minimum.reduceat(ceil_half, starts) + 1
    counts = np.bincount(key[starts] // stride, weights=np.maximum(span, 0), minlength=n)
    return np.rint(counts).astype(np.int64)


def _convex_areas(bounds: np.ndarray, rows2: np.ndarray, cols2: np.ndarray) -> np.ndarray:
    """Pixels of each object's convex hull image: one qhull per object, then all the hulls'
    grid points counted at once (:func:`_lattice_counts`)."""
    from scipy.spatial import ConvexHull, QhullError

    n = bounds.size - 1
    owners, hull_rows, hull_cols = [], [], []
    for i in range(n):
        lo, hi = bounds[i], bounds[i + 1]
        if lo == hi:
            continue
        rr, cc = rows2[lo:hi], cols2[lo:hi]
        r0, c0 = rr[0], cc.min()  # sorted by row: the first point is on the top edge
        # the bounding box's frame, doubled: grid point (i, j) of the box is (2 i, 2 j)
        pts = np.stack([rr - r0 - 1, cc - c0 - 1], axis=1)
        try:
            vertices = ConvexHull(pts).vertices  # in order around the hull
        except QhullError:  # as convex_hull_image: an empty hull
            continue
        owners.append(np.full(vertices.size, i))
        hull_rows.append(pts[vertices, 0])
        hull_cols.append(pts[vertices, 1])
    if not owners:
        return np.zeros(n)
    counts = _lattice_counts(
        np.concatenate(owners),
        np.concatenate(hull_rows).astype(np.int64),
        np.concatenate(hull_cols).astype(np.int64),
        n,
    )
    return counts.astype(np.float64)


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
    n = int(labels.max(initial=0)) if n is None else int(n)
    if n == 0:
        return {name: np.zeros(0) for name in SHAPE_COLUMNS}
    # one background pixel around the image: every neighbour lookup stays inside
    h, w = labels.shape
    padded = np.zeros((h + 2, w + 2), labels.dtype)
    padded[1:-1, 1:-1] = labels
    flat = padded.ravel()
    on = np.flatnonzero(flat)
    lab = flat[on]
    r, c = np.divmod(on, w + 2)  # padded coordinates: the moments are central, the hulls local
    area, tensor = _moments(r, c, lab, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        solidity = area / _convex_areas(*_hull_points(flat, on, lab, r, c, n))
    return {
        "perimeter": _perimeters(flat, on, lab, w + 2, n),
        **_axes(*tensor),
        "solidity": solidity,
    }
