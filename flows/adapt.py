"""Adapt: fine-tune the serving model on a lab's corrections, and promote it only if it is better.

Started from the UI (the ``adapt`` deployment's form) or by the ``neuroseg.corrections.ingested``
event that ingesting a corrected review folder emits (the deployment's trigger, prefect.yaml).

1. The parent is the model the nightly run serves under ``model`` (its production version, else
   the shipped model of that name or the default); the corrections are the manifest records of
   ``corrections/<name>/`` (bad ones were quarantined at ingestion).
2. The corrected images are tiled as the parent's training data was (its tile, input and
   channel), and mixed with a replay of that data's training tiles (``replay_share`` of the
   tiles), so that the model does not forget what it knew.
3. Fold models (leave-one-out under 5 corrected images, else 5 folds) fine-tune the parent on
   the other corrected images and segment the held-out ones: the candidate's score on the lab's
   images, each segmented by a model that did not train on it, beside the parent's on the same
   images. One corrected image cannot be scored this way: the candidate is then not promoted.
4. The candidate fine-tunes on every corrected image and is registered under ``model`` with its
   lineage (the parent, the corrections' hashes, the replayed data); parent and candidate are
   scored on the reference validation set (the parent data's ``val`` split, less any image
   that is also a correction).
5. It is promoted (production.json) only when its lab score is above the parent's and its
   reference score at most ``tolerance`` below; otherwise production stays, and the decision
   artifact says why. The next nightly run serves whatever production names.
"""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from neuroseg import adapt as lib
from neuroseg import storage
from tasks.adapt import (
    mix_training_set,
    prepare_correction,
    read_corrections,
    register_fine_tuned,
    score_model,
)
from tasks.common import artifact_key
from tasks.infer import resolve_model
from tasks.train import train_phase


class AdaptParams(BaseModel):
    """Which corrections adapt which model, how long it fine-tunes, and the promotion rule."""

    root: str = Field("./neuroseg-data", description="storage root of the system")
    corrections: str = Field(
        ...,
        description="the ingested corrections (corrections/<name>/: `neuroseg ingest DIR "
        "--dataset NAME` of a folder written by `neuroseg review`)",
    )
    model: str = Field(
        "neuroseg",
        description="the registry name the nightly run serves: its production model (else the "
        "shipped one) is fine-tuned, and the candidate is registered and promoted under it",
    )
    reference_dataset: str | None = Field(
        None,
        description="a dataset prepared under the root that stands for the model's training "
        "data: its train split is replayed, its val split is the reference set; empty = the "
        "prepared data the model's lineage names",
    )
    metric: Literal["f1_iou50", "f1_centroid"] = Field(
        "f1_iou50",
        description="the score of the rule: F1 of objects matched at IoU >= 0.5, or by "
        "centroids within 40 px (the FNC v2 rule, for large neurons)",
    )
    tolerance: float = Field(
        0.02,
        ge=0,
        le=1,
        description="how much lower than production's the candidate's reference score may be",
    )
    min_gain: float = Field(
        0.0, ge=0, le=1, description="how much higher than production's its lab score must be"
    )
    epochs: int = Field(4, ge=1, le=100, description="fine-tuning epochs")
    steps_per_epoch: int = Field(40, ge=1, le=10_000, description="batches per epoch")
    learning_rate: float = Field(3e-4, gt=0, le=1, description="Adam learning rate")
    batch_size: int | None = Field(
        None, ge=1, le=256, description="empty = the parent's last phase's"
    )
    crop: int | None = Field(
        None, ge=16, le=4096, description="random training crop; empty = the parent's"
    )
    replay_share: float = Field(
        0.5, ge=0, lt=1, description="share of the training tiles replayed from the parent's data"
    )
    replay_tiles: int = Field(
        64, ge=0, le=100_000, description="replayed tiles at least (drawn at random, seeded)"
    )
    max_reference_images: int | None = Field(
        100, ge=1, description="score on at most this many reference images (evenly spaced)"
    )
    radius: float = Field(40.0, gt=0, description="centroid matching radius (px)")
    seed: int = Field(0, description="seed of the replay draw, shuffling and augmentation")
    promote: bool = Field(True, description="promote the candidate when the rule says so")


