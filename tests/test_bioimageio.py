"""bioimage.io model packages (:mod:`neuroseg.serving.bioimageio`, issue 27 part 4)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from neuroseg.serving import bioimageio as bio

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BBBC039_IMAGE = SHARED / "nuclei" / "bbbc039" / "images"
FNC_IMAGE = SHARED / "fnc-samples" / "red" / "images" / "MAR32C2R3_PVHr_200x_r.png"

# a foreign package: a plain U-Net from somewhere else, valid-looking, no config.neuroseg
FOREIGN_RDF = {
    "format_version": "0.5.4",
    "type": "model",
    "name": "some other unet",
    "description": "a U-Net that predicts a foreground probability",
    "license": "MIT",
    "authors": [{"name": "someone"}],
    "inputs": [{"id": "raw", "axes": [{"type": "batch"}, {"type": "channel"}]}],
    "outputs": [{"id": "fg", "axes": [{"type": "batch"}, {"type": "channel"}]}],
    "weights": {"torchscript": {"source": "weights.pt", "pytorch_version": "2.4"}},
    "config": {"stardist": {"n_rays": 32}},
}


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _our_package(path: Path, *, onnx_bytes: bytes = b"fake onnx", record_sha: str | None = None):
    """A package shaped like export_package's, without TensorFlow: fake network bytes."""
    sha = record_sha or hashlib.sha256(onnx_bytes).hexdigest()
    rdf = {
        **FOREIGN_RDF,
        "name": "neuroseg nuclei U-Net",
        "documentation": {"source": "README.md"},
        "config": {
            "neuroseg": {
                "format": bio.PACKAGE_FORMAT,
                "config": {"architecture": "unet", "tile": 256, "output_size": 256, "name": "x"},
                "files": {"model.onnx": "neuroseg_model.onnx", "onnx.json": "neuroseg_onnx.json"},
            }
        },
    }
    return _zip(
        path,
        {
            "rdf.yaml": yaml.safe_dump(rdf).encode(),
            "README.md": b"# card\n",
            "neuroseg_model.onnx": onnx_bytes,
            "neuroseg_onnx.json": json.dumps({"sha256": sha}).encode(),
        },
    )


# ----------------------------------------------------------------------------- fast


def test_import_is_light():
    code = (
        "import sys, neuroseg.serving.bioimageio; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'bioimageio', 'onnxruntime', 'onnx')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_foreign_package_is_refused_in_one_line(tmp_path):
    package = _zip(
        tmp_path / "other.zip",
        {"rdf.yaml": yaml.safe_dump(FOREIGN_RDF).encode(), "weights.pt": b"\0" * 16},
    )
    with pytest.raises(ValueError, match="neuroseg cannot post-process") as info:
        bio.unpack_package(str(package), str(tmp_path / "out"))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(package))
    assert "torchscript" in message and "some other unet" in message
    assert not (tmp_path / "out").exists()


def test_foreign_package_folder_is_refused(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "rdf.yaml").write_text(yaml.safe_dump(FOREIGN_RDF))
    with pytest.raises(ValueError, match="neuroseg cannot post-process"):
        bio.unpack_package(str(tmp_path / "pkg"))


@pytest.mark.parametrize(
    "files,match",
    [
        ({"README.md": b"x"}, "no rdf.yaml"),
        ({"rdf.yaml": b"type: [unclosed"}, "not valid YAML"),
        ({"rdf.yaml": yaml.safe_dump({"type": "dataset"}).encode()}, "not a bioimage.io model"),
    ],
)
def test_not_a_model_package(tmp_path, files, match):
    with pytest.raises(ValueError, match=match) as info:
        bio.unpack_package(str(_zip(tmp_path / "p.zip", files)))
    assert "\n" not in str(info.value)


def test_damaged_zip(tmp_path):
    not_zip = tmp_path / "a.zip"
    not_zip.write_bytes(b"this is no zip file")
    with pytest.raises(ValueError, match="not a readable zip file"):
        bio.unpack_package(str(not_zip))
    whole = _our_package(tmp_path / "b.zip").read_bytes()
    truncated = tmp_path / "c.zip"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="not a readable zip file"):
        bio.unpack_package(str(truncated))
    with pytest.raises(ValueError, match="no such package"):
        bio.unpack_package(str(tmp_path / "missing.zip"))


def test_damaged_member(tmp_path):
    package = _our_package(tmp_path / "p.zip", onnx_bytes=b"network " * 64)
    data = bytearray(package.read_bytes())
    at = data.find(b"network network")
    data[at : at + 8] = b"XXXXXXXX"  # stored uncompressed: the CRC no longer matches
    package.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged zip"):
        bio.unpack_package(str(package), str(tmp_path / "out"))


