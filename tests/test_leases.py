"""Two runs at once do the work once: exclusive creates, image leases, and the nightly flow
run twice at the same moment on one root against a real Prefect API."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from neuroseg import leases, storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket") + "/root"
    return str(tmp_path / "root")


def test_create_exclusive_has_one_winner(root):
    uri = storage.join(root, "leases", "P1", "a.json")
    barrier = threading.Barrier(8)

    def race(i: int) -> bool:
        barrier.wait()
        return storage.create_exclusive(uri, json.dumps({"who": i}).encode())

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(race, range(8)))
    assert won.count(True) == 1
    assert storage.read_json(uri)["who"] == won.index(True)  # the winner's complete content
    assert not storage.create_exclusive(uri, b"{}")


def test_lease_is_held_released_and_taken_over_when_expired(root):
    a = leases.acquire(root, "P1", "img", owner="run-a")
    assert a is not None and a.owner == "run-a"
    assert leases.acquire(root, "P1", "img", owner="run-b") is None
    assert leases.holder(root, "P1", "img")["owner"] == "run-a"
    leases.release(a)
    assert leases.holder(root, "P1", "img") is None
    b = leases.acquire(root, "P1", "img", owner="run-b")
    assert b is not None
    # a holder that crashed: its lease expired, so the next run takes it over ...
    stale = {"owner": "run-b", "expires_at": "2026-01-01T00:00:00+00:00"}
    storage.write_json(b.uri, stale)
    c = leases.acquire(root, "P1", "img", owner="run-c")
    assert c is not None and leases.holder(root, "P1", "img")["owner"] == "run-c"
    # ... and the late holder's release leaves the new holder's lease alone
    leases.release(b)
    assert leases.holder(root, "P1", "img")["owner"] == "run-c"
    expires = dt.datetime.fromisoformat(leases.holder(root, "P1", "img")["expires_at"])
    assert expires > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=leases.DEFAULT_TTL - 60)


# --------------------------------------------------------------------------- the nightly flow

N_IMAGES = 32


def _uploads(root: str) -> None:
    """32 images of 960x1280 with one bright disc each, in two plates (tiled by the test
    model's 64 px tiles: about a second each, so two runs overlap even when one process starts
    several seconds after the other; at 480x640 a busy host once let the first run finish all
    32 before the second had listed them)."""
    import numpy as np

    from tests.test_segment_files import write_png

    rr, cc = np.indices((960, 1280))
    image = np.zeros((960, 1280, 3), np.uint8)
    image[(rr - 200) ** 2 + (cc - 300) ** 2 <= 36] = (200, 250, 90)
    for i in range(N_IMAGES):
        write_png(Path(root) / "uploads" / f"P{i % 2}" / f"img_{i:02d}.png", image)


def _infer_process(root: str, model: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "neuroseg", "infer", "--root", root, "--model", model],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_nightly_runs_at_once_segment_each_image_once(prefect_api, tmp_path, green_model):
    """Two `neuroseg infer` processes started together on one root, both on the session's real
    Prefect API: every image is segmented by one of them (leases), none by both."""
    from prefect.settings import PREFECT_API_URL

    root = str(tmp_path / "root")
    _uploads(root)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    procs = [_infer_process(root, green_model, env) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    done, other = [], []
    for out in outs:
        m = re.search(r"processed (\d+) image\(s\).*?, (\d+) left to another run", out)
        assert m, out[-2000:]
        done.append(int(m.group(1)))
        other.append(int(m.group(2)))
    print(json.dumps({"images": done, "left_to_another_run": other}))
    # every image segmented once in all: without leases both runs that overlap do all of them
    assert sum(done) == N_IMAGES, outs
    assert sum(other) > 0 or min(done) > 0, f"the two runs did not overlap: {done}, {other}"
    records = storage.list_files(storage.join(root, "manifests", "processed"))
    assert len(records) == N_IMAGES
    assert not storage.list_files(storage.join(root, "leases"))  # all given back
    from neuroseg.inference import read_cells

    cells = read_cells(storage.join(root, "cells"))
    assert len(cells) == N_IMAGES and cells["image_id"].is_unique


@pytest.mark.slow
def test_an_image_held_by_another_run_is_left_to_it(prefect_api, tmp_path, green_model):
    """Deterministic: the test holds two images' leases as another worker would; the run
    segments the rest and reports those two as left to another run; once they are free, the
    next run segments them."""
    from flows.infer import InferParams, nightly_inference

    root = str(tmp_path / "root")
    _uploads(root)
    held = [leases.acquire(root, "P0", f"img_{i:02d}", owner="other-worker") for i in (0, 2)]
    assert all(held)
    params = InferParams(root=root, model=green_model, report=False)
    night = nightly_inference(params)
    assert (night["images"], night["other_runs"], night["failed"]) == (N_IMAGES - 2, 2, 0)
    done = storage.list_files(storage.join(root, "manifests", "processed"))
    assert len(done) == N_IMAGES - 2
    for lease in held:
        leases.release(lease)
    again = nightly_inference(params)
    assert (again["images"], again["other_runs"], again["skipped"]) == (2, 0, N_IMAGES - 2)


from tests.test_segment_files import green_model  # noqa: E402  (the registered test model)

__all__ = ["green_model"]
