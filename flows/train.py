"""Phased training on the GPU pool: each phase a task, a checkpoint after each phase.

A retried or resumed run (same ``run_id``, or a Prefect retry of the same flow run) continues
after the last finished phase. The parameters are pydantic models, so the Prefect UI shows a
form for "retrain": dropdowns for preset, architecture, loss and precision (each defaulting to
"preset", the preset's own value, which the field's description spells out), numbers that
override every phase, and the phases themselves as typed objects.
"""

from __future__ import annotations

import json
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, Field, field_validator, model_validator

from neuroseg import storage
from neuroseg.training import PRESETS, PhaseConfig, TrainConfig, get_preset, prepared_input
from tasks.common import artifact_key
from tasks.train import register, resolve_prepared, train_phase

FROM_PRESET = "preset"
"""The choice that keeps the preset's own value (the default of every dropdown)."""


def _per_preset(describe) -> str:
    return "; ".join(f"{name}: {describe(cfg)}" for name, cfg in PRESETS.items())


def _phases_text(cfg: TrainConfig) -> str:
    return ", ".join(
        f"{ph.name} {ph.epochs} ep lr {ph.learning_rate:g} batch {ph.batch_size} "
        f"{ph.tile_filter}{' +shapes' if ph.shapes else ''}{' +affine' if ph.affine else ''}"
        for ph in cfg.phases
    )


class TrainParams(BaseModel):
    """What to train on and how. Every choice left at "preset" (or empty) keeps the preset's
    value; the descriptions list what each preset uses."""

    root: str = Field("./neuroseg-data", description="storage root of the system")
    dataset: str = Field("synthetic", description="prepared dataset to train on")
    preset: Literal["seed", "cpu-small", "tiny", "nuclei", "fnc"] = Field(
        "cpu-small",
        description="seed = the notebook exactly (shallow CNN, batch 50); cpu-small = a small "
        "U-Net in minutes on a CPU; tiny = seconds, for tests; nuclei = the instance-aware "
        "three-class U-Net for grey nuclei (about 45 min on 2 CPU cores); fnc = the U-Net of "
        "the shipped FNC model, grey input (prepare with channels grey, percentile)",
    )
    model: Literal["preset", "shallow", "unet"] = Field(
        FROM_PRESET,
        description="architecture; preset = "
        + _per_preset(lambda c: f"{c.model}" + (f" width {c.width}" if c.width else "")),
    )
    loss: Literal[
        "preset",
        "weighted_bce",
        "dice",
        "jaccard",
        "focal",
        "tversky",
        "bce_dice",
        "weighted_cce",
        "cce_dice",
    ] = Field(
        FROM_PRESET,
        description="loss (weighted_cce and cce_dice: three-class presets only); preset = "
        + _per_preset(lambda c: c.loss),
    )
    precision: Literal["preset", "fp32", "bf16"] = Field(
        FROM_PRESET,
        description="bf16 = bfloat16 mixed precision (recent GPUs and CPUs); preset = "
        + _per_preset(lambda c: "bf16" if c.mixed_precision else "fp32"),
    )
    epochs: int | None = Field(
        None,
        ge=1,
        description="epochs of every phase; empty = preset: "
        + _per_preset(lambda c: "/".join(str(ph.epochs) for ph in c.phases)),
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="learning rate of every phase; empty = preset: "
        + _per_preset(lambda c: "/".join(f"{ph.learning_rate:g}" for ph in c.phases)),
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="batch size of every phase; empty = preset: "
        + _per_preset(lambda c: "/".join(str(ph.batch_size) for ph in c.phases)),
    )
    phases: list[PhaseConfig] = Field(
        default_factory=list,
        description="replace the phases entirely; empty = the preset's: "
        + _per_preset(_phases_text),
    )
    crop: int | None = Field(
        None,
        ge=16,
        description="random training crop (U-Net only); empty = preset: "
        + _per_preset(lambda c: str(c.crop) if c.crop else "whole tiles"),
    )
    centre: bool | None = Field(
        None,
        description="three-class U-Nets: also learn a centre map (each nucleus' normalised "
        "distance to its outline) whose cores may seed the watershed; empty = preset: "
        + _per_preset(lambda c: "yes" if c.centre else "no"),
    )
    centre_weight: float | None = Field(
        None,
        ge=0,
        description="weight of the centre map's cross-entropy in the loss (with centre); "
        "empty = the loss's (1)",
    )
    separation_weight: float | None = Field(
        None,
        ge=0,
        description="three-class losses: extra weight of the cross-entropy on the pixels "
        "between close objects (the contact lines and narrow gaps where merges happen; "
        "the pixel counts 1 + this); empty = the preset's (nuclei 10, the others 0)",
    )
    small_object_area: int | None = Field(
        None,
        ge=0,
        description="with separation_weight: objects under this many pixels (micronuclei) and "
        "a 1-pixel ring around them weigh like the pixels between close objects; 0 = none; "
        "empty = the preset's",
    )
    width: int | None = Field(
        None,
        ge=1,
        le=256,
        description="U-Nets: filters of the first level (doubling per level); empty = preset: "
        + _per_preset(lambda c: str(c.width) if c.model == "unet" and c.width else "default"),
    )
    depth: int | None = Field(
        None,
        ge=1,
        le=6,
        description="U-Nets: number of poolings; empty = preset: "
        + _per_preset(lambda c: str(c.depth) if c.model == "unet" else "-"),
    )
    space_to_depth: bool | None = Field(
        None,
        description="U-Nets: a space-to-depth stem (the network runs at half resolution and "
        "predicts each 2x2 block's pixels; about 0.6 of the inference time); empty = preset: "
        + _per_preset(lambda c: "yes" if c.space_to_depth else "no"),
    )
    seed: int | None = Field(None, description="random seed; empty = the preset's (0)")
    model_name: str = Field("neuroseg", description="name in the model registry")
    init_model: str | None = Field(
        None,
        description="fine-tune: start from this model's weights (NAME, NAME@VERSION, a folder, "
        "or a shipped name such as fnc) with a fresh optimizer; its architecture, head and "
        "input must match the preset's and the prepared data's",
    )
    run_id: str | None = Field(None, description="resume this run (default: the flow run id)")
    evaluate: bool = Field(True, description="evaluate on the test split after training")
    promote: bool = Field(True, description="promote if it beats the production model")

    @field_validator("model", "loss", "precision", mode="before")
    @classmethod
    def _none_is_preset(cls, value):
        return FROM_PRESET if value is None else value

    @field_validator("phases", mode="before")
    @classmethod
    def _no_phases_is_preset(cls, value):
        return [] if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _legacy_mixed_precision(cls, data):
        """``mixed_precision=True/False`` (the former field) still means bf16 / fp32."""
        if isinstance(data, dict) and "mixed_precision" in data:
            data = dict(data)
            mixed = data.pop("mixed_precision")
            if mixed is not None and data.get("precision") in (None, FROM_PRESET):
                data["precision"] = "bf16" if mixed else "fp32"
        return data


