"""Preparation of an annotated dataset for training (light: no TensorFlow).

Per image: mask analysis (the seed's flood fill, vectorised) and tiling (the seed's evenly spaced
400x400 partitions with >= 100 px overlap). Per dataset: a split by source image (never by tile,
so overlapping tiles of one image cannot leak across train and test), the tile index and a
summary with the seed's numbers (percentiles, foreground fraction, class weights, overlap).

Layout of ``<root>/prepared/<dataset>/<version>/`` (see docs/architecture.md):
``tiles/<image_id>.npz``, ``cells/<image_id>.parquet``, ``meta/<image_id>.json`` (per image, the
last file written: its presence means the image is done), then ``tiles.parquet``,
``cells.parquet``, ``splits.json`` and finally ``summary.json`` (its presence means the whole
version is done). ``version`` hashes the content hashes of the images and masks with the
parameters, so an unchanged dataset is never prepared twice.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd

from neuroseg import storage
from neuroseg.images import read_image, read_mask
from neuroseg.masks import analyze_mask, summarize_cells
from neuroseg.tiling import crop_tiles, tile_grid

SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


def prepared_version(records: list[dict], *, tile: int, min_overlap: int, seed: int) -> str:
    """Content hash of a dataset plus the preparation parameters (12 hex digits)."""
    h = hashlib.sha256()
    for rec in sorted(records, key=lambda r: r["image_id"]):
        h.update(f"{rec['image_id']}:{rec['sha256']}:{rec.get('mask_sha256')}\n".encode())
    h.update(json.dumps({"tile": tile, "min_overlap": min_overlap, "seed": seed}).encode())
    return h.hexdigest()[:12]


def prepared_uri(root: str, dataset: str, version: str) -> str:
    return storage.join(root, "prepared", dataset, version)


def prepare_image(
    out_uri: str, image_id: str, image_uri: str, mask_uri: str, *, tile: int, min_overlap: int
) -> dict:
    """Analyse the mask and tile one image; write its shard, cell table and meta record.

    Returns the meta record (small: counts and per-tile foreground), never arrays. Resumable:
    when the meta record exists, it is returned without recomputing.
    """
    meta_uri = storage.join(out_uri, "meta", f"{image_id}.json")
    if storage.exists(meta_uri):
        return storage.read_json(meta_uri)
    image = read_image(image_uri)
    mask = read_mask(mask_uri)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"{mask_uri}: mask shape {mask.shape} != image shape {image.shape[:2]}")
    cells = analyze_mask(mask)
    height, width = mask.shape
    grid = tile_grid(height, width, tile=tile, min_overlap=min_overlap)
    img_tiles = crop_tiles(image, grid, tile=tile)
    mask_tiles = crop_tiles(mask, grid, tile=tile)
    fg = (mask_tiles > 127).reshape(len(grid), -1).sum(axis=1)

    buf = io.BytesIO()
    np.savez(buf, images=img_tiles, masks=mask_tiles, grid=grid)
    shard_key = f"tiles/{image_id}.npz"
    storage.write_bytes(storage.join(out_uri, shard_key), buf.getvalue())
    cell_df = pd.DataFrame({"image_id": image_id, **cells})
    storage.write_parquet(cell_df, storage.join(out_uri, "cells", f"{image_id}.parquet"))
    meta = {
        "image_id": image_id,
        "height": int(height),
        "width": int(width),
        "n_cells": len(cell_df),
        "foreground_px": int((mask > 127).sum()),
        "total_px": int(height * width),
        "shard": shard_key,
        "tiles": [
            {"tile_index": i, "row": int(r), "col": int(c), "foreground_px": int(f)}
            for i, ((r, c), f) in enumerate(zip(grid, fg, strict=True))
        ],
    }
    storage.write_json(meta_uri, meta)
    return meta


def split_images(
    image_ids: list[str], *, seed: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> dict[str, list[str]]:
    """Split image ids into train/val/test by image, deterministically for a seed.

    With at least 3 images, validation and test get one image each at least.
    """
    if not image_ids:
        raise ValueError("cannot split an empty dataset")
    ids = sorted(image_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    n = len(ids)
    n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
    n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
    test, val = shuffled[:n_test], shuffled[n_test : n_test + n_val]
    train = shuffled[n_test + n_val :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def histogram_table(values: np.ndarray, *, bins: int = 10) -> list[dict]:
    """Counts per equal-width bin, the table equivalent of the seed's histograms."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return []
    counts, edges = np.histogram(values, bins=bins)
    return [
        {"from": float(edges[i]), "to": float(edges[i + 1]), "count": int(counts[i])}
        for i in range(len(counts))
    ]


def finalize(out_uri: str, metas: list[dict], *, seed: int, params: dict) -> dict:
    """Write the tile index, the cell table, the split and the summary of a prepared dataset."""
    splits = split_images([m["image_id"] for m in metas], seed=seed)
    split_of = {i: s for s, ids in splits.items() for i in ids}
    tiles = pd.DataFrame(
        [
            {"image_id": m["image_id"], **t, "shard": m["shard"], "split": split_of[m["image_id"]]}
            for m in metas
            for t in m["tiles"]
        ]
    )
    parts = [
        storage.read_parquet(storage.join(out_uri, "cells", f"{m['image_id']}.parquet"))
        for m in metas
    ]
    cells = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    total_px = sum(m["total_px"] for m in metas)
    stats = summarize_cells({c: cells[c].to_numpy() for c in cells.columns}, total_pixels=total_px)
    storage.write_parquet(tiles, storage.join(out_uri, "tiles.parquet"))
    storage.write_parquet(cells, storage.join(out_uri, "cells.parquet"))
    storage.write_json(storage.join(out_uri, "splits.json"), splits)
    summary = {
        **storage.to_jsonable(stats),
        "images": len(metas),
        "tiles": len(tiles),
        "tiles_with_cells": int((tiles["foreground_px"] > 5).sum()) if len(tiles) else 0,
        "splits": {k: len(v) for k, v in splits.items()},
        "params": params,
        "histograms": {
            k: histogram_table(cells[c].to_numpy()) if len(cells) else []
            for k, c in (("area", "area_px"), ("width", "bbox_width"), ("height", "bbox_height"))
        },
    }
    storage.write_json(storage.join(out_uri, "summary.json"), summary)  # last: version complete
    return summary
