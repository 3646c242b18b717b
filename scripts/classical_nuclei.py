"""Tune and score the classical nuclei baseline on the real nucleus sets (BBBC039, DSB 2018).

    .venv/bin/python scripts/classical_nuclei.py [--root ../shared/data/nuclei] [--out FILE]

For each set (a folder with ``images/`` and ``labels/`` of the same file names): split the images
by name (:func:`neuroseg.splits.split_names` on the file stems, seed 0, 70/15/15), choose the
parameters of :func:`neuroseg.baseline.classical_segment` on the validation split
(:func:`neuroseg.baseline.tune_classical`), then score them with
:func:`neuroseg.metrics.iou_scores` on the validation and test splits. Prints one JSON document
(and writes it to ``--out``): per set the split sizes, the chosen parameters, the tuning table
and per split the IoU table (precision, recall, F1, AP at IoU 0.5 .. 0.95), mean AP and count
MAE. The data are read in place; nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = (".png", ".tif", ".tiff")


def read_image(path: Path) -> np.ndarray:
    """The image in its own dtype: ``neuroseg.images.decode_native`` when present, else Pillow."""
    try:
        from neuroseg.images import decode_native
    except ImportError:  # older tree: Pillow keeps 8- and 16-bit grey as they are
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img)
    return decode_native(path.read_bytes(), name=path.name)


def read_labels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        labels = np.asarray(img)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: expected a 2-D integer label image, got {labels.shape}")
    return labels


def load(folder: Path, stems: list[str], files: dict[str, str]) -> list[tuple]:
    return [
        (read_image(folder / "images" / files[s]), read_labels(folder / "labels" / files[s]))
        for s in stems
    ]


def score(samples, params: dict) -> dict:
    from neuroseg.baseline import classical_segment
    from neuroseg.metrics import iou_matching, iou_summary

    return iou_summary(
        iou_matching(truth, classical_segment(image, **params)[0]) for image, truth in samples
    )


def run_set(folder: Path, *, seed: int, grid: dict | None) -> dict:
    from neuroseg.baseline import CLASSICAL_DEFAULTS, tune_classical
    from neuroseg.splits import split_names

    files = {
        p.stem: p.name
        for p in sorted((folder / "images").iterdir())
        if p.suffix.lower() in SUFFIXES and (folder / "labels" / p.name).exists()
    }
    splits = split_names(files, seed=seed)
    t0 = time.perf_counter()
    val = load(folder, splits["val"], files)
    test = load(folder, splits["test"], files)
    tuned = tune_classical(val, grid=grid)
    params = tuned["params"]
    out = {
        "folder": str(folder),
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "dtypes": sorted({str(im.dtype) for im, _ in val + test}),
        "params": {**params, "percentiles": list(params["percentiles"])},
        "tuning": tuned["table"],
        "val": score(val, params),
        "test": score(test, params),
        "test_with_defaults": score(test, dict(CLASSICAL_DEFAULTS)),
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "nuclei"))
    ap.add_argument("--sets", nargs="+", default=["bbbc039", "dsb2018"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default=None, help='JSON grid, e.g. {"sigma": [1, 2]}')
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    grid = json.loads(args.grid) if args.grid else None
    report = {"seed": args.seed, "sets": {}}
    for name in args.sets:
        report["sets"][name] = run_set(Path(args.root) / name, seed=args.seed, grid=grid)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
