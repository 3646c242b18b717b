"""Prefect tasks of the evaluation flow (thin wrappers of ``neuroseg.evaluation``)."""

from __future__ import annotations

from prefect import task

from neuroseg import evaluation as lib
from neuroseg import storage
from neuroseg.images import read_labels, read_mask, read_native
from tasks.common import IO_RETRIES
from tasks.infer import get_bundle

BASELINE_MIN_AREA = 100


def _otsu_rgb(image):
    """The Otsu baseline's input: an 8-bit RGB view of any decoded image."""
    from neuroseg.normalize import select_channels, to_uint8

    return select_channels(to_uint8(image), channels="rgb")


def _segmenter(spec: dict, threshold: float, min_area: int, watershed: bool, channel=None):
    """``image -> (prob, labels or None)`` for a model, the Otsu or the classical baseline.

    ``labels`` None means "segment ``prob`` with the evaluation's threshold" (Otsu).
    """
    if spec["kind"] == "baseline":
        from neuroseg.baseline import otsu_probability

        return lambda image: (otsu_probability(_otsu_rgb(image)), None)
    if spec["kind"] == "classical":
        from neuroseg.baseline import classical_segment

        params = dict(spec.get("params") or {})

        def classical(image):
            labels, _ = classical_segment(image, channel=channel, **params)
            return (labels > 0).astype("float32"), labels

        return classical
    from neuroseg.predict import segment_image

    bundle = get_bundle(spec["uri"], "fp32", spec.get("tta"), spec.get("backend", "auto"))

    def model(image):
        labels, _, prob = segment_image(
            bundle,
            image,
            channel=channel,
            threshold=threshold,
            min_area=min_area,
            watershed=watershed or None,
        )
        return prob, labels

    return model


def read_truth(sample: dict):
    """``(true_mask or None, true_labels or None)`` of a sample: labels win where present."""
    if sample.get("labels_uri"):
        return None, read_labels(sample["labels_uri"])
    return read_mask(sample["mask_uri"]), None


def _optional(value) -> str | None:
    return value if isinstance(value, str) and value else None


@task(name="list-eval-images", **IO_RETRIES)
def list_samples(root: str, dataset: str, split: str, images: str | None) -> list[dict]:
    """Annotated images to score: a prepared split of a dataset, or a folder with ``images/``
    and ``masks/`` and/or ``labels/`` (instance label images)."""
    if images:
        from neuroseg.datasets import find_fnc_samples

        found = [s for s in find_fnc_samples(images) if s.mask_uri or s.labels_uri]
        if not found:
            raise ValueError(
                f"{images}: no annotated images (images/ with masks/ or labels/) found"
            )
        return [
            {
                "image_id": s.name.rsplit(".", 1)[0],
                "image_uri": s.image_uri,
                "mask_uri": s.mask_uri,
                "labels_uri": s.labels_uri,
            }
            for s in found
        ]
    latest = storage.join(root, "prepared", dataset, "latest.json")
    if not storage.exists(latest):
        raise ValueError(f"dataset {dataset!r} is not prepared under {root}")
    prepared = storage.read_json(latest)["uri"]
    splits = storage.read_json(storage.join(prepared, "splits.json"))
    if split == "all":
        ids = sorted(i for part in splits.values() for i in part)
    elif split not in splits:
        raise ValueError(f"unknown split {split!r}; choose train, val, test or all")
    else:
        ids = splits[split]
    if not ids:
        raise ValueError(f"split {split!r} of {dataset!r} is empty (too few images)")
    out = []
    for image_id in ids:
        rec = storage.read_json(
            storage.join(root, "manifests", "datasets", dataset, f"{image_id}.json")
        )
        out.append(
            {
                "image_id": image_id,
                "image_uri": rec["image_uri"],
                "mask_uri": _optional(rec.get("mask_uri")),
                "labels_uri": _optional(rec.get("labels_uri")),
            }
        )
    return out


