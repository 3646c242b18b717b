"""Known-answer tests of neuroseg.metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from neuroseg import metrics
from neuroseg.metrics import (
    PixelAccumulator,
    match_by_iou,
    match_objects,
    object_scores,
    pixel_scores,
    threshold_sweep,
)


def disc_labels(shape, centres, radius=10):
    """Label image with discs ``1..n`` at ``centres`` (row, col)."""
    rr, cc = np.indices(shape)
    out = np.zeros(shape, dtype=np.int32)
    for i, (r, c) in enumerate(centres, start=1):
        out[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i
    return out


CENTRES = [(50, 50), (50, 200), (150, 120), (160, 260)]


# ------------------------------------------------------------------ object matching
def test_perfect_prediction():
    lab = disc_labels((220, 320), CENTRES)
    for r in (match_objects(lab, lab), match_by_iou(lab, lab)):
        assert (r["tp"], r["fp"], r["fn"]) == (4, 0, 0)
        assert r["precision"] == r["recall"] == r["f1"] == 1.0
        assert sorted(map(tuple, r["pairs"].tolist())) == [(1, 1), (2, 2), (3, 3), (4, 4)]


def test_centroid_shift_30_matches_50_does_not():
    true = disc_labels((400, 400), [(200, 100)])
    near = disc_labels((400, 400), [(200, 130)])
    far = disc_labels((400, 400), [(200, 150)])
    r = match_objects(true, near)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    assert r["distances"][0] == pytest.approx(30.0)
    r = match_objects(true, far)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 1, 1)
    assert r["precision"] == r["recall"] == r["f1"] == 0.0
    # the radius is inclusive and configurable
    assert match_objects(true, far, radius=50.0)["tp"] == 1
    assert match_objects(true, far, radius=49.9)["tp"] == 0


def test_merged_prediction_matches_one_true_cell():
    true = disc_labels((200, 200), [(100, 80), (100, 120)], radius=15)
    merged = (true > 0).astype(np.int32)  # one predicted object covering both
    r = match_objects(true, merged)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)
    assert r["precision"] == 1.0 and r["recall"] == 0.5
    assert r["f1"] == pytest.approx(2 / 3)
    # two equal discs: each has IoU exactly 0.5 with the merged object; >= 0.5 matches one
    ri = match_by_iou(true, merged)
    assert (ri["tp"], ri["fp"], ri["fn"]) == (1, 0, 1)
    np.testing.assert_allclose(ri["ious"], [0.5])
    assert match_by_iou(true, merged, iou=0.51)["tp"] == 0


def test_empty_both_sides_and_no_predictions():
    empty = np.zeros((50, 60), dtype=np.int32)
    for fn in (match_objects, match_by_iou):
        r = fn(empty, empty)
        assert (r["tp"], r["fp"], r["fn"]) == (0, 0, 0)
        assert r["precision"] == r["recall"] == r["f1"] == 1.0
        assert r["pairs"].shape == (0, 2)
    true = disc_labels((100, 100), [(50, 50)])
    r = match_objects(true, np.zeros_like(true))
    assert (r["tp"], r["fp"], r["fn"]) == (0, 0, 1)
    assert r["precision"] == 1.0 and r["recall"] == 0.0 and r["f1"] == 0.0
    r = match_objects(np.zeros_like(true), true, zero_division=0.0)
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0


def test_hungarian_beats_greedy():
    # true A at col 100, true B at col 140; pred P at col 125, pred Q at col 90.
    # Greedy nearest-first pairs B-P (15) and leaves A-Q (10) ... fine; but with Q at col 60
    # greedy A-P (25) leaves B unmatched (B-Q = 80 > 40); optimal is A-Q (40) + B-P (15).
    true = disc_labels((200, 300), [(100, 100), (100, 140)], radius=5)
    pred = disc_labels((200, 300), [(100, 125), (100, 60)], radius=5)
    r = match_objects(true, pred)
    assert r["tp"] == 2
    assert sorted(map(tuple, r["pairs"].tolist())) == [(1, 2), (2, 1)]


def test_non_consecutive_and_large_labels():
    lab = disc_labels((200, 300), CENTRES[:3])
    relab = np.select([lab == 1, lab == 2, lab == 3], [7, 1_000_000, 42], 0).astype(np.int64)
    r = match_objects(lab, relab)
    assert r["tp"] == 3
    assert sorted(map(tuple, r["pairs"].tolist())) == [(1, 7), (2, 1_000_000), (3, 42)]
    assert match_by_iou(relab, lab)["tp"] == 3


def test_iou_values_known():
    true = np.zeros((10, 10), dtype=np.int32)
    pred = np.zeros_like(true)
    true[0:4, 0:4] = 1  # 16 px
    pred[0:4, 2:6] = 1  # 16 px, overlap 8 -> IoU 8 / 24
    true[6:10, 6:10] = 2
    pred[6:10, 6:9] = 2  # overlap 12, union 16 -> 0.75
    t = metrics.iou_table(true, pred)
    np.testing.assert_allclose(t["iou"], [[1 / 3, 0], [0, 0.75]])
    r = match_by_iou(true, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    np.testing.assert_allclose(r["ious"], [0.75])
    assert match_by_iou(true, pred, iou=0.3)["tp"] == 2


def test_matching_validates_input():
    a = np.zeros((5, 5), dtype=np.int32)
    with pytest.raises(ValueError, match="shapes differ"):
        match_objects(a, np.zeros((5, 6), dtype=np.int32))
    with pytest.raises(ValueError, match="integer"):
        match_objects(a.astype(float), a)
    with pytest.raises(ValueError, match="iou"):
        match_by_iou(a, a, iou=0)


def test_object_scores_aggregates_and_count_mae():
    a = {"image_id": "a", "tp": 3, "fp": 1, "fn": 0, "n_true": 3, "n_pred": 4}
    b = {"image_id": "b", "tp": 1, "fp": 0, "fn": 3, "n_true": 4, "n_pred": 1}
    s = object_scores([a, b])
    assert (s["tp"], s["fp"], s["fn"]) == (4, 1, 3)
    assert s["precision"] == pytest.approx(4 / 5)
    assert s["recall"] == pytest.approx(4 / 7)
    assert s["f1"] == pytest.approx(8 / 12)
    assert s["count_mae"] == pytest.approx((1 + 3) / 2)
    assert s["count_bias"] == pytest.approx((1 - 3) / 2)
    assert [r["image_id"] for r in s["per_image"]] == ["a", "b"]
    assert np.isnan(object_scores([])["count_mae"])


# ------------------------------------------------------------------ pixel scores
def test_pixel_scores_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random((300, 400)) < 0.1
    p = np.clip(np.where(y, 0.65, 0.35) + rng.normal(0, 0.2, y.shape), 0, 1).astype(np.float32)
    s = pixel_scores(y, p, threshold=0.5)
    pred = p > 0.5
    tn, fp, fn, tp = confusion_matrix(y.ravel(), pred.ravel()).ravel()
    assert s["confusion"] == [[tn, fp], [fn, tp]]
    assert s["precision"] == pytest.approx(tp / (tp + fp))
    assert s["recall"] == pytest.approx(tp / (tp + fn))
    assert s["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["support"] == y.sum()
    assert s["accuracy"] == pytest.approx((tp + tn) / y.size)
    np.testing.assert_allclose(np.sum(s["confusion_normalized"], axis=1), [1, 1])
    # binned AUC/AP: exact for probabilities rounded to 3 decimals, close to the unrounded
    q = np.round(p.astype(np.float64), 3)
    assert s["roc_auc"] == pytest.approx(roc_auc_score(y.ravel(), q.ravel()), abs=1e-12)
    assert s["average_precision"] == pytest.approx(
        average_precision_score(y.ravel(), q.ravel()), abs=1e-12
    )
    assert s["roc_auc"] == pytest.approx(roc_auc_score(y.ravel(), p.ravel()), abs=1e-3)
    assert s["average_precision"] == pytest.approx(
        average_precision_score(y.ravel(), p.ravel()), abs=1e-3
    )


def test_pixel_scores_perfect_and_single_class():
    y = np.zeros((20, 20), dtype=bool)
    y[5:10, 5:10] = True
    s = pixel_scores(y, y.astype(np.float32))
    assert s["f1"] == s["roc_auc"] == s["average_precision"] == 1.0
    s = pixel_scores(np.zeros((4, 4), bool), np.zeros((4, 4), np.float32))
    assert np.isnan(s["roc_auc"]) and np.isnan(s["average_precision"])
    assert s["precision"] == s["recall"] == s["f1"] == 1.0  # nothing to find, nothing found
    assert s["confusion"] == [[16, 0], [0, 0]]
    assert np.isnan(s["confusion_normalized"][1][0])
    # 0/255 uint8 masks are read with the seed's > 127 threshold
    s = pixel_scores(y.astype(np.uint8) * 255, y.astype(np.float32))
    assert s["support"] == 25 and s["f1"] == 1.0


def test_pixel_scores_validates():
    with pytest.raises(ValueError, match="shape"):
        pixel_scores(np.zeros((3, 3), bool), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="floats"):
        pixel_scores(np.zeros((3, 3), bool), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        pixel_scores(np.zeros((1, 1), bool), np.full((1, 1), np.nan, np.float32))


def test_accumulator_equals_concatenation_and_state_round_trip():
    rng = np.random.default_rng(1)
    ys = [rng.random((50, 60)) < 0.2 for _ in range(3)]
    ps = [rng.random((50, 60)).astype(np.float32) for _ in range(3)]
    acc = PixelAccumulator(threshold=0.4)
    for y, p in zip(ys, ps, strict=True):
        acc.update(y, p)
    whole = pixel_scores(np.concatenate(ys), np.concatenate(ps), threshold=0.4)
    assert acc.scores() == whole
    half = PixelAccumulator(threshold=0.4).update(ys[0], ps[0])
    rest = PixelAccumulator.from_state(PixelAccumulator(threshold=0.4).update(ys[1], ps[1]).state())
    rest.update(ys[2], ps[2])
    assert half.merge(rest).scores() == whole
    c = acc.curves()
    assert c["fpr"][0] == 0 and c["fpr"][-1] == 1 and c["tpr"][-1] == 1
    assert np.all(np.diff(c["recall"]) >= 0)
    assert c["roc_auc"] == whole["roc_auc"]


def test_pixel_scores_on_full_images():
    rng = np.random.default_rng(2)
    ys = [rng.random((1200, 1600)) < 0.03 for _ in range(3)]
    ps = [rng.random((1200, 1600), dtype=np.float32) for _ in range(3)]
    acc = PixelAccumulator()
    for y, p in zip(ys, ps, strict=True):
        acc.update(y, p)
    s = acc.scores()
    assert s["n_pixels"] == 3 * 1200 * 1600
    assert 0.45 < s["roc_auc"] < 0.55


# ------------------------------------------------------------------ threshold sweep
def test_threshold_sweep_finds_known_optimum():
    shape = (200, 300)
    true = disc_labels(shape, CENTRES[:3], radius=12) > 0
    prob = np.where(true, 0.7, 0.05).astype(np.float32)
    # a faint false blob (0.4) and small specks (0.8, 9 px) that min_area removes
    prob[150:170, 20:40] = 0.4
    prob[10:13, 280:283] = 0.8
    prob[190:193, 150:153] = 0.8
    r = threshold_sweep(
        [prob], [true.astype(np.uint8) * 255], thresholds=[0.3, 0.5, 0.75], min_areas=[0, 50]
    )
    assert r["best_threshold"] == 0.5 and r["best_min_area"] == 50
    assert r["best_f1"] == 1.0 and r["best_count_mae"] == 0.0
    assert len(r["table"]) == 6
    row = next(t for t in r["table"] if t["threshold"] == 0.3 and t["min_area"] == 0)
    assert (row["tp"], row["fp"], row["fn"]) == (3, 3, 0)
    row = next(t for t in r["table"] if t["threshold"] == 0.75)
    assert row["tp"] == 0 and row["fn"] == 3


def test_threshold_sweep_validates():
    with pytest.raises(ValueError, match="masks"):
        threshold_sweep([np.zeros((3, 3), np.float32)], [])
    with pytest.raises(ValueError, match="shape"):
        threshold_sweep([np.zeros((3, 3), np.float32)], [np.zeros((3, 4), bool)])


# ------------------------------------------------------------------ IoU scores 0.5:0.95
def boxes(shape, *rects):
    """Label image with rectangles ``(r0, r1, c0, c1)`` labelled 1..n."""
    out = np.zeros(shape, dtype=np.int32)
    for i, (r0, r1, c0, c1) in enumerate(rects, start=1):
        out[r0:r1, c0:c1] = i
    return out


def stardist_reference(true, pred, thresholds):
    """StarDist's matching written out densely (full Hungarian with its costs), for checking."""
    from scipy.optimize import linear_sum_assignment

    s = metrics.iou_table(true, pred)["iou"]
    n = min(s.shape)
    tps, sums = [], []
    for thr in thresholds:
        if n == 0:
            tps.append(0)
            sums.append(0.0)
            continue
        r, c = linear_sum_assignment(-(s >= thr).astype(float) - s / (2 * n))
        ok = s[r, c] >= thr
        tps.append(int(ok.sum()))
        sums.append(float(s[r, c][ok].sum()))
    return tps, sums


