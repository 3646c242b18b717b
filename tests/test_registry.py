"""The model registry: register -> load -> predict round trips, versions, production pointer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from neuroseg import registry, storage
from neuroseg.benchmarks.pipeline import synthetic_tiles
from neuroseg.losses import get_loss
from neuroseg.models import build_model
from neuroseg.registry import ModelNotFoundError
from neuroseg.training import get_preset

VERSION = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
TRAIN = get_preset("tiny").model_dump()


def _checkpoint(path: Path, *, name="unet", seed=0) -> tuple[str, keras.Model]:
    """A compiled model saved with its optimizer, as run_phase writes checkpoints."""
    keras.utils.set_random_seed(seed)
    model = build_model(name, tile=48, width=4, depth=2)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=get_loss("weighted_bce", class_weights=(0.1, 0.9)),
    )
    x, y = synthetic_tiles(2, tile=48)
    out = model.output_shape[1] or 48
    model.train_on_batch(x.astype("f4"), np.zeros((2, out, out, 1), "f4") + (y[:1].mean() > 0))
    model.save(path)
    return str(path), model


def test_register_load_predict_round_trip(tmp_path):
    ckpt, model = _checkpoint(tmp_path / "phase-2.keras")
    lineage = {"dataset_uri": "s3://x/datasets/fnc", "prepared_version": "abc123", "seconds": 1.5}
    uri = registry.register_model(
        str(tmp_path),
        "neuroseg",
        model_file_uri=ckpt,
        config={**TRAIN, "tile": 48},
        lineage=lineage,
    )
    version = uri.rsplit("/", 1)[-1]
    assert uri == registry.model_uri(str(tmp_path), "neuroseg", version) and VERSION.match(version)
    assert sorted(os.listdir(uri)) == [
        "config.json",
        "lineage.json",
        "model.keras",
        "model.onnx",
        "onnx.json",
    ]
    export = storage.read_json(f"{uri}/onnx.json")
    assert export["check"]["max_abs_diff"] <= 1e-4 and export["opset"] >= 13
    config = storage.read_json(f"{uri}/config.json")
    assert {
        k: config[k]
        for k in (
            "architecture",
            "tile",
            "output_size",
            "min_overlap",
            "blend",
            "threshold",
            "min_area",
            "watershed",
        )
    } == {
        "architecture": "unet",
        "tile": 48,
        "output_size": 48,
        "min_overlap": 100,
        "blend": "min",
        "threshold": 0.5,
        "min_area": 0,
        "watershed": False,
    }
    assert config["train"]["phases"] == TRAIN["phases"] and config["version"] == version
    assert config["lineage"]["prepared_version"] == "abc123"
    assert storage.read_json(f"{uri}/lineage.json")["versions"]["keras"] == keras.__version__

    bundle = registry.load_model(uri)
    assert (bundle.name, bundle.version, bundle.uri, bundle.tile) == ("neuroseg", version, uri, 48)
    assert not getattr(bundle.model, "optimizer", None)  # the registry keeps no optimizer state
    tiles, _ = synthetic_tiles(5, tile=48, seed=3)
    expected = model(tiles.astype(np.float32), training=False).numpy()[..., 0]
    for batch_size in (1, 2, 8):
        got = bundle.predict_tiles(tiles, batch_size=batch_size)
        assert got.shape == (5, 48, 48) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert bundle.predict_tiles(tiles[:0]).shape == (0, 48, 48)
    bf16 = registry.load_model(uri, precision="bf16")
    np.testing.assert_allclose(bf16.predict_tiles(tiles), expected, atol=0.05)
    with pytest.raises(ValueError, match="48x48"):
        bundle.predict_tiles(np.zeros((1, 32, 32, 3), np.uint8))

    # the same network on ONNX Runtime: the onnx backend, and auto's choice for an fp32 model
    for backend in ("onnx", "auto"):
        served = registry.load_model(uri, backend=backend)
        assert served.backend == "onnx" and not hasattr(served, "model")
        for batch_size in (1, 8):
            got = served.predict_tiles(tiles, batch_size=batch_size)
            assert got.shape == (5, 48, 48) and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, atol=1e-5)
        assert served.predict_tiles(tiles[:0]).shape == (0, 48, 48)
    assert registry.load_model(uri, backend="auto", precision="bf16").backend == "tf"
    with pytest.raises(ValueError, match="fp32 only"):
        registry.load_model(uri, backend="onnx", precision="bf16")
    with pytest.raises(ValueError, match="backend must be one of"):
        registry.load_model(uri, backend="torch")


def test_register_in_memory_shallow_model_derives_its_sizes(tmp_path):
    model = build_model("shallow", tile=64, width=4)
    uri = registry.register_model(
        str(tmp_path), "seed-cnn", model=model, config={"train": {"model": "shallow"}}, lineage={}
    )
    bundle = registry.load_model(uri)
    assert (bundle.config["architecture"], bundle.tile, bundle.output_size) == ("shallow", 64, 8)
    out = bundle.predict_tiles(np.full((3, 64, 64, 3), 200, np.uint8))
    np.testing.assert_allclose(
        out, model(np.full((3, 64, 64, 3), 200.0, "f4")).numpy()[..., 0], atol=1e-6
    )


def test_precision_follows_the_request_not_the_training(tmp_path):
    model = build_model("unet", width=2, depth=1, tile=16, mixed_precision=True)
    train = {"model": "unet", "width": 2, "depth": 1, "mixed_precision": True}
    uri = registry.register_model(
        str(tmp_path), "m", model=model, config={"tile": 16, "train": train}, lineage={}
    )
    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        bundle = registry.load_model(uri, precision=precision)
        assert bundle.model.get_layer("down0_conv1").compute_dtype == dtype
        assert bundle.predict_tiles(np.zeros((1, 16, 16, 3), np.uint8)).dtype == np.float32


def test_versions_and_production_pointer(tmp_path):
    root = str(tmp_path)
    assert registry.list_versions(root, "neuroseg") == []
    assert registry.production_version(root, "neuroseg") is None
    uris = [
        registry.register_model(
            root,
            "neuroseg",
            model=build_model("unet", width=2, depth=1, tile=16),
            config={"tile": 16},
            lineage={},
        )
        for _ in range(2)
    ]
    versions = [u.rsplit("/", 1)[-1] for u in uris]
    assert registry.list_versions(root, "neuroseg") == sorted(versions)
    storage.write_bytes(f"{root}/models/neuroseg/unfinished/model.keras", b"partial")
    assert len(registry.list_versions(root, "neuroseg")) == 2  # no config.json: not a version

    first = registry.set_production(
        root, "neuroseg", versions[0], reason="first model", metrics={"f1": 0.5}
    )
    assert (
        first["previous"] is None and registry.production_version(root, "neuroseg") == versions[0]
    )
    second = registry.set_production(root, "neuroseg", versions[1], reason="better F1")
    assert second["previous"] == versions[0]
    assert [h["version"] for h in second["history"]] == versions
    assert second["history"][0]["metrics"] == {"f1": 0.5}
    assert registry.production_version(root, "neuroseg") == versions[1]
    assert [p.name for p in (tmp_path / "models" / "neuroseg").iterdir() if p.is_file()] == [
        "production.json"
    ]  # atomic writes leave no temp files
    with pytest.raises(ModelNotFoundError):
        registry.set_production(root, "neuroseg", "19990101T000000Z-deadbeef", reason="x")
    with pytest.raises(ValueError, match="reason"):
        registry.set_production(root, "neuroseg", versions[0], reason=" ")

    assert registry.resolve_model_uri(root, "neuroseg") == uris[1]
    assert registry.resolve_model_uri(root, f"neuroseg@{versions[0]}") == uris[0]
    assert registry.resolve_model_uri(root, uris[0] + "/") == uris[0]
    with pytest.raises(ModelNotFoundError, match="no version"):
        registry.resolve_model_uri(root, "neuroseg@nope")
    registry.write_metrics(uris[0], {"f1": 0.5})
    assert storage.read_json(f"{uris[0]}/metrics.json") == {"f1": 0.5}
    copy = registry.copy_model(uris[0], str(tmp_path / "shipped"))
    assert registry.load_model(copy).version == versions[0]


def test_default_model_location():
    uri = Path(registry.default_model_uri())
    assert uri.parts[-4:] == ("neuroseg", "assets", "models", "default")
    assert uri.parent.parent.parent == Path(registry.__file__).resolve().parent
    if (uri / "config.json").exists():
        assert registry.load_default_model().tile > 0
    else:
        with pytest.raises(ModelNotFoundError, match="no shipped default model"):
            registry.load_default_model()


def test_s3_registry_round_trip(s3_bucket, tmp_path):
    ckpt, model = _checkpoint(tmp_path / "m.keras", seed=1)
    remote = f"{s3_bucket}/work/m.keras"
    storage.copy(ckpt, remote)
    uri = registry.register_model(
        s3_bucket, "neuroseg", model_file_uri=remote, config={**TRAIN, "tile": 48}, lineage={}
    )
    assert uri.startswith(s3_bucket + "/models/neuroseg/")
    registry.set_production(s3_bucket, "neuroseg", uri.rsplit("/", 1)[-1], reason="s3")
    bundle = registry.load_model(registry.resolve_model_uri(s3_bucket, "neuroseg"))
    tiles, _ = synthetic_tiles(2, tile=48)
    np.testing.assert_allclose(
        bundle.predict_tiles(tiles), model(tiles.astype("f4")).numpy()[..., 0], atol=1e-5
    )


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="model name"):
        registry.register_model(
            str(tmp_path),
            "../x",
            model=build_model("unet", width=2, depth=1),
            config={"tile": 16},
            lineage={},
        )
    with pytest.raises(ValueError, match="exactly one"):
        registry.register_model(str(tmp_path), "m", config={}, lineage={})
    with pytest.raises(ModelNotFoundError, match="no such model file"):
        registry.register_model(
            str(tmp_path), "m", model_file_uri=str(tmp_path / "no.keras"), config={}, lineage={}
        )
    with pytest.raises(ValueError, match="tile"):
        registry.register_model(
            str(tmp_path), "m", model=build_model("unet", width=2, depth=1), config={}, lineage={}
        )
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        registry.load_model(str(tmp_path))
    with pytest.raises(ValueError, match="precision"):
        registry.load_model(str(tmp_path), precision="fp8")


def test_import_is_light():
    code = "import sys, neuroseg.registry; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_three_class_model_config_and_predictions(tmp_path):
    from neuroseg.benchmarks.pipeline import write_synthetic_prepared
    from neuroseg.instances import POSTPROCESS_DEFAULTS

    grey = {"channels": "grey", "normalization": "percentile", "percentiles": [1, 99.8]}
    prepared = write_synthetic_prepared(
        str(tmp_path / "prep"), images=1, tiles_per_image=1, tile=32, params={"input": grey}
    )
    model = build_model("unet", width=4, depth=2, tile=32, head="three_class")  # tiny
    train = get_preset("tiny", target="three_class", loss="weighted_cce").model_dump()
    uri = registry.register_model(
        str(tmp_path),
        "nuclei",
        model=model,
        config={**train, "postprocess": {"min_area": 7}},
        lineage={"prepared_uri": prepared},
    )
    config = storage.read_json(f"{uri}/config.json")
    assert config["head"] == "three_class" and config["tile"] == 32
    assert config["input"] == grey  # the model normalises as its training data was
    assert config["postprocess"] == {**POSTPROCESS_DEFAULTS, "min_area": 7}
    assert config["max_whole_pixels"] == registry.WHOLE_IMAGE_PIXELS
    assert config["train"]["target"] == "three_class"
    bundle = registry.load_model(uri)
    assert bundle.channels == 3
    tiles = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    out = bundle.predict_tiles(tiles, batch_size=2)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, model(tiles.astype("f4")).numpy(), atol=1e-5)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    assert bundle.predict_tiles(tiles[:0]).shape == (0, 32, 32, 3)
    image = np.random.default_rng(1).integers(0, 255, (37, 50, 3)).astype(np.uint8)
    whole = bundle.predict_whole(image)  # padded to 40x52 inside, cropped back
    assert whole.shape == (37, 50, 3) and whole.dtype == np.float32
    padded = np.zeros((40, 52, 3), np.uint8)
    padded[:37, :50] = image
    np.testing.assert_allclose(whole, model(padded[None].astype("f4")).numpy()[0, :37, :50], 1e-5)
    bf16 = registry.load_model(uri, precision="bf16")
    assert bf16.predict_tiles(tiles).shape == (3, 32, 32, 3)
    np.testing.assert_allclose(bf16.predict_tiles(tiles), out, atol=0.05)
    # a binary model registered from the same prepared data: binary head, same input entry
    binary = registry.register_model(
        str(tmp_path),
        "fnc",
        model=build_model("unet", width=2, depth=2, tile=32),
        config={"tile": 32},
        lineage={"prepared_uri": prepared},
    )
    config = storage.read_json(f"{binary}/config.json")
    assert config["head"] == "binary" and "postprocess" not in config and config["input"] == grey


def test_a_name_without_production_version_finds_the_model_shipped_under_it(tmp_path, monkeypatch):
    assert Path(registry.shipped_model_uri("nuclei")).parts[-3:] == ("assets", "models", "nuclei")
    shipped = tmp_path / "assets" / "nuclei"
    registry.copy_model(
        registry.register_model(
            str(tmp_path / "build"),
            "nuclei",
            model=build_model("unet", width=2, depth=1, tile=16),
            config={"tile": 16},
            lineage={},
        ),
        str(shipped),
    )
    real = registry.shipped_model_uri
    monkeypatch.setattr(
        registry,
        "shipped_model_uri",
        lambda name: str(shipped) if name == "nuclei" else real(name),
    )
    root = str(tmp_path / "root")
    assert registry.resolve_model_uri(root, "nuclei") == str(shipped)
    uri = registry.register_model(
        root,
        "nuclei",
        model=build_model("unet", width=2, depth=1, tile=16),
        config={"tile": 16},
        lineage={},
    )
    registry.set_production(root, "nuclei", uri.rsplit("/", 1)[-1], reason="trained here")
    assert registry.resolve_model_uri(root, "nuclei") == uri  # the registry's production wins


def test_space_to_depth_model_loads_and_pads_to_its_stride(tmp_path):
    """A space-to-depth U-Net (depth 2: stride 8) loads from its folder in a fresh process's
    way (custom layers registered by the loader), predicts whole images padded to multiples
    of 8, and changes precision with its stem."""
    model = build_model("unet", width=4, depth=2, tile=32, head="three_class", space_to_depth=True)
    train = get_preset(
        "tiny", target="three_class", loss="weighted_cce", space_to_depth=True
    ).model_dump()
    uri = registry.register_model(
        str(tmp_path), "nuclei", model=model, config={**train, "tile": 32}, lineage={}
    )
    bundle = registry.load_model(uri)
    assert any(layer.name == "space_to_depth" for layer in bundle.model.layers)
    image = np.random.default_rng(2).integers(0, 255, (37, 50, 3)).astype(np.uint8)
    whole = bundle.predict_whole(image)  # padded to 40x56 (stride 8), cropped back
    padded = np.zeros((40, 56, 3), np.uint8)
    padded[:37, :50] = image
    want = model(padded[None].astype("f4"), training=False).numpy()[0, :37, :50]
    assert whole.shape == (37, 50, 3)
    np.testing.assert_allclose(whole, want, atol=1e-5)
    bf16 = registry.load_model(uri, precision="bf16", fold=False)
    np.testing.assert_allclose(bf16.predict_whole(image), want, atol=0.05)
