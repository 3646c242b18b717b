"""Ingestion flow: discover, validate and record new images from a folder or object storage.

Re-running ingests nothing twice (content hashes in the manifest); a bad file is quarantined
with its reason, listed in a table artifact, and the rest of the batch goes on. A folder written
by ``neuroseg review`` (it holds ``review.json``) is ingested as corrections: into
``<root>/corrections/<dataset>/``, and a ``neuroseg.corrections.ingested`` event starts the
adapt deployment.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from neuroseg import storage
from neuroseg.review import REVIEW_FILE, is_review_folder, read_review
from tasks.common import artifact_key
from tasks.ingest import discover, emit_corrections_event, emit_plate_events, ingest_image


class IngestParams(BaseModel):
    """What to ingest and where to record it."""

    source: str = Field(..., description="folder or s3://bucket/prefix to read from")
    root: str = Field("./neuroseg-data", description="storage root of the system")
    dataset: str | None = Field(
        None, description="name of an annotated dataset (images/ + masks/); none = plate uploads"
    )
    corrections: bool | None = Field(
        None,
        description="with dataset: ingest a lab's corrections (images/ + labels/) into "
        "corrections/<dataset>/ for the adapt flow; empty = when the source holds the "
        "review.json of `neuroseg review`",
    )

    def kind(self) -> str:
        """``uploads``, ``datasets`` or ``corrections`` (auto-detected from ``review.json``)."""
        if not self.dataset:
            if self.corrections:
                raise ValueError("corrections need a dataset name (--dataset NAME)")
            return "uploads"
        corrections = self.corrections
        if corrections is None:
            corrections = is_review_folder(self.source)
        return "corrections" if corrections else "datasets"


@flow(name="ingest", flow_run_name="ingest-{params.dataset}", log_prints=True)
def ingest(params: IngestParams) -> dict:
    """Ingest plate uploads or an annotated dataset into the storage root.

    For uploads, each plate with new images emits a ``neuroseg.plate.ingested`` event
    (``summary["events"]``), on which the nightly deployment runs that plate soon after.
    """
    logger = get_run_logger()
    kind = params.kind()
    found = discover(params.source, params.dataset, kind)
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
    summary = {
        **counts,
        "quarantined": sum(r["status"] == "quarantined" for r in results),
        "failed": sum(r["status"] == "failed" for r in results) + len(found["problems"]),
        "failures": failures,
        "manifest": storage.join(params.root, "manifests", kind),
    }
    summary["kind"] = kind
    # one event per plate with new images: the nightly deployment's trigger runs that plate
    summary["events"] = [] if params.dataset else emit_plate_events(params.root, results)
    if kind == "corrections":  # the adapt deployment's trigger fine-tunes on them
        review = _keep_review(params)
        event = emit_corrections_event(params.root, params.dataset, results, review=review)
        summary["events"] = [event] if event else []
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
    if summary["events"] and kind == "uploads":
        plates = ", ".join(e["plate_id"] for e in summary["events"])
        logger.info("emitted neuroseg.plate.ingested for plate(s) %s", plates)
    elif summary["events"]:
        logger.info(
            "emitted neuroseg.corrections.ingested for %s (%d image(s))",
            params.dataset,
            summary["events"][0]["images"],
        )
    return summary


def _keep_review(params: IngestParams) -> dict | None:
    """The source's review.json (None without one), kept beside the ingested corrections."""
    if not storage.exists(storage.join(params.source, REVIEW_FILE)):
        return None
    review = read_review(params.source)
    dest = storage.join(params.root, "corrections", params.dataset, REVIEW_FILE)
    storage.write_json(dest, review)
    return review