def test_iou_thresholds_are_exact_decimals():
    assert metrics.IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_iou_perfect_match_scores_one_everywhere():
    import json
    import pickle

    lab = disc_labels((220, 320), CENTRES)
    r = metrics.iou_matching(lab, lab)
    assert r["tp"] == [4] * 10 and r["fp"] == [0] * 10 and r["fn"] == [0] * 10
    assert (r["n_true"], r["n_pred"]) == (4, 4)
    assert pickle.loads(pickle.dumps(r)) == r and json.loads(json.dumps(r)) == r
    s = metrics.iou_scores([r])
    for key in ("precision", "recall", "f1", "ap", "mean_true_score", "mean_matched_score",
                "panoptic_quality"):  # fmt: skip
        assert s[key] == [1.0] * 10, key
    assert s["mean_ap"] == s["ap_50"] == s["f1_50"] == 1.0
    assert s["count_mae"] == 0.0 and (s["n_images"], s["n_true"], s["n_pred"]) == (1, 4, 4)
    assert len(s["table"]) == 10 and s["table"][3]["threshold"] == 0.65
    json.dumps(s)


def test_iou_shifted_object_passes_thresholds_up_to_its_iou():
    # 10x10 square shifted 2 columns: overlap 80, union 120 -> IoU 2/3 (0.5 .. 0.65 pass)
    true = boxes((30, 30), (5, 15, 5, 15))
    pred = boxes((30, 30), (5, 15, 7, 17))
    r = metrics.iou_matching(true, pred)
    assert r["tp"] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert r["fp"] == r["fn"] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    np.testing.assert_allclose(r["sum_matched_iou"], [2 / 3] * 4 + [0] * 6)
    s = metrics.iou_scores([r])
    assert s["ap"] == [1.0] * 4 + [0.0] * 6
    assert s["mean_ap"] == pytest.approx(0.4)
    np.testing.assert_allclose(s["mean_matched_score"], [2 / 3] * 4 + [0] * 6)
    np.testing.assert_allclose(s["panoptic_quality"], [2 / 3] * 4 + [0] * 6)
    # StarDist's docstring example: rolled 5 rows, IoU 50 / 150 = 1/3: a miss at 0.5, a hit at 0.3
    true = boxes((100, 100), (10, 20, 10, 20))
    pred = np.roll(true, 5, axis=0)
    r = metrics.iou_matching(true, pred, thresholds=(0.3, 0.5))
    assert (r["tp"], r["fp"], r["fn"]) == ([1, 0], [0, 1], [0, 1])


