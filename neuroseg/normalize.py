"""Model input as a model declares it: channel selection and intensity normalisation (light).

Real microscopes write 8-, 12- (in 16-bit files), 16-bit and float images with one, three or
more channels. A model's ``config.json`` declares what it takes in an ``input`` entry
(:class:`InputSpec`); :func:`model_input` turns any decoded image
(``neuroseg.images.decode_native``) into exactly that. Training (through preparation),
evaluation, nightly inference, ``segment`` and the classical baseline all call this one
function, so a model sees the same numbers everywhere.

Normalisations:

- ``"percentile"`` (new models, CSBDeep/StarDist's default): per image and channel,
  ``(x - p_low) / (p_high - p_low)`` with ``p_low, p_high`` the 1st and 99.8th percentiles,
  clipped to 0..1. It does not depend on the bit depth: a 12-bit image in a 16-bit file and the
  same image scaled to 8 bits give (up to 8-bit rounding) the same input.
- ``"fixed"`` (the seed's and every model trained before input specs existed): 8-bit images are
  used as they are, 0..255. Any other dtype (12/16-bit, float) cannot be read on that scale and
  is stretched by the percentile rule first, so an old model never sees a black 12-bit image.

The result is ``float32`` on the 0..255 scale the models' own ``Rescaling`` layer expects
(``percentile`` output times 255), ``(H, W, 3)``: the networks take three planes. A ``"grey"``
model gets its one channel replicated to the three planes; an ``"rgb"`` model given one
channel gets it replicated, given more than three takes the first three (or ``channel``).

Channel reduction for ``"grey"`` models given several channels: ``channel`` picks one (0-based);
otherwise the maximum over channels, which keeps the signal of every fluorophore of a composite
(FNC's yellow is red + green, its red stain red only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PERCENTILES",
    "LEGACY_INPUT",
    "InputSpec",
    "as_channels",
    "channel_max",
    "input_scale",
    "input_spec",
    "model_input",
    "percentile_normalize",
    "resize_planes",
    "scaled_shape",
    "select_channels",
    "stain_of",
    "to_uint8",
]

#: Stains :func:`stain_of` tells apart (the FNC collections').
STAINS = ("yellow", "red")
#: Green-to-red ratio of the brightest pixels under which an RGB image is the red stain: the
#: six real FNC samples measure 0.00-0.05 (red) and 0.74 (yellow), synthetic plates 0.09-0.19
#: and 0.44-0.76.
RED_GREEN_RATIO = 0.3

DEFAULT_PERCENTILES = (1.0, 99.8)
"""Low and high percentiles of the ``percentile`` normalisation (CSBDeep/StarDist's)."""

LEGACY_INPUT = {"channels": "rgb", "normalization": "fixed"}
"""The input of models whose config has no ``input`` entry: RGB on the fixed 0..255 scale."""

_CHANNELS = ("rgb", "grey")
_NORMALIZATIONS = ("fixed", "percentile")
# Above this many pixels per channel, percentiles are taken on a regular subsample (every
# `step`-th row and column): the result differs from the full image's in the 4th digit and
# it keeps a 1600x1200 image under a few milliseconds.
_EXACT_PIXELS = 1 << 20


#: Bounds of an input spec's ``scale``.
SCALE_RANGE = (0.1, 4.0)


class InputSpec(dict):
    """A validated ``input`` entry of a model config (a plain ``dict`` for JSON).

    Keys: ``channels`` (``"rgb"`` | ``"grey"``), ``normalization`` (``"fixed"`` |
    ``"percentile"``), ``percentiles`` (``[low, high]``, for ``percentile`` and for non-8-bit
    images under ``fixed``), and ``scale`` only when it is not 1: the model sees images resized
    by this factor (0.5: half the rows and columns, so a 3x3 convolution spans twice the
    tissue), in training (``neuroseg.prepare``) and in prediction
    (``neuroseg.predict.predict_input``, which returns maps at the image's own size).
    """


def input_spec(spec: Mapping[str, Any] | None = None, **overrides: Any) -> InputSpec:
    """Validate and complete an input spec; ``None`` gives :data:`LEGACY_INPUT`.

    Raises
    ------
    ValueError
        Unknown channels or normalisation, or percentiles not ``0 <= low < high <= 100``.
    """
    out = dict(LEGACY_INPUT if spec is None else spec)
    out.update(overrides)
    channels = str(out.get("channels", "rgb")).lower().replace("gray", "grey")
    if channels not in _CHANNELS:
        raise ValueError(f"input channels must be one of {_CHANNELS}, got {channels!r}")
    norm = str(out.get("normalization", "fixed")).lower()
    if norm not in _NORMALIZATIONS:
        raise ValueError(f"input normalization must be one of {_NORMALIZATIONS}, got {norm!r}")
    low, high = (float(v) for v in out.get("percentiles", DEFAULT_PERCENTILES))
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"input percentiles must satisfy 0 <= low < high <= 100, got {low, high}")
    spec = InputSpec(channels=channels, normalization=norm, percentiles=[low, high])
    try:
        scale = float(out.get("scale", 1.0))
    except (TypeError, ValueError):
        raise ValueError(f"input scale must be a number, got {out.get('scale')!r}") from None
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        raise ValueError(
            f"input scale must be between {SCALE_RANGE[0]:g} and {SCALE_RANGE[1]:g}, got {scale!r}"
        )
    if scale != 1.0:  # absent at 1: the specs of models trained before scales existed
        spec["scale"] = scale
    return spec


