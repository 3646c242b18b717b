"""Three-class targets and their post-processing into instances (known answers)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from neuroseg.instances import (
    BOUNDARY,
    CENTRE,
    INTERIOR,
    POSTPROCESS_DEFAULTS,
    POSTPROCESS_GRID,
    centre_targets,
    instances_from_classes,
    separation_targets,
    sweep_leave_one_out,
    sweep_postprocessing,
    three_class_targets,
    typical_area,
)
from neuroseg.metrics import iou_matching


def touching_discs(shape=(60, 90), centres=((30, 30), (30, 56)), radius=14) -> np.ndarray:
    """Two discs that overlap; each overlapping pixel goes to the nearer centre."""
    rr, cc = np.indices(shape)
    dist = np.stack([np.hypot(rr - r, cc - c) for r, c in centres])
    labels = np.where(dist.min(axis=0) <= radius, dist.argmin(axis=0) + 1, 0)
    return labels.astype(np.int32)


def one_hot(classes: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[classes]


def test_targets_draw_a_boundary_line_between_touching_discs():
    labels = touching_discs()
    classes = three_class_targets(labels)
    assert classes.dtype == np.uint8 and set(np.unique(classes)) == {0, 1, 2}
    np.testing.assert_array_equal(classes == BOUNDARY, find_boundaries(labels, mode="inner"))
    np.testing.assert_array_equal(classes > 0, labels > 0)
    # the contact column: both sides of the line are boundary, so the interiors are apart
    rows, cols = np.nonzero((labels[:, :-1] == 1) & (labels[:, 1:] == 2))
    assert rows.size and (classes[rows, cols] == BOUNDARY).all()
    assert (classes[rows, cols + 1] == BOUNDARY).all()
    _, n_interiors = ndi.label(classes == INTERIOR)
    assert n_interiors == 2
    _, n_foreground = ndi.label(classes > 0)
    assert n_foreground == 1  # one blob without the boundary class
    thick = three_class_targets(labels, boundary_width=2)
    assert (thick == BOUNDARY).sum() > (classes == BOUNDARY).sum()
    assert ((classes == BOUNDARY) <= (thick == BOUNDARY)).all()


def test_small_objects_keep_a_thin_boundary_and_a_marker_of_their_own():
    """``small_area``: a micronucleus beside a nucleus is all boundary at width 2, so the
    watershed hands it to its neighbour; with a 1-px boundary its interior seeds its own."""
    rr, cc = np.indices((12, 24))
    labels = np.zeros((12, 24), np.int32)
    labels[(rr - 5) ** 2 + (cc - 5) ** 2 <= 5] = 3  # 21 px
    labels[(rr - 5) ** 2 + (cc - 13) ** 2 <= 30] = 4  # touches it
    thick = three_class_targets(labels, boundary_width=2)
    assert (thick[labels == 3] == INTERIOR).sum() == 1
    kept = three_class_targets(labels, boundary_width=2, small_area=40)
    small = labels == 3
    np.testing.assert_array_equal(kept[small], three_class_targets(labels)[small])
    np.testing.assert_array_equal(kept[~small], thick[~small])  # the large one keeps width 2
    assert (kept[small] == INTERIOR).sum() == 9
    assert not (three_class_targets(labels, boundary_width=2, small_area=21) != thick).any()
    # its interior seeds a marker of its own: the perfect prediction gives both back
    pred, n = instances_from_classes(one_hot(kept), min_marker_area=4, min_area=0)
    assert n == 2 and iou_matching(labels, pred, thresholds=[0.8])["tp"] == [2]
    pred, n = instances_from_classes(one_hot(thick), min_marker_area=4, min_area=0)
    assert n == 1
    with pytest.raises(ValueError, match="small_area"):
        three_class_targets(labels, small_area=-2)


def test_small_peak_keeps_confident_small_objects_only():
    """``small_peak``: an object under ``min_area`` stays when its interior probability peaks
    above it; a faint speck of the same size goes, large objects are never touched."""
    labels = np.zeros((30, 40), np.int32)
    labels[3:8, 3:8] = 1  # 25 px, confident
    labels[3:8, 20:25] = 2  # 25 px, faint
    labels[15:27, 15:27] = 3  # 144 px, faint too
    probs = one_hot(three_class_targets(labels))
    faint = (labels >= 2) & (probs[..., INTERIOR] > 0)
    probs[faint] = [0.2, 0.45, 0.35]
    kw = {"interior_threshold": 0.3, "min_area": 30}
    _, n = instances_from_classes(probs, **kw)
    assert n == 1  # the default (1.0) drops both small ones
    pred, n = instances_from_classes(probs, **kw, small_peak=0.9)
    assert n == 2 and pred[5, 5] and not pred[5, 22] and pred[20, 20]
    assert list(np.unique(pred)) == [0, 1, 2]  # renumbered without gaps
    _, n = instances_from_classes(probs, **kw, small_peak=0.4)
    assert n == 3
    # the sweep can choose it, and stores it with the other parameters
    best = sweep_postprocessing(
        [probs],
        [labels],
        grid={"interior_threshold": [0.3], "min_area": [30], "small_peak": [1.0, 0.4]},
    )
    assert best["params"]["small_peak"] == 0.4 and best["scores"]["f1_50"] == 1.0
    with pytest.raises(ValueError, match="small_peak"):
        instances_from_classes(probs, small_peak=1.5)


def test_targets_edge_cut_and_empty():
    labels = np.zeros((10, 10), np.int32)
    labels[:4, :4] = 7  # cut by the top-left corner
    classes = three_class_targets(labels)
    assert classes[0, 0] == INTERIOR and classes[3, 3] == BOUNDARY and classes[0, 3] == BOUNDARY
    assert classes[5, 5] == 0
    assert not three_class_targets(np.zeros((5, 6), np.uint16)).any()
    with pytest.raises(ValueError, match="integer"):
        three_class_targets(np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="boundary_width"):
        three_class_targets(labels, boundary_width=0)


def test_perfect_probabilities_give_back_the_two_discs():
    labels = touching_discs()
    probs = one_hot(three_class_targets(labels))
    pred, n = instances_from_classes(probs)
    assert n == 2 and pred.dtype == np.int32
    match = iou_matching(labels, pred, thresholds=[0.9])
    assert match["tp"] == [2] and match["fp"] == [0] and match["fn"] == [0]
    assert set(np.unique(pred)) == {0, 1, 2} and pred[30, 30] == 1 and pred[30, 56] == 2
    np.testing.assert_array_equal(pred > 0, labels > 0)  # the boundary ring stays in the objects


def test_foreground_threshold_min_area_and_markerless_objects():
    labels = touching_discs()
    probs = one_hot(three_class_targets(labels))
    probs[2:5, 2:5] = (0.0, 0.0, 1.0)  # a 9 px object predicted all boundary: no marker
    pred, n = instances_from_classes(probs, min_area=0)
    assert n == 3 and pred[3, 3] == 1  # first in raster order
    assert instances_from_classes(probs, min_area=10)[1] == 2
    soft = probs * 0.5 + np.array([0.5, 0.0, 0.0], np.float32)  # foreground prob 0.5 at most
    assert instances_from_classes(soft)[1] == 0
    assert instances_from_classes(soft, foreground_threshold=0.4, interior_threshold=0.4)[1] == 2
    # markers dropped: the foreground is still found, as one marker-less object per blob
    pred, n = instances_from_classes(probs, min_area=0, min_marker_area=10_000)
    assert n == 2 and pred[30, 30] == pred[30, 56] == 2
    with pytest.raises(ValueError, match="probs"):
        instances_from_classes(probs[..., :2])
    with pytest.raises(ValueError, match="interior_threshold"):
        instances_from_classes(probs, interior_threshold=1.0)
    with pytest.raises(ValueError, match="min_area"):
        instances_from_classes(probs, min_area=-1)


def test_sweep_picks_the_parameters_that_split_the_discs():
    labels = touching_discs()
    probs = one_hot(three_class_targets(labels))
    # blurred interior: at a high interior threshold the two markers appear, at a low one the
    # interior bridges the contact line and the discs merge
    probs[..., INTERIOR] = np.where(labels > 0, 0.45, 0.0)
    probs[labels > 0, 1] += 0.4 * (three_class_targets(labels, boundary_width=3)[labels > 0] == 1)
    probs[..., BOUNDARY] = np.where(labels > 0, 1.0 - probs[..., INTERIOR], 0.0)
    probs[..., 0] = 1.0 - probs[..., 1] - probs[..., 2]
    out = sweep_postprocessing(
        [probs, probs], [labels, labels], grid={"interior_threshold": [0.3, 0.6]}
    )
    assert out["params"]["interior_threshold"] == 0.6
    assert set(out["params"]) == set(POSTPROCESS_DEFAULTS)
    assert len(out["table"]) == 2 and out["table"][0]["f1_50"] < out["table"][1]["f1_50"] == 1.0
    assert out["scores"]["n_images"] == 2 and out["scores"]["mean_ap"] > 0.5
    with pytest.raises(ValueError, match="unknown grid"):
        sweep_postprocessing([probs], [labels], grid={"sigma": [1]})
    with pytest.raises(ValueError, match="as many"):
        sweep_postprocessing([probs], [])


def _cells_and_specks(n_cells: int, n_specks: int, small_true: bool = False):
    """Probability map with ``n_cells`` 12x12 cells and ``n_specks`` 3x3 predicted specks on a
    row; the truth has the cells, and the specks too where ``small_true``."""
    labels = np.zeros((20, 20 * (n_cells + n_specks)), np.int32)
    for k in range(n_cells):
        labels[4:16, 20 * k + 4 : 20 * k + 16] = k + 1
    specks = np.zeros_like(labels)
    for k in range(n_specks):
        c = 20 * (n_cells + k) + 9
        specks[9:12, c : c + 3] = n_cells + k + 1
    probs = one_hot(three_class_targets(labels + specks))
    return probs, labels + specks if small_true else labels


def test_leave_one_out_sweep_never_scores_an_image_with_parameters_chosen_on_it():
    # images 0 and 1: specks are false positives (a large min_area wins on them); image 2: its
    # speck is a real cell, so alone it would choose the small min_area (F1 1.0 against 0.8)
    maps = [_cells_and_specks(3, 4), _cells_and_specks(2, 5), _cells_and_specks(2, 1, True)]
    probs, truths = zip(*maps, strict=True)
    grid = {"min_area": [4, 50]}
    out = sweep_leave_one_out(probs, truths, ["a", "a", "a"], grid=grid)
    assert len(out["points"]) == 2 and [p["min_area"] for p in out["points"]] == [4, 50]
    chosen = [im["params"]["min_area"] for im in out["per_image"]]
    assert chosen == [50, 50, 50]  # image 2 is scored with what images 0 and 1 chose
    counts = [(im["tp"], im["fp"], im["fn"]) for im in out["per_image"]]
    assert counts == [(3, 0, 0), (2, 0, 0), (2, 0, 1)]
    assert out["per_image"][2]["true_count"] == 3 and out["per_image"][2]["pred_count"] == 2
    # on all three: min_area 4 gives 8 TP, 9 FP, 0 FN (F1 0.64); 50 gives 7, 0, 1 (F1 14/15)
    assert out["final"]["min_area"] == 50 and out["final_score"] == pytest.approx(14 / 15)
    assert set(out["final"]) == set(POSTPROCESS_DEFAULTS)
    with pytest.raises(ValueError, match="one group per image"):
        sweep_leave_one_out(probs, truths, ["a"], grid=grid)
    with pytest.raises(ValueError, match=">= 2 images"):
        sweep_leave_one_out(probs[:1], truths[:1], ["a"], grid=grid)


def test_leave_one_out_sweep_weighs_each_group_the_same():
    # group a: 20 cells and 8 false specks; group b: 1 cell and 2 real specks. Pooled over all
    # cells min_area 50 wins (F1 0.955 against 0.852); by the mean of the groups' F1, 4 does
    # (0.917 against 0.75)
    maps = [_cells_and_specks(10, 4), _cells_and_specks(10, 4), _cells_and_specks(1, 2, True)]
    probs, truths = zip(*maps, strict=True)
    grid = {"min_area": [4, 50]}
    assert sweep_leave_one_out(probs, truths, ["a", "a", "a"], grid=grid)["final"]["min_area"] == 50
    grouped = sweep_leave_one_out(probs, truths, ["a", "a", "b"], grid=grid)
    assert grouped["final"]["min_area"] == 4
    assert grouped["final_score"] == pytest.approx((40 / 48 + 1.0) / 2)
    # without image 2 only group a is left, where 50 wins
    assert [im["params"]["min_area"] for im in grouped["per_image"]] == [4, 4, 50]


def test_centre_targets_peak_at_centres_and_dip_at_the_neck():
    labels = touching_discs()
    centre = centre_targets(labels)
    assert centre.dtype == np.float32 and centre.shape == labels.shape
    assert (centre[labels == 0] == 0).all() and (centre[labels > 0] > 0).all()
    for value, (r, c) in ((1, (30, 30)), (2, (30, 56))):
        own = labels == value
        assert centre[own].max() == 1.0
        peak = np.unravel_index(np.argmax(np.where(own, centre, -1)), labels.shape)
        assert abs(peak[0] - r) <= 1 and abs(peak[1] - c) <= 1
    # each object's distance is to its own outline: low on both sides of the contact line
    rows, cols = np.nonzero((labels[:, :-1] == 1) & (labels[:, 1:] == 2))
    assert centre[rows, cols].max() < 0.2 and centre[rows, cols + 1].max() < 0.2
    # a small object reaches 1 too (normalised per object)
    small = np.zeros((20, 20), np.int32)
    small[5:8, 5:8] = 3
    assert centre_targets(small)[6, 6] == 1.0 and centre_targets(small)[5, 5] < 1.0


def test_centre_targets_continue_objects_past_the_image_edge():
    labels = np.zeros((20, 20), np.int32)
    labels[:, :6] = 1  # a band cut by the top, bottom and left edges
    centre = centre_targets(labels)
    # distance to the only real outline (column 6): the same down the whole band
    np.testing.assert_allclose(centre[:, 0], 1.0)
    np.testing.assert_allclose(centre[0], centre[10])
    assert centre[10, 5] < centre[10, 0]
    assert not centre_targets(np.zeros((4, 5), np.uint16)).any()
    with pytest.raises(ValueError, match="integer"):
        centre_targets(np.zeros((5, 5), np.float32))


def test_separation_targets_mark_contacts_and_narrow_gaps_only():
    labels = touching_discs()
    sep = separation_targets(labels)
    assert sep.dtype == bool and sep.shape == labels.shape
    # the contact line of the two discs is marked on both sides, their far sides are not
    rows, cols = np.nonzero((labels[:, :-1] == 1) & (labels[:, 1:] == 2))
    assert len(rows) and sep[rows, cols].all() and sep[rows, cols + 1].all()
    assert not sep[30, 16:25].any() and not sep[30, 62:71].any()
    # exactly the pixels within 2 px (chessboard) of both objects
    near = [ndi.binary_dilation(labels == v, np.ones((5, 5), bool)) for v in (1, 2)]
    np.testing.assert_array_equal(sep, near[0] & near[1])
    # a gap of 3 px (2 * radius - 1) between two squares: its middle column is marked with
    # radius 2, nothing with radius 1; a gap of 4 px is not marked
    gap = np.zeros((12, 20), np.int32)
    gap[2:10, 2:8], gap[2:10, 11:17] = 4, 9
    assert separation_targets(gap)[2:10, 9].all() and not separation_targets(gap)[:, 8].any()
    assert not separation_targets(gap, radius=1).any()
    gap[2:10, 11] = 0
    assert not separation_targets(gap).any()
    # a lone object, however large its id, has nothing to part from
    lone = np.zeros((10, 10), np.uint16)
    lone[2:8, 2:8] = 65535
    assert not separation_targets(lone).any()
    with pytest.raises(ValueError, match="radius"):
        separation_targets(labels, radius=0)
    with pytest.raises(ValueError, match="integer"):
        separation_targets(labels.astype(np.float32))


def test_separation_targets_mark_small_objects_with_a_ring():
    """``small_area``: an object under that many pixels is marked whole with the ring of one
    pixel around it (where its outline is learnt); larger objects and lone ones stay unmarked."""
    labels = np.zeros((30, 30), np.int32)
    labels[3:6, 3:7] = 7  # 12 px, a micronucleus
    labels[15:25, 15:25] = 2  # 100 px
    assert not separation_targets(labels).any()
    sep = separation_targets(labels, small_area=13)
    np.testing.assert_array_equal(sep, ndi.binary_dilation(labels == 7, np.ones((3, 3), bool)))
    assert sep.sum() == 5 * 6
    # the threshold is strict: 12 px is not under 12
    assert not separation_targets(labels, small_area=12).any()
    assert separation_targets(labels, small_area=101)[14:26, 14:26].all()
    # still the contact lines of close objects, whatever their size
    both = separation_targets(touching_discs(), small_area=13)
    np.testing.assert_array_equal(both, separation_targets(touching_discs()))
    assert not separation_targets(np.zeros((4, 4), np.int32), small_area=50).any()
    with pytest.raises(ValueError, match="small_area"):
        separation_targets(labels, small_area=-1)


def _joined_interiors_with_centre() -> tuple[np.ndarray, np.ndarray]:
    """Two touching discs whose predicted interior joins them (no boundary line between them)
    but whose centre map dips at the contact: only centre markers split them."""
    labels = touching_discs()
    probs = np.zeros((*labels.shape, 4), np.float32)
    probs[..., 0] = labels == 0
    probs[..., INTERIOR] = labels > 0
    probs[..., CENTRE] = centre_targets(labels)
    return labels, probs


def test_centre_markers_split_what_the_interior_joins():
    labels, probs = _joined_interiors_with_centre()
    assert instances_from_classes(probs, markers="interior")[1] == 1
    pred, n = instances_from_classes(probs, markers="centre", interior_threshold=0.5)
    assert n == 2
    match = iou_matching(labels, pred, thresholds=[0.8])
    assert match["tp"] == [2] and match["fp"] == [0]
    with pytest.raises(ValueError, match="centre map"):
        instances_from_classes(probs[..., :3], markers="centre")
    with pytest.raises(ValueError, match="markers"):
        instances_from_classes(probs, markers="peaks")


def test_sweep_lets_centre_markers_compete_when_there_is_a_centre_map():
    labels, probs = _joined_interiors_with_centre()
    grid = {"interior_threshold": [0.5], "markers": ["interior", "centre"]}
    out = sweep_postprocessing([probs], [labels], grid=grid)
    assert out["params"]["markers"] == "centre" and len(out["table"]) == 2
    assert out["table"][0]["f1_50"] < out["table"][1]["f1_50"] == 1.0
    # the default grid adds the marker kinds only for maps with a centre channel
    small = {"interior_threshold": [0.5], "foreground_threshold": [0.5]}
    assert sweep_postprocessing([probs], [labels], grid=small)["params"]["markers"] == "interior"
    three = np.ascontiguousarray(probs[..., :3])
    default3 = sweep_postprocessing([three[:, :40]], [labels[:, :40]])
    assert default3["params"]["markers"] == "interior"
    assert len(default3["table"]) == np.prod([len(v) for v in POSTPROCESS_GRID.values()])
    with pytest.raises(ValueError, match="centre map"):
        sweep_postprocessing([three], [labels], grid={"markers": ["centre"]})


def _disk_mask(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def test_open_objects_cuts_neurites_by_known_answer():
    from neuroseg.instances import open_objects

    shape = (120, 200)
    labels = np.zeros(shape, np.int32)
    # object 1: two somata (radius 15) joined by a 3-px neurite, with a neurite stub
    labels[_disk_mask(shape, (40, 40), 15)] = 1
    labels[_disk_mask(shape, (40, 140), 15)] = 1
    labels[39:42, 40:140] = 1
    labels[39:42, 155:195] = 1
    # object 2: a lone 3-px neurite
    labels[100:103, 10:150] = 2
    out = open_objects(labels, radius=3)
    assert out.max() == 2  # the two somata, apart; the lone neurite is gone
    assert not out[100:103].any()
    assert not out[40, 80] and not out[40, 180]  # bridge and stub cut away
    for centre in ((40, 40), (40, 140)):
        disk = _disk_mask(shape, centre, 15)
        piece = out[centre]
        assert piece > 0
        # the soma keeps its shape: nearly all of the disk, nothing far outside it
        assert (out[disk] == piece).mean() > 0.97
        assert ((out == piece) & ~_disk_mask(shape, centre, 17)).sum() == 0
    np.testing.assert_array_equal(open_objects(labels, radius=0), labels)


def test_open_objects_keeps_touching_objects_apart_and_instances_apply_it():
    from neuroseg.instances import open_objects

    labels = np.zeros((60, 100), np.int32)
    labels[10:50, 10:50] = 1
    labels[10:50, 50:90] = 2  # touching square
    out = open_objects(labels, radius=4)
    assert out.max() == 2 and out[30, 30] != out[30, 70]
    # the 4-step of instances_from_classes: an interior blob with a thin tail loses the tail
    probs = np.zeros((80, 120, 3), np.float32)
    probs[..., 0] = 1.0  # background
    blob = _disk_mask((80, 120), (40, 40), 14)
    tail = np.zeros((80, 120), bool)
    tail[39:41, 40:115] = True
    for m in (blob, tail):
        probs[m] = (0.0, 1.0, 0.0)
    plain, n = instances_from_classes(probs, min_area=0)
    opened, k = instances_from_classes(probs, min_area=0, open_radius=2)
    assert n == 1 and k == 1
    assert plain[40, 100] == 1 and opened[40, 100] == 0
    assert opened[40, 40] == 1
    with pytest.raises(ValueError, match="open_radius"):
        instances_from_classes(probs, open_radius=-1)


def test_leave_one_out_sweep_per_group_chooses_within_each_group():
    # group a: specks are false (min_area 50 wins there); group b: specks are real cells
    # (4 wins); image 4 of group b is alone without image 3, so it chooses on group b's image 3
    maps = [
        _cells_and_specks(3, 4),
        _cells_and_specks(2, 5),
        _cells_and_specks(2, 2, True),
        _cells_and_specks(1, 3, True),
    ]
    probs, truths = zip(*maps, strict=True)
    grid = {"min_area": [4, 50]}
    out = sweep_leave_one_out(probs, truths, ["a", "a", "b", "b"], grid=grid, per_group=True)
    assert [im["params"]["min_area"] for im in out["per_image_by_group"]] == [50, 50, 4, 4]
    assert out["final_by_group"]["a"]["min_area"] == 50
    assert out["final_by_group"]["b"]["min_area"] == 4
    # the joint choice is still there, unchanged by per_group
    joint = sweep_leave_one_out(probs, truths, ["a", "a", "b", "b"], grid=grid)
    assert out["per_image"] == joint["per_image"] and out["final"] == joint["final"]
    assert "final_by_group" not in joint
    b = out["per_image_by_group"][2]  # scored with what image 3 chose: all its cells found
    assert (b["tp"], b["fp"], b["fn"]) == (b["true_count"], 0, 0)


def test_leave_one_out_sweep_partition_chooses_within_each_part():
    # the stains (groups) cut across the parts: specks are real cells in part "s" only, so
    # each image chooses on the other image of its part, whatever its stain
    maps = [
        _cells_and_specks(3, 4),
        _cells_and_specks(2, 2, True),
        _cells_and_specks(2, 5),
        _cells_and_specks(1, 3, True),
    ]
    probs, truths = zip(*maps, strict=True)
    grid = {"min_area": [4, 50]}
    stains, parts = ["a", "a", "b", "b"], ["l", "s", "l", "s"]
    out = sweep_leave_one_out(probs, truths, stains, grid=grid, per_group=True, partition=parts)
    assert [im["params"]["min_area"] for im in out["per_image_by_partition"]] == [50, 4, 50, 4]
    assert out["final_by_partition"] == {
        "l": {**out["final_by_partition"]["l"], "min_area": 50},
        "s": {**out["final_by_partition"]["s"], "min_area": 4},
    }
    # within the stains (each mixing both parts) the specks' two kinds compete: no stain
    # gets every image right, unlike the partition
    by_stain = [im["fp"] + im["fn"] for im in out["per_image_by_group"]]
    by_part = [im["fp"] + im["fn"] for im in out["per_image_by_partition"]]
    assert sum(by_part) == 0 < sum(by_stain)
    # the joint and per-stain results are those of a sweep without the partition
    plain = sweep_leave_one_out(probs, truths, stains, grid=grid, per_group=True)
    assert out["per_image"] == plain["per_image"]
    assert out["per_image_by_group"] == plain["per_image_by_group"]
    assert "final_by_partition" not in plain
    with pytest.raises(ValueError, match="partition"):
        sweep_leave_one_out(probs, truths, stains, grid=grid, partition=["l"])


def test_typical_area_is_the_object_holding_the_median_foreground_pixel():
    assert typical_area(np.zeros((5, 5), np.int32)) == 0.0
    labels = np.zeros((10, 200), np.int32)
    labels[0, :9] = np.arange(1, 10)  # nine specks of 1 px: the plain median would be 1
    labels[2:6, 10:20] = 10  # 40 px
    labels[2:8, 30:50] = 11  # 120 px: holds the median of the 209 foreground pixels
    labels[2:6, 60:70] = 12  # 40 px
    assert typical_area(labels) == 120.0
    assert typical_area(labels[:, :25]) == 40.0


def test_min_area_fraction_follows_the_cells_size_from_image_to_image():
    """The same relative cut keeps small cells in an image of small cells and drops pieces
    of that size in an image of large cells, where an absolute min_area cannot do both."""

    def scene(cell: int, piece: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.zeros((40, 300), np.int32)
        for k in range(4):
            labels[2 : 2 + cell, 2 + k * 60 : 2 + k * 60 + cell] = k + 1  # cells
        labels[30 : 30 + piece, 260 : 260 + piece] = 9  # a piece of neurite / debris
        return one_hot(three_class_targets(labels)), labels

    small_probs, small = scene(cell=10, piece=3)  # cells of 100 px, a 9 px speck
    large_probs, large = scene(cell=30, piece=10)  # cells of 900 px, a 100 px piece
    relative = {"min_area": 0, "min_area_fraction": 0.25}
    assert instances_from_classes(small_probs, **relative)[1] == 4  # the speck goes
    assert instances_from_classes(large_probs, **relative)[1] == 4  # the 100 px piece goes
    # an absolute cut that drops the large image's piece drops the small image's cells too
    assert instances_from_classes(large_probs, min_area=101)[1] == 4
    assert instances_from_classes(small_probs, min_area=101)[1] == 0
    # the sweep offers it, scores it and reports it
    cells = [np.where(t == 9, 0, t) for t in (small, large)]  # the pieces are not cells
    out = sweep_leave_one_out([small_probs, large_probs], cells, ["a", "a"],
                              grid={"min_area": [0], "min_area_fraction": [0.0, 0.25]})  # fmt: skip
    assert out["final"]["min_area_fraction"] == 0.25 and out["final_score"] == 1.0
    with pytest.raises(ValueError, match="min_area_fraction"):
        instances_from_classes(small_probs, min_area_fraction=1.0)


def test_split_objects_cuts_joined_cells_at_their_neck_only():
    """Two discs joined by a neck (one object, as a network whose interiors touch gives them)
    fall apart at the neck; a round cell, an elongated one without a neck, and cells already
    apart stay whole; objects never merge."""
    from neuroseg.instances import split_objects

    joined = touching_discs(shape=(70, 220), centres=((35, 30), (35, 58)), radius=16) > 0
    labels = joined.astype(np.int32)
    labels[_disk_mask((70, 220), (35, 110), 16)] = 2  # a round cell
    labels[28:42, 140:215] = 3  # an elongated cell: a ridge, no neck
    out = split_objects(labels, fraction=0.3)
    assert len(np.unique(out[out > 0])) == 4
    left, right = out[35, 24], out[35, 64]
    assert left != right and left > 0 and right > 0
    # the cut runs through the neck (x = 44), not through a disc
    cut = np.flatnonzero(np.diff(out[35, 14:75]) != 0)[0] + 14
    assert 40 <= cut <= 48
    assert len(np.unique(out[labels == 2])) == 1 and len(np.unique(out[labels == 3])) == 1
    # no piece spans two of the input's objects
    for k in np.unique(out[out > 0]):
        assert len(np.unique(labels[out == k])) == 1
    # a neck shallower than the fraction asks for stays: the fraction is of the typical radius
    assert len(np.unique(split_objects(labels, fraction=0.9)[labels == 1])) == 1
    np.testing.assert_array_equal(split_objects(labels, fraction=0.0), labels)
    # the 5-step of instances_from_classes, offered to the sweeps
    probs = one_hot(np.where(labels > 0, INTERIOR, 0))
    assert instances_from_classes(probs, min_area=0)[1] == 3
    assert instances_from_classes(probs, min_area=0, split_fraction=0.3)[1] == 4
    truth = labels.copy()
    truth[(labels == 1) & (np.indices(labels.shape)[1] > 44)] = 9
    out = sweep_leave_one_out([probs, probs], [truth, truth], ["a", "a"],
                              grid={"min_area": [0], "split_fraction": [0.0, 0.3]})  # fmt: skip
    assert out["final"]["split_fraction"] == 0.3 and out["final_score"] == 1.0
    with pytest.raises(ValueError, match="split_fraction"):
        instances_from_classes(probs, split_fraction=1.5)
