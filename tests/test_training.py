"""Phased training with real TF on tiny data: checkpoints, resume, reporting, presets."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from neuroseg.benchmarks.pipeline import write_synthetic_prepared
from neuroseg.training import (
    PRESETS,
    PhaseConfig,
    TrainConfig,
    get_preset,
    run_phase,
    training_device,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    return write_synthetic_prepared(
        str(root), images=4, tiles_per_image=4, tile=32, splits=("train", "train", "val", "test")
    )


def _tiny(**overrides) -> TrainConfig:
    return get_preset("tiny", crop=16, **overrides)


def _trainable(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


def test_run_phase_then_resume_restores_weights_and_optimizer(prepared, tmp_path):
    config = _tiny()
    phases = [p.model_dump() for p in config.phases]
    phases[1]["learning_rate"] = 1e-12  # phase 2 barely moves the weights it restored
    config = _tiny(phases=phases)
    seen = []
    first = run_phase(
        prepared,
        config,
        0,
        checkpoint_uri=str(tmp_path / "p0.keras"),
        on_epoch=lambda epoch, logs: seen.append((epoch, logs)),
    )
    assert first["checkpoint_uri"].endswith("p0.keras") and first["optimizer_iterations"] == 2
    assert first["phase"] == "1.1" and first["epochs"] == 1 and first["device"] == "CPU"
    assert set(first["history"]) == {
        "loss",
        "precision",
        "recall",
        "val_loss",
        "val_precision",
        "val_recall",
    }
    assert [e for e, _ in seen] == [1] and seen[0][1]["val_loss"] == first["history"]["val_loss"][0]
    assert first["class_weights"][1] > first["class_weights"][0] and first["val_tiles"] == 4

    second = run_phase(
        prepared,
        config,
        1,
        init_checkpoint=first["checkpoint_uri"],
        checkpoint_uri=str(tmp_path / "p1.keras"),
    )
    assert second["optimizer_iterations"] == 4  # Adam's step count carried over
    before = keras.saving.load_model(first["checkpoint_uri"])
    after = keras.saving.load_model(second["checkpoint_uri"])
    for a, b in zip(_trainable(before), _trainable(after), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    fresh = keras.saving.load_model(first["checkpoint_uri"])
    fresh_moments = [v.numpy() for v in fresh.optimizer.variables]
    assert int(fresh.optimizer.iterations.numpy()) == 2
    assert any(np.abs(m).max() > 0 for m in fresh_moments[2:])  # Adam moments were saved
    assert float(after.optimizer.learning_rate.numpy()) == pytest.approx(1e-12)


def test_shallow_model_trains_on_downscaled_targets(tmp_path):
    root = write_synthetic_prepared(
        str(tmp_path / "p"), images=2, tiles_per_image=4, tile=64, splits=("train", "val")
    )
    config = get_preset("tiny", model="shallow", crop=None, width=8)
    result = run_phase(root, config, 2, checkpoint_uri=str(tmp_path / "s.keras"))
    assert result["architecture"] == "shallow" and result["output_size"] == 8
    assert result["train_tiles"] == 4 and np.isfinite(result["history"]["val_loss"]).all()


_SAME_SEED = """
import json, sys
from neuroseg.training import get_preset, run_phase
prepared, out = sys.argv[1], sys.argv[2]
config = get_preset("tiny", crop=16, seed=5)
runs = [run_phase(prepared, config, 2, checkpoint_uri=f"{out}/{i}.keras") for i in range(2)]
print(json.dumps([r["history"] for r in runs]))
"""


@pytest.mark.slow
def test_same_seed_same_model(prepared, tmp_path):
    """Two trainings with one seed in one worker process give the same history and weights.

    Run in a fresh interpreter, as a training worker runs. In the test session's own process
    it failed once in a full run on 2026-12-07 (first-epoch losses 0.28 and 0.21) and passed
    alone, after the neighbouring test files and under CPU load. The likely cause: Keras draws
    its initializers' seeds from Python's global ``random`` (which ``set_random_seed`` resets),
    and threads left by earlier tests (Prefect's log and event workers, moto's server) share
    that generator."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _SAME_SEED, prepared, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    histories = json.loads(out.stdout.strip().splitlines()[-1])
    assert histories[0] == histories[1] and histories[0]["loss"]
    a, b = (keras.saving.load_model(str(tmp_path / f"{i}.keras")) for i in range(2))
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


def test_early_stopping_stops_a_flat_phase(prepared, tmp_path):
    flat = [
        PhaseConfig(
            name="flat",
            epochs=6,
            learning_rate=1e-12,
            batch_size=4,
            tile_filter="all",
            steps_per_epoch=1,
        )
    ]
    config = _tiny(phases=flat, batch_norm=False, early_stopping_patience=1)
    result = run_phase(prepared, config, 0, checkpoint_uri=str(tmp_path / "e.keras"))
    assert result["epochs"] == 2  # no improvement after the first epoch


def test_presets():
    seed = PRESETS["seed"]
    assert (seed.model, seed.loss, seed.positive_scale, seed.crop) == (
        "shallow",
        "weighted_bce",
        0.33,
        None,
    )
    assert [
        (p.name, p.epochs, p.tile_filter, p.shapes, p.affine, p.batch_size, p.learning_rate)
        for p in seed.phases
    ] == [
        ("1.1", 5, "cells", False, False, 50, 1e-3),
        ("1.2", 10, "cells", True, False, 50, 1e-3),
        ("2", 5, "all", True, True, 50, 1e-3),
    ]
    small = PRESETS["cpu-small"]
    assert small.model == "unet" and small.crop and all(p.steps_per_epoch for p in small.phases)
    assert [p.name for p in small.phases] == ["1.1", "1.2", "2"]
    changed = get_preset("seed", seed=7, mixed_precision=True)
    assert changed.seed == 7 and changed.mixed_precision and PRESETS["seed"].seed == 0
    assert TrainConfig.model_validate(changed.model_dump()) == changed


def test_config_validation():
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValidationError, match="crop"):
        get_preset("seed", crop=128)  # the shallow CNN needs whole tiles
    with pytest.raises(ValidationError, match="unknown loss"):
        get_preset("tiny", loss="mse")
    with pytest.raises(ValidationError, match="no parameter"):
        get_preset("tiny", loss="dice", loss_params={"gamma": 2.0})
    with pytest.raises(ValidationError):
        PhaseConfig(name="x", epochs=0, learning_rate=1e-3, batch_size=2)
    with pytest.raises(ValidationError):
        TrainConfig(model="unet", phases=[], typo=1)


def test_run_phase_bad_arguments(prepared, tmp_path):
    with pytest.raises(ValueError, match="phase_index"):
        run_phase(prepared, _tiny(), 3, checkpoint_uri=str(tmp_path / "x.keras"))
    with pytest.raises(ValueError, match=r"\.keras"):
        run_phase(prepared, _tiny(), 0, checkpoint_uri=str(tmp_path / "x.h5"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        run_phase(
            prepared,
            _tiny(),
            1,
            init_checkpoint=str(tmp_path / "none.keras"),
            checkpoint_uri=str(tmp_path / "x.keras"),
        )


def test_training_device_names_the_device():
    assert re.fullmatch(r"CPU|GPU:0 \(.+\)", training_device())
