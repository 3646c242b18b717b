"""Losses against numpy known answers and the seed's own weighted BCE; pixel metrics."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from neuroseg.losses import LOSSES, MULTICLASS_LOSSES, get_loss, loss_head, pixel_metrics

EPS = 1e-7
RNG = np.random.default_rng(42)
Y = (RNG.uniform(size=(3, 8, 8, 1)) > 0.7).astype(np.float32)
P = RNG.uniform(0.01, 0.99, size=(3, 8, 8, 1)).astype(np.float32)
Y3 = np.eye(3, dtype=np.float32)[RNG.integers(0, 3, size=(3, 8, 8))]
_LOGITS = RNG.normal(size=(3, 8, 8, 3))
P3 = (np.exp(_LOGITS) / np.exp(_LOGITS).sum(-1, keepdims=True)).astype(np.float32)


def _bce(y, p):
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _sums(y, p):
    axes = (1, 2, 3)
    return (y * p).sum(axes), y.sum(axes), p.sum(axes)


def _loss(name, **kw):
    return float(get_loss(name, **kw)(Y, P))


def test_weighted_bce_matches_the_seed_function():
    w0, w1 = 0.0198, 0.9802

    def seed_loss(zero_weight, one_weight):  # the notebook's code, keras.backend -> keras.ops
        def weighted_binary_crossentropy(y_true, y_pred):
            b_ce = keras.ops.binary_crossentropy(y_true, y_pred)
            weight_vector = y_true * one_weight + (1 - y_true) * zero_weight
            return keras.ops.mean(weight_vector * b_ce)

        return weighted_binary_crossentropy

    expected = float(seed_loss(w0, w1 * 0.33)(Y, P))
    got = _loss("weighted_bce", class_weights=(w0, w1), positive_scale=0.33)
    assert got == pytest.approx(expected, rel=1e-5)
    weight = Y * w1 * 0.33 + (1 - Y) * w0
    assert got == pytest.approx((weight * _bce(Y, P)).mean(), rel=1e-5)


def test_dice_jaccard_tversky_known_answers():
    inter, sy, sp = _sums(Y, P)
    dice = (1 - (2 * inter + 1) / (sy + sp + 1)).mean()
    jac = (1 - (inter + 1) / (sy + sp - inter + 1)).mean()
    fp, fn = ((1 - Y) * P).sum((1, 2, 3)), (Y * (1 - P)).sum((1, 2, 3))
    tv = (1 - (inter + 1) / (inter + 0.3 * fp + 0.7 * fn + 1)).mean()
    assert _loss("dice") == pytest.approx(dice, rel=1e-5)
    assert _loss("jaccard") == pytest.approx(jac, rel=1e-5)
    assert _loss("tversky", alpha=0.3, beta=0.7) == pytest.approx(tv, rel=1e-5)
    dice0 = _loss("dice", smooth=1e-9)
    assert _loss("tversky", alpha=0.5, beta=0.5, smooth=1e-9) == pytest.approx(dice0, rel=1e-5)
    assert float(get_loss("dice", smooth=1e-6)(Y, Y)) == pytest.approx(0.0, abs=1e-5)


def test_focal_known_answer_and_gamma_zero_is_weighted_bce():
    p_t = np.where(Y == 1, P, 1 - P)
    alpha_t = np.where(Y == 1, 0.25, 0.75)
    focal = (alpha_t * (1 - p_t) ** 2 * _bce(Y, P)).mean()
    assert _loss("focal", alpha=0.25, gamma=2.0) == pytest.approx(focal, rel=1e-5)
    assert _loss("focal", alpha=0.5, gamma=0.0) == pytest.approx(0.5 * _bce(Y, P).mean(), rel=1e-5)


def test_bce_dice_is_the_sum():
    kw = {"class_weights": (0.2, 0.8), "positive_scale": 0.5}
    expected = _loss("weighted_bce", **kw) + 0.7 * _loss("dice")
    assert _loss("bce_dice", lam=0.7, **kw) == pytest.approx(expected, rel=1e-5)


def test_losses_serialise_and_train():
    for name in LOSSES:
        y, p = (Y3, P3) if name in MULTICLASS_LOSSES else (Y, P)
        if name in ("weighted_bce", "bce_dice"):
            loss = get_loss(name, class_weights=(0.1, 0.9))
        elif name in MULTICLASS_LOSSES:
            loss = get_loss(name, class_weights=(0.2, 0.5, 2.0))
        else:
            loss = get_loss(name)
        again = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(again) is type(loss)
        assert float(again(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)
    y_bf16 = keras.ops.cast(P, "bfloat16")  # mixed precision outputs are cast to float32
    assert np.isfinite(float(get_loss("dice")(Y, y_bf16)))


def test_weighted_cce_and_cce_dice_known_answers():
    w = np.array([0.3, 0.7, 2.5])
    pixel = -(w * Y3 * np.log(np.clip(P3.astype(np.float64), EPS, 1))).sum(-1)
    cce = pixel.mean()
    assert float(get_loss("weighted_cce", class_weights=w)(Y3, P3)) == pytest.approx(cce, rel=1e-5)
    plain = -(Y3 * np.log(P3.astype(np.float64))).sum(-1).mean()
    assert float(get_loss("weighted_cce")(Y3, P3)) == pytest.approx(plain, rel=1e-5)
    dice = 0.0
    for c in (1, 2):
        inter, sy, sp = _sums(Y3[..., c : c + 1], P3[..., c : c + 1])
        dice += 1 - (2 * inter + 1) / (sy + sp + 1)
    expected = cce + 0.5 * (dice / 2).mean()
    got = float(get_loss("cce_dice", class_weights=w, lam=0.5)(Y3, P3))
    assert got == pytest.approx(expected, rel=1e-5)
    # a perfect prediction: no cross-entropy, no Dice loss
    assert float(get_loss("cce_dice", smooth=1e-6)(Y3, Y3)) == pytest.approx(0.0, abs=1e-4)
    assert loss_head("cce_dice") == "three_class" and loss_head("dice") == "binary"
    with pytest.raises(ValueError, match="three non-negative"):
        get_loss("weighted_cce", class_weights=(0.1, 0.9))


def test_a_centre_channel_adds_its_weighted_cross_entropy():
    centre_true = RNG.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    centre_pred = RNG.uniform(0.01, 0.99, size=(3, 8, 8, 1)).astype(np.float32)
    y4, p4 = np.concatenate([Y3, centre_true], -1), np.concatenate([P3, centre_pred], -1)
    term = _bce(centre_true, centre_pred).mean()
    w = (0.3, 0.7, 2.5)
    for name, kw in (("weighted_cce", {"class_weights": w}), ("cce_dice", {"lam": 0.5})):
        three = float(get_loss(name, **kw)(Y3, P3))
        assert float(get_loss(name, **kw)(y4, p4)) == pytest.approx(three + term, rel=1e-5)
        heavy = float(get_loss(name, centre_weight=2.0, **kw)(y4, p4))
        assert heavy == pytest.approx(three + 2 * term, rel=1e-5)
        assert float(get_loss(name, centre_weight=0.0, **kw)(y4, p4)) == pytest.approx(three)
        restored = keras.losses.deserialize(keras.losses.serialize(get_loss(name, centre_weight=3)))
        assert restored.centre_weight == 3.0
    with pytest.raises(ValueError, match="takes no parameter"):
        get_loss("dice", centre_weight=1.0)


def test_a_separation_channel_weighs_the_cross_entropy_between_objects():
    sep = (RNG.uniform(size=(3, 8, 8, 1)) > 0.8).astype(np.float32)
    cce = -(Y3 * np.log(P3.astype(np.float64))).sum(-1)  # per pixel, class weights 1
    weighted = (cce * (1 + 4.0 * sep[..., 0])).mean()
    plain = float(get_loss("weighted_cce")(Y3, P3))
    y_sep = np.concatenate([Y3, sep], -1)
    assert float(get_loss("weighted_cce", separation_weight=4.0)(y_sep, P3)) == pytest.approx(
        weighted, rel=1e-5
    )
    assert float(get_loss("weighted_cce")(y_sep, P3)) == pytest.approx(plain, rel=1e-5)
    # cce_dice: only its cross-entropy part is weighted
    dice_part = float(get_loss("cce_dice")(Y3, P3)) - plain
    got = float(get_loss("cce_dice", separation_weight=4.0)(y_sep, P3))
    assert got == pytest.approx(weighted + dice_part, rel=1e-5)
    # beside a centre channel: classes, centre, separation
    centre_true = RNG.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    centre_pred = RNG.uniform(0.01, 0.99, size=(3, 8, 8, 1)).astype(np.float32)
    y5 = np.concatenate([Y3, centre_true, sep], -1)
    p4 = np.concatenate([P3, centre_pred], -1)
    term = _bce(centre_true, centre_pred).mean()
    got = float(get_loss("weighted_cce", separation_weight=4.0)(y5, p4))
    assert got == pytest.approx(weighted + term, rel=1e-5)
    restored = keras.losses.deserialize(
        keras.losses.serialize(get_loss("cce_dice", separation_weight=2.5))
    )
    assert restored.separation_weight == 2.5
    with pytest.raises(ValueError, match="separation_weight must be"):
        get_loss("cce_dice", separation_weight=-1.0)
    with pytest.raises(ValueError, match="takes no parameter"):
        get_loss("bce_dice", separation_weight=1.0)


def test_foreground_metrics_of_three_class_maps():
    y = np.eye(3, dtype=np.float32)[np.array([1, 2, 0, 0, 1])].reshape(1, 5, 1, 3)
    p = np.array(
        [[0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05], [0.2, 0.1, 0.7]],
        np.float32,
    ).reshape(1, 5, 1, 3)  # foreground 0.9, 0.4, 0.7, 0.1, 0.8
    precision, recall = pixel_metrics("three_class")
    precision.update_state(y, p)
    recall.update_state(y, p)
    assert float(precision.result()) == pytest.approx(2 / 3)
    assert float(recall.result()) == pytest.approx(2 / 3)
    again = keras.metrics.deserialize(keras.metrics.serialize(precision))
    assert type(again) is type(precision) and again.name == "precision"


def test_pixel_metrics_precision_recall_at_half():
    y = np.array([1, 1, 0, 0, 1], np.float32).reshape(1, 5, 1, 1)
    p = np.array([0.9, 0.4, 0.6, 0.1, 0.7], np.float32).reshape(1, 5, 1, 1)
    precision, recall = pixel_metrics()
    precision.update_state(y, p)
    recall.update_state(y, p)
    assert float(precision.result()) == pytest.approx(2 / 3)
    assert float(recall.result()) == pytest.approx(2 / 3)
    assert [m.name for m in pixel_metrics()] == ["precision", "recall"]


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("mse")
    with pytest.raises(ValueError, match="no parameter"):
        get_loss("dice", gamma=2)
    with pytest.raises(ValueError, match="class_weights"):
        get_loss("weighted_bce", class_weights=(-1, 1))
    with pytest.raises(ValueError, match="positive_scale"):
        get_loss("weighted_bce", positive_scale=0)
