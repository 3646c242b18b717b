"""The training input pipeline: prepared tiles to augmented ``tf.data`` batches.

A prepared folder (written by the prepare flow, see docs/architecture.md) holds
``tiles.parquet`` (one row per tile: ``image_id, tile_index, row, col, foreground_px, shard,
split``) and one ``tiles/<image_id>.npz`` shard per image (``images (n, T, T, 3) uint8``,
``masks (n, T, T) uint8`` and, when the preparation kept instance identities, ``labels (n, T, T)
int32``). Shards are small: a split is loaded once into memory (:func:`load_tiles`) and served
by index. Each batch is gathered, cropped, augmented (:mod:`neuroseg.augment`) and downscaled in
one ``map`` call on the whole batch, in parallel with training (``AUTOTUNE``, ``prefetch``).

Two targets: ``binary`` (the seed's cell mask) and ``three_class`` (background, interior,
boundary of the instance labels, :func:`neuroseg.instances.three_class_targets`, computed once
per tile when the dataset is built, warped with the image by nearest neighbour and served
one-hot).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from neuroseg import storage
from neuroseg.augment import augment_batch

__all__ = [
    "CELL_MIN_SUM",
    "CELL_THRESHOLD",
    "CLASS_WEIGHTINGS",
    "TARGETS",
    "TILE_FILTERS",
    "TileSet",
    "class_weights_for",
    "has_split",
    "load_tiles",
    "make_dataset",
    "multiclass_weights_for",
]

TILE_FILTERS = ("cells", "all")
#: What the model learns: the cell mask, or background / interior / boundary of the instances.
TARGETS = ("binary", "three_class")
#: Class weights of the three-class losses: inverse frequencies, their square root, or none.
CLASS_WEIGHTINGS = ("sqrt", "inverse", "none")
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
    labels : ndarray (n, T, T) int32, optional
        Instance ids per tile (0 background), when the shards hold them; see
        :meth:`instance_labels`.
    """

    images: np.ndarray
    masks: np.ndarray
    image_ids: np.ndarray
    uri: str
    split: str
    labels: np.ndarray | None = None
    _classes: dict = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def tile(self) -> int:
        """Tile side in pixels."""
        return int(self.images.shape[1])

    def take(self, keep) -> TileSet:
        """The tiles selected by a boolean mask or an index array (cached class maps follow)."""
        labels = None if self.labels is None else self.labels[keep]
        out = TileSet(
            self.images[keep], self.masks[keep], self.image_ids[keep], self.uri, self.split, labels
        )
        for key, classes in self._classes.items():
            out._classes[key] = classes[keep]
        return out

    def filtered(self, tile_filter: str) -> TileSet:
        """The tiles passing ``tile_filter`` ("cells": the seed's mask sum > 255 * 5; "all")."""
        if tile_filter not in TILE_FILTERS:
            raise ValueError(f"tile_filter must be one of {TILE_FILTERS}, got {tile_filter!r}")
        if tile_filter == "all":
            return self
        keep = self.masks.reshape(len(self.masks), -1).sum(axis=1, dtype=np.int64) > CELL_MIN_SUM
        return self.take(keep)

    def instance_labels(self) -> np.ndarray:
        """Instance ids ``(n, T, T) int32``: the shards' ``labels``, else the 4-connected
        components of each tile's mask (touching cells are then one instance)."""
        if self.labels is not None:
            return self.labels
        return _components(self.masks)

    def classes(self, boundary_width: int = 1, small_area: int = 0) -> np.ndarray:
        """Three-class maps ``(n, T, T) uint8`` (0 background, 1 interior, 2 boundary) of the
        instance labels (:func:`neuroseg.instances.three_class_targets`; objects under
        ``small_area`` pixels with a 1-pixel boundary), computed once."""
        from neuroseg.instances import three_class_targets

        key = (int(boundary_width), int(small_area))
        return self._per_tile(
            key, lambda lab: three_class_targets(lab, boundary_width=key[0], small_area=key[1])
        )

    def centres(self) -> np.ndarray:
        """Centre maps ``(n, T, T) uint8`` (0..255: :func:`neuroseg.instances.centre_targets`
        of the instance labels times 255), computed once."""
        from neuroseg.instances import centre_targets

        return self._per_tile("centre", lambda lab: np.round(centre_targets(lab) * 255.0))

    def separations(self, radius: int = 2, small_area: int = 0) -> np.ndarray:
        """Separation maps ``(n, T, T) uint8`` (1 between close objects and, with
        ``small_area``, on and around objects under that many pixels:
        :func:`neuroseg.instances.separation_targets` of the instance labels), computed once."""
        from neuroseg.instances import separation_targets

        key = ("separation", int(radius), int(small_area))
        return self._per_tile(
            key, lambda lab: separation_targets(lab, radius=key[1], small_area=key[2])
        )

    def _per_tile(self, key, make) -> np.ndarray:
        """``make(labels) -> (T, T)`` of every tile's instance labels as uint8, cached under
        ``key`` (the cache follows :meth:`take`)."""
        if key not in self._classes:
            labels = self.instance_labels()
            out = np.zeros(labels.shape, np.uint8)
            for i, lab in enumerate(labels):
                out[i] = make(lab)
            self._classes[key] = out
        return self._classes[key]


