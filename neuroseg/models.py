"""Segmentation networks (Keras 3): the seed's shallow CNN and a small U-Net.

Both take raw RGB tiles as floats in 0..255 (a ``Rescaling(1/255)`` layer inside the model does
what the seed's ``Lambda`` did, but serialises without custom code) and output, with the
``binary`` head (the seed's), a sigmoid probability map of the cell class, or with the
``three_class`` head a softmax over background, interior and boundary
(:mod:`neuroseg.instances`). Mixed precision uses a per-layer ``mixed_bfloat16`` dtype policy
(no global state is changed) with the last layer in float32.

The U-Net can start with a space-to-depth stem (``space_to_depth=True``): each 2x2 block of
input pixels becomes one position with 12 channels, the whole network runs at half resolution
and the head predicts the four pixels of every block (a sub-pixel output, as in ESPCN), so the
output keeps the input's size. Full-resolution activations are what costs most on a CPU (a
width-8 U-Net takes about as long as a width-4 one), so this is about 0.6 of the time per
image for the same parameters and receptive field.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from neuroseg.tiling import stride  # re-exported: the U-Net's input stride

__all__ = [
    "ARCHITECTURES",
    "HEADS",
    "SEED_FILTERS",
    "DepthToSpace",
    "SpaceToDepth",
    "build_model",
    "describe_unet",
    "fold_batch_norm",
    "head_channels",
    "output_size",
    "stride",
]

ARCHITECTURES = ("shallow", "unet")
#: Output heads: ``binary`` (one sigmoid channel, the cell class) and ``three_class`` (softmax
#: over background, interior, boundary).
HEADS = ("binary", "three_class")
_HEAD_CHANNELS = {"binary": 1, "three_class": 3}
#: Filters of the seed's four convolutions; the transposed convolution has kernel 6.
SEED_FILTERS = (196, 256, 512, 512)
_SEED_TRANSPOSE_KERNEL = 6


def _shallow_output(tile: int) -> int:
    n = (tile - 5) // 2 + 1  # Conv2D(5, stride 2, valid)
    n = n // 2  # MaxPool 2
    n = n - 4  # Conv2D(5)
    n = n // 2  # MaxPool 2
    n = n - 2  # Conv2D(3); Conv2D(1) keeps the size
    return n + _SEED_TRANSPOSE_KERNEL - 1 if n >= 1 else 0


def head_channels(head: str) -> int:
    """Output channels of a head: 1 for ``binary``, 3 for ``three_class``."""
    if head not in _HEAD_CHANNELS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    return _HEAD_CHANNELS[head]


def _activation(head: str) -> str:
    return "sigmoid" if head == "binary" else "softmax"


def _shallow(tile: int, width: int | None, policy: str | None, head: str) -> keras.Model:
    if _shallow_output(tile) < 1:
        raise ValueError(f"tile {tile} is too small for the shallow model (use >= 40)")
    filters = SEED_FILTERS
    if width is not None:
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        filters = tuple(max(1, round(f * width / SEED_FILTERS[0])) for f in SEED_FILTERS)
    kw = {"dtype": policy} if policy else {}
    return keras.Sequential(
        [
            keras.Input(shape=(tile, tile, 3)),
            layers.Rescaling(1.0 / 255, name="rescale", **kw),
            layers.Conv2D(filters[0], 5, strides=2, activation="relu", **kw),
            layers.MaxPooling2D(2, **kw),
            layers.Conv2D(filters[1], 5, activation="relu", **kw),
            layers.MaxPooling2D(2, **kw),
            layers.Conv2D(filters[2], 3, activation="relu", **kw),
            layers.Conv2D(filters[3], 1, activation="relu", **kw),
            layers.Conv2DTranspose(
                head_channels(head),
                _SEED_TRANSPOSE_KERNEL,
                activation=_activation(head),
                dtype="float32",
                name="prob",
            ),
        ],
        name="shallow",
    )


class _BlockShuffle(layers.Layer):
    """A rearrangement of k x k pixel blocks (``block`` = k), saved with its block size."""

    def __init__(self, block: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block = int(block)

    def get_config(self):
        return {**super().get_config(), "block": self.block}


@keras.saving.register_keras_serializable(package="neuroseg")
class SpaceToDepth(_BlockShuffle):
    """``(b, h, w, c) -> (b, h/k, w/k, k*k*c)``: each k x k block of pixels becomes one position.

    Channel ``(i * k + j) * c + ch`` of an output position holds channel ``ch`` of the block's
    pixel at row ``i``, column ``j``; :class:`DepthToSpace` is its inverse. Sides must be
    divisible by ``k``. Backend-neutral (``keras.ops``).
    """

    def call(self, x):
        k, c = self.block, x.shape[-1]
        shape = keras.ops.shape(x)
        h, w = shape[1] // k, shape[2] // k
        x = keras.ops.reshape(x, (-1, h, k, w, k, c))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (-1, h, w, k * k * c))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        k = self.block
        return (b, None if h is None else h // k, None if w is None else w // k, k * k * c)


@keras.saving.register_keras_serializable(package="neuroseg")
class DepthToSpace(_BlockShuffle):
    """``(b, h, w, k*k*c) -> (b, h*k, w*k, c)``, the inverse of :class:`SpaceToDepth`."""

    def call(self, x):
        k = self.block
        c = x.shape[-1] // (k * k)
        shape = keras.ops.shape(x)
        h, w = shape[1], shape[2]
        x = keras.ops.reshape(x, (-1, h, w, k, k, c))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (-1, h * k, w * k, c))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        k = self.block
        return (b, None if h is None else h * k, None if w is None else w * k, c // (k * k))


def describe_unet(train: dict) -> str:
    """The U-Net of a training configuration in words, for model cards: ``"U-Net, width 8,
    depth 4"`` and the stem when it has one."""
    text = f"U-Net, width {train.get('width')}, depth {train.get('depth')}"
    if train.get("space_to_depth"):
        text += ", space-to-depth stem (runs at half resolution, sub-pixel head)"
    return text


