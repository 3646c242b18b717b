"""Evaluation of the Otsu baseline on synthetic discs: known answers at every level."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from neuroseg.baseline import otsu_probability
from neuroseg.evaluation import (
    combine,
    evaluate_images,
    evaluate_one,
    report_plots,
    score_prediction,
    summary,
)
from neuroseg.metrics import pixel_scores


def discs(centres, *, shape=(240, 320), radius=12, seed=0):
    """Bright yellow discs on a dim noisy background; returns image and 0/255 mask."""
    rng = np.random.default_rng(seed)
    rr, cc = np.indices(shape)
    mask = np.zeros(shape, bool)
    for r, c in centres:
        mask |= (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
    image = np.zeros((*shape, 3))
    image[..., 0] = 20 + 180 * mask
    image[..., 1] = 15 + 160 * mask
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


SAMPLES = [
    ("a", *discs([(40, 40), (40, 150), (150, 100)], seed=1)),
    ("b", *discs([(60, 60), (180, 250)], seed=2)),
    ("c", *discs([], seed=3)),
]


def test_baseline_scores_known_answers():
    ev = evaluate_images(SAMPLES, otsu_probability, threshold=0.5, min_area=50)
    assert ev["n_images"] == 3
    obj = ev["objects"]
    assert (obj["tp"], obj["fp"], obj["fn"]) == (5, 0, 0)
    assert obj["f1"] == 1.0 and obj["count_mae"] == 0.0
    assert ev["objects_iou"]["tp"] == 5
    assert [(r["image_id"], r["true_count"], r["pred_count"]) for r in ev["per_image"]] == [
        ("a", 3, 3),
        ("b", 2, 2),
        ("c", 0, 0),
    ]
    # pixel scores are those of all pixels together, equal to scoring the concatenation
    probs = [otsu_probability(img) for _, img, _ in SAMPLES]
    masks = [m for _, _, m in SAMPLES]
    whole = pixel_scores(np.concatenate(masks), np.concatenate(probs), threshold=0.5)
    assert ev["pixel"] == whole
    assert ev["pixel"]["f1"] > 0.9 and ev["pixel"]["roc_auc"] > 0.99
    assert ev["true_areas"].size == 5 and ev["pred_areas"].size == 5
    assert abs(ev["pred_areas"].sum() - ev["true_areas"].sum()) < 0.1 * ev["true_areas"].sum()


def test_misses_and_false_positives_are_counted():
    def shifted(image):  # a predictor that finds the cells 50 px to the right (no match)
        prob = otsu_probability(image)
        return np.roll(prob, 50, axis=1)

    ev = evaluate_images(SAMPLES[:2], shifted, min_area=50)
    obj = ev["objects"]
    assert (obj["tp"], obj["fp"], obj["fn"]) == (0, 5, 5)
    assert obj["count_mae"] == 0.0  # right counts, wrong places
    assert ev["objects_iou"]["tp"] == 0

    def nothing(image):
        return np.zeros(image.shape[:2], np.float32)

    ev = evaluate_images(SAMPLES, nothing)
    assert (ev["objects"]["tp"], ev["objects"]["fn"]) == (0, 5)
    assert ev["objects"]["count_mae"] == pytest.approx(5 / 3)
    assert ev["pixel"]["recall"] == 0.0 and ev["pixel"]["precision"] == 1.0  # zero_division


def test_watershed_option_reaches_segmentation():
    # two touching discs: one cell in the semantic mask, two after a watershed split
    image, mask = discs([(120, 140), (120, 162)], radius=13)
    merged = evaluate_one("t", image, mask, otsu_probability, min_area=20)
    split = evaluate_one("t", image, mask, otsu_probability, min_area=20, watershed=True)
    assert merged["true_count"] == 1 and merged["pred_count"] == 1
    assert split["pred_count"] == 2 and split["centroid"]["fp"] == 1


def test_parallel_map_then_combine_equals_loop():
    parts = [
        pickle.loads(pickle.dumps(evaluate_one(i, img, m, otsu_probability, min_area=50)))
        for i, img, m in reversed(SAMPLES)
    ]
    ev = combine(parts)
    loop = evaluate_images(SAMPLES, otsu_probability, min_area=50)
    assert summary(ev)["pixel"] == summary(loop)["pixel"]
    assert ev["objects"]["f1"] == loop["objects"]["f1"]
    with pytest.raises(ValueError, match="twice"):
        combine(parts + parts[:1])
    other = evaluate_one("z", SAMPLES[0][1], SAMPLES[0][2], otsu_probability, min_area=0)
    with pytest.raises(ValueError, match="evaluated with"):
        combine([*parts, other])
    with pytest.raises(ValueError, match="nothing"):
        combine([])


def test_summary_is_strict_json_and_plots_decode():
    ev = evaluate_images(SAMPLES[2:], otsu_probability, min_area=50)  # no cells anywhere
    s = summary(ev)
    text = json.dumps(s, allow_nan=False)
    assert json.loads(text)["pixel"]["roc_auc"] is None
    assert "per_image" not in s["objects"]
    ev = evaluate_images(SAMPLES, otsu_probability, min_area=50)
    pngs = report_plots(ev, baseline=ev)
    assert set(pngs) == {"confusion.png", "roc_pr.png", "cell_sizes.png", "counts.png"}
    for data in pngs.values():
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.width > 300 and img.height > 300


def test_validation_names_the_image():
    image, mask = SAMPLES[0][1:]
    with pytest.raises(ValueError, match=r"^a: mask shape"):
        evaluate_one("a", image, mask[:-1], otsu_probability)
    with pytest.raises(ValueError, match=r"^a: predict_prob returned"):
        evaluate_one("a", image, mask, lambda im: np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="threshold"):
        score_prediction("a", np.zeros((3, 3), np.float32), np.zeros((3, 3), bool), threshold=2)
