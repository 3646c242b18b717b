"""neuroseg.shapes: the per-cell shape columns, checked against skimage's regionprops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops, regionprops_table

from neuroseg.shapes import SHAPE_COLUMNS, shape_table


def _random_labels(seed: int, shape=(120, 150)) -> np.ndarray:
    """Irregular objects with holes and concavities, touching ones split apart, objects cut by
    the image edge, single pixels and one-pixel-wide lines."""
    rng = np.random.default_rng(seed)
    blobs = ndi.gaussian_filter(rng.normal(size=shape), 2.5) > 0.05
    labels, n = ndi.label(blobs)
    # split some objects in two along a column: touching objects of different labels
    cut = labels.copy()
    cut[:, ::17] = np.where(labels[:, ::17] > 0, labels[:, ::17] + n, 0)
    labels = cut
    labels[rng.integers(0, shape[0], 5), rng.integers(0, shape[1], 5)] = (
        labels.max() + 1 + np.arange(5)
    )
    labels[3, 10:40] = labels.max() + 1  # a horizontal line
    labels[50:90, 2] = labels.max() + 1  # a vertical one on the edge
    from neuroseg.predict import relabel_raster

    return relabel_raster(labels)[0]


def _angle_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Difference of two orientations modulo pi (-pi/2 and pi/2 are the same axis)."""
    return np.abs((a - b + np.pi / 2) % np.pi - np.pi / 2)


def _check_against_regionprops(labels: np.ndarray) -> int:
    n = int(labels.max())
    ours = shape_table(labels, n)
    ref = regionprops_table(labels, properties=SHAPE_COLUMNS)
    assert set(ours) == set(SHAPE_COLUMNS) and all(v.shape == (n,) for v in ours.values())
    for name in ("perimeter", "axis_major_length", "axis_minor_length", "eccentricity", "solidity"):
        np.testing.assert_allclose(ours[name], ref[name], rtol=1e-9, atol=1e-9, err_msg=name)
    # orientation is undefined where the two second moments are equal (a disc, a square, a
    # pixel): skimage's angle then depends on the last bits of its sums
    tensors = np.array([p.inertia_tensor for p in regionprops(labels)])
    a, c = tensors[:, 0, 0], tensors[:, 1, 1]
    defined = np.abs(a - c) > 1e-9 * (a + c)
    assert (_angle_gap(ours["orientation"][defined], ref["orientation"][defined]) < 1e-7).all()
    return int(defined.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_objects_match_regionprops(seed):
    labels = _random_labels(seed)
    assert labels.max() > 30
    assert _check_against_regionprops(labels) > 20


def test_real_nucleus_labels_match_regionprops(nuclei_root):
    sets = [nuclei_root / name / "labels" for name in ("bbbc039", "dsb2018")]
    from neuroseg.images import read_labels
    from neuroseg.predict import relabel_raster

    checked = 0
    for folder in sets:
        for path in sorted(folder.iterdir())[:3]:
            labels, n = relabel_raster(read_labels(str(path)).astype(np.int32))
            if n:
                checked += _check_against_regionprops(labels)
    assert checked > 100


def test_known_shapes_and_edge_cases():
    labels = np.zeros((40, 50), np.int32)
    labels[5:15, 5:25] = 1  # a 10x20 rectangle: major axis along the columns
    labels[20:30, 30:40] = 2  # an L: a 10x10 square less a 5x5 corner
    labels[25:30, 35:40] = 0
    out = shape_table(labels)
    assert out["solidity"][0] == pytest.approx(1.0)
    assert out["solidity"][1] < 1.0
    assert abs(out["orientation"][0]) == pytest.approx(np.pi / 2)
    assert out["axis_major_length"][0] > out["axis_minor_length"][0]
    assert out["perimeter"][0] == pytest.approx(regionprops(labels)[0].perimeter)
    empty = shape_table(np.zeros((8, 8), np.uint16))
    assert all(v.shape == (0,) for v in empty.values())
    with pytest.raises(ValueError, match="2-D integer"):
        shape_table(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="negative"):
        shape_table(-np.ones((4, 4), np.int32))


@pytest.mark.parametrize("seed", range(3))
def test_hull_lattice_counts_equal_grid_points_in_poly(seed):
    """The grid points counted for all hulls at once are those grid_points_in_poly marks
    (inside, vertex or edge), on random hulls of doubled-integer points: lattice vertices,
    horizontal and vertical edges, slivers and single rows all occur."""
    from scipy.spatial import ConvexHull
    from skimage.measure import grid_points_in_poly

    from neuroseg.shapes import _lattice_counts

    rng = np.random.default_rng(seed)
    owners, rows, cols, expected = [], [], [], []
    for i in range(300):
        h, w = rng.integers(1, 12, 2)
        k = int(rng.integers(3, 12))
        pts = np.stack([rng.integers(-1, 2 * h, k), rng.integers(-1, 2 * w, k)], axis=1)
        if i % 7 == 0:  # an axis-aligned box: horizontal and vertical edges
            pts = np.array([[-1, -1], [-1, 2 * w - 1], [2 * h - 1, 2 * w - 1], [2 * h - 1, -1]])
        try:
            hull = ConvexHull(pts)
        except Exception:  # collinear: no hull, as shape_table treats it
            continue
        verts = pts[hull.vertices]
        inside = grid_points_in_poly((h, w), verts / 2.0, binarize=False)
        expected.append(np.count_nonzero(inside >= 1))
        owners.append(np.full(len(verts), len(expected) - 1))
        rows.append(verts[:, 0])
        cols.append(verts[:, 1])
    got = _lattice_counts(
        np.concatenate(owners), np.concatenate(rows), np.concatenate(cols), len(expected)
    )
    assert len(expected) > 200
    np.testing.assert_array_equal(got, expected)
