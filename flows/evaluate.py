"""Evaluation: pixel and object scores on stitched full-resolution masks, artifacts, promotion.

The model is scored on a dataset's test split (split by image) in parallel over images, next to
the current production model and a classical baseline (Otsu threshold + connected components)
on the same images. Artifacts with stable keys carry the classification report, the confusion
matrix (counts and row-normalised), per-image counts and a markdown comparison; plots are PNG
files under ``reports/``. A model is promoted only when it beats production's object F1 on the
same images, or when forced.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from neuroseg import evaluation as lib
from neuroseg import storage
from tasks.common import ExecutorConfig, artifact_key, make_task_runner
from tasks.evaluate import BASELINE_MIN_AREA, evaluate_image, list_samples, sweep
from tasks.infer import forget_bundle, resolve_model

N_OVERLAYS = 3


class EvaluateParams(BaseModel):
    """Which model to score on which images, and whether it may be promoted."""

    root: str = Field("./neuroseg-data", description="storage root of the system")
    dataset: str = Field("synthetic", description="prepared dataset whose split is scored")
    model: str = Field("neuroseg", description="NAME (production), NAME@VERSION, folder, default")
    split: Literal["test", "val", "all"] = "test"
    images: str | None = Field(None, description="FNC-layout folder to score instead")
    sweep: bool = Field(True, description="choose threshold/min area on the val split")
    watershed: bool = Field(False, description="split touching cells before matching")
    radius: float = Field(40.0, gt=0, description="centroid matching radius (px), FNC v2")
    promote: bool = Field(False, description="promote if it beats the production model")
    force: bool = Field(False, description="promote even if it does not")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)


def _score_all(jobs: list[tuple], samples: list[dict], radius: float) -> dict[str, list[dict]]:
    futures = {
        who: [
            evaluate_image.submit(who, spec, s, thr, area, ws, radius, ov)
            for s, ov in zip(samples, overlays, strict=True)
        ]
        for who, spec, thr, area, ws, overlays in jobs
    }
    return {who: [f.result() for f in futs] for who, futs in futures.items()}


@flow(name="evaluate", flow_run_name="evaluate-{params.model}", log_prints=True)
def evaluate(params: EvaluateParams) -> dict:
    """Score a model, publish artifacts and plots, and decide on promotion."""
    from neuroseg.registry import production_version, set_production

    logger = get_run_logger()
    model = resolve_model(params.root, params.model)
    samples = list_samples(params.root, params.dataset, params.split, params.images)
    cfg_uri = storage.join(model["uri"], "config.json")
    cfg = storage.read_json(cfg_uri)
    threshold, min_area = float(cfg.get("threshold", 0.5)), int(cfg.get("min_area", 0))
    chosen = None
    if params.sweep and not params.images:
        try:
            val = list_samples(params.root, params.dataset, "val", None)
        except ValueError:
            val = []
        if val:
            chosen = sweep(model["uri"], val, params.radius)
            threshold, min_area = chosen["best_threshold"], chosen["best_min_area"]
            logger.info(
                "threshold sweep on %d val image(s): threshold %.2f, min area %d "
                "(val object F1 %.3f)",
                len(val),
                threshold,
                min_area,
                chosen["best_f1"],
            )
            if model["writable"]:
                cfg.update(threshold=threshold, min_area=min_area, threshold_sweep=chosen)
                storage.write_json(cfg_uri, cfg)
                forget_bundle(model["uri"])  # later runs in this process see the new threshold
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    report = storage.join(params.root, "reports", f"eval-{model['name']}-{stamp}")
    overlays = [
        storage.join(report, f"overlay-{s['image_id']}.png") if i < N_OVERLAYS else None
        for i, s in enumerate(samples)
    ]
    jobs = [
        (
            "model",
            {"kind": "model", "uri": model["uri"]},
            threshold,
            min_area,
            params.watershed,
            overlays,
        ),
        (
            "baseline",
            {"kind": "baseline"},
            0.5,
            BASELINE_MIN_AREA,
            params.watershed,
            [None] * len(samples),
        ),
    ]
    prod_version = production_version(params.root, model["name"])
    if prod_version and prod_version != model["version"]:
        prod_uri = storage.join(params.root, "models", model["name"], prod_version)
        prod_cfg = storage.read_json(storage.join(prod_uri, "config.json"))
        jobs.append(
            (
                "production",
                {"kind": "model", "uri": prod_uri},
                float(prod_cfg.get("threshold", 0.5)),
                int(prod_cfg.get("min_area", 0)),
                params.watershed,
                [None] * len(samples),
            )
        )
    sub = flow(name="evaluate-images", task_runner=make_task_runner(params.executor))(_score_all)
    per = sub(jobs, samples, params.radius)
    combined = {who: lib.combine(res) for who, res in per.items()}
    ev = combined["model"]
    for name, png in lib.report_plots(
        ev, baseline=combined["baseline"], names=(model["name"],)
    ).items():
        storage.write_bytes(storage.join(report, name), png)
    _history_plot(model["uri"], report)

    key = lib.summary(ev)
    figures = _key_figures(ev, combined)
    promoted, decision = False, "not requested"
    if params.promote or params.force:
        prod_f1 = figures.get("production_object_f1")
        if params.force:
            promoted, decision = True, "forced by the user"
        elif not model["writable"]:
            decision = "the shipped default model is not in the registry"
        elif prod_version == model["version"]:
            decision = "already the production model"
        elif prod_f1 is None:
            promoted, decision = True, "no production model yet"
        elif figures["object_f1"] > prod_f1:
            promoted, decision = True, f"object F1 {figures['object_f1']:.3f} > {prod_f1:.3f}"
        else:
            decision = f"object F1 {figures['object_f1']:.3f} <= production {prod_f1:.3f}"
        if promoted and model["writable"]:
            set_production(
                params.root, model["name"], model["version"], reason=decision, metrics=figures
            )
    figures["promoted"] = promoted
    metrics = {
        "model": f"{model['name']}@{model['version']}",
        "dataset": params.dataset,
        "images": params.images,
        "split": params.split,
        "evaluated_at": stamp,
        "report_uri": report,
        "scores": key,
        "baseline": lib.summary(combined["baseline"]),
        "production": lib.summary(combined["production"]) if "production" in combined else None,
        "threshold_sweep": chosen,
        "key_figures": figures,
        "promotion": decision,
    }
    storage.write_json(storage.join(report, "metrics.json"), metrics)
    if model["writable"]:
        storage.write_json(storage.join(model["uri"], "metrics.json"), metrics)
    _publish(model, ev, combined, figures, decision, report)
    logger.info(
        "object F1 %.3f, count MAE %.2f, pixel F1 %.3f; promotion: %s",
        figures["object_f1"],
        figures["count_mae"],
        figures["pixel_f1"],
        decision,
    )
    return {
        "key_figures": figures,
        "report_uri": report,
        "promoted": promoted,
        "decision": decision,
    }


def _key_figures(ev: dict, combined: dict) -> dict:
    def fig(c: dict) -> dict:
        return {
            "object_precision": c["objects"]["precision"],
            "object_recall": c["objects"]["recall"],
            "object_f1": c["objects"]["f1"],
            "iou_object_f1": c["objects_iou"]["f1"],
            "count_mae": c["objects"]["count_mae"],
            "pixel_precision": c["pixel"]["precision"],
            "pixel_recall": c["pixel"]["recall"],
            "pixel_f1": c["pixel"]["f1"],
            "roc_auc": c["pixel"]["roc_auc"],
            "average_precision": c["pixel"]["average_precision"],
        }

    out = {
        **fig(ev),
        "images": ev["n_images"],
        "threshold": ev["params"]["threshold"],
        "min_area": ev["params"]["min_area"],
    }
    for who in ("baseline", "production"):
        if who in combined:
            out.update({f"{who}_{k}": v for k, v in fig(combined[who]).items()})
    return storage.to_jsonable(out)


def _history_plot(model_uri: str, report: str) -> None:
    from neuroseg.plots import history_png

    lineage_uri = storage.join(model_uri, "lineage.json")
    if not storage.exists(lineage_uri):
        return
    hist = storage.read_json(lineage_uri).get("history") or {}
    merged: dict[str, list[float]] = {}
    ends = []
    for phase in hist.values():
        for k, v in phase.items():
            merged.setdefault(k, []).extend(v)
        ends.append(len(merged.get("loss", [])))
    if merged.get("loss"):
        storage.write_bytes(
            storage.join(report, "history.png"), history_png(merged, phase_ends=ends[:-1])
        )


def _publish(model, ev, combined, figures, decision, report) -> None:
    name = model["name"]
    px = ev["pixel"]
    (tn, fp), (fn, tp) = px["confusion"]
    report_rows = [
        {
            "class": "Non-cells",
            "precision": _r(tn / max(tn + fn, 1)),
            "recall": _r(tn / max(tn + fp, 1)),
            "f1": _r(2 * tn / max(2 * tn + fp + fn, 1)),
            "support": tn + fp,
        },
        {
            "class": "Cells",
            "precision": _r(px["precision"]),
            "recall": _r(px["recall"]),
            "f1": _r(px["f1"]),
            "support": px["support"],
        },
    ]
    create_table_artifact(
        key=artifact_key("eval", name, "classification-report"),
        table=report_rows,
        description="Pixel classification report",
    )
    norm = px["confusion_normalized"]
    create_table_artifact(
        key=artifact_key("eval", name, "confusion-matrix"),
        table=[
            {
                "true \\ predicted": "Non-cells",
                "Non-cells": tn,
                "Cells": fp,
                "Non-cells (norm)": _r(norm[0][0]),
                "Cells (norm)": _r(norm[0][1]),
            },
            {
                "true \\ predicted": "Cells",
                "Non-cells": fn,
                "Cells": tp,
                "Non-cells (norm)": _r(norm[1][0]),
                "Cells (norm)": _r(norm[1][1]),
            },
        ],
        description="Pixel confusion matrix at full resolution: counts and row-normalised",
    )
    create_table_artifact(
        key=artifact_key("eval", name, "counts"),
        table=[
            {k: r[k] for k in ("image_id", "true_count", "pred_count", "tp", "fp", "fn")}
            for r in ev["per_image"]
        ],
        description="Cells per image: predicted vs true",
    )
    cols = [("model", "")] + [(w, f"{w}_") for w in ("production", "baseline") if w in combined]
    rows = [
        ("object precision", "object_precision"),
        ("object recall", "object_recall"),
        ("object F1 (centroid <= 40 px)", "object_f1"),
        ("object F1 (IoU >= 0.5)", "iou_object_f1"),
        ("count MAE", "count_mae"),
        ("pixel precision", "pixel_precision"),
        ("pixel recall", "pixel_recall"),
        ("pixel F1", "pixel_f1"),
        ("ROC AUC", "roc_auc"),
        ("average precision", "average_precision"),
    ]
    table = "| score | " + " | ".join(c for c, _ in cols) + " |\n|---|" + "---|" * len(cols)
    for label, k in rows:
        table += f"\n| {label} | " + " | ".join(_fmt(figures.get(p + k)) for _, p in cols) + " |"
    plots = "\n".join(
        f"- `{storage.join(report, f)}`"
        for f in ("confusion.png", "roc_pr.png", "history.png", "cell_sizes.png", "counts.png")
    )
    create_markdown_artifact(
        key=artifact_key("eval", name, "summary"),
        markdown=(
            f"# Evaluation of `{name}@{model['version']}`\n\n{figures['images']} image(s),"
            f" threshold {figures['threshold']}, min area {figures['min_area']} px.\n\n"
            f"{table}\n\n**Promotion:** {decision}.\n\n## Plots\n{plots}\n"
            f"- overlays: `{report}/overlay-*.png`\n"
        ),
        description="Model vs production vs classical baseline on the same images",
    )


def _r(v) -> float | None:
    return None if v is None else round(float(v), 4)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