@flow(name="adapt", flow_run_name="adapt-{params.model}-{params.corrections}", log_prints=True)
def adapt(params: AdaptParams) -> dict:
    """Fine-tune the serving model on corrections; promote it only when the rule holds."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    parent = resolve_model(params.root, params.model)
    parent_cfg = storage.read_json(storage.join(parent["uri"], "config.json"))
    lineage = parent_cfg.get("lineage") or {}
    records = read_corrections(params.root, params.corrections)
    ref = lib.reference_data(
        params.root,
        dataset=params.reference_dataset,
        lineage=lineage,
        max_images=params.max_reference_images,
    )
    # a corrected image that is also a reference image is left out of the reference set
    ref["samples"] = lib.without_images(ref["samples"], records)
    summary_params = storage.read_json(storage.join(ref["prepared_uri"], "summary.json"))["params"]
    train_cfg = lib.fine_tune_config(
        parent_cfg,
        epochs=params.epochs,
        steps_per_epoch=params.steps_per_epoch,
        learning_rate=params.learning_rate,
        batch_size=params.batch_size,
        crop=params.crop,
        seed=params.seed,
    )
    run_id = f"adapt-{flow_run.id}"
    work = storage.join(params.root, "adapt", run_id)
    logger.info(
        "adapting %s@%s (%s) to %d correction(s) of %r; replay and reference: %s (%d %s images)",
        parent["name"],
        parent["version"],
        parent["uri"],
        len(records),
        params.corrections,
        ref["prepared_uri"],
        len(ref["samples"]),
        ref["split"],
    )

    # tile the corrections as the parent's data was tiled; unusable ones are left out
    tiles_uri = storage.join(work, "corrections")
    futures = [
        prepare_correction.submit(
            tiles_uri,
            s["image_id"],
            s["image_uri"],
            s["mask_uri"],
            s["labels_uri"],
            int(summary_params.get("tile") or parent_cfg["tile"]),
            int(summary_params.get("min_overlap", 100)),
            summary_params.get("input") or parent_cfg.get("input"),
            summary_params.get("channel"),
        )
        for s in lib.correction_samples(records)
    ]
    prepared = [f.result() for f in futures]
    skipped = [p for p in prepared if p["status"] != "prepared"]
    for p in skipped:
        logger.warning("correction %s left out: %s", p["image_id"], p["reason"])
    metas = {p["image_id"]: p for p in prepared if p["status"] == "prepared"}
    used = [r for r in records if str(r["image_id"]) in metas]
    if not used:
        reasons = "; ".join(p["reason"] for p in skipped)
        raise ValueError(f"none of the {len(records)} correction(s) could be used: {reasons}")
    samples = {s["image_id"]: s for s in lib.correction_samples(used)}

    def fine_tune(name: str, ids: list[str]) -> str:
        mix = mix_training_set(
            storage.join(work, "mix", name),
            name,
            [metas[i] for i in ids],
            tiles_uri,
            ref["prepared_uri"] if params.replay_share > 0 else None,
            params.replay_share,
            params.replay_tiles,
            params.seed,
            summary_params,
        )
        rec = train_phase(
            mix["uri"],
            train_cfg,
            0,
            storage.join(parent["uri"], "model.keras"),
            storage.join(work, "training", name),
            None,
            0,
            params.epochs,
        )
        storage.delete(mix["uri"], recursive=True)  # copies of shards: the checkpoint stays
        logger.info(
            "%s: fine-tuned on %d corrected image(s) (%d tiles x %d) and %d replayed tiles in "
            "%.0f s",
            name,
            len(ids),
            mix["corrected_tiles"],
            mix["repeat"],
            mix["replayed_tiles"],
            rec["seconds"],
        )
        return rec["checkpoint_uri"]

    # the lab's images, each segmented by a fold model that did not train on it
    folds = lib.cross_folds(sorted(samples))
    fold_rows: list[dict] = []
    fold_root = storage.join(work, "folds")
    for f in folds:
        ckpt = fine_tune(f"fold-{f['fold']}", f["train"])
        fold_model = register_fine_tuned(
            fold_root,
            f"fold-{f['fold']}",
            ckpt,
            lib.candidate_config(parent_cfg, train_cfg),
            {"purpose": "adapt fold", "train": f["train"], "held_out": f["held_out"]},
        )
        fold_rows += score_model(
            f"fold-{f['fold']}",
            fold_model["uri"],
            [samples[i] for i in f["held_out"]],
            params.radius,
        )
    held = sorted(r["image_id"] for r in fold_rows)
    lab_parent_rows = score_model(
        "production-lab", parent["uri"], [samples[i] for i in held], params.radius
    )

    # the candidate: every corrected image
    ckpt = fine_tune("candidate", sorted(samples))
    candidate_lineage = {
        "adapted_from": {
            "model": f"{parent['name']}@{parent['version']}",
            "uri": parent["uri"],
        },
        "init_model": {"model": f"{parent['name']}@{parent['version']}", "uri": parent["uri"]},
        "corrections": {
            "dataset": params.corrections,
            "root": params.root,
            "images": lib.correction_hashes(used),
            "left_out": skipped,
        },
        "replay": {
            "prepared_uri": ref["prepared_uri"],
            "dataset": ref["dataset"],
            "share": params.replay_share,
        },
        "dataset": ref["dataset"],
        "prepared_uri": ref["prepared_uri"],
        "run_id": run_id,
        "flow_run_id": str(flow_run.id),
        "params": params.model_dump(),
    }
    cand = register_fine_tuned(
        params.root,
        params.model,
        ckpt,
        lib.candidate_config(parent_cfg, train_cfg),
        candidate_lineage,
    )
    ref_parent_rows = score_model(
        "production-reference", parent["uri"], ref["samples"], params.radius
    )
    ref_cand_rows = score_model("candidate-reference", cand["uri"], ref["samples"], params.radius)
    scores = {
        "lab_production": lib.pooled_scores(lab_parent_rows),
        "lab_candidate": lib.pooled_scores(fold_rows),
        "reference_production": lib.pooled_scores(ref_parent_rows),
        "reference_candidate": lib.pooled_scores(ref_cand_rows),
    }
    promote, reason = lib.decide(
        lab_parent=scores["lab_production"],
        lab_candidate=scores["lab_candidate"],
        ref_parent=scores["reference_production"],
        ref_candidate=scores["reference_candidate"],
        metric=params.metric,
        tolerance=params.tolerance,
        min_gain=params.min_gain,
    )
    promoted = False
    if promote and params.promote:
        from neuroseg.registry import set_production

        set_production(params.root, params.model, cand["version"], reason=reason, metrics=scores)
        promoted = True
    elif promote:
        reason = reason.replace("promoted:", "not promoted (promote is off), although", 1)
    result = {
        "model": params.model,
        "parent": f"{parent['name']}@{parent['version']}",
        "candidate": f"{params.model}@{cand['version']}",
        "candidate_uri": cand["uri"],
        "promoted": promoted,
        "reason": reason,
        "corrections": len(used),
        "left_out": skipped,
        "folds": len(folds),
        "scores": storage.to_jsonable(scores),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    storage.write_json(storage.join(work, "decision.json"), result)
    storage.write_json(
        storage.join(cand["uri"], "metrics.json"),
        {"adapt": result, "lab_rows": fold_rows, "reference_rows": ref_cand_rows},
    )
    _publish(params, result, fold_rows, lab_parent_rows)
    logger.info("%s (%.0f s)", reason, result["seconds"])
    return result


def _fmt(scores: dict | None, key: str) -> str:
    if not scores or scores.get(key) is None:
        return "n/a"
    return f"{scores[key]:.3f}" if isinstance(scores[key], float) else str(scores[key])


def _publish(params: AdaptParams, result: dict, fold_rows: list[dict], parent_rows: list[dict]):
    s = result["scores"]
    rows = [
        ("lab's corrected images (held out)", "lab_production", "lab_candidate"),
        ("reference validation set", "reference_production", "reference_candidate"),
    ]
    table = "| images | n | production F1 IoU 0.5 | candidate | production F1 centroid | " + (
        "candidate | production count MAE | candidate |\n|---|---|---|---|---|---|---|---|\n"
    )
    for label, p, c in rows:
        table += (
            f"| {label} | {_fmt(s[c], 'n_images')} | {_fmt(s[p], 'f1_iou50')} | "
            f"{_fmt(s[c], 'f1_iou50')} | {_fmt(s[p], 'f1_centroid')} | "
            f"{_fmt(s[c], 'f1_centroid')} | {_fmt(s[p], 'count_mae')} | "
            f"{_fmt(s[c], 'count_mae')} |\n"
        )
    left = "".join(f"\n- `{x['image_id']}`: {x['reason']}" for x in result["left_out"])
    create_markdown_artifact(
        key=artifact_key("adapt", params.model, "decision"),
        markdown=(
            f"# Adapt `{result['parent']}` to `{params.corrections}`\n\n"
            f"**{'Promoted' if result['promoted'] else 'Kept production'}**: {result['reason']}\n\n"
            f"Candidate `{result['candidate']}` ({result['candidate_uri']}), "
            f"{result['corrections']} corrected image(s), {result['folds']} fold model(s), "
            f"rule: {params.metric} above production's on the lab's images and at most "
            f"{params.tolerance:g} below on the reference set; {result['seconds']} s.\n\n"
            f"{table}" + (f"\nCorrections left out:{left}\n" if left else "")
        ),
        description="Adapt: candidate vs production on the lab's images and the reference set",
    )
    by_id = {r["image_id"]: r for r in parent_rows}
    create_table_artifact(
        key=artifact_key("adapt", params.model, "lab-images"),
        table=[
            {
                "image": r["image_id"],
                "cells": r["true"],
                "production found": by_id.get(r["image_id"], {}).get("pred"),
                "candidate found": r["pred"],
                "production F1 IoU 0.5": round(by_id.get(r["image_id"], {}).get("f1_iou50", 0), 3),
                "candidate F1 IoU 0.5": round(r["f1_iou50"], 3),
            }
            for r in fold_rows
        ]
        or [{"image": "", "cells": 0}],
        description="Each corrected image, segmented by production and by the fold model that "
        "did not train on it",
    )