def _components(masks: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    out = np.zeros(masks.shape, np.int32)
    four = ndi.generate_binary_structure(2, 1)
    for i, mask in enumerate(masks):
        out[i] = ndi.label(mask > CELL_THRESHOLD, structure=four)[0]
    return out


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
    images, masks, ids, labels = [], [], [], []
    for shard, group in rows.groupby("shard", sort=True):
        shard_uri = storage.join(prepared_uri, str(shard))
        try:
            with np.load(io.BytesIO(storage.read_bytes(shard_uri))) as npz:
                shard_images, shard_masks = npz["images"], npz["masks"]
                shard_labels = npz["labels"] if "labels" in npz.files else None
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
        if shard_labels is not None and shard_labels.shape != shard_masks.shape:
            raise ValueError(
                f"{shard_uri}: labels {shard_labels.shape} and masks {shard_masks.shape} differ"
            )
        take = group["tile_index"].to_numpy(dtype=np.int64)
        if take.size and (take.min() < 0 or take.max() >= len(shard_images)):
            raise ValueError(f"{shard_uri}: tile_index out of range for {len(shard_images)} tiles")
        images.append(shard_images[take].astype(np.uint8, copy=False))
        masks.append(shard_masks[take].astype(np.uint8, copy=False))
        ids.append(group["image_id"].astype(str).to_numpy(dtype=object))
        labels.append(None if shard_labels is None else shard_labels[take].astype(np.int32))
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
    all_labels = None
    if any(lab is not None for lab in labels):  # shards without labels: their mask components
        all_labels = np.concatenate(
            [_components(m) if lab is None else lab for lab, m in zip(labels, masks, strict=True)]
        )
    tiles = TileSet(
        np.concatenate(images),
        np.concatenate(masks),
        np.concatenate(ids),
        prepared_uri,
        split,
        all_labels,
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


def multiclass_weights_for(
    source: str | TileSet,
    *,
    split: str = "train",
    tile_filter: str = "cells",
    boundary_width: int = 1,
    weighting: str = "sqrt",
    small_area: int = 0,
) -> tuple[float, float, float]:
    """Weights of background, interior and boundary for the three-class losses.

    With ``f_c`` the class frequencies of the filtered tiles' three-class maps
    (:meth:`TileSet.classes`), ``w_c`` is proportional to ``1 / f_c`` (``"inverse"``: every
    class weighs as much in total), to ``1 / sqrt(f_c)`` (``"sqrt"``: the rare boundary class
    weighs more, not as much more) or 1 (``"none"``), scaled so that ``sum_c f_c w_c = 1``:
    the loss keeps the scale of the plain cross-entropy.

    Returns
    -------
    (w_background, w_interior, w_boundary) : tuple of float
    """
    if weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {CLASS_WEIGHTINGS}, got {weighting!r}")
    tiles = _as_tiles(source, split, tile_filter)
    classes = tiles.classes(boundary_width, small_area)
    counts = np.bincount(classes.ravel(), minlength=3)[:3].astype(float)
    if weighting != "none" and (counts == 0).any():
        raise ValueError(
            f"{tiles.uri}: split {split!r} (filter {tile_filter!r}) has {counts.astype(int)} "
            "background/interior/boundary pixels; class weights need all three"
        )
    freq = counts / max(counts.sum(), 1.0)
    if weighting == "none":
        raw = np.ones(3)
    else:
        raw = 1.0 / freq if weighting == "inverse" else 1.0 / np.sqrt(freq)
    scale = float((freq * raw).sum()) or 1.0
    w = raw / scale
    return float(w[0]), float(w[1]), float(w[2])


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
    target: str = "binary",
    boundary_width: int = 1,
    intensity: bool = False,
    fill: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
    centre: bool = False,
    separation: bool = False,
    small_area: int = 0,
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
        Re-threshold warped masks at 0.5 (else soft edges); binary target only.
    target : {"binary", "three_class"}
        ``three_class``: the targets are the background / interior / boundary maps of the
        tiles' instance labels (:meth:`TileSet.classes`, computed once here), cropped, warped
        (nearest neighbour, uncovered pixels background) and downscaled with the image, served
        one-hot.
    boundary_width : int
        Boundary thickness of the three-class maps.
    intensity : bool
        Random gamma, contrast and brightness per tile
        (:func:`neuroseg.augment.random_intensity`; images only).
    fill : two RGB triples, optional
        Background colours of the affine warp (default: the seed's brownish ones; use
        :data:`neuroseg.augment.GREY_FILL` for grey percentile-normalised input).
    centre : bool
        ``three_class`` only: a fourth target channel, the centre map of the instances
        (:meth:`TileSet.centres`, in [0, 1]), warped with the classes.
    separation : bool
        ``three_class`` only: a last target channel, 1 on the pixels between close objects
        (:meth:`TileSet.separations`), warped with the classes; the three-class losses weigh
        those pixels' cross-entropy more (``separation_weight``).
    small_area : int
        With ``separation``: objects under this many pixels, and a 1-pixel ring around them,
        are marked in the separation map too, and their boundary is one pixel wide
        (:func:`neuroseg.instances.three_class_targets`; 0: none).

    Returns
    -------
    tf.data.Dataset
        Elements ``(images float32 (b, h, w, 3) in 0..255, targets float32 (b, o, o, C))``,
        ``h = w = crop or T``, ``o = output_size or h``; binary: ``C = 1``, masks in {0, 1};
        three_class: ``C = 3``, one-hot background / interior / boundary, then the centre map
        (with ``centre``) and the separation map (with ``separation``).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
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

    three = target == "three_class"
    if (centre or separation) and not three:
        raise ValueError("centre and separation targets need target='three_class'")
    if small_area and not separation:
        raise ValueError("small_area marks objects in the separation map: it needs separation")
    images = tf.constant(tiles.images)
    stacked = centre or separation
    if stacked:
        planes = [tiles.classes(boundary_width, small_area)]
        planes += [tiles.centres()] if centre else []
        planes += [tiles.separations(small_area=small_area)] if separation else []
        masks = tf.constant(np.stack(planes, axis=-1))
    elif three:
        masks = tf.constant(tiles.classes(boundary_width, small_area))
    else:
        masks = tf.constant(tiles.masks)
    base_seed = None if seed is None else int(seed)
    rows_idx = cols_idx = None
    if output_size is not None and output_size != size:
        rows_idx = cols_idx = tf.constant(_nearest_index(size, output_size))
    augment = shapes or affine or intensity
    extra = {} if fill is None else {"fill": fill}

    def load(index, rand):
        seeds = tf.random.experimental.stateless_split(rand, num=2)
        x = tf.cast(tf.gather(images, index), tf.float32)
        y = tf.cast(tf.gather(masks, index), tf.float32)
        if not stacked:
            y = y[..., None]
        if not three:
            y = y / 255.0
        if crop is not None and crop != side:
            x, y = _random_crop(x, y, crop, seeds[0])
        if augment:
            x, y = augment_batch(
                x,
                y,
                seed=seeds[1],
                shapes=shapes,
                affine=affine,
                binarize=binarize,
                intensity=intensity,
                mask_interpolation="nearest" if three else "bilinear",
                **extra,
            )
        if rows_idx is not None:
            y = tf.gather(tf.gather(y, rows_idx, axis=1), cols_idx, axis=2)
        if three:
            classes = tf.one_hot(tf.cast(tf.round(y[..., 0]), tf.int32), 3, dtype=tf.float32)
            more = [y[..., 1:2] / 255.0] if centre else []
            more += [y[..., -1:]] if separation else []
            y = tf.concat([classes, *more], axis=-1) if more else classes
        elif not (shapes or affine) or binarize:
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
