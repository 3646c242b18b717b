"""Storage errors: transient ones are retried with backoff, permanent ones fail at once."""

from __future__ import annotations

import pytest
from prefect import flow, task

from tasks.common import IO_RETRIES

CALLS: dict[str, int] = {}


def _fast(t):
    return t.with_options(retry_delay_seconds=[0.01] * IO_RETRIES["retries"])


@task(**IO_RETRIES)
def flaky(name: str, error: type[Exception], fail_times: int) -> str:
    CALLS[name] = CALLS.get(name, 0) + 1
    if CALLS[name] <= fail_times:
        raise error(f"{name}: simulated failure {CALLS[name]}")
    return "ok"


@flow
def run(name: str, error: type[Exception], fail_times: int) -> str:
    return _fast(flaky)(name, error, fail_times)


def test_transient_errors_are_retried(prefect_api):
    assert run("timeout", TimeoutError, 2) == "ok"
    assert CALLS["timeout"] == 3


def test_permanent_errors_are_not_retried(prefect_api):
    for name, error in (
        ("missing", FileNotFoundError),
        ("denied", PermissionError),
        ("corrupt", ValueError),
    ):
        with pytest.raises(error):
            run(name, error, 1)
        assert CALLS[name] == 1, name


def test_retries_give_up_after_three(prefect_api):
    with pytest.raises(ConnectionError):
        run("down", ConnectionError, 10)
    assert CALLS["down"] == 1 + IO_RETRIES["retries"]
