"""``neuroseg bench pipeline``: input-pipeline throughput versus training throughput.

The seed notebook's generator (PIL shapes and a CPU affine in Python) took about 20 s a step and
was its training bottleneck. This benchmark measures the TF graph pipeline (every augmentation
on) alone, then the training steps of each model in float32 and bfloat16 on one fixed batch, and
reports the ratio of the two throughputs: the pipeline should feed at least 5x faster than the
model trains, so that it never stalls training.

:func:`write_synthetic_prepared` writes a small prepared folder in the prepare flow's layout
(random tiles with yellow blobs); tests use it too. Importing this module does not import
TensorFlow.
"""

from __future__ import annotations

import io
import tempfile
import time

import numpy as np
import pandas as pd

from neuroseg import storage

__all__ = ["bench_pipeline", "synthetic_tiles", "write_synthetic_prepared"]


def synthetic_tiles(
    n: int,
    *,
    tile: int = 64,
    seed: int = 0,
    max_cells: int = 4,
    radius: tuple = (4, 10),
    return_labels: bool = False,
) -> tuple[np.ndarray, ...]:
    """Random FNC-like tiles: dark noisy background with yellow discs marked in the mask.

    Parameters
    ----------
    n : int
        Number of tiles.
    tile : int
        Tile side.
    seed : int
        Random seed.
    max_cells : int
        Each tile gets ``0..max_cells`` discs.
    radius : (int, int)
        Range of disc radii in pixels.
    return_labels : bool
        Also return the instance labels (the same random draws: images and masks do not change).

    Returns
    -------
    images : ndarray (n, tile, tile, 3) uint8
    masks : ndarray (n, tile, tile) uint8, {0, 255}
    labels : ndarray (n, tile, tile) int32, only with ``return_labels``
        Disc ``k`` of a tile is instance ``k`` (1-based, in drawing order); where discs overlap
        the later one wins, so overlapping discs stay two touching instances.
    """
    rng = np.random.default_rng(seed)
    images = rng.normal((30, 15, 1), 6, size=(n, tile, tile, 3)).clip(0, 255)
    masks = np.zeros((n, tile, tile), bool)
    labels = np.zeros((n, tile, tile), np.int32)
    rr, cc = np.mgrid[:tile, :tile]
    for i in range(n):
        for k in range(rng.integers(0, max_cells + 1)):
            r0, c0 = rng.uniform(0, tile, 2)
            rad = rng.uniform(*radius)
            disc = (rr - r0) ** 2 + (cc - c0) ** 2 <= rad**2
            masks[i] |= disc
            labels[i][disc] = k + 1
            images[i][disc] = rng.uniform((150, 110, 5), (245, 230, 15))
    if return_labels:
        return images.astype(np.uint8), masks.astype(np.uint8) * 255, labels
    return images.astype(np.uint8), masks.astype(np.uint8) * 255


def write_synthetic_prepared(
    uri: str,
    *,
    images: int = 4,
    tiles_per_image: int = 4,
    tile: int = 64,
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "train", "val", "test"),
    labels: bool = True,
    params: dict | None = None,
) -> str:
    """Write a prepared folder (``tiles.parquet``, ``tiles/<image_id>.npz``, ``summary.json``).

    Each shard holds ``images``, ``masks``, ``grid`` and (``labels=True``) the instance
    ``labels (n, T, T) int32`` of the discs (:func:`synthetic_tiles`).

    Parameters
    ----------
    uri : str
        Folder to write (local or ``s3://``).
    images, tiles_per_image, tile, seed
        Size of the synthetic set.
    splits : tuple of str
        Split of image ``i`` is ``splits[i % len(splits)]``.
    labels : bool
        Write the instance labels.
    params : dict, optional
        Extra entries of ``summary.json``'s ``params`` (e.g. ``input``).

    Returns
    -------
    str
        ``uri``.
    """
    rows = []
    for i in range(images):
        image_id = f"img{i:03d}"
        imgs, masks, labs = synthetic_tiles(
            tiles_per_image, tile=tile, seed=seed * 1000 + i, return_labels=True
        )
        grid = np.stack([np.arange(tiles_per_image) * tile, np.zeros(tiles_per_image, int)], 1)
        buf = io.BytesIO()
        arrays = {"images": imgs, "masks": masks, "grid": grid}
        if labels:
            arrays["labels"] = labs
        np.savez(buf, **arrays)
        shard = f"tiles/{image_id}.npz"
        storage.write_bytes(storage.join(uri, shard), buf.getvalue())
        for k in range(tiles_per_image):
            rows.append(
                {
                    "image_id": image_id,
                    "tile_index": k,
                    "row": int(grid[k, 0]),
                    "col": int(grid[k, 1]),
                    "foreground_px": int((masks[k] > 127).sum()),
                    "shard": shard,
                    "split": splits[i % len(splits)],
                }
            )
    storage.write_parquet(pd.DataFrame(rows), storage.join(uri, "tiles.parquet"))
    storage.write_json(
        storage.join(uri, "summary.json"),
        {
            "images": images,
            "tiles": len(rows),
            "params": {"tile": tile, "synthetic": True, **(params or {})},
        },
    )
    return uri


