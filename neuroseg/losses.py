"""Segmentation losses and pixel metrics for Keras training.

Every loss is a registered, serialisable ``keras.losses.Loss`` (package ``neuroseg``), so a
compiled model saved as ``.keras`` reloads with its loss once this module is imported. Each
``call`` returns one value per tile; Keras averages them over the batch. Targets are the
cell-class probability maps ``(b, rows, cols, 1)`` in [0, 1]; predictions are sigmoid outputs.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = [
    "LOSSES",
    "BCEDice",
    "Dice",
    "Focal",
    "Jaccard",
    "Tversky",
    "WeightedBCE",
    "get_loss",
    "pixel_metrics",
]

EPSILON = 1e-7  # the clipping of keras' binary cross-entropy


def _per_tile_mean(x):
    return ops.mean(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)


def _per_tile_sum(x):
    return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)


def _prepare(y_true, y_pred):
    y_pred = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
    y_true = ops.cast(y_true, "float32")
    return y_true, y_pred


def _bce(y_true, y_pred):
    return -(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))


class _Base(keras.losses.Loss):
    def __init__(self, name: str, **kw):
        kw.pop("reduction", None)
        super().__init__(name=name, reduction="sum_over_batch_size", **kw)

    def get_config(self):
        return {"name": self.name}


@keras.saving.register_keras_serializable(package="neuroseg")
class WeightedBCE(_Base):
    """The seed's weighted binary cross-entropy.

    ``weight = y * w1 * positive_scale + (1 - y) * w0``; the loss is the mean of
    ``weight * bce(y, p)`` over all pixels (``p`` clipped to ``[1e-7, 1 - 1e-7]``).
    """

    def __init__(self, w0=1.0, w1=1.0, positive_scale=0.33, name="weighted_bce", **kw):
        super().__init__(name=name, **kw)
        self.w0, self.w1, self.positive_scale = float(w0), float(w1), float(positive_scale)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        weight = y_true * (self.w1 * self.positive_scale) + (1.0 - y_true) * self.w0
        return _per_tile_mean(weight * _bce(y_true, y_pred))

    def get_config(self):
        return {
            **super().get_config(),
            "w0": self.w0,
            "w1": self.w1,
            "positive_scale": self.positive_scale,
        }


@keras.saving.register_keras_serializable(package="neuroseg")
class Dice(_Base):
    """Soft Dice loss per tile: ``1 - (2 sum(y p) + s) / (sum(y) + sum(p) + s)``."""

    def __init__(self, smooth=1.0, name="dice", **kw):
        super().__init__(name=name, **kw)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        inter = _per_tile_sum(y_true * y_pred)
        total = _per_tile_sum(y_true) + _per_tile_sum(y_pred)
        return 1.0 - (2.0 * inter + self.smooth) / (total + self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="neuroseg")
class Jaccard(_Base):
    """Soft Jaccard (IoU) loss per tile: ``1 - (I + s) / (sum(y) + sum(p) - I + s)``."""

    def __init__(self, smooth=1.0, name="jaccard", **kw):
        super().__init__(name=name, **kw)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        inter = _per_tile_sum(y_true * y_pred)
        union = _per_tile_sum(y_true) + _per_tile_sum(y_pred) - inter
        return 1.0 - (inter + self.smooth) / (union + self.smooth)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="neuroseg")
class Tversky(_Base):
    """Tversky loss per tile: ``1 - (TP + s) / (TP + alpha FP + beta FN + s)``.

    ``alpha`` weighs false positives, ``beta`` false negatives (Salehi et al. 2017);
    ``alpha = beta = 0.5`` is the Dice loss.
    """

    def __init__(self, alpha=0.3, beta=0.7, smooth=1.0, name="tversky", **kw):
        super().__init__(name=name, **kw)
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        tp = _per_tile_sum(y_true * y_pred)
        fp = _per_tile_sum((1.0 - y_true) * y_pred)
        fn = _per_tile_sum(y_true * (1.0 - y_pred))
        return 1.0 - (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "smooth": self.smooth,
        }


@keras.saving.register_keras_serializable(package="neuroseg")
class Focal(_Base):
    """Binary focal loss (Lin et al. 2017), mean over pixels.

    ``-alpha_t (1 - p_t)**gamma log(p_t)`` with ``p_t = p`` and ``alpha_t = alpha`` for cell
    pixels, ``p_t = 1 - p`` and ``alpha_t = 1 - alpha`` otherwise.
    """

    def __init__(self, alpha=0.25, gamma=2.0, name="focal", **kw):
        super().__init__(name=name, **kw)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        p_t = y_true * y_pred + (1.0 - y_true) * (1.0 - y_pred)
        alpha_t = y_true * self.alpha + (1.0 - y_true) * (1.0 - self.alpha)
        return _per_tile_mean(alpha_t * ops.power(1.0 - p_t, self.gamma) * _bce(y_true, y_pred))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="neuroseg")
class BCEDice(_Base):
    """The seed's weighted BCE plus ``lam`` times the soft Dice loss."""

    def __init__(
        self, w0=1.0, w1=1.0, positive_scale=0.33, lam=1.0, smooth=1.0, name="bce_dice", **kw
    ):
        super().__init__(name=name, **kw)
        self.bce = WeightedBCE(w0, w1, positive_scale)
        self.dice = Dice(smooth)
        self.lam = float(lam)

    def call(self, y_true, y_pred):
        return self.bce.call(y_true, y_pred) + self.lam * self.dice.call(y_true, y_pred)

    def get_config(self):
        return {
            **super().get_config(),
            "w0": self.bce.w0,
            "w1": self.bce.w1,
            "positive_scale": self.bce.positive_scale,
            "lam": self.lam,
            "smooth": self.dice.smooth,
        }


