"""A standing Dask cluster on this machine: ``dask scheduler`` and ``dask worker`` processes.

What a lab runs on its own hosts (or what dask-jobqueue, dask-kubernetes or Coiled start for
it), in miniature: one scheduler and N worker processes on 127.0.0.1, started as separate
programs with this interpreter, so that a flow reaches them by address exactly as it would
reach a remote cluster (``ExecutorConfig(kind="dask", address=...)``). Used by
``neuroseg bench orchestration --workers N`` and by the tests; light (no TensorFlow, no
Prefect).

Every process runs in its own session (process group); :meth:`StandingCluster.close` kills the
groups, so nothing a worker started outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["StandingCluster"]


class StandingCluster:
    """A scheduler and worker processes on 127.0.0.1 (free ports, no dashboards).

    Parameters
    ----------
    workers : int
        Worker processes started by :meth:`start` (more with :meth:`add_worker`).
    nthreads : int
        Threads per worker process (1: one task at a time per process).
    cwd : str, optional
        Working directory of the processes (``python -m`` puts it first on their import path).
    env : dict, optional
        Extra environment variables for the processes.
    idle_timeout : float
        The scheduler exits after this many idle seconds (a safety net for a killed parent).
    start_timeout : float
        Seconds to wait for the scheduler and for each worker to register.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        nthreads: int = 1,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        idle_timeout: float = 1800,
        start_timeout: float = 120,
    ) -> None:
        if workers < 0 or nthreads < 1:
            raise ValueError(f"workers must be >= 0 and nthreads >= 1, got {workers}, {nthreads}")
        self.n_start = workers
        self.nthreads = nthreads
        self.cwd = cwd or os.getcwd()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.idle_timeout = idle_timeout
        self.start_timeout = start_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="neuroseg-dask-")
        self.dir = Path(self._tmp.name)
        self.scheduler_file = str(self.dir / "scheduler.json")
        self.address: str | None = None
        self.procs: list[subprocess.Popen] = []
        self.start_seconds: float | None = None

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.dir / f"{name}.log").open("w")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as a whole
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def logs(self, tail: int = 2000) -> str:
        """The end of every process's log (for error messages)."""
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.dir.glob("*.log"))
        )

    def start(self) -> StandingCluster:
        """Start the scheduler and the workers; return when all workers have registered.

        On failure every process started so far is killed before the error propagates.
        """
        t0 = time.perf_counter()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    def _start(self) -> None:
        sched = self._spawn(
            "scheduler",
            [
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                self.scheduler_file,
                "--idle-timeout",
                f"{int(self.idle_timeout)}s",
            ],
        )
        deadline = time.monotonic() + self.start_timeout
        while not os.path.exists(self.scheduler_file):
            if sched.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start:\n{self.logs()}")
            time.sleep(0.2)
        while self.address is None:
            try:
                self.address = json.loads(Path(self.scheduler_file).read_text())["address"]
            except (ValueError, KeyError):  # written but not complete yet
                time.sleep(0.1)
        for _ in range(self.n_start):
            self._spawn_worker()
        self.wait_for_workers(self.n_start)

    def _spawn_worker(self) -> subprocess.Popen:
        i = sum(1 for p in self.dir.glob("worker-*.log"))
        return self._spawn(
            f"worker-{i}",
            [
                "distributed.cli.dask_worker",
                self.address,
                "--host",
                "127.0.0.1",
                "--nthreads",
                str(self.nthreads),
                "--no-nanny",
                "--no-dashboard",
                "--name",
                f"worker-{i}",
                "--memory-limit",
                "0",
                "--local-directory",
                str(self.dir / f"worker-{i}"),
                "--death-timeout",
                "60",
            ],
        )

    def add_worker(self) -> None:
        """Start one more worker process and wait until it has registered."""
        n = self.n_workers() + 1
        self._spawn_worker()
        self.wait_for_workers(n)

    def client(self, **kw):
        """A ``distributed.Client`` connected to the scheduler (close it after use)."""
        from distributed import Client

        return Client(self.address, set_as_default=False, **kw)

    def n_workers(self) -> int:
        with self.client() as c:
            return len(c.scheduler_info(n_workers=-1)["workers"])

    def wait_for_workers(self, n: int) -> None:
        """Block until ``n`` workers are registered (fail with the logs if one died)."""
        deadline = time.monotonic() + self.start_timeout
        with self.client(timeout=f"{int(self.start_timeout)}s") as c:
            while len(c.scheduler_info(n_workers=-1)["workers"]) < n:
                dead = [p for p in self.procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"{n} dask worker(s) did not register:\n{self.logs()}")
                time.sleep(0.2)

    # ------------------------------------------------------------------ teardown

    def close(self, grace: float = 3.0) -> None:
        """Kill every process group (SIGTERM, then SIGKILL after ``grace`` seconds: a worker
        that imported TensorFlow may hang at exit after its clean stop) and remove the files."""
        for p in reversed(self.procs):
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(timeout=10)
        for p in self.procs:  # children a worker left behind in its group
            _signal_group(p, signal.SIGKILL)
        self.procs.clear()
        self._tmp.cleanup()

    def __enter__(self) -> StandingCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass
