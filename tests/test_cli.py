"""The command line: help for every command, one-line errors, and the light commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from neuroseg import storage
from neuroseg.cli import build_parser, main

COMMANDS = [
    "demo",
    "synth",
    "ingest",
    "prepare",
    "train",
    "evaluate",
    "infer",
    "segment",
    "report",
    "review",
    "adapt",
    "bench",
]
# TensorFlow's start-up chatter on stderr: absl's pre-init notice, the CPU-instruction hint,
# oneDNN's notice (x86 builds with oneDNN), any C++ INFO/WARNING line ("I0000 00:00:...")
TF_CHATTER = re.compile(
    r"absl::InitializeLog|cpu_feature_guard|oneDNN custom operations|TF_ENABLE_ONEDNN_OPTS"
    r"|^[IW]\d{4} \d\d:\d\d:\d\d",
    re.MULTILINE,
)


def test_every_command_has_help():
    neuroseg = str(Path(sys.executable).parent / "neuroseg")
    for cmd in COMMANDS:
        out = subprocess.run([neuroseg, cmd, "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage: neuroseg " + cmd in out.stdout, cmd


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys; from neuroseg.cli import build_parser; build_parser();"
        "print('tensorflow' in sys.modules, 'prefect' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False"


def test_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["synth", "out", "--size", "huge"])
    assert exc.value.code == 2
    assert "size must look like 1600x1200" in capsys.readouterr().err


def test_synth_writes_plates_and_datasets(tmp_path, capsys):
    assert (
        main(["synth", str(tmp_path), "--plates", "2", "--images", "1", "--size", "320x256"]) == 0
    )
    assert len(storage.list_files(str(tmp_path / "uploads"))) == 2
    assert (
        main(["synth", str(tmp_path), "--dataset", "d", "--images", "2", "--size", "320x256"]) == 0
    )
    assert len(storage.list_files(str(tmp_path / "datasets" / "d" / "masks"))) == 2
    assert "wrote 2 annotated images" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_2(prefect_api, tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "missing"), "--root", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"neuroseg: error: {tmp_path / 'missing'}: no such folder or prefix"
    assert main(["prepare", "nope", "--root", str(tmp_path / "r")]) == 2
    assert "dataset 'nope' has no ingested images" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["segment", str(bad), "--out", str(tmp_path / "c.parquet")]) == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and "nothing written" in err
    assert not (tmp_path / "c.parquet").exists()


@pytest.mark.slow
def test_python_m_neuroseg_is_quiet_unless_verbose(tmp_path):
    """`python -m neuroseg segment` (a command that imports TensorFlow) with a clean environment:
    no TensorFlow chatter on stderr but a plain progress line; --verbose lets the chatter in."""
    from neuroseg.images import encode_png
    from neuroseg.synth import synth_plate

    image = tmp_path / "one.png"
    image.write_bytes(encode_png(synth_plate(seed=1, height=96, width=128, n_cells=2).image))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "ABSL"))}
    command = [sys.executable, "-m", "neuroseg", "segment", str(image), "--out", "c.parquet"]
    command += ["--backend", "tf"]  # TensorFlow itself, whose start-up chatter is held back
    runs = {}
    for extra in ([], ["--verbose"]):
        out = subprocess.run(
            [*command, *extra],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "cells in 1 image(s)" in out.stdout
        runs[bool(extra)] = out.stderr
    quiet, verbose = runs[False], runs[True]
    assert not TF_CHATTER.search(quiet), quiet
    assert re.search(r"^\d\d:\d\d:\d\d segment 1/1 images \(100%\), [\d.]+ s/image$", quiet, re.M)
    assert TF_CHATTER.search(verbose), verbose


def test_train_choices_match_the_retrain_form():
    """The command line offers the same presets and losses as the train flow's dropdowns."""
    import typing

    from flows.train import TrainParams
    from neuroseg.cli import build_parser

    parser = build_parser()
    train = next(
        a
        for a in parser._subparsers._group_actions[0].choices["train"]._actions
        if a.dest == "preset"
    )
    loss = next(
        a
        for a in parser._subparsers._group_actions[0].choices["train"]._actions
        if a.dest == "loss"
    )
    fields = TrainParams.model_fields
    assert set(train.choices) == set(typing.get_args(fields["preset"].annotation))
    assert set(loss.choices) == set(typing.get_args(fields["loss"].annotation)) - {"preset"}


def test_train_network_flags_become_train_params():
    """``neuroseg train``'s network and separation flags reach the train flow's parameters
    (the same helper the training scripts use); absent flags leave the preset's."""
    from flows.train import TrainParams, build_config
    from neuroseg.cli import build_parser, network_arguments

    parser = build_parser()
    args = parser.parse_args(
        ["train", "--preset", "nuclei", "--width", "16", "--depth", "3", "--space-to-depth",
         "--separation-weight", "4", "--small-object-area", "50"]
    )  # fmt: skip
    cfg = build_config(
        TrainParams(
            preset="nuclei",
            separation_weight=args.separation_weight,
            small_object_area=args.small_object_area,
            **network_arguments(args),
        )
    )
    assert (cfg.width, cfg.depth, cfg.space_to_depth) == (16, 3, True)
    assert cfg.loss_params["separation_weight"] == 4.0
    assert cfg.small_object_area == 50
    # small objects are weighed with the separation weight: without one it is an error
    with pytest.raises(ValueError, match="separation_weight"):
        build_config(TrainParams(preset="nuclei", separation_weight=0, small_object_area=50))
    plain = parser.parse_args(["train", "--preset", "nuclei"])
    assert network_arguments(plain) == {"width": None, "depth": None, "space_to_depth": None}
    assert parser.parse_args(["train", "--no-space-to-depth"]).space_to_depth is False


def test_absl_log_handler_does_not_close_captured_stderr(capsys):
    """Prefect's logging set-up (``dictConfig``) closes every handler ever made; absl's closes
    its stream unless it is the current ``sys.stderr``. With TensorFlow imported before a
    ``capsys`` test first set up Prefect, that closed pytest's capture file (conftest binds the
    handler to the process's stderr)."""
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler().python_handler
    stream = handler.stream
    handler.close()  # what logging.config.dictConfig does to it
    assert not stream.closed
    print("still here", file=sys.stderr)
    assert "still here" in capsys.readouterr().err
