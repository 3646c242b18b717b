"""The training scripts' own helpers (``scripts/train_nuclei_model.py``,
``scripts/train_fnc_model.py``): what they write into the shipped models' cards must say how to
rebuild the model and add up. The scripts themselves train for many minutes and are run by hand
(``--smoke`` checks them end to end); these tests need no training."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from neuroseg import registry
from neuroseg.metrics import prf

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nuclei_script():
    return _script("train_nuclei_model")


@pytest.fixture(scope="module")
def fnc_script():
    return _script("train_fnc_model")


def test_reproduce_flags_keep_what_shapes_the_model(nuclei_script):
    argv = [
        "--work", "/tmp/w", "--epochs", "14,38,24", "--out=/tmp/o", "--no-tta",
        "--small-object-area", "50", "--nuclei", "/data", "--precision", "bf16",
    ]  # fmt: skip
    assert nuclei_script._reproduce_flags(argv) == [
        "--epochs", "14,38,24", "--small-object-area", "50", "--precision", "bf16",
    ]  # fmt: skip


def test_reproduce_flags_of_a_model_scored_again_are_its_training_runs(nuclei_script, tmp_path):
    """``--from-model`` scores a finished model again: the card's command is the flags of the
    run that trained it (kept in its scores.json), plus this run's; unknown when not kept."""
    argv = ["--work", "/tmp/w", "--from-model", str(tmp_path), "--no-tta"]
    assert nuclei_script._reproduce_flags(argv, str(tmp_path)) is None  # no scores.json
    (tmp_path / "scores.json").write_text(json.dumps({"model": "nuclei@x"}))
    assert nuclei_script._reproduce_flags(argv, str(tmp_path)) is None  # older: no flags kept
    (tmp_path / "scores.json").write_text(json.dumps({"reproduce_flags": ["--epochs", "7,19,12"]}))
    assert nuclei_script._reproduce_flags([*argv, "--channel", "0"], str(tmp_path)) == [
        "--epochs", "7,19,12", "--channel", "0",
    ]  # fmt: skip


def test_shipped_nuclei_card_names_the_flags_its_scores_record():
    folder = Path(registry.shipped_model_uri("nuclei"))
    if not (folder / "scores.json").exists():
        pytest.skip("no shipped nuclei model in this checkout")
    flags = json.loads((folder / "scores.json").read_text())["reproduce_flags"]
    card = (folder / "MODEL_CARD.md").read_text()
    line = re.search(r"^Reproduce: `(.*)`\.$", card, re.M)
    assert line, "the card has no Reproduce line"
    command, _, tail = line.group(1).partition(" --work <scratch folder>")
    assert command.endswith("scripts/train_nuclei_model.py") and tail.split() == flags


def _table(tp: int, fp: int, fn: int) -> list[dict]:
    return [{"threshold": t, "tp": tp, "fp": fp, "fn": fn} for t in (0.5, 0.75)]


def _sides(model: tuple, classical: tuple) -> dict:
    return {"model": {"table": _table(*model)}, "classical": {"table": _table(*classical)}}


def test_mix_lines_scale_each_sets_test_counts_to_50_images(nuclei_script):
    """Known answer: a test split of 25 BBBC039 and 50 DSB images; BBBC039's counts count
    twice in the 50 + 50 mix, DSB's once, and F1 and AP are those of the summed counts."""
    scores = {
        "test": {
            "bbbc039": _sides((90, 10, 10), (80, 20, 20)),
            "dsb2018": _sides((40, 10, 20), (30, 20, 30)),
        }
    }
    sizes = {"bbbc039": {"test": 25}, "dsb2018": {"test": 50}}
    text = " ".join(nuclei_script.mix_lines(scores, sizes))
    model_ap, classical_ap = 220 / (220 + 30 + 40), 190 / (190 + 60 + 70)
    f1 = prf(220, 30, 40)["f1"]
    assert f"model F1@0.5 {f1:.3f}, AP@0.5 {model_ap:.3f}, mean AP {model_ap:.3f}" in text
    assert f"/ {classical_ap:.3f} / {classical_ap:.3f} (the issue" in text
    # a set without a test split gives no estimate rather than a wrong one
    assert nuclei_script.mix_lines(scores, {"bbbc039": {"test": 25}}) == []


