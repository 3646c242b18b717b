"""neuroseg.errors: every error kind by a known answer on drawn label images."""

import numpy as np
import pytest

from neuroseg.errors import FP_KINDS, MISS_KINDS, classify_errors


def _disk(shape, centre, radius, value, out=None):
    out = np.zeros(shape, np.int32) if out is None else out
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    out[(rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2] = value
    return out


def test_each_kind_by_known_answer():
    shape = (400, 400)
    truth = np.zeros(shape, np.int32)
    pred = np.zeros(shape, np.int32)
    image = np.full(shape, 10.0)
    # 1: found (pred 1 on it) and also cut: pred 2 is a fragment of it
    _disk(shape, (60, 60), 20, 1, truth)
    _disk(shape, (60, 60), 15, 1, pred)
    pred[60:64, 78:82] = 2
    # 2 and 3 touch, one predicted object covers both: one match, one 'merged' miss
    _disk(shape, (200, 60), 14, 2, truth)
    _disk(shape, (200, 90), 14, 3, truth)
    _disk(shape, (200, 62), 16, 3, pred)
    pred[190:210, 62:100] = 3
    # 4: a cell whose predicted object trails a long neurite: centroid > 40 px away ('offset'
    # both ways)
    _disk(shape, (320, 60), 10, 4, truth)
    _disk(shape, (320, 60), 10, 4, pred)
    pred[316:324, 60:250] = 4
    # 5: a small true cell (under min_area) nothing found: 'small'
    truth[100:105, 200:205] = 5
    # 6: a true cell at the border, not found: 'border'
    truth[0:20, 300:330] = 6
    # 7: a dim true cell not found: 'dim'; 8: a bright one not found: 'missed'
    _disk(shape, (150, 330), 12, 7, truth)
    _disk(shape, (250, 330), 12, 8, truth)
    for lab in (1, 2, 3, 4, 5, 6, 8):
        image[truth == lab] = 100.0
    image[truth == 7] = 20.0
    # false positives elsewhere: a thin line ('thin'), a round blob ('blob'), one at the
    # border ('border')
    pred[380:383, 150:250] = 5
    _disk(shape, (120, 120), 15, 6, pred)
    pred[390:400, 350:380] = 7

    e = classify_errors(truth, pred, image=image, min_area=50, thin_radius=4)
    assert e["tp"] == 2 and e["n_true"] == 8 and e["n_pred"] == 7
    assert e["fp_kinds"] == {"fragment": 1, "offset": 1, "border": 1, "thin": 1, "blob": 1}
    assert e["miss_kinds"] == {
        "merged": 1,
        "offset": 1,
        "small": 1,
        "border": 1,
        "dim": 1,
        "missed": 1,
    }
    kinds = {r["label"]: r["kind"] for r in e["misses"]}
    assert kinds == {3: "merged", 4: "offset", 5: "small", 6: "border", 7: "dim", 8: "missed"}
    thin = next(r for r in e["false_positives"] if r["kind"] == "thin")
    assert thin["label"] == 5 and thin["radius"] <= 2.5
    assert set(e["fp_kinds"]) == set(FP_KINDS) and set(e["miss_kinds"]) == set(MISS_KINDS)


def test_without_image_no_dim_and_perfect_match_has_no_errors():
    shape = (100, 100)
    truth = _disk(shape, (50, 50), 10, 1)
    e = classify_errors(truth, truth.copy())
    assert (e["tp"], e["fp"], e["fn"]) == (1, 0, 0)
    assert sum(e["fp_kinds"].values()) == 0 and sum(e["miss_kinds"].values()) == 0
    e = classify_errors(truth, np.zeros(shape, np.int32), min_area=0)
    assert e["miss_kinds"]["missed"] == 1 and e["miss_kinds"]["dim"] == 0


def test_inscribed_radius_of_a_disk():
    shape = (120, 120)
    pred = _disk(shape, (60, 60), 20, 1)
    e = classify_errors(np.zeros(shape, np.int32), pred)
    assert e["false_positives"][0]["radius"] == pytest.approx(20, abs=1.5)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="label shapes differ"):
        classify_errors(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match="image shape"):
        classify_errors(
            np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32), image=np.zeros((3, 3))
        )