LOSSES = {
    "weighted_bce": WeightedBCE,
    "dice": Dice,
    "jaccard": Jaccard,
    "focal": Focal,
    "tversky": Tversky,
    "bce_dice": BCEDice,
}
_WEIGHTED = {"weighted_bce", "bce_dice"}
_PARAMS = {
    "weighted_bce": set(),
    "dice": {"smooth"},
    "jaccard": {"smooth"},
    "focal": {"alpha", "gamma"},
    "tversky": {"alpha", "beta", "smooth"},
    "bce_dice": {"lam", "smooth"},
}


def get_loss(
    name: str,
    *,
    class_weights: tuple[float, float] | None = None,
    positive_scale: float = 0.33,
    **params: float,
) -> keras.losses.Loss:
    """Build a loss by name.

    Parameters
    ----------
    name : {"weighted_bce", "dice", "jaccard", "focal", "tversky", "bce_dice"}
    class_weights : (w0, w1), optional
        Weights of background and cell pixels for ``weighted_bce`` and ``bce_dice`` (the seed's
        normalised inverse frequencies, see ``neuroseg.pipeline.class_weights_for``); default
        ``(1, 1)``. Ignored by the other losses.
    positive_scale : float
        Extra factor on the cell weight (the seed's 0.33). Ignored by the unweighted losses.
    **params
        ``smooth`` (dice, jaccard, tversky, bce_dice), ``alpha``/``gamma`` (focal),
        ``alpha``/``beta`` (tversky), ``lam`` (bce_dice).

    Returns
    -------
    keras.losses.Loss
        Called as ``loss(y_true, y_pred)`` on ``(b, rows, cols, 1)`` maps; returns a scalar.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    unknown = set(params) - _PARAMS[name]
    if unknown:
        raise ValueError(f"loss {name!r} takes no parameter(s) {', '.join(sorted(unknown))}")
    if not positive_scale > 0:
        raise ValueError(f"positive_scale must be > 0, got {positive_scale}")
    if name in _WEIGHTED:
        w0, w1 = (1.0, 1.0) if class_weights is None else class_weights
        if not (w0 >= 0 and w1 >= 0 and w0 + w1 > 0):
            raise ValueError(f"class_weights must be two non-negative numbers, got {class_weights}")
        return LOSSES[name](w0=w0, w1=w1, positive_scale=positive_scale, **params)
    return LOSSES[name](**params)


def pixel_metrics() -> list[keras.metrics.Metric]:
    """Precision and recall of the cell class at probability 0.5 (the seed's metrics of interest).

    Returns
    -------
    list of keras.metrics.Metric
        Named ``precision`` and ``recall`` (logged as ``val_precision``/``val_recall``).
    """
    return [
        keras.metrics.Precision(thresholds=0.5, name="precision"),
        keras.metrics.Recall(thresholds=0.5, name="recall"),
    ]
