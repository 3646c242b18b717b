"""Whole-image prediction through tiling and stitching, and segmentation of probability maps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from neuroseg import reference
from neuroseg.metrics import iou_matching, match_objects
from neuroseg.predict import (
    predict_image,
    predict_probabilities,
    relabel_raster,
    segment,
    segment_image,
)


def green_model(tiles):
    """A 'model' that returns the green channel: full-tile output."""
    return tiles[..., 1].astype(np.float32) / 255


def block_model(tiles):
    """A 'model' with the seed's 50x50 output: 8x8 block means of the green channel."""
    n, t = tiles.shape[:2]
    g = tiles[..., 1].astype(np.float32).reshape(n, t // 8, 8, t // 8, 8)
    return g.mean(axis=(2, 4)) / 255


def disc_image(shape, centres, radius):
    rr, cc = np.indices(shape)
    mask = np.zeros(shape, dtype=bool)
    for r, c in centres:
        mask |= (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
    image = np.zeros((*shape, 3), dtype=np.uint8)
    image[mask] = (230, 255, 20)
    return image, mask


@pytest.mark.parametrize("blend", ["min", "mean", "taper"])
@pytest.mark.parametrize("shape", [(1200, 1600), (250, 330), (401, 799)])
def test_identity_model_recovers_mask_exactly(blend, shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.3
    image = np.zeros((*shape, 3), dtype=np.uint8)
    image[..., 1] = mask * 255
    image[..., 0] = rng.integers(0, 255, shape)  # other channels must not matter
    calls = []

    def model(tiles):
        calls.append(tiles.shape)
        return green_model(tiles)

    prob = predict_probabilities(model, image, blend=blend, batch_size=3)
    assert prob.shape == shape and prob.dtype == np.float32
    np.testing.assert_array_equal(prob, mask.astype(np.float32))
    assert all(c[0] <= 3 and c[1:] == (400, 400, 3) for c in calls)


def test_50x50_output_matches_the_seed_pipeline():
    """upscale='seed', blend='min' reproduces the notebook's crop/predict/upscale/min-blend."""
    image, _ = disc_image((1200, 1600), [(100, 100), (600, 777), (1100, 1500), (300, 1300)], 40)
    rng = np.random.default_rng(3)
    image[..., 1] = np.clip(image[..., 1] + rng.integers(0, 60, image.shape[:2]), 0, 255)
    height, width = image.shape[:2]
    partitions = reference.evenly_spaced_partitions(width, height, 400, 100)
    pil = Image.fromarray(image)
    crops = reference.crop_image(pil, pil.convert("L"), partitions)
    seed_pred = block_model(np.array([np.array(c.image) for c in crops]))
    expected = reference.stitch_predictions(seed_pred, partitions, width, height)
    prob = predict_probabilities(block_model, image, output_size=50, upscale="seed")
    np.testing.assert_array_equal(np.rint(prob * 255).astype(np.uint8), expected)


def test_50x50_output_bilinear_finds_the_cells():
    centres = [(150, 150), (600, 800), (1000, 1400), (300, 1300), (900, 300)]
    image, mask = disc_image((1200, 1600), centres, 30)
    prob = predict_probabilities(block_model, image, output_size=50)
    labels, n = segment(prob, threshold=0.5)
    assert n == len(centres)
    match = match_objects(segment(mask.astype(np.float32))[0], labels, radius=2.0)
    assert match["tp"] == len(centres)
    assert np.mean((prob > 0.5) == mask) > 0.995


def test_predict_image_reads_the_bundle_config():
    image, mask = disc_image((500, 700), [(250, 350)], 60)
    bundle = SimpleNamespace(
        config={"tile": 200, "output_size": 25, "min_overlap": 40, "blend": "mean"},
        predict_tiles=lambda t: block_model(t),
    )
    prob = predict_image(bundle, image)
    assert prob.shape == (500, 700)
    assert np.mean((prob > 0.5) == mask) > 0.99
    bundle.config["output_size"] = 50
    with pytest.raises(ValueError, match="output_size"):
        predict_image(bundle, image)


def test_predict_validates():
    image = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        predict_probabilities(green_model, image.astype(float))
    with pytest.raises(ValueError, match="shape"):
        predict_probabilities(lambda t: t[..., 1][:, :10], image)
    with pytest.raises(ValueError, match="float"):
        predict_probabilities(lambda t: t[..., 1], image)
    with pytest.raises(ValueError, match="blend"):
        predict_probabilities(green_model, image, blend="max")
    # (n, s, s, 1) outputs (Keras channel axis) are accepted
    out = predict_probabilities(lambda t: green_model(t)[..., None], image)
    assert out.shape == (100, 100)


def test_segment_thresholds_labels_and_filters():
    prob = np.zeros((60, 80), np.float32)
    prob[40:50, 5:15] = 0.9  # 100 px, first in raster order after the next one
    prob[2:4, 70:72] = 0.9  # 4 px speck, raster-first
    prob[10:30, 30:50] = 0.6  # 400 px
    prob[10:30, 50] = 0.5  # exactly the threshold: background (prob > threshold)
    labels, n = segment(prob)
    assert n == 3 and labels.dtype == np.int32
    assert labels[2, 70] == 1 and labels[10, 30] == 2 and labels[40, 5] == 3
    labels, n = segment(prob, min_area=50)
    assert n == 2
    assert labels[2, 70] == 0 and labels[10, 30] == 1 and labels[40, 5] == 2
    assert segment(prob, threshold=0.7)[1] == 2
    assert segment(np.zeros((5, 5), np.float32), watershed=True)[1] == 0


def test_watershed_splits_two_touching_discs():
    rr, cc = np.indices((100, 140))
    fg = ((rr - 50) ** 2 + (cc - 50) ** 2 <= 20**2) | ((rr - 50) ** 2 + (cc - 85) ** 2 <= 20**2)
    prob = fg.astype(np.float32)
    assert segment(prob)[1] == 1
    labels, n = segment(prob, watershed=True)
    assert n == 2
    assert labels[50, 50] != labels[50, 85] and labels[50, 50] > 0 and labels[50, 85] > 0
    assert (labels > 0).sum() == fg.sum()  # nothing lost
    assert abs((labels == 1).sum() - (labels == 2).sum()) < 0.05 * fg.sum()
    # a single disc stays whole; a thin line without a clear peak keeps its label
    single = ((rr - 50) ** 2 + (cc - 50) ** 2 <= 20**2).astype(np.float32)
    single[90, 10:120] = 1
    labels, n = segment(single, watershed=True)
    assert n == 2 and (labels > 0).sum() == (single > 0.5).sum()


def test_relabel_raster():
    lab = np.array([[0, 7, 7], [3, 0, 9], [3, 0, 9]])
    out, n = relabel_raster(lab)
    assert n == 3
    np.testing.assert_array_equal(out, [[0, 1, 1], [2, 0, 3], [2, 0, 3]])
    # min_area drops the small objects first, then numbers the rest in raster order
    out, n = relabel_raster(np.array([[0, 7, 7, 7], [3, 0, 9, 9], [3, 0, 0, 5]]), min_area=2)
    assert n == 3 and out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 1, 1, 1], [2, 0, 3, 3], [2, 0, 0, 0]])
    empty, n = relabel_raster(np.zeros((4, 5), np.uint16), min_area=3)
    assert n == 0 and empty.shape == (4, 5) and not empty.any()
    gone, n = relabel_raster(np.array([[4, 4, 0]]), min_area=3)
    assert n == 0 and not gone.any()


