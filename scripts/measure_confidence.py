"""Does the per-image confidence rank images by their real error? (issue 26, item 1)

    .venv/bin/python scripts/measure_confidence.py --out /tmp/confidence.json
    .venv/bin/python scripts/measure_confidence.py --fnc-model /path/to/model --skip-nuclei

For every image with ground truth, the model's own output gives each candidate confidence
measure (:func:`neuroseg.confidence.confidence_measures`, plus ``flip_agreement``: F1 at IoU 0.5
between the objects of the image and those of its flipped copy, which costs a second prediction);
the ground truth gives the image's F1 (IoU 0.5 for nuclei, centroids within 40 px for FNC, each
set's own rule). Printed and written: Spearman's rank correlation of each measure with F1, and
how many of the N least confident images are among the N worst by F1.

Sets: the nuclei validation split (``../shared/data/nuclei``, the split of
``scripts/train_nuclei_model.py``: ``split_names`` over both sets' stems, seed 0; the shipped
``nuclei`` model) and the six real FNC samples (``../shared/data/fnc-samples``; ``--fnc-model``,
default the shipped FNC model, which trained on all six: name a model that did not).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _pairs(folder: Path) -> list[tuple[str, Path, Path, str]]:
    """``(stem, image, truth, kind)`` of a folder with images/ and labels/ or masks/."""
    out = []
    for img in sorted((folder / "images").glob("*.png")):
        lab = folder / "labels" / img.name
        if lab.exists():
            out.append((img.stem, img, lab, "labels"))
        elif (folder / "masks" / img.name).exists():
            out.append((img.stem, img, folder / "masks" / img.name, "mask"))
    return out


def score_images(bundle, items, *, centroid: bool, flip: bool = True) -> list[dict]:
    """One row per image: measures, F1, counts."""
    from neuroseg.confidence import confidence_measures
    from neuroseg.images import read_labels, read_mask, read_native
    from neuroseg.masks import label_mask
    from neuroseg.metrics import match_by_iou, match_objects
    from neuroseg.predict import postprocess, predict_image

    rows = []
    for stem, image_uri, truth_uri, kind in items:
        image = read_native(str(image_uri))
        if kind == "labels":
            truth = read_labels(str(truth_uri))
        else:
            truth, _ = label_mask(read_mask(str(truth_uri)))
        t0 = time.perf_counter()
        probs = predict_image(bundle, image)
        labels, n, _ = postprocess(bundle.config, probs, image=image)
        row = {"image_id": stem, "cells": int(n), "true": int(len(np.unique(truth)) - 1)}
        row["seconds_predict"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        row.update(confidence_measures(probs, labels))
        row["seconds_measures"] = time.perf_counter() - t0
        if flip:
            flipped = predict_image(bundle, np.ascontiguousarray(image[::-1, ::-1]))
            flipped = np.ascontiguousarray(flipped[::-1, ::-1])
            other, _, _ = postprocess(bundle.config, flipped, image=image)
            row["flip_agreement"] = float(match_by_iou(labels, other)["f1"])
        row["f1_iou50"] = float(match_by_iou(truth, labels)["f1"])
        row["f1_centroid"] = float(match_objects(truth, labels, radius=40.0)["f1"])
        row["f1"] = row["f1_centroid"] if centroid else row["f1_iou50"]
        row["count_error"] = abs(row["cells"] - row["true"])
        rows.append(row)
        print(
            f"  {stem[:40]:40s} F1 {row['f1']:.3f} cells {n}/{row['true']} "
            + " ".join(f"{k} {row[k]:.3f}" for k in (*_names(row),)),
            flush=True,
        )
    return rows


def _names(row: dict) -> list[str]:
    from neuroseg.confidence import MEASURES

    return [*MEASURES, *(["flip_agreement"] if "flip_agreement" in row else [])]


def rank_table(rows: list[dict], *, top: int) -> dict:
    """Spearman's rho of each measure with F1, and the overlap of the ``top`` least confident
    with the ``top`` worst images."""
    from scipy.stats import spearmanr

    f1 = np.array([r["f1"] for r in rows])
    worst = set(np.argsort(f1, kind="stable")[:top])
    out = {}
    for name in _names(rows[0]):
        values = np.array([r[name] for r in rows])
        rho = spearmanr(values, f1).statistic if np.ptp(values) > 0 and np.ptp(f1) > 0 else 0.0
        least = set(np.argsort(values, kind="stable")[:top])
        out[name] = {"spearman": float(rho), f"worst_{top}_in_least_{top}": len(worst & least)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nuclei", default=str(SHARED / "nuclei"))
    ap.add_argument("--fnc", default=str(SHARED / "fnc-samples"))
    ap.add_argument("--nuclei-model", default="nuclei")
    ap.add_argument("--fnc-model", default="default")
    ap.add_argument("--skip-nuclei", action="store_true")
    ap.add_argument("--skip-fnc", action="store_true")
    ap.add_argument("--top", type=int, default=10, help="N of the review-yield count (nuclei)")
    ap.add_argument("--out", help="write the rows and the tables as JSON")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from neuroseg.cli import configure_output

    configure_output()
    from neuroseg import registry
    from neuroseg.splits import split_names

    result: dict = {}
    if not args.skip_nuclei:
        items = {}
        for name in ("bbbc039", "dsb2018"):
            for stem, *rest in _pairs(Path(args.nuclei) / name):
                items[stem] = (stem, *rest)
        val = split_names(list(items), seed=0)["val"]
        bundle = registry.load_model(registry.resolve_model_uri("/nonexistent", args.nuclei_model))
        print(f"nuclei val split: {len(val)} images, model {bundle.name}@{bundle.version}")
        rows = score_images(bundle, [items[s] for s in val], centroid=False)
        result["nuclei"] = {
            "model": f"{bundle.name}@{bundle.version}",
            "rows": rows,
            "ranks": rank_table(rows, top=args.top),
        }
    if not args.skip_fnc:
        items = [p for c in ("yellow", "red") for p in _pairs(Path(args.fnc) / c)]
        bundle = registry.load_model(registry.resolve_model_uri("/nonexistent", args.fnc_model))
        print(f"FNC samples: {len(items)} images, model {bundle.name}@{bundle.version}")
        rows = score_images(bundle, items, centroid=True)
        result["fnc"] = {
            "model": f"{bundle.name}@{bundle.version}",
            "model_uri": bundle.uri,
            "rows": rows,
            "ranks": rank_table(rows, top=2),
        }
    for name, part in result.items():
        print(f"\n{name} ({part['model']}): Spearman rho with per-image F1")
        for measure, r in sorted(part["ranks"].items(), key=lambda kv: -kv[1]["spearman"]):
            print(f"  {measure:16s} {r['spearman']:+.3f}  {r}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