def test_iou_equal_to_threshold_matches():
    # 10x20 rectangle shifted 5 columns: overlap 150, union 250 -> IoU exactly 0.6
    true = boxes((20, 40), (5, 15, 5, 25))
    pred = boxes((20, 40), (5, 15, 10, 30))
    r = metrics.iou_matching(true, pred)
    assert r["tp"] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_iou_true_object_split_in_two_predictions():
    # one 10x20 true object, predicted as two 10x10 halves: each IoU exactly 0.5
    true = boxes((20, 30), (5, 15, 5, 25))
    pred = boxes((20, 30), (5, 15, 5, 15), (5, 15, 15, 25))
    r = metrics.iou_matching(true, pred)
    assert (r["tp"][0], r["fp"][0], r["fn"][0]) == (1, 1, 0)  # one half matches at 0.5
    assert (r["tp"][1], r["fp"][1], r["fn"][1]) == (0, 2, 1)
    # split unevenly (12 + 8 columns): IoU 0.6 and 0.4 -> the larger part matches up to 0.6
    pred = boxes((20, 30), (5, 15, 5, 17), (5, 15, 17, 25))
    r = metrics.iou_matching(true, pred)
    assert r["tp"] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert r["fp"] == [1, 1, 1, 2, 2, 2, 2, 2, 2, 2]
    s = metrics.iou_scores([r])
    assert s["precision"][0] == 0.5 and s["recall"][0] == 1.0
    assert s["f1"][0] == pytest.approx(2 / 3) and s["ap"][0] == pytest.approx(1 / 2)
    assert s["count_mae"] == 1.0 and s["count_bias"] == 1.0