def build_config(p: TrainParams) -> TrainConfig:
    """The preset with the user's overrides applied (validated)."""
    preset = get_preset(p.preset)
    over: dict = {}
    if p.model != FROM_PRESET and p.model != preset.model:
        over["model"] = p.model
        over["width"] = None  # the preset's width belongs to its own architecture
        if p.model == "shallow":
            over["crop"] = None  # the seed CNN needs whole 400x400 tiles
    if p.loss != FROM_PRESET:
        over["loss"] = p.loss
    if p.precision != FROM_PRESET:
        over["mixed_precision"] = p.precision == "bf16"
    for key in ("crop", "seed", "centre", "width", "depth", "space_to_depth", "small_object_area"):
        if getattr(p, key) is not None:
            over[key] = getattr(p, key)
    for key in ("centre_weight", "separation_weight"):
        if getattr(p, key) is not None:
            loss_params = over.get("loss_params", preset.loss_params)
            over["loss_params"] = {**loss_params, key: getattr(p, key)}
    phases = [ph.model_dump() for ph in (p.phases or preset.phases)]
    for ph in phases:
        for key in ("epochs", "learning_rate", "batch_size"):
            if getattr(p, key) is not None:
                ph[key] = getattr(p, key)
    over["phases"] = phases
    return get_preset(p.preset, **over)