def _conv_block(x, filters: int, batch_norm: bool, kw: dict, name: str):
    for i in (1, 2):
        x = layers.Conv2D(
            filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{i}", **kw
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}", **kw)(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}", **kw)(x)
    return x


def _unet(
    tile: int | None,
    width: int,
    depth: int,
    batch_norm: bool,
    policy: str | None,
    head: str,
    centre: bool = False,
    space_to_depth: bool = False,
) -> keras.Model:
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
    step = stride(depth, space_to_depth)
    if tile is not None and tile % step:
        what = "2**(depth + 1) (space-to-depth stem)" if space_to_depth else "2**depth"
        raise ValueError(f"tile {tile} must be divisible by {what} = {step} for the U-Net")
    kw = {"dtype": policy} if policy else {}
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale", **kw)(inputs)
    if space_to_depth:
        x = SpaceToDepth(2, name="space_to_depth", **kw)(x)
    skips = []
    for level in range(depth):
        x = _conv_block(x, width * 2**level, batch_norm, kw, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}", **kw)(x)
    x = _conv_block(x, width * 2**depth, batch_norm, kw, "bottom")
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(width * 2**level, 2, strides=2, name=f"up{level}", **kw)(x)
        x = layers.Concatenate(name=f"skip{level}", **kw)([x, skips[level]])
        x = _conv_block(x, width * 2**level, batch_norm, kw, f"dec{level}")
    if space_to_depth:
        outputs = _subpixel_head(x, head, centre)
    elif centre:
        classes = layers.Conv2D(
            head_channels(head), 1, activation="softmax", dtype="float32", name="prob_classes"
        )(x)
        centres = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="prob_centre")(x)
        outputs = layers.Concatenate(dtype="float32", name="prob")([classes, centres])
    else:
        outputs = layers.Conv2D(
            head_channels(head), 1, activation=_activation(head), dtype="float32", name="prob"
        )(x)
    return keras.Model(inputs, outputs, name="unet")


def _subpixel_head(x, head: str, centre: bool):
    """The head of a half-resolution U-Net: 1x1 convolutions predict every output channel for
    the four pixels of each 2x2 block, :class:`DepthToSpace` puts them in place, and the
    activation (over each pixel's own channels) comes last."""
    f32 = {"dtype": "float32"}
    logits = layers.Conv2D(4 * head_channels(head), 1, name="logits_classes", **f32)(x)
    logits = DepthToSpace(2, name="to_space_classes", **f32)(logits)
    name = "prob_classes" if centre else "prob"
    classes = layers.Activation(_activation(head), name=name, **f32)(logits)
    if not centre:
        return classes
    c = layers.Conv2D(4, 1, name="logits_centre", **f32)(x)
    c = DepthToSpace(2, name="to_space_centre", **f32)(c)
    centres = layers.Activation("sigmoid", name="prob_centre", **f32)(c)
    return layers.Concatenate(name="prob", **f32)([classes, centres])


