"""Prefect tasks of the ingestion flow (thin wrappers of ``neuroseg.ingest``)."""

from __future__ import annotations

from prefect import task

from neuroseg import ingest as lib
from tasks.common import IO_RETRIES


@task(name="discover", task_run_name="discover-{source}", **IO_RETRIES)
def discover(source: str, dataset: str | None) -> dict:
    """List candidate images at the source; problems are reported, not raised."""
    if dataset:
        cands, problems = lib.discover_dataset(source, dataset)
    else:
        cands, problems = lib.discover_uploads(source)
    return {"candidates": [c.to_dict() for c in cands], "problems": problems}


@task(name="ingest-image", task_run_name="ingest-{cand[group]}-{cand[image_id]}", **IO_RETRIES)
def ingest_image(root: str, cand: dict) -> dict:
    """Validate, copy and record one image (idempotent)."""
    return lib.ingest_one(root, lib.Candidate(**cand))