def _relabel_whole_image(labels, min_area):
    """The whole-image way (bincount of every pixel, then a lookup of every pixel)."""
    area = np.bincount(labels.ravel())
    small = area < min_area
    small[0] = False
    labels = np.where(small[labels], 0, labels)
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    ids, first = np.unique(flat[nz], return_index=True)
    lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.int32)
    lut[ids[np.argsort(first, kind="stable")]] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[labels], int(ids.size)


@pytest.mark.parametrize("seed", range(4))
def test_relabel_raster_matches_the_whole_image_way(seed):
    rng = np.random.default_rng(seed)
    # random blobs with shuffled ids and gaps, many of them small
    ids = rng.permutation(400)[:60] + 1
    lab = np.where(rng.random((90, 120)) < 0.3, rng.choice(ids, (90, 120)), 0)
    lab = ndi.maximum_filter(lab, size=int(rng.integers(1, 4))).astype(np.int32)
    for min_area in (0, 1, 5, 30):
        out, n = relabel_raster(lab, min_area=min_area)
        ref, ref_n = _relabel_whole_image(lab, min_area)
        assert n == ref_n
        np.testing.assert_array_equal(out, ref)


def test_multi_channel_outputs_are_stitched_per_channel():
    image, mask = disc_image((300, 420), [(150, 200)], 50)

    def two_channel(tiles):
        g = tiles[..., 1].astype(np.float32) / 255
        return np.stack([1 - g, g], axis=-1)

    prob = predict_probabilities(two_channel, image, tile=128, min_overlap=32, blend="mean")
    assert prob.shape == (300, 420, 2) and prob.dtype == np.float32
    np.testing.assert_array_equal(prob[..., 1], mask.astype(np.float32))
    np.testing.assert_array_equal(prob[..., 0], 1 - mask.astype(np.float32))
    small = predict_probabilities(
        lambda t: two_channel(t)[:, ::4, ::4], image, tile=128, output_size=32, min_overlap=32
    )
    assert small.shape == (300, 420, 2) and np.mean((small[..., 1] > 0.5) == mask) > 0.99


