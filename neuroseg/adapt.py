"""Adapting the serving model to a lab's corrections, library side (light; no TensorFlow).

The adapt flow (``flows/adapt.py``) fine-tunes the production model on corrected images mixed
with a replay of the data it was trained on, scores the candidate, and promotes it only when it
is better on the lab's images and at most ``tolerance`` worse on the model's reference
validation set. This module holds the pieces that need no model:

- :func:`fine_tune_config`: the parent's own training configuration (same network, loss and
  targets) with one short fine-tuning phase;
- :func:`cross_folds`: which corrected images each fold model trains on and is scored on
  (leave-one-out under :data:`LOO_BELOW` images, else that many folds);
- :func:`build_mix`: a prepared folder mixing the corrected images' tiles with replayed tiles of
  the reference data, in the layout :func:`neuroseg.pipeline.load_tiles` reads;
- :func:`score_objects`, :func:`pooled_scores`: per-image object matches and pooled F1 (IoU 0.5
  and centroids within 40 px) and count error;
- :func:`decide`: the promotion rule, with its reason in one line.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from neuroseg import storage

__all__ = [
    "ADAPT_METRICS",
    "LOO_BELOW",
    "build_mix",
    "candidate_config",
    "correction_hashes",
    "correction_samples",
    "cross_folds",
    "decide",
    "fine_tune_config",
    "pooled_scores",
    "reference_data",
    "score_objects",
    "without_images",
]

#: Fewer corrected images than this are scored by leave-one-out; more by this many folds.
LOO_BELOW = 5
#: Scores the promotion rule may use: F1 of objects matched at IoU >= 0.5, or by centroids
#: within 40 px (the FNC v2 rule).
ADAPT_METRICS = ("f1_iou50", "f1_centroid")
#: Keys of a model's config that name a registered version, not what it computes.
_IDENTITY = ("name", "version", "registered_at", "lineage")


def fine_tune_config(
    parent_config: Mapping,
    *,
    epochs: int,
    steps_per_epoch: int,
    learning_rate: float,
    batch_size: int | None = None,
    crop: int | None = None,
    seed: int | None = 0,
) -> dict:
    """The parent model's training configuration with one fine-tuning phase.

    Parameters
    ----------
    parent_config : mapping
        The parent's ``config.json`` (its ``train`` entry is a
        :class:`neuroseg.training.TrainConfig` dump).
    epochs, steps_per_epoch, learning_rate : int, int, float
        The phase: ``epochs * steps_per_epoch`` batches at this learning rate (a fresh Adam).
    batch_size, crop : int, optional
        Override the parent's last phase's batch size and the parent's crop.
    seed : int, optional

    Returns
    -------
    dict
        A ``TrainConfig`` dump (validated when training starts): the network, loss, targets
        and augmentation of the parent's last phase, on tiles with cells, no early stopping,
        no validation.

    Raises
    ------
    ValueError
        The parent has no ``train`` entry (not trained by neuroseg) or an option is out of range.
    """
    train = dict(parent_config.get("train") or {})
    if not train.get("phases"):
        raise ValueError(
            f"model {parent_config.get('name')}@{parent_config.get('version')} has no training "
            "configuration (config.json 'train'): only models trained by neuroseg can be adapted"
        )
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    last = dict(train["phases"][-1])
    phase = {
        "name": "adapt",
        "epochs": int(epochs),
        "learning_rate": float(learning_rate),
        "batch_size": int(batch_size or last.get("batch_size", 8)),
        "tile_filter": "cells",
        "shapes": bool(last.get("shapes", False)),
        "affine": bool(last.get("affine", False)),
        "intensity": bool(last.get("intensity", False)),
        "steps_per_epoch": int(steps_per_epoch),
    }
    train.update(phases=[phase], seed=seed, early_stopping_patience=None, val_max_tiles=None)
    if crop is not None:
        train["crop"] = int(crop)
    return train


def candidate_config(parent_config: Mapping, train_config: Mapping) -> dict:
    """The config to register a fine-tuned model with: the parent's inference settings
    (input, tile, post-processing, per-stain choices, ...) and the fine-tuning's ``train``."""
    cfg = {k: v for k, v in parent_config.items() if k not in _IDENTITY}
    cfg["train"] = dict(train_config)
    return cfg