@flow(name="train", flow_run_name="train-{params.dataset}-{params.preset}", log_prints=True)
def train(params: TrainParams) -> dict:
    """Train a segmentation model in phases, register it, optionally evaluate and promote."""
    logger = get_run_logger()
    prepared = resolve_prepared(params.root, params.dataset)
    config = build_config(params)
    run_id = params.run_id or f"run-{flow_run.id}"
    work = storage.join(params.root, "training", run_id)
    cfg_uri = storage.join(work, "config.json")
    cfg = json.loads(config.model_dump_json())
    if storage.exists(cfg_uri):
        saved = storage.read_json(cfg_uri)
        if saved["config"] != cfg or saved["prepared"]["uri"] != prepared["uri"]:
            raise ValueError(f"run {run_id} was started with another configuration or dataset")
        logger.info("resuming run %s", run_id)
    else:
        storage.write_json(
            cfg_uri, {"config": cfg, "prepared": prepared, "params": params.model_dump()}
        )
    print(f"training run {run_id} (resume with --run-id {run_id})")
    total = sum(ph.epochs for ph in config.phases)
    progress_id = str(
        create_progress_artifact(
            0.0,
            key=artifact_key("train", params.model_name, "progress"),
            description=f"Training progress of run {run_id}",
        )
    )
    init = _init_model(params.root, params.init_model, cfg, prepared) if params.init_model else None
    if init:
        print(f"starting from the weights of {init['model']} ({init['uri']})")
    records, previous, epochs_before = [], (init or {}).get("checkpoint_uri"), 0
    for i, phase in enumerate(config.phases):
        done_uri = storage.join(work, f"phase-{i}.json")
        if storage.exists(done_uri):
            rec = storage.read_json(done_uri)
            logger.info("phase %s already finished in an earlier attempt: skipped", phase.name)
        else:
            rec = train_phase(
                prepared["uri"], cfg, i, previous, work, progress_id, epochs_before, total
            )
        records.append(rec)
        previous = rec["checkpoint_uri"]
        epochs_before += phase.epochs
    _publish_history(params.model_name, records)
    device = records[-1].get("device") or "unknown"
    lineage = {
        "dataset": params.dataset,
        "prepared_uri": prepared["uri"],
        "prepared_version": prepared["version"],
        "run_id": run_id,
        "flow_run_id": str(flow_run.id),
        "device": device,
        "seconds": round(sum(r["seconds"] for r in records), 1),
        "history": {r["phase"]: r["history"] for r in records},
    }
    if init:
        lineage["init_model"] = {k: init[k] for k in ("model", "uri")}
    reg = register(params.root, params.model_name, previous, cfg, lineage)
    result = {
        "model_uri": reg["uri"],
        "version": reg["version"],
        "device": device,
        "run_id": run_id,
    }
    if params.evaluate:
        from flows.evaluate import EvaluateParams, evaluate

        ev = evaluate(
            EvaluateParams(
                root=params.root,
                dataset=params.dataset,
                model=f"{params.model_name}@{reg['version']}",
                promote=params.promote,
            )
        )
        result["evaluation"] = {**ev["key_figures"], "promoted": ev["promoted"]}
    return result


def _init_model(root: str, spec: str, cfg: dict, prepared: dict) -> dict:
    """The model a fine-tuning run starts from, checked against the run's config and data."""
    from neuroseg.normalize import input_spec
    from neuroseg.registry import resolve_model_uri

    uri = resolve_model_uri(root, spec)
    mcfg = storage.read_json(storage.join(uri, "config.json"))
    train = mcfg.get("train") or {}
    network = {
        k: train[k] for k in ("model", "width", "depth", "target", "batch_norm") if k in train
    }
    # absent before centre maps and the space-to-depth stem existed
    network["centre"] = bool(train.get("centre", False))
    network["space_to_depth"] = bool(train.get("space_to_depth", False))
    for key, value in network.items():
        if value != cfg[key]:
            raise ValueError(
                f"init_model {spec!r} ({uri}) has {key} {value!r}, the run wants "
                f"{cfg[key]!r}: pick a preset or overrides with the same network"
            )
    # the scale may differ: fine-tuning may adapt a model to another pixel size
    data_input = input_spec(prepared_input(prepared["uri"]) or None, scale=1.0)
    if input_spec(mcfg.get("input"), scale=1.0) != data_input:
        raise ValueError(
            f"init_model {spec!r} reads input {dict(input_spec(mcfg.get('input')))}, the "
            f"prepared data holds {dict(data_input)}: prepare it with the same channels and "
            "normalization"
        )
    return {
        "model": f"{mcfg.get('name')}@{mcfg.get('version')}",
        "uri": uri,
        "checkpoint_uri": storage.join(uri, "model.keras"),
    }


def _publish_history(name: str, records: list[dict]) -> None:
    rows = []
    for rec in records:
        hist = rec["history"]
        n = len(next(iter(hist.values()), []))
        for e in range(n):
            rows.append(
                {
                    "phase": rec["phase"],
                    "epoch": e + 1,
                    **{k: round(float(v[e]), 5) for k, v in hist.items()},
                }
            )
    if rows:
        create_table_artifact(
            key=artifact_key("train", name, "history"),
            table=rows,
            description="Loss and cell-class precision/recall per epoch",
        )
