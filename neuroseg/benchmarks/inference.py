"""``neuroseg bench inference``: seconds per image for each step of inference, per model.

Steps, timed with the library's own pieces (the path ``segment`` and the nightly run take):
``decode`` (file bytes to the image's own dtype, :func:`neuroseg.images.decode_native`),
``normalize`` (the model's declared input, :func:`neuroseg.predict.prepare_input`), ``predict``
(tiles or the whole image, batched, stitched: :func:`neuroseg.predict.predict_input`),
``label`` (:func:`neuroseg.predict.postprocess`: threshold + components, or the three-class
marker watershed), ``measure`` (:func:`neuroseg.measure.cell_records`) and ``write`` (one
image's Parquet file), then the end-to-end time per image, for each precision.

Images: for the FNC model (``default``, also ``fnc``) and other RGB models synthetic 1600x1200
plates (:mod:`neuroseg.synth`); for other grey models (``nuclei``) real 520x696 BBBC039 images
(16-bit files of 12-bit values) from ``../shared/data/nuclei/bbbc039`` when present, else
synthetic plates turned into 12-bit grey images of that size. ``library_plate_seconds`` is a
whole plate through :func:`neuroseg.inference.process_image` in a plain loop (what the nightly
flow maps), the reference for the orchestration bench (``flows/bench.py``).

The model is the shipped one (:func:`neuroseg.registry.default_model_uri`). Until one is shipped,
the fallback is an untrained U-Net of the ``cpu-small`` architecture (``unet``, tile 400, width 16,
depth 3): prediction time depends on the architecture only, but labelling and measuring depend on
what the model outputs, and an untrained network outputs about 0.5 everywhere (hundreds of
thousands of one-pixel "cells", a minute of measuring per image). So one channel path of the
fallback is wired by hand (the first and last two convolutions, filter 0) to a smoothed
brightness threshold: the dense computation is unchanged, and post-processing sees a cell-like
map (tens of cells per synthetic image).

Importing this module is light; TensorFlow comes in with the model.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from neuroseg import storage

__all__ = [
    "FALLBACK_MODEL",
    "TARGETS",
    "TARGET_SECONDS",
    "bench_inference",
    "bench_model_uri",
    "fallback_model",
    "library_plate",
    "load_average",
]

#: Target end-to-end seconds per 1600x1200 image in fp32 with the shipped U-Net.
TARGET_SECONDS = 2.5
#: How the JSON names the fallback model.
FALLBACK_MODEL = "untrained unet (shipped model absent)"
#: The cpu-small architecture of the fallback.
FALLBACK_ARCH = {"model": "unet", "tile": 400, "width": 16, "depth": 3, "batch_norm": True}
_STEPS = ("decode", "normalize", "predict", "label", "measure", "write")
#: Seconds per image the issue sets for each shipped model in fp32 on 2 quiet cores.
TARGETS = {"default": 1.5, "fnc": 1.5, "nuclei": 0.2, "nuclei-fast": 0.2}
#: Where real nucleus images are looked for (beside the checkout), for grey models.
NUCLEI_IMAGES = os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared", "data", "nuclei", "bbbc039", "images"
)


def fallback_model(*, seed: int = 0, brightness: float = 0.25, gain: float = 30.0):
    """The untrained cpu-small U-Net with one hand-wired brightness path (see module notes).

    Parameters
    ----------
    seed : int
        Keras seed of the random weights.
    brightness : float
        Threshold on the 0..1 channel mean (smoothed 5x5 then 3x3) where the output is 0.5.
    gain : float
        Steepness of the output sigmoid around the threshold.

    Returns
    -------
    keras.Model
        ``build_model("unet", tile=400, width=16, depth=3)``; input raw RGB 0..255, output
        ``(b, T, T, 1)`` probabilities.
    """
    import keras

    from neuroseg.models import build_model

    keras.utils.set_random_seed(seed)
    a = FALLBACK_ARCH
    model = build_model(a["model"], tile=a["tile"], width=a["width"], depth=a["depth"])
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    first, second, dec1, dec2, head = convs[0], convs[1], convs[-3], convs[-2], convs[-1]

    def wire(layer, fill: Callable[[np.ndarray], None]) -> None:
        weights = layer.get_weights()
        kernel = weights[0]
        kernel[..., 0] = 0.0
        fill(kernel)
        if len(weights) > 1:
            weights[1][0] = 0.0
        layer.set_weights(weights)

    def mean_3x3(channel: int | None):
        def fill(k):
            if channel is None:
                k[..., 0] = 1.0 / (k.shape[0] * k.shape[1] * k.shape[2])
            else:
                k[:, :, channel, 0] = 1.0 / (k.shape[0] * k.shape[1])

        return fill

    skip = dec1.get_weights()[0].shape[2] - a["width"]  # decoder input: [upsampled, skip]
    wire(first, mean_3x3(None))  # channel mean, 3x3 box
    wire(second, mean_3x3(0))  # 3x3 box again
    wire(dec1, mean_3x3(skip))  # from the skip connection's filter 0
    wire(dec2, lambda k: k.__setitem__((1, 1, 0, 0), 1.0))
    kernel, bias = head.get_weights()
    kernel[...] = 0.0
    kernel[0, 0, 0, 0] = gain
    bias[...] = -gain * brightness
    head.set_weights([kernel, bias])
    return model


def bench_model_uri(workdir: str, *, seed: int = 0) -> tuple[str, str]:
    """Folder of the model the benchmarks use, and how the JSON names it.

    The shipped model when there is one; else :func:`fallback_model` registered as
    ``bench-fallback`` under ``<workdir>/registry``.
    """
    from neuroseg import registry

    shipped = registry.default_model_uri()
    if storage.exists(os.path.join(shipped, "config.json")):
        config = storage.read_json(os.path.join(shipped, "config.json"))
        name = f"{config.get('name', 'default')}@{config.get('version', '?')}"
        return shipped, f"shipped {config.get('architecture', 'model')} {name}"
    uri = registry.register_model(
        storage.join(workdir, "registry"),
        "bench-fallback",
        model=fallback_model(seed=seed),
        config={"architecture": "unet", "tile": FALLBACK_ARCH["tile"], "train": FALLBACK_ARCH},
        lineage={"note": FALLBACK_MODEL},
    )
    return uri, FALLBACK_MODEL


def library_plate(
    root: str,
    model_uri: str,
    *,
    precision: str = "fp32",
    tta: str | None = None,
    backend: str = "tf",
) -> dict:
    """Nightly inference of ``<root>/uploads`` without Prefect: load, find, process in a loop.

    The same work as the flow's tasks (model load, :func:`neuroseg.inference.find_pending`,
    :func:`neuroseg.inference.process_image` with overlays into ``<root>/reports``), one image
    after another.

    Returns
    -------
    dict
        ``seconds`` (wall, model load included), ``load_seconds``, ``images``, ``cells``
        (sum of per-image counts), ``rows`` (rows of the written cell table), ``failed``,
        ``steps`` (mean seconds per image of ``process_image``'s own steps; its ``write``
        includes the overlay PNG and the processed record).
    """
    from neuroseg import inference
    from neuroseg.registry import load_model

    t0 = time.perf_counter()
    bundle = load_model(model_uri, precision=precision, tta=tta, backend=backend)
    load = time.perf_counter() - t0
    cells_uri = storage.join(root, "cells")
    pending, _ = inference.find_pending(
        root, storage.join(root, "uploads"), model_version=bundle.version
    )
    report = storage.join(root, "reports", "library")
    results = [
        inference.process_image(
            bundle, item, root=root, cells_uri=cells_uri, report_uri=report, flow_run_id=None
        )
        for item in pending
    ]
    seconds = time.perf_counter() - t0
    done = [r for r in results if r["status"] == "done"]
    steps = sorted({k for r in done for k in r.get("seconds", {})})
    return {
        "seconds": seconds,
        "steps": {k: sum(r["seconds"].get(k, 0.0) for r in done) / len(done) for k in steps},
        "load_seconds": load,
        "images": len(done),
        "failed": len(results) - len(done),
        "cells": sum(r["cells"] for r in done),
        "rows": count_rows(cells_uri),
    }


def count_rows(cells_uri: str) -> int:
    """Rows of a hive-partitioned cell table (0 when absent)."""
    import pyarrow.dataset as ds

    if not storage.exists(cells_uri) or not storage.list_files(cells_uri, suffixes=".parquet"):
        return 0
    fs, path = storage.filesystem(cells_uri)
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").count_rows()


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _once(fn: Callable[[], object]) -> tuple[float, object]:
    return _best(fn, 1)


def _steps_one(bundle, uri: str, workdir: str, repeat: int) -> tuple[dict, int]:
    """Seconds of each step for one image (best of ``repeat``, of 2 for ``predict``), and its
    cell count."""
    from neuroseg.images import decode_native
    from neuroseg.inference import write_cells
    from neuroseg.measure import cell_records
    from neuroseg.predict import postprocess, predict_input, prepare_input

    cfg = bundle.config
    data = storage.read_bytes(uri)
    t = {}
    t["decode"], image = _best(lambda: decode_native(data, name=uri), repeat)
    t["normalize"], x = _best(lambda: prepare_input(cfg, image), repeat)
    t["predict"], out = _best(lambda: predict_input(bundle, x), min(repeat, 2))
    t["label"], (labels, n, prob) = _best(lambda: postprocess(cfg, out, image=image), repeat)
    meta = {
        "plate_id": "P001",
        "image_id": os.path.basename(uri).rsplit(".", 1)[0],
        "image_uri": uri,
        "image_sha256": storage.sha256_bytes(data),
        "model_name": bundle.name,
        "model_version": bundle.version,
        "processed_at": dt.datetime.now(dt.UTC),
    }
    t["measure"], df = _best(lambda: cell_records(labels, image, prob, **meta), repeat)
    target = storage.join(workdir, "steps", f"{meta['image_id']}.parquet")
    t["write"], _ = _best(lambda: write_cells(df, target), repeat)
    return t, int(n)


def _end_to_end(bundle, uri: str, workdir: str) -> float:
    """One image from its file to its Parquet file, as ``process_image`` without the manifest."""
    from neuroseg.images import decode_native
    from neuroseg.inference import write_cells
    from neuroseg.measure import cell_records
    from neuroseg.predict import segment_image

    t0 = time.perf_counter()
    data = storage.read_bytes(uri)
    image = decode_native(data, name=uri)
    labels, _, prob = segment_image(bundle, image)
    df = cell_records(
        labels,
        image,
        prob,
        plate_id="P001",
        image_id="e2e",
        image_uri=uri,
        image_sha256=storage.sha256_bytes(data),
        model_name=bundle.name,
        model_version=bundle.version,
        processed_at=dt.datetime.now(dt.UTC),
    )
    write_cells(df, storage.join(workdir, "e2e", os.path.basename(uri) + ".parquet"))
    return time.perf_counter() - t0


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def load_average() -> float | None:
    """The 1-minute load average (how busy the shared machine was), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _device() -> dict:
    import tensorflow as tf

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "cpus": os.cpu_count(),
        "gpu": bool(gpus),
        "tensorflow": tf.__version__,
        "cpu_bf16": {k: k in flags.split() for k in ("avx512_bf16", "amx_bf16")},
    }