def test_segment_image_turns_three_class_maps_into_instances():
    from neuroseg.instances import three_class_targets

    rr, cc = np.indices((200, 260))
    centres = [(100, 80), (100, 112), (60, 200)]  # two touching discs and a lone one
    radii = np.array([18, 18, 26])[:, None, None]
    dist = np.stack([np.hypot(rr - r, cc - c) for r, c in centres]) / radii
    truth = np.where(dist.min(axis=0) <= 1, dist.argmin(axis=0) + 1, 0).astype(np.int32)
    classes = three_class_targets(truth, boundary_width=2)
    image = np.zeros((200, 260, 3), np.uint8)
    image[..., 0] = classes * 100  # the "model" reads the classes back from the red channel

    def model(tiles):
        return np.eye(3, dtype=np.float32)[np.rint(tiles[..., 0] / 100).astype(int)]

    config = {"tile": 128, "min_overlap": 32, "blend": "mean", "head": "three_class"}
    bundle = SimpleNamespace(config=config, predict_tiles=model)
    labels, n, prob = segment_image(bundle, image, min_area=10_000, threshold=0.99)
    assert n == 3 and prob.shape == (200, 260) and prob.dtype == np.float32
    np.testing.assert_array_equal(prob, (truth > 0).astype(np.float32))  # 1 - p_background
    match = iou_matching(truth, labels, thresholds=[0.9])
    assert match["tp"] == [3]
    config["postprocess"] = {"min_area": 1500}  # only the large disc (~2100 px) is kept
    assert segment_image(bundle, image)[1] == 1
    # a model whose config asks for whole-image prediction is called once, without tiles
    calls = []

    def whole(x):
        calls.append(x.shape)
        return model(x[None])[0]

    config.update(max_whole_pixels=200 * 260, postprocess={})
    bundle = SimpleNamespace(config=config, predict_tiles=model, predict_whole=whole)
    assert segment_image(bundle, image)[1] == 3 and calls == [(200, 260, 3)]
    config["head"] = "binary"
    with pytest.raises(ValueError, match="binary model"):
        segment_image(bundle, image)


def test_tta_averages_flipped_predictions_flipped_back():
    """A flip-equivariant model gives its plain prediction under every mode; a model blind to
    its input (a column ramp) shows the flips are undone before averaging: the ramp and its
    mirror image average to a constant."""
    image, _ = disc_image((120, 160), [(60, 50)], 25)
    seen = []

    def ramp_whole(x):
        seen.append(x[..., 1].copy())
        return np.broadcast_to(np.arange(x.shape[1], dtype=np.float32), x.shape[:2]).copy()

    config = {"tile": 64, "max_whole_pixels": 10**6}
    bundle = SimpleNamespace(config=config, predict_tiles=green_model, predict_whole=ramp_whole)
    plain = predict_image(bundle, image)
    np.testing.assert_array_equal(plain[0], np.arange(160))
    config["tta"] = "flips"
    seen.clear()
    np.testing.assert_allclose(predict_image(bundle, image), 79.5)
    assert len(seen) == 4  # the model saw the image, and it flipped each way
    np.testing.assert_array_equal(seen[3], image[::-1, ::-1, 1])
    config["tta"] = "flip2"
    np.testing.assert_allclose(predict_image(bundle, image), 79.5)
    # tiles (no whole-image path): an equivariant model predicts the same under TTA
    tiled = SimpleNamespace(
        config={"tile": 64, "min_overlap": 16, "blend": "mean"}, predict_tiles=green_model
    )
    reference = predict_image(tiled, image)
    for mode in ("flip2", "flips"):
        tiled.config["tta"] = mode
        np.testing.assert_allclose(predict_image(tiled, image), reference, atol=1e-6)
    tiled.config["tta"] = "rot90"
    with pytest.raises(ValueError, match="tta must be one of none, flip2, flips"):
        predict_image(tiled, image)


