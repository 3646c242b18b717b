"""Per-image confidence from the model's own output: known answers, and a real nucleus image
whose blurred copy the shipped model segments worse and is less sure of."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuroseg.confidence import (
    CONFIDENCE_MEASURE,
    MEASURES,
    confidence_measures,
    foreground_probability,
    image_confidence,
)


def _two_objects():
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 2:7] = 1  # 20 px
    labels[10:15, 10:20] = 2  # 50 px
    return labels


def test_binary_known_answers():
    labels = _two_objects()
    prob = np.zeros(labels.shape, np.float32)
    prob[labels == 1] = 0.95  # sure
    prob[labels == 2] = 0.6  # unsure
    prob[18, 0:4] = 0.3  # likely-ish background pixels, no object
    m = confidence_measures(prob, labels)
    assert set(m) == set(MEASURES)
    likely = 20 + 50 + 4
    assert m["fg_certain"] == pytest.approx(20 / likely)
    assert m["margin"] == pytest.approx((20 * 0.9 + 50 * 0.2 + 4 * 0.4) / likely, rel=1e-6)
    assert m["object_fg"] == pytest.approx((0.95 + 0.6) / 2, rel=1e-6)
    assert m["object_margin"] == pytest.approx((0.9 + 0.2) / 2, rel=1e-6)
    assert m["objects_sure"] == 0.5  # one of two objects above a 0.6 margin
    assert image_confidence(prob, labels) == m[CONFIDENCE_MEASURE]


def test_three_class_margin_sees_interior_boundary_doubt():
    """Two cells the model is sure are cells, but not whether the line between them is a
    boundary: the foreground measures stay high, the class margin falls."""
    labels = _two_objects()
    sure = np.zeros((*labels.shape, 3), np.float32)
    sure[..., 0] = 1.0
    sure[labels > 0] = (0.02, 0.96, 0.02)
    doubt = sure.copy()
    doubt[labels == 2] = (0.02, 0.5, 0.48)
    a, b = confidence_measures(sure, labels), confidence_measures(doubt, labels)
    assert a["object_fg"] == pytest.approx(b["object_fg"]) == pytest.approx(0.98)
    assert a["objects_sure"] == 1.0 and b["objects_sure"] == 0.5
    assert b["margin"] < a["margin"]
    assert image_confidence(doubt, labels) == b[CONFIDENCE_MEASURE] == 0.5
    # a fourth (centre) channel does not enter the class margin
    centre = np.concatenate([doubt, np.full((*labels.shape, 1), 0.7, np.float32)], axis=2)
    assert confidence_measures(centre, labels) == b
    assert foreground_probability(sure)[labels > 0] == pytest.approx(0.98)


def test_empty_image_is_sure_and_shapes_are_checked():
    prob = np.zeros((8, 8), np.float32)
    assert confidence_measures(prob, np.zeros((8, 8), np.int32)) == dict.fromkeys(MEASURES, 1.0)
    with pytest.raises(ValueError, match="labels"):
        confidence_measures(prob, np.zeros((8, 9), np.int32))
    with pytest.raises(ValueError, match="probs must be"):
        confidence_measures(np.zeros((8, 8, 2), np.float32), np.zeros((8, 8), np.int32))


def test_blurred_real_nucleus_image_is_segmented_worse_and_less_confidently(nuclei_root):
    from neuroseg import registry
    from neuroseg.images import read_labels, read_native
    from neuroseg.metrics import match_by_iou
    from neuroseg.predict import postprocess, predict_image

    bundle = registry.load_model(registry.shipped_model_uri("nuclei"))
    path = sorted((nuclei_root / "bbbc039" / "images").glob("*.png"))[0]
    image, truth = (
        read_native(str(path)),
        read_labels(str(nuclei_root / "bbbc039" / "labels" / path.name)),
    )
    out = {}
    for name, x in (
        ("sharp", image),
        ("blurred", ndimage.gaussian_filter(image.astype("f4"), (6, 6, 0))),
    ):
        maps = predict_image(bundle, x)
        labels, _, _ = postprocess(bundle.config, maps, image=x)
        out[name] = (match_by_iou(truth, labels)["f1"], image_confidence(maps, labels))
    assert out["blurred"][0] < out["sharp"][0] - 0.05, out  # really worse
    assert out["blurred"][1] < 0.5 * out["sharp"][1], out  # and the model says so
