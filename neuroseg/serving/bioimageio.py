"""bioimage.io model packages: export a model folder as one, run one inside neuroseg.

:func:`export_package` writes a zip that bioimage.io's own tools (``bioimageio.core``,
deepImageJ, QuPath's deep-learning extension, ilastik) read: ``rdf.yaml`` in spec 0.5, weights,
test tensors, a cover, documentation, licence, authors and citations. :func:`unpack_package`
turns such a zip back into a neuroseg model folder, so ``--model bioimageio:FILE.zip`` runs it
with neuroseg's own post-processing.

What the package's network takes and gives
-----------------------------------------
- Input ``image``: ``(batch, y, x, channel)`` float32, the image's own intensities (any bit
  depth). A ``grey`` model takes one channel (neuroseg reduces several channels by their
  maximum: do that before), an ``rgb`` model three. The spec's pre-processing declares
  neuroseg's percentile normalisation in the spec's own terms: ``scale_range`` per sample and
  channel over ``y, x`` with the model's percentiles (1 and 99.8), ``clip`` to 0..1, then
  ``scale_linear`` by 255 (the networks' own ``Rescaling`` layer expects 0..255). neuroseg takes
  the percentiles of images over 1 M pixels on a regular subsample and has no ``eps``; the spec
  adds ``eps`` = 1e-6 to the range: both differ from neuroseg's in the 4th digit at most.
- Output ``probabilities``: ``(batch, y, x, channel)``, the softmax classes (``background``,
  ``interior``, ``boundary`` for a ``three_class`` head) at the input's size.
- What the spec cannot say: the input ``scale`` of a model config (the shipped ``fnc`` model
  sees images resized by 0.5, so its package expects images already at half size), test-time
  flips, tiling with neuroseg's blend, and the post-processing (instances from the classes,
  per-stain parameters). The package's ``config.neuroseg`` carries the whole bundle config,
  so neuroseg does all of it again; other tools get the probabilities.

Weight formats (bioimage.io spec 0.5.12, bioimageio.core 0.11, TensorFlow 2.21, Keras 3.15)
----------------------------------------------------------------------------------------------
- ``onnx``: the folder's ``model.onnx`` (tf2onnx, opset 17); for a grey model a ``Concat``
  node in front replicates the one channel to the three planes the network takes. Runs in
  bioimageio.core (ONNX Runtime), deepImageJ 3 and ilastik (QuPath's Deep Java Library has no
  ONNX Runtime engine: it takes the SavedModel below).
- ``tensorflow_saved_model_bundle``: the same network (BatchNorm folded, the grey ``Concat`` in
  a Keras wrapper) written by Keras 3's ``model.export(format="tf_saved_model")``, zipped.
  bioimageio.core runs TF 2 SavedModels through ``keras.layers.TFSMLayer(call_endpoint="serve")``
  and needs a dict of outputs, so the wrapper names its output ``probabilities``.
- Not declared: ``keras_v3``. bioimageio.core's Keras adapter calls ``keras.models.load_model``
  on the ``.keras`` file, which fails wherever neuroseg is not imported (the U-Net's
  ``SpaceToDepth`` / ``DepthToSpace`` stem layers are neuroseg classes), so a ``bioimageio
  test`` outside neuroseg would fail on it. ``keras_hdf5`` is Keras 2's legacy format and has
  the same problem. The folder's own ``model.keras``, ``model.onnx`` and ``onnx.json`` travel as
  attachments, which :func:`unpack_package` restores byte for byte: neuroseg runs exactly the
  network it exported.

``import neuroseg.serving.bioimageio`` is light: bioimageio.spec, bioimageio.core, ONNX Runtime
and TensorFlow are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neuroseg import storage

__all__ = [
    "CITATIONS",
    "INPUT_ID",
    "OUTPUT_ID",
    "RDF_FILE",
    "check_package",
    "export_package",
    "unpack_package",
]

RDF_FILE = "rdf.yaml"
INPUT_ID = "image"
OUTPUT_ID = "probabilities"
#: Version of the ``config.neuroseg`` entry this module writes and reads.
PACKAGE_FORMAT = 1
#: Output channels of the heads (``neuroseg.models.HEADS``).
CLASS_NAMES = {"three_class": ["background", "interior", "boundary"], "binary": ["cell"]}
#: Side of the (square) test tensor at most, pixels as the network sees them.
TEST_SIDE = 256
#: Halo of the output's spatial axes: pixels a tiling tool should crop from each side of a tile.
HALO = 32
#: Files of the model folder the package carries as attachments (package name -> folder name).
ATTACHMENTS = {
    "neuroseg_model.onnx": "model.onnx",
    "neuroseg_onnx.json": "onnx.json",
    "neuroseg_model.keras": "model.keras",
}
_WEIGHTS_ONNX = "weights.onnx"
_WEIGHTS_TF = "tf_saved_model.zip"

#: Citations of the training data, keyed by a phrase the model card names it with.
CITATIONS = {
    "BBBC039": {
        "text": "Caicedo J.C. et al. Evaluation of Deep Learning Strategies for Nucleus "
        "Segmentation in Fluorescence Images. Cytometry A 95, 952-965 (2019) (BBBC039 v1, CC0)",
        "doi": "10.1002/cyto.a.23863",
    },
    "Data Science Bowl 2018": {
        "text": "Caicedo J.C. et al. Nucleus segmentation across imaging experiments: the 2018 "
        "Data Science Bowl. Nature Methods 16, 1247-1253 (2019) (BBBC038, CC0)",
        "doi": "10.1038/s41592-019-0612-7",
    },
    "c-ResUnet": {
        "text": "Morelli R., Clissa L. et al. Automating cell counting in fluorescent microscopy "
        "through deep learning with c-ResUnet. Scientific Reports 11, 22920 (2021) "
        "(Fluorescent Neuronal Cells, CC BY-SA 4.0)",
        "doi": "10.1038/s41598-021-01929-5",
    },
    "Fluorescent Neuronal Cells v2": {
        "text": "Clissa L. et al. Fluorescent Neuronal Cells v2: multi-task, multi-format "
        "annotations for deep learning in microscopy. Scientific Data 11, 184 (2024) "
        "(CC BY-SA 4.0)",
        "doi": "10.1038/s41597-024-03005-9",
    },
}
_UNET = {
    "text": "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015",
    "doi": "10.1007/978-3-319-24574-4_28",
}
_AUTHORS = [{"name": "neuroseg developers"}]


# ----------------------------------------------------------------------------- helpers


def _sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _licence(card: str) -> str:
    """The package's SPDX licence: CC-BY-SA-4.0 when the card says the weights derive from
    share-alike data (the FNC images), else CC-BY-4.0 (training data CC0)."""
    text = card.replace("-", " ").upper()
    return "CC-BY-SA-4.0" if "CC BY SA" in text else "CC-BY-4.0"


def _citations(card: str) -> list[dict]:
    cites = [dict(c) for key, c in CITATIONS.items() if key.lower() in card.lower()]
    if "BBBC038" in card and not any("BBBC038" in c["text"] for c in cites):
        cites.append(dict(CITATIONS["Data Science Bowl 2018"]))
    return [*cites, dict(_UNET)]


def _description(card: str, name: str) -> str:
    """The card's first paragraph (its summary) in plain text, at most 1000 characters."""
    for block in card.split("\n\n"):
        block = block.strip()
        if block and not block.startswith(("#", "|")):
            text = " ".join(block.split()).replace("`", "")
            return text if len(text) <= 1000 else text[:997] + "..."
    return f"neuroseg {name} model: per-pixel class probabilities of a U-Net."


