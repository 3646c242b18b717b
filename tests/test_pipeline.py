"""The tf.data pipeline on tiny prepared folders: filtering, weights, batching, downscale, crops."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from neuroseg import storage
from neuroseg.augment import GREY_FILL
from neuroseg.benchmarks.pipeline import bench_pipeline, write_synthetic_prepared
from neuroseg.instances import centre_targets, separation_targets, three_class_targets
from neuroseg.pipeline import (
    class_weights_for,
    has_split,
    load_tiles,
    make_dataset,
    multiclass_weights_for,
)

T = 32


def _write_prepared(root, shards: dict[str, tuple[np.ndarray, np.ndarray, str]]) -> str:
    """shards: image_id -> (images (n,T,T,3), masks (n,T,T), split)."""
    rows = []
    for image_id, (images, masks, split) in shards.items():
        buf = io.BytesIO()
        np.savez(buf, images=images, masks=masks, grid=np.zeros((len(images), 2), int))
        key = f"tiles/{image_id}.npz"
        storage.write_bytes(storage.join(str(root), key), buf.getvalue())
        rows += [
            {
                "image_id": image_id,
                "tile_index": k,
                "row": 0,
                "col": 0,
                "foreground_px": int((masks[k] > 127).sum()),
                "shard": key,
                "split": split,
            }
            for k in range(len(images))
        ]
    storage.write_parquet(pd.DataFrame(rows), storage.join(str(root), "tiles.parquet"))
    return str(root)


def _tiles_with_pixels(counts, value=255):
    """One tile per count, with that many mask pixels set; image red channel = tile number."""
    masks = np.zeros((len(counts), T, T), np.uint8)
    images = np.zeros((len(counts), T, T, 3), np.uint8)
    for i, c in enumerate(counts):
        masks[i].flat[:c] = value
        images[i, ..., 0] = 10 * (i + 1)
    return images, masks


@pytest.fixture
def counted(tmp_path):
    """Train tiles with 0, 5, 6 and 40 mask pixels (the seed keeps sum > 255 * 5)."""
    images, masks = _tiles_with_pixels([0, 5, 6, 40])
    val_images, val_masks = _tiles_with_pixels([3, 7])
    return _write_prepared(
        tmp_path,
        {
            "a": (images[:2], masks[:2], "train"),
            "b": (images[2:], masks[2:], "train"),
            "c": (val_images, val_masks, "val"),
        },
    )


def test_load_tiles_split_order_and_the_seeds_cell_filter(counted):
    tiles = load_tiles(counted, split="train", tile_filter="all")
    assert len(tiles) == 4 and tiles.tile == T
    assert list(tiles.image_ids) == ["a", "a", "b", "b"]
    assert list(tiles.images[:, 0, 0, 0]) == [10, 20, 30, 40]
    cells = load_tiles(counted, split="train", tile_filter="cells")
    assert list(cells.images[:, 0, 0, 0]) == [30, 40]  # 5 pixels (sum 1275) is not > 255 * 5
    assert len(load_tiles(counted, split="test")) == 0
    assert has_split(counted, "val") and not has_split(counted, "test")


def test_class_weights_are_the_seeds_normalised_inverse_frequencies(tmp_path):
    images, masks = _tiles_with_pixels([10, 30])
    masks[0].flat[100:110] = 122  # neither cell (> 122) nor background (< 122), as in the seed
    root = _write_prepared(tmp_path, {"a": (images, masks, "train")})
    n_cell, n_back = 40, 2 * T * T - 40 - 10
    total = n_cell + n_back
    inv_cell, inv_back = total / n_cell, total / n_back
    expected = (inv_back / (inv_cell + inv_back), inv_cell / (inv_cell + inv_back))
    assert class_weights_for(root, tile_filter="all") == pytest.approx(expected)
    assert sum(class_weights_for(root)) == pytest.approx(1.0)


def test_batches_without_augmentation_are_the_tiles(counted):
    ds = make_dataset(counted, batch_size=3, tile_filter="all", seed=0)
    batches = list(ds)
    assert [len(x) for x, _ in batches] == [3, 1]
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.float32 and y.shape == (4, T, T, 1)
    order = np.argsort(x[:, 0, 0, 0])
    source = load_tiles(counted, split="train")
    np.testing.assert_array_equal(x[order], source.images.astype(np.float32))
    np.testing.assert_array_equal(y[order, ..., 0], source.masks / 255.0)
    dropped = make_dataset(counted, batch_size=3, tile_filter="all", drop_remainder=True)
    assert [len(x) for x, _ in dropped] == [3]


def test_downscale_is_pil_nearest_after_augmentation(tmp_path):
    root = write_synthetic_prepared(
        str(tmp_path), images=2, tiles_per_image=3, tile=64, splits=("train",)
    )
    source = load_tiles(root, split="train")
    for size in (8, 50):
        ds = make_dataset(root, batch_size=6, tile_filter="all", output_size=size, shuffle=False)
        x, y = next(iter(ds))
        assert x.shape == (6, 64, 64, 3) and y.shape == (6, size, size, 1)
        pil = np.stack(
            [
                np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST))
                for m in source.masks
            ]
        )
        np.testing.assert_array_equal(y.numpy()[..., 0], (pil > 127).astype(np.float32))


def test_shuffle_is_reproducible_and_differs_per_epoch(tmp_path):
    root = write_synthetic_prepared(
        str(tmp_path), images=2, tiles_per_image=8, tile=32, splits=("train",)
    )

    def epochs(ds, n=2):
        return [np.concatenate([x.numpy()[:, 5, 5, 0] for x, _ in ds]) for _ in range(n)]

    kw = {"batch_size": 4, "tile_filter": "all", "shapes": True, "affine": True, "seed": 3}
    a, b = epochs(make_dataset(root, **kw)), epochs(make_dataset(root, **kw))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])


def test_random_crops_are_aligned_windows(tmp_path):
    root = write_synthetic_prepared(
        str(tmp_path), images=1, tiles_per_image=6, tile=64, splits=("train",)
    )
    source = load_tiles(root, split="train")
    ds = make_dataset(root, batch_size=6, tile_filter="all", crop=24, shuffle=False, seed=1)
    x, y = (a.numpy() for a in next(iter(ds)))
    assert x.shape == (6, 24, 24, 3) and y.shape == (6, 24, 24, 1)
    for i in range(6):
        found = [
            (r, c)
            for r in range(41)
            for c in range(41)
            if np.array_equal(source.images[i, r : r + 24, c : c + 24], x[i])
        ]
        assert found, "each crop is a window of its tile"
        r, c = found[0]
        np.testing.assert_array_equal(source.masks[i, r : r + 24, c : c + 24] / 255.0, y[i, ..., 0])


def test_augmented_batches_keep_masks_on_the_cells(tmp_path):
    root = write_synthetic_prepared(
        str(tmp_path), images=2, tiles_per_image=8, tile=64, splits=("train",)
    )
    ds = make_dataset(root, batch_size=8, tile_filter="cells", affine=True, seed=2, repeat=True)
    x, y = (a.numpy() for a in next(iter(ds)))
    assert set(np.unique(y)) <= {0.0, 1.0} and y.sum() > 0
    # synthetic cells are bright (R >= 150) on a dark background (R ~ 30)
    assert (x[..., 0][y[..., 0] == 1] > 90).mean() > 0.95


def test_s3_prepared_folder(s3_bucket):
    root = write_synthetic_prepared(
        f"{s3_bucket}/prepared/v1", images=2, tiles_per_image=2, tile=32, splits=("train",)
    )
    tiles = load_tiles(root, split="train")
    assert tiles.images.shape == (4, 32, 32, 3)
    x, _ = next(iter(make_dataset(root, batch_size=2, tile_filter="all")))
    assert x.shape == (2, 32, 32, 3)


def test_bad_input_raises_with_the_file_named(tmp_path, counted):
    with pytest.raises(FileNotFoundError, match=r"tiles\.parquet"):
        load_tiles(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no tiles in split 'test'"):
        make_dataset(counted, split="test", batch_size=2)
    with pytest.raises(ValueError, match="tile_filter"):
        make_dataset(counted, batch_size=2, tile_filter="some")
    with pytest.raises(ValueError, match="crop"):
        make_dataset(counted, batch_size=2, crop=T + 1)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(counted, batch_size=0)
    storage.write_bytes(storage.join(counted, "tiles/a.npz"), b"not a zip")
    with pytest.raises(ValueError, match=r"a\.npz"):
        load_tiles(counted)
    bad = _write_prepared(tmp_path / "empty", {"a": (*_tiles_with_pixels([0]), "train")})
    with pytest.raises(ValueError, match="class weights"):
        class_weights_for(bad, tile_filter="all")


def test_labels_load_and_mask_only_shards_fall_back_to_components(tmp_path, counted):
    root = write_synthetic_prepared(
        str(tmp_path / "p"), images=2, tiles_per_image=3, tile=32, splits=("train",)
    )
    tiles = load_tiles(root, split="train")
    assert tiles.labels is not None and tiles.labels.dtype == np.int32
    assert tiles.labels.shape == tiles.masks.shape
    np.testing.assert_array_equal(tiles.labels > 0, tiles.masks > 127)
    cells = tiles.filtered("cells")
    assert len(cells.labels) == len(cells)
    plain = load_tiles(counted, split="train")  # no labels in the shards
    assert plain.labels is None
    comps = plain.instance_labels()
    assert comps.shape == plain.masks.shape and (comps.max(axis=(1, 2)) == [0, 1, 1, 1]).all()


def test_three_class_batches_are_one_hot_maps_of_the_labels(tmp_path):
    root = write_synthetic_prepared(
        str(tmp_path), images=2, tiles_per_image=4, tile=32, splits=("train",)
    )
    source = load_tiles(root, split="train")
    expected = np.stack([three_class_targets(lab) for lab in source.labels])
    np.testing.assert_array_equal(source.classes(1), expected)
    ds = make_dataset(root, batch_size=8, tile_filter="all", shuffle=False, target="three_class")
    x, y = (a.numpy() for a in next(iter(ds)))
    assert y.shape == (8, 32, 32, 3) and set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_array_equal(y.sum(axis=-1), 1.0)
    np.testing.assert_array_equal(y.argmax(axis=-1), expected)
    # cropped, warped and intensity-augmented: classes stay one-hot and on the bright discs
    ds = make_dataset(
        root,
        batch_size=8,
        tile_filter="all",
        target="three_class",
        boundary_width=2,
        affine=True,
        intensity=True,
        crop=24,
        seed=1,
        fill=GREY_FILL,
    )
    x, y = (a.numpy() for a in next(iter(ds)))
    assert x.shape == (8, 24, 24, 3) and y.shape == (8, 24, 24, 3)
    np.testing.assert_array_equal(y.sum(axis=-1), 1.0)
    assert y[..., 2].sum() > 0 and y[..., 1].sum() > 0
    # the discs stay brighter than the background whatever the gamma and contrast drew
    cls = y.argmax(axis=-1)
    for i in range(8):
        if (cls[i] == 1).any():
            assert x[i, ..., 0][cls[i] == 1].mean() > x[i, ..., 0][cls[i] == 0].mean()
    small = make_dataset(
        root, batch_size=8, tile_filter="all", target="three_class", output_size=8, shuffle=False
    )
    assert next(iter(small))[1].shape == (8, 8, 8, 3)
    with pytest.raises(ValueError, match="target"):
        make_dataset(root, batch_size=2, target="distance")


def test_centre_targets_ride_along_as_a_fourth_channel(tmp_path):
    root = write_synthetic_prepared(
        str(tmp_path), images=2, tiles_per_image=4, tile=32, splits=("train",)
    )
    source = load_tiles(root, split="train")
    centres = source.centres()
    assert centres.dtype == np.uint8 and centres.shape == source.labels.shape
    np.testing.assert_array_equal(
        centres, np.round(np.stack([centre_targets(lab) * 255 for lab in source.labels]))
    )
    assert source.take(np.arange(2)).centres().shape == (2, 32, 32)  # the cache follows
    ds = make_dataset(
        root, batch_size=8, tile_filter="all", shuffle=False, target="three_class", centre=True
    )
    _, y = (a.numpy() for a in next(iter(ds)))
    assert y.shape == (8, 32, 32, 4)
    np.testing.assert_array_equal(y[..., :3].argmax(-1), source.classes(1))
    np.testing.assert_allclose(y[..., 3], centres / 255.0, atol=1e-6)
    # warped with the classes: the centre map lives on the foreground only, peaks inside
    ds = make_dataset(
        root,
        batch_size=8,
        tile_filter="all",
        target="three_class",
        centre=True,
        affine=True,
        crop=24,
        seed=3,
    )
    _, y = (a.numpy() for a in next(iter(ds)))
    assert y.shape == (8, 24, 24, 4) and 0.0 <= y[..., 3].min() and y[..., 3].max() <= 1.0
    assert (y[..., 3][y[..., 0] == 1.0] == 0.0).all() and (y[..., 3][y[..., 1] == 1.0] > 0).all()
    with pytest.raises(ValueError, match="centre"):
        make_dataset(root, batch_size=2, centre=True)


def test_separation_maps_ride_along_as_the_last_channel(tmp_path):
    root = write_synthetic_prepared(
        str(tmp_path), images=2, tiles_per_image=4, tile=32, splits=("train",)
    )
    source = load_tiles(root, split="train")
    seps = source.separations()
    assert seps.dtype == np.uint8 and seps.shape == source.labels.shape
    np.testing.assert_array_equal(seps, [separation_targets(lab) for lab in source.labels])
    for centre, channels in ((False, 4), (True, 5)):
        ds = make_dataset(
            root,
            batch_size=8,
            tile_filter="all",
            shuffle=False,
            target="three_class",
            centre=centre,
            separation=True,
        )
        _, y = (a.numpy() for a in next(iter(ds)))
        assert y.shape == (8, 32, 32, channels)
        np.testing.assert_array_equal(y[..., :3].argmax(-1), source.classes(1))
        np.testing.assert_array_equal(y[..., -1], seps)
        if centre:
            np.testing.assert_allclose(y[..., 3], source.centres() / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="separation"):
        make_dataset(root, batch_size=2, separation=True)
    # small objects ride in the same channel
    small = source.separations(small_area=10_000)
    np.testing.assert_array_equal(
        small, [separation_targets(lab, small_area=10_000) for lab in source.labels]
    )
    assert small.sum() > seps.sum()
    ds = make_dataset(
        root, batch_size=8, tile_filter="all", shuffle=False, target="three_class",
        separation=True, small_area=10_000,
    )  # fmt: skip
    _, y = (a.numpy() for a in next(iter(ds)))
    np.testing.assert_array_equal(y[..., -1], small)
    np.testing.assert_array_equal(
        y[..., :3].argmax(-1),
        [three_class_targets(lab, small_area=10_000) for lab in source.labels],
    )
    with pytest.raises(ValueError, match="needs separation"):
        make_dataset(root, batch_size=2, target="three_class", small_area=10)


def test_multiclass_weights(tmp_path):
    root = write_synthetic_prepared(
        str(tmp_path), images=2, tiles_per_image=4, tile=32, splits=("train",)
    )
    classes = load_tiles(root, split="train").filtered("cells").classes(1)
    freq = np.bincount(classes.ravel(), minlength=3) / classes.size
    for weighting, raw in (
        ("inverse", 1 / freq),
        ("sqrt", 1 / np.sqrt(freq)),
        ("none", np.ones(3)),
    ):
        w = np.array(multiclass_weights_for(root, weighting=weighting))
        np.testing.assert_allclose(w, raw / (freq * raw).sum(), rtol=1e-9)
        assert (freq * w).sum() == pytest.approx(1.0)
    w = multiclass_weights_for(root)  # sqrt: the rare boundary weighs most, background least
    assert w[2] > w[1] > w[0]
    with pytest.raises(ValueError, match="weighting"):
        multiclass_weights_for(root, weighting="median")


@pytest.mark.slow
def test_bench_pipeline_reports_json_numbers():
    result = bench_pipeline(
        tiles=8, tile=32, batch_size=4, steps=2, models=("unet",), precisions=("float32",)
    )
    assert json.loads(json.dumps(result)) == result
    assert result["pipeline"]["tiles_per_s"] > 0 and result["device"] == "CPU"
    train = result["training"]["unet/float32"]
    assert train["tiles_per_s"] == pytest.approx(4 * train["steps_per_s"])
    assert result["ratio"]["unet/float32"] == pytest.approx(
        result["pipeline"]["tiles_per_s"] / train["tiles_per_s"]
    )
    with pytest.raises(ValueError, match="batch_size"):
        bench_pipeline(tiles=2, batch_size=4)
