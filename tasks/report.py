"""Prefect task of the per-plate HTML report (a thin wrapper of ``neuroseg.report``)."""

from __future__ import annotations

from prefect import task

from tasks.common import IO_RETRIES


@task(name="plate-report", task_run_name="report-{plate_id}", **IO_RETRIES)
def plate_report(root: str, plate_id: str, cells_uri: str, failures: list[dict]) -> dict:
    """Write ``reports/plates/<plate_id>.html``; returns its URI, link and counts."""
    from neuroseg.report import report_link, write_plate_report

    result = write_plate_report(root, plate_id, cells_uri=cells_uri, failures=failures)
    keep = ("uri", "images", "cells", "failures", "bytes")
    return {**{k: result[k] for k in keep}, "link": report_link(result["uri"])}


@task(name="plate-summary", task_run_name="summary-{plate_id}", **IO_RETRIES)
def plate_summary(
    root: str, plate_id: str, cells_uri: str, well_pattern: str, markers: dict
) -> list[dict]:
    """Write ``summaries/plate_id=<plate_id>/summary.parquet``; returns its rows."""
    from neuroseg.summary import write_plate_summary

    df = write_plate_summary(
        root, plate_id, cells_uri=cells_uri, well_pattern=well_pattern, markers=markers
    )
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")
