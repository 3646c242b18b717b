"""The training scripts' own helpers (``scripts/train_nuclei_model.py``,
``scripts/train_fnc_model.py``): what they write into the shipped models' cards must say how to
rebuild the model and add up. The scripts themselves train for many minutes and are run by hand
(``--smoke`` checks them end to end); these tests need no training."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

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