def test_iou_two_true_objects_merged_in_one_prediction():
    true = boxes((20, 30), (5, 15, 5, 15), (5, 15, 15, 25))
    pred = (true > 0).astype(np.uint8)
    r = metrics.iou_matching(true, pred)
    assert (r["tp"][0], r["fp"][0], r["fn"][0]) == (1, 0, 1)
    np.testing.assert_allclose(r["sum_matched_iou"][0], 0.5)
    assert r["tp"][1:] == [0] * 9 and r["fn"][1:] == [2] * 9
    s = metrics.iou_scores([r])
    assert s["ap"][0] == 0.5 and s["recall"][0] == 0.5 and s["precision"][0] == 1.0
    assert s["mean_true_score"][0] == 0.25 and s["mean_matched_score"][0] == 0.5
    assert s["panoptic_quality"][0] == pytest.approx(0.5 / 1.5)


def test_iou_empty_sides():
    empty = np.zeros((20, 30), dtype=np.int32)
    two = boxes((20, 30), (2, 8, 2, 8), (10, 18, 10, 18))
    # both empty: nothing to find, nothing found -> perfect (StarDist would give 0)
    s = metrics.iou_scores([metrics.iou_matching(empty, empty)])
    assert s["mean_ap"] == 1.0 and s["f1"] == [1.0] * 10 and s["panoptic_quality"] == [1.0] * 10
    assert s["mean_matched_score"] == [1.0] * 10 and s["count_mae"] == 0.0
    assert (
        metrics.iou_scores([metrics.iou_matching(empty, empty)], zero_division=0.0)["mean_ap"]
        == 0.0
    )
    # no truth, two predictions: all false positives
    r = metrics.iou_matching(empty, two)
    assert (r["tp"][0], r["fp"][0], r["fn"][0]) == (0, 2, 0)
    s = metrics.iou_scores([r])
    assert s["precision"][0] == 0.0 and s["f1"][0] == 0.0 and s["ap"][0] == 0.0
    assert s["recall"][0] == 1.0 and s["mean_true_score"][0] == 1.0  # 0 / 0
    assert s["mean_matched_score"][0] == 0.0 and s["panoptic_quality"][0] == 0.0
    s0 = metrics.iou_scores([r], zero_division=0.0)
    assert s0["recall"][0] == 0.0 and s0["mean_true_score"][0] == 0.0
    # truth, no predictions: all missed
    s = metrics.iou_scores([metrics.iou_matching(two, empty)])
    assert s["precision"][0] == 1.0 and s["recall"][0] == 0.0 and s["ap"][0] == 0.0
    assert s["mean_true_score"][0] == 0.0 and s["count_mae"] == 2.0