def _resolve_model(model: str, workdir: str, seed: int) -> tuple[str, str, str]:
    """``(uri, how the JSON names it, target key)`` of the model to bench."""
    from neuroseg import registry

    if model == "default":
        uri, name = bench_model_uri(workdir, seed=seed)
        return uri, name, "default"
    shipped = registry.shipped_model_uri(model) if "/" not in model else model
    if not storage.exists(storage.join(shipped, "config.json")):
        raise ValueError(f"model {model!r}: no shipped model or model folder with a config.json")
    config = storage.read_json(storage.join(shipped, "config.json"))
    name = f"{config.get('name', model)}@{config.get('version', '?')}"
    return shipped, f"{config.get('architecture', 'model')} {name}", model


def _grey_uploads(root: str, *, images: int, height: int, width: int, seed: int) -> list[str]:
    """``uploads/P001/*.png``: real BBBC039 images when beside the checkout (cropped or tiled
    to ``height x width``), else synthetic plates as 12-bit grey 16-bit PNGs."""

    from neuroseg import synth

    real = sorted(
        os.path.join(NUCLEI_IMAGES, f) for f in os.listdir(NUCLEI_IMAGES) if f.endswith(".png")
    ) if os.path.isdir(NUCLEI_IMAGES) else []  # fmt: skip
    uris = []
    for i in range(images):
        if real and (height, width) == (520, 696):
            data = storage.read_bytes(real[i % len(real)])
        else:
            data = synth.grey12_png(seed=seed * 1000 + i, height=height, width=width)
        uri = storage.join(root, "uploads", "P001", f"P001_{i:03d}.png")
        storage.write_bytes(uri, data)
        uris.append(uri)
    return uris


