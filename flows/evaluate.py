"""Evaluation: pixel and object scores on stitched full-resolution masks, artifacts, promotion.

The model is scored on a dataset's test split (split by image) in parallel over images, next to
the current production model and two classical baselines on the same images: Otsu threshold +
connected components (the FNC baseline) and the nuclei pipeline of ``neuroseg.baseline``
(percentiles, Gaussian, Otsu, distance-transform watershed; its parameters tuned on the
validation split when it has instance labels). Instances are scored at IoU 0.5..0.95 (F1, AP,
mean AP) as well as by centroid distance. Artifacts with stable keys carry the classification
report, the confusion matrix (counts and row-normalised), the IoU table, per-image counts and a
markdown comparison; plots are PNG files under ``reports/``. A model is promoted only when it
beats production's object F1 on the same images, or when forced.
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
from tasks.evaluate import (
    BASELINE_MIN_AREA,
    evaluate_image,
    list_samples,
    sweep,
    sweep_instances,
    tune_classical,
)
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
    tta: Literal["model", "none", "flip2", "flips"] = Field(
        "model",
        description="test-time augmentation: average the predictions of flipped inputs "
        "(flip2: 2x, flips: 4x the prediction time; more accurate); model: the model's own",
    )
    backend: Literal["auto", "onnx", "tf"] = Field(
        "auto",
        description="what runs the network: onnx (ONNX Runtime), tf (TensorFlow), auto: onnx "
        "when the model has model.onnx and onnxruntime is installed, else tf",
    )
    radius: float = Field(40.0, gt=0, description="centroid matching radius (px), FNC v2")
    promote: bool = Field(False, description="promote if it beats the production model")
    force: bool = Field(False, description="promote even if it does not")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)


def _score_all(work_uri: str, radius: float) -> dict[str, list[dict]]:
    # jobs and samples are read from storage, not passed as parameters: Prefect refuses
    # flow-run parameters over 512 kB
    work = storage.read_json(work_uri)
    jobs, samples = work["jobs"], work["samples"]
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
    tta = None if params.tta == "model" else params.tta
    mode = tta or cfg.get("tta") or "none"
    chosen = None
    if params.sweep and not params.images:
        try:
            val = list_samples(params.root, params.dataset, "val", None)
        except ValueError:
            val = []
        if val and cfg.get("head") == "three_class":
            chosen = sweep_instances(model["uri"], val, tta, params.backend)
            logger.info(
                "post-processing sweep on %d val image(s), TTA %s: %s (val mean AP %.3f, "
                "F1@0.5 %.3f)",
                len(val),
                mode,
                chosen["params"],
                chosen["val_mean_ap"],
                chosen["val_f1_50"],
            )
            if model["writable"]:
                if mode == "none":
                    cfg.update(postprocess=chosen["params"], postprocess_sweep=chosen)
                else:  # the plain post-processing stays; this one serves that TTA mode
                    cfg.setdefault("postprocess_tta", {})[mode] = chosen["params"]
                    cfg.setdefault("postprocess_tta_sweep", {})[mode] = chosen
                storage.write_json(cfg_uri, cfg)
                forget_bundle(model["uri"])
        elif val:
            chosen = sweep(model["uri"], val, params.radius, tta, params.backend)
            threshold, min_area = chosen["best_threshold"], chosen["best_min_area"]
            logger.info(
                "threshold sweep on %d val image(s): threshold %.2f, min area %d "
                "(val object F1 %.3f)",
                len(val),
                threshold,
                min_area,
                chosen["best_f1"],
            )
            if model["writable"] and mode == "none":  # a TTA threshold serves this run only
                cfg.update(threshold=threshold, min_area=min_area, threshold_sweep=chosen)
                storage.write_json(cfg_uri, cfg)
                forget_bundle(model["uri"])  # later runs in this process see the new threshold
    classical = _classical_params(params, logger)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    report = storage.join(params.root, "reports", f"eval-{model['name']}-{stamp}")
    overlays = [
        storage.join(report, f"overlay-{s['image_id']}.png") if i < N_OVERLAYS else None
        for i, s in enumerate(samples)
    ]
    jobs = [
        (
            "model",
            {"kind": "model", "uri": model["uri"], "tta": tta, "backend": params.backend},
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
        (
            "classical",
            {"kind": "classical", "params": classical["params"]},
            0.5,
            0,
            False,
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
                {"kind": "model", "uri": prod_uri, "tta": tta, "backend": params.backend},
                float(prod_cfg.get("threshold", 0.5)),
                int(prod_cfg.get("min_area", 0)),
                params.watershed,
                [None] * len(samples),
            )
        )
    sub = flow(name="evaluate-images", task_runner=make_task_runner(params.executor))(_score_all)
    work_uri = storage.join(report, "work.json")
    storage.write_json(work_uri, {"jobs": jobs, "samples": samples})
    per = sub(work_uri, params.radius)
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
        "classical": {**lib.summary(combined["classical"]), "tuning": classical},
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


def _classical_params(params: EvaluateParams, logger) -> dict:
    """The classical nuclei baseline's parameters: tuned on a val split with labels, else the
    defaults (chosen on the nuclei validation images, see neuroseg.baseline)."""
    from neuroseg.baseline import CLASSICAL_DEFAULTS

    chosen = {"params": {}, "source": "defaults", "defaults": dict(CLASSICAL_DEFAULTS)}
    if not params.sweep or params.images:
        return storage.to_jsonable(chosen)
    try:
        val = list_samples(params.root, params.dataset, "val", None)
    except ValueError:
        val = []
    if val and all(s.get("labels_uri") for s in val):
        tuned = tune_classical(val)
        logger.info(
            "classical baseline tuned on %d val image(s): %s (val mean AP %.3f)",
            len(val),
            tuned["params"],
            tuned["val_mean_ap"],
        )
        chosen = {**chosen, **tuned, "source": f"tuned on {len(val)} val image(s)"}
    return storage.to_jsonable(chosen)


def _key_figures(ev: dict, combined: dict) -> dict:
    def fig(c: dict) -> dict:
        iou = c.get("iou") or {}
        return {
            "f1_iou50": iou.get("f1_50"),
            "ap_iou50": iou.get("ap_50"),
            "mean_ap": iou.get("mean_ap"),
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
    for who in ("baseline", "classical", "production"):
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
    others = [w for w in ("production", "baseline", "classical") if w in combined]
    cols = [("model", "")] + [(w, f"{w}_") for w in others]
    _publish_iou(name, combined, others)
    rows = [
        ("F1 (IoU 0.5)", "f1_iou50"),
        ("AP (IoU 0.5)", "ap_iou50"),
        ("mean AP (IoU 0.5:0.95)", "mean_ap"),
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


def _publish_iou(name: str, combined: dict, others: list[str]) -> None:
    """Table artifact of the instance scores at IoU 0.5..0.95, the model beside the others."""
    methods = [w for w in ["model", *others] if combined[w].get("iou")]
    if not methods:
        return
    thresholds = combined[methods[0]]["iou"]["thresholds"]
    rows = []
    for i, t in enumerate(thresholds):
        row: dict = {"IoU": f"{t:.2f}"}
        for w in methods:
            sc = combined[w]["iou"]
            row[f"{w} F1"] = _r(sc["f1"][i])
            row[f"{w} AP"] = _r(sc["ap"][i])
        rows.append(row)
    mean = {"IoU": "mean 0.5:0.95"}
    for w in methods:
        mean[f"{w} F1"] = _r(sum(combined[w]["iou"]["f1"]) / len(thresholds))
        mean[f"{w} AP"] = _r(combined[w]["iou"]["mean_ap"])
    rows.append(mean)
    create_table_artifact(
        key=artifact_key("eval", name, "iou"),
        table=rows,
        description="Instances matched one-to-one by IoU (pooled over images): F1 and "
        "AP = TP / (TP + FP + FN) per threshold, as StarDist and the DSB 2018 challenge report",
    )


def _r(v) -> float | None:
    return None if v is None else round(float(v), 4)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
