"""The system as a lab runs it: `prefect server start`, work pools, `prefect deploy --all`,
process workers, and deployment runs triggered from the CLI. Slow: one server per module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroseg import storage
from tests.conftest import REPO, _free_port, check_train_form_schema

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
#: Debounce window and start delay of runs triggered by uploads (prefect.yaml's default: PT1M).
UPLOAD_DEBOUNCE = "PT5S"


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"prefect server did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def _server_env(base: Path, port: int, **extra: str) -> dict:
    """This process's environment without any PREFECT_* or NEUROSEG_* setting, pointed at a
    server on `port` with its home under `base`; `extra` added."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "NEUROSEG_")) or k == "PREFECT_HOME"
    }
    env.update(
        PREFECT_HOME=str(base / "home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _start_server(base: Path, env: dict, port: int) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:`port`, healthy (or raises with its log)."""
    log = base / "server.log"
    srv = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=base,
    )
    try:
        _wait_healthy(env["PREFECT_API_URL"], srv, log)
    except BaseException:
        _stop([srv])
        raise
    return srv


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def _prefect(env: dict, cwd: Path, *args: str, timeout: int = 300) -> str:
    """Run the `prefect` command line; its output, or fail with it."""
    out = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    tail = out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{tail}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `prefect server start` on a free loopback port, with pools, deployments, workers."""
    base = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = _server_env(
        base,
        port,
        NEUROSEG_ROOT=str(base / "root"),
        NEUROSEG_PROJECT_DIR=str(REPO),
        NEUROSEG_UPLOAD_DEBOUNCE=UPLOAD_DEBOUNCE,
    )
    procs = [_start_server(base, env, port)]
    try:
        for script in ("pools.sh", "deploy.sh"):
            out = subprocess.run(
                ["bash", str(REPO / "deployments" / script)],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
            )
            tail = out.stdout[-3000:] + out.stderr[-3000:]
            assert out.returncode == 0, f"{script} failed:\n{tail}"
        for pool in ("cpu", "gpu"):
            wlog = base / f"worker-{pool}.log"
            procs.append(
                subprocess.Popen(
                    ["bash", str(REPO / "deployments" / f"worker-{pool}.sh"), "--limit", "2"],
                    env=env,
                    stdout=wlog.open("w"),
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            )
        yield {"env": env, "base": base, "root": str(base / "root")}
    finally:
        _stop(procs)


def run_deployment(server, name: str, params: dict, timeout: int = 600) -> str:
    """`prefect deployment run NAME --watch` and return its output; fail on a failed run."""
    out = subprocess.run(
        [
            str(BIN / "prefect"),
            "deployment",
            "run",
            name,
            "--params",
            json.dumps({"params": params}),
            "--watch",
            "--watch-timeout",
            str(timeout),
        ],
        env=server["env"],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        cwd=REPO,
    )
    text = out.stdout + out.stderr
    if out.returncode != 0 or "Completed" not in text:
        logs = "\n".join(p.read_text()[-4000:] for p in sorted(server["base"].glob("worker-*.log")))
        raise AssertionError(f"{name} did not complete:\n{text[-3000:]}\n--- workers ---\n{logs}")
    return text


def _write_dataset(src: str, n: int = 3) -> None:
    from neuroseg.images import encode_png
    from neuroseg.synth import synth_plate

    for i in range(n):
        s = synth_plate(seed=100 + i, height=300, width=400, n_cells=4)
        storage.write_bytes(storage.join(src, "images", f"s{i}.png"), encode_png(s.image))
        storage.write_bytes(storage.join(src, "masks", f"s{i}.png"), encode_png(s.mask))


def test_ingest_and_prepare_deployments(server):
    root = server["root"]
    src = str(server["base"] / "incoming-dataset")
    _write_dataset(src)
    run_deployment(server, "ingest/ingest", {"source": src, "root": root, "dataset": "synth"})
    manifests = storage.list_files(storage.join(root, "manifests", "datasets", "synth"))
    assert len(manifests) == 3
    run_deployment(
        server,
        "prepare/prepare",
        {"root": root, "dataset": "synth", "tile": 128, "min_overlap": 32},
    )
    latest = storage.read_json(storage.join(root, "prepared", "synth", "latest.json"))
    summary = storage.read_json(storage.join(latest["uri"], "summary.json"))
    assert summary["images"] == 3 and summary["tiles"] > 3
    tiles = storage.read_parquet(storage.join(latest["uri"], "tiles.parquet"))
    assert np.array_equal(np.sort(tiles["image_id"].unique()), ["s0", "s1", "s2"])


def test_retrain_form_has_dropdowns_on_the_server(server):
    """The train deployment's parameter schema as `prefect deploy` registered it on the server:
    enums for preset, architecture, loss and precision, typed phases."""
    api = server["env"]["PREFECT_API_URL"]
    with urllib.request.urlopen(f"{api}/deployments/name/train/train", timeout=30) as resp:
        deployment = json.load(resp)
    check_train_form_schema(deployment["parameter_openapi_schema"])
    assert deployment["parameters"]["params"]["preset"] == "cpu-small"


def test_train_and_nightly_deployments(server):
    """Retrain on the gpu pool (tiny preset), then the nightly deployment serves the model."""
    root = server["root"]
    if not storage.exists(storage.join(root, "prepared", "synth", "latest.json")):
        pytest.skip("needs the prepared dataset of test_ingest_and_prepare_deployments")
    run_deployment(
        server,
        "train/train",
        {"root": root, "dataset": "synth", "preset": "tiny", "model_name": "dep"},
    )
    prod = storage.read_json(storage.join(root, "models", "dep", "production.json"))
    assert storage.exists(storage.join(root, "models", "dep", prod["version"], "model.keras"))
    from neuroseg.images import encode_png
    from neuroseg.synth import synth_plate

    for i in range(2):
        s = synth_plate(seed=7 + i, height=300, width=400, n_cells=3)
        storage.write_bytes(storage.join(root, "uploads", "P9", f"P9_{i}.png"), encode_png(s.image))
    run_deployment(server, "nightly-inference/nightly", {"root": root, "model": "dep"})
    done = storage.list_files(storage.join(root, "manifests", "processed", "P9"))
    assert len(done) == 2
    assert all(storage.read_json(u)["model_version"] == prod["version"] for u in done)


def _api(server, path: str, body: dict | list | None = None):
    """GET (no body) or POST JSON to the server's REST API; the decoded answer or None."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        server["env"]["PREFECT_API_URL"] + path,
        data=data,
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read()
    return json.loads(text) if text else None


def _wait(what: str, check, timeout: float, server):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-4000:] for p in sorted(server["base"].glob("*.log")))
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def test_ingested_upload_triggers_inference_of_its_plate(server):
    """Nobody starts a nightly run: ingesting two plates emits one event per plate, and the
    nightly deployment's trigger runs each plate alone; a second event for a plate within the
    debounce window starts nothing; the 02:00 schedule stays. Prints the time from each event
    to the plate's rows in the table."""
    import datetime as dt
    import uuid

    import pandas as pd
    import pydantic

    from neuroseg import synth

    root = str(server["base"] / "triggered")
    source = str(server["base"] / "microscope")
    synth.write_uploads(source, plates=2, images_per_plate=2, seed=3, height=480, width=640)

    nightly = _api(server, "/deployments/name/nightly-inference/nightly")
    assert [s["schedule"].get("cron") for s in nightly["schedules"]] == ["0 2 * * *"]
    (automation,) = [
        a
        for a in _api(server, "/automations/filter", {})
        if any(x.get("deployment_id") == nightly["id"] for x in a["actions"])
    ]
    trigger = automation["trigger"]
    assert trigger["expect"] == ["neuroseg.plate.ingested"] and trigger["posture"] == "Reactive"
    assert sorted(trigger["for_each"]) == ["neuroseg.plate_id", "neuroseg.root"]
    # deploy.sh's NEUROSEG_UPLOAD_DEBOUNCE overrides prefect.yaml's default of one minute
    seconds = pydantic.TypeAdapter(dt.timedelta).validate_python(trigger["within"])
    assert seconds.total_seconds() == 5, trigger["within"]

    asked = time.time()
    run_deployment(server, "ingest/ingest", {"source": f"{source}/uploads", "root": root})

    def events():
        page = _api(
            server,
            "/events/filter",
            {
                "filter": {
                    "event": {"name": ["neuroseg.plate.ingested"]},
                    "resource": {"labels": {"neuroseg.root": root}},
                },
                "limit": 50,
            },
        )
        return page["events"] if len(page["events"]) >= 2 else None

    evs = {e["resource"]["neuroseg.plate_id"]: e for e in _wait("events", events, 60, server)}
    assert sorted(evs) == ["P001", "P002"] and len(evs) == 2  # one per plate, not per image
    assert all(e["payload"]["images"] == 2 for e in evs.values())
    # a second ingestion of P001 within the debounce window: no second run
    first = dt.datetime.fromisoformat(evs["P001"]["occurred"])
    again = {**evs["P001"], "id": str(uuid.uuid4())}
    again["occurred"] = (first + dt.timedelta(seconds=1)).isoformat()
    for key in ("received", "follows"):
        again.pop(key, None)
    _api(server, "/events", [again])

    def rows_of(plate: str):
        done = storage.join(root, "manifests", "processed", plate)
        return time.time() if len(storage.list_files(done)) == 2 else None

    seconds = {}
    pending = {"P001", "P002"}
    deadline = time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        for plate in sorted(pending):
            if (t := rows_of(plate)) is not None:
                occurred = dt.datetime.fromisoformat(evs[plate]["occurred"]).timestamp()
                seconds[plate] = round(t - occurred, 1)
                pending.discard(plate)
        time.sleep(0.5)
    assert not pending, f"no rows for {pending} after 300 s"
    cells = pd.read_parquet(storage.join(root, "cells"))
    assert set(cells["plate_id"].astype(str)) == {"P001", "P002"} and len(cells) > 0

    def runs():
        found = _api(
            server,
            "/flow_runs/filter",
            {"deployments": {"id": {"any_": [nightly["id"]]}}, "limit": 50},
        )
        mine = [r for r in found if r["parameters"]["params"].get("root") == root]
        return mine if all(r["state_type"] == "COMPLETED" for r in mine) else None

    mine = _wait("triggered runs to finish", runs, 120, server)
    assert sorted(r["parameters"]["params"]["plates"] for r in mine) == [["P001"], ["P002"]]
    assert all(r["created_by"]["type"] == "AUTOMATION" for r in mine), mine
    print(
        json.dumps(
            {
                "upload_to_rows_seconds": seconds,
                "debounce": UPLOAD_DEBOUNCE,
                "ingest_run_asked_to_rows_seconds": {
                    p: round(
                        dt.datetime.fromisoformat(evs[p]["occurred"]).timestamp() + s - asked, 1
                    )
                    for p, s in seconds.items()
                },
                "run_seconds": {
                    r["parameters"]["params"]["plates"][0]: r["total_run_time"] for r in mine
                },
            }
        )
    )