def bench_inference(
    *,
    model: str = "default",
    images: int = 20,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    step_images: int = 3,
    repeat: int = 3,
    tta: str | None = None,
    backends: tuple[str, ...] = ("tf",),
    cold_start: bool | None = None,
) -> dict:
    """Time every step of inference per image, end to end, and a plate in a library loop.

    Parameters
    ----------
    model : str
        ``"default"`` (the shipped FNC model; an untrained stand-in when absent), a shipped
        model's name (``"nuclei"``) or a model folder.
    images : int
        Images in the plate of ``library_plate_seconds``.
    height, width : int, optional
        Image size; default 1200x1600 (the lab's plates) for RGB models and 520x696 (BBBC039)
        for grey models.
    seed : int
        Seed of the synthetic plate (and of the fallback model's random weights).
    precisions : tuple of {"fp32", "bf16"}
        Precisions to time (``bf16`` rebuilds the network with the ``mixed_bfloat16`` policy
        and the same weights, :func:`neuroseg.registry.load_model`).
    step_images : int
        Images (the first of the plate) timed step by step and end to end; the medians are
        reported.
    repeat : int
        Repeats of each step but ``predict`` (repeated at most twice); the best is kept.
    tta : {"none", "flip2", "flips"} or None
        Test-time augmentation to time (:data:`neuroseg.predict.TTA_MODES`); None: the
        model's own.
    backends : tuple of {"tf", "onnx"}
        What runs the network: ``tf`` is timed at every precision of `precisions`; ``onnx``
        (ONNX Runtime on the folder's ``model.onnx``) in fp32 only, reported as the run
        ``"onnx"`` beside the precisions, with ``onnx_speedup`` (tf fp32 end to end / onnx)
        when both ran.
    cold_start : bool or None
        Also time each backend's cold start in a fresh Python process (import, model load,
        first image: :func:`neuroseg.benchmarks.serving.cold_start`) and add the installed
        size of the serve and full environments
        (:func:`neuroseg.benchmarks.serving.environment_sizes`); None: when ``onnx`` is in
        `backends`.

    Returns
    -------
    dict
        JSON-able: ``model`` (its name, or :data:`FALLBACK_MODEL`), ``image_size`` ``[h, w]``,
        ``images_source``, ``tiles_per_image``, ``device``, ``load_average`` (1-minute, at
        start and end); per precision under ``precisions``: ``load_seconds``,
        ``first_call_seconds`` (tracing), ``steps`` (seconds per image by step),
        ``sum_of_steps``, ``end_to_end_seconds`` (median; the target is checked on it),
        ``end_to_end_best_seconds`` (the least, less sensitive to other users of the machine),
        ``images_per_second``, ``cells_per_image``, ``backend``; ``tta`` (the mode timed);
        ``library_plate_seconds`` (fp32 plate
        through ``process_image``, model load included) with ``library_plate`` details;
        ``target`` (end-to-end fp32 under :data:`TARGETS` of the model).
    """
    images = _check_int("images", images, 1)
    step_images = _check_int("step_images", step_images, 1)
    repeat = _check_int("repeat", repeat, 1)
    for name, value in (("height", height), ("width", width)):
        if value is not None:
            _check_int(name, value, 16)
    precisions = tuple(precisions)
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad or not precisions:
        raise ValueError(f"precisions must be a non-empty subset of ('fp32', 'bf16'), got {bad}")
    backends = tuple(backends)
    if not backends or any(b not in ("tf", "onnx") for b in backends):
        raise ValueError(f"backends must be a non-empty subset of ('tf', 'onnx'), got {backends}")
    runs = [(p, "tf", p) for p in precisions if "tf" in backends]
    runs += [("fp32", "onnx", "onnx")] if "onnx" in backends else []
    if cold_start is None:
        cold_start = "onnx" in backends
    from neuroseg import synth
    from neuroseg.normalize import input_spec
    from neuroseg.registry import load_model
    from neuroseg.tiling import tile_grid

    load_start = load_average()

    with tempfile.TemporaryDirectory(prefix="neuroseg-bench-inference-") as tmp:
        model_uri, model_name, target_key = _resolve_model(model, tmp, seed)
        # FNC models (the default, whatever its input planes) on FNC-like RGB plates; other grey
        # models (nuclei) on grey microscope images
        grey = input_spec(storage.read_json(storage.join(model_uri, "config.json")).get("input"))
        grey = grey["channels"] == "grey" and target_key not in ("default", "fnc")
        height = height or (520 if grey else 1200)
        width = width or (696 if grey else 1600)
        t0 = time.perf_counter()
        plate_root = os.path.join(tmp, "plate")
        if grey:
            uris = _grey_uploads(plate_root, images=images, height=height, width=width, seed=seed)
            source = (
                "BBBC039 (real, 16-bit)"
                if os.path.isdir(NUCLEI_IMAGES) and (height, width) == (520, 696)
                else "synthetic, 12-bit grey"
            )
        else:
            uris = synth.write_uploads(
                plate_root, plates=1, images_per_plate=images, seed=seed, height=height, width=width
            )
            source = "synthetic FNC-like plates, 8-bit RGB"
        synth_seconds = time.perf_counter() - t0
        sample = uris[: min(step_images, images)]
        per_precision: dict[str, dict] = {}
        config: dict = {}
        for precision, backend, label in runs:
            load, bundle = _once(
                lambda p=precision, b=backend: load_model(
                    model_uri, precision=p, tta=tta, backend=b
                )
            )
            config = bundle.config
            work = os.path.join(tmp, label)
            first = _end_to_end(bundle, sample[0], work)  # traces the model function
            steps, cells = [], []
            for uri in sample:
                t, n = _steps_one(bundle, uri, work, repeat)
                steps.append(t)
                cells.append(n)
            e2e = [_end_to_end(bundle, uri, work) for uri in sample]
            med = {s: statistics.median(t[s] for t in steps) for s in _STEPS}
            per_precision[label] = {
                "backend": backend,
                "precision": precision,
                "load_seconds": load,
                "first_call_seconds": first,
                "steps": med,
                "sum_of_steps": sum(med.values()),
                "end_to_end_seconds": statistics.median(e2e),
                "end_to_end_best_seconds": min(e2e),
                "images_per_second": 1.0 / statistics.median(e2e),
                "cells_per_image": statistics.mean(cells),
            }
        plate = library_plate(plate_root, model_uri, precision="fp32", tta=tta, backend=runs[0][1])
        starts = {}
        if cold_start:
            from neuroseg.benchmarks.serving import cold_start as time_cold_start

            for backend in dict.fromkeys(b for _, b, _ in runs):
                starts[backend] = time_cold_start(model_uri, uris[0], backend=backend)
    tile = int(config.get("tile", 400))
    fp32 = (per_precision.get("fp32") or per_precision.get("onnx") or {}).get("end_to_end_seconds")
    target = TARGETS.get(target_key, TARGET_SECONDS)
    result = {
        "model": model_name,
        "architecture": config.get("architecture"),
        "head": config.get("head", "binary"),
        "input": config.get("input"),
        "tta": config.get("tta") or "none",
        "image_size": [height, width],
        "images_source": source,
        "tiles_per_image": len(
            tile_grid(height, width, tile=tile, min_overlap=int(config.get("min_overlap", 100)))
        ),
        "tile": tile,
        "output_size": config.get("output_size"),
        "step_images": len(sample),
        "repeat": repeat,
        "device": _device(),
        "load_average": [load_start, load_average()],
        "precisions": per_precision,
        "library_plate_seconds": plate["seconds"],
        "library_plate": {
            **plate,
            "seconds_per_image": plate["seconds"] / max(plate["images"], 1),
            "images_per_second": plate["images"] / plate["seconds"],
            "synth_seconds": synth_seconds,
        },
        "target": {
            "end_to_end_fp32_seconds": target,
            "met": None if fp32 is None else bool(fp32 <= target),
            "note": f"target of the {target_key} model at its image size on 2 quiet cores"
            + ("" if model_name != FALLBACK_MODEL else "; measured with the fallback"),
        },
    }
    if "fp32" in per_precision and "onnx" in per_precision:
        result["onnx_speedup"] = (
            per_precision["fp32"]["end_to_end_seconds"]
            / per_precision["onnx"]["end_to_end_seconds"]
        )
        result["onnx_speedup_predict"] = (
            per_precision["fp32"]["steps"]["predict"] / per_precision["onnx"]["steps"]["predict"]
        )
    if starts:
        from neuroseg.benchmarks.serving import environment_sizes

        result["cold_start"] = starts
        result["environment"] = environment_sizes()
    if "fp32" in per_precision and "bf16" in per_precision:
        result["bf16_speedup"] = (
            per_precision["fp32"]["end_to_end_seconds"]
            / per_precision["bf16"]["end_to_end_seconds"]
        )
    return result
