"""What it costs to start a nightly worker: cold start per backend and installed sizes.

:func:`cold_start` times a fresh Python process that imports neuroseg, loads a model with one
backend and segments one image (what every new worker process pays before its first image).
:func:`environment_sizes` adds up the files of the installed distributions a ``pip install
"neuroseg[serve]"`` needs (the base and the ``serve`` extra's requirements, followed
transitively through this environment's installed metadata) against the full set-up
(``neuroseg[all]``): it measures this machine's installed wheels rather than building a second
environment, so it needs the full set-up installed here and counts files as pip recorded them
(no ``__pycache__`` written later).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

__all__ = ["cold_start", "environment_sizes"]

_COLD = """
import json, sys, time
t0 = time.perf_counter()
from neuroseg.images import read_native
from neuroseg.predict import segment_image
from neuroseg.registry import load_model
t1 = time.perf_counter()
bundle = load_model(sys.argv[1], backend=sys.argv[3])
t2 = time.perf_counter()
labels, n, _ = segment_image(bundle, read_native(sys.argv[2]))
t3 = time.perf_counter()
print(json.dumps({
    "import_seconds": t1 - t0,
    "load_seconds": t2 - t1,
    "first_image_seconds": t3 - t2,
    "cells": int(n),
    "backend": bundle.backend,
    "tensorflow_imported": "tensorflow" in sys.modules,
}))
"""


def cold_start(model_uri: str, image_uri: str, *, backend: str = "onnx") -> dict:
    """Seconds a fresh worker process needs to import, load the model and segment one image.

    Returns
    -------
    dict
        ``import_seconds`` (neuroseg's inference modules), ``load_seconds`` (the model with
        `backend`; TensorFlow's own import lands here for ``tf``), ``ready_seconds`` (import +
        load: the cold start), ``first_image_seconds`` (the first image, tracing included),
        ``process_seconds`` (the whole process, interpreter start-up included), ``cells``,
        ``backend`` and ``tensorflow_imported``.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _COLD, str(model_uri), str(image_uri), backend],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"cold start with backend {backend} failed: {tail}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["ready_seconds"] = result["import_seconds"] + result["load_seconds"]
    result["process_seconds"] = wall
    return result


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(extras: tuple[str, ...]) -> dict[str, int]:
    """Installed bytes of neuroseg's requirements with `extras`, by distribution (transitive)."""
    import importlib.metadata as md

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    seen: dict[str, int] = {}
    stack: list[tuple[str, tuple[str, ...]]] = [("neuroseg", extras)]
    while stack:
        name, wanted = stack.pop()
        key = _key(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if key in seen and not wanted:
            continue
        if key not in seen:
            size = 0
            if key != "neuroseg":  # the project itself: its source tree, not a wheel
                for f in dist.files or []:
                    try:
                        size += os.path.getsize(dist.locate_file(f))
                    except OSError:
                        pass
            seen[key] = size
        for text in dist.requires or []:
            req = Requirement(text)
            env = default_environment()
            for extra in ("", *wanted):
                env["extra"] = extra
                if req.marker is None or req.marker.evaluate(env):
                    sub = tuple(req.extras)
                    if _key(req.name) not in seen or sub:
                        stack.append((req.name, sub))
                    break
    return seen


def environment_sizes(top: int = 8) -> dict:
    """Installed megabytes of ``neuroseg[serve]`` (a nightly worker) and ``neuroseg[all]``.

    Returns
    -------
    dict
        Per set-up (``serve``, ``all``): ``megabytes``, ``distributions`` and the `top`
        largest as ``[name, MB]``; ``tensorflow_in_serve`` (must be False).
    """
    out = {}
    for label, extras in (("serve", ("serve",)), ("all", ("all",))):
        sizes = _closure(extras)
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:top]
        out[label] = {
            "megabytes": round(sum(sizes.values()) / 2**20, 1),
            "distributions": len(sizes),
            "largest": [[k, round(v / 2**20, 1)] for k, v in largest],
        }
        if label == "serve":
            out["tensorflow_in_serve"] = any(k.startswith("tensorflow") for k in sizes)
    return out


def same_cells(model_uri: str, images: list[str], *, iou: float = 0.99) -> dict:
    """Do the tf and onnx backends give the same cells on these images?

    Each image is segmented with both backends (the model's own TTA and post-processing); the
    objects are matched one-to-one at IoU >= `iou` (:func:`neuroseg.metrics.match_by_iou`).

    Returns
    -------
    dict
        ``images`` (per image: ``image``, ``tf_objects``, ``onnx_objects``, ``matched``,
        ``identical`` (same label image to the pixel), ``max_prob_diff``), and the totals
        ``tf_objects``, ``onnx_objects``, ``matched``, ``unmatched`` and ``identical_images``.
    """
    from neuroseg.images import read_native
    from neuroseg.metrics import match_by_iou
    from neuroseg.predict import postprocess, predict_image
    from neuroseg.registry import load_model

    bundles = {b: load_model(model_uri, backend=b) for b in ("tf", "onnx")}
    rows = []
    for uri in images:
        image = read_native(uri)
        probs = {b: predict_image(bundle, image) for b, bundle in bundles.items()}
        labels = {b: postprocess(bundles[b].config, probs[b], image=image)[0] for b in bundles}
        match = match_by_iou(labels["tf"], labels["onnx"], iou=iou)
        rows.append(
            {
                "image": os.path.basename(str(uri)),
                "tf_objects": len(_ids(labels["tf"])),
                "onnx_objects": len(_ids(labels["onnx"])),
                "matched": int(match["tp"]),
                "identical": bool((labels["tf"] == labels["onnx"]).all()),
                "max_prob_diff": float(abs(probs["tf"] - probs["onnx"]).max()),
            }
        )
    total = {k: sum(r[k] for r in rows) for k in ("tf_objects", "onnx_objects", "matched")}
    return {
        "model": str(model_uri),
        "iou": iou,
        "images": rows,
        **total,
        "unmatched": total["tf_objects"] + total["onnx_objects"] - 2 * total["matched"],
        "identical_images": sum(r["identical"] for r in rows),
    }


def _ids(labels) -> list[int]:
    import numpy as np

    ids = np.unique(labels)
    return [int(i) for i in ids if i != 0]
