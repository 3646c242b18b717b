"""``neuroseg bench masks``: vectorised mask analysis against the seed notebook's flood fill.

Compares :func:`neuroseg.masks.analyze_mask` with :func:`neuroseg.reference.markGroups` (the
notebook's pure-Python flood fill) on the real FNC masks and on dense synthetic masks (smoothed
noise thresholded to about a quarter foreground, thousands of blobs), cell for cell and in time.
Light: no TensorFlow.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from neuroseg import reference
from neuroseg.masks import analyze_mask

__all__ = ["TARGET_SPEEDUP", "bench_masks", "default_fnc_root", "dense_masks"]

#: Speed-up the vectorised analysis should reach per set (aggregate time ratio).
TARGET_SPEEDUP = {"fnc": 20.0, "dense": 100.0}

_SEED_COLUMNS = ("area_px", "bbox_x", "bbox_y", "bbox_width", "bbox_height")


def default_fnc_root() -> Path | None:
    """``<repo>/../shared/data/fnc-samples`` when it holds masks, else ``None``."""
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fnc-samples"
    return root if any(root.glob("**/masks/*.png")) else None


def dense_masks(
    count: int, size=(1200, 1600), *, seed: int = 0, foreground=0.25, sigma=4.0
) -> list:
    """Dense synthetic binary masks: Gaussian-smoothed noise above its ``1 - foreground`` quantile.

    Parameters
    ----------
    count : int
        Number of masks.
    size : (rows, cols)
        Mask size.
    seed : int
        Random seed (numpy ``default_rng``).
    foreground : float
        Fraction of foreground pixels (exact up to ties).
    sigma : float
        Smoothing in pixels; sets the blob size (4: median cell about 100 px, thousands of cells
        per 1200x1600 mask; the FNC cells are larger, median about 1000 px).

    Returns
    -------
    list of (rows, cols) uint8 arrays
        Values 0 and 255; many irregular blobs of a few to a few hundred pixels.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        noise = rng.standard_normal(size, dtype=np.float32)
        smooth = ndimage.gaussian_filter(noise, sigma=sigma)
        cut = np.quantile(smooth, 1.0 - foreground)
        out.append(np.where(smooth > cut, np.uint8(255), np.uint8(0)))
    return out


def _read_masks(root: Path) -> tuple[list[str], list[np.ndarray]]:
    from PIL import Image, UnidentifiedImageError

    paths = sorted(root.glob("**/masks/*.png"))
    if not paths:
        raise ValueError(f"{root}: no masks/*.png below this folder (FNC layout)")
    masks = []
    for path in paths:
        try:
            with Image.open(path) as img:
                masks.append(np.asarray(img.convert("L")))  # as the seed's loader
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"{path}: cannot read mask ({exc})") from None
    return [str(p.relative_to(root)) for p in paths], masks


def _identical(ours: dict, seed_cells: list) -> bool:
    if len(seed_cells) != len(ours["area_px"]):
        return False
    if not seed_cells:
        return True
    expected = np.array(seed_cells, dtype=np.int64)  # nPixels, x, y, width, height
    got = np.stack([ours[c] for c in _SEED_COLUMNS], axis=1)
    return bool(np.array_equal(expected, got))


def _bench_set(name: str, masks: list, repeat: int) -> dict:
    ours_total = 0.0
    ref_total = 0.0
    identical = True
    cells = 0
    for mask in masks:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            result = analyze_mask(mask)
            best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        seed_cells = reference.markGroups(mask)
        ref_total += time.perf_counter() - start
        ours_total += best
        cells += len(seed_cells)
        identical &= _identical(result, seed_cells)
    n = len(masks)
    speedup = ref_total / ours_total if ours_total > 0 else float("inf")
    target = TARGET_SPEEDUP.get(name)
    return {
        "images": n,
        "pixels_per_image": float(np.mean([m.size for m in masks])),
        "foreground_fraction": float(np.mean([np.mean(m > 127) for m in masks])),
        "cells": cells,
        "ours_s_per_image": ours_total / n,
        "reference_s_per_image": ref_total / n,
        "speedup": speedup,
        "target_speedup": target,
        "meets_target": None if target is None else bool(speedup >= target),
        "identical": bool(identical),
    }


def bench_masks(*, fnc_root=None, dense_count=3, dense_size=(1200, 1600), seed=0, repeat=3) -> dict:
    """Time and compare the vectorised mask analysis with the seed's flood fill.

    Parameters
    ----------
    fnc_root : str or Path or None or False, optional
        Folder of FNC samples (``*/masks/*.png``). ``None`` looks for
        ``<repo>/../shared/data/fnc-samples`` and skips the set when it is absent; ``False``
        skips it.
    dense_count : int, optional
        Number of dense synthetic masks (0 skips the set).
    dense_size : (rows, cols), optional
        Size of the dense masks.
    seed : int, optional
        Random seed of the dense masks.
    repeat : int, optional
        Runs of ``analyze_mask`` per mask; the best time counts. The slow reference runs once.

    Returns
    -------
    dict
        JSON-able: ``sets`` maps ``fnc`` and ``dense`` to ``images``, ``pixels_per_image``,
        ``foreground_fraction`` (mean), ``cells``, ``ours_s_per_image``,
        ``reference_s_per_image``, ``speedup`` (total reference time / total ours),
        ``target_speedup``, ``meets_target`` and ``identical`` (same cells, areas and boxes in
        the same order for every mask); ``skipped`` gives the reason for a set left out.
    """
    repeat = int(repeat)
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    dense_count = int(dense_count)
    if dense_count < 0:
        raise ValueError(f"dense_count must be >= 0, got {dense_count}")
    rows, cols = (int(v) for v in dense_size)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"dense_size must be positive (rows, cols), got {dense_size!r}")

    sets: dict = {}
    skipped: dict = {}
    if fnc_root is False:
        skipped["fnc"] = "disabled (fnc_root=False)"
    else:
        if fnc_root is None:
            root = default_fnc_root()
            if root is None:
                skipped["fnc"] = "FNC samples not found at <repo>/../shared/data/fnc-samples"
        else:
            root = Path(fnc_root)
            if not root.is_dir():
                raise ValueError(f"{root}: fnc_root is not a folder")
        if root is not None:
            names, masks = _read_masks(root)
            sets["fnc"] = {**_bench_set("fnc", masks, repeat), "root": str(root), "files": names}
    if dense_count:
        masks = dense_masks(dense_count, (rows, cols), seed=seed)
        sets["dense"] = {**_bench_set("dense", masks, repeat), "size": [rows, cols]}
    else:
        skipped["dense"] = "dense_count=0"
    return {
        "benchmark": "masks",
        "repeat": repeat,
        "seed": int(seed),
        "sets": sets,
        "skipped": skipped,
    }
