"""neuroseg.masks: vectorised cell analysis equals the seed's flood fill, cell for cell."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from scipy import ndimage

from neuroseg import masks, reference
from neuroseg.masks import (
    COLUMNS,
    analyze_labels,
    analyze_mask,
    class_weights,
    label_mask,
    summarize_cells,
)

SEED_COLUMNS = ("area_px", "bbox_x", "bbox_y", "bbox_width", "bbox_height")


def as_seed_tuples(columns):
    return [tuple(int(columns[k][i]) for k in SEED_COLUMNS) for i in range(len(columns["area_px"]))]


def assert_same_as_seed(mask):
    expected = [tuple(c) for c in reference.markGroups(mask)]
    got = analyze_mask(mask)
    assert as_seed_tuples(got) == expected
    return got


def brute_force(mask, connectivity):
    """Independent oracle: scipy labels, then numpy per cell (slow but obviously right)."""
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, n = ndimage.label(mask > 127, structure=structure)
    rows = []
    for k in range(1, n + 1):
        r, c = np.nonzero(labels == k)
        rows.append((r.size, c.min(), r.min(), c.max() - c.min() + 1, r.max() - r.min() + 1))
    first = [np.flatnonzero(labels.ravel() == k)[0] for k in range(1, n + 1)]
    return [rows[i] for i in np.argsort(first)]


masks_strategy = st.tuples(st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 1.0)).flatmap(
    lambda t: hnp.arrays(
        np.uint8,
        (t[0], t[1]),
        elements=st.sampled_from([0, 255] if t[2] > 0.5 else [0, 0, 0, 255, 128, 127]),
    )
)


# --- known answers -------------------------------------------------------------------------


def test_known_mask_columns_and_order():
    mask = np.zeros((6, 8), np.uint8)
    mask[4:6, 0:2] = 255  # first pixel (4, 0): second in raster order
    mask[1, 3:7] = 200  # first pixel (1, 3): first
    mask[2, 6] = 255  # joins the row-1 run (4-connected, below (1, 6))
    mask[3, 7] = 128  # diagonal to (2, 6): separate with 4-connectivity
    mask[0, 0] = 127  # not foreground (> 127 only)
    cols = analyze_mask(mask)
    assert set(cols) == set(COLUMNS)
    assert cols["cell_id"].tolist() == [1, 2, 3]
    assert cols["area_px"].tolist() == [5, 1, 4]
    assert cols["bbox_x"].tolist() == [3, 7, 0]
    assert cols["bbox_y"].tolist() == [1, 3, 4]
    assert cols["bbox_width"].tolist() == [4, 1, 2]
    assert cols["bbox_height"].tolist() == [2, 1, 2]
    assert cols["centroid_x"].tolist() == pytest.approx([(3 + 4 + 5 + 6 + 6) / 5, 7.0, 0.5])
    assert cols["centroid_y"].tolist() == pytest.approx([(1 * 4 + 2) / 5, 3.0, 4.5])
    assert cols["touches_border"].tolist() == [False, True, True]
    assert cols["centroid_x"].dtype == np.float64
    assert cols["touches_border"].dtype == bool

    eight = analyze_mask(mask, connectivity=8)
    assert eight["area_px"].tolist() == [6, 4]
    labels, n = label_mask(mask)
    assert n == 3 and labels.dtype == np.int32
    assert labels[1, 3] == 1 and labels[3, 7] == 2 and labels[5, 1] == 3 and labels[0, 0] == 0


def test_threshold_and_bool_masks():
    mask = np.array([[100, 150, 0, 255]], np.uint8)
    assert analyze_mask(mask)["area_px"].tolist() == [1, 1]
    assert analyze_mask(mask, threshold=99)["area_px"].tolist() == [2, 1]
    assert analyze_mask(mask > 120)["area_px"].tolist() == [1, 1]
    floats = mask.astype(np.float32) / 255
    assert analyze_mask(floats, threshold=0.5)["area_px"].tolist() == [1, 1]


def test_empty_and_full_masks():
    for shape in [(0, 5), (3, 0), (4, 7)]:
        cols = analyze_mask(np.zeros(shape, np.uint8))
        assert set(cols) == set(COLUMNS)
        assert all(len(v) == 0 for v in cols.values())
        assert label_mask(np.zeros(shape, np.uint8))[1] == 0
    full = analyze_mask(np.full((3, 4), 255, np.uint8))
    assert full["area_px"].tolist() == [12] and full["touches_border"].tolist() == [True]
    assert full["centroid_x"].tolist() == [1.5] and full["centroid_y"].tolist() == [1.0]


def test_spiral_and_u_shapes_keep_raster_order():
    # A U whose arms start before a cell sitting between them: the U is still cell 1.
    mask = np.zeros((5, 7), np.uint8)
    mask[0:5, 0] = mask[0:5, 6] = mask[4, :] = 255
    mask[1, 3] = 255
    cols = assert_same_as_seed(mask)
    assert cols["area_px"].tolist() == [15, 1]
    # A spiral: long paths between runs of one component.
    spiral = np.zeros((11, 11), np.uint8)
    spiral[0, :] = spiral[:, 10] = spiral[10, :] = spiral[2:, 0] = 255
    spiral[2, 0:9] = spiral[2:9, 8] = spiral[8, 2:9] = spiral[4:9, 2] = spiral[4, 2:7] = 255
    assert_same_as_seed(spiral)


# --- equivalence with the seed and with scipy ---------------------------------------------


@settings(max_examples=150, deadline=None)
@given(masks_strategy)
def test_random_masks_equal_seed_mark_groups(mask):
    assert_same_as_seed(mask)


@settings(max_examples=100, deadline=None)
@given(masks_strategy, st.sampled_from([4, 8]))
def test_random_masks_equal_brute_force_and_labels(mask, connectivity):
    cols = analyze_mask(mask, connectivity=connectivity)
    assert as_seed_tuples(cols) == brute_force(mask, connectivity)
    labels, n = label_mask(mask, connectivity=connectivity)
    # scipy's numbering is the raster order of first pixels (the seed's order).
    present = labels.ravel()[labels.ravel() > 0]
    if n:
        _, first = np.unique(present, return_index=True)
        assert np.all(np.diff(first) > 0)
    from_labels = analyze_labels(labels, n)
    for key in COLUMNS:
        np.testing.assert_array_equal(from_labels[key], cols[key])
    if n:
        com = ndimage.center_of_mass(np.ones(labels.shape), labels, np.arange(1, n + 1))
        np.testing.assert_allclose(cols["centroid_y"], [c[0] for c in com])
        np.testing.assert_allclose(cols["centroid_x"], [c[1] for c in com])
        h, w = mask.shape
        right = cols["bbox_x"] + cols["bbox_width"]
        bottom = cols["bbox_y"] + cols["bbox_height"]
        border = (cols["bbox_x"] == 0) | (cols["bbox_y"] == 0) | (right == w) | (bottom == h)
        np.testing.assert_array_equal(cols["touches_border"], border)


def test_dense_blobs_equal_seed():
    rng = np.random.default_rng(3)
    noise = ndimage.gaussian_filter(rng.standard_normal((150, 170)), 2.0)
    mask = np.where(noise > np.quantile(noise, 0.6), 255, 0).astype(np.uint8)
    cols = assert_same_as_seed(mask)
    assert len(cols["area_px"]) > 30


@pytest.mark.fnc
def test_real_fnc_masks_equal_seed(fnc_root):
    paths = sorted(fnc_root.glob("*/masks/*.png"))
    assert len(paths) == 6
    total = 0
    for path in paths:
        mask = np.asarray(Image.open(path).convert("L"))  # as the seed's loader
        cols = assert_same_as_seed(mask)
        labels, n = label_mask(mask)
        assert n == len(cols["cell_id"])
        np.testing.assert_array_equal(analyze_labels(labels)["centroid_x"], cols["centroid_x"])
        total += n
    assert total > 50


# --- analyze_labels ------------------------------------------------------------------------


def test_analyze_labels_gaps_cap_and_validation():
    labels = np.zeros((4, 5), np.int64)
    labels[0, 0:2] = 3
    labels[2:4, 4] = 1
    labels[3, 0] = 3  # one label may be several pieces
    labels[1, 1] = 7
    cols = analyze_labels(labels)
    assert cols["cell_id"].tolist() == [1, 3, 7]
    assert cols["area_px"].tolist() == [2, 3, 1]
    assert cols["bbox_height"].tolist() == [2, 4, 1]
    capped = analyze_labels(labels, 5)
    assert capped["cell_id"].tolist() == [1, 3]
    assert analyze_labels(np.zeros((3, 3), np.int32))["cell_id"].size == 0
    with pytest.raises(ValueError, match="integer"):
        analyze_labels(labels.astype(float))
    with pytest.raises(ValueError, match=">= 0"):
        analyze_labels(-labels)
    with pytest.raises(ValueError, match="2-D"):
        analyze_labels(labels[None])


def test_input_validation():
    with pytest.raises(ValueError, match="2-D"):
        analyze_mask(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="connectivity"):
        analyze_mask(np.zeros((2, 2), np.uint8), connectivity=6)
    with pytest.raises(ValueError, match="connectivity"):
        label_mask(np.zeros((2, 2), np.uint8), connectivity=None)
    with pytest.raises(ValueError, match="dtype"):
        analyze_mask(np.array([["a"]]))


# --- summaries and class weights -----------------------------------------------------------


def seed_class_weights(marked, overall):
    """The notebook's cell, verbatim arithmetic."""
    total_unmarked = overall - marked
    marked_inv = overall / marked
    unmarked_inv = overall / total_unmarked
    norm = 1 / (marked_inv + unmarked_inv)
    return [unmarked_inv * norm, marked_inv * norm]


