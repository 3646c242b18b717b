"""Serving without TensorFlow: ONNX exports, the onnx backend, and a worker with no TensorFlow.

The worker tests run neuroseg in a fresh Python process in which TensorFlow, Keras and tf2onnx
cannot be imported (a meta-path finder refuses them, as if ``pip install "neuroseg[serve]"``
had left them out), so every import on the path a nightly worker takes is exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroseg import registry, storage
from neuroseg.serving import onnx as nonnx

REPO = Path(__file__).resolve().parents[1]
BLOCKER = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class _NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {"tensorflow", "keras", "tf2onnx", "tf_keras"}:
                raise ModuleNotFoundError(f"No module named {name!r} (a serve install)", name=name)
            return None

    sys.meta_path.insert(0, _NoTensorFlow())
    """
)


def _serve_python(
    tmp_path: Path, code: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that cannot import TensorFlow, Keras or tf2onnx."""
    site = tmp_path / "serve-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    full.setdefault("PREFECT_HOME", str(tmp_path / "prefect-home"))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full,
        timeout=600,
        cwd=tmp_path,
    )


def _grey_png(tmp_path: Path, name: str = "field.png", seed: int = 4) -> str:
    """A 12-bit grey field of 12 separate bright discs (nuclei of radius 7-11 px) on a dim noisy
    background, as a 16-bit PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[:256, :320]
    image = rng.normal(300, 30, (256, 320))
    for k in range(12):
        cy, cx = 40 + 60 * (k // 4) + rng.integers(-8, 9), 40 + 80 * (k % 4) + rng.integers(-8, 9)
        r = rng.uniform(7, 11)
        image[(rows - cy) ** 2 + (cols - cx) ** 2 <= r * r] += rng.uniform(1500, 3000)
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 4095).astype(np.uint16)).save(path)
    return str(path)


def test_the_blocker_really_hides_tensorflow(tmp_path):
    out = _serve_python(tmp_path, "import tensorflow")
    assert out.returncode != 0 and "a serve install" in out.stderr


