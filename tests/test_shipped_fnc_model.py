"""The shipped FNC model (the default, also `--model fnc`): grey input, stain-independent, finds
the cells of a plate, and its card reports leave-one-image-out scores on every real sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuroseg import registry
from neuroseg.metrics import iou_matching, match_objects
from neuroseg.predict import segment_image
from neuroseg.synth import synth_plate

FOLDER = Path(registry.default_model_uri())
pytestmark = pytest.mark.skipif(
    not (FOLDER / "config.json").exists(), reason="no shipped default model in this checkout"
)


@pytest.fixture(scope="module")
def fnc():
    return registry.load_model(str(FOLDER))


@pytest.fixture(scope="module")
def plate():
    return synth_plate(seed=11, height=600, width=800, n_cells=14)


def test_reads_one_grey_plane_of_any_stain(fnc, plate):
    """Yellow (red + green) and red-only versions of a plate give the same cells under the
    same post-processing: the model sees the maximum over the colour channels,
    percentile-normalised. A model with post-processing per stain or per cell size then
    applies the one of the stain it sees or of the cells its maps hold."""
    from neuroseg.normalize import stain_of
    from neuroseg.predict import (
        check_postprocess_by_size,
        postprocess,
        postprocess_params,
        predict_image,
        size_group,
    )

    assert fnc.config["input"]["channels"] == "grey"
    assert fnc.config["input"]["normalization"] == "percentile"
    yellow = plate.image
    red = yellow.copy()
    red[..., 1:] = 0  # the red stain: the same red plane, no green
    assert stain_of(yellow) == "yellow" and stain_of(red) == "red"
    p_y, p_r = predict_image(fnc, yellow), predict_image(fnc, red)
    lab_y, n_y, _ = postprocess(fnc.config, p_y)
    lab_r, n_r, _ = postprocess(fnc.config, p_r)
    assert n_y > 0 and abs(n_y - n_r) <= 1
    # the same cells: every one matched at IoU >= 0.8 (read noise in the green plane of dim
    # pixels can win the maximum, so the planes are not bit-identical)
    same = iou_matching(lab_y, lab_r, thresholds=(0.8,))
    assert same["tp"][0] >= n_y - 1, same
    # a 16-bit camera version of the same plane (12-bit values) gives the same cells too
    deep = (yellow.max(axis=2).astype(np.uint16) * 16).astype(np.uint16)
    _, n_d, _ = postprocess(fnc.config, predict_image(fnc, deep))
    assert abs(n_d - n_y) <= 1
    # segment_image post-processes as the image's stain and its cells' size say
    by_size = check_postprocess_by_size(fnc.config.get("postprocess_by_size"))
    for image, probs, stain in ((yellow, p_y, "yellow"), (red, p_r, "red")):
        params = postprocess_params(
            fnc.config,
            stain=stain if fnc.config.get("postprocess_by_stain") else None,
            size=size_group(probs, by_size["below_area"]) if by_size else None,
        )
        flat = {**fnc.config, "postprocess": params, "postprocess_by_stain": None,
                "postprocess_by_size": None}  # fmt: skip
        assert segment_image(fnc, image)[1] == postprocess(flat, probs)[1]


def test_predicts_the_red_collections_large_images_whole(fnc):
    """2272 x 1704 (the red collection's) and smaller images are predicted in one call, not in
    tiles whose seams cut cells; larger ones blend their tiles with the taper window."""
    assert fnc.config["max_whole_pixels"] >= 2272 * 1704
    assert fnc.config["blend"] == "taper"


def test_finds_the_cells_of_a_synthetic_plate(fnc, plate):
    labels, _, _ = segment_image(fnc, plate.image)
    found = match_objects(plate.instances, labels, radius=40)
    assert found["f1"] >= 0.7, found


def test_card_scores_every_real_sample_held_out_once():
    scores = json.loads((FOLDER / "scores.json").read_text())
    cv = scores["cross_validation"]
    names = [f["name"] for f in cv["folds"]]
    assert len(names) == len(set(names)) == scores["real_images"] >= 6
    for fold in cv["folds"]:  # each fold model trained on the other samples only
        assert fold["model"]["image_id"] == Path(fold["name"]).stem
        assert sorted([*fold["trained_on"], fold["name"]]) == sorted(names)
    for stain in ("yellow", "red"):
        pooled = cv["model"][stain]
        folds = [f["model"] for f in cv["folds"] if f["colour"] == stain]
        assert pooled["tp"] == sum(f["tp"] for f in folds)
        assert pooled["cells"] == sum(f["true_count"] for f in folds)
    card = (FOLDER / "MODEL_CARD.md").read_text()
    assert "CC BY-SA 4.0" in card and "leave-one-image-out" in card


def test_shipped_post_processing_is_the_nested_choice_and_its_scores_add_up():
    scores = json.loads((FOLDER / "scores.json").read_text())
    nested = scores["cross_validation"].get("nested")
    if nested is None:
        pytest.skip("this default model has fixed post-processing (no nested choice)")
    config = json.loads((FOLDER / "config.json").read_text())
    for key, value in nested["final"].items():
        assert config["postprocess"][key] == value
    assert config.get("rescale") == nested.get("rescale")  # served as it was scored
    assert config.get("postprocess_by_stain") == nested.get("final_by_stain")
    assert config.get("postprocess_by_size") == nested.get("final_by_size")
    grid = nested["grid"]
    folds = nested["folds"]
    assert [f["name"] for f in folds] == [f["name"] for f in scores["cross_validation"]["folds"]]
    for f in folds:  # every image's parameters are a point of the grid
        for key, values in grid.items():
            assert f["params"][key] in values
    for stain in ("yellow", "red"):
        mine = [f for f in folds if f["colour"] == stain]
        pooled = nested["model"][stain]
        assert pooled["tp"] == sum(f["tp"] for f in mine)
        assert pooled["found"] == sum(f["pred_count"] for f in mine)
        assert pooled["f1"] == pytest.approx(
            2 * pooled["tp"] / (2 * pooled["tp"] + pooled["fp"] + pooled["fn"])
        )
    card = (FOLDER / "MODEL_CARD.md").read_text()
    assert "nested leave-one-out" in card


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fnc-samples"


@pytest.mark.skipif(not (SHARED / "red").is_dir(), reason="../shared/data/fnc-samples is absent")
def test_small_somata_get_a_second_look_at_full_scale(fnc):
    """The 200x red image of small somata (MAR32, 73 cells of 230-1,900 px) is predicted
    again at full scale over the box holding its cells under the shipped rescale rule, and the
    maps there are the mean of both passes; an image of large cells (RT353, 2,500-4,000 px) is
    predicted once. (Whether it helps is scored on held-out images, in the card: this model
    trained on both images.)"""
    from neuroseg.images import read_native
    from neuroseg.predict import foreground_box, predict_image, typical_cell_area

    rule = fnc.config.get("rescale")
    if not rule:
        pytest.skip("this default model has no rescale rule")
    plain = registry.load_model(str(FOLDER))
    plain.config = {k: v for k, v in plain.config.items() if k != "rescale"}
    small = read_native(SHARED / "red" / "images" / "MAR32C2R3_PVHr_200x_r.png")
    first = predict_image(plain, small)
    assert 0 < typical_cell_area(first) < rule["below_area"]
    both = predict_image(fnc, small)
    box = foreground_box(first, pad=64)
    outside = np.ones(first.shape[:2], bool)
    outside[box] = False
    assert outside.any() and np.array_equal(both[outside], first[outside])
    assert np.abs(both[box] - first[box]).max() > 0.2  # the full-scale pass moved the maps
    large = read_native(SHARED / "red" / "images" / "RT353S2C1R5_r1.png")
    assert typical_cell_area(predict_image(plain, large)) >= rule["below_area"]
    np.testing.assert_array_equal(segment_image(fnc, large)[0], segment_image(plain, large)[0])


@pytest.mark.skipif(not (SHARED / "red").is_dir(), reason="../shared/data/fnc-samples is absent")
def test_each_sample_is_in_the_size_part_its_held_out_maps_were_in(fnc):
    """The cell-size parts recorded with the nested choice (each sample's out-of-fold maps:
    typical cell under the rescale rule's area or not) are the parts the shipped model's own
    maps put the samples in, so post-processing per size (`postprocess_by_size`, scored on the
    card) would serve each image the parameters scored for it."""
    from neuroseg.images import read_native
    from neuroseg.predict import predict_image, size_group

    nested = json.loads((FOLDER / "scores.json").read_text())["cross_validation"].get("nested")
    if not (nested and nested.get("sizes") and fnc.config.get("rescale")):
        pytest.skip("this default model's card records no cell-size parts")
    below = fnc.config["rescale"]["below_area"]
    assert set(nested["sizes"].values()) == {"small", "large"}
    for name, part in nested["sizes"].items():
        path = next(SHARED.glob(f"*/images/{name}"))
        assert size_group(predict_image(fnc, read_native(path)), below) == part, name