def test_class_weights_match_seed_formula_and_limits():
    assert list(class_weights(11_648, 1_920_000)) == seed_class_weights(11_648, 1_920_000)
    w0, w1 = class_weights(0, 100)
    assert (w0, w1) == (0.0, 1.0)
    assert class_weights(100, 100) == (1.0, 0.0)
    assert sum(class_weights(3, 7)) == pytest.approx(1.0)
    assert class_weights(3, 7)[0] == pytest.approx(3 / 7)
    with pytest.raises(ValueError, match="n_total"):
        class_weights(0, 0)
    with pytest.raises(ValueError, match="n_foreground"):
        class_weights(8, 7)


def test_summarize_cells_matches_seed_statistics():
    rng = np.random.default_rng(0)
    mask = np.where(ndimage.gaussian_filter(rng.random((200, 300)), 3) > 0.52, 255, 0)
    cells = reference.markGroups(mask.astype(np.uint8))
    cols = analyze_mask(mask)
    summary = summarize_cells(cols, total_pixels=mask.size)
    sizes = [c.nPixels for c in cells]
    widths = [c.width for c in cells]
    heights = [c.height for c in cells]
    assert summary["n_cells"] == len(cells)
    assert summary["foreground_pixels"] == sum(sizes)
    assert summary["total_pixels"] == mask.size
    assert summary["foreground_fraction"] == sum(sizes) / mask.size
    for p in (5, 25, 50, 75, 95):
        assert summary[f"area_p{p}"] == np.percentile(sizes, p)
        assert summary[f"width_p{p}"] == np.percentile(widths, p)
        assert summary[f"height_p{p}"] == np.percentile(heights, p)
    assert summary["class_weights"] == seed_class_weights(sum(sizes), mask.size)
    expected = math.ceil(max(np.percentile(widths, 95), np.percentile(heights, 95)))
    assert summary["suggested_overlap"] == expected
    other = summarize_cells(cols, total_pixels=mask.size, percentile=90)
    assert other["width_p90"] == np.percentile(widths, 90)
    assert other["suggested_overlap"] == math.ceil(
        max(np.percentile(widths, 90), np.percentile(heights, 90))
    )
    json.dumps(summary, allow_nan=False)


def test_summarize_cells_without_cells_and_validation():
    empty = analyze_mask(np.zeros((10, 10), np.uint8))
    summary = summarize_cells(empty, total_pixels=100)
    assert summary["n_cells"] == 0 and summary["foreground_fraction"] == 0.0
    assert summary["area_p50"] is None and summary["suggested_overlap"] is None
    assert summary["class_weights"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="bbox_width"):
        summarize_cells({"area_px": [1], "bbox_height": [1]}, total_pixels=4)
    with pytest.raises(ValueError, match="total_pixels"):
        summarize_cells({"area_px": [5], "bbox_width": [1], "bbox_height": [5]}, total_pixels=4)
    with pytest.raises(ValueError, match="percentile"):
        summarize_cells(empty, total_pixels=100, percentile=101)


def test_module_is_light():
    code = (
        "import sys, neuroseg.masks, neuroseg.reference; "
        "assert 'tensorflow' not in sys.modules, 'tf loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert masks.__all__