def test_iou_non_consecutive_labels_and_dtypes():
    lab = disc_labels((200, 300), CENTRES[:3])
    pred = np.roll(lab, 3, axis=1)
    want = metrics.iou_matching(lab, pred)
    relab = np.select([lab == 1, lab == 2, lab == 3], [7, 1_000_000, 42], 0).astype(np.int64)
    got = metrics.iou_matching(relab, pred.astype(np.uint16))
    assert got == want
    assert metrics.iou_matching(lab.astype(np.uint8), relab.astype(np.uint32))["tp"] == [3] * 10


def test_iou_pooling_differs_from_averaging_per_image():
    perfect = boxes((20, 20), (2, 8, 2, 8))
    three = boxes((20, 20), (2, 6, 2, 6), (10, 14, 2, 6), (10, 14, 10, 14))
    a = metrics.iou_matching(perfect, perfect)
    b = metrics.iou_matching(three, np.zeros_like(three))
    s = metrics.iou_scores([a, b])
    # pooled: tp 1, fp 0, fn 3 -> AP 1/4, F1 2/5; the mean of per-image APs would be 1/2
    assert s["ap"] == [0.25] * 10 and s["mean_ap"] == 0.25
    assert s["f1_50"] == pytest.approx(0.4) and s["ap_50"] == 0.25
    per_image = np.mean([metrics.iou_scores([r])["mean_ap"] for r in (a, b)])
    assert per_image == 0.5 != s["mean_ap"]
    assert s["count_mae"] == 1.5 and s["count_bias"] == -1.5
    assert (s["n_images"], s["n_true"], s["n_pred"]) == (2, 4, 1)