def test_fnc_pool_sums_counts_over_held_out_images(fnc_script):
    rows = [
        {"tp": 6, "fp": 0, "fn": 0, "pred_count": 6, "true_count": 6},
        {"tp": 0, "fp": 1, "fn": 4, "pred_count": 1, "true_count": 4},
    ]
    pooled = fnc_script._pool(rows)
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (6, 1, 4)
    assert pooled["cells"] == 10 and pooled["found"] == 7 and pooled["images"] == 2
    assert pooled["f1"] == pytest.approx(2 * 6 / (2 * 6 + 1 + 4))
    assert pooled["count_mae"] == pytest.approx(1.5)


def test_fnc_card_error_table_and_script_flags(fnc_script):
    from neuroseg.errors import FP_KINDS, MISS_KINDS

    def kinds(keys, **counts):
        return {k: counts.get(k, 0) for k in keys}

    errors = {
        "per_image": [
            {"name": "a.png", "colour": "red", "n_true": 50, "n_pred": 60,
             "fp_kinds": kinds(FP_KINDS, thin=7, blob=3), "miss_kinds": kinds(MISS_KINDS)},
            {"name": "b.png", "colour": "yellow", "n_true": 4, "n_pred": 3,
             "fp_kinds": kinds(FP_KINDS), "miss_kinds": kinds(MISS_KINDS, dim=1)},
        ],
        "totals": {
            "red": {"fp_kinds": kinds(FP_KINDS, thin=7, blob=3), "miss_kinds": kinds(MISS_KINDS)},
            "all": {"fp_kinds": kinds(FP_KINDS, thin=7, blob=3),
                    "miss_kinds": kinds(MISS_KINDS, dim=1)},
        },
    }  # fmt: skip
    lines = fnc_script._error_table(errors)
    header = next(x for x in lines if x.startswith("| image"))
    width = header.count("|")
    rows = [x for x in lines if x.startswith("| ") and x is not header]
    assert all(r.count("|") == width for r in rows)
    red = next(r for r in rows if r.startswith("| a.png"))
    assert "| +20% |" in red and "| 7 | 3 |" in red
    assert "| -25% |" in next(r for r in rows if r.startswith("| b.png"))
    assert any(r.startswith("| **all** | | 54 | 63 |") for r in rows)
    # the Reproduce line carries the flags that changed the model, nothing for defaults
    assert fnc_script._script_flags({}) == ""
    assert fnc_script._script_flags({"flags": {"synthetic_stains": "yellow"}}) == ""
    flags = {"synthetic_stains": "yellow,red", "centre": True, "finetune_epochs": "6,10"}
    assert fnc_script._script_flags({"flags": flags}) == (
        " --synthetic-stains yellow,red --centre --finetune-epochs 6,10"
    )
    assert fnc_script._finetune_spec("6,10")[1][1] == 10
    with pytest.raises(SystemExit, match="finetune-epochs"):
        fnc_script._finetune_spec("6")


