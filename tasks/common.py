"""Helpers shared by the Prefect tasks: retry policy, task runners, artifact keys."""

from __future__ import annotations

import re
from typing import Literal

from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from neuroseg import storage

# Transient storage errors (timeouts, connection resets, 5xx, throttling) are retried with
# exponential backoff; permanent ones (404, access denied, corrupt data) fail at once.
RETRY_DELAYS = [1.0, 4.0, 16.0]


def retry_if_transient(task, task_run, state) -> bool:
    """``retry_condition_fn``: retry only when the failure is a transient storage error."""
    try:
        state.result(raise_on_failure=True)
    except Exception as exc:  # the task's own exception is re-raised here
        return storage.is_transient(exc)
    return False


IO_RETRIES = {
    "retries": len(RETRY_DELAYS),
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_condition_fn": retry_if_transient,
}


class ExecutorConfig(BaseModel):
    """Where mapped tasks run: Prefect's thread pool, or a Dask cluster through prefect-dask."""

    kind: Literal["threads", "dask"] = Field("threads", description="threads or dask")
    address: str | None = Field(
        None, description="Dask scheduler address (tcp://host:8786); none = temporary local cluster"
    )
    workers: int = Field(2, ge=1, le=256, description="threads, or workers of a local cluster")


def make_task_runner(cfg: ExecutorConfig):
    """Build the task runner an ``ExecutorConfig`` asks for."""
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def artifact_key(*parts: str) -> str:
    """A stable artifact key: lowercase letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")[:200]
