"""The training input pipeline: prepared tiles to augmented ``tf.data`` batches.

A prepared folder (written by the prepare flow, see docs/architecture.md) holds
``tiles.parquet`` (one row per tile: ``image_id, tile_index, row, col, foreground_px, shard,
split``) and one ``tiles/<image_id>.npz`` shard per image (``images (n, T, T, 3) uint8``,
``masks (n, T, T) uint8``). Shards are small: a split is loaded once into memory
(:func:`load_tiles`) and served by index. Each batch is gathered, cropped, augmented
(:mod:`neuroseg.augment`) and downscaled in one ``map`` call on the whole batch, in parallel
with training (``AUTOTUNE``, ``prefetch``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from neuroseg import storage
from neuroseg.augment import augment_batch

__all__ = [
    "CELL_MIN_SUM",
    "CELL_THRESHOLD",
    "TILE_FILTERS",
    "TileSet",
    "class_weights_for",
    "has_split",
    "load_tiles",
    "make_dataset",
]

TILE_FILTERS = ("cells", "all")
#: The seed's training-set filter keeps tiles whose mask sums to more than 255 * 5.
CELL_MIN_SUM = 255 * 5
#: The seed counts mask pixels > 122 as cells (and < 122 as background) for the class weights.
CELL_THRESHOLD = 122
_COLUMNS = ("image_id", "tile_index", "shard", "split")


@dataclass(frozen=True)
class TileSet:
    """Tiles of one split, in memory.

    Attributes
    ----------
    images : ndarray (n, T, T, 3) uint8
    masks : ndarray (n, T, T) uint8, {0, 255}
    image_ids : ndarray (n,) of str
        Source image of each tile.
    uri : str
        The prepared folder the tiles came from.
    split : str
    """

    images: np.ndarray
    masks: np.ndarray
    image_ids: np.ndarray
    uri: str
    split: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def tile(self) -> int:
        """Tile side in pixels."""
        return int(self.images.shape[1])

    def filtered(self, tile_filter: str) -> TileSet:
        """The tiles passing ``tile_filter`` ("cells": the seed's mask sum > 255 * 5; "all")."""
        if tile_filter not in TILE_FILTERS:
            raise ValueError(f"tile_filter must be one of {TILE_FILTERS}, got {tile_filter!r}")
        if tile_filter == "all":
            return self
        keep = self.masks.reshape(len(self.masks), -1).sum(axis=1, dtype=np.int64) > CELL_MIN_SUM
        return TileSet(
            self.images[keep], self.masks[keep], self.image_ids[keep], self.uri, self.split
        )


def _read_index(prepared_uri: str):
    uri = storage.join(prepared_uri, "tiles.parquet")
    try:
        index = storage.read_parquet(uri)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no tile index; run the prepare flow first") from None
    missing = [c for c in _COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"{uri}: missing column(s) {', '.join(missing)}")
    return index


def has_split(prepared_uri: str, split: str) -> bool:
    """True when the prepared folder has at least one tile in ``split``."""
    return bool((_read_index(prepared_uri)["split"] == split).any())


def load_tiles(prepared_uri: str, *, split: str = "train", tile_filter: str = "all") -> TileSet:
    """Load the tiles of one split of a prepared folder into memory.

    Parameters
    ----------
    prepared_uri : str
        The prepared version folder (local or ``s3://``).
    split : str
        ``"train"``, ``"val"`` or ``"test"``.
    tile_filter : {"all", "cells"}
        ``"cells"`` keeps the tiles with cells (the seed's mask sum > 255 * 5).

    Returns
    -------
    TileSet
        Tiles in the order of (image_id, tile_index); empty when the split has no tiles.
    """
    if tile_filter not in TILE_FILTERS:
        raise ValueError(f"tile_filter must be one of {TILE_FILTERS}, got {tile_filter!r}")
    index = _read_index(prepared_uri)
    rows = index[index["split"] == split].sort_values(["image_id", "tile_index"])
    images, masks, ids = [], [], []
    for shard, group in rows.groupby("shard", sort=True):
        shard_uri = storage.join(prepared_uri, str(shard))
        try:
            with np.load(io.BytesIO(storage.read_bytes(shard_uri))) as npz:
                shard_images, shard_masks = npz["images"], npz["masks"]
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{shard_uri}: not a tile shard ({exc})") from exc
        if (
            shard_images.ndim != 4
            or shard_images.shape[-1] != 3
            or shard_masks.shape != shard_images.shape[:3]
        ):
            raise ValueError(
                f"{shard_uri}: images {shard_images.shape} and masks {shard_masks.shape} are "
                "not (n, T, T, 3) and (n, T, T)"
            )
        take = group["tile_index"].to_numpy(dtype=np.int64)
        if take.size and (take.min() < 0 or take.max() >= len(shard_images)):
            raise ValueError(f"{shard_uri}: tile_index out of range for {len(shard_images)} tiles")
        images.append(shard_images[take].astype(np.uint8, copy=False))
        masks.append(shard_masks[take].astype(np.uint8, copy=False))
        ids.append(group["image_id"].astype(str).to_numpy(dtype=object))
    if not images:
        return TileSet(
            np.zeros((0, 0, 0, 3), np.uint8),
            np.zeros((0, 0, 0), np.uint8),
            np.zeros(0, object),
            prepared_uri,
            split,
        )
    sides = {a.shape[1:3] for a in images}
    if len(sides) > 1:
        raise ValueError(f"{prepared_uri}: shards have different tile sizes {sorted(sides)}")
    tiles = TileSet(
        np.concatenate(images), np.concatenate(masks), np.concatenate(ids), prepared_uri, split
    )
    return tiles.filtered(tile_filter)


def _as_tiles(source: str | TileSet, split: str, tile_filter: str) -> TileSet:
    if isinstance(source, TileSet):
        if source.split != split:
            raise ValueError(f"the given tiles are split {source.split!r}, not {split!r}")
        return source.filtered(tile_filter)
    return load_tiles(source, split=split, tile_filter=tile_filter)


def class_weights_for(
    source: str | TileSet, *, split: str = "train", tile_filter: str = "cells"
) -> tuple[float, float]:
    """The seed's class weights: normalised inverse pixel frequencies of the filtered tiles.

    Cell pixels are mask values > 122, background < 122 (as the seed counted them); the weights
    are ``w_c = (1 / f_c) / (1 / f_0 + 1 / f_1)``, so they sum to 1 and the rarer class weighs
    more.

    Parameters
    ----------
    source : str or TileSet
        Prepared folder URI, or tiles already loaded with :func:`load_tiles`.
    split, tile_filter
        Which tiles to count (the seed: the training tiles with cells).

    Returns
    -------
    (w0, w1) : tuple of float
        Background and cell weights.
    """
    tiles = _as_tiles(source, split, tile_filter)
    n_cell = int(np.count_nonzero(tiles.masks > CELL_THRESHOLD))
    n_back = int(np.count_nonzero(tiles.masks < CELL_THRESHOLD))
    if n_cell == 0 or n_back == 0:
        raise ValueError(
            f"{tiles.uri}: split {split!r} (filter {tile_filter!r}) has {n_cell} cell and "
            f"{n_back} background pixels; class weights need both"
        )
    total = n_cell + n_back
    inv_cell, inv_back = total / n_cell, total / n_back
    norm = 1.0 / (inv_cell + inv_back)
    return inv_back * norm, inv_cell * norm


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """PIL's NEAREST sampling positions, accumulated in double precision as Pillow does.

    Output pixel ``i`` reads source pixel ``int(scale / 2 + i * scale)`` (``scale = src / dst``);
    for 400 -> 50 that is ``4 + 8 i``.
    """
    scale = src / dst
    x = scale * 0.5
    out = np.empty(dst, dtype=np.int32)
    for i in range(dst):
        out[i] = min(int(x), src - 1)
        x += scale
    return out


def _random_crop(images, masks, size: int, seed):
    """The same random (size, size) window of each image and its mask, per tile."""
    shape = tf.shape(images)
    b = shape[0]
    hi = tf.stack([shape[1] - size + 1, shape[2] - size + 1])
    unit = tf.random.stateless_uniform([b, 2], seed)
    offsets = tf.cast(tf.floor(unit * tf.cast(hi, tf.float32)[None, :]), tf.int32)
    rows = offsets[:, 0:1] + tf.range(size)[None, :]  # (b, size)
    cols = offsets[:, 1:2] + tf.range(size)[None, :]
    images = tf.gather(tf.gather(images, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    masks = tf.gather(tf.gather(masks, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    return images, masks


def make_dataset(
    source: str | TileSet,
    *,
    split: str = "train",
    batch_size: int,
    tile_filter: str = "cells",
    shapes: bool = False,
    affine: bool = False,
    output_size: int | None = None,
    crop: int | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = False,
    binarize: bool = True,
) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of (augmented) training batches.

    Per batch, in order: gather the tiles, random-crop (``crop``), draw random shapes
    (``shapes``), warp image and mask (``affine``), then downscale the mask with PIL's NEAREST
    rule to ``output_size`` (the seed's 50x50 target, taken after augmentation so that image and
    mask are warped at full resolution together). Tiles are reshuffled every epoch; with a
    ``seed`` the order and the augmentations of every epoch are reproducible (and still differ
    between epochs).

    Parameters
    ----------
    source : str or TileSet
        Prepared folder URI (local or ``s3://``) or tiles from :func:`load_tiles`.
    split : str
        Which split to serve.
    batch_size : int
    tile_filter : {"cells", "all"}
        ``"cells"``: only tiles whose mask sums to more than 255 * 5 (the seed's filter).
    shapes, affine : bool
        Augmentations (:func:`neuroseg.augment.random_shapes`, ``random_affine``).
    output_size : int, optional
        Side of the target masks; None keeps the (cropped) tile size.
    crop : int, optional
        Random square crop of each tile (for fully convolutional models on CPU).
    shuffle : bool
        Reshuffle the tiles every epoch.
    seed : int, optional
        Seed of shuffling and augmentation.
    repeat : bool
        Repeat forever (use with ``steps_per_epoch``).
    drop_remainder : bool
        Drop the last incomplete batch (static batch shapes).
    binarize : bool
        Re-threshold warped masks at 0.5 (else soft edges).

    Returns
    -------
    tf.data.Dataset
        Elements ``(images float32 (b, h, w, 3) in 0..255, masks float32 (b, o, o, 1) in
        {0, 1})``, ``h = w = crop or T`` and ``o = output_size or h``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    tiles = _as_tiles(source, split, tile_filter)
    n = len(tiles)
    if n == 0:
        raise ValueError(f"{tiles.uri}: no tiles in split {split!r} with filter {tile_filter!r}")
    side = tiles.tile
    if crop is not None and not 1 <= crop <= side:
        raise ValueError(f"crop must be between 1 and the tile size {side}, got {crop}")
    size = crop or side
    if output_size is not None and not 1 <= output_size <= size:
        raise ValueError(f"output_size must be between 1 and {size}, got {output_size}")

    images = tf.constant(tiles.images)
    masks = tf.constant(tiles.masks)
    base_seed = None if seed is None else int(seed)
    rows_idx = cols_idx = None
    if output_size is not None and output_size != size:
        rows_idx = cols_idx = tf.constant(_nearest_index(size, output_size))

    def load(index, rand):
        seeds = tf.random.experimental.stateless_split(rand, num=2)
        x = tf.cast(tf.gather(images, index), tf.float32)
        y = tf.cast(tf.gather(masks, index), tf.float32)[..., None] / 255.0
        if crop is not None and crop != side:
            x, y = _random_crop(x, y, crop, seeds[0])
        if shapes or affine:
            x, y = augment_batch(
                x, y, seed=seeds[1], shapes=shapes, affine=affine, binarize=binarize
            )
        if rows_idx is not None:
            y = tf.gather(tf.gather(y, rows_idx, axis=1), cols_idx, axis=2)
        if not (shapes or affine) or binarize:
            y = tf.cast(y > 0.5, tf.float32)
        return x, y

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=base_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    rand = tf.data.Dataset.random(seed=base_seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip(ds, rand)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