def test_unpack_our_package_and_reuse_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROSEG_BIOIMAGEIO_CACHE", str(tmp_path / "cache"))
    package = _our_package(tmp_path / "p.zip")
    folder = bio.unpack_package(str(package))
    assert folder.startswith(str(tmp_path / "cache"))
    assert sorted(os.listdir(folder)) == ["MODEL_CARD.md", "config.json", "model.onnx", "onnx.json"]
    assert json.loads(Path(folder, "config.json").read_text())["tile"] == 256
    assert Path(folder, "model.onnx").read_bytes() == b"fake onnx"
    stamp = os.stat(Path(folder, "onnx.json")).st_mtime_ns
    assert bio.unpack_package(str(package)) == folder  # the same zip: the same folder, reused
    assert os.stat(Path(folder, "onnx.json")).st_mtime_ns == stamp
    mine = bio.unpack_package(str(package), str(tmp_path / "mine"))  # a folder of the caller's
    assert mine == str(tmp_path / "mine") and Path(mine, "onnx.json").is_file()
    assert not [p for p in os.listdir(tmp_path / "cache") if p.startswith(".unpack-")]


def test_unpack_checks_the_network_against_its_record(tmp_path):
    package = _our_package(tmp_path / "p.zip", record_sha="0" * 64)
    with pytest.raises(ValueError, match="does not match the sha256"):
        bio.unpack_package(str(package), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_declared_preprocessing_is_neurosegs_percentile_normalisation():
    """The spec's scale_range + clip + scale_linear (as _preprocess computes it, and as the
    test output is made) gives neuroseg's own model input to float rounding."""
    from neuroseg.normalize import input_spec, model_input

    rng = np.random.default_rng(0)
    image = (rng.gamma(2.0, 300.0, (96, 128)) + 100).astype(np.uint16)  # 12-bit-like
    spec = input_spec({"channels": "grey", "normalization": "percentile"})
    ours = model_input(image, spec)
    declared = bio._preprocess(image.astype(np.float32)[None, ..., None], spec)[0]
    assert ours.shape == (96, 128, 3) and declared.shape == (96, 128, 1)
    np.testing.assert_allclose(declared[..., 0], ours[..., 0], atol=1e-3)


def test_grey_onnx_replicates_the_channel():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", "h", "w", 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "h", "w", 3])
    scale = helper.make_tensor("k", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    graph = helper.make_graph([helper.make_node("Mul", ["image", "k"], ["out"])], "g", [x], [y])
    graph.initializer.append(scale)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    grey = bio._grey_onnx(model.SerializeToString())
    session = ort.InferenceSession(grey, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "image"
    assert session.get_inputs()[0].shape[-1] == 1
    a = np.arange(12, dtype=np.float32).reshape(1, 2, 6, 1)
    out = session.run(None, {"image": a})[0]
    np.testing.assert_array_equal(out, a * np.array([1.0, 2.0, 3.0], np.float32))
    assert onnx.load_from_string(grey).graph.node[0].op_type == "Concat"


def test_licence_and_citations_follow_the_card():
    assert bio._licence("images are **CC BY-SA 4.0**: shared alike") == "CC-BY-SA-4.0"
    assert bio._licence("BBBC039 v1 ... CC0") == "CC-BY-4.0"
    cites = bio._citations("BBBC039 v1 and the Data Science Bowl 2018 (BBBC038)")
    assert [c["doi"] for c in cites] == [
        "10.1002/cyto.a.23863",
        "10.1038/s41592-019-0612-7",
        "10.1007/978-3-319-24574-4_28",
    ]


# ----------------------------------------------------------------------------- slow


def _shipped_copy(name: str, tmp_path: Path) -> Path:
    from neuroseg.registry import shipped_model_uri
    from neuroseg.serving.onnx import export_onnx, onnx_info

    folder = tmp_path / name
    shutil.copytree(shipped_model_uri(name), folder)
    if onnx_info(str(folder)) is None:
        export_onnx(str(folder))
    return folder


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not in this checkout")
@pytest.mark.parametrize("name", ["nuclei", "default"])
def test_shipped_model_package(name, tmp_path, monkeypatch):
    """Export a shipped model: the spec validates it, bioimageio.core's own model test passes
    (in process and as the ``bioimageio test`` command), and the package runs in neuroseg to
    the original folder's label images on a real image."""
    pytest.importorskip("bioimageio.core")
    from bioimageio.spec import load_description

    from neuroseg.images import read_native
    from neuroseg.predict import segment_image
    from neuroseg.registry import load_model

    image_path = sorted(BBBC039_IMAGE.glob("*.png"))[0] if name == "nuclei" else FNC_IMAGE
    if not image_path.is_file():
        pytest.skip(f"{image_path} is not in this checkout")
    monkeypatch.setenv("NEUROSEG_BIOIMAGEIO_CACHE", str(tmp_path / "cache"))
    times = {}
    start = time.perf_counter()
    folder = _shipped_copy(name, tmp_path)
    times["copy"] = time.perf_counter() - start
    image = read_native(str(image_path))
    out = tmp_path / f"{name}.zip"

    start = time.perf_counter()
    result = bio.export_package(str(folder), str(out), sample=image)
    times["export+core test"] = time.perf_counter() - start
    assert result["validation"] == "passed" and result["test"] == "passed"
    assert result["weights"] == ["onnx", "tensorflow_saved_model_bundle"]
    assert result["bytes"] == out.stat().st_size and len(result["sha256"]) == 64

    bio._bioimageio_compat()
    descr = load_description(str(out))
    assert descr.validation_summary.status == "valid-format", descr.validation_summary
    assert str(descr.format_version).startswith("0.5")
    steps = [p.id for p in descr.inputs[0].preprocessing if p.id != "ensure_dtype"]
    assert steps == ["scale_range", "clip", "scale_linear"]
    assert descr.outputs[0].axes[-1].channel_names == ["background", "interior", "boundary"]
    assert str(descr.license) == ("CC-BY-4.0" if name == "nuclei" else "CC-BY-SA-4.0")
    dois = {str(c.doi) for c in descr.cite}
    assert "10.1002/cyto.a.23863" in dois
    if name == "default":
        assert "10.1038/s41598-021-01929-5" in dois
        assert descr.config.model_extra["neuroseg"]["input_scale"] == 0.5

    # bioimage.io's own command line, ``bioimageio test`` (with the pydantic fix applied)
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "neuroseg.serving.bioimageio", "test", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    times["bioimageio test"] = time.perf_counter() - start
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    start = time.perf_counter()
    unpacked = bio.unpack_package(str(out))
    assert Path(unpacked, "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    assert Path(unpacked, "model.keras").read_bytes() == (folder / "model.keras").read_bytes()
    original, _, _ = segment_image(load_model(str(folder), backend="onnx"), image)
    labels, _, _ = segment_image(load_model(unpacked, backend="onnx"), image)
    times["round trip"] = time.perf_counter() - start
    assert labels.max() > 0
    np.testing.assert_array_equal(labels, original)
    print(name, {k: round(v, 1) for k, v in times.items()})


def test_a_package_runs_by_name_and_imports_into_the_registry(tmp_path, capsys):
    """`export bioimageio` -> `--model bioimageio:FILE.zip` and `import-model` (the registry
    import), on a tiny registered model: the same cells as the folder it came from."""
    import pandas as pd

    from neuroseg import registry
    from neuroseg.cli import main
    from tests.conftest import register_grey_model
    from tests.test_serving import _grey_png

    uri = register_grey_model(str(tmp_path / "reg"))
    package = tmp_path / "grey.zip"
    assert main(["export", "bioimageio", uri, "--out", str(package)]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["test"] == "passed" and "onnx" in exported["weights"]

    image = _grey_png(tmp_path)
    runs = {"folder": uri, "package": f"bioimageio:{package}"}
    for label, model in runs.items():
        assert (
            main(["segment", image, "--model", model, "--out", str(tmp_path / f"{label}.pq")]) == 0
        )
    folder, packaged = (pd.read_parquet(tmp_path / f"{k}.pq") for k in runs)
    assert len(folder) > 3
    cols = ["cell_id", "area_px", "centroid_x", "centroid_y", "model_version"]
    pd.testing.assert_frame_equal(folder[cols], packaged[cols])

    root = str(tmp_path / "lab")
    args = ["import-model", f"bioimageio:{package}", "--root", root, "--name", "lab"]
    assert main([*args, "--promote"]) == 0
    assert "(production)" in capsys.readouterr().out
    version = uri.rstrip("/").rsplit("/", 1)[-1]
    served = registry.resolve_model_uri(root, "lab")
    assert served == registry.model_uri(root, "lab", version)
    assert registry.load_model(served, backend="auto").backend == "onnx"
    assert main(args) == 0  # importing it again changes nothing
    assert registry.list_versions(root, "lab") == [version]
