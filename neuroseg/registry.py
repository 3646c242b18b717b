"""The model registry: self-describing model folders under ``<root>/models/<name>/<version>/``.

A version folder holds ``model.keras`` (weights and architecture, no optimizer state),
``config.json`` (architecture, tile, output size, inference settings, the training config and
the lineage) and ``lineage.json``; the evaluation adds ``metrics.json``. ``config.json`` is
written last, so a folder without it is an unfinished registration and is never listed.
``<root>/models/<name>/production.json`` names the version that serves the nightly run, with
the history of promotions.

Importing this module is light (no TensorFlow); loading and registering models import it.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroseg import storage

if TYPE_CHECKING:
    import keras

__all__ = [
    "BACKENDS",
    "BIOIMAGEIO_PREFIX",
    "INFERENCE_DEFAULTS",
    "ModelBundle",
    "ModelNotFoundError",
    "ServingBundle",
    "copy_model",
    "default_model_uri",
    "import_model",
    "list_versions",
    "load_default_model",
    "load_model",
    "model_uri",
    "production_version",
    "register_model",
    "resolve_model_uri",
    "set_production",
    "shipped_model_uri",
    "write_metrics",
]

#: Inference settings every ``config.json`` carries (the seed's choices).
INFERENCE_DEFAULTS = {
    "min_overlap": 100,
    "blend": "min",
    "threshold": 0.5,
    "min_area": 0,
    "watershed": False,
}
_BUNDLE_KEYS = {
    "architecture",
    "tile",
    "output_size",
    "upscale",
    "input",
    "head",
    "postprocess",
    "max_whole_pixels",
    *INFERENCE_DEFAULTS,
}
#: Three-class U-Nets predict images up to this many pixels in one call (no tile overlaps):
#: 2048 x 2048, which covers the FNC red collection's 2272 x 1704 images (2,097,152 until
#: 2026-12-06: those were tiled, and the minimum blend cut cells along the tile seams).
WHOLE_IMAGE_PIXELS = 4_194_304
PRECISIONS = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}
#: A model spec naming a bioimage.io package file: ``bioimageio:FILE.zip``.
BIOIMAGEIO_PREFIX = "bioimageio:"
#: What runs a model's network: ``tf`` (TensorFlow, the training framework), ``onnx`` (ONNX
#: Runtime on the folder's ``model.onnx``, :mod:`neuroseg.serving.onnx`) or ``auto`` (onnx when
#: the folder has an ONNX export, ONNX Runtime is installed and the precision is fp32; else tf).
BACKENDS = ("auto", "tf", "onnx")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FILES = ("model.keras", "model.onnx", "onnx.json", "config.json", "lineage.json", "metrics.json")


class ModelNotFoundError(FileNotFoundError):
    """No model at the given URI, name or version."""


class ServingBundle:
    """What every loaded model offers :mod:`neuroseg.predict`, whatever runs the network.

    Subclasses hold ``config``, ``name``, ``version``, ``uri`` and ``precision`` and provide
    :attr:`channels`, :attr:`fixed_input` and the two calls :meth:`_run_tiles` (a batch of
    float32 or uint8 tiles) and :meth:`_run_whole` (one padded float32 image), both returning
    float32 ``(b, out, out)`` or ``(b, out, out, C)``. ``backend`` names what runs the network
    (``tf``: :class:`ModelBundle`; ``onnx``: :class:`neuroseg.serving.onnx.OnnxBundle`).
    """

    backend = "?"
    config: dict
    name: str
    version: str

    @property
    def tile(self) -> int:
        return int(self.config["tile"])

    @property
    def output_size(self) -> int:
        return int(self.config["output_size"])

    @property
    def channels(self) -> int:  # pragma: no cover - every backend overrides it
        raise NotImplementedError

    @property
    def fixed_input(self) -> bool:  # pragma: no cover - every backend overrides it
        """True when the network takes only tiles of one size (the seed's shallow CNN)."""
        raise NotImplementedError

    def _run_tiles(self, tiles: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _run_whole(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def predict_whole(self, image) -> np.ndarray:
        """Probabilities of a whole image in one call of a fully convolutional model.

        The image is padded with zeros (black, as tiles past the image edge are) at the bottom
        and right to multiples of the network's stride (``2 ** depth``, twice that with a
        space-to-depth stem) and cropped back. No tile overlaps are computed
        twice, so a 520x696 image costs about 0.6 of its tiling at 256 px.

        Parameters
        ----------
        image : array (H, W, 3)
            Model input (uint8, or float on the 0..255 scale).

        Returns
        -------
        ndarray (H, W) float32, or (H, W, C) for a multi-channel head
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
        if self.fixed_input or self.output_size != self.tile:
            raise ValueError(
                f"model {self.name}@{self.version} is not fully convolutional at full resolution"
            )
        from neuroseg.tiling import config_stride

        step = config_stride(self.config)
        height, width = image.shape[:2]
        pad_h, pad_w = -height % step, -width % step
        x = image.astype(np.float32, copy=False)
        if pad_h or pad_w:
            x = np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)))
        out = np.asarray(self._run_whole(x[None]), np.float32)[0]
        return out[:height, :width]

    def predict_tiles(self, tiles, *, batch_size: int = 8) -> np.ndarray:
        """Cell probabilities of a stack of tiles.

        Parameters
        ----------
        tiles : array (n, T, T, 3)
            uint8 RGB tiles (floats in 0..255 also work), ``T = config["tile"]``.
        batch_size : int
            Tiles per model call; the last batch is padded so every call has one shape.

        Returns
        -------
        ndarray (n, out, out) float32, or (n, out, out, C) for a multi-channel head
            ``out = config["output_size"]``; ``C`` = 3 for the three_class head (background,
            interior, boundary probabilities).
        """
        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.shape[1] != tiles.shape[2]:
            raise ValueError(f"tiles must be (n, T, T, 3) RGB, got shape {tiles.shape}")
        if tiles.shape[1] != self.tile:
            raise ValueError(
                f"model {self.name}@{self.version} takes {self.tile}x{self.tile} "
                f"tiles, got {tiles.shape[1]}x{tiles.shape[2]}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if tiles.dtype != np.uint8:
            tiles = tiles.astype(np.float32)
        n = len(tiles)
        if n == 0:
            extra = () if self.channels == 1 else (self.channels,)
            return np.zeros((0, self.output_size, self.output_size, *extra), np.float32)
        size = min(batch_size, n)
        outputs = []
        for start in range(0, n, size):
            chunk = tiles[start : start + size]
            if len(chunk) < size:
                pad = np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)
                chunk_in = np.concatenate([chunk, pad])
            else:
                chunk_in = chunk
            outputs.append(np.asarray(self._run_tiles(chunk_in), np.float32)[: len(chunk)])
        return np.concatenate(outputs)


@dataclass
class ModelBundle(ServingBundle):
    """A loaded Keras model with everything needed to use it (the ``tf`` backend).

    Attributes
    ----------
    model : keras.Model
        Takes raw RGB tiles as float 0..255 ``(b, T, T, 3)``; outputs ``(b, out, out, C)``
        (``C`` = 1 for the binary head, 3 for ``head == "three_class"``).
    config : dict
        ``architecture``, ``tile``, ``output_size``, ``min_overlap``, ``blend``, ``threshold``,
        ``min_area``, ``watershed``, ``train`` (the TrainConfig) and ``lineage``; optionally
        ``input`` (the declared input, :mod:`neuroseg.normalize`), ``head`` and, for
        ``three_class``, ``postprocess`` (:func:`neuroseg.instances.instances_from_classes`
        parameters).
    name, version, uri : str
    precision : {"fp32", "bf16"}
    """

    model: keras.Model
    config: dict
    name: str
    version: str
    uri: str
    precision: str = "fp32"
    _fn: Any = field(default=None, init=False, repr=False)
    _whole_fn: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    backend = "tf"

    @property
    def channels(self) -> int:
        """Output channels: 1 (binary head) or 3 (three_class head)."""
        return int(self.model.output_shape[-1])

    @property
    def fixed_input(self) -> bool:
        return self.model.input_shape[1] is not None

    def _function(self):
        with self._lock:
            if self._fn is None:
                import tensorflow as tf

                model = self.model
                squeeze = self.channels == 1

                @tf.function(reduce_retracing=True)
                def run(x):
                    out = model(tf.cast(x, tf.float32), training=False)
                    return out[..., 0] if squeeze else out

                self._fn = run
            return self._fn

    def _whole_function(self):
        """The model on one float32 image of any size: traced once (images differ in size)."""
        with self._lock:
            if self._whole_fn is None:
                import tensorflow as tf

                model = self.model
                squeeze = self.channels == 1

                @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
                def run(x):
                    out = model(x, training=False)
                    return out[..., 0] if squeeze else out

                self._whole_fn = run
            return self._whole_fn

    def _run_tiles(self, tiles: np.ndarray) -> np.ndarray:
        return self._function()(tiles)

    def _run_whole(self, x: np.ndarray) -> np.ndarray:
        return self._whole_function()(x)


# ----------------------------------------------------------------------------- URIs


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"model name {name!r} must be 1-100 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def model_uri(root_uri: str, name: str, version: str) -> str:
    """``<root>/models/<name>/<version>``."""
    return storage.join(root_uri, "models", _check_name(name), _check_name(version))


def default_model_uri() -> str:
    """The folder of the model shipped inside the package (``neuroseg/assets/models/default``).

    Returned whether or not a model is there yet (see :func:`load_default_model`).
    """
    return shipped_model_uri("default")


#: Other names of shipped models: ``fnc`` is the default model's job (FNC-like plates);
#: ``nuclei-fast`` was the opt-in space-to-depth nuclei model until ``nuclei`` (the same network
#: trained twice as long) replaced both on 2026-12-04.
SHIPPED_ALIASES = {"fnc": "default", "nuclei-fast": "nuclei"}


def shipped_model_uri(name: str) -> str:
    """The folder of a model shipped inside the package: ``neuroseg/assets/models/<name>``
    (``default``, also called ``fnc``: the FNC model; ``nuclei``, also ``nuclei-fast``: the
    nucleus model). Returned whether or not a model is there."""
    name = SHIPPED_ALIASES.get(name, name)
    return str(Path(__file__).resolve().parent / "assets" / "models" / _check_name(name))


# ----------------------------------------------------------------------------- register


def _versions_info() -> dict:
    import platform

    import keras
    import tensorflow as tf

    import neuroseg

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "neuroseg": neuroseg.__version__,
    }


def _prepared_params(lineage: dict) -> dict:
    prepared = lineage.get("prepared_uri")
    if not prepared:
        return {}
    try:
        return dict(storage.read_json(storage.join(prepared, "summary.json")).get("params", {}))
    except (FileNotFoundError, ValueError, AttributeError):
        return {}


def _save_inference_model(model: keras.Model, folder: str) -> bytes:
    """The model saved without optimizer or compile state, as .keras bytes."""
    import keras

    path = os.path.join(folder, "inference.keras")
    clean = model
    if getattr(model, "optimizer", None) is not None or model.compiled:
        clean = keras.models.clone_model(model)
        clean.set_weights(model.get_weights())
    clean.save(path)
    with open(path, "rb") as f:
        return f.read()


def _load_keras(data: bytes, folder: str, *, uri: str, compile: bool = False) -> keras.Model:
    import keras

    import neuroseg.models  # noqa: F401  (registers the custom layers of the U-Net's stem)

    path = os.path.join(folder, "model.keras")
    with open(path, "wb") as f:
        f.write(data)
    try:
        return keras.saving.load_model(path, compile=compile)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise ValueError(f"{uri}: not a loadable .keras model ({exc})") from exc


def register_model(
    root_uri: str,
    name: str,
    *,
    model_file_uri: str | None = None,
    model: keras.Model | None = None,
    config: dict,
    lineage: dict,
    metrics: dict | None = None,
    onnx: bool = True,
) -> str:
    """Add a trained model to the registry as a new version.

    Parameters
    ----------
    root_uri : str
        Storage root (local or ``s3://``).
    name : str
        Model name (letters, digits, ``.``, ``_``, ``-``).
    model_file_uri : str, optional
        A ``.keras`` file (e.g. the last phase checkpoint). Give this or ``model``.
    model : keras.Model, optional
        An in-memory model.
    config : dict
        Either a bundle config (``architecture``, ``tile``, ``output_size``, inference settings,
        ``train``) or a ``TrainConfig`` dump (it goes under ``train``; bundle keys beside it,
        such as ``tile``, stay at the top). Missing keys are
        derived: ``architecture`` from ``train.model``; ``tile`` from a fixed model input or
        the prepared data's ``summary.json`` (``lineage["prepared_uri"]``); ``output_size``
        from the model; inference settings from :data:`INFERENCE_DEFAULTS`; ``input`` (the
        normalisation the model was trained on, :mod:`neuroseg.normalize`) from the prepared
        data's ``params["input"]`` when it has one (else absent: the legacy 0..255 RGB);
        ``head`` from ``train.target`` (``"binary"`` when absent); for the ``three_class`` head
        ``postprocess`` (:data:`neuroseg.instances.POSTPROCESS_DEFAULTS`, replaced by the
        evaluation's validation sweep) and ``max_whole_pixels`` (images up to this many
        pixels are predicted whole, :meth:`ModelBundle.predict_whole`).
    lineage : dict
        Dataset URI and prepared version, device, seconds, ...; TF/Keras versions are added.
    metrics : dict, optional
        Written to ``metrics.json``.
    onnx : bool
        Also write ``model.onnx`` and ``onnx.json`` (:func:`neuroseg.serving.onnx.write_onnx`:
        the serving network converted and checked against Keras; about 2 s). A failed export
        is logged as a warning and leaves the version without it (``neuroseg export onnx``
        can retry); the version itself is registered either way.

    Returns
    -------
    str
        URI of the new version folder ``<root>/models/<name>/<version>``; the version is
        ``YYYYmmddTHHMMSSZ-<8 hex digits of the model's sha256>``.
    """
    _check_name(name)
    if (model_file_uri is None) == (model is None):
        raise ValueError("pass exactly one of model_file_uri and model")
    if not isinstance(config, dict) or not isinstance(lineage, dict):
        raise ValueError("config and lineage must be dicts")
    from neuroseg.models import output_size as model_output_size

    cfg = dict(config)
    if "phases" in cfg:  # a TrainConfig dump, possibly with bundle keys beside it
        cfg = {k: v for k, v in config.items() if k in _BUNDLE_KEYS}
        cfg["train"] = {k: v for k, v in config.items() if k not in _BUNDLE_KEYS}
    train = cfg.get("train") or {}
    with tempfile.TemporaryDirectory(prefix="neuroseg-register-") as tmp:
        if model is None:
            try:
                data = storage.read_bytes(model_file_uri)
            except FileNotFoundError:
                raise ModelNotFoundError(f"{model_file_uri}: no such model file") from None
            model = _load_keras(data, tmp, uri=model_file_uri)
        arch = cfg.get("architecture") or train.get("model") or model.name
        tile = cfg.get("tile")
        if tile is None and model.input_shape[1] is not None:
            tile = int(model.input_shape[1])
        if tile is None:
            tile = _prepared_params(lineage).get("tile")
        if tile is None:
            raise ValueError(
                "config needs 'tile' (the model's input size is not fixed and "
                "lineage has no prepared_uri with a summary.json)"
            )
        tile = int(tile)
        out = cfg.get("output_size") or model_output_size(model, tile=tile)
        payload = _save_inference_model(model, tmp)
    if "input" not in cfg:
        spec = _prepared_params(lineage).get("input")
        if isinstance(spec, dict):
            from neuroseg.normalize import input_spec

            cfg["input"] = dict(input_spec(spec))
    head = cfg.get("head") or train.get("target") or "binary"
    cfg["head"] = head
    if head == "three_class":
        from neuroseg.instances import POSTPROCESS_DEFAULTS

        cfg["postprocess"] = {**POSTPROCESS_DEFAULTS, **(cfg.get("postprocess") or {})}
        if arch == "unet":
            cfg.setdefault("max_whole_pixels", WHOLE_IMAGE_PIXELS)
    digest = storage.sha256_bytes(payload)[:8]
    now = datetime.now(UTC)
    version = f"{now:%Y%m%dT%H%M%SZ}-{digest}"
    full_lineage = {**lineage, "versions": {**_versions_info(), **lineage.get("versions", {})}}
    full = {
        **INFERENCE_DEFAULTS,
        **cfg,
        "architecture": arch,
        "tile": tile,
        "output_size": int(out),
        "name": name,
        "version": version,
        "registered_at": now.isoformat(timespec="seconds"),
        "lineage": full_lineage,
    }
    folder = model_uri(root_uri, name, version)
    storage.write_bytes(storage.join(folder, "model.keras"), payload)
    storage.write_json(storage.join(folder, "lineage.json"), full_lineage)
    if metrics is not None:
        storage.write_json(storage.join(folder, "metrics.json"), metrics)
    if onnx:
        _export_onnx_quietly(folder, model, full)
    storage.write_json(storage.join(folder, "config.json"), full)  # last: version complete
    return folder


def _export_onnx_quietly(folder: str, model: keras.Model, config: dict) -> None:
    import importlib.util
    import logging

    log = logging.getLogger("neuroseg.registry")
    if (
        importlib.util.find_spec("tf2onnx") is None
        or importlib.util.find_spec("onnxruntime") is None
    ):
        log.warning("%s: no ONNX export (tf2onnx or onnxruntime is not installed)", folder)
        return
    from neuroseg.serving.onnx import write_onnx

    try:
        write_onnx(folder, serving_model(model, config), config)
    except ValueError as exc:
        log.warning("%s: no ONNX export: %s", folder, exc)


def write_metrics(uri: str, metrics: dict) -> None:
    """Write ``metrics.json`` into a model folder (after evaluation)."""
    if not storage.exists(storage.join(uri, "config.json")):
        raise ModelNotFoundError(f"{uri}: not a model folder (no config.json)")
    storage.write_json(storage.join(uri, "metrics.json"), metrics)


def copy_model(src_uri: str, dst_uri: str) -> str:
    """Copy a model folder (e.g. a registry version to :func:`default_model_uri` to ship it).

    ``config.json`` is copied last, so a partial copy is never a loadable model.
    """
    src_uri = str(src_uri).rstrip("/")
    if not storage.exists(storage.join(src_uri, "config.json")):
        raise ModelNotFoundError(f"{src_uri}: not a model folder (no config.json)")
    for name in _FILES:
        if name != "config.json" and storage.exists(storage.join(src_uri, name)):
            storage.copy(storage.join(src_uri, name), storage.join(dst_uri, name))
    storage.copy(storage.join(src_uri, "config.json"), storage.join(dst_uri, "config.json"))
    return str(dst_uri)


def import_model(root_uri: str, spec: str, *, name: str | None = None) -> str:
    """Add a model from outside the registry (a folder, or ``bioimageio:FILE.zip``) as a version.

    The version keeps the model's own ``config["version"]`` (so its rows in the cell table stay
    traceable to the package), under ``name`` (default: the model's own name). Importing the
    same model again returns the existing version; a different model under an existing version
    is refused. Not promoted: :func:`set_production` serves it.

    Returns
    -------
    str
        URI of the version folder ``<root>/models/<name>/<version>``.
    """
    src = resolve_model_uri(root_uri, spec)
    config = storage.read_json(storage.join(src, "config.json"))
    name = _check_name(name or str(config.get("name") or "imported"))
    version = str(config.get("version") or "")
    if not _NAME.match(version):
        raise ValueError(f"{spec}: its config.json has no usable version ({version!r})")
    dst = model_uri(root_uri, name, version)
    if storage.exists(storage.join(dst, "config.json")):
        same = all(
            storage.exists(storage.join(dst, f))
            and storage.sha256_bytes(storage.read_bytes(storage.join(dst, f)))
            == storage.sha256_bytes(storage.read_bytes(storage.join(src, f)))
            for f in ("model.onnx", "model.keras")
            if storage.exists(storage.join(src, f))
        )
        if not same:
            raise ValueError(f"{dst} already holds another model under version {version}")
        return dst
    config = {**config, "name": name}
    copy_model(src, dst)
    storage.write_json(storage.join(dst, "config.json"), config)  # the registry's own name
    return dst


# ----------------------------------------------------------------------------- load


def _rebuild(model: keras.Model, config: dict, *, mixed_precision: bool) -> keras.Model:
    """The same network and weights with another precision policy."""
    from neuroseg.models import build_model

    train = config.get("train") or {}
    try:
        clone = build_model(
            config["architecture"],
            tile=int(config["tile"]),
            width=train.get("width"),
            depth=int(train.get("depth", 3)),
            batch_norm=bool(train.get("batch_norm", True)),
            mixed_precision=mixed_precision,
            head=config.get("head") or train.get("target") or "binary",
            centre=bool(train.get("centre", False)),
            space_to_depth=bool(train.get("space_to_depth", False)),
        )
        clone.set_weights(model.get_weights())
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"cannot change the precision of model {config.get('name')} ({exc})"
        ) from exc
    return clone


def _has_batch_norm(model) -> bool:
    import keras

    return any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def _choose_backend(uri: str, backend: str, precision: str, config: dict) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnx" and precision != "fp32":
        raise ValueError(f"the onnx backend runs fp32 only, not {precision}: use backend tf")
    if backend != "auto":
        return backend
    if precision != "fp32":
        return "tf"
    import importlib.util

    from neuroseg.serving.onnx import onnx_info, stale_export

    info = onnx_info(uri)
    has_onnx = info is not None and not stale_export(info, config)
    if has_onnx and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    if has_onnx and not storage.exists(storage.join(uri, "model.keras")):
        return "onnx"  # an ONNX-only folder (e.g. an unpacked bioimage.io package)
    return "tf"


def _require_tensorflow(uri: str) -> None:
    try:  # the tf backend imports both next anyway: trying costs nothing extra
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            f"{uri}: the tf backend needs TensorFlow and Keras ({exc}; a serve install?): use "
            "backend onnx (the model needs model.onnx: neuroseg export onnx MODEL where "
            "TensorFlow is installed)"
        ) from None


def serving_model(model: keras.Model, config: dict, *, precision: str = "fp32", fold: bool = True):
    """The Keras network as it serves: a U-Net's BatchNorm folded (``fold``), or rebuilt with the
    other precision policy when `precision` differs from the training's."""
    train = config.get("train") or {}
    trained_bf16 = bool(train.get("mixed_precision", False))
    if fold and model.name == "unet" and _has_batch_norm(model):
        from neuroseg.models import fold_batch_norm

        try:
            return fold_batch_norm(model, mixed_precision=precision == "bf16")
        except (ValueError, KeyError) as exc:
            raise ValueError(f"cannot fold the model's BatchNorm ({exc})") from exc
    if (precision == "bf16") != trained_bf16:
        return _rebuild(model, config, mixed_precision=precision == "bf16")
    return model


def load_model(
    uri: str,
    *,
    precision: str = "fp32",
    fold: bool = True,
    tta: str | None = None,
    backend: str = "tf",
) -> ServingBundle:
    """Load a model folder (local or ``s3://``) with its config.

    Parameters
    ----------
    uri : str
        A version folder ``<root>/models/<name>/<version>`` or any folder with ``config.json``
        and ``model.keras`` and/or ``model.onnx`` (such as :func:`default_model_uri`).
    precision : {"fp32", "bf16"}
        Compute precision; when it differs from the training's (``train.mixed_precision``) the
        network is rebuilt with the other policy and the same weights (tf backend only).
    fold : bool
        Serve a U-Net with its BatchNorm folded into the convolutions
        (:func:`neuroseg.models.fold_batch_norm`: the same outputs to float rounding, about a
        quarter faster on a CPU). ``False`` keeps the network as trained.
    tta : {"none", "flip2", "flips"} or None
        Test-time augmentation to serve with (``config["tta"]``, see
        :data:`neuroseg.predict.TTA_MODES`); None keeps the model's own (``none`` if unset).
    backend : {"tf", "onnx", "auto"}
        What runs the network (:data:`BACKENDS`): ``tf`` gives a :class:`ModelBundle` (the
        Keras model is in ``bundle.model``, e.g. for fine-tuning); ``onnx`` an
        :class:`neuroseg.serving.onnx.OnnxBundle` that needs neither TensorFlow nor Keras.

    Returns
    -------
    ServingBundle
        ``bundle.backend`` says which backend it is.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    precision = PRECISIONS[precision]
    if tta is not None:
        from neuroseg.predict import check_tta

        check_tta(tta)
    uri = str(uri).rstrip("/")
    try:
        config = storage.read_json(storage.join(uri, "config.json"))
    except FileNotFoundError:
        raise ModelNotFoundError(
            f"{uri}: not a model folder (needs config.json and model.keras or model.onnx)"
        ) from None
    missing = [k for k in ("architecture", "tile", "output_size") if k not in config]
    if missing:
        raise ValueError(f"{uri}/config.json: missing {', '.join(missing)}")
    if tta is not None:
        config["tta"] = tta
    parts = uri.split("/")
    name = str(config.get("name") or (parts[-2] if len(parts) > 1 else "model"))
    version = str(config.get("version") or parts[-1])
    if _choose_backend(uri, backend, precision, config) == "onnx":
        from neuroseg.serving.onnx import load_onnx

        return load_onnx(uri, config, name=name, version=version)
    try:
        data = storage.read_bytes(storage.join(uri, "model.keras"))
    except FileNotFoundError:
        raise ModelNotFoundError(
            f"{uri}: no model.keras for the tf backend"
            + (
                " (it has model.onnx: use backend onnx)"
                if storage.exists(storage.join(uri, "onnx.json"))
                else ""
            )
        ) from None
    _require_tensorflow(uri)
    with tempfile.TemporaryDirectory(prefix="neuroseg-load-") as tmp:
        model = _load_keras(data, tmp, uri=uri)
    try:
        model = serving_model(model, config, precision=precision, fold=fold)
    except ValueError as exc:
        raise ValueError(f"{uri}: {exc}") from exc
    return ModelBundle(
        model=model, config=config, name=name, version=version, uri=uri, precision=precision
    )


def load_default_model(
    *, precision: str = "fp32", tta: str | None = None, backend: str = "tf"
) -> ServingBundle:
    """Load the model shipped in the package.

    Raises
    ------
    ModelNotFoundError
        No model has been shipped yet.
    """
    uri = default_model_uri()
    if not storage.exists(os.path.join(uri, "config.json")):
        raise ModelNotFoundError(
            f"no shipped default model at {uri}: train one (neuroseg train) and pass its "
            "registry name or folder instead"
        )
    return load_model(uri, precision=precision, tta=tta, backend=backend)


# ----------------------------------------------------------------------------- versions


def list_versions(root_uri: str, name: str) -> list[str]:
    """Complete versions of a model, oldest first (versions sort by time)."""
    base = storage.join(root_uri, "models", _check_name(name))
    found = set()
    for file_uri in storage.list_files(base, suffixes=".json"):
        rel = file_uri[len(base.rstrip("/")) + 1 :].split("/")
        if len(rel) == 2 and rel[1] == "config.json":
            found.add(rel[0])
    return sorted(found)


def _production_uri(root_uri: str, name: str) -> str:
    return storage.join(root_uri, "models", _check_name(name), "production.json")


def production_version(root_uri: str, name: str) -> str | None:
    """The version serving production, or None when none was promoted."""
    uri = _production_uri(root_uri, name)
    if not storage.exists(uri):
        return None
    return storage.read_json(uri).get("version")


def set_production(
    root_uri: str, name: str, version: str, *, reason: str, metrics: dict | None = None
) -> dict:
    """Promote a version: rewrite ``production.json`` atomically, appending to its history.

    Parameters
    ----------
    root_uri, name, version : str
    reason : str
        Why (shown in the history), e.g. "F1 0.81 > 0.78 of 2025...".
    metrics : dict, optional
        Key figures that justified the promotion.

    Returns
    -------
    dict
        The new ``production.json`` content: ``version``, ``reason``, ``metrics``,
        ``promoted_at``, ``previous`` and ``history`` (every promotion, oldest first).
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("reason must be a non-empty string")
    folder = model_uri(root_uri, name, version)
    if not storage.exists(storage.join(folder, "config.json")):
        raise ModelNotFoundError(f"{folder}: no such model version to promote")
    uri = _production_uri(root_uri, name)
    current = storage.read_json(uri) if storage.exists(uri) else {}
    entry = {
        "version": version,
        "reason": reason,
        "metrics": metrics or {},
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "previous": current.get("version"),
    }
    record = {**entry, "name": name, "history": [*current.get("history", []), entry]}
    storage.write_json(uri, record)
    return record


def resolve_model_uri(root_uri: str, spec: str) -> str:
    """The model folder a user means.

    Parameters
    ----------
    root_uri : str
        Storage root of the registry.
    spec : str
        ``"default"`` (the shipped model), ``"NAME@VERSION"``, a folder URI (with
        ``config.json``), ``bioimageio:FILE.zip`` (a bioimage.io package neuroseg exported,
        unpacked into a cache folder), or a ``NAME``: its production version in the registry,
        else the model shipped under that name (:func:`shipped_model_uri`, e.g. ``nuclei``),
        else the shipped default model.

    Returns
    -------
    str
        Folder URI for :func:`load_model`.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError("model spec must be a non-empty string")
    if spec.startswith(BIOIMAGEIO_PREFIX):
        from neuroseg.serving.bioimageio import unpack_package

        return unpack_package(spec[len(BIOIMAGEIO_PREFIX) :])
    default = default_model_uri()
    has_default = storage.exists(os.path.join(default, "config.json"))
    if spec == "default":
        if not has_default:
            raise ModelNotFoundError(f"no shipped default model at {default}")
        return default
    if "@" in spec and "/" not in spec:
        name, version = spec.split("@", 1)
        uri = model_uri(root_uri, name, version)
        if not storage.exists(storage.join(uri, "config.json")):
            known = ", ".join(list_versions(root_uri, name)[-5:]) or "none"
            raise ModelNotFoundError(
                f"no version {version!r} of model {name!r} under {root_uri} (latest: {known})"
            )
        return uri
    if "/" in spec or "://" in spec or os.sep in spec:
        if not storage.exists(storage.join(spec.rstrip("/"), "config.json")):
            raise ModelNotFoundError(f"{spec}: not a model folder (no config.json)")
        return spec.rstrip("/")
    version = production_version(root_uri, spec)
    if version is not None:
        return model_uri(root_uri, spec, version)
    shipped = shipped_model_uri(spec)
    if storage.exists(os.path.join(shipped, "config.json")):
        return shipped
    if has_default:
        return default
    raise ModelNotFoundError(
        f"model {spec!r} has no production version under {root_uri} and no default model "
        "is shipped: train one (neuroseg train) or name a version (NAME@VERSION)"
    )
