"""neuroseg.synth: deterministic FNC-like plates, their ground truth, and writing them out."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from neuroseg import storage
from neuroseg.datasets import find_fnc_samples
from neuroseg.images import read_image, read_mask
from neuroseg.masks import analyze_mask, label_mask
from neuroseg.synth import (
    SynthImage,
    _derive_seed,
    compare_with_real,
    comparison_table,
    image_id,
    plate_id,
    synth_plate,
    write_dataset,
    write_uploads,
)

SMALL = {"height": 240, "width": 320}


def _check_ground_truth(s: SynthImage) -> None:
    h, w = s.mask.shape
    assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
    assert s.mask.dtype == np.uint8 and s.instances.dtype == np.int32
    assert s.instances.shape == (h, w)
    assert set(np.unique(s.mask)) <= {0, 255}
    np.testing.assert_array_equal(s.mask == 255, s.instances > 0)
    ids = np.unique(s.instances)
    n = int(ids.max())
    np.testing.assert_array_equal(ids[1:] if ids[0] == 0 else ids, np.arange(1, n + 1))
    # ids in raster order of each cell's first pixel
    flat = s.instances.ravel()
    nz = np.flatnonzero(flat)
    _, first = np.unique(flat[nz], return_index=True)
    assert np.all(np.diff(first) > 0)


def test_default_size_types_and_ground_truth():
    s = synth_plate(seed=1)
    assert s.image.shape == (1200, 1600, 3)
    _check_ground_truth(s)
    assert s.instances.max() >= 1


def test_same_seed_same_arrays_different_seed_differs():
    a = synth_plate(seed=7, **SMALL)
    b = synth_plate(seed=7, **SMALL)
    c = synth_plate(seed=8, **SMALL)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(6))
def test_small_and_odd_sizes_keep_ground_truth_consistent(seed):
    s = synth_plate(seed=seed, height=123 + seed, width=457, n_cells=3)
    assert s.image.shape == (123 + seed, 457, 3)
    _check_ground_truth(s)


def test_n_cells_is_honoured_and_zero_gives_an_empty_mask_with_distractors():
    s = synth_plate(seed=3, n_cells=12)
    assert s.instances.max() == 12
    _check_ground_truth(s)
    empty = [synth_plate(seed=k, n_cells=0, height=600, width=800) for k in range(4)]
    for e in empty:
        assert not e.mask.any() and not e.instances.any()
        assert e.image.std() > 0.5  # noise, illumination, fibres: not a flat image
    # Bright debris and haze are drawn although no cell is: they are not in the (empty) mask.
    bright = [int((e.image[..., 0] > 100).sum()) for e in empty]
    assert max(bright) > 20


def test_mask_is_the_visible_cell():
    """Each cell is clearly brighter than a ring just outside it; bright pixels exist off-mask."""
    for seed in (1, 9):
        s = synth_plate(seed=seed)
        lum = s.image.max(axis=-1).astype(np.float64)
        for i, sl in enumerate(ndi.find_objects(s.instances), start=1):
            sl = tuple(slice(max(a.start - 8, 0), a.stop + 8) for a in sl)
            cell = s.instances[sl] == i
            ring = ndi.binary_dilation(cell, iterations=4) & (s.mask[sl] == 0)
            if ring.sum() < 10:
                continue
            assert np.median(lum[sl][cell]) > 1.3 * max(np.median(lum[sl][ring]), 1.0)
        # debris: bright pixels that no cell claims
        assert ((lum > 100) & (s.mask == 0)).sum() > 0


def test_touching_cells_keep_ids_but_merge_in_the_mask():
    merged = 0
    for seed in (1, 2, 4):
        s = synth_plate(seed=seed)
        labels, n = label_mask(s.mask)
        assert n <= s.instances.max()
        # every connected component of the mask is a union of whole instances
        pairs = np.unique(np.stack([labels[s.mask > 0], s.instances[s.mask > 0]]), axis=1)
        assert len(np.unique(pairs[1])) == pairs.shape[1]
        merged += int(s.instances.max()) - n
    assert merged >= 2


def test_foreground_and_sizes_are_fnc_like_over_several_images():
    cols, fg, counts = [], [], []
    for i in range(6):
        s = synth_plate(seed=_derive_seed(0, i))
        c = analyze_mask(s.mask)
        cols.append(c)
        counts.append(len(c["area_px"]))
        fg.append((s.mask > 0).mean())
    area = np.concatenate([c["area_px"] for c in cols])
    assert 0.2 < 100 * np.mean(fg) < 1.5  # FNC yellow: 0.61 %
    assert max(fg) < 0.05
    assert min(counts) <= 3  # some images with very few cells
    assert 1500 < np.percentile(area, 95) < 7000  # FNC yellow p95: 3,873 px
    assert np.median(area) < 0.5 * np.percentile(area, 95)  # most cells smaller


@pytest.mark.slow
def test_statistics_match_the_seeds_fnc_yellow_percentiles():
    stats = compare_with_real(None, n=60, seed=0)["synthetic"]
    assert 0.4 < stats["foreground_pct"] < 0.9  # 0.607 %
    assert 6 < stats["cells_per_image"] < 11  # 2,270 cells / 283 images
    assert 3000 < stats["area_p95"] < 5000  # 3,873 px
    assert 85 < stats["width_p95"] < 125  # 103 px
    assert 68 < stats["height_p95"] < 100  # 82.6 px
    assert stats["width_p95"] > stats["height_p95"]


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": 0, "height": 8}, "height"),
        ({"seed": 0, "width": "400"}, "width"),
        ({"seed": 0, "height": 20_000, "width": 20_000}, "pixels"),
        ({"seed": 0, "n_cells": -1}, "n_cells"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, word):
    with pytest.raises(ValueError, match=word):
        synth_plate(**kwargs)


def test_ids_are_lab_like():
    assert plate_id(0) == "P001" and plate_id(41) == "P042"
    assert image_id("P001", 0) == "P001_r01c01"
    assert image_id("P001", 11) == "P001_r01c12"
    assert image_id("P002", 12) == "P002_r02c01"


def _check_uploads(root: str) -> None:
    uris = write_uploads(root, plates=2, images_per_plate=2, seed=5, **SMALL)
    rel = [u[len(root.rstrip("/")) + 1 :] for u in uris]
    assert rel == [
        "uploads/P001/P001_r01c01.png",
        "uploads/P001/P001_r01c02.png",
        "uploads/P002/P002_r01c01.png",
        "uploads/P002/P002_r01c02.png",
    ]
    assert storage.list_files(storage.join(root, "uploads"), suffixes=".png") == sorted(uris)
    # each file is the plate generated from (seed, plate, image), decoded losslessly
    expected = synth_plate(seed=_derive_seed(5, 1, 0), **SMALL).image
    np.testing.assert_array_equal(read_image(uris[2]), expected)
    # re-running writes the same bytes
    before = storage.read_bytes(uris[0])
    write_uploads(root, plates=1, images_per_plate=1, seed=5, **SMALL)
    assert storage.read_bytes(uris[0]) == before


def _check_dataset(root: str) -> None:
    uri = write_dataset(root, name="syn", images=3, seed=2, **SMALL)
    assert uri == storage.join(root, "datasets", "syn")
    samples = find_fnc_samples(uri)
    assert [s.name for s in samples] == ["syn_0001", "syn_0002", "syn_0003"]
    assert all(s.mask_uri is not None for s in samples)
    truth = synth_plate(seed=_derive_seed(2, 1), **SMALL)
    np.testing.assert_array_equal(read_image(samples[1].image_uri), truth.image)
    np.testing.assert_array_equal(read_mask(samples[1].mask_uri), truth.mask)


def test_write_uploads_local(tmp_path):
    _check_uploads(str(tmp_path / "root"))


def test_write_dataset_local(tmp_path):
    _check_dataset(str(tmp_path / "root"))


def test_write_uploads_s3(s3_bucket):
    _check_uploads(s3_bucket + "/lab")


def test_write_dataset_s3(s3_bucket):
    _check_dataset(s3_bucket + "/lab")


def test_write_rejects_bad_counts_and_unsafe_names(tmp_path):
    with pytest.raises(ValueError, match="plates"):
        write_uploads(str(tmp_path), plates=0)
    with pytest.raises(ValueError, match="images"):
        write_dataset(str(tmp_path), images=0)
    with pytest.raises(ValueError):
        write_dataset(str(tmp_path), name="../escape", images=1, **SMALL)
    assert not any(tmp_path.iterdir())


def test_comparison_table_formats_every_set():
    stats = compare_with_real(None, n=2, seed=1, **SMALL)
    assert set(stats) == {"synthetic"}
    s = stats["synthetic"]
    assert s["images"] == 2
    table = comparison_table(stats)
    assert table.splitlines()[0] == "| statistic | synthetic |"
    assert "foreground %" in table and "mean RGB of background" in table


@pytest.mark.fnc
@pytest.mark.slow
def test_compare_with_real_measures_the_real_samples(fnc_root):
    stats = compare_with_real(fnc_root, n=2, seed=0)
    assert set(stats) == {"yellow", "red", "synthetic"}
    # independent count: scipy's 4-connected labelling of the real yellow masks
    n_cells = 0
    for s in find_fnc_samples(fnc_root / "yellow"):
        n_cells += ndi.label(read_mask(s.mask_uri) > 127)[1]
    assert stats["yellow"]["cells"] == n_cells
    assert stats["yellow"]["images"] == 2
    # yellow cells: red > green > blue; background much darker than cells
    r, g, b = stats["yellow"]["cell_rgb"]
    assert r > g > b
    assert stats["yellow"]["background_rgb"][0] < r / 3


def test_import_is_light():
    code = "import sys, neuroseg.synth, neuroseg.datasets; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_red_stain_draws_a_neurite_web_outside_the_mask():
    red = synth_plate(seed=3, height=600, width=800, stain="red")
    _check_ground_truth(red)
    np.testing.assert_array_equal(red.image, synth_plate(seed=3, height=600, width=800,
                                                         stain="red").image)  # fmt: skip
    yellow = synth_plate(seed=3, height=600, width=800)
    assert not np.array_equal(red.image, yellow.image)
    # red: the red channel carries the stain
    fg = red.mask > 0
    means = red.image[fg].mean(axis=0)
    assert means[0] > 2 * max(means[1], means[2])

    # thin bright structure (a pixel well above its 9x9 median) outside the cells: the web,
    # none of it in the mask
    def ridges_outside(s):
        grey = s.image.max(axis=-1).astype(float)
        near = ndi.binary_dilation(s.mask > 0, iterations=3)
        return float(((grey - ndi.median_filter(grey, 9) > 8) & ~near).mean())

    for seed in (0, 1, 3):
        r = ridges_outside(synth_plate(seed=seed, height=600, width=800, stain="red"))
        y = ridges_outside(synth_plate(seed=seed, height=600, width=800))
        assert r > 5 * y and r > 0.02


def test_write_dataset_alternates_stains(tmp_path):
    root = str(tmp_path / "root")
    uri = write_dataset(root, name="mix", images=2, height=200, width=240,
                        stains=("yellow", "red"))  # fmt: skip
    first = read_image(storage.join(uri, "images", "syn_0001.png"))
    second = read_image(storage.join(uri, "images", "syn_0002.png"))
    # yellow: green channel well above blue; red: green and blue both faint
    assert first[..., 1].mean() > 2 * first[..., 2].mean()
    assert second[..., 0].mean() > 2 * second[..., 1].mean()
    with pytest.raises(ValueError, match="stains"):
        write_dataset(root, name="bad", images=1, height=64, width=64, stains=("blue",))
    with pytest.raises(ValueError, match="stain must be"):
        synth_plate(seed=1, height=64, width=64, stain="green")