def cross_folds(image_ids: Sequence[str], *, loo_below: int = LOO_BELOW) -> list[dict]:
    """Folds scoring every corrected image with a model that did not train on it.

    Under ``loo_below`` images, leave-one-out (one fold per image); from ``loo_below`` on,
    ``loo_below`` folds (image ``i`` of the sorted ids held out in fold ``i % loo_below``).
    One image gives no fold: nothing would be left to train on.

    Returns
    -------
    list of dict
        ``{"fold", "train", "held_out"}`` (sorted id lists).
    """
    ids = sorted(str(i) for i in image_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be distinct")
    if len(ids) < 2:
        return []
    k = len(ids) if len(ids) < loo_below else int(loo_below)
    out = []
    for f in range(k):
        held = ids[f::k]
        out.append({"fold": f, "train": [i for i in ids if i not in held], "held_out": held})
    return out


def _read_npz(uri: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(uri))) as npz:
        return {k: npz[k] for k in npz.files}


def build_mix(
    out_uri: str,
    *,
    corrections: Sequence[Mapping],
    corrections_uri: str,
    replay_uri: str | None,
    replay_share: float = 0.5,
    replay_tiles: int = 64,
    seed: int = 0,
    params: Mapping | None = None,
) -> dict:
    """Write a prepared folder whose train split mixes corrected tiles with replayed ones.

    Parameters
    ----------
    out_uri : str
        The folder to write (``tiles/``, ``tiles.parquet``, ``splits.json``, ``summary.json``
        last, as the prepare flow writes them).
    corrections : sequence of mapping
        Meta records of the prepared corrected images to train on
        (:func:`neuroseg.prepare.prepare_image`'s: ``image_id``, ``shard``, ``tiles``).
    corrections_uri : str
        The folder those records' shards are relative to.
    replay_uri : str or None
        A prepared version folder of the parent's training data: tiles of its ``train`` split
        are replayed (none: corrections only).
    replay_share : float
        The share of the training tiles that are replayed (0..1, below 1): the corrected tiles
        are repeated so that they make up the rest.
    replay_tiles : int
        How many replayed tiles at least (drawn without replacement, seeded), so that one
        corrected image is mixed with more than a tile or two of replay.
    seed : int
    params : mapping, optional
        The preparation parameters to record (``tile``, ``input``, ...; default the replay
        folder's), which training reads (e.g. the grey fill of affine warps).

    Returns
    -------
    dict
        The ``summary.json`` written: ``images``, ``tiles`` (rows of the index, repeats
        included), ``corrected_tiles``, ``replayed_tiles``, ``repeat``, ``params``.
    """
    if not 0 <= replay_share < 1:
        raise ValueError(f"replay_share must be in [0, 1), got {replay_share!r}")
    if not corrections:
        raise ValueError("no corrected image to train on")
    rows, shards = [], {}
    for meta in corrections:
        key = f"tiles/corrected/{meta['image_id']}.npz"
        shards[key] = storage.join(corrections_uri, meta["shard"])
        for t in meta["tiles"]:
            rows.append(
                {
                    "image_id": str(meta["image_id"]),
                    "tile_index": int(t["tile_index"]),
                    "foreground_px": int(t["foreground_px"]),
                    "shard": key,
                    "source": "corrected",
                }
            )
    corrected = len(rows)
    replay = []
    if replay_uri and replay_share > 0:
        index = storage.read_parquet(storage.join(replay_uri, "tiles.parquet"))
        pool = index[(index["split"] == "train") & (index["foreground_px"] > 5)]
        want = max(int(replay_tiles), math.ceil(corrected * replay_share / (1 - replay_share)))
        rng = np.random.default_rng(seed)
        take = rng.choice(len(pool), size=min(want, len(pool)), replace=False) if len(pool) else []
        for r in pool.iloc[np.sort(np.asarray(take, dtype=int))].itertuples(index=False):
            key = f"tiles/replay/{r.shard.rsplit('/', 1)[-1]}"
            shards[key] = storage.join(replay_uri, str(r.shard))
            replay.append(
                {
                    "image_id": str(r.image_id),
                    "tile_index": int(r.tile_index),
                    "foreground_px": int(r.foreground_px),
                    "shard": key,
                    "source": "replay",
                }
            )
    repeat = 1
    if replay:
        repeat = max(1, round(len(replay) * (1 - replay_share) / replay_share / corrected))
    tiles = pd.DataFrame(rows * repeat + replay)
    tiles["split"] = "train"
    for key, src in sorted(shards.items()):
        storage.copy(src, storage.join(out_uri, key))
    if params is None and replay_uri:
        params = storage.read_json(storage.join(replay_uri, "summary.json")).get("params", {})
    summary = {
        "images": int(tiles["image_id"].nunique()),
        "tiles": len(tiles),
        "corrected_tiles": corrected,
        "replayed_tiles": len(replay),
        "repeat": repeat,
        "replay_share": float(replay_share),
        "replay_uri": replay_uri,
        "params": dict(params or {}),
    }
    storage.write_parquet(tiles, storage.join(out_uri, "tiles.parquet"))
    storage.write_json(
        storage.join(out_uri, "splits.json"),
        {"train": sorted(tiles["image_id"].unique().tolist()), "val": [], "test": []},
    )
    storage.write_json(storage.join(out_uri, "summary.json"), summary)  # last: complete
    return summary


