"""The whole system end to end on the embedded default: what `neuroseg demo` runs.

Synthetic plates (plus, optionally, a folder of real images) are generated as a lab would upload
them, then the same flows the deployments run: ingest, prepare, train (or the shipped model),
evaluate, nightly inference; finally the cell table is read back with pandas.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, Field

from neuroseg import storage


class DemoParams(BaseModel):
    root: str = "./neuroseg-data"
    plates: int = Field(2, ge=1, le=50)
    images_per_plate: int = Field(3, ge=1, le=200)
    train_images: int = Field(16, ge=3, le=500)
    real_images: str | None = None
    nuclei_images: str | None = None
    train: bool = True
    seed: int = 0
    height: int = 1200
    width: int = 1600


class _Steps:
    def __init__(self, total: int):
        self.total, self.i, self.t0 = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.i += 1
        print(
            f"\n[{self.i}/{self.total}] {text}  (t = {time.perf_counter() - self.t0:.0f} s)",
            flush=True,
        )


def _add_real_images(folder: str, incoming: str) -> tuple[int, bool]:
    """Copy real images into the incoming area as plate REAL (and FNC pairs as a dataset)."""
    from neuroseg.ingest import IMAGE_SUFFIXES

    base = Path(folder)
    if not base.is_dir():
        raise FileNotFoundError(f"{folder}: --real-images must be a folder")
    images_dir = base / "images" if (base / "images").is_dir() else base
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no .png/.tif images found")
    has_masks = (base / "masks").is_dir()
    for p in files:
        data = p.read_bytes()
        storage.write_bytes(storage.join(incoming, "plates", "REAL", p.name), data)
        mask = base / "masks" / p.name
        if has_masks and mask.exists():
            storage.write_bytes(storage.join(incoming, "real", "images", p.name), data)
            storage.write_bytes(storage.join(incoming, "real", "masks", p.name), mask.read_bytes())
    return len(files), has_masks


def demo(params: DemoParams) -> dict:
    from flows.evaluate import EvaluateParams, evaluate
    from flows.infer import InferParams, nightly_inference
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from flows.train import TrainParams, train
    from neuroseg import synth
    from neuroseg.inference import read_cells

    root = params.root
    incoming = storage.join(root, "incoming")
    step = _Steps(9)

    step(
        f"synthetic data: {params.train_images} annotated images, "
        f"{params.plates} plate(s) x {params.images_per_plate} uploads"
    )
    synth.write_dataset(
        incoming,
        name="synthetic",
        images=params.train_images,
        seed=params.seed,
        height=params.height,
        width=params.width,
    )
    synth.write_uploads(
        storage.join(incoming, "plates-root"),
        plates=params.plates,
        images_per_plate=params.images_per_plate,
        seed=params.seed + 1000,
        height=params.height,
        width=params.width,
    )
    real = None
    if params.real_images:
        real = _add_real_images(params.real_images, incoming)
        print(f"  + {real[0]} real image(s) from {params.real_images} as plate REAL")

    step("ingest: validate, hash and record")
    ds = ingest(
        IngestParams(
            source=storage.join(incoming, "datasets", "synthetic"), root=root, dataset="synthetic"
        )
    )
    up = ingest(IngestParams(source=storage.join(incoming, "plates-root", "uploads"), root=root))
    print(
        f"  dataset: {ds['ingested']} new, {ds['skipped']} known; uploads: {up['ingested']} "
        f"new, {up['skipped']} known, {up['quarantined']} quarantined"
    )
    if real:
        ingest(IngestParams(source=storage.join(incoming, "plates"), root=root))
        if real[1]:
            ingest(IngestParams(source=storage.join(incoming, "real"), root=root, dataset="real"))

    step("prepare: mask analysis and tiling per image, split by image")
    prep = prepare(PrepareParams(root=root, dataset="synthetic", seed=params.seed))
    print(
        f"  {prep['images']} images -> {prep['tiles']} tiles, {prep['cells']} cells, "
        f"overlap suggestion {prep['suggested_overlap']} px"
    )

    if params.train:
        step("train: the cpu-small preset, three phases, checkpoint after each")
        trained = train(
            TrainParams(root=root, dataset="synthetic", preset="cpu-small", evaluate=False)
        )
        model_spec = f"neuroseg@{trained['version']}"
        print(f"  registered {trained['model_uri']} on {trained['device']}")
    else:
        step("train: skipped (--no-train), the shipped model serves")
        model_spec = "default"

    step("evaluate: stitched full-resolution scores, confusion matrix, plots, promotion")
    ev = evaluate(EvaluateParams(root=root, dataset="synthetic", model=model_spec, promote=True))
    kf = ev["key_figures"]
    print(
        f"  object F1 {kf['object_f1']:.3f} (P {kf['object_precision']:.3f}, "
        f"R {kf['object_recall']:.3f}), count MAE {kf['count_mae']:.2f}, pixel F1 "
        f"{kf['pixel_f1']:.3f}; baseline object F1 {kf.get('baseline_object_f1', float('nan')):.3f}"
    )
    if real and real[1]:
        ev_real = evaluate(
            EvaluateParams(
                root=root, model=model_spec, images=storage.join(incoming, "real"), sweep=False
            )
        )
        rk = ev_real["key_figures"]
        print(
            f"  on the {real[0]} real image(s): object F1 {rk['object_f1']:.3f}, count MAE "
            f"{rk['count_mae']:.2f}, pixel F1 {rk['pixel_f1']:.3f}; baseline object F1 "
            f"{rk.get('baseline_object_f1', float('nan')):.3f}"
        )

    step("nightly inference: new uploads -> cells/plate_id=<id>/<image>.parquet")
    serving = model_spec if not ev.get("promoted") else "neuroseg"
    night = nightly_inference(InferParams(root=root, model=serving))
    print(f"  {night['images']} image(s), {night['cells']} cells, {night['failed']} failed")
    again = nightly_inference(InferParams(root=root, model=serving))
    print(f"  re-run of the same night: {again['images']} new image(s) (idempotent)")

    step("query the cell table with pandas")
    cells = read_cells(storage.join(root, "cells"))
    per_image = cells.groupby(["plate_id", "image_id"], observed=True).size()
    print(
        cells[
            [
                "plate_id",
                "image_id",
                "cell_id",
                "centroid_x",
                "centroid_y",
                "area_px",
                "mean_probability",
            ]
        ]
        .head(8)
        .to_string(index=False)
    )
    print(
        f"  {len(cells)} cells in {len(per_image)} images; cells per image: "
        f"{per_image.describe()[['mean', 'min', 'max']].round(1).to_dict()}"
    )

    step("nuclei: the shipped nuclei model on grey fluorescence images of any bit depth")
    nuclei = _nuclei_demo(root, params)

    step("where to look")
    print(f"  cell table:   pd.read_parquet({storage.join(root, 'cells')!r})")
    print(f"  reports/plots: {storage.join(root, 'reports')}")
    print(f"  models:        {storage.join(root, 'models')}")
    for plate, uri in (night.get("reports") or {}).items():
        print(f"  plate report:  {uri}  ({plate})")
    if nuclei:
        print(f"  nuclei labels: {nuclei['labels']}  (16-bit, pixel value = cell_id)")
    print(
        "  artifacts:     `prefect artifact ls` (same PREFECT_HOME), or run "
        "`prefect server start` and open http://127.0.0.1:4200"
    )
    return {"evaluation": kf, "nightly": night, "cells": len(cells), "nuclei": nuclei}


def nuclei_source(params: DemoParams) -> str | None:
    """Real nucleus images for the demo: ``--nuclei-images``, else BBBC039 beside the checkout."""
    if params.nuclei_images:
        return params.nuclei_images
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nuclei" / "bbbc039"
    return str(shared) if (shared / "images").is_dir() else None


def _nuclei_demo(root: str, params: DemoParams, *, n: int = 4) -> dict | None:
    """Segment a few nucleus images with the shipped ``nuclei`` model, with label images out;
    score them against their labels/ where there are some. Without real images, a synthetic
    plate written as a 12-bit grey image shows the same path."""

    import numpy as np

    from neuroseg import registry
    from neuroseg.segment_files import segment_files

    if not storage.exists(storage.join(registry.shipped_model_uri("nuclei"), "config.json")):
        print("  no shipped nuclei model in this installation: skipped")
        return None
    folder = nuclei_source(params)
    work = storage.join(root, "nuclei-demo")
    if folder:
        images_dir = Path(folder) / "images"
        files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".png", ".tif"))
        files = [str(p) for p in files[:n]]
        print(f"  {len(files)} real image(s) from {folder}")
    else:
        from neuroseg import synth

        files = []
        for i in range(2):
            uri = storage.join(work, "images", f"grey12_{i}.png")
            storage.write_bytes(uri, synth.grey12_png(seed=params.seed + 500 + i))
            files.append(uri)
        print("  no real nucleus images here (../shared absent): 2 synthetic 12-bit grey images")
    labels_dir = storage.join(work, "labels")
    cells = segment_files(
        files, out=storage.join(work, "cells.parquet"), model="nuclei", labels=labels_dir
    )
    counts = cells.groupby("image_id").size()
    out = {"images": len(files), "cells": len(cells), "labels": labels_dir}
    if folder and (Path(folder) / "labels").is_dir():
        from neuroseg.images import read_labels
        from neuroseg.metrics import iou_matching, iou_scores

        matches = []
        for f in files:
            stem = Path(f).stem
            truth = read_labels(str(Path(folder) / "labels" / Path(f).name))
            pred = read_labels(storage.join(labels_dir, f"{stem}.png"))
            matches.append(iou_matching(truth, pred))
            print(
                f"  {stem[:40]}: {int(counts.get(stem, 0))} nuclei found, "
                f"{len(np.unique(truth)) - 1} annotated"
            )
        sc = iou_scores(matches)
        out.update(f1_50=sc["f1_50"], mean_ap=sc["mean_ap"], count_mae=sc["count_mae"])
        print(
            f"  against the annotations: F1 {sc['f1_50']:.3f} at IoU 0.5, mean AP "
            f"{sc['mean_ap']:.3f} (IoU 0.5:0.95), count MAE {sc['count_mae']:.1f}"
        )
    else:
        for stem, k in counts.items():
            print(f"  {stem}: {k} nuclei found")
    return out