@task(name="sweep-threshold", **IO_RETRIES)
def sweep(
    model_uri: str,
    samples: list[dict],
    radius: float,
    tta: str | None = None,
    backend: str = "auto",
) -> dict:
    """Probability threshold and minimum area maximising object F1 on validation images."""
    from neuroseg.metrics import threshold_sweep
    from neuroseg.predict import predict_image

    bundle = get_bundle(model_uri, "fp32", tta, backend)
    probs, masks = [], []
    for s in samples:
        probs.append(predict_image(bundle, read_native(s["image_uri"])))
        mask, labels = read_truth(s)
        masks.append(mask if labels is None else labels > 0)
    res = threshold_sweep(probs, masks, radius=radius)
    return {k: res[k] for k in ("best_threshold", "best_min_area", "best_f1", "best_count_mae")}


@task(name="sweep-postprocessing", **IO_RETRIES)
def sweep_instances(
    model_uri: str, samples: list[dict], tta: str | None = None, backend: str = "auto"
) -> dict:
    """Post-processing of a three-class model chosen on validation images (mean AP 0.5:0.95),
    for its predictions under test-time augmentation ``tta`` (None: the model's own)."""
    from neuroseg.instances import sweep_postprocessing
    from neuroseg.masks import label_mask
    from neuroseg.predict import predict_image

    bundle = get_bundle(model_uri, "fp32", tta, backend)
    probs, truths = [], []
    for s in samples:
        probs.append(predict_image(bundle, read_native(s["image_uri"])))
        mask, labels = read_truth(s)
        truths.append(labels if labels is not None else label_mask(mask)[0])
    res = sweep_postprocessing(probs, truths)
    sc = res["scores"]
    return {
        "params": res["params"],
        "images": len(samples),
        "val_mean_ap": sc["mean_ap"],
        "val_f1_50": sc["f1_50"],
        "val_count_mae": sc["count_mae"],
    }


@task(name="tune-classical", **IO_RETRIES)
def tune_classical(samples: list[dict]) -> dict:
    """Parameters of the classical nuclei baseline chosen on validation images with labels."""
    from neuroseg.baseline import tune_classical as tune

    pairs = []
    for s in samples:
        mask, labels = read_truth(s)
        if labels is None:
            from neuroseg.masks import label_mask

            labels, _ = label_mask(mask)
        pairs.append((read_native(s["image_uri"]), labels))
    res = tune(pairs)
    return {"params": res["params"], "val_mean_ap": res["scores"]["mean_ap"]}


@task(name="evaluate-image", task_run_name="evaluate-{who}-{sample[image_id]}", **IO_RETRIES)
def evaluate_image(
    who: str,
    spec: dict,
    sample: dict,
    threshold: float,
    min_area: int,
    watershed: bool,
    radius: float,
    overlay_uri: str | None,
) -> dict:
    """Predict and score one image; optionally write its outline overlay PNG."""
    import time

    from neuroseg.predict import segment

    image = read_native(sample["image_uri"])
    mask, true_labels = read_truth(sample)
    start = time.perf_counter()
    prob, pred = _segmenter(spec, threshold, min_area, watershed)(image)
    seconds = time.perf_counter() - start
    if pred is None:
        pred, _ = segment(prob, threshold=threshold, min_area=min_area, watershed=watershed)
    result = lib.score_prediction(
        sample["image_id"],
        prob,
        mask,
        threshold=threshold,
        min_area=min_area,
        watershed=watershed,
        radius=radius,
        true_labels=true_labels,
        pred_labels=pred,
    )
    result["predict_seconds"] = seconds
    if overlay_uri:
        from neuroseg.masks import label_mask
        from neuroseg.plots import overlay_png

        true = true_labels if true_labels is not None else label_mask(mask)[0]
        storage.write_bytes(overlay_uri, overlay_png(_otsu_rgb(image), true, pred))
    return result
