"""Prefect tasks of the adapt flow (thin wrappers of ``neuroseg.adapt`` and friends)."""

from __future__ import annotations

from prefect import task

from neuroseg import adapt as lib
from neuroseg import storage
from tasks.common import IO_RETRIES


@task(name="prepare-correction", task_run_name="prepare-correction-{image_id}", **IO_RETRIES)
def prepare_correction(
    out_uri: str,
    image_id: str,
    image_uri: str,
    mask_uri: str | None,
    labels_uri: str | None,
    tile: int,
    min_overlap: int,
    input: dict | None,
    channel: int | None,
) -> dict:
    """Tile one corrected image as the parent's data was tiled; a correction that cannot be
    used is reported (``status`` "failed" with the reason), the others go on."""
    from neuroseg.prepare import prepare_image

    try:
        meta = prepare_image(
            out_uri,
            image_id,
            image_uri,
            mask_uri,
            tile=tile,
            min_overlap=min_overlap,
            labels_uri=labels_uri,
            input=input,
            channel=channel,
        )
    except ValueError as exc:  # undecodable or mismatched files: the message names the file
        return {"image_id": image_id, "status": "failed", "reason": " ".join(str(exc).split())}
    return {**meta, "status": "prepared"}


@task(name="mix-training-set", task_run_name="mix-{name}", **IO_RETRIES)
def mix_training_set(
    out_uri: str,
    name: str,
    corrections: list[dict],
    corrections_uri: str,
    replay_uri: str | None,
    replay_share: float,
    replay_tiles: int,
    seed: int,
    params: dict,
) -> dict:
    """The corrected tiles mixed with replayed ones (:func:`neuroseg.adapt.build_mix`)."""
    summary = lib.build_mix(
        out_uri,
        corrections=corrections,
        corrections_uri=corrections_uri,
        replay_uri=replay_uri,
        replay_share=replay_share,
        replay_tiles=replay_tiles,
        seed=seed,
        params=params,
    )
    return {**summary, "uri": out_uri}


@task(name="register-fine-tuned", **IO_RETRIES)
def register_fine_tuned(
    root: str, name: str, checkpoint_uri: str, config: dict, lineage: dict
) -> dict:
    """Register a fine-tuned checkpoint (``models/<name>/<version>/`` under `root`)."""
    from neuroseg.registry import register_model

    uri = register_model(root, name, model_file_uri=checkpoint_uri, config=config, lineage=lineage)
    return {"uri": uri, "version": uri.rstrip("/").rsplit("/", 1)[-1]}


@task(name="score-model", task_run_name="score-{label}", **IO_RETRIES)
def score_model(label: str, model_uri: str, samples: list[dict], radius: float) -> list[dict]:
    """Segment annotated images with a model; one :func:`neuroseg.adapt.score_objects` row per
    image (the model is loaded here, not cached: fold models are used once)."""
    from neuroseg.images import read_native
    from neuroseg.masks import label_mask
    from neuroseg.predict import segment_image
    from neuroseg.registry import load_model
    from tasks.evaluate import read_truth

    if not samples:
        return []
    bundle = load_model(model_uri)
    rows = []
    for s in samples:
        mask, truth = read_truth(s)
        if truth is None:
            truth, _ = label_mask(mask)
        labels, _, _ = segment_image(bundle, read_native(s["image_uri"]))
        rows.append(lib.score_objects(s["image_id"], truth, labels, radius=radius))
    return rows


@task(name="read-corrections", **IO_RETRIES)
def read_corrections(root: str, dataset: str) -> list[dict]:
    """The manifest records of a set of ingested corrections (``manifests/corrections/<name>``)."""
    from neuroseg.ingest import read_manifest

    df = read_manifest(root, "corrections", dataset)
    if df.empty:
        raise ValueError(
            f"no corrections named {dataset!r} under {root}: export images with `neuroseg "
            f"review PLATE --out DIR`, correct them, then `neuroseg ingest DIR --dataset {dataset}`"
        )
    return storage.to_jsonable(df.to_dict("records"))