#: What `prefect deploy --all` reads of a checkout: the project file and the flows it names.
_DEPLOYED_FILES = ("prefect.yaml", "flows")

_RUN_PULL_STEPS = """
import asyncio, json, os, sys
from prefect.deployments.steps.core import run_steps
steps = json.loads(sys.argv[1])
found = {}
for override in (None, sys.argv[2]):
    os.chdir(sys.argv[3])
    os.environ.pop("NEUROSEG_PROJECT_DIR", None)
    if override:
        os.environ["NEUROSEG_PROJECT_DIR"] = override
    asyncio.run(run_steps(steps))
    found["override" if override else "default"] = os.getcwd()
print(json.dumps(found))
"""


def test_plain_prefect_deploy_all_on_a_fresh_clone_and_a_fresh_server(tmp_path):
    """Prefect's standard command, `prefect --no-prompt deploy --all`, in a copy of the project
    with no NEUROSEG_* variable, against a fresh server with only its work pools: every
    deployment and the upload trigger are registered with the defaults of prefect.yaml (root
    <clone>/neuroseg-data, debounce 1 minute), and the stored pull steps take a worker into the
    clone, or into its own NEUROSEG_PROJECT_DIR."""
    import shutil

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    clone = (tmp_path / "clone").resolve()
    clone.mkdir()
    for name in _DEPLOYED_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, clone / name)
    port = _free_port()
    env = _server_env(tmp_path, port)
    assert not any(k.startswith("NEUROSEG_") for k in env)
    srv = _start_server(tmp_path, env, port)
    try:
        for pool in ("cpu", "gpu"):
            _prefect(env, tmp_path, "work-pool", "create", pool, "--type", "process")
        out = _prefect(env, clone, "--no-prompt", "deploy", "--all")
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                deployments = {d.name: d for d in client.read_deployments()}
                automations = client.read_automations()
                flows = {f.id: f.name for f in client.read_flows()}
    finally:
        _stop([srv])

    expected = ["adapt", "evaluate", "ingest", "nightly", "prepare", "train"]
    assert sorted(deployments) == expected, out
    assert {flows[d.flow_id] for d in deployments.values()} == {
        "ingest",
        "prepare",
        "train",
        "evaluate",
        "nightly-inference",
        "adapt",
    }
    root = str(clone / "neuroseg-data")
    for d in deployments.values():
        assert d.parameters["params"]["root"] == root, (d.name, d.parameters)
        assert "{{" not in json.dumps(d.parameters), (d.name, d.parameters)
    assert deployments["ingest"].parameters["params"]["source"] == root + "/incoming"
    assert deployments["train"].work_pool_name == "gpu"
    assert deployments["nightly"].work_pool_name == "cpu"
    nightly = deployments["nightly"]
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]

    (automation,) = [
        a for a in automations if any(x.deployment_id == nightly.id for x in a.actions)
    ]
    trigger = automation.trigger
    assert automation.name == "nightly-on-upload" and automation.enabled
    assert trigger.within.total_seconds() == 60
    assert trigger.expect == {"neuroseg.plate.ingested"}
    assert sorted(trigger.for_each) == ["neuroseg.plate_id", "neuroseg.root"]
    (action,) = automation.actions
    params = action.parameters["params"]
    # the event's values, rendered by the server when the trigger fires
    assert params["root"] == "{{ event.resource['neuroseg.root'] }}"
    assert params["plates"] == ["{{ event.resource['neuroseg.plate_id'] }}"]
    assert params["model"] == "neuroseg"

    # adapt: on the gpu pool, a typed form, one run per ingestion of corrections, promoting
    # under the name the nightly run serves
    adapt = deployments["adapt"]
    assert adapt.work_pool_name == "gpu"
    props = adapt.parameter_openapi_schema["definitions"]["AdaptParams"]["properties"]
    assert props["metric"]["enum"] == ["f1_iou50", "f1_centroid"]
    assert props["tolerance"]["default"] == 0.02 and props["replay_share"]["default"] == 0.5
    (on_corrections,) = [
        a for a in automations if any(x.deployment_id == adapt.id for x in a.actions)
    ]
    assert on_corrections.name == "adapt-on-corrections" and on_corrections.enabled
    assert on_corrections.trigger.expect == {"neuroseg.corrections.ingested"}
    (action,) = on_corrections.actions
    params = action.parameters["params"]
    assert params["root"] == "{{ event.resource['neuroseg.root'] }}"
    assert params["corrections"] == "{{ event.resource['neuroseg.dataset'] }}"
    assert params["model"] == nightly.parameters["params"]["model"] == "neuroseg"

    # The pull steps as stored, run as a worker runs them: from elsewhere, with no variable
    # they enter the clone; with the worker's own NEUROSEG_PROJECT_DIR they enter that.
    elsewhere = (tmp_path / "other-checkout").resolve()
    elsewhere.mkdir()
    ran = subprocess.run(
        [
            sys.executable,
            "-c",
            _RUN_PULL_STEPS,
            json.dumps(nightly.pull_steps),
            str(elsewhere),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    found = json.loads(ran.stdout.strip().splitlines()[-1])
    assert found == {"default": str(clone), "override": str(elsewhere)}


def _lab_plate(folder: Path, names: list[str], seed: int) -> dict:
    """Dim synthetic plates (the lab's microscope: a third of the brightness the model learnt
    on) as uploads; returns their exact instance labels by image id."""
    from neuroseg.images import encode_png
    from neuroseg.synth import synth_plate

    truth = {}
    for i, name in enumerate(names):
        s = synth_plate(seed=seed + i, height=300, width=400, n_cells=5)
        dim = (s.image * 0.35).astype(np.uint8)
        storage.write_bytes(str(folder / f"{name}.png"), encode_png(dim))
        truth[name] = s.instances
    return truth


def test_review_correct_adapt_end_to_end(server, prefect_api, tmp_path):
    """The lab's loop on a real server with workers: a nightly run -> `neuroseg review` ->
    corrected labels (and two bad corrections) ingested by the ingest deployment -> the
    corrections event starts the adapt deployment on the gpu pool -> the candidate is scored and
    promoted or refused with its reason -> the next nightly run serves what production names.
    The serving model (`neuroseg`) is a small U-Net trained here on synthetic plates; the lab's
    images are dimmer than those."""
    import tifffile

    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from flows.train import TrainParams, train
    from neuroseg.cli import main
    from neuroseg.images import encode_labels, encode_png
    from neuroseg.registry import production_version
    from neuroseg.synth import synth_plate

    root = str(server["base"] / "lab-root")
    src = tmp_path / "syn"
    for i in range(8):
        s = synth_plate(seed=200 + i, height=300, width=400, n_cells=4)
        storage.write_bytes(str(src / "images" / f"s{i}.png"), encode_png(s.image))
        storage.write_bytes(str(src / "labels" / f"s{i}.png"), encode_labels(s.instances)[0])
    ingest(IngestParams(source=str(src), root=root, dataset="syn"))
    prepare(PrepareParams(root=root, dataset="syn", tile=128, min_overlap=32))
    parent = train(
        TrainParams(
            root=root, dataset="syn", preset="tiny", epochs=6, learning_rate=3e-3, width=8,
            crop=64, batch_size=8, loss="bce_dice", model_name="neuroseg",
        )
    )  # fmt: skip
    assert production_version(root, "neuroseg") == parent["version"]

    truth = _lab_plate(Path(root) / "uploads" / "PL", ["a", "b", "c"], seed=500)
    run_deployment(server, "nightly-inference/nightly", {"root": root, "plates": ["PL"]})
    out = tmp_path / "review"
    assert main(["review", "PL", "--root", root, "--out", str(out), "--top", "2"]) == 0
    exported = [e["image_id"] for e in json.loads((out / "review.json").read_text())["images"]]
    for image_id in exported:  # the user's corrections: every cell outlined
        tifffile.imwrite(out / "labels" / f"{image_id}.tif", truth[image_id].astype(np.uint32))
    bad = _lab_plate(out / "images", ["wrong_size", "no_labels"], seed=900)
    tifffile.imwrite(out / "labels" / "wrong_size.tif", bad["wrong_size"][:100].astype(np.uint32))

    run_deployment(server, "ingest/ingest", {"source": str(out), "root": root, "dataset": "lab"})
    reasons = {
        p.name: p.read_text().strip()
        for p in (Path(root) / "quarantine" / "corrections" / "lab").glob("*.reason.txt")
    }
    assert sorted(reasons) == ["no_labels.png.reason.txt", "wrong_size.png.reason.txt"]
    assert "label image is 400x100, image is 400x300" in reasons["wrong_size.png.reason.txt"]

    adapt = _api(server, "/deployments/name/adapt/adapt")

    def adapted():
        found = _api(
            server,
            "/flow_runs/filter",
            {"deployments": {"id": {"any_": [adapt["id"]]}}, "limit": 10},
        )
        mine = [r for r in found if r["parameters"]["params"].get("root") == root]
        if any(r["state_type"] in ("FAILED", "CRASHED") for r in mine):
            raise AssertionError(f"adapt failed: {mine}")
        return mine if mine and all(r["state_type"] == "COMPLETED" for r in mine) else None

    (run,) = _wait("the triggered adapt run", adapted, 600, server)
    assert run["created_by"]["type"] == "AUTOMATION"
    assert run["parameters"]["params"]["corrections"] == "lab"
    (decision_file,) = (Path(root) / "adapt").glob("*/decision.json")
    decision = json.loads(decision_file.read_text())
    print(json.dumps({k: decision[k] for k in ("promoted", "reason", "seconds", "scores")}))
    assert decision["corrections"] == 2 and decision["folds"] == 2
    candidate = decision["candidate"].split("@")[1]
    lineage = storage.read_json(storage.join(root, "models", "neuroseg", candidate, "lineage.json"))
    assert lineage["adapted_from"]["model"] == f"neuroseg@{parent['version']}"
    hashes = {i["image_id"]: i["labels_sha256"] for i in lineage["corrections"]["images"]}
    for image_id in exported:
        rec = storage.read_json(
            storage.join(root, "manifests", "corrections", "lab", f"{image_id}.json")
        )
        assert hashes[image_id] == rec["labels_sha256"]
    serving = production_version(root, "neuroseg")
    if decision["promoted"]:
        assert serving == candidate and decision["reason"].startswith("promoted")
    else:
        assert serving == parent["version"]
        assert decision["reason"].startswith("kept the production model")

    _lab_plate(Path(root) / "uploads" / "PM", ["m1", "m2"], seed=700)
    run_deployment(server, "nightly-inference/nightly", {"root": root, "plates": ["PM"]})
    done = storage.list_files(storage.join(root, "manifests", "processed", "PM"))
    assert len(done) == 2
    assert {storage.read_json(u)["model_version"] for u in done} == {serving}
    cells = pd.read_parquet(storage.join(root, "cells"), filters=[("plate_id", "==", "PM")])
    assert set(cells["model_version"]) <= {serving}