def build_model(
    name: str,
    *,
    tile: int = 400,
    width: int | None = None,
    depth: int = 3,
    batch_norm: bool = True,
    mixed_precision: bool = False,
    head: str = "binary",
    centre: bool = False,
    space_to_depth: bool = False,
) -> keras.Model:
    """Build an uncompiled segmentation model.

    Parameters
    ----------
    name : {"shallow", "unet"}
        ``shallow`` is the seed's 5-layer CNN: Rescaling, Conv2D(196, 5, stride 2), MaxPool 2,
        Conv2D(256, 5), MaxPool 2, Conv2D(512, 3), Conv2D(512, 1), Conv2DTranspose(1, 6,
        sigmoid); input ``(tile, tile, 3)``, output ``(50, 50, 1)`` at tile 400 (2,730,801
        parameters). ``unet`` is a small full-resolution U-Net with ``depth`` poolings, ``width``
        filters at the first level doubling per level, same padding, optional BatchNorm and a
        1x1 sigmoid head; it is fully convolutional (input ``(None, None, 3)``, sides divisible
        by ``2**depth``), output the input size with one channel.
    tile : int
        Tile side in pixels (fixed input of ``shallow``; checked for divisibility by ``unet``).
    width : int, optional
        ``unet``: filters of the first level (default 16, about 0.49 M parameters at depth 3).
        ``shallow``: filters of the first convolution, the others scaled in the seed's
        proportions (default: the seed's 196).
    depth : int
        ``unet`` only: number of poolings.
    batch_norm : bool
        ``unet`` only: BatchNormalization after each convolution.
    mixed_precision : bool
        Compute in bfloat16 (``mixed_bfloat16`` policy per layer), the output layer in float32.
    head : {"binary", "three_class"}
        ``binary``: one sigmoid channel (the cell class; the seed's). ``three_class``: a
        softmax over background, interior and boundary (:mod:`neuroseg.instances`), in place
        of the last layer's single channel; the rest of the network is the same.
    centre : bool
        ``unet`` with the ``three_class`` head only: a fourth output channel, a sigmoid centre
        map (each object's normalised distance to its outline,
        :func:`neuroseg.instances.centre_targets`) from its own 1x1 convolution beside the
        softmax.
    space_to_depth : bool
        ``unet`` only: the space-to-depth stem (the module's docstring): the network runs at
        half resolution with a sub-pixel head; input sides divisible by ``2**(depth + 1)``.

    Returns
    -------
    keras.Model
        Input raw RGB in 0..255 as float ``(b, rows, cols, 3)``; output probabilities
        ``(b, out, out, C)`` float32, ``C`` = 1 (binary), 3 (three_class) or 4 (with
        ``centre``).
    """
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    head_channels(head)  # unknown heads raise
    if centre and (name != "unet" or head != "three_class"):
        raise ValueError("centre needs the 'unet' model with the 'three_class' head")
    if space_to_depth and name != "unet":
        raise ValueError("space_to_depth needs the 'unet' model")
    policy = "mixed_bfloat16" if mixed_precision else None
    if name == "shallow":
        return _shallow(tile, width, policy, head)
    if name == "unet":
        width = 16 if width is None else width
        return _unet(tile, width, depth, batch_norm, policy, head, centre, space_to_depth)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")


def output_size(model: keras.Model, *, tile: int | None = None) -> int:
    """Side of the model's output map for a square input tile.

    Parameters
    ----------
    model : keras.Model
        A model from :func:`build_model` (or any model with a square image output).
    tile : int, optional
        Input tile side; needed only when the model's input size is not fixed (the U-Net).

    Returns
    -------
    int
        50 for the seed's shallow model at tile 400; ``tile`` for the U-Net.
    """
    shape = model.output_shape
    if shape[1] is not None:
        return int(shape[1])
    if tile is None:
        raise ValueError(f"model {model.name!r} has no fixed input size; pass tile=")
    return int(model.compute_output_shape((1, tile, tile, 3))[1])


def fold_batch_norm(model: keras.Model, *, mixed_precision: bool = False) -> keras.Model:
    """The same U-Net for inference with every BatchNormalization folded into its convolution.

    Inference-mode BatchNorm is an affine map per channel, ``y = (x - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)``; after a convolution without bias it is the convolution with
    kernel ``W * s`` and bias ``beta - mean * s``. The twin (``batch_norm=False``) computes the
    same outputs (to float rounding) without the per-layer normalisation passes over the
    activations: about a quarter less time per image on a CPU. Not for training (no BatchNorm
    left to learn).

    Parameters
    ----------
    model : keras.Model
        A ``unet`` from :func:`build_model` with ``batch_norm=True`` (its width and depth are
        read from its layers).
    mixed_precision : bool
        Policy of the twin (the weights are float32 either way).

    Returns
    -------
    keras.Model
        Named ``unet``, same input, output and head.
    """
    if model.name != "unet":
        raise ValueError(f"only the unet has BatchNorm to fold, got {model.name!r}")
    channels = model.output_shape[-1]
    head = "binary" if channels == 1 else "three_class"
    width = int(model.get_layer("down0_conv1").filters)
    depth = sum(1 for layer in model.layers if layer.name.startswith("pool"))
    policy = "mixed_bfloat16" if mixed_precision else None
    s2d = any(isinstance(layer, SpaceToDepth) for layer in model.layers)
    twin = _unet(None, width, depth, False, policy, head, centre=channels == 4, space_to_depth=s2d)
    for layer in twin.layers:
        if not layer.weights:
            continue
        source = model.get_layer(layer.name)
        if isinstance(layer, layers.Conv2D) and not source.use_bias:
            bn = model.get_layer(layer.name.replace("_conv", "_bn"))
            gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
            scale = gamma / np.sqrt(var + bn.epsilon)
            kernel = np.asarray(source.get_weights()[0], np.float64) * scale
            layer.set_weights([kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)])
        else:
            layer.set_weights(source.get_weights())
    return twin
