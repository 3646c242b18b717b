"""A training run killed with SIGKILL resumes from its last finished phase (CLI, real process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuroseg import ingest, prepare, storage
from neuroseg.images import encode_png
from neuroseg.synth import synth_plate

pytestmark = pytest.mark.slow
NEUROSEG = str(Path(sys.executable).parent / "neuroseg")


def _prepared_dataset(root: str, src: str) -> None:
    """A small prepared dataset written with the library (the flows are tested elsewhere)."""
    for i in range(4):
        s = synth_plate(seed=20 + i, height=256, width=320, n_cells=5)
        storage.write_bytes(storage.join(src, "images", f"s{i}.png"), encode_png(s.image))
        storage.write_bytes(storage.join(src, "masks", f"s{i}.png"), encode_png(s.mask))
    cands, _ = ingest.discover_dataset(src, "syn")
    records = [ingest.ingest_one(root, c) for c in cands]
    version = prepare.prepared_version(records, tile=128, min_overlap=32, seed=0)
    out = prepare.prepared_uri(root, "syn", version)
    metas = [
        prepare.prepare_image(
            out, r["image_id"], r["image_uri"], r["mask_uri"], tile=128, min_overlap=32
        )
        for r in records
    ]
    prepare.finalize(out, metas, seed=0, params={"tile": 128})
    storage.write_json(
        storage.join(root, "prepared", "syn", "latest.json"), {"version": version, "uri": out}
    )


def test_killed_training_resumes(tmp_path):
    root = str(tmp_path / "root")
    _prepared_dataset(root, str(tmp_path / "src"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    cmd = [
        NEUROSEG,
        "train",
        "--root",
        root,
        "--dataset",
        "syn",
        "--preset",
        "tiny",
        "--epochs",
        "3",
        "--run-id",
        "r1",
        "--no-evaluate",
    ]
    work = Path(root) / "training" / "r1"
    # own process group: the kill takes the CLI and its temporary Prefect server down together,
    # as when a worker machine dies, and leaves no orphaned server behind
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (work / "phase-0.json").exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "phase 0 did not finish in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up of any kind
    proc.wait()
    first = (work / "phase-0.json").read_bytes()
    assert not (work / "phase-2.json").exists()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming run r1" in out.stdout + out.stderr
    assert (work / "phase-0.json").read_bytes() == first  # phase 0 was not trained again
    assert (work / "phase-2.json").exists()
    assert "registered" in out.stdout