def score_objects(
    image_id: str, true_labels: np.ndarray, pred_labels: np.ndarray, *, radius: float = 40.0
) -> dict:
    """Object matches of one image: IoU >= 0.5 and centroids within ``radius`` px.

    Returns
    -------
    dict
        ``image_id, true, pred`` (object counts), ``iou_tp, iou_fp, iou_fn``, ``c_tp, c_fp,
        c_fn`` (to pool), ``f1_iou50``, ``f1_centroid`` (this image's; 1 when it has no object
        and none is found).
    """
    from neuroseg.metrics import match_by_iou, match_objects

    by_iou = match_by_iou(true_labels, pred_labels)
    by_c = match_objects(true_labels, pred_labels, radius=radius)
    return {
        "image_id": str(image_id),
        "true": int(by_iou["n_true"]),
        "pred": int(by_iou["n_pred"]),
        "iou_tp": int(by_iou["tp"]),
        "iou_fp": int(by_iou["fp"]),
        "iou_fn": int(by_iou["fn"]),
        "c_tp": int(by_c["tp"]),
        "c_fp": int(by_c["fp"]),
        "c_fn": int(by_c["fn"]),
        "f1_iou50": float(by_iou["f1"]),
        "f1_centroid": float(by_c["f1"]),
    }


def _f1(tp: int, fp: int, fn: int) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def pooled_scores(rows: Iterable[Mapping]) -> dict | None:
    """Counts of :func:`score_objects` pooled over images (as StarDist pools):
    ``f1_iou50``, ``f1_centroid``, ``count_mae``, ``n_images``, ``n_true``, ``n_pred``; None
    for no image."""
    rows = list(rows)
    if not rows:
        return None
    s = {k: sum(int(r[k]) for r in rows) for k in ("iou_tp", "iou_fp", "iou_fn", "c_tp", "c_fp")}
    s["c_fn"] = sum(int(r["c_fn"]) for r in rows)
    return {
        "f1_iou50": _f1(s["iou_tp"], s["iou_fp"], s["iou_fn"]),
        "f1_centroid": _f1(s["c_tp"], s["c_fp"], s["c_fn"]),
        "count_mae": float(np.mean([abs(int(r["pred"]) - int(r["true"])) for r in rows])),
        "n_images": len(rows),
        "n_true": sum(int(r["true"]) for r in rows),
        "n_pred": sum(int(r["pred"]) for r in rows),
    }


