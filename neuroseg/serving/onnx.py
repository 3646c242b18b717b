"""ONNX export of a model folder and the ``onnx`` inference backend.

Every registered model also carries ``model.onnx`` (the network as it serves, a U-Net's
BatchNorm folded) and ``onnx.json`` (how it was exported and how far its output is from the
Keras model's on a test tensor). ``onnx.json`` is written after ``model.onnx``, so a folder
without it has no complete export.

The converter is tf2onnx (:func:`tf2onnx.convert.from_function`) on a ``tf.function`` that calls
the Keras 3 model with a symbolic batch, height and width. Keras 3's own
``model.export(format="onnx")`` calls the same converter for the TensorFlow backend but fixes
what it exports from the model's input shape and needs a writable path; converting the function
directly keeps height and width free (whole images of any size in one call), names the input
``image`` and gives the proto in memory for the check. tf2onnx 1.17 works with TensorFlow 2.21
and Keras 3.15 here; ``torch.onnx`` would need the torch backend.

:class:`OnnxBundle` serves the exported network with ONNX Runtime: it imports neither TensorFlow
nor Keras, so a nightly worker installed with ``pip install "neuroseg[serve]"`` runs it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from neuroseg import storage
from neuroseg.registry import ModelNotFoundError, ServingBundle

__all__ = [
    "CHECK_TOLERANCE",
    "ONNX_FILE",
    "ONNX_INFO",
    "OPSET",
    "OnnxBundle",
    "export_onnx",
    "load_onnx",
    "onnx_info",
    "stale_export",
    "write_onnx",
]

ONNX_FILE = "model.onnx"
ONNX_INFO = "onnx.json"
#: ONNX opset of the exports (ONNX Runtime 1.17 and newer run it; so do deepImageJ's and
#: ilastik's runtimes).
OPSET = 17
#: The export fails when ONNX Runtime's output differs from the Keras model's by more than this
#: on the test tensor (probabilities in 0..1; float rounding gives about 1e-6).
CHECK_TOLERANCE = 1e-4
INPUT_NAME = "image"


def _test_tensor(fixed: int | None, tile: int, step: int) -> np.ndarray:
    """A fixed pseudo-random image on the 0..255 scale that looks like a fluorescence field (bright
    discs of 5 to 20 px radius, some touching, on a dark noisy background), so that the check
    covers cells, their boundaries and background rather than a saturated output: a tile, or
    (fully convolutional) a non-square image of stride multiples, so that height and width are
    both checked."""
    rng = np.random.default_rng(20261207)
    if fixed is not None:
        shape = (2, fixed, fixed)
    else:
        side = max(step, (min(tile, 256) // step) * step)
        shape = (1, side, side + step)
    rows, cols = np.ogrid[: shape[1], : shape[2]]
    x = np.full(shape, 20.0, np.float32)
    for plane in x:
        for _ in range(max(1, shape[1] * shape[2] // 1500)):
            r = rng.uniform(5, 20)
            cy, cx = rng.uniform(0, shape[1]), rng.uniform(0, shape[2])
            disc = (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
            plane[disc] = np.maximum(plane[disc], rng.uniform(120, 250))
    x += rng.normal(0.0, 8.0, shape).astype(np.float32)
    x = np.clip(x, 0.0, 255.0).astype(np.float32)
    return np.repeat(x[..., None], 3, axis=-1)


def _run_session(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def write_onnx(folder_uri: str, model: Any, config: dict) -> dict:
    """Convert a Keras model to ONNX, check it and write ``model.onnx`` and ``onnx.json``.

    Parameters
    ----------
    folder_uri : str
        The model folder (local or ``s3://``).
    model : keras.Model
        The network as it serves (:func:`neuroseg.registry.serving_model`), fp32.
    config : dict
        The folder's bundle config (``tile``; ``train.depth`` and ``train.space_to_depth`` for
        the U-Net's stride).

    Returns
    -------
    dict
        The ``onnx.json`` record: converter and versions, opset, input and output shapes, the
        test tensor's shape and ``max_abs_diff`` (ONNX Runtime against Keras), sha256 of
        ``model.onnx`` and the export's seconds.

    Raises
    ------
    ValueError
        The conversion failed, or the outputs differ by more than :data:`CHECK_TOLERANCE`.
    """
    import keras
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from neuroseg.tiling import config_stride

    start = time.perf_counter()
    fixed = model.input_shape[1]
    fixed = int(fixed) if fixed is not None else None
    spec = [tf.TensorSpec([None, fixed, fixed, 3], tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=spec)
    def run(x):
        return model(x, training=False)

    try:
        proto, _ = tf2onnx.convert.from_function(run, input_signature=spec, opset=OPSET)
    except Exception as exc:  # tf2onnx raises many kinds; the message is what a user needs
        raise ValueError(
            f"{folder_uri}: ONNX conversion failed ({type(exc).__name__}: {exc})"
        ) from None
    data = proto.SerializeToString()
    step = config_stride(config)
    x = _test_tensor(fixed, int(config["tile"]), step)
    reference = np.asarray(run(x), np.float32)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out = np.asarray(_run_session(session, x), np.float32)
    if out.shape != reference.shape:
        raise ValueError(
            f"{folder_uri}: the ONNX model's output has shape {out.shape}, Keras' {reference.shape}"
        )
    diff = float(np.max(np.abs(out - reference)))
    if not diff <= CHECK_TOLERANCE:
        raise ValueError(
            f"{folder_uri}: the ONNX model differs from the Keras model by {diff:.2e} on the "
            f"test tensor (more than {CHECK_TOLERANCE:.0e})"
        )
    info = {
        "format": "onnx",
        "file": ONNX_FILE,
        "opset": OPSET,
        "converter": f"tf2onnx {tf2onnx.__version__}",
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "onnxruntime": ort.__version__,
        },
        "input": {"name": INPUT_NAME, "shape": ["batch", fixed or "height", fixed or "width", 3]},
        "output": {"shape": ["batch", *list(model.output_shape[1:])]},
        "check": {"shape": list(x.shape), "max_abs_diff": diff, "tolerance": CHECK_TOLERANCE},
        "sha256": storage.sha256_bytes(data),
        "model_version": config.get("version"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 2),
    }
    storage.write_bytes(storage.join(folder_uri, ONNX_FILE), data)
    storage.write_json(storage.join(folder_uri, ONNX_INFO), info)  # last: the export is complete
    return info


def export_onnx(uri: str, *, force: bool = False) -> dict:
    """Add ``model.onnx`` to an existing model folder (``neuroseg export onnx MODEL``).

    Parameters
    ----------
    uri : str
        A model folder with ``model.keras`` and ``config.json``.
    force : bool
        Export again when the folder already has a complete export.

    Returns
    -------
    dict
        The ``onnx.json`` record (:func:`write_onnx`), with ``"skipped": True`` when the folder
        already had one and `force` is false.
    """
    from neuroseg.registry import load_model

    uri = str(uri).rstrip("/")
    existing = onnx_info(uri)
    if existing is not None and not force:
        return {**existing, "skipped": True}
    bundle = load_model(uri, backend="tf")
    return write_onnx(uri, bundle.model, bundle.config)


def stale_export(info: dict, config: dict) -> bool:
    """True when an ``onnx.json`` was written for another version of the model than the
    folder's ``config.json`` names (``model.keras`` replaced after the export)."""
    exported, current = info.get("model_version"), config.get("version")
    return bool(exported and current and exported != current)


def onnx_info(uri: str) -> dict | None:
    """The folder's ``onnx.json`` record, or None when it has no complete ONNX export."""
    try:
        return storage.read_json(storage.join(str(uri).rstrip("/"), ONNX_INFO))
    except FileNotFoundError:
        return None


@dataclass
class OnnxBundle(ServingBundle):
    """A model served by ONNX Runtime (the ``onnx`` backend): neither TensorFlow nor Keras.

    Attributes
    ----------
    session : onnxruntime.InferenceSession
    config, name, version, uri, precision
        As :class:`neuroseg.registry.ModelBundle`'s (precision is always ``fp32``).
    """

    session: Any
    config: dict
    name: str
    version: str
    uri: str
    precision: str = "fp32"
    _input: str = field(default=INPUT_NAME, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    backend = "onnx"

    def __post_init__(self) -> None:
        self._input = self.session.get_inputs()[0].name

    @property
    def channels(self) -> int:
        return int(self.session.get_outputs()[0].shape[-1])

    @property
    def fixed_input(self) -> bool:
        return isinstance(self.session.get_inputs()[0].shape[1], int)

    def _run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        out = self.session.run(None, {self._input: x})[0]
        return out[..., 0] if self.channels == 1 else out

    def _run_tiles(self, tiles: np.ndarray) -> np.ndarray:
        return self._run(tiles)

    def _run_whole(self, x: np.ndarray) -> np.ndarray:
        return self._run(x)


def _session(data: bytes, uri: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError(
            f"{uri}: the onnx backend needs onnxruntime: pip install 'neuroseg[serve]'"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-node placement notes on stderr
    # no busy-waiting between calls: ONNX Runtime's threads otherwise spin after each image and
    # take the cores from the labelling and measuring that follow (0.10 s per BBBC039 image
    # either way on its own; the whole nightly step loses to the spinning on 2 cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types are not importable by name
        raise ValueError(f"{uri}/{ONNX_FILE}: not a loadable ONNX model ({exc})") from None


def load_onnx(uri: str, config: dict, *, name: str, version: str) -> OnnxBundle:
    """The ``onnx`` backend's bundle of a model folder (called by
    :func:`neuroseg.registry.load_model` with ``backend="onnx"``)."""
    info = onnx_info(uri)
    try:
        data = storage.read_bytes(storage.join(uri, ONNX_FILE)) if info is not None else None
    except FileNotFoundError:
        data = None
    if data is None:
        raise ModelNotFoundError(
            f"{uri}: no ONNX export (model.onnx and onnx.json): run `neuroseg export onnx "
            f"{uri}` where TensorFlow is installed, or use backend tf"
        )
    if stale_export(info, config):
        raise ValueError(
            f"{uri}/{ONNX_FILE}: exported from version {info['model_version']}, but the folder "
            f"holds {config['version']}: run `neuroseg export onnx {uri} --force`"
        )
    if info.get("sha256") and storage.sha256_bytes(data) != info["sha256"]:
        raise ValueError(f"{uri}/{ONNX_FILE}: its sha256 differs from {ONNX_INFO}'s (damaged?)")
    return OnnxBundle(
        session=_session(data, uri), config=config, name=name, version=version, uri=uri
    )