def test_iou_matching_agrees_with_stardist_assignment():
    """Random overlapping labels, thresholds below 0.5 included (where objects compete)."""
    rng = np.random.default_rng(3)
    thresholds = (0.1, 0.3, 0.5, 0.7)
    rr, cc = np.indices((40, 40))
    for _ in range(40):
        pair = []
        for _side in range(2):
            lab = np.zeros((40, 40), dtype=np.int32)
            for i in range(1, rng.integers(0, 9) + 1):
                r, c, rad = rng.integers(0, 40), rng.integers(0, 40), rng.integers(3, 9)
                lab[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] = i
            pair.append(lab)
        r = metrics.iou_matching(*pair, thresholds=thresholds)
        tps, sums = stardist_reference(*pair, thresholds)
        assert r["tp"] == tps
        np.testing.assert_allclose(r["sum_matched_iou"], sums, atol=1e-12)


def test_iou_matching_validates():
    a = np.zeros((5, 5), dtype=np.int32)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.iou_matching(a, np.zeros((5, 6), dtype=np.int32))
    with pytest.raises(ValueError, match="integer"):
        metrics.iou_matching(a.astype(float), a)
    with pytest.raises(ValueError, match="thresholds"):
        metrics.iou_matching(a, a, thresholds=(0.0, 0.5))
    with pytest.raises(ValueError, match="at least one"):
        metrics.iou_scores([])
    r1 = metrics.iou_matching(a, a)
    r2 = metrics.iou_matching(a, a, thresholds=(0.5,))
    with pytest.raises(ValueError, match="thresholds"):
        metrics.iou_scores([r1, r2])
    assert metrics.iou_scores([r2])["f1_50"] == 1.0
    assert metrics.iou_scores([metrics.iou_matching(a, a, thresholds=(0.7,))])["f1_50"] is None


def test_iou_matching_on_a_full_size_image():
    from skimage.draw import disk

    rng = np.random.default_rng(4)
    true = np.zeros((520, 696), dtype=np.uint16)
    for i in range(1, 151):
        rr, cc = disk(
            (rng.integers(0, 520), rng.integers(0, 696)), rng.integers(8, 15), shape=true.shape
        )
        true[rr, cc] = i
    pred = np.roll(true, 2, axis=1)
    r = metrics.iou_matching(true, pred)
    assert r["tp"][0] > 100


def test_iou_summary_is_iou_scores_in_short():
    from neuroseg.metrics import iou_matching, iou_scores, iou_summary

    t = np.zeros((20, 20), int)
    t[2:8, 2:8], t[10:15, 10:15] = 1, 2
    p = np.zeros_like(t)
    p[2:8, 3:9] = 5  # shifted: IoU 30/42
    results = [iou_matching(t, p), iou_matching(t, t)]
    full, short = iou_scores(results), iou_summary(results)
    for k in ("n_images", "n_true", "n_pred", "f1_50", "ap_50", "mean_ap", "count_mae"):
        assert short[k] == full[k]
    assert [r["ap"] for r in short["table"]] == full["ap"]
    assert iou_summary([]) is None


def test_reweighted_iou_scores_scale_each_sets_counts_before_pooling():
    from neuroseg.metrics import reweighted_iou_scores

    a = [
        {"threshold": 0.5, "tp": 8, "fp": 2, "fn": 0},
        {"threshold": 0.9, "tp": 4, "fp": 6, "fn": 4},
    ]
    b = [
        {"threshold": 0.5, "tp": 1, "fp": 0, "fn": 3},
        {"threshold": 0.9, "tp": 0, "fp": 1, "fn": 4},
    ]
    same = reweighted_iou_scores({"a": a, "b": b}, {"a": 1, "b": 1})
    assert same["f1_50"] == pytest.approx(18 / 23) and same["ap_50"] == pytest.approx(9 / 14)
    assert same["mean_ap"] == pytest.approx((9 / 14 + 4 / 19) / 2)
    # b's images three times as many: its counts weigh 3x
    more_b = reweighted_iou_scores({"a": a, "b": b}, {"a": 1, "b": 3})
    assert more_b["ap_50"] == pytest.approx(11 / 22)
    assert reweighted_iou_scores({"a": a, "b": b}, {"a": 1, "b": 0}) == reweighted_iou_scores(
        {"a": a}, {"a": 2}
    )
    with pytest.raises(ValueError, match="one scale"):
        reweighted_iou_scores({"a": a, "b": b}, {"a": 1})
    with pytest.raises(ValueError, match="same IoU thresholds"):
        reweighted_iou_scores({"a": a, "b": b[::-1]}, {"a": 1, "b": 1})
