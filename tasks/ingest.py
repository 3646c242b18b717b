"""Prefect tasks of the ingestion flow (thin wrappers of ``neuroseg.ingest``)."""

from __future__ import annotations

import os

from prefect import task

from neuroseg import ingest as lib
from tasks.common import IO_RETRIES

#: The event a plate's ingestion emits; the nightly deployment's trigger (prefect.yaml) runs
#: inference of that plate when it sees one.
PLATE_INGESTED = "neuroseg.plate.ingested"
#: The event an ingestion of corrections emits; the adapt deployment's trigger fine-tunes the
#: serving model on them.
CORRECTIONS_INGESTED = "neuroseg.corrections.ingested"


@task(name="discover", task_run_name="discover-{source}", **IO_RETRIES)
def discover(source: str, dataset: str | None, kind: str = "datasets") -> dict:
    """List candidate images at the source; problems are reported, not raised."""
    if dataset:
        cands, problems = lib.discover_dataset(source, dataset, kind=kind)
    else:
        cands, problems = lib.discover_uploads(source)
    return {"candidates": [c.to_dict() for c in cands], "problems": problems}


@task(name="ingest-image", task_run_name="ingest-{cand[group]}-{cand[image_id]}", **IO_RETRIES)
def ingest_image(root: str, cand: dict) -> dict:
    """Validate, copy and record one image (idempotent)."""
    return lib.ingest_one(root, lib.Candidate(**cand))


def _root_label(root: str) -> str:
    """A local root made absolute (a worker elsewhere in the file system finds it)."""
    return root if "://" in root else os.path.abspath(root)


def _related_flow_run() -> list[dict]:
    from prefect.runtime import flow_run

    if not flow_run.id:
        return []
    return [
        {
            "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
            "prefect.resource.role": "flow-run",
        }
    ]


def emit_corrections_event(
    root: str, dataset: str, results: list[dict], *, review: dict | None = None
) -> dict | None:
    """Emit one ``neuroseg.corrections.ingested`` event when corrections were newly ingested.

    The resource is ``neuroseg.corrections.<dataset>`` with the labels ``neuroseg.dataset``,
    ``neuroseg.root`` (absolute for a local root) and, from the review folder's
    ``review.json``, ``neuroseg.plate_id``; the payload counts the images ingested, skipped
    (unchanged) and quarantined, and lists the ingested ids and those whose labels the user
    edited. Nothing is emitted when no image is new (a re-run, or everything quarantined).
    Returns what was emitted, or None.
    """
    from prefect.events import emit_event

    from neuroseg.review import edited_images

    new = [r for r in results if r.get("status") == "ingested"]
    if not new:
        return None
    resource = {
        "prefect.resource.id": f"neuroseg.corrections.{dataset}",
        "prefect.resource.name": dataset,
        "neuroseg.dataset": dataset,
        "neuroseg.root": _root_label(root),
    }
    if review and review.get("plate_id"):
        resource["neuroseg.plate_id"] = str(review["plate_id"])
    ids = sorted(r["image_id"] for r in new)
    payload = {
        "images": len(new),
        "skipped": sum(r.get("status") == "skipped" for r in results),
        "quarantined": sum(r.get("status") == "quarantined" for r in results),
        "image_ids": ids[:1000],
        "edited": edited_images(review, new)[:1000] if review else [],
    }
    event = emit_event(
        event=CORRECTIONS_INGESTED,
        resource=resource,
        related=_related_flow_run(),
        payload=payload,
    )
    return {"dataset": dataset, **payload, "event_id": str(event.id) if event else None}


def emit_plate_events(root: str, results: list[dict]) -> list[dict]:
    """Emit one ``neuroseg.plate.ingested`` event per plate with newly ingested uploads.

    One per plate and ingestion run, not per image: a plate of 200 images is one event. Plates
    whose images were all skipped (already ingested) or quarantined emit nothing. The resource
    is ``neuroseg.plate.<plate_id>`` with the labels ``neuroseg.plate_id`` and
    ``neuroseg.root`` (a local root made absolute, so that a worker elsewhere in the file
    system finds it); the payload counts the images. Returns what was emitted.
    """
    from prefect.events import emit_event

    plates: dict[str, list[str]] = {}
    for r in results:
        if r.get("status") == "ingested" and r.get("kind") == "uploads":
            plates.setdefault(r["group"], []).append(r["image_id"])
    root_label = _root_label(root)
    related = _related_flow_run()
    emitted = []
    for plate, image_ids in sorted(plates.items()):
        event = emit_event(
            event=PLATE_INGESTED,
            resource={
                "prefect.resource.id": f"neuroseg.plate.{plate}",
                "prefect.resource.name": plate,
                "neuroseg.plate_id": plate,
                "neuroseg.root": root_label,
            },
            related=related,
            payload={"images": len(image_ids), "image_ids": sorted(image_ids)[:1000]},
        )
        emitted.append(
            {
                "plate_id": plate,
                "images": len(image_ids),
                "event_id": str(event.id) if event else None,
            }
        )
    return emitted
