"""Prefect tasks of the nightly inference flow (thin wrappers of ``neuroseg.inference``)."""

from __future__ import annotations

import os
import threading

from prefect import task

from neuroseg import inference as lib
from neuroseg import storage
from tasks.common import IO_RETRIES

_BUNDLES: dict[tuple[str, str, str | None, str], object] = {}
_STATS: dict[tuple[str, str, str | None, str], dict[str, int]] = {}
_LOCK = threading.Lock()


def get_bundle(
    model_uri: str, precision: str = "fp32", tta: str | None = None, backend: str = "auto"
):
    """The model, loaded once per worker process (thread-safe), not once per image.

    ``tta`` (None: the model's own) and ``backend`` (``auto``: ONNX Runtime when the model has
    an ONNX export and it is installed, else TensorFlow) are
    :func:`neuroseg.registry.load_model`'s."""
    key = (model_uri, precision, tta, backend)
    with _LOCK:
        stats = _STATS.setdefault(key, {"loads": 0, "hits": 0})
        if key in _BUNDLES:
            stats["hits"] += 1
        else:
            from neuroseg.registry import load_model

            _BUNDLES[key] = load_model(model_uri, precision=precision, tta=tta, backend=backend)
            stats["loads"] += 1
        return _BUNDLES[key]


def cache_info() -> dict:
    """This process's model cache: its pid and, per model URI, precision, TTA and backend, how often
    :func:`get_bundle` loaded the model and how often it reused it. On a Dask cluster,
    ``client.run(cache_info)`` asks every worker process."""
    with _LOCK:
        return {
            "pid": os.getpid(),
            "models": [
                {"uri": u, "precision": p, "tta": t, "backend": b, **n}
                for (u, p, t, b), n in sorted(_STATS.items(), key=lambda kv: str(kv[0]))
            ],
        }


def forget_bundle(model_uri: str) -> None:
    """Drop cached bundles of a model whose config changed (e.g. a new threshold)."""
    with _LOCK:
        for key in [k for k in _BUNDLES if k[0] == model_uri]:
            del _BUNDLES[key]


@task(name="resolve-model", **IO_RETRIES)
def resolve_model(root: str, spec: str) -> dict:
    """Which model serves: a registry name (its production version, else the shipped model),
    ``NAME@VERSION``, a folder URI or ``default``."""
    from neuroseg.registry import resolve_model_uri

    uri = resolve_model_uri(root, spec)
    bundle = get_bundle(uri)
    in_registry = uri.rstrip("/").startswith(storage.join(root, "models").rstrip("/") + "/")
    return {"uri": uri, "name": bundle.name, "version": bundle.version, "writable": in_registry}


@task(name="find-pending", **IO_RETRIES)
def find_pending(
    root: str, uploads: str, model_version: str, plates: list[str] | None, reprocess: bool
) -> dict:
    pending, done = lib.find_pending(
        root, uploads, model_version=model_version, plates=plates, reprocess=reprocess
    )
    return {"pending": pending, "done": done}


@task(name="segment-image", task_run_name="segment-{item[plate_id]}-{item[image_id]}", **IO_RETRIES)
def segment_image(
    model_uri: str,
    precision: str,
    item: dict,
    root: str,
    cells: str,
    report_uri: str,
    flow_run_id: str | None,
    channel: int | None = None,
    tta: str | None = None,
    pixel_size_um: float | dict[str, float] | None = None,
    backend: str = "auto",
) -> dict:
    """Segment one upload and write its label image and cell records (or quarantine it)."""
    bundle = get_bundle(model_uri, precision, tta, backend)
    return lib.process_image(
        bundle,
        item,
        root=root,
        cells_uri=cells,
        report_uri=report_uri,
        flow_run_id=flow_run_id,
        channel=channel,
        pixel_size_um=pixel_size_um,
    )
