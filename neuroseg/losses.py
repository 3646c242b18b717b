"""Segmentation losses and pixel metrics for Keras training.

Every loss is a registered, serialisable ``keras.losses.Loss`` (package ``neuroseg``), so a
compiled model saved as ``.keras`` reloads with its loss once this module is imported. Each
``call`` returns one value per tile; Keras averages them over the batch. Targets of the binary
losses are the cell-class probability maps ``(b, rows, cols, 1)`` in [0, 1], their predictions
sigmoid outputs. The three-class losses (:data:`MULTICLASS_LOSSES`) take one-hot targets
``(b, rows, cols, 3)`` (background, interior, boundary; :mod:`neuroseg.instances`) and softmax
predictions; with a fourth channel (a centre map, :func:`neuroseg.instances.centre_targets`,
and a sigmoid prediction of it) they add ``centre_weight`` times its binary cross-entropy. A
target with one channel more than the prediction carries a separation map last
(:func:`neuroseg.instances.separation_targets`): the cross-entropy of its pixels, between close
objects, weighs ``1 + separation_weight`` times.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = [
    "LOSSES",
    "MULTICLASS_LOSSES",
    "BCEDice",
    "CCEDice",
    "Dice",
    "Focal",
    "ForegroundPrecision",
    "ForegroundRecall",
    "Jaccard",
    "Tversky",
    "WeightedBCE",
    "WeightedCCE",
    "get_loss",
    "loss_head",
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


def _cce_prepare(y_true, y_pred):
    return ops.cast(y_true, "float32"), ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0)


def _split_separation(y_true, y_pred, weight: float):
    """``(y_true, pixel_weights)``: the targets without their separation channel and the
    per-pixel weights of the cross-entropy (``1 + weight`` on separation pixels), or
    ``(y_true, None)`` when the targets have no channel more than the predictions."""
    if y_true.shape[-1] != y_pred.shape[-1] + 1:
        return y_true, None
    separation = ops.cast(y_true[..., -1], "float32")
    return y_true[..., :-1], 1.0 + weight * separation


def _split_centre(y_true, y_pred, weight: float):
    """``(classes_true, classes_pred, centre_term)``: the three class channels and, when a
    fourth (centre) channel is present, ``weight`` times its per-tile mean cross-entropy
    (else 0)."""
    if y_pred.shape[-1] != 4:
        return y_true, y_pred, 0.0
    centre_true, centre_pred = _prepare(y_true[..., 3], y_pred[..., 3])
    term = weight * _per_tile_mean(_bce(centre_true, centre_pred))
    return y_true[..., :3], y_pred[..., :3], term


@keras.saving.register_keras_serializable(package="neuroseg")
class WeightedCCE(_Base):
    """Class-weighted categorical cross-entropy of one-hot maps, mean over pixels.

    ``-sum_c w_c y_c log(p_c)`` per pixel (``p`` clipped to ``[1e-7, 1]``), averaged over the
    tile. With weights ``w_c`` such that ``sum_c f_c w_c = 1`` (``f_c``: class frequencies of
    the training tiles, see ``neuroseg.pipeline.multiclass_weights_for``) it keeps the scale of
    the plain cross-entropy while the rare boundary class weighs more.
    """

    def __init__(
        self,
        class_weights=(1.0, 1.0, 1.0),
        centre_weight=1.0,
        separation_weight=0.0,
        name="weighted_cce",
        **kw,
    ):
        super().__init__(name=name, **kw)
        self.class_weights = [float(w) for w in class_weights]
        self.centre_weight = float(centre_weight)
        self.separation_weight = float(separation_weight)

    def call(self, y_true, y_pred):
        y_true, pixel_weights = _split_separation(y_true, y_pred, self.separation_weight)
        y_true, y_pred, centre = _split_centre(y_true, y_pred, self.centre_weight)
        return self._cce(y_true, y_pred, pixel_weights) + centre

    def _cce(self, y_true, y_pred, pixel_weights=None):
        """Per-tile mean class-weighted cross-entropy of the three class channels."""
        y_true, y_pred = _cce_prepare(y_true, y_pred)
        weights = ops.convert_to_tensor(self.class_weights, dtype="float32")
        per_pixel = -ops.sum(weights * y_true * ops.log(y_pred), axis=-1)
        if pixel_weights is not None:
            per_pixel = per_pixel * pixel_weights
        return _per_tile_mean(per_pixel)

    def get_config(self):
        return {
            **super().get_config(),
            "class_weights": list(self.class_weights),
            "centre_weight": self.centre_weight,
            "separation_weight": self.separation_weight,
        }


@keras.saving.register_keras_serializable(package="neuroseg")
class CCEDice(_Base):
    """:class:`WeightedCCE` plus ``lam`` times the soft Dice loss of the object classes.

    The Dice term is the mean over the interior and boundary channels (1 and 2) of
    ``1 - (2 sum(y_c p_c) + s) / (sum(y_c) + sum(p_c) + s)`` per tile: it rewards the overlap
    of the thin boundary class directly, whatever its share of the pixels.
    """

    def __init__(
        self,
        class_weights=(1.0, 1.0, 1.0),
        lam=1.0,
        smooth=1.0,
        centre_weight=1.0,
        separation_weight=0.0,
        name="cce_dice",
        **kw,
    ):
        super().__init__(name=name, **kw)
        self.cce = WeightedCCE(class_weights)
        self.lam, self.smooth = float(lam), float(smooth)
        self.centre_weight = float(centre_weight)
        self.separation_weight = float(separation_weight)

    def call(self, y_true, y_pred):
        y_true, pixel_weights = _split_separation(y_true, y_pred, self.separation_weight)
        y_true, y_pred, centre = _split_centre(y_true, y_pred, self.centre_weight)
        y_true, y_pred = _cce_prepare(y_true, y_pred)
        dice = 0.0
        for c in (1, 2):
            yc, pc = y_true[..., c], y_pred[..., c]
            inter = _per_tile_sum(yc * pc)
            total = _per_tile_sum(yc) + _per_tile_sum(pc)
            dice = dice + 1.0 - (2.0 * inter + self.smooth) / (total + self.smooth)
        return self.cce._cce(y_true, y_pred, pixel_weights) + self.lam * dice / 2.0 + centre

    def get_config(self):
        return {
            **super().get_config(),
            "class_weights": list(self.cce.class_weights),
            "lam": self.lam,
            "smooth": self.smooth,
            "centre_weight": self.centre_weight,
            "separation_weight": self.separation_weight,
        }


LOSSES = {
    "weighted_bce": WeightedBCE,
    "dice": Dice,
    "jaccard": Jaccard,
    "focal": Focal,
    "tversky": Tversky,
    "bce_dice": BCEDice,
    "weighted_cce": WeightedCCE,
    "cce_dice": CCEDice,
}
#: The losses of the ``three_class`` head (one-hot targets); the others are binary.
MULTICLASS_LOSSES = ("weighted_cce", "cce_dice")
_WEIGHTED = {"weighted_bce", "bce_dice"}
_PARAMS = {
    "weighted_bce": set(),
    "dice": {"smooth"},
    "jaccard": {"smooth"},
    "focal": {"alpha", "gamma"},
    "tversky": {"alpha", "beta", "smooth"},
    "bce_dice": {"lam", "smooth"},
    "weighted_cce": {"centre_weight", "separation_weight"},
    "cce_dice": {"lam", "smooth", "centre_weight", "separation_weight"},
}


def loss_head(name: str) -> str:
    """The model head a loss trains: ``"three_class"`` for :data:`MULTICLASS_LOSSES`, else
    ``"binary"``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return "three_class" if name in MULTICLASS_LOSSES else "binary"