def input_scale(spec: Mapping[str, Any] | None) -> float:
    """The factor a model's images are resized by (its input spec's ``scale``; 1 when absent)."""
    return float(input_spec(spec).get("scale", 1.0))


def scaled_shape(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """``(rows, cols)`` of an image of ``shape`` resized by ``scale`` (at least 1 x 1)."""
    return (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))


def resize_planes(image: np.ndarray, shape: tuple[int, int], *, nearest: bool = False):
    """``image`` (``(H, W)`` or ``(H, W, C)``) resized to ``shape`` = ``(rows, cols)``.

    Bilinear with Pillow's antialiasing (a shrunk image averages the pixels it covers) for
    ``uint8`` and float images (float32 result); ``nearest`` for label images (any integer
    dtype up to int32, labels kept as they are). Planes that are copies of the first (a grey
    model's replicated input) are resized once.
    """
    from PIL import Image

    image = np.asarray(image)
    rows, cols = int(shape[0]), int(shape[1])
    if image.shape[:2] == (rows, cols):
        return image
    planes = as_channels(image)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR

    def one(plane: np.ndarray) -> np.ndarray:
        if nearest:
            if plane.dtype.kind not in "iub" or plane.dtype.itemsize > 4:
                raise ValueError(f"nearest resizing takes integer labels, got {plane.dtype}")
            data = np.ascontiguousarray(plane, dtype=np.int32)
        elif plane.dtype == np.uint8:
            data = np.ascontiguousarray(plane)
        else:
            data = np.ascontiguousarray(plane, dtype=np.float32)
        return np.asarray(Image.fromarray(data).resize((cols, rows), resample))

    first = one(planes[..., 0])
    out = np.empty((rows, cols, planes.shape[2]), first.dtype)
    out[..., 0] = first
    for c in range(1, planes.shape[2]):
        same = np.array_equal(planes[..., c], planes[..., 0])
        out[..., c] = first if same else one(planes[..., c])
    if nearest:
        out = out.astype(image.dtype, copy=False)
    return out[..., 0] if image.ndim == 2 else out


def as_channels(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(H, W, 1)``; ``(H, W, C)`` unchanged.

    Raises
    ------
    ValueError
        Not 2-D or 3-D, or empty.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"expected an image of shape (H, W) or (H, W, C), got {image.shape}")
    return image


def channel_max(image: np.ndarray) -> np.ndarray:
    """The maximum over the channels of an ``(H, W, C)`` image, ``(H, W)`` in its dtype.

    The same numbers as ``image.max(axis=2)``, about 25x faster on 8-bit RGB: numpy reduces a
    short last axis pixel by pixel, while this takes the elementwise maximum of whole planes
    (NaN propagates as in ``max``). ``(H, W)`` images are returned as they are.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] == 0:
        raise ValueError(f"expected an image of shape (H, W) or (H, W, C), got {image.shape}")
    out = image[..., 0].copy()
    for c in range(1, image.shape[2]):
        np.maximum(out, image[..., c], out=out)
    return out


def stain_of(image: np.ndarray) -> str | None:
    """The FNC stain of an RGB image: ``"red"`` or ``"yellow"``, ``None`` when it cannot tell.

    The stained structure is the brightest 1 % of the pixels (by their maximum over the
    channels, on a sample of about 0.5 M pixels); its median green-to-red ratio is
    under :data:`RED_GREEN_RATIO` for the red stain and above for yellow (red + green). Grey,
    two-channel and blank images give ``None``.
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] < 3:
        return None
    step = max(1, int((a.shape[0] * a.shape[1] / 500_000) ** 0.5))  # about 0.5 M pixels
    rgb = a[::step, ::step, :3].astype(np.float32)
    grey = channel_max(rgb)
    top = grey >= np.percentile(grey, 99)
    red = float(np.median(rgb[..., 0][top]))
    if not np.isfinite(red) or red <= 0 or float(grey.max()) <= float(grey.min()):
        return None
    green = float(np.median(rgb[..., 1][top]))
    return "red" if green / red < RED_GREEN_RATIO else "yellow"


