"""Helpers shared by the Prefect tasks: retry policy, task runners, artifact keys."""

from __future__ import annotations

import functools
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
    DaskTaskRunner = _dask_runner_class()

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


def ephemeral_api_url() -> str | None:
    """The URL of the temporary API this process started (no ``PREFECT_API_URL``), else None."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the singleton Prefect's client started, if any
    return server.api_url if server.running else None


@functools.cache
def _dask_runner_class():
    """prefect-dask's runner, made to send task runs to this process's API.

    Each task ships the caller's settings to the Dask worker. Without ``PREFECT_API_URL`` those
    settings name no API, and every worker process then starts a temporary API of its own
    (10-20 s each, task runs recorded in another database). So when this process runs on its
    own temporary API, its URL goes with every task; a deployment (``PREFECT_API_URL`` set)
    already sends its own.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_dask import DaskTaskRunner

    class _DaskTaskRunner(DaskTaskRunner):
        def submit(self, task, parameters, wait_for=None, dependencies=None):
            url = ephemeral_api_url()
            if url is None:
                return super().submit(task, parameters, wait_for, dependencies)
            with temporary_settings(updates={PREFECT_API_URL: url}):
                return super().submit(task, parameters, wait_for, dependencies)

    _DaskTaskRunner.__name__ = _DaskTaskRunner.__qualname__ = "DaskTaskRunner"
    return _DaskTaskRunner


def artifact_key(*parts: str) -> str:
    """A stable artifact key: lowercase letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")[:200]
