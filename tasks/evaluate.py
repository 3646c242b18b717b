"""Prefect tasks of the evaluation flow (thin wrappers of ``neuroseg.evaluation``)."""

from __future__ import annotations

from prefect import task

from neuroseg import evaluation as lib
from neuroseg import storage
from neuroseg.images import read_image, read_mask
from tasks.common import IO_RETRIES
from tasks.infer import get_bundle

BASELINE_MIN_AREA = 100


def _predictor(spec: dict):
    """``image -> probability map`` for a model URI or the classical baseline."""
    if spec["kind"] == "baseline":
        from neuroseg.baseline import otsu_probability

        return otsu_probability
    from neuroseg.predict import predict_image

    bundle = get_bundle(spec["uri"])
    return lambda image: predict_image(bundle, image)


@task(name="list-eval-images", **IO_RETRIES)
def list_samples(root: str, dataset: str, split: str, images: str | None) -> list[dict]:
    """Images with masks to score: a prepared split of a dataset, or an FNC-layout folder."""
    if images:
        from neuroseg.datasets import find_fnc_samples

        found = [s for s in find_fnc_samples(images) if s.mask_uri]
        if not found:
            raise ValueError(f"{images}: no image/mask pairs (images/ and masks/) found")
        return [
            {"image_id": s.name.rsplit(".", 1)[0], "image_uri": s.image_uri, "mask_uri": s.mask_uri}
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
            {"image_id": image_id, "image_uri": rec["image_uri"], "mask_uri": rec["mask_uri"]}
        )
    return out


@task(name="sweep-threshold", **IO_RETRIES)
def sweep(model_uri: str, samples: list[dict], radius: float) -> dict:
    """Probability threshold and minimum area maximising object F1 on validation images."""
    from neuroseg.metrics import threshold_sweep

    predict = _predictor({"kind": "model", "uri": model_uri})
    probs, masks = [], []
    for s in samples:
        probs.append(predict(read_image(s["image_uri"])))
        masks.append(read_mask(s["mask_uri"]))
    res = threshold_sweep(probs, masks, radius=radius)
    return {k: res[k] for k in ("best_threshold", "best_min_area", "best_f1", "best_count_mae")}


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
    image = read_image(sample["image_uri"])
    mask = read_mask(sample["mask_uri"])
    predict, kept = _predictor(spec), {}

    def predict_and_keep(img):  # the overlay reuses the probability map: no second prediction
        kept["prob"] = predict(img)
        return kept["prob"]

    result = lib.evaluate_one(
        sample["image_id"],
        image,
        mask,
        predict_and_keep,
        threshold=threshold,
        min_area=min_area,
        watershed=watershed,
        radius=radius,
    )
    if overlay_uri:
        from neuroseg.masks import label_mask
        from neuroseg.plots import overlay_png
        from neuroseg.predict import segment

        pred, _ = segment(kept["prob"], threshold=threshold, min_area=min_area, watershed=watershed)
        true, _ = label_mask(mask)
        storage.write_bytes(overlay_uri, overlay_png(image, true, pred))
    return result