def test_a_worker_without_tensorflow_segments_with_the_shipped_model(tmp_path):
    image = _grey_png(tmp_path)
    code = f"""
        import sys
        import neuroseg, neuroseg.cli, flows.infer, flows.evaluate  # the worker's imports
        from neuroseg.cli import main

        args = ["segment", {image!r}, "--model", "nuclei"]
        assert main([*args, "--out", "cells.parquet", "--labels", "labels"]) == 0
        assert main([*args, "--out", "tf.parquet", "--backend", "tf"]) == 2
        heavy = sorted({{m.partition(".")[0] for m in sys.modules}} & {{"tensorflow", "keras"}})
        print("HEAVY", heavy)
    """
    out = _serve_python(tmp_path, code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout
    # the tf backend is refused in one line naming the reason
    errors = [line for line in out.stderr.splitlines() if line.startswith("neuroseg: error:")]
    assert len(errors) == 1 and "needs TensorFlow" in errors[0] and "backend onnx" in errors[0]
    cells = pd.read_parquet(tmp_path / "cells.parquet")
    shipped = storage.read_json(os.path.join(registry.shipped_model_uri("nuclei"), "config.json"))
    assert len(cells) > 3 and set(cells["model_version"]) == {shipped["version"]}
    assert not (tmp_path / "tf.parquet").exists()


@pytest.mark.slow
def test_the_nightly_flow_runs_in_a_worker_without_tensorflow(tmp_path, prefect_api):
    from prefect.settings import PREFECT_API_URL

    root = tmp_path / "root"
    for i in range(2):
        _grey_png(root / "uploads" / "P001", f"P001_{i}.png", seed=i)
    code = f"""
        import sys
        from neuroseg.cli import main

        rc = main(["infer", "--root", {str(root)!r}, "--model", "nuclei"])
        heavy = sorted({{m.partition(".")[0] for m in sys.modules}} & {{"tensorflow", "keras"}})
        print("RC", rc, "HEAVY", heavy)
    """
    out = _serve_python(tmp_path, code, env={"PREFECT_API_URL": PREFECT_API_URL.value()})
    assert "RC 0 HEAVY []" in out.stdout, (out.stdout[-2000:], out.stderr[-3000:])
    cells = pd.read_parquet(root / "cells")
    shipped = storage.read_json(os.path.join(registry.shipped_model_uri("nuclei"), "config.json"))
    assert cells["image_id"].nunique() == 2
    assert set(cells["model_version"]) == {shipped["version"]}


def test_export_onnx_adds_a_checked_export_to_an_older_folder(tmp_path, capsys):
    from neuroseg.cli import main
    from tests.conftest import register_grey_model

    uri = register_grey_model(str(tmp_path))
    assert nonnx.onnx_info(uri)["check"]["max_abs_diff"] <= nonnx.CHECK_TOLERANCE
    for name in ("onnx.json", "model.onnx"):  # a folder registered before ONNX exports
        os.remove(os.path.join(uri, name))
    assert registry.load_model(uri, backend="auto").backend == "tf"
    with pytest.raises(registry.ModelNotFoundError, match="neuroseg export onnx"):
        registry.load_model(uri, backend="onnx")

    assert main(["export", "onnx", uri]) == 0
    assert "wrote" in capsys.readouterr().out
    info = json.loads(Path(uri, "onnx.json").read_text())
    assert info["sha256"] == storage.sha256_bytes(Path(uri, "model.onnx").read_bytes())
    assert main(["export", "onnx", uri]) == 0 and "already had" in capsys.readouterr().out

    image = (np.random.default_rng(0).random((70, 90)) * 4095).astype(np.uint16)
    from neuroseg.predict import predict_image

    tf_prob = predict_image(registry.load_model(uri, backend="tf"), image)
    onnx_bundle = registry.load_model(uri, backend="auto")
    assert onnx_bundle.backend == "onnx"
    np.testing.assert_allclose(predict_image(onnx_bundle, image), tf_prob, atol=1e-5)

    # a damaged export is refused, naming the file
    Path(uri, "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match=r"model\.onnx: its sha256 differs"):
        registry.load_model(uri, backend="onnx")
    assert main(["export", "bioimageio", uri]) == 2
    assert "needs --out" in capsys.readouterr().err


def test_a_copied_model_keeps_its_export(tmp_path):
    from tests.conftest import register_grey_model

    uri = register_grey_model(str(tmp_path / "reg"))
    copy = registry.copy_model(uri, str(tmp_path / "copy"))
    assert registry.load_model(copy, backend="onnx").version == uri.rsplit("/", 1)[-1]


@pytest.mark.slow
@pytest.mark.fnc
def test_onnx_gives_the_same_cells_as_tensorflow_on_real_images(fnc_root, nuclei_root):
    from neuroseg.benchmarks.serving import same_cells

    nuclei = sorted((nuclei_root / "bbbc039" / "images").glob("*.png"))[:8]
    fnc = sorted(fnc_root.glob("*/images/*"))
    for name, images in (("nuclei", nuclei), ("default", fnc)):
        result = same_cells(registry.shipped_model_uri(name), [str(p) for p in images])
        assert result["tf_objects"] > len(images), name  # real cells were found
        assert result["unmatched"] == 0, (name, result["images"])
        assert result["matched"] == result["tf_objects"] == result["onnx_objects"]


def test_shipped_models_carry_checked_onnx_exports():
    for name in ("default", "nuclei"):
        folder = registry.shipped_model_uri(name)
        info = nonnx.onnx_info(folder)
        config = storage.read_json(os.path.join(folder, "config.json"))
        assert info is not None, f"{name}: no onnx.json"
        assert info["model_version"] == config["version"]
        assert info["check"]["max_abs_diff"] <= nonnx.CHECK_TOLERANCE
        data = Path(folder, "model.onnx").read_bytes()
        assert storage.sha256_bytes(data) == info["sha256"]


def test_backend_errors_are_one_line(tmp_path):
    from neuroseg.cli import main

    folder = tmp_path / "m"
    shutil.copytree(registry.shipped_model_uri("nuclei"), folder)
    (folder / "model.keras").unlink()
    # an ONNX-only folder (e.g. an unpacked package): auto serves it with ONNX Runtime
    assert registry.load_model(str(folder), backend="auto").backend == "onnx"
    with pytest.raises(registry.ModelNotFoundError, match="use backend onnx"):
        registry.load_model(str(folder), backend="tf")
    with pytest.raises(SystemExit):
        main(["segment", "x.png", "--out", "o.parquet", "--backend", "torch"])


def test_a_stale_export_is_not_served(tmp_path):
    """model.keras replaced after the export (config.json names another version): auto falls
    back to TensorFlow and onnx refuses, naming the fix."""
    folder = tmp_path / "m"
    shutil.copytree(registry.shipped_model_uri("nuclei"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["version"] = "20991231T000000Z-00000000"
    (folder / "config.json").write_text(json.dumps(config))
    assert registry.load_model(str(folder), backend="auto").backend == "tf"
    with pytest.raises(ValueError, match=r"exported from version .* --force"):
        registry.load_model(str(folder), backend="onnx")
    nonnx.export_onnx(str(folder), force=True)
    assert registry.load_model(str(folder), backend="auto").backend == "onnx"
