"""Learning curves of the adapt flow on real data (issue 26, item 4).

    .venv/bin/python scripts/adapt_learning_curves.py --work /tmp/curves            # both parts
    .venv/bin/python scripts/adapt_learning_curves.py --work /tmp/curves --part fnc
    .venv/bin/python scripts/adapt_learning_curves.py --work /tmp/c-smoke --smoke   # minutes

Every adapt run is the adapt flow itself (``flows/adapt.py``, its defaults: 4 epochs of 40
batches at learning rate 3e-4, half the tiles replayed), with ``promote=False`` so that each run
starts from the same parent; the candidate it registers is then scored on images that neither it
nor any choice saw, beside the unadapted parent and the Otsu baseline (the evaluate flow's:
Otsu threshold, components of at least 100 px). Each run's wall time is the flow's own.

nuclei: the shipped ``nuclei`` model adapted to the kind of DSB 2018 image it does worst on. A
kind is a DSB image size (each DSB source collection has its own camera and magnification); the
worst is the lowest pooled F1 at IoU 0.5 on the validation split (the split of
``scripts/train_nuclei_model.py``) among kinds with at least 5 validation and 5 test images.
Corrections: k = 1, 2, 4 of the kind's validation images (``--draws`` random orders, the first k
of each); scored on the kind's test images (F1 at IoU 0.5 pooled, count MAE). Replay and
reference set: the nuclei dataset prepared here as the model was (its train and val splits).

fnc: a model that never saw a red image, by the shipped recipe without them: the ``fnc`` preset
pretrained on synthetic plates, fine-tuned on the 2 real yellow samples (the script's fine-tuning
schedule), fixed post-processing (interior and foreground 0.5, 100 px smallest cell, as the fnc
script's folds). Corrections: every choice of k = 1, 2, 3 of the 4 red samples; each candidate
is scored on the red samples it did not train on (centroids within 40 px, pooled over all
choices). Replay and reference set: the synthetic plates (their train and val splits).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _copy_pairs(dest: Path, pairs: list[tuple[Path, Path]]) -> Path:
    """A corrections folder: images/ and labels/ (or masks/) with the same names."""
    if dest.exists():
        shutil.rmtree(dest)
    for image, truth in pairs:
        kind = "labels" if truth.parent.name == "labels" else "masks"
        (dest / "images").mkdir(parents=True, exist_ok=True)
        (dest / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, dest / "images" / image.name)
        shutil.copy(truth, dest / kind / image.name)
    return dest


def _truth(path: Path) -> np.ndarray:
    from neuroseg.images import read_labels, read_mask
    from neuroseg.masks import label_mask

    if path.parent.name == "labels":
        return read_labels(str(path))
    return label_mask(read_mask(str(path)))[0]


def score_set(segment, items: list[tuple[str, Path, Path]], radius: float = 40.0) -> list[dict]:
    """``segment(image) -> labels`` on ``(id, image, truth)`` items: score_objects rows."""
    from neuroseg.adapt import score_objects
    from neuroseg.images import read_native

    return [
        score_objects(i, _truth(truth), segment(read_native(str(image))), radius=radius)
        for i, image, truth in items
    ]


def model_segmenter(uri: str):
    from neuroseg.predict import segment_image
    from neuroseg.registry import load_model

    bundle = load_model(uri)
    return lambda image: segment_image(bundle, image)[0]


def otsu_segmenter(image):
    """The evaluate flow's Otsu baseline: threshold, components of at least 100 px."""
    from neuroseg.baseline import otsu_probability
    from neuroseg.normalize import select_channels, to_uint8
    from neuroseg.predict import segment

    prob = otsu_probability(select_channels(to_uint8(image), channels="rgb"))
    return segment(prob, threshold=0.5, min_area=100)[0]


#: AdaptParams overrides of --smoke runs (a check of the script, not a measurement).
SMOKE_ADAPT: dict = {}


def run_adapt(work: str, name: str, pairs, *, model: str, reference: str, metric: str) -> dict:
    from flows.adapt import AdaptParams, adapt
    from flows.ingest import IngestParams, ingest

    src = _copy_pairs(Path(work) / "incoming" / name, pairs)
    ingest(IngestParams(source=str(src), root=work, dataset=name, corrections=True))
    return adapt(
        AdaptParams(
            root=work,
            corrections=name,
            model=model,
            reference_dataset=reference,
            metric=metric,
            promote=False,
            **SMOKE_ADAPT,
        )
    )