def test_postprocess_params_follow_the_tta_mode():
    from neuroseg.instances import POSTPROCESS_DEFAULTS
    from neuroseg.predict import postprocess_params

    config = {
        "postprocess": {"foreground_threshold": 0.7},
        "postprocess_tta": {"flips": {"foreground_threshold": 0.6, "min_area": 12}},
    }
    assert postprocess_params(config) == {**POSTPROCESS_DEFAULTS, "foreground_threshold": 0.7}
    config["tta"] = "flips"
    assert postprocess_params(config) == {
        **POSTPROCESS_DEFAULTS,
        "foreground_threshold": 0.6,
        "min_area": 12,
    }
    config["tta"] = "flip2"  # no sweep under flip2: the plain choice
    assert postprocess_params(config)["foreground_threshold"] == 0.7


def test_post_processing_per_stain_follows_the_image(fnc_root):
    """A model with post-processing per stain applies the one of the stain it sees: the real
    red samples are told from the yellow ones by colour; grey images take the joint choice."""
    from neuroseg.images import read_native
    from neuroseg.normalize import stain_of
    from neuroseg.predict import postprocess, postprocess_params

    for stain in ("yellow", "red"):
        for path in sorted((fnc_root / stain / "images").iterdir()):
            assert stain_of(read_native(path)) == stain, path.name
    assert stain_of(np.zeros((40, 50), np.uint16)) is None  # grey: cannot tell
    assert stain_of(np.zeros((40, 50, 3), np.uint8)) is None  # blank
    config = {
        "head": "three_class",
        "postprocess": {"min_area": 5},
        "postprocess_by_stain": {"red": {"min_area": 50}, "yellow": {"min_area": 1}},
    }
    assert postprocess_params(config)["min_area"] == 5
    assert postprocess_params(config, stain="red")["min_area"] == 50
    assert postprocess_params(config, stain="blue")["min_area"] == 5
    # a 30-px object: kept under the yellow and joint choices, dropped under the red one
    probs = np.zeros((40, 50, 3), np.float32)
    probs[..., 0] = 1.0
    probs[10:15, 10:16] = (0.0, 1.0, 0.0)
    red = np.zeros((40, 50, 3), np.uint8)
    red[10:15, 10:16, 0] = 200
    yellow = red.copy()
    yellow[10:15, 10:16, 1] = 160
    assert stain_of(red) == "red" and stain_of(yellow) == "yellow"
    assert postprocess(config, probs, image=red)[1] == 0
    assert postprocess(config, probs, image=yellow)[1] == 1
    assert postprocess(config, probs)[1] == 1


def test_post_processing_per_size_follows_the_cells_typical_area():
    """A model with post-processing per cell size applies the part its maps' typical cell
    falls in (stain or not): the same kind of speck is dropped among large cells and kept
    among small ones; an image without cells is "large"; bad specs fail in one line."""
    from neuroseg.predict import (
        check_postprocess_by_size,
        postprocess,
        postprocess_params,
        size_group,
    )

    config = {
        "head": "three_class",
        "postprocess": {"min_area": 5, "foreground_threshold": 0.5},
        "postprocess_by_size": {
            "below_area": 200,
            "small": {"min_area": 10},
            "large": {"min_area": 100},
        },
    }

    def field(side: int, n: int) -> np.ndarray:  # n square cells of side**2 px, and a speck
        probs = np.zeros((60, 60 * (n + 1), 3), np.float32)
        probs[..., 0] = 1.0
        for k in range(n):
            probs[5 : 5 + side, 60 * k + 5 : 60 * k + 5 + side] = (0.0, 1.0, 0.0)
        probs[20:25, 60 * n + 20 : 60 * n + 27] = (0.0, 1.0, 0.0)  # 35 px
        return probs

    small, large = field(10, 4), field(40, 4)  # cells of 100 and 1,600 px
    assert size_group(small, 200) == "small" and size_group(large, 200) == "large"
    assert size_group(np.eye(3, dtype=np.float32)[np.zeros((9, 9), int)], 200) == "large"
    assert postprocess(config, small)[1] == 5  # the speck is a small cell's size: kept
    assert postprocess(config, large)[1] == 4  # beside 1,600-px cells it is dropped
    assert postprocess_params(config)["min_area"] == 5  # no size told: the plain choice
    assert postprocess_params(config, size="large")["min_area"] == 100
    assert postprocess_params(config, size="small")["foreground_threshold"] == 0.5
    with pytest.raises(ValueError, match="size must be one of"):
        postprocess_params(config, size="huge")
    for bad, words in (
        ({"below_area": 0, "small": {}}, "below_area must be a number > 0"),
        ({"small": {}}, "below_area must be a number > 0"),
        ({"below_area": 10, "tiny": {}}, "unknown keys"),
        ({"below_area": 10, "small": {"min_area_px": 3}}, "unknown parameters"),
    ):
        with pytest.raises(ValueError, match=words):
            check_postprocess_by_size(bad)
    assert check_postprocess_by_size(None) is None
    assert check_postprocess_by_size({"below_area": "15"})["large"] == {}


