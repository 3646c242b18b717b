"""Nightly inference: new plates under uploads/ to the per-cell Parquet table.

Scheduled every night (see prefect.yaml). Images run in parallel by task mapping on the chosen
task runner; the model is loaded once per worker. Re-running a night writes nothing new; a
re-run after a crash completes the missing images only; ``reprocess`` replaces the rows of
images processed by another model version.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Literal

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from neuroseg import storage
from neuroseg.progress import Progress
from neuroseg.summary import WELL_PATTERN
from tasks.common import ExecutorConfig, artifact_key, make_task_runner
from tasks.infer import find_pending, resolve_model, segment_image
from tasks.report import plate_report, plate_summary


class InferParams(BaseModel):
    """What the nightly run reads, which model it uses and where it writes."""

    root: str = Field("./neuroseg-data", description="storage root of the system")
    uploads: str | None = Field(None, description="uploads root (default ROOT/uploads)")
    cells: str | None = Field(None, description="cell table root (default ROOT/cells)")
    model: str = Field(
        "neuroseg",
        description="registry name (production version, else the shipped model), "
        "NAME@VERSION, a model folder, or 'default'",
    )
    plates: list[str] | None = Field(None, description="only these plates (default: all)")
    reprocess: bool = Field(False, description="replace rows written by other model versions")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 on CPUs that have it")
    tta: Literal["model", "none", "flip2", "flips"] = Field(
        "model",
        description="test-time augmentation: average the predictions of flipped inputs "
        "(flip2: 2x, flips: 4x the prediction time; more accurate); model: the model's own",
    )
    backend: Literal["auto", "onnx", "tf"] = Field(
        "auto",
        description="what runs the network: onnx (ONNX Runtime, no TensorFlow needed), tf "
        "(TensorFlow), auto: onnx when the model has model.onnx, onnxruntime is installed "
        "and precision is fp32, else tf",
    )
    channel: int | None = Field(
        None,
        ge=0,
        description="channel (0-based) of multi-channel images; default: the model's input",
    )
    pixel_size_um: (
        Annotated[float, Field(gt=0)] | dict[str, Annotated[float, Field(gt=0)]] | None
    ) = Field(
        None,
        description="pixel size in µm for images whose files do not say (PNG) or say wrong: "
        "one number for every plate of the run, or {plate_id: µm}; it wins over the file's "
        "metadata. Default: each file's OME / ImageJ / TIFF resolution metadata, else the µm "
        "columns stay null",
    )
    well_pattern: str = Field(
        WELL_PATTERN,
        description="regular expression with a group 'well' that finds the well in an image "
        "id (default: a row letter A-P and column 1-48 between separators, e.g. x_A06_s1)",
    )
    markers: dict[str, float | Literal["otsu"]] = Field(
        default_factory=dict,
        description="positive/negative call per marker for the plate summary: {channel label: "
        "threshold on the cell's mean_intensity_<label>, in the image's units, or 'otsu' "
        "(Otsu's threshold of the plate's cells)}, e.g. {'neun': 800, 'c_fos': 'otsu'}",
    )
    report: bool = Field(True, description="write an HTML report per plate under reports/plates/")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)


def _segment_all(
    model_uri,
    precision,
    pending_uri,
    root,
    cells,
    report_uri,
    run_id,
    channel=None,
    tta=None,
    pixel_size_um=None,
    backend="auto",
) -> list[dict]:
    # the work list is read from storage, not passed as a parameter: Prefect refuses flow-run
    # parameters over 512 kB (about 1,500 uploads), and a night may hold 100,000
    pending = storage.read_json(pending_uri)
    futures = segment_image.map(
        model_uri,
        precision,
        pending,
        root,
        cells,
        report_uri,
        run_id,
        channel,
        tta,
        unmapped(pixel_size_um),
        backend,
    )
    progress = Progress("segment", len(pending), unit="images", emit=get_run_logger().info)
    out = []
    for item, fut in zip(pending, futures, strict=True):
        try:
            out.append(fut.result())
        except Exception as exc:  # retries exhausted: report it, the batch goes on
            out.append({**item, "status": "failed", "reason": f"{item['image_uri']}: {exc}"})
        progress.update()
    return out


@flow(name="nightly-inference", flow_run_name="nightly-{params.model}", log_prints=True)
def nightly_inference(params: InferParams) -> dict:
    """Segment every new upload and append one record per cell to the cell table."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    uploads = params.uploads or storage.join(params.root, "uploads")
    cells = params.cells or storage.join(params.root, "cells")
    model = resolve_model(params.root, params.model)
    found = find_pending(params.root, uploads, model["version"], params.plates, params.reprocess)
    pending = found["pending"]
    logger.info(
        "model %s@%s: %d image(s) to segment, %d already done",
        model["name"],
        model["version"],
        len(pending),
        found["done"],
    )
    run_id = flow_run.id
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    report_uri = storage.join(params.root, "reports", f"infer-{stamp}")
    results = []
    if pending:
        sub = flow(name="segment-images", task_runner=make_task_runner(params.executor))(
            _segment_all
        )
        pending_uri = storage.join(report_uri, "pending.json")
        storage.write_json(pending_uri, pending)
        results = sub(
            model["uri"],
            params.precision,
            pending_uri,
            params.root,
            cells,
            report_uri,
            run_id,
            params.channel,
            None if params.tta == "model" else params.tta,
            params.pixel_size_um,
            params.backend,
        )
    summary = _summarize(results, found["done"], cells, model, time.perf_counter() - t0)
    summary["summaries"] = _plate_summaries(params, cells, results)
    if params.report:
        summary["reports"] = _plate_reports(params.root, cells, results)
    _publish(summary, results, report_uri)
    return summary