def select_channels(
    image: np.ndarray, *, channels: str = "rgb", channel: int | None = None
) -> np.ndarray:
    """The planes a model takes: ``(H, W, 1)`` for ``"grey"``, ``(H, W, 3)`` for ``"rgb"``.

    ``channel`` (0-based) picks one channel of a multi-channel image (for ``rgb`` it is then
    replicated). Without it, ``grey`` reduces several channels by their maximum and ``rgb``
    replicates one channel or takes the first three. The dtype is kept.

    Raises
    ------
    ValueError
        ``channel`` outside the image's channels, or an unknown ``channels``.
    """
    image = as_channels(image)
    n = image.shape[2]
    if channel is not None:
        if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
            raise ValueError(f"channel must be an integer, got {channel!r}")
        if not 0 <= channel < n:
            raise ValueError(f"channel {channel} is out of range: the image has {n} channel(s)")
        image = image[..., channel : channel + 1]
        n = 1
    if channels in ("grey", "gray"):
        return image if n == 1 else channel_max(image)[..., None]
    if channels != "rgb":
        raise ValueError(f"channels must be 'rgb' or 'grey', got {channels!r}")
    if n == 1:
        return np.repeat(image, 3, axis=2)
    if n == 2:
        return np.concatenate([image, np.zeros_like(image[..., :1])], axis=2)
    return image[..., :3]


def _percentiles(plane: np.ndarray, low: float, high: float) -> tuple[float, float]:
    if plane.size > _EXACT_PIXELS:
        step = int(np.ceil(np.sqrt(plane.size / _EXACT_PIXELS)))
        plane = plane[::step, ::step]
    lo, hi = np.percentile(plane, (low, high))
    return float(lo), float(hi)


def percentile_normalize(
    image: np.ndarray,
    *,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    clip: bool = True,
) -> np.ndarray:
    """Per-channel ``(x - p_low) / (p_high - p_low)`` as ``float32`` (``(H, W, C)``).

    A channel whose percentiles coincide (a flat image) maps to 0. With ``clip`` the result is
    limited to 0..1. NaNs (float TIFFs) are treated as 0.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, any real dtype.
    percentiles : (float, float)
        Low and high percentiles, 0..100.
    clip : bool
        Clip to 0..1.
    """
    image = as_channels(image)
    if image.dtype.kind == "f":
        image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = percentiles
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[2]):
        plane = image[..., c]
        lo, hi = _percentiles(plane, low, high)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            out[..., c] = 0.0
            continue
        np.subtract(plane, lo, out=out[..., c], dtype=np.float32, casting="unsafe")
        out[..., c] *= np.float32(1.0 / (hi - lo))
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def model_input(
    image: np.ndarray, spec: Mapping[str, Any] | None = None, *, channel: int | None = None
) -> np.ndarray:
    """What a model declared by `spec` takes: ``(H, W, 3) float32`` on the 0..255 scale.

    Parameters
    ----------
    image : numpy.ndarray
        A decoded image, ``(H, W)`` or ``(H, W, C)`` of any dtype (see
        ``neuroseg.images.decode_native``).
    spec : mapping, optional
        The model's ``input`` entry (:func:`input_spec`); ``None`` = :data:`LEGACY_INPUT`.
    channel : int, optional
        Channel to use from a multi-channel image (0-based).
    """
    spec = input_spec(spec)
    planes = select_channels(image, channels=spec["channels"], channel=channel)
    if spec["normalization"] == "fixed" and planes.dtype == np.uint8:
        out = planes.astype(np.float32)
    else:
        out = percentile_normalize(planes, percentiles=tuple(spec["percentiles"]))
        out *= np.float32(255.0)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out


def to_uint8(image: np.ndarray, *, percentiles: tuple[float, float] = DEFAULT_PERCENTILES):
    """An 8-bit view for display and overlays: 8-bit as is, other dtypes percentile-stretched.

    Returns ``(H, W, C) uint8`` with the image's channels (1 or more).
    """
    image = as_channels(image)
    if image.dtype == np.uint8:
        return image
    out = percentile_normalize(image, percentiles=percentiles)
    return np.round(out * 255.0).astype(np.uint8)