def test_rescale_predicts_images_of_small_cells_again_at_the_rule_scale():
    """A model declared at half scale with a rescale rule: an image of small discs (typical
    cell under the rule's area) is predicted a second time at full scale, with the rule's
    flips, and those maps replace (or are averaged with) the first; an image of large discs
    or without any cell is predicted once."""
    from neuroseg.predict import check_rescale, typical_cell_area

    seen = []

    def classes_whole(x):  # interior where the image is green, background elsewhere
        seen.append(x.shape[:2])
        inside = x[..., 1] > 127
        out = np.zeros((*x.shape[:2], 3), np.float32)
        out[..., 1], out[..., 0] = inside, ~inside
        out[..., 2] = len(seen)  # tells the passes apart (not a softmax)
        return out

    config = {"input": {"channels": "rgb", "normalization": "fixed", "scale": 0.5},
              "max_whole_pixels": 10**6, "head": "three_class",
              "rescale": {"below_area": 500, "scale": 1.0, "mode": "replace"}}  # fmt: skip
    bundle = SimpleNamespace(config=config, predict_tiles=None, predict_whole=classes_whole)
    small, _ = disc_image((120, 160), [(30, 30), (30, 90), (80, 60)], 8)  # ~200 px cells
    large, _ = disc_image((120, 160), [(60, 80)], 25)  # ~1,960 px
    probs = predict_image(bundle, small)
    assert seen == [(60, 80), (120, 160)] and probs.shape == (120, 160, 3)
    assert probs[0, 0, 2] == 2  # the second pass's maps replace the first's
    assert 150 < typical_cell_area(probs) < 260
    seen.clear()
    predict_image(bundle, large)
    assert seen == [(60, 80)]
    seen.clear()
    predict_image(bundle, np.zeros((120, 160, 3), np.uint8))  # no cell: once
    assert seen == [(60, 80)]
    config["rescale"] = {"below_area": 500, "tta": "flips"}  # mean: the default
    seen.clear()
    probs = predict_image(bundle, small)
    assert seen == [(60, 80)] + [(120, 160)] * 4
    assert probs[0, 0, 2] == pytest.approx((1 + (2 + 3 + 4 + 5) / 4) / 2)
    # cells in one corner of a larger image: the second pass sees their box, widened by the
    # pad; outside it the first pass's maps stay
    from neuroseg.predict import RESCALE_PAD, foreground_box

    corner, _ = disc_image((400, 500), [(30, 30), (30, 60)], 8)
    seen.clear()
    probs = predict_image(bundle, corner)
    assert seen[0] == (200, 250) and seen[1:] == [(38 + RESCALE_PAD, 68 + RESCALE_PAD)] * 4
    assert probs[0, 0, 2] == pytest.approx((1 + (2 + 3 + 4 + 5) / 4) / 2) and probs[-1, -1, 2] == 1
    rows, cols = foreground_box(probs, pad=0)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (22, 39, 22, 69)
    assert foreground_box(np.zeros((5, 6), np.float32), pad=3) == (slice(0, 5), slice(0, 6))
    assert check_rescale(None) is None
    for bad, match in (({"below": 1}, "unknown keys"), ({"scale": 9}, "input scale"),
                       ({"tta": "rot"}, "tta must be"), ({"mode": "max"}, "mode"),
                       ({"below_area": "x"}, "numbers")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            check_rescale(bad)