def _read_sample(sample: Any) -> np.ndarray:
    if sample is None:
        from neuroseg.synth import synth_plate

        return synth_plate(seed=0, height=2 * TEST_SIDE, width=2 * TEST_SIDE).image
    if isinstance(sample, np.ndarray):
        return sample
    from neuroseg.images import read_native

    return read_native(str(sample))


def _test_input(image: np.ndarray, spec: Mapping[str, Any], step: int, fixed: int | None):
    """The test input: the sample's planes the network takes (grey: maximum over channels),
    resized by the input scale, centre-cropped to a square of stride multiples;
    ``(1, side, side, C) float32`` on the image's own intensity scale."""
    from neuroseg.normalize import resize_planes, scaled_shape, select_channels

    planes = select_channels(image, channels=spec["channels"])
    if planes.dtype.kind == "f":
        planes = np.nan_to_num(planes, nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(spec.get("scale", 1.0))
    if scale != 1.0:
        planes = resize_planes(planes, scaled_shape(planes.shape, scale))
    rows, cols = planes.shape[:2]
    side = fixed or min(TEST_SIDE, (min(rows, cols) // step) * step)
    if side < max(step, 2 * HALO + step) or side > min(rows, cols):
        raise ValueError(
            f"the sample is {rows}x{cols} pixels as the network sees it: too small for a test "
            f"tensor of at least {max(step, 2 * HALO + step)} pixels a side"
        )
    top, left = (rows - side) // 2, (cols - side) // 2
    crop = planes[top : top + side, left : left + side]
    return np.ascontiguousarray(crop[None], dtype=np.float32)


def _preprocess(x: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """The declared pre-processing in numpy, exactly as the spec defines it (per channel:
    ``(x - p_low) / (p_high - p_low + eps)``, clipped to 0..1, times 255)."""
    if spec["normalization"] != "percentile":
        return x.astype(np.float32)
    low, high = spec["percentiles"]
    out = np.empty_like(x, dtype=np.float32)
    for b in range(x.shape[0]):
        for c in range(x.shape[-1]):
            plane = x[b, ..., c].astype(np.float64)
            lo, hi = np.percentile(plane, (low, high))
            out[b, ..., c] = (plane - lo) / (hi - lo + 1e-6)
    np.clip(out, 0.0, 1.0, out=out)
    return out * np.float32(255.0)


def _grey_onnx(data: bytes) -> bytes:
    """``model.onnx`` taking one channel: a ``Concat`` in front replicates it to three."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(data)
    graph = model.graph
    old = graph.input[0]
    name, inner = old.name, old.name + "_planes"
    for node in graph.node:
        for i, value in enumerate(node.input):
            if value == name:
                node.input[i] = inner
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    new = helper.make_tensor_value_info(name, old.type.tensor_type.elem_type, [*dims[:3], 1])
    graph.node.insert(0, helper.make_node("Concat", [name, name, name], [inner], axis=3))
    graph.input.remove(old)
    graph.input.insert(0, new)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _saved_model_zip(keras_bytes: bytes, config: dict, grey: bool, out_zip: str) -> str:
    """The network as a zipped TF SavedModel (Keras 3 ``export``); returns the TF version."""
    import keras
    import tensorflow as tf

    import neuroseg.models  # noqa: F401  (registers the U-Net's stem layers)
    from neuroseg.registry import serving_model

    with tempfile.TemporaryDirectory(prefix="neuroseg-bioimageio-") as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(keras_bytes)
        net = serving_model(keras.saving.load_model(path, compile=False), config)
        x = keras.Input((None, None, 1 if grey else 3), name=INPUT_ID)
        planes = keras.layers.Concatenate(axis=-1)([x, x, x]) if grey else x
        wrapper = keras.Model(x, {OUTPUT_ID: net(planes)}, name="neuroseg_bioimageio")
        folder = os.path.join(tmp, "saved_model")
        wrapper.export(folder, format="tf_saved_model", verbose=False)
        with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for root, _, files in os.walk(folder):
                for file in sorted(files):
                    full = os.path.join(root, file)
                    zf.write(full, os.path.relpath(full, folder))
    return tf.__version__


def _cover(x_pre: np.ndarray, probs: np.ndarray, path: str) -> None:
    """PNG, 2:1: the normalised input (grey) | the classes (red boundary, green interior)."""
    from PIL import Image

    left = np.clip(x_pre[0].max(axis=-1), 0, 255).astype(np.uint8)
    left = np.repeat(left[..., None], 3, axis=2)
    p = probs[0]
    right = np.zeros((*p.shape[:2], 3), np.uint8)
    if p.shape[-1] >= 3:
        right[..., 0] = np.round(p[..., 2] * 255).astype(np.uint8)
        right[..., 1] = np.round(p[..., 1] * 255).astype(np.uint8)
    else:
        right[..., 1] = np.round(p[..., 0] * 255).astype(np.uint8)
    image = Image.fromarray(np.concatenate([left, right], axis=1))
    if image.height < 256:
        image = image.resize((512, 256), Image.Resampling.NEAREST)
    image.save(path)


def _documentation(card: str, config: dict, info: dict) -> str:
    spec = config.get("input") or {}
    scale = float(spec.get("scale", 1.0))
    names = ", ".join(CLASS_NAMES.get(config.get("head"), []))
    lines = [
        f"# neuroseg `{config.get('name')}` model as a bioimage.io package",
        "",
        f"Model version `{config.get('name')}@{config.get('version')}`, exported by neuroseg "
        f"(`neuroseg export bioimageio`). The network's output is per-pixel class "
        f"probabilities ({names}); neuroseg's post-processing, which turns them into cells "
        "(interiors seed a watershed over the foreground), is not part of the network: "
        "bioimage.io tools show the probabilities. "
        "`neuroseg segment --model bioimageio:THIS.zip` runs the whole model, post-processing "
        "included, from `config.neuroseg` in rdf.yaml.",
        "",
        "- **Input** `image`: `(batch, y, x, channel)`, the image's own intensities "
        + (
            "as one grey channel (for a multi-channel image, the maximum over its channels)"
            if spec.get("channels") == "grey"
            else "as three channels (RGB)"
        )
        + f"; height and width multiples of {info['stride']} pixels.",
        "- **Pre-processing** (declared in rdf.yaml): per image and channel, the "
        f"{info['percentiles'][0]:g}th and {info['percentiles'][1]:g}th percentiles mapped "
        "to 0 and 1, clipped to 0..1, times 255."
        if spec.get("normalization") == "percentile"
        else "- **Pre-processing**: none (8-bit images on their own 0..255 scale).",
    ]
    if scale != 1.0:
        lines.append(
            f"- **Input scale {scale:g}**: the network was trained on images resized by "
            f"{scale:g} (a {1 / scale:g} times coarser pixel). bioimage.io's spec cannot "
            f"declare a resize, so resize images by {scale:g} before running this package in "
            "another tool (Fiji: Image > Scale, bilinear) and the probabilities back after. "
            "neuroseg does both itself."
        )
    if config.get("tta"):
        lines.append(
            f"- neuroseg serves this model with test-time augmentation `{config['tta']}` "
            "(the mean of flipped predictions); other tools run it once."
        )
    lines += [
        f"- **Output** `probabilities`: `(batch, y, x, channel)`, channels {names}, at the "
        f"input's size; crop {HALO} pixels from each side of a tile when tiling.",
        "",
        "The model card follows.",
        "",
        "---",
        "",
    ]
    return "\n".join(lines) + card


# ----------------------------------------------------------------------------- compat

_HANDLER_CALL = re.compile(r"handler\(\s*(value|self),\s*info,[^)]*\)")


def _bioimageio_compat() -> None:
    """Make bioimageio.spec 0.5.12 serialise under pydantic-core >= 2.41 (pydantic 2.12+).

    Three of its wrap serialisers call ``handler(value, info)``; pydantic passes the second
    argument on as ``index_key`` and newer pydantic-core rejects a ``SerializationInfo`` there
    ("'index_key' is expected to be an integer or a string"), so every description with a file
    fails to validate, package or test. bioimageio.core 0.11.0 pins bioimageio.spec 0.5.12.0
    exactly, and upstream's code is unchanged. The fix drops the ``info`` argument (``index_key``
    is optional; the call means ``handler(value)``) by swapping the three functions' code in
    place, so pydantic's compiled schemas, which hold the function objects, use it. Idempotent;
    a function whose source no longer has the call is left alone.
    """
    import inspect
    import textwrap

    from bioimageio.spec._internal import io_packaging, validated_string_with_inner_node
    from bioimageio.spec.model import v0_4

    inner = validated_string_with_inner_node.ValidatedStringWithInnerNode.__dict__["_serialize"]
    targets = [
        io_packaging.package_file_descr_serializer,
        v0_4.package_weights,
        getattr(inner, "wrapped", inner),
    ]
    for func in targets:
        if getattr(func, "_neuroseg_compat", False):
            continue
        source = textwrap.dedent(inspect.getsource(func))
        source = "\n".join(line for line in source.splitlines() if not line.startswith("@"))
        fixed, n = _HANDLER_CALL.subn(r"handler(\1)", source)
        if n != 1:
            continue
        namespace: dict[str, Any] = {}
        exec(
            compile(fixed, inspect.getsourcefile(func) or "<bioimageio>", "exec"),
            func.__globals__,
            namespace,
        )
        func.__code__ = namespace[func.__name__].__code__
        func._neuroseg_compat = True


# ----------------------------------------------------------------------------- export


def _model_files(model_uri: str, work: str) -> dict:
    """Copy the folder's files into `work`, exporting ONNX there when the folder has none."""
    from neuroseg.registry import ModelNotFoundError

    uri = str(model_uri).rstrip("/")
    try:
        config = storage.read_json(storage.join(uri, "config.json"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"{uri}: not a model folder (no config.json)") from None
    folder = os.path.join(work, "model")
    os.makedirs(folder)
    storage.write_json(os.path.join(folder, "config.json"), config)
    for name in ("model.keras", "MODEL_CARD.md", "model.onnx", "onnx.json"):
        try:
            data = storage.read_bytes(storage.join(uri, name))
        except FileNotFoundError:
            continue
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    if not os.path.exists(os.path.join(folder, "onnx.json")):
        if not os.path.exists(os.path.join(folder, "model.keras")):
            raise ModelNotFoundError(f"{uri}: neither model.onnx (with onnx.json) nor model.keras")
        from neuroseg.serving.onnx import export_onnx

        export_onnx(folder)
    return config


def export_package(model_uri: str, out: str, *, sample: Any = None, test: bool = True) -> dict:
    """Write a model folder as a bioimage.io model package (a zip, spec 0.5).

    Parameters
    ----------
    model_uri : str
        A model folder (local or ``s3://``) with ``config.json`` and ``model.keras``;
        ``model.onnx`` is exported (into a temporary copy) when it has no ``onnx.json``.
    out : str
        The zip file to write (local path; its folder is created).
    sample : str or numpy.ndarray, optional
        An image (file or decoded array) to cut the test tensor and cover from: a centre crop
        of at most 256 x 256 pixels as the network sees it. None: a synthetic FNC-like plate
        (:func:`neuroseg.synth.synth_plate`).
    test : bool
        Also run ``bioimageio.core``'s model test on the written package (every weight format;
        a few seconds).

    Returns
    -------
    dict
        ``path``, ``bytes``, ``sha256`` (of the zip), ``weights`` (formats declared),
        ``attachments``, ``licence``, ``validation`` (``"passed"`` or the failed checks),
        ``test`` (bioimageio.core's status, when run) and ``seconds``.

    Raises
    ------
    ValueError
        A head or input neuroseg cannot describe in the spec, a sample too small, a package
        that does not validate or fails bioimageio.core's test.
    neuroseg.registry.ModelNotFoundError
        `model_uri` is not a model folder.
    """
    try:
        import onnxruntime as ort
        import yaml
        from bioimageio.spec import load_description, save_bioimageio_package
    except ImportError as exc:
        raise ValueError(
            f"exporting a bioimage.io package needs bioimage.io's libraries and ONNX Runtime "
            f"({exc}): pip install 'neuroseg[bioimageio,train]'"
        ) from None

    from neuroseg.normalize import input_spec
    from neuroseg.tiling import config_stride

    _bioimageio_compat()
    start = time.perf_counter()
    uri = str(model_uri).rstrip("/")
    out = os.path.abspath(os.fspath(out))
    with tempfile.TemporaryDirectory(prefix="neuroseg-bioimageio-") as work:
        config = _model_files(uri, work)
        folder = os.path.join(work, "model")
        head = str(config.get("head", "binary"))
        if head not in CLASS_NAMES:
            raise ValueError(f"{uri}: head {head!r} cannot be described in a bioimage.io package")
        spec = input_spec(config.get("input"))
        grey = spec["channels"] == "grey"
        onnx_record = storage.read_json(os.path.join(folder, "onnx.json"))
        with open(os.path.join(folder, "model.onnx"), "rb") as f:
            onnx_bytes = f.read()
        fixed = onnx_record.get("input", {}).get("shape", [None, None])[1]
        fixed = fixed if isinstance(fixed, int) else None
        step = config_stride(config)

        pkg = os.path.join(work, "package")
        os.makedirs(pkg)
        # test tensors: the declared pre-processing in numpy, the folder's own ONNX network
        x = _test_input(_read_sample(sample), spec, step, fixed)
        x_pre = _preprocess(x, spec)
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        planes = np.repeat(x_pre, 3, axis=-1) if grey else x_pre
        name_in = session.get_inputs()[0].name
        probs = np.asarray(session.run(None, {name_in: planes})[0], np.float32)
        if probs.ndim == 3:
            probs = probs[..., None]
        np.save(os.path.join(pkg, "test_input.npy"), x)
        np.save(os.path.join(pkg, "test_output.npy"), probs)
        _cover(x_pre, probs, os.path.join(pkg, "cover.png"))
        import tifffile  # sample tensors: the test tensors as TIFFs a person can open

        tifffile.imwrite(os.path.join(pkg, "sample_input.tif"), x[0].squeeze(-1) if grey else x[0])
        tifffile.imwrite(os.path.join(pkg, "sample_output.tif"), probs[0])

        # weights
        with open(os.path.join(pkg, _WEIGHTS_ONNX), "wb") as f:
            f.write(_grey_onnx(onnx_bytes) if grey else onnx_bytes)
        weights: dict[str, Any] = {
            "onnx": {
                "source": _WEIGHTS_ONNX,
                "opset_version": int(onnx_record.get("opset", 17)),
                "comment": f"neuroseg's model.onnx ({onnx_record.get('converter', 'tf2onnx')})"
                + (", a Concat in front replicating the grey channel to 3 planes" if grey else ""),
            }
        }
        keras_path = os.path.join(folder, "model.keras")
        if os.path.exists(keras_path):
            with open(keras_path, "rb") as f:
                tf_version = _saved_model_zip(
                    f.read(), config, grey, os.path.join(pkg, _WEIGHTS_TF)
                )
            weights["tensorflow_saved_model_bundle"] = {
                "source": _WEIGHTS_TF,
                "tensorflow_version": tf_version,
                "comment": "Keras 3 model.export(format='tf_saved_model') of neuroseg's "
                "model.keras (BatchNorm folded), output named 'probabilities'",
            }
            weights["onnx"]["parent"] = "tensorflow_saved_model_bundle"

        attachments = []
        for package_name, folder_name in ATTACHMENTS.items():
            if os.path.exists(os.path.join(folder, folder_name)):
                shutil.copyfile(os.path.join(folder, folder_name), os.path.join(pkg, package_name))
                attachments.append(package_name)

        card_path = os.path.join(folder, "MODEL_CARD.md")
        card = Path(card_path).read_text("utf-8") if os.path.exists(card_path) else ""
        info = {"stride": step, "percentiles": spec["percentiles"]}
        Path(pkg, "README.md").write_text(_documentation(card, config, info), "utf-8")
        licence = _licence(card)
        rdf = _rdf(config, spec, card, weights, attachments, step, fixed, x.shape)
        rdf["license"] = licence
        with open(os.path.join(pkg, RDF_FILE), "w", encoding="utf-8") as f:
            yaml.safe_dump(rdf, f, sort_keys=False, allow_unicode=True)

        descr = load_description(os.path.join(pkg, RDF_FILE), format_version="discover")
        summary = descr.validation_summary
        if summary.status != "passed" and summary.status != "valid-format":
            raise ValueError(f"{uri}: the package does not validate ({_failed(summary)})")
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        save_bioimageio_package(descr, output_path=Path(out))

    result = {
        "path": out,
        "bytes": os.path.getsize(out),
        "sha256": _sha256_file(out),
        "model": f"{config.get('name')}@{config.get('version')}",
        "spec": rdf["format_version"],
        "weights": list(weights),
        "attachments": attachments,
        "licence": licence,
        "validation": "passed",
    }
    if test:
        status, detail = check_package(out)
        result["test"] = status
        if status != "passed":
            raise ValueError(f"{out}: bioimageio.core's model test failed ({detail})")
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _failed(summary: Any) -> str:
    """The failed checks of a bioimageio ValidationSummary on one line."""
    errors = []
    for detail in summary.details:
        if detail.status == "failed":
            errs = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in detail.errors] or [detail.name]
            errors.extend(errs)
    return "; ".join(errors)[:800].replace("\n", " ") or str(summary.status)


def check_package(path: str, *, weight_format: str | None = None) -> tuple[str, str]:
    """Run ``bioimageio.core``'s model test (``bioimageio test``) on a package.

    Returns
    -------
    (str, str)
        Its status (``"passed"`` or ``"failed"``) and the failed checks on one line.
    """
    from bioimageio.core import test_model

    _bioimageio_compat()
    path = os.path.abspath(os.fspath(path))
    # bioimageio.core unzips TensorFlow weights into ./bioimageio_unzipped_tf_weights: run it
    # in a scratch folder (the working directory is the process's: not thread-safe)
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="neuroseg-bioimageio-test-") as scratch:
        os.chdir(scratch)
        try:
            summary = test_model(path, weight_format=weight_format)
        finally:
            os.chdir(here)
    return str(summary.status), "" if summary.status == "passed" else _failed(summary)


def _rdf(config, spec, card, weights, attachments, step, fixed, in_shape) -> dict:
    name = str(config.get("name") or "model")
    channels = int(in_shape[-1])
    if fixed:
        space = [{"type": "space", "id": a, "size": fixed} for a in ("y", "x")]
    else:
        size = {"min": max(step, 2 * HALO + step), "step": step}
        space = [{"type": "space", "id": a, "size": size} for a in ("y", "x")]
    if channels == 1:
        channel_names = ["grey"]
    else:
        channel_names = ["red", "green", "blue"]
    preprocessing = []
    if spec["normalization"] == "percentile":
        low, high = spec["percentiles"]
        preprocessing = [
            {
                "id": "scale_range",
                "kwargs": {
                    "axes": ["y", "x"],
                    "min_percentile": float(low),
                    "max_percentile": float(high),
                    "eps": 1e-6,
                },
            },
            {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}},
            {"id": "scale_linear", "kwargs": {"gain": 255.0, "offset": 0.0}},
        ]
    classes = CLASS_NAMES[str(config.get("head"))]
    out_space = [
        {
            "type": "space",
            "id": a,
            "size": {"tensor_id": INPUT_ID, "axis_id": a},
            **({} if fixed else {"halo": HALO}),
        }
        for a in ("y", "x")
    ]
    neuroseg_config = {
        "format": PACKAGE_FORMAT,
        "config": json.loads(json.dumps(storage.to_jsonable(config))),
        "files": {
            folder_name: package_name
            for package_name, folder_name in ATTACHMENTS.items()
            if package_name in attachments
        },
        "input_scale": float(spec.get("scale", 1.0)),
    }
    scale = float(spec.get("scale", 1.0))
    tags = ["fluorescence-light-microscopy", "2d", "semantic-segmentation", "unet", "neuroseg"]
    tags.append("nuclei" if name == "nuclei" else "neurons")
    return {
        "format_version": _format_version(),
        "type": "model",
        "name": f"neuroseg {name} U-Net",
        "description": _description(card, name)
        + (f" Expects images resized by {scale:g} (see the documentation)." if scale != 1 else ""),
        "authors": _AUTHORS,
        "cite": _citations(card),
        "covers": [{"source": "cover.png"}],
        "documentation": {"source": "README.md"},
        "tags": tags,
        "attachments": [{"source": a} for a in attachments],
        "inputs": [
            {
                "id": INPUT_ID,
                "description": "the image: one grey plane (the maximum over channels)"
                if channels == 1
                else "the image's RGB planes",
                "axes": [
                    {"type": "batch"},
                    *space,
                    {"type": "channel", "channel_names": channel_names},
                ],
                "test_tensor": {"source": "test_input.npy"},
                "sample_tensor": {"source": "sample_input.tif"},
                "data": {"type": "float32"},
                "preprocessing": preprocessing,
            }
        ],
        "outputs": [
            {
                "id": OUTPUT_ID,
                "description": "per-pixel class probabilities (softmax)"
                if len(classes) > 1
                else "per-pixel cell probability",
                "axes": [
                    {"type": "batch"},
                    *out_space,
                    {"type": "channel", "channel_names": classes},
                ],
                "test_tensor": {"source": "test_output.npy"},
                "sample_tensor": {"source": "sample_output.tif"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": weights,
        "config": {"neuroseg": neuroseg_config},
    }


def _format_version() -> str:
    from bioimageio.spec.model.v0_5 import ModelDescr

    return str(ModelDescr.implemented_format_version)


# ----------------------------------------------------------------------------- unpack


_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def _rdf_name(names: list[str]) -> str | None:
    for name in _RDF_NAMES:
        if name in names:
            return name
    found = [n for n in names if n.endswith(".bioimageio.yaml") and "/" not in n]
    return found[0] if len(found) == 1 else None


def _cache_root() -> str:
    return os.environ.get("NEUROSEG_BIOIMAGEIO_CACHE") or os.path.join(
        tempfile.gettempdir(), "neuroseg-bioimageio"
    )


def unpack_package(path: str, dest: str | None = None) -> str:
    """A neuroseg model folder from a bioimage.io package that :func:`export_package` wrote.

    Parameters
    ----------
    path : str
        The package: a zip file, or a folder holding its ``rdf.yaml`` and files.
    dest : str, optional
        The folder to write (``config.json``, ``model.onnx``, ``onnx.json``, ``model.keras``
        when the package has it, ``MODEL_CARD.md``). Default: a cache folder keyed by the
        package's sha256 (``$NEUROSEG_BIOIMAGEIO_CACHE`` or the temp dir), reused when it is
        already complete.

    Returns
    -------
    str
        The model folder, for :func:`neuroseg.registry.load_model`.

    Raises
    ------
    ValueError
        Not a zip or folder, no ``rdf.yaml``, not a model, a model without ``config.neuroseg``
        (another kind of package: neuroseg cannot post-process its output), or files that do
        not match their record. One line, naming `path`.
    """
    import yaml

    path = os.fspath(path)
    if os.path.isdir(path):
        names = sorted(
            os.path.relpath(os.path.join(r, f), path).replace(os.sep, "/")
            for r, _, fs in os.walk(path)
            for f in fs
        )

        def read(name: str) -> bytes:
            return Path(path, name).read_bytes()

        rdf_name = _rdf_name(names)
        key = hashlib.sha256(read(rdf_name)).hexdigest() if rdf_name else ""
        archive = None
    elif os.path.isfile(path):
        try:
            archive = zipfile.ZipFile(path)
            names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{path}: not a readable zip file ({exc})") from None

        def read(name: str) -> bytes:
            try:
                return archive.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
                raise ValueError(f"{path}: damaged zip, cannot read {name} ({exc})") from None

        rdf_name = _rdf_name(names)
        key = _sha256_file(path)
    else:
        raise ValueError(f"{path}: no such package file or folder")
    try:
        if rdf_name is None:
            raise ValueError(
                f"{path}: not a bioimage.io package (no rdf.yaml or bioimageio.yaml in it)"
            )
        try:
            rdf = yaml.safe_load(io.BytesIO(read(rdf_name)))
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise ValueError(f"{path}: {rdf_name} is not valid YAML ({reason})") from None
        if not isinstance(rdf, dict) or rdf.get("type") != "model":
            kind = rdf.get("type") if isinstance(rdf, dict) else type(rdf).__name__
            raise ValueError(f"{path}: not a bioimage.io model package (type {kind!r})")
        ours = (
            (rdf.get("config") or {}).get("neuroseg")
            if isinstance(rdf.get("config"), dict)
            else None
        )
        if not isinstance(ours, dict) or not isinstance(ours.get("config"), dict):
            formats = ", ".join(sorted(rdf.get("weights") or {})) or "no weights"
            raise ValueError(
                f"{path}: a bioimage.io package neuroseg cannot post-process "
                f"({rdf.get('name', 'unnamed')!r} has no config.neuroseg, so it is not a "
                f"neuroseg export and its outputs' meaning is unknown to neuroseg; weights: "
                f"{formats}; run it in bioimageio.core, deepImageJ or ilastik)"
            )
        if int(ours.get("format", 0)) > PACKAGE_FORMAT:
            raise ValueError(
                f"{path}: config.neuroseg format {ours.get('format')} is newer than this "
                f"neuroseg reads ({PACKAGE_FORMAT}): upgrade neuroseg"
            )
        files = ours.get("files") or {}
        if not isinstance(files, dict) or "model.onnx" not in files or "onnx.json" not in files:
            raise ValueError(f"{path}: config.neuroseg names no model.onnx and onnx.json")
        for folder_name, package_name in files.items():
            if folder_name not in ATTACHMENTS.values() or package_name not in names:
                raise ValueError(
                    f"{path}: config.neuroseg.files {folder_name!r} -> {package_name!r} is "
                    "not a file of the package"
                )
        cached = dest is None
        dest = dest or os.path.join(_cache_root(), key[:24])
        if cached and _complete(dest):
            return dest
        blobs = {folder_name: read(package_name) for folder_name, package_name in files.items()}
        record = json.loads(blobs["onnx.json"])
        digest = hashlib.sha256(blobs["model.onnx"]).hexdigest()
        if record.get("sha256") and record["sha256"] != digest:
            raise ValueError(f"{path}: model.onnx does not match the sha256 its onnx.json records")
        doc = rdf.get("documentation")
        doc = doc.get("source") if isinstance(doc, dict) else doc  # 0.5: a file entry
        card = read(doc) if isinstance(doc, str) and doc in names else None
    finally:
        if archive is not None:
            archive.close()
    if not cached:  # the caller's folder: write into it, onnx.json last
        os.makedirs(dest, exist_ok=True)
        _write_folder(dest, blobs, card, ours["config"])
        return dest
    # the cache: a complete folder appears at once (rename), so concurrent callers never
    # load a half-written one; the loser of a race keeps the winner's identical folder
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
    try:
        _write_folder(tmp, blobs, card, ours["config"])
        if os.path.isdir(dest) and not _complete(dest):
            shutil.rmtree(dest, ignore_errors=True)  # an interrupted unpack's leftovers
        try:
            os.replace(tmp, dest)
        except OSError:
            if not _complete(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _complete(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "onnx.json")) and os.path.exists(
        os.path.join(folder, "config.json")
    )


def _write_folder(folder: str, blobs: dict, card: bytes | None, config: dict) -> None:
    for folder_name, data in blobs.items():
        if folder_name != "onnx.json":
            Path(folder, folder_name).write_bytes(data)
    if card is not None:
        Path(folder, "MODEL_CARD.md").write_bytes(card)
    storage.write_json(os.path.join(folder, "config.json"), config)
    Path(folder, "onnx.json").write_bytes(blobs["onnx.json"])  # last: the folder is complete


def _cli(argv: list[str] | None = None) -> int:
    """``python -m neuroseg.serving.bioimageio ARGS``: bioimage.io's own command line
    (``bioimageio ARGS``, e.g. ``test FILE.zip``) with :func:`_bioimageio_compat` applied, for
    environments whose pydantic breaks the plain ``bioimageio`` command."""
    import sys

    _bioimageio_compat()
    from bioimageio.core.__main__ import main

    sys.argv = ["bioimageio", *(sys.argv[1:] if argv is None else argv)]
    return main()


if __name__ == "__main__":
    raise SystemExit(_cli())
