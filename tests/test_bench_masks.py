"""``bench masks``: structure and equivalence on small sets (no timing targets here)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from neuroseg.benchmarks.masks import TARGET_SPEEDUP, bench_masks, dense_masks

SET_KEYS = {
    "images",
    "pixels_per_image",
    "foreground_fraction",
    "cells",
    "ours_s_per_image",
    "reference_s_per_image",
    "speedup",
    "target_speedup",
    "meets_target",
    "identical",
}


def test_dense_masks_are_dense_blobs():
    masks = dense_masks(2, (120, 160), seed=3)
    assert len(masks) == 2
    for mask in masks:
        assert mask.shape == (120, 160) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 255}
        assert 0.2 <= np.mean(mask > 127) <= 0.3
    assert not np.array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(dense_masks(1, (50, 60), seed=3)[0].shape, (50, 60))


def test_bench_on_small_dense_and_png_sets(tmp_path):
    folder = tmp_path / "plate" / "masks"
    folder.mkdir(parents=True)
    for i, mask in enumerate(dense_masks(2, (90, 130), seed=7, foreground=0.12)):
        Image.fromarray(mask).save(folder / f"m{i}.png")  # real PNG decoding on the way back
    result = bench_masks(fnc_root=tmp_path, dense_count=2, dense_size=(150, 200), repeat=2)
    json.dumps(result, allow_nan=False)
    assert result["benchmark"] == "masks" and result["repeat"] == 2
    assert result["skipped"] == {}
    fnc, dense = result["sets"]["fnc"], result["sets"]["dense"]
    assert SET_KEYS <= set(fnc) and SET_KEYS <= set(dense)
    assert fnc["images"] == 2 and fnc["files"] == ["plate/masks/m0.png", "plate/masks/m1.png"]
    assert dense["images"] == 2 and dense["size"] == [150, 200]
    assert fnc["foreground_fraction"] == pytest.approx(0.12, abs=0.01)
    assert dense["foreground_fraction"] >= 0.1
    for entry in (fnc, dense):
        assert entry["identical"] is True
        assert entry["cells"] > 10
        assert entry["speedup"] > 1
        assert entry["reference_s_per_image"] > entry["ours_s_per_image"] > 0
    assert dense["target_speedup"] == TARGET_SPEEDUP["dense"]


def test_bench_skips_and_validates(tmp_path):
    result = bench_masks(fnc_root=False, dense_count=0)
    assert result["sets"] == {} and set(result["skipped"]) == {"fnc", "dense"}
    with pytest.raises(ValueError, match="not a folder"):
        bench_masks(fnc_root=tmp_path / "missing", dense_count=0)
    with pytest.raises(ValueError, match=r"masks/\*\.png"):
        bench_masks(fnc_root=tmp_path, dense_count=0)
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png"):
        bench_masks(fnc_root=tmp_path, dense_count=0)
    with pytest.raises(ValueError, match="repeat"):
        bench_masks(fnc_root=False, repeat=0)


def test_module_is_light():
    code = "import sys, neuroseg.benchmarks.masks; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