def _plate_summaries(params: InferParams, cells: str, results: list[dict]) -> dict[str, str]:
    """One summary table per plate with images done tonight (per well and the whole plate),
    as Parquet under summaries/ and as a table artifact with a stable key."""
    from neuroseg.summary import summary_uri

    logger = get_run_logger()
    out = {}
    for plate in sorted({r["plate_id"] for r in results if r["status"] == "done"}):
        try:
            rows = plate_summary(params.root, plate, cells, params.well_pattern, params.markers)
        except Exception as exc:  # the rows are written: a missing summary must not fail it
            logger.error("plate %s: no summary (%s)", plate, exc)
            continue
        out[plate] = summary_uri(params.root, plate)
        create_table_artifact(
            key=artifact_key("plate-summary", plate),
            table=[{k: v for k, v in r.items() if k != "plate_id"} for r in rows],
            description=f"Plate {plate} per well and in all ('all'): cells, cells per mm², "
            f"median area, flagged images, markers; Parquet: {out[plate]}",
        )
    return out


#: Results of images another run held ("busy") or finished meanwhile ("skipped"): leases,
#: neuroseg.leases. Neither done here nor failed.
_ELSEWHERE = ("busy", "skipped")


def _failed(r: dict) -> bool:
    return r["status"] != "done" and r["status"] not in _ELSEWHERE


def _plate_reports(root: str, cells: str, results: list[dict]) -> dict[str, str]:
    """One HTML page per plate seen tonight, each linked by a link artifact with a stable key."""
    logger = get_run_logger()
    pages = {}
    for plate in sorted({r["plate_id"] for r in results if r.get("plate_id")}):
        failed = [r for r in results if r.get("plate_id") == plate and _failed(r)]
        try:
            page = plate_report(root, plate, cells, failed)
        except Exception as exc:  # the rows are written: a missing page must not fail the night
            logger.error("plate %s: no report (%s)", plate, exc)
            continue
        pages[plate] = page["uri"]
        logger.info("plate %s: report %s (%.2f MB)", plate, page["uri"], page["bytes"] / 1e6)
        create_link_artifact(
            key=artifact_key("plate-report", plate),
            link=page["link"],
            link_text=f"Plate {plate}: {page['images']} images, {page['cells']} cells, "
            f"{page['failures']} failed",
            description=f"Per-plate report of plate {plate} (self-contained HTML): {page['uri']}",
        )
    return pages


def _summarize(results, done, cells, model, seconds) -> dict:
    ok = [r for r in results if r["status"] == "done"]
    return {
        "images": len(ok),
        "plates": len({r["plate_id"] for r in ok}),
        "cells": sum(r["cells"] for r in ok),
        "failed": sum(map(_failed, results)),
        "skipped": done,
        "other_runs": sum(r["status"] in _ELSEWHERE for r in results),
        "cells_uri": cells,
        "model": f"{model['name']}@{model['version']}",
        "seconds": round(seconds, 2),
    }


def _flagged(results: list[dict]) -> dict[str, int]:
    """Images per plate that tonight's quality rules flag (out of focus among tonight's images
    of the plate, saturated, empty; :func:`neuroseg.quality.plate_flags`)."""
    import pandas as pd

    from neuroseg.quality import plate_flags

    done = [r for r in results if r["status"] == "done" and "focus_score" in r]
    if not done:
        return {}
    table = plate_flags(
        pd.DataFrame(
            {
                "plate_id": [r["plate_id"] for r in done],
                "focus_score": [r["focus_score"] for r in done],
                "saturated_fraction": [r["saturated_fraction"] for r in done],
                "empty": [r["cells"] == 0 for r in done],
            }
        )
    )
    return table[table["quality_flags"] != ""].groupby("plate_id").size().to_dict()


def _publish(summary: dict, results: list[dict], report_uri: str) -> None:
    plates: dict[str, dict] = {}
    for r in results:
        p = plates.setdefault(
            r.get("plate_id") or "?", {"images": 0, "cells": 0, "failed": 0, "seconds": 0.0}
        )
        if r["status"] == "done":
            p["images"] += 1
            p["cells"] += r["cells"]
            p["seconds"] += sum(r.get("seconds", {}).values())
        elif _failed(r):
            p["failed"] += 1
    flagged = _flagged(results)
    rows = [
        {
            "plate": k,
            "images": v["images"],
            "cells": v["cells"],
            "cells per image": round(v["cells"] / v["images"], 1) if v["images"] else 0,
            "flagged images": flagged.get(k, 0),
            "failures": v["failed"],
            "seconds": round(v["seconds"], 1),
        }
        for k, v in sorted(plates.items())
    ]
    create_table_artifact(
        key="nightly-plates",
        table=rows or [{"plate": "", "images": 0, "cells": 0}],
        description=f"Per-plate summary of the nightly run ({summary['model']})",
    )
    failures = [
        {"file": r["image_uri"], "reason": r.get("reason", "")} for r in results if _failed(r)
    ]
    if failures:
        create_table_artifact(
            key="nightly-failures",
            table=failures,
            description="Uploads quarantined or failed tonight",
        )
    create_markdown_artifact(
        key=artifact_key("nightly-summary"),
        markdown=(
            f"# Nightly inference\n\nModel `{summary['model']}`: {summary['images']} image(s), "
            f"{summary['cells']} cells in {summary['plates']} plate(s), {summary['failed']} "
            f"failed, {summary['skipped']} already done, {summary['seconds']} s.\n\n"
            f"Cell table: `{summary['cells_uri']}`  \nOverlays: `{report_uri}`"
        ),
    )
