"""The retrain form's parameters become a validated training configuration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.train import TrainParams, build_config
from neuroseg.training import PRESETS
from tests.conftest import check_train_form_schema


def test_preset_unchanged_without_overrides():
    assert build_config(TrainParams(preset="seed")) == PRESETS["seed"]


def test_switching_architecture_resets_its_width_and_crop():
    cfg = build_config(TrainParams(preset="cpu-small", model="shallow"))
    # the seed CNN at its own width (196 first filters) on whole tiles, not a 16-wide copy
    assert cfg.model == "shallow" and cfg.width is None and cfg.crop is None
    assert [p.steps_per_epoch for p in cfg.phases] == [32, 32, 32]


def test_overrides_apply_to_every_phase():
    cfg = build_config(TrainParams(preset="cpu-small", epochs=2, learning_rate=1e-4, loss="dice"))
    assert all(p.epochs == 2 and p.learning_rate == 1e-4 for p in cfg.phases)
    assert cfg.loss == "dice" and cfg.model == "unet" and cfg.width == 16


def test_centre_override_and_its_checks():
    assert build_config(TrainParams(preset="nuclei", centre=True)).centre is True
    assert build_config(TrainParams(preset="nuclei", centre=None)) == PRESETS["nuclei"]
    weighted = build_config(TrainParams(preset="nuclei", centre=True, centre_weight=4))
    assert weighted.loss_params == {**PRESETS["nuclei"].loss_params, "centre_weight": 4.0}
    with pytest.raises(ValueError, match="takes no parameter"):
        build_config(TrainParams(preset="cpu-small", centre_weight=2))  # a binary loss
    with pytest.raises(ValueError, match="centre needs"):
        build_config(TrainParams(preset="cpu-small", centre=True))  # a binary preset


def test_separation_weight_joins_the_loss_parameters():
    both = build_config(TrainParams(preset="nuclei", centre_weight=2, separation_weight=5))
    assert both.loss_params == {
        **PRESETS["nuclei"].loss_params,
        "centre_weight": 2.0,
        "separation_weight": 5.0,
    }
    with pytest.raises(ValueError, match="takes no parameter"):
        build_config(TrainParams(preset="cpu-small", separation_weight=5))  # a binary loss
    with pytest.raises(ValidationError):
        TrainParams(preset="nuclei", separation_weight=-1)


def test_invalid_values_are_refused():
    with pytest.raises(ValidationError):
        TrainParams(preset="huge")
    with pytest.raises(ValueError, match="divisible"):
        build_config(TrainParams(preset="cpu-small", crop=100))


def test_form_offers_dropdowns_and_typed_phases():
    """The retrain form's schema (what the Prefect UI renders): enums, not free text."""
    from prefect.utilities.callables import parameter_schema

    from flows.train import train
    from neuroseg.losses import LOSSES
    from neuroseg.models import ARCHITECTURES

    schema = parameter_schema(train.fn).model_dump()
    check_train_form_schema(schema)
    assert schema["definitions"]["TrainParams"]["properties"]["preset"]["enum"] == list(PRESETS)
    assert set(LOSSES) | {"preset"} == set(
        schema["definitions"]["TrainParams"]["properties"]["loss"]["enum"]
    )
    assert ["preset", *ARCHITECTURES] == (
        schema["definitions"]["TrainParams"]["properties"]["model"]["enum"]
    )


def test_former_call_styles_still_work():
    """The CLI, the demo and scripts pass None for "not given" and mixed_precision=True."""
    p = TrainParams(preset="cpu-small", model=None, loss=None, phases=None, mixed_precision=True)
    cfg = build_config(p)
    assert p.precision == "bf16" and cfg.mixed_precision is True
    assert cfg.model == "unet" and cfg.loss == "weighted_bce"
    assert cfg.phases == PRESETS["cpu-small"].phases
    assert build_config(TrainParams(preset="seed", precision="fp32")) == PRESETS["seed"]
    with pytest.raises(ValidationError):
        TrainParams(loss="mse")


def test_fine_tuning_refuses_a_model_without_the_centre_head(tmp_path):
    """The shipped nuclei model has no centre map: a centre run cannot start from it."""
    import json

    from flows.train import _init_model
    from neuroseg.training import get_preset

    cfg = json.loads(get_preset("nuclei", centre=True).model_dump_json())
    with pytest.raises(ValueError, match="has centre False, the run wants True"):
        _init_model(str(tmp_path), "nuclei", cfg, {"uri": str(tmp_path / "prepared")})


def test_architecture_overrides_and_the_stem_divisibility():
    cfg = build_config(TrainParams(preset="nuclei", width=8, depth=4, space_to_depth=False))
    assert (cfg.width, cfg.depth, cfg.space_to_depth) == (8, 4, False)
    assert cfg.loss_params == PRESETS["nuclei"].loss_params  # the rest is the preset's
    assert PRESETS["nuclei"].space_to_depth is True
    # crop 48 is divisible by 2**depth = 16 but not by 32, the stem's stride at depth 4
    assert build_config(TrainParams(preset="nuclei", crop=48, depth=4, space_to_depth=False))
    with pytest.raises(ValueError, match="divisible by 32"):
        build_config(TrainParams(preset="nuclei", crop=48, depth=4))
    with pytest.raises(ValueError, match="space_to_depth needs"):
        build_config(TrainParams(preset="seed", space_to_depth=True))
    with pytest.raises(ValidationError):
        TrainParams(preset="nuclei", depth=7)


def test_fine_tuning_refuses_a_model_with_another_stem(tmp_path):
    import json

    from flows.train import _init_model
    from neuroseg.training import get_preset

    cfg = json.loads(get_preset("nuclei", space_to_depth=False).model_dump_json())
    with pytest.raises(ValueError, match="has space_to_depth True, the run wants False"):
        _init_model(str(tmp_path), "nuclei", cfg, {"uri": str(tmp_path / "prepared")})


@pytest.mark.parametrize("name", ["fnc", "nuclei"])
def test_a_shipped_model_fine_tunes_with_its_own_preset(tmp_path, name):
    """`neuroseg train --preset fnc --init-model fnc` (and nuclei): the preset is the shipped
    model's network, so a lab's retraining from the UI starts from the shipped weights."""
    import json

    from flows.train import _init_model
    from neuroseg import registry, storage
    from neuroseg.training import get_preset

    folder = registry.shipped_model_uri(name)
    if not storage.exists(storage.join(folder, "config.json")):
        pytest.skip(f"no shipped {name} model in this checkout")
    model_input = storage.read_json(storage.join(folder, "config.json"))["input"]
    prepared = tmp_path / "prepared"
    storage.write_json(str(prepared / "summary.json"), {"params": {"input": model_input}})
    cfg = json.loads(get_preset(name).model_dump_json())
    init = _init_model(str(tmp_path), name, cfg, {"uri": str(prepared)})
    assert init["uri"].rstrip("/") == folder.rstrip("/")
    assert init["checkpoint_uri"].endswith("model.keras")