def test_fnc_card_names_the_model_it_started_from(fnc_script):
    """A run from the shipped nuclei model (no synthetic pretraining) says so, credits the
    nuclei data and reproduces with its flags; a synthetic run keeps its words."""
    flags = {"synthetic": 0, "init": "nuclei", "scale": 0.5, "tta": "none", "per_stain": True}
    assert fnc_script._script_flags({"flags": flags}) == (
        " --synthetic 0 --init nuclei --scale 0.5 --per-stain"
    )
    assert fnc_script._script_flags({"flags": {**flags, "tta": "flips"}}).endswith(" --tta flips")
    per_size = {**flags, "per_stain": False, "per_size": True}
    assert fnc_script._script_flags({"flags": per_size}).endswith(" --scale 0.5 --per-size")
    # the card lists every nested choice that was scored and not shipped (older reports: one)
    red = {"red": {"f1": 0.7}}
    assert fnc_script._alternatives({"alternatives": {"per-stain": red, "joint": red}}) == [
        ("joint", red), ("per-stain", red)]  # fmt: skip
    assert fnc_script._alternatives({"alternative": {"mode": "joint", "model": red}}) == [
        ("joint", red)]  # fmt: skip
    assert fnc_script._alternatives({}) == []
    nuclei = {"synthetic_images": 0, "pretrain": {"model": "nuclei", "init": "nuclei"}}
    assert fnc_script._start_of(nuclei) == "started from the weights of `nuclei`"
    assert fnc_script._from_nuclei(nuclei)
    synthetic = {"synthetic_images": 24, "pretrain_schedule": "1: 3 x 50 steps",
                 "pretrain": {"model": "fnc-synthetic@v1", "init": None}}  # fmt: skip
    assert fnc_script._start_of(synthetic) == (
        "pretrained on 24 synthetic plates (preset `fnc`: 1: 3 x 50 steps)"
    )
    assert not fnc_script._from_nuclei(synthetic)
    assert "CC0" in fnc_script.NUCLEI_DATA


def test_fnc_rescale_rule_enlarged_copies_and_card(fnc_script, tmp_path):
    """--rescale-below: the rule the models carry, the enlarged training copies of the
    samples with small annotated cells (image bilinear, mask nearest, named -x2), and the
    card's and Reproduce line's words for it."""
    from types import SimpleNamespace

    from PIL import Image

    args = SimpleNamespace(rescale_below=None, scale=0.5, rescale_tta="none", rescale_mode="mean",
                           enlarge_small=False)  # fmt: skip
    assert fnc_script._rescale_rule(args) is None
    args.rescale_below = 1500
    rule = fnc_script._rescale_rule(args)
    assert rule == {"below_area": 1500.0, "scale": 1.0, "tta": "none", "mode": "mean"}
    args.scale = 1.0
    with pytest.raises(SystemExit, match="--scale under 1"):
        fnc_script._rescale_rule(args)
    samples = []
    for name, side in (("small.png", 10), ("large.png", 50)):  # 100 px and 2,500 px cells
        for sub in ("images", "masks"):
            (tmp_path / "src" / sub).mkdir(parents=True, exist_ok=True)
        mask = np.zeros((80, 120), np.uint8)
        mask[5 : 5 + side, 5 : 5 + side] = 255
        image = np.dstack([mask // 2] * 3)
        Image.fromarray(image).save(tmp_path / "src" / "images" / name)
        Image.fromarray(mask).save(tmp_path / "src" / "masks" / name)
        samples.append({"name": name, "image": tmp_path / "src" / "images" / name,
                        "mask": tmp_path / "src" / "masks" / name})  # fmt: skip
    small = [s["name"] for s in samples if fnc_script._small_cells(s, 1500)]
    assert small == ["small.png"] and not fnc_script._small_cells(samples[0], None)
    dest = fnc_script._layout(tmp_path / "out", samples, enlarge={"small.png": 2.0})
    assert sorted(p.name for p in (dest / "images").iterdir()) == [
        "large.png", "small-x2.png", "small.png"]  # fmt: skip
    big = np.asarray(Image.open(dest / "masks" / "small-x2.png"))
    assert big.shape == (160, 240) and set(np.unique(big)) == {0, 255}  # nearest: no grey
    assert (big == 255).sum() == 400
    card = fnc_script._serving({"input": {"scale": 0.5}, "rescale": rule})
    assert "typically under 1500 px is predicted again at scale 1 (no flips)" in card
    flags = {"synthetic": 0, "init": "nuclei", "scale": 0.5, "rescale_below": 1500.0,
             "rescale_mode": "mean", "rescale_tta": "none", "enlarge_small": False}  # fmt: skip
    assert fnc_script._script_flags({"flags": flags}).endswith(" --rescale-below 1500")
    flags.update(rescale_mode="replace", enlarge_small=True)
    assert fnc_script._script_flags({"flags": flags}).endswith(
        " --rescale-below 1500 --rescale-mode replace --enlarge-small"
    )