def _time_pipeline(prepared: str, *, batch_size: int, steps: int, seed: int) -> dict:
    from neuroseg.pipeline import make_dataset

    ds = make_dataset(
        prepared,
        batch_size=batch_size,
        tile_filter="all",
        shapes=True,
        affine=True,
        seed=seed,
        repeat=True,
        drop_remainder=True,
    )
    it = iter(ds)
    next(it)  # trace and warm up
    start = time.perf_counter()
    for _ in range(steps):
        x, _y = next(it)
    _ = x.numpy()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tiles_per_s": steps * batch_size / seconds}


def _time_training(
    name: str, *, tile: int, batch_size: int, steps: int, mixed: bool, seed: int
) -> dict:
    import keras

    from neuroseg.losses import get_loss
    from neuroseg.models import build_model, output_size

    keras.utils.set_random_seed(seed)
    model = build_model(name, tile=tile, mixed_precision=mixed)
    out = output_size(model, tile=tile)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=get_loss("weighted_bce", class_weights=(0.02, 0.98)),
    )
    images, masks = synthetic_tiles(batch_size, tile=tile, seed=seed)
    x = images.astype(np.float32)
    step = max(1, tile // out)
    y = masks[:, step // 2 :: step, step // 2 :: step][:, :out, :out, None] > 127
    y = y.astype(np.float32)
    model.train_on_batch(x, y)  # trace and warm up
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    return {
        "params": int(model.count_params()),
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "tiles_per_s": steps * batch_size / seconds,
        "final_loss": float(np.asarray(loss).ravel()[0]),
    }


def bench_pipeline(
    *,
    tiles: int = 64,
    tile: int = 400,
    batch_size: int = 8,
    steps: int = 10,
    models: tuple[str, ...] = ("shallow", "unet"),
    precisions: tuple[str, ...] = ("float32", "bfloat16"),
    seed: int = 0,
) -> dict:
    """Measure augmented-pipeline throughput against training throughput.

    Parameters
    ----------
    tiles : int
        Tiles in the synthetic prepared folder (all in the train split).
    tile : int
        Tile side.
    batch_size, steps : int
        Batch size; timed batches (after one warm-up batch) for pipeline and training each.
    models : tuple of str
        Architectures to train (``neuroseg.models.build_model`` names).
    precisions : tuple of str
        ``"float32"`` and/or ``"bfloat16"`` (mixed precision).
    seed : int

    Returns
    -------
    dict
        JSON-able: ``device``, the parameters, ``pipeline`` (``tiles_per_s``), ``training``
        (per ``"<model>/<precision>"``: ``steps_per_s``, ``tiles_per_s``, ``params``) and
        ``ratio`` (pipeline tiles/s over training tiles/s, per model and precision; the target
        is >= 5) and ``min_ratio``.
    """
    for value, what in (
        (tiles, "tiles"),
        (tile, "tile"),
        (batch_size, "batch_size"),
        (steps, "steps"),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    if batch_size > tiles:
        raise ValueError(f"batch_size {batch_size} exceeds the {tiles} synthetic tiles")
    bad = [p for p in precisions if p not in ("float32", "bfloat16")]
    if bad:
        raise ValueError(f"precisions must be 'float32' or 'bfloat16', got {bad}")
    from neuroseg.training import training_device

    with tempfile.TemporaryDirectory(prefix="neuroseg-bench-") as tmp:
        prepared = write_synthetic_prepared(
            tmp, images=1, tiles_per_image=tiles, tile=tile, seed=seed, splits=("train",)
        )
        pipeline = _time_pipeline(prepared, batch_size=batch_size, steps=steps, seed=seed)
    training, ratio = {}, {}
    for name in models:
        for precision in precisions:
            key = f"{name}/{precision}"
            training[key] = _time_training(
                name,
                tile=tile,
                batch_size=batch_size,
                steps=steps,
                mixed=precision == "bfloat16",
                seed=seed,
            )
            ratio[key] = pipeline["tiles_per_s"] / training[key]["tiles_per_s"]
    return {
        "device": training_device(),
        "tiles": tiles,
        "tile": tile,
        "batch_size": batch_size,
        "steps": steps,
        "pipeline": pipeline,
        "training": training,
        "ratio": ratio,
        "min_ratio": min(ratio.values()) if ratio else None,
        "target_ratio": 5.0,
    }
