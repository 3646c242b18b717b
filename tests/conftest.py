"""Shared test fixtures: real FNC samples, a moto S3 server, one Prefect API per session."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

# Prefect reads its settings when imported: point it at a throw-away home, keep it off the
# network, and give the temporary API time to start on a slow 2-core CI machine.
_PREFECT_HOME = tempfile.mkdtemp(prefix="neuroseg-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("PREFECT_API_URL", None)


def _keep_absl_off_pytest_streams() -> None:
    """absl (imported with TensorFlow) makes a log handler bound to ``sys.stderr`` as it is
    then, attached nowhere; ``logging.config.dictConfig`` (Prefect's logging set-up) closes every
    handler ever made, and absl's ``close`` closes its stream unless it is the current
    ``sys.stderr``. Under pytest that stream is pytest's capture file and ``sys.stderr`` may be a
    test's ``capsys`` buffer: the capture file got closed and the rest of the session lost stderr
    (seen when TensorFlow was imported before a ``capsys`` test first set up Prefect). Binding
    the handler to the process's own stderr, which absl never closes, avoids it."""
    import sys

    try:
        from absl import logging as absl_logging
    except ImportError:  # pragma: no cover - absl comes with TensorFlow
        return
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


_keep_absl_off_pytest_streams()

REPO = Path(__file__).resolve().parents[1]
FNC_ROOT = REPO.parent / "shared" / "data" / "fnc-samples"
NUCLEI_ROOT = REPO.parent / "shared" / "data" / "nuclei"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def fnc_root() -> Path:
    """The real FNC samples beside the checkout; skip when they are absent (fresh clone)."""
    if not (FNC_ROOT / "yellow" / "images").is_dir():
        pytest.skip(f"real FNC samples not found at {FNC_ROOT} (../shared is absent)")
    return FNC_ROOT


@pytest.fixture(scope="session")
def nuclei_root() -> Path:
    """The real nucleus sets (bbbc039/, dsb2018/) beside the checkout; skip when absent."""
    if not all((NUCLEI_ROOT / name / "labels").is_dir() for name in ("bbbc039", "dsb2018")):
        pytest.skip(f"real nucleus images not found at {NUCLEI_ROOT} (../shared is absent)")
    return NUCLEI_ROOT


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's ThreadedMotoServer) on a free loopback port, for the whole session.

    Yields the endpoint URL. AWS_* variables point at it so that s3fs and boto3 pick it up.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_VARS}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh, empty bucket on the moto server; yields ``s3://<bucket>``."""
    import boto3
    import s3fs

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{_free_port()}"
    name = "".join(c for c in name if c.isalnum() or c == "-")[:62]
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    s3fs.S3FileSystem.clear_instance_cache()
    yield f"s3://{name}"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API (SQLite) for the whole test session (~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def check_train_form_schema(schema: dict) -> None:
    """The retrain form offers dropdowns (test_train_params, and test_deployments on a server)."""
    defs = schema.get("definitions") or schema.get("$defs")
    props = defs["TrainParams"]["properties"]
    assert (
        props["preset"]["enum"] == ["seed", "cpu-small", "tiny", "nuclei", "fnc"]
        and props["preset"]["default"] == "cpu-small"
    )
    for name in ("model", "loss", "precision"):
        assert props[name]["type"] == "string" and props[name]["default"] == "preset", name
        assert "anyOf" not in props[name], name  # a plain enum: a dropdown, not a union
    assert props["precision"]["enum"] == ["preset", "fp32", "bf16"]
    assert "weighted_bce" in props["loss"]["enum"] and "unet" in props["model"]["enum"]
    # the defaults say what the presets use
    assert "cpu-small: unet width 16" in props["model"]["description"]
    assert "cpu-small: 3/5/6" in props["epochs"]["description"]
    assert props["phases"]["items"]["$ref"].endswith("/PhaseConfig")
    assert props["init_model"]["default"] is None  # fine-tuning is optional
    phase = defs["PhaseConfig"]["properties"]
    assert phase["tile_filter"]["enum"] == ["cells", "all"]
    assert phase["epochs"]["type"] == "integer" and phase["shapes"]["type"] == "boolean"


def register_grey_model(root: str) -> str:
    """Register a real Keras model whose probability is the normalised brightness: a 1x1
    convolution averaging the three input planes / 255, declared grey + percentile (so the
    cells of a drawn image are known whatever its bit depth). Returns its folder URI."""
    import keras
    import numpy as np

    from neuroseg import registry

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(1, 1, use_bias=False, name="mean")(inputs)
    model = keras.Model(inputs, outputs)
    model.set_weights([np.full((1, 1, 3, 1), 1 / 765, "f4")])
    return registry.register_model(
        root,
        "grey",
        model=model,
        config={
            "architecture": "mean",
            "tile": 64,
            "min_overlap": 16,
            "threshold": 0.5,
            "min_area": 20,
            "input": {"channels": "grey", "normalization": "percentile"},
        },
        lineage={"purpose": "test"},
    )