def get_loss(
    name: str,
    *,
    class_weights: tuple[float, ...] | None = None,
    positive_scale: float = 0.33,
    **params: float,
) -> keras.losses.Loss:
    """Build a loss by name.

    Parameters
    ----------
    name : str
        Binary: ``weighted_bce``, ``dice``, ``jaccard``, ``focal``, ``tversky``, ``bce_dice``;
        three-class: ``weighted_cce``, ``cce_dice``.
    class_weights : tuple of float, optional
        ``(w0, w1)``: weights of background and cell pixels for ``weighted_bce`` and
        ``bce_dice`` (the seed's normalised inverse frequencies, see
        ``neuroseg.pipeline.class_weights_for``); ``(w_background, w_interior, w_boundary)``
        for ``weighted_cce`` and ``cce_dice`` (``neuroseg.pipeline.multiclass_weights_for``).
        Default: all 1. Ignored by the other losses.
    positive_scale : float
        Extra factor on the cell weight (the seed's 0.33). Ignored by the unweighted and the
        three-class losses.
    **params
        ``smooth`` (dice, jaccard, tversky, bce_dice, cce_dice), ``alpha``/``gamma`` (focal),
        ``alpha``/``beta`` (tversky), ``lam`` (bce_dice, cce_dice), ``centre_weight``
        (weighted_cce, cce_dice: weight of the centre map's cross-entropy when the targets
        have one), ``separation_weight`` (weighted_cce, cce_dice: the extra weight of the
        cross-entropy between close objects when the targets carry a separation map; 0).

    Returns
    -------
    keras.losses.Loss
        Called as ``loss(y_true, y_pred)`` on ``(b, rows, cols, 1)`` maps (three-class losses:
        ``(b, rows, cols, 3)`` one-hot targets and softmax outputs); returns a scalar.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    unknown = set(params) - _PARAMS[name]
    if unknown:
        raise ValueError(f"loss {name!r} takes no parameter(s) {', '.join(sorted(unknown))}")
    if not positive_scale > 0:
        raise ValueError(f"positive_scale must be > 0, got {positive_scale}")
    if name in MULTICLASS_LOSSES:
        weights = (1.0, 1.0, 1.0) if class_weights is None else tuple(class_weights)
        if len(weights) != 3 or not all(w >= 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(
                f"class_weights of {name!r} must be three non-negative numbers, got {class_weights}"
            )
        if not params.get("separation_weight", 0.0) >= 0:
            raise ValueError(f"separation_weight must be >= 0, got {params['separation_weight']!r}")
        return LOSSES[name](class_weights=weights, **params)
    if name in _WEIGHTED:
        w0, w1 = (1.0, 1.0) if class_weights is None else class_weights
        if not (w0 >= 0 and w1 >= 0 and w0 + w1 > 0):
            raise ValueError(f"class_weights must be two non-negative numbers, got {class_weights}")
        return LOSSES[name](w0=w0, w1=w1, positive_scale=positive_scale, **params)
    return LOSSES[name](**params)


def _foreground(y_true, y_pred):
    """One-hot targets and softmax outputs -> foreground (1 - background) maps."""
    return 1.0 - ops.cast(y_true, "float32")[..., 0], 1.0 - ops.cast(y_pred, "float32")[..., 0]


@keras.saving.register_keras_serializable(package="neuroseg")
class ForegroundPrecision(keras.metrics.Precision):
    """Precision of the foreground (interior or boundary) of three-class maps, at 0.5."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(*_foreground(y_true, y_pred), sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="neuroseg")
class ForegroundRecall(keras.metrics.Recall):
    """Recall of the foreground (interior or boundary) of three-class maps, at 0.5."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(*_foreground(y_true, y_pred), sample_weight=sample_weight)


def pixel_metrics(head: str = "binary") -> list[keras.metrics.Metric]:
    """Precision and recall of the cell class at probability 0.5 (the seed's metrics of interest).

    Parameters
    ----------
    head : {"binary", "three_class"}
        For ``three_class`` the cell class is the foreground, ``1 - p_background``.

    Returns
    -------
    list of keras.metrics.Metric
        Named ``precision`` and ``recall`` (logged as ``val_precision``/``val_recall``).
    """
    if head == "three_class":
        return [
            ForegroundPrecision(thresholds=0.5, name="precision"),
            ForegroundRecall(thresholds=0.5, name="recall"),
        ]
    if head != "binary":
        raise ValueError(f"head must be 'binary' or 'three_class', got {head!r}")
    return [
        keras.metrics.Precision(thresholds=0.5, name="precision"),
        keras.metrics.Recall(thresholds=0.5, name="recall"),
    ]
