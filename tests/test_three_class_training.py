"""The instance-aware path end to end: a tiny three-class U-Net trained from instance labels,
registered, loaded back and used by segment_image (the path of segment and the nightly run)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from neuroseg import registry, storage
from neuroseg.benchmarks.pipeline import synthetic_tiles, write_synthetic_prepared
from neuroseg.predict import segment_image
from neuroseg.training import PRESETS, get_preset, run_phase, train

GREY = {"channels": "grey", "normalization": "percentile", "percentiles": [1.0, 99.8]}


def _register(tmp_path, results, config, prepared) -> str:
    return registry.register_model(
        str(tmp_path),
        "nuclei",
        model_file_uri=results[-1]["checkpoint_uri"],
        config=config.model_dump(),
        lineage={"prepared_uri": prepared},
    )


def test_tiny_three_class_unet_trains_registers_and_segments(tmp_path):
    prepared = write_synthetic_prepared(
        str(tmp_path / "prepared"),
        images=4,
        tiles_per_image=6,
        tile=32,
        splits=("train", "train", "val", "test"),
        params={"input": GREY},
    )
    phases = [p.model_dump() for p in PRESETS["tiny"].phases]
    phases[-1]["intensity"] = True
    config = get_preset(
        "tiny",
        target="three_class",
        loss="cce_dice",
        boundary_width=1,
        class_weighting="sqrt",
        crop=16,
        phases=phases,
    )
    results = train(prepared, config, checkpoint_dir=str(tmp_path / "ckpt"))
    assert [r["target"] for r in results] == ["three_class"] * 3
    first = results[0]
    assert (
        len(first["class_weights"]) == 3 and first["class_weights"][2] > first["class_weights"][0]
    )
    assert {"loss", "precision", "recall", "val_loss"} <= set(first["history"])
    assert all(np.isfinite(v).all() for r in results for v in r["history"].values())
    assert results[-1]["optimizer_iterations"] == 6

    uri = _register(tmp_path, results, config, prepared)
    saved = storage.read_json(f"{uri}/config.json")
    assert saved["head"] == "three_class" and saved["input"] == GREY and saved["tile"] == 32
    bundle = registry.load_model(uri)
    images, _, truth = synthetic_tiles(1, tile=96, seed=5, max_cells=6, return_labels=True)
    labels, n, prob = segment_image(bundle, images[0])
    assert labels.shape == prob.shape == (96, 96) and labels.dtype == np.int32
    assert prob.dtype == np.float32 and 0.0 <= prob.min() and prob.max() <= 1.0
    assert labels.max() == n and truth.shape == (1, 96, 96)


def test_tiny_centre_unet_trains_and_segments_in_both_precisions(tmp_path):
    """Centre map, separation weights and the space-to-depth stem together, trained for real."""
    prepared = write_synthetic_prepared(
        str(tmp_path / "prepared"), images=3, tiles_per_image=4, tile=32, params={"input": GREY}
    )
    config = get_preset(
        "tiny",
        target="three_class",
        loss="cce_dice",
        boundary_width=1,
        crop=16,
        centre=True,
        loss_params={"separation_weight": 5.0},  # targets: classes, centre, separation
        space_to_depth=True,
    )
    results = train(prepared, config, checkpoint_dir=str(tmp_path / "ckpt"))
    assert all(np.isfinite(v).all() for r in results for v in r["history"].values())
    uri = _register(tmp_path, results, config, prepared)
    saved = storage.read_json(f"{uri}/config.json")
    assert saved["train"]["centre"] is True and saved["postprocess"]["markers"] == "interior"
    assert saved["train"]["loss_params"]["separation_weight"] == 5.0
    assert saved["train"]["space_to_depth"] is True
    image = synthetic_tiles(1, tile=64, seed=3, max_cells=5)[0][0]
    for precision in ("fp32", "bf16"):
        bundle = registry.load_model(uri, precision=precision, fold=False)
        assert bundle.model.output_shape[-1] == 4
        assert bundle.model.get_layer("space_to_depth") is not None
        labels, n, prob = segment_image(bundle, image)
        assert labels.shape == prob.shape == (64, 64) and labels.max() == n
    centre_markers = {**saved["postprocess"], "markers": "centre"}
    storage.write_json(f"{uri}/config.json", {**saved, "postprocess": centre_markers})
    labels, n, _ = segment_image(registry.load_model(uri), image)
    assert labels.shape == (64, 64) and labels.max() == n
    # a checkpoint whose head does not match the configuration is refused with its channels
    with pytest.raises(ValueError, match="predicts 4 channel"):
        run_phase(
            prepared,
            get_preset("tiny", target="three_class", loss="cce_dice", crop=16),
            0,
            checkpoint_uri=str(tmp_path / "other.keras"),
            init_checkpoint=results[-1]["checkpoint_uri"],
        )


def test_three_class_configs_are_validated():
    with pytest.raises(ValidationError, match="three_class takes"):
        get_preset("tiny", target="three_class")  # weighted_bce is a binary loss
    with pytest.raises(ValidationError, match="trains a three_class head"):
        get_preset("tiny", loss="cce_dice")
    with pytest.raises(ValidationError, match="centre needs"):
        get_preset("tiny", centre=True)
    nuclei = PRESETS["nuclei"]
    assert (nuclei.model, nuclei.target, nuclei.loss) == ("unet", "three_class", "cce_dice")
    assert all(p.affine and p.intensity and not p.shapes for p in nuclei.phases)
    steps = sum(p.epochs * p.steps_per_epoch for p in nuclei.phases)
    assert steps * nuclei.phases[0].batch_size == 44_000  # crops seen; see the preset's comment
    assert nuclei.crop == 128 and nuclei.class_weighting == "none"
    assert (nuclei.width, nuclei.depth, nuclei.space_to_depth) == (16, 3, True)