def decide(
    *,
    lab_parent: Mapping | None,
    lab_candidate: Mapping | None,
    ref_parent: Mapping | None,
    ref_candidate: Mapping | None,
    metric: str = "f1_iou50",
    tolerance: float = 0.02,
    min_gain: float = 0.0,
) -> tuple[bool, str]:
    """The promotion rule: better on the lab's images, at most `tolerance` worse on the
    reference set.

    Parameters
    ----------
    lab_parent, lab_candidate : mapping or None
        :func:`pooled_scores` of the parent and of the candidate on the corrected images the
        candidate (its fold models) did not train on; None when there are none (one image).
    ref_parent, ref_candidate : mapping or None
        :func:`pooled_scores` on the reference validation set; None when there is none.
    metric : {"f1_iou50", "f1_centroid"}
    tolerance : float
        How much lower the candidate's reference score may be than the parent's.
    min_gain : float
        How much higher its lab score must be (strictly above parent + min_gain).

    Returns
    -------
    (bool, str)
        Whether to promote, and why, in one line.
    """
    if metric not in ADAPT_METRICS:
        raise ValueError(f"metric must be one of {', '.join(ADAPT_METRICS)}, got {metric!r}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    if lab_parent is None or lab_candidate is None:
        return False, (
            "kept the production model: at least 2 corrected images are needed to score the "
            "candidate on an image it did not train on"
        )
    if ref_parent is None or ref_candidate is None:
        return False, "kept the production model: no reference validation images to score on"
    lp, lc = float(lab_parent[metric]), float(lab_candidate[metric])
    rp, rc = float(ref_parent[metric]), float(ref_candidate[metric])
    n = int(lab_candidate.get("n_images", 0))
    lab = f"{metric} on {n} corrected image(s) {lc:.3f} (production {lp:.3f})"
    ref = f"on the reference set {rc:.3f} (production {rp:.3f}, tolerance {tolerance:g})"
    if not lc > lp + min_gain:
        gain = f" + {min_gain:g}" if min_gain else ""
        return False, f"kept the production model: not better on the lab's images: {lab}{gain}"
    if rc < rp - tolerance - 1e-12:
        return False, f"kept the production model: worse {ref}; {lab}"
    return True, f"promoted: better on the lab's images, {lab}; {ref}"


def correction_hashes(records: Iterable[Mapping]) -> list[dict]:
    """What a candidate trained on, for its lineage: ``image_id``, ``sha256``, and the
    ``labels_sha256`` / ``mask_sha256`` of each correction's manifest record."""
    keep = ("image_id", "sha256", "labels_sha256", "mask_sha256")
    out = []
    for r in records:
        row = {k: r.get(k) for k in keep}
        out.append({k: (v if isinstance(v, str) else None) for k, v in row.items()})
    return sorted(out, key=lambda r: r["image_id"])


def _sample(record: Mapping) -> dict:
    def opt(key):
        value = record.get(key)
        return value if isinstance(value, str) and value else None

    return {
        "image_id": str(record["image_id"]),
        "image_uri": str(record["image_uri"]),
        "mask_uri": opt("mask_uri"),
        "labels_uri": opt("labels_uri"),
        "sha256": opt("sha256"),
    }


def without_images(samples: Iterable[Mapping], records: Iterable[Mapping]) -> list[dict]:
    """`samples` less the images of `records` (same content hash): a corrected image that is
    also a reference image would score the candidate on what it trained on."""
    taken = {r.get("sha256") for r in records if r.get("sha256")}
    return [dict(s) for s in samples if not (s.get("sha256") and s["sha256"] in taken)]


def reference_data(
    root: str,
    *,
    dataset: str | None = None,
    lineage: Mapping | None = None,
    split: str = "val",
    max_images: int | None = None,
) -> dict:
    """The parent's training data: what is replayed, and its reference validation images.

    Parameters
    ----------
    root : str
        The storage root.
    dataset : str, optional
        A dataset prepared under `root` (``prepared/<dataset>/latest.json``) that stands for the
        model's training data. Default: the prepared data its lineage names
        (``lineage["prepared_uri"]``), wherever that root is.
    lineage : mapping, optional
        The parent's ``lineage.json``.
    split : str
        The split whose images are the reference set (``test`` when it has none).
    max_images : int, optional
        At most this many reference images, evenly spaced over the sorted ids.

    Returns
    -------
    dict
        ``prepared_uri``, ``dataset``, ``root`` (where its manifests are), ``split`` and
        ``samples`` (``image_id, image_uri, mask_uri, labels_uri, sha256`` per image).

    Raises
    ------
    ValueError
        No such prepared data (the message says what to prepare and name).
    """
    if dataset:
        latest = storage.join(root, "prepared", dataset, "latest.json")
        if not storage.exists(latest):
            raise ValueError(
                f"reference dataset {dataset!r} is not prepared under {root}: ingest and "
                f"prepare it (neuroseg prepare {dataset}) with the model's input settings"
            )
        prepared, data_root = storage.read_json(latest)["uri"], root
    else:
        prepared = (lineage or {}).get("prepared_uri")
        dataset = (lineage or {}).get("dataset")
        where = str(prepared or "")
        if not prepared or "/prepared/" not in where or not dataset:
            raise ValueError(
                "the model's lineage names no prepared training data: give reference_dataset "
                "(a dataset prepared under the root with the model's input settings)"
            )
        if not storage.exists(storage.join(prepared, "summary.json")):
            raise ValueError(
                f"the model's training data {prepared} is not readable here: give "
                "reference_dataset (a dataset prepared under the root with the model's input "
                "settings)"
            )
        data_root = where.rsplit("/prepared/", 1)[0]
    splits = storage.read_json(storage.join(prepared, "splits.json"))
    used = split if splits.get(split) else "test"
    ids = sorted(splits.get(used) or [])
    if max_images is not None and len(ids) > max_images:
        keep = np.unique(np.linspace(0, len(ids) - 1, int(max_images)).round().astype(int))
        ids = [ids[i] for i in keep]
    samples = []
    for image_id in ids:
        rec = storage.read_json(
            storage.join(data_root, "manifests", "datasets", str(dataset), f"{image_id}.json")
        )
        samples.append(_sample(rec))
    return {
        "prepared_uri": prepared,
        "dataset": dataset,
        "root": data_root,
        "split": used,
        "samples": samples,
    }


def correction_samples(records: Iterable[Mapping]) -> list[dict]:
    """``image_id, image_uri, mask_uri, labels_uri`` of corrections' manifest records."""
    return [_sample(r) for r in sorted(records, key=lambda r: str(r["image_id"]))]
