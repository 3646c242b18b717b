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
from neuroseg.images import read_labels, read_mask, read_native
from neuroseg.masks import analyze_labels, analyze_mask, label_mask, summarize_cells
from neuroseg.normalize import input_scale, input_spec, resize_planes, scaled_shape
from neuroseg.predict import prepare_input
from neuroseg.splits import split_names
from neuroseg.tiling import crop_tiles, tile_grid

SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


def prepared_version(
    records: list[dict],
    *,
    tile: int,
    min_overlap: int,
    seed: int,
    input: dict | None = None,
    channel: int | None = None,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> str:
    """Content hash of a dataset plus the preparation parameters (12 hex digits).

    Label images, a non-legacy input spec, a channel and split fractions other than
    :data:`SPLIT_FRACTIONS` enter the hash only when present, so versions of mask-only datasets
    prepared for legacy models keep their old names.
    """
    h = hashlib.sha256()
    for rec in sorted(records, key=lambda r: r["image_id"]):
        line = f"{rec['image_id']}:{rec['sha256']}:{rec.get('mask_sha256')}"
        if _present(rec.get("labels_sha256")):
            line += f":{rec['labels_sha256']}"
        h.update(f"{line}\n".encode())
    params: dict = {"tile": tile, "min_overlap": min_overlap, "seed": seed}
    spec = input_spec(input)
    if spec != input_spec(None):
        params["input"] = spec
    if channel is not None:
        params["channel"] = int(channel)
    fractions = split_fractions(fractions[1], fractions[2])
    if fractions != SPLIT_FRACTIONS:
        params["fractions"] = list(fractions)
    h.update(json.dumps(params, sort_keys=False).encode())
    return h.hexdigest()[:12]


def split_fractions(val: float, test: float) -> tuple[float, float, float]:
    """``(train, val, test)`` as floats; train is whatever val and test leave."""
    val, test = float(val), float(test)
    return (round(1.0 - val - test, 6), val, test)


def _present(value) -> bool:
    """A manifest value that is set (not None, NaN or empty: pandas turns None into NaN)."""
    return isinstance(value, str) and bool(value)


def prepared_uri(root: str, dataset: str, version: str) -> str:
    return storage.join(root, "prepared", dataset, version)


def model_tiles_input(image: np.ndarray, *, input: dict | None = None, channel=None):
    """The model input of a decoded image as ``(H, W, 3) uint8`` (0..255), for tile shards.

    :func:`neuroseg.predict.prepare_input` (the function inference uses), rounded to 8 bits:
    an 8-bit RGB image for a legacy model is unchanged.
    """
    x = prepare_input({"input": input_spec(input)}, image, channel=channel)
    if x.dtype != np.uint8:
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return x


def prepare_image(
    out_uri: str,
    image_id: str,
    image_uri: str,
    mask_uri: str | None,
    *,
    tile: int,
    min_overlap: int,
    labels_uri: str | None = None,
    input: dict | None = None,
    channel: int | None = None,
) -> dict:
    """Analyse the annotation and tile one image; write its shard, cell table and meta record.

    The shard ``tiles/<image_id>.npz`` holds ``images (n, T, T, 3) uint8`` (the model input
    declared by `input`, see :func:`model_tiles_input`), ``masks (n, T, T) uint8`` {0, 255},
    ``labels (n, T, T) int32`` (instance ids: the label image where there is one, else the
    4-connected components of the mask) and ``grid (n, 2)``. The cell table has one row per
    instance of the label image, else per mask component (the seed's markGroups), measured at
    the image's own size; with an input ``scale`` (:func:`neuroseg.normalize.input_scale`) the
    tiles, masks and labels are of the image resized by it (labels by nearest neighbour), as
    the model will see it, and ``height``/``width`` in the meta record are the resized ones.

    Returns the meta record (small: counts and per-tile foreground), never arrays. Resumable:
    when the meta record exists, it is returned without recomputing.
    """
    meta_uri = storage.join(out_uri, "meta", f"{image_id}.json")
    if storage.exists(meta_uri):
        return storage.read_json(meta_uri)
    image = read_native(image_uri)
    labels = read_labels(labels_uri) if _present(labels_uri) else None
    mask = read_mask(mask_uri) if _present(mask_uri) else None
    if labels is None and mask is None:
        raise ValueError(f"{image_uri}: no mask and no label image to prepare")
    for what, uri, arr in (("mask", mask_uri, mask), ("label image", labels_uri, labels)):
        if arr is not None and arr.shape != image.shape[:2]:
            raise ValueError(f"{uri}: {what} shape {arr.shape} != image shape {image.shape[:2]}")
    if labels is not None:
        cells = analyze_labels(labels)
        if mask is None:
            mask = np.where(labels > 0, np.uint8(255), np.uint8(0))
    else:
        cells = analyze_mask(mask)
        labels, _ = label_mask(mask)
    x = model_tiles_input(image, input=input, channel=channel)
    foreground_px, total_px = int((mask > 127).sum()), int(mask.size)  # the image's own
    scale = input_scale(input)
    if scale != 1.0:  # the model sees the image resized (normalised on the whole image first)
        shape = scaled_shape(mask.shape, scale)
        x = resize_planes(x, shape)
        mask = resize_planes(mask, shape, nearest=True)
        labels = resize_planes(labels, shape, nearest=True)
    height, width = mask.shape
    grid = tile_grid(height, width, tile=tile, min_overlap=min_overlap)
    img_tiles = crop_tiles(x, grid, tile=tile)
    mask_tiles = crop_tiles(mask, grid, tile=tile)
    label_tiles = crop_tiles(labels.astype(np.int32, copy=False), grid, tile=tile)
    fg = (mask_tiles > 127).reshape(len(grid), -1).sum(axis=1)

    buf = io.BytesIO()
    np.savez(buf, images=img_tiles, masks=mask_tiles, labels=label_tiles, grid=grid)
    shard_key = f"tiles/{image_id}.npz"
    storage.write_bytes(storage.join(out_uri, shard_key), buf.getvalue())
    cell_df = pd.DataFrame({"image_id": image_id, **cells})
    storage.write_parquet(cell_df, storage.join(out_uri, "cells", f"{image_id}.parquet"))
    meta = {
        "image_id": image_id,
        "height": int(height),
        "width": int(width),
        "n_cells": len(cell_df),
        "foreground_px": foreground_px,
        "total_px": total_px,
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

    :func:`neuroseg.splits.split_names`: with at least 3 images, validation and test get one
    image each at least unless their fraction is 0 (``(1, 0, 0)`` puts every image in train,
    e.g. the training images of one fold of a cross-validation).
    """
    if not image_ids:
        raise ValueError("cannot split an empty dataset")
    return split_names(image_ids, seed=seed, fractions=fractions)


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


def finalize(
    out_uri: str,
    metas: list[dict],
    *,
    seed: int,
    params: dict,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> dict:
    """Write the tile index, the cell table, the split and the summary of a prepared dataset."""
    splits = split_images([m["image_id"] for m in metas], seed=seed, fractions=fractions)
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