def _summ(rows: list[dict], key: str) -> dict:
    from neuroseg.adapt import pooled_scores

    p = pooled_scores(rows)
    return {"f1": p[key], "count_mae": p["count_mae"], "images": p["n_images"], "true": p["n_true"]}


# --------------------------------------------------------------------------- nuclei


def nuclei_curve(work: str, nuclei: Path, *, draws: int, ks: tuple, smoke: bool) -> dict:
    from PIL import Image

    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from neuroseg import storage
    from neuroseg.registry import shipped_model_uri

    sets = {"bbbc039": nuclei / "bbbc039", "dsb2018": nuclei / "dsb2018"}
    for folder in sets.values():
        ingest(IngestParams(source=str(folder), root=work, dataset="nuclei"))
    prepared = prepare(
        PrepareParams(
            root=work, dataset="nuclei", tile=256, min_overlap=32, channels="grey",
            normalization="percentile",
        )
    )  # fmt: skip
    splits = storage.read_json(storage.join(prepared["prepared_uri"], "splits.json"))
    dsb = {p.stem: p for p in (sets["dsb2018"] / "images").glob("*.png")}

    def kind(stem: str) -> str:
        w, h = Image.open(dsb[stem]).size
        return f"dsb {w}x{h}"

    item = {s: (s, p, sets["dsb2018"] / "labels" / p.name) for s, p in dsb.items()}
    kinds: dict[str, dict[str, list]] = {}
    for split in ("val", "test"):
        for stem in splits[split]:
            if stem in dsb:
                kinds.setdefault(kind(stem), {"val": [], "test": []})[split].append(stem)
    parent = model_segmenter(shipped_model_uri("nuclei"))
    table = {}
    least = 2 if smoke else 5
    for name, parts in sorted(kinds.items()):
        if len(parts["val"]) >= least and len(parts["test"]) >= least:
            rows = score_set(parent, [item[s] for s in parts["val"]])
            table[name] = {**_summ(rows, "f1_iou50"), "test_images": len(parts["test"])}
            print(f"nuclei val {name}: {table[name]}", flush=True)
    worst = min(table, key=lambda n: table[n]["f1"])
    val_ids, test_ids = sorted(kinds[worst]["val"]), sorted(kinds[worst]["test"])
    if smoke:
        test_ids = test_ids[:3]
    test_items = [item[s] for s in test_ids]
    print(f"worst kind: {worst} ({len(val_ids)} val, {len(test_ids)} test images)", flush=True)
    out = {
        "kinds_val": table,
        "kind": worst,
        "val_ids": val_ids,
        "test_ids": test_ids,
        "unadapted": _summ(score_set(parent, test_items), "f1_iou50"),
        "otsu": _summ(score_set(otsu_segmenter, test_items), "f1_iou50"),
        "runs": [],
    }
    for d in range(draws):
        order = [str(x) for x in np.random.default_rng(d).permutation(val_ids)]
        for k in ks:
            pairs = [(item[s][1], item[s][2]) for s in order[:k]]
            res = run_adapt(
                work, f"nuc-k{k}-d{d}", pairs, model="nuclei", reference="nuclei",
                metric="f1_iou50",
            )  # fmt: skip
            rows = score_set(model_segmenter(res["candidate_uri"]), test_items)
            run = {"k": k, "draw": d, "corrections": order[:k], **_pick(res)}
            run["test"] = _summ(rows, "f1_iou50")
            out["runs"].append(run)
            print(f"nuclei k={k} draw {d}: {run}", flush=True)
    return out


def _pick(res: dict) -> dict:
    keep = ("seconds", "reason", "folds", "candidate")
    return {**{k: res[k] for k in keep}, "would_promote": res["reason"].startswith("not prom")}


# --------------------------------------------------------------------------- fnc


