"""Ingestion flow: discover, validate and record new images from a folder or object storage.

Re-running ingests nothing twice (content hashes in the manifest); a bad file is quarantined
with its reason, listed in a table artifact, and the rest of the batch goes on.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from neuroseg import storage
from tasks.common import artifact_key
from tasks.ingest import discover, emit_plate_events, ingest_image


class IngestParams(BaseModel):
    """What to ingest and where to record it."""

    source: str = Field(..., description="folder or s3://bucket/prefix to read from")
    root: str = Field("./neuroseg-data", description="storage root of the system")
    dataset: str | None = Field(
        None, description="name of an annotated dataset (images/ + masks/); none = plate uploads"
    )


@flow(name="ingest", flow_run_name="ingest-{params.dataset}", log_prints=True)
def ingest(params: IngestParams) -> dict:
    """Ingest plate uploads or an annotated dataset into the storage root.

    For uploads, each plate with new images emits a ``neuroseg.plate.ingested`` event
    (``summary["events"]``), on which the nightly deployment runs that plate soon after.
    """
    logger = get_run_logger()
    found = discover(params.source, params.dataset)
    cands = found["candidates"]
    logger.info("found %d image(s) at %s", len(cands), params.source)
    futures = ingest_image.map(params.root, cands) if cands else []
    results, failures = [], [dict(r, status="rejected") for r in found["problems"]]
    for cand, fut in zip(cands, futures, strict=True):
        try:
            res = fut.result()
        except Exception as exc:  # retries exhausted: report and go on with the batch
            res = {**cand, "status": "failed", "reason": f"{cand['image_uri']}: {exc}"}
        results.append(res)
        if res["status"] in ("quarantined", "failed"):
            failures.append(
                {"file": res["image_uri"], "status": res["status"], "reason": res["reason"]}
            )
    counts = {s: sum(r["status"] == s for r in results) for s in ("ingested", "skipped")}
    kind = "datasets" if params.dataset else "uploads"
    summary = {
        **counts,
        "quarantined": sum(r["status"] == "quarantined" for r in results),
        "failed": sum(r["status"] == "failed" for r in results) + len(found["problems"]),
        "failures": failures,
        "manifest": storage.join(params.root, "manifests", kind),
    }
    # one event per plate with new images: the nightly deployment's trigger runs that plate
    summary["events"] = [] if params.dataset else emit_plate_events(params.root, results)
    key = artifact_key("ingest", params.dataset or "uploads")
    create_table_artifact(
        key=key + "-failures",
        table=failures or [{"file": "", "status": "", "reason": "no failures"}],
        description=f"Inputs rejected or quarantined by ingestion from {params.source}",
    )
    create_markdown_artifact(
        key=key,
        markdown=(
            f"# Ingestion of `{params.source}`\n\n| ingested | skipped | quarantined | failed |\n"
            f"|---|---|---|---|\n| {summary['ingested']} | {summary['skipped']} | "
            f"{summary['quarantined']} | {summary['failed']} |\n\nManifest: `{summary['manifest']}`"
        ),
        description="Ingestion summary",
    )
    logger.info(
        "ingested %d, skipped %d, quarantined %d, failed %d",
        summary["ingested"],
        summary["skipped"],
        summary["quarantined"],
        summary["failed"],
    )
    if summary["events"]:
        plates = ", ".join(e["plate_id"] for e in summary["events"])
        logger.info("emitted neuroseg.plate.ingested for plate(s) %s", plates)
    return summary