def fnc_base(work: str, fnc: Path, *, smoke: bool) -> str:
    """The FNC recipe without the red images: synthetic pretraining, the 2 yellow samples."""
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from flows.train import TrainParams, train
    from neuroseg import registry, storage, synth
    from neuroseg.training import PRESETS, augmented_phases

    if registry.production_version(work, "fnc-base"):
        return "fnc-base"
    grey = {"tile": 400, "min_overlap": 100, "channels": "grey", "normalization": "percentile"}
    size = (600, 800) if smoke else (1200, 1600)
    synth.write_dataset(
        f"{work}/incoming", name="fnc-synthetic", images=6 if smoke else 24, seed=0,
        height=size[0], width=size[1],
    )  # fmt: skip
    ingest(IngestParams(source=f"{work}/incoming/datasets/fnc-synthetic", root=work,
                        dataset="fnc-synthetic"))  # fmt: skip
    prepare(PrepareParams(root=work, dataset="fnc-synthetic", **grey))
    phases = PRESETS["fnc"].phases
    if smoke:
        phases = [{**p.model_dump(), "epochs": 1, "steps_per_epoch": 2, "batch_size": 2}
                  for p in phases]  # fmt: skip
    pre = train(
        TrainParams(
            root=work, dataset="fnc-synthetic", preset="fnc", phases=phases,
            crop=96 if smoke else None, model_name="fnc-synthetic", evaluate=False,
            promote=False,
        )
    )  # fmt: skip
    yellow = fnc / "yellow"
    src = _copy_pairs(
        Path(work) / "incoming" / "fnc-yellow",
        [(p, yellow / "masks" / p.name) for p in sorted((yellow / "images").glob("*.png"))],
    )
    ingest(IngestParams(source=str(src), root=work, dataset="fnc-yellow"))
    prepare(PrepareParams(root=work, dataset="fnc-yellow", val_fraction=0, test_fraction=0,
                          **grey))  # fmt: skip
    spec = (("ft1", 3, 1e-3, "cells"), ("ft2", 5, 3e-4, "all"))  # the fnc script's schedule
    ft = augmented_phases(list(spec), batch_size=8, steps=40)
    if smoke:
        ft = [{**p.model_dump(), "epochs": 1, "steps_per_epoch": 2, "batch_size": 2} for p in ft]
    res = train(
        TrainParams(
            root=work, dataset="fnc-yellow", preset="fnc", phases=ft, crop=96 if smoke else None,
            init_model=f"fnc-synthetic@{pre['version']}", model_name="fnc-base",
            evaluate=False, promote=False,
        )
    )  # fmt: skip
    cfg_uri = storage.join(res["model_uri"], "config.json")
    cfg = storage.read_json(cfg_uri)
    cfg["postprocess"] = {**cfg["postprocess"], "min_area": 100}
    cfg.update(max_whole_pixels=registry.WHOLE_IMAGE_PIXELS, blend="taper")
    storage.write_json(cfg_uri, cfg)
    registry.set_production(
        work, "fnc-base", res["version"], reason="the FNC recipe without the red samples"
    )
    return "fnc-base"


def fnc_curve(work: str, fnc: Path, *, ks: tuple, smoke: bool) -> dict:
    from neuroseg import registry

    t0 = time.time()
    base = fnc_base(work, fnc, smoke=smoke)
    base_s = time.time() - t0
    red = fnc / "red"
    items = {
        p.stem: (p.stem, p, red / "masks" / p.name) for p in sorted((red / "images").glob("*.png"))
    }
    parent = model_segmenter(registry.resolve_model_uri(work, base))
    ids = sorted(items)
    out = {
        "base_seconds": round(base_s, 1),
        "unadapted": _summ(score_set(parent, list(items.values())), "f1_centroid"),
        "otsu": _summ(score_set(otsu_segmenter, list(items.values())), "f1_centroid"),
        "per_image_unadapted": score_set(parent, list(items.values())),
        "runs": [],
    }
    for k in ks:
        for combo in itertools.combinations(ids, k):
            if smoke and (k != 2 or combo != tuple(ids[:k])):
                continue
            pairs = [(items[s][1], items[s][2]) for s in combo]
            name = f"red-k{k}-" + "-".join(s[:6] for s in combo)
            res = run_adapt(work, name, pairs, model=base, reference="fnc-synthetic",
                            metric="f1_centroid")  # fmt: skip
            rest = [items[s] for s in ids if s not in combo]
            rows = score_set(model_segmenter(res["candidate_uri"]), rest)
            run = {"k": k, "corrections": list(combo), **_pick(res), "rows": rows}
            run["test"] = _summ(rows, "f1_centroid")
            out["runs"].append(run)
            print(f"fnc k={k} {combo}: {run['test']} {run['seconds']} s", flush=True)
    return out


def summary_table(part: dict, key: str) -> list[str]:
    """Markdown rows: k, pooled F1 and mean count MAE over runs, adapt seconds."""
    from neuroseg.adapt import pooled_scores

    lines = [
        f"| unadapted | {part['unadapted']['f1']:.3f} | {part['unadapted']['count_mae']:.1f} | | |",
        f"| Otsu | {part['otsu']['f1']:.3f} | {part['otsu']['count_mae']:.1f} | | |",
    ]
    for k in sorted({r["k"] for r in part["runs"]}):
        runs = [r for r in part["runs"] if r["k"] == k]
        f1 = [r["test"]["f1"] for r in runs]
        mae = [r["test"]["count_mae"] for r in runs]
        secs = [r["seconds"] for r in runs]
        pooled = ""
        if all("rows" in r for r in runs):
            pooled = f" (pooled {pooled_scores([x for r in runs for x in r['rows']])[key]:.3f})"
        lines.append(
            f"| k = {k} ({len(runs)} runs) | {np.mean(f1):.3f} ({min(f1):.3f}-{max(f1):.3f})"
            f"{pooled} | {np.mean(mae):.1f} | {np.mean(secs) / 60:.1f} ({min(secs) / 60:.1f}-"
            f"{max(secs) / 60:.1f}) | {sum(r['would_promote'] for r in runs)}/{len(runs)} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="scratch storage root")
    ap.add_argument("--part", choices=("nuclei", "fnc", "both"), default="both")
    ap.add_argument("--nuclei", default=str(SHARED / "nuclei"))
    ap.add_argument("--fnc", default=str(SHARED / "fnc-samples"))
    ap.add_argument("--draws", type=int, default=3, help="nuclei: random orders of corrections")
    ap.add_argument("--smoke", action="store_true", help="a few images and steps: a check")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    work = str(Path(args.work).resolve())
    from neuroseg.cli import configure_output, configure_prefect

    configure_prefect(work)
    configure_output()
    if args.smoke:
        SMOKE_ADAPT.update(epochs=1, steps_per_epoch=3)
    result_uri = Path(work) / "curves.json"
    result = json.loads(result_uri.read_text()) if result_uri.exists() else {}
    if args.part in ("nuclei", "both"):
        nuclei = Path(args.nuclei)
        if args.smoke:
            nuclei = _smoke_nuclei(Path(work) / "smoke-nuclei", nuclei)
        result["nuclei"] = nuclei_curve(
            work, nuclei, draws=1 if args.smoke else args.draws, ks=(1, 2, 4), smoke=args.smoke
        )
        result_uri.write_text(json.dumps(result, indent=1, default=float))
    if args.part in ("fnc", "both"):
        result["fnc"] = fnc_curve(work, Path(args.fnc), ks=(1, 2, 3), smoke=args.smoke)
        result_uri.write_text(json.dumps(result, indent=1, default=float))
    for name, key in (("nuclei", "f1_iou50"), ("fnc", "f1_centroid")):
        if name in result:
            print(f"\n{name}: | corrections | F1 | count MAE | adapt min | would promote |")
            print("\n".join(summary_table(result[name], key)))
    print(f"wrote {result_uri}")


def _smoke_nuclei(dest: Path, src: Path) -> Path:
    """A few images of each set, enough for one eligible kind (256x256)."""
    from neuroseg.splits import split_names

    stems = {p.stem: n for n in ("bbbc039", "dsb2018") for p in (src / n / "images").glob("*.png")}
    sp = split_names(list(stems), seed=0)
    keep = set()
    for n in ("bbbc039", "dsb2018"):  # some of each set and split
        for split, count in (("train", 10), ("val", 15), ("test", 15)):
            keep |= set([x for x in sp[split] if stems[x] == n][:count])
    for stem in keep:
        n = stems[stem]
        for sub in ("images", "labels"):
            (dest / n / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / n / sub / f"{stem}.png", dest / n / sub / f"{stem}.png")
    return dest


if __name__ == "__main__":
    main()
