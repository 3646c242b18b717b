"""Adapt, library side, by known answers: folds, the promotion rule, the fine-tuning config,
the replay mix read back by the training pipeline, pooled scores, the reference data. The flow
itself runs end to end on a real server in tests/test_deployments.py."""

from __future__ import annotations

import numpy as np
import pytest

from neuroseg import adapt, storage
from neuroseg.images import encode_labels, encode_png


def test_cross_folds_hold_every_image_out_once():
    assert adapt.cross_folds(["a"]) == []
    loo = adapt.cross_folds(["c", "a", "b"])
    assert [f["held_out"] for f in loo] == [["a"], ["b"], ["c"]]
    assert loo[0]["train"] == ["b", "c"]
    ids = [f"i{k}" for k in range(7)]
    folds = adapt.cross_folds(ids)
    assert len(folds) == adapt.LOO_BELOW == 5
    held = sorted(i for f in folds for i in f["held_out"])
    assert held == ids and all(not set(f["held_out"]) & set(f["train"]) for f in folds)
    with pytest.raises(ValueError, match="distinct"):
        adapt.cross_folds(["a", "a"])


def _s(f1: float, n: int = 3) -> dict:
    return {"f1_iou50": f1, "f1_centroid": f1, "n_images": n}


def test_decide_known_answers():
    ok, why = adapt.decide(
        lab_parent=_s(0.5), lab_candidate=_s(0.7), ref_parent=_s(0.9), ref_candidate=_s(0.885)
    )
    assert ok and why.startswith("promoted") and "0.700 (production 0.500)" in why
    ok, why = adapt.decide(
        lab_parent=_s(0.5), lab_candidate=_s(0.7), ref_parent=_s(0.9), ref_candidate=_s(0.87)
    )
    assert not ok and "worse on the reference set 0.870 (production 0.900" in why
    ok, why = adapt.decide(
        lab_parent=_s(0.5), lab_candidate=_s(0.5), ref_parent=_s(0.9), ref_candidate=_s(0.95)
    )
    assert not ok and "not better on the lab's images" in why
    ok, why = adapt.decide(
        lab_parent=_s(0.5),
        lab_candidate=_s(0.55),
        ref_parent=_s(0.9),
        ref_candidate=_s(0.9),
        min_gain=0.1,
    )
    assert not ok
    ok, why = adapt.decide(
        lab_parent=None, lab_candidate=None, ref_parent=_s(0.9), ref_candidate=_s(0.9)
    )
    assert not ok and "at least 2 corrected images" in why
    with pytest.raises(ValueError, match="metric"):
        adapt.decide(
            lab_parent=_s(0.5), lab_candidate=_s(0.7), ref_parent=_s(1), ref_candidate=_s(1),
            metric="iou",
        )  # fmt: skip


def test_fine_tune_config_keeps_the_network_and_validates():
    from neuroseg.registry import shipped_model_uri
    from neuroseg.training import TrainConfig

    parent = storage.read_json(storage.join(shipped_model_uri("nuclei"), "config.json"))
    cfg = adapt.fine_tune_config(parent, epochs=3, steps_per_epoch=20, learning_rate=1e-4)
    tc = TrainConfig.model_validate(cfg)
    assert (tc.model, tc.width, tc.depth, tc.space_to_depth, tc.target) == (
        "unet",
        16,
        3,
        True,
        "three_class",
    )
    assert tc.loss_params == parent["train"]["loss_params"]  # separation weight kept
    (phase,) = tc.phases
    assert (phase.epochs, phase.steps_per_epoch, phase.learning_rate) == (3, 20, 1e-4)
    assert (phase.batch_size, phase.affine, phase.intensity) == (16, True, True)
    assert (
        adapt.fine_tune_config(parent, epochs=1, steps_per_epoch=1, learning_rate=1e-3, crop=64)[
            "crop"
        ]
        == 64
    )
    cand = adapt.candidate_config(parent, cfg)
    assert cand["postprocess"] == parent["postprocess"] and cand["input"] == parent["input"]
    assert "version" not in cand and cand["train"] == cfg
    with pytest.raises(ValueError, match="only models trained by neuroseg"):
        adapt.fine_tune_config({"name": "x"}, epochs=1, steps_per_epoch=1, learning_rate=1e-3)


def test_mix_repeats_corrections_beside_replayed_tiles(tmp_path):
    from neuroseg.benchmarks.pipeline import write_synthetic_prepared
    from neuroseg.pipeline import load_tiles
    from neuroseg.prepare import prepare_image
    from neuroseg.synth import synth_plate

    replay = write_synthetic_prepared(
        str(tmp_path / "replay"), images=6, tiles_per_image=4, tile=64, splits=("train",)
    )
    s = synth_plate(seed=3, height=100, width=120, n_cells=3)
    storage.write_bytes(str(tmp_path / "c.png"), encode_png(s.image))
    storage.write_bytes(str(tmp_path / "c_labels.png"), encode_labels(s.instances)[0])
    corr = str(tmp_path / "corr")
    meta = prepare_image(
        corr,
        "c",
        str(tmp_path / "c.png"),
        None,
        tile=64,
        min_overlap=16,
        labels_uri=str(tmp_path / "c_labels.png"),
    )
    out = str(tmp_path / "mix")
    summary = adapt.build_mix(
        out,
        corrections=[meta],
        corrections_uri=corr,
        replay_uri=replay,
        replay_share=0.5,
        replay_tiles=12,
        seed=1,
    )
    n = len(meta["tiles"])
    assert summary["corrected_tiles"] == n and summary["replayed_tiles"] == 12
    assert summary["repeat"] == round(12 / n)
    tiles = load_tiles(out, split="train")
    assert len(tiles) == n * summary["repeat"] + 12 == summary["tiles"]
    assert (tiles.image_ids == "c").sum() == n * summary["repeat"]
    assert tiles.labels is not None and tiles.labels[tiles.image_ids == "c"].max() >= 1
    assert summary["params"] == storage.read_json(f"{replay}/summary.json")["params"]
    with pytest.raises(ValueError, match="replay_share"):
        adapt.build_mix(
            out, corrections=[meta], corrections_uri=corr, replay_uri=None, replay_share=1
        )


def test_scores_pool_counts_over_images():
    truth = np.zeros((60, 60), np.int32)
    truth[5:15, 5:15] = 1
    truth[30:40, 30:40] = 2
    pred = np.zeros_like(truth)
    pred[5:15, 5:15] = 1  # exact
    pred[31:41, 31:41] = 2  # shifted: IoU 81/119 >= 0.5
    pred[50:55, 50:55] = 3  # false
    a = adapt.score_objects("a", truth, pred)
    assert (a["iou_tp"], a["iou_fp"], a["iou_fn"], a["true"], a["pred"]) == (2, 1, 0, 2, 3)
    b = adapt.score_objects("b", truth, np.zeros_like(truth))
    pooled = adapt.pooled_scores([a, b])
    assert pooled["f1_iou50"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert pooled["count_mae"] == pytest.approx((1 + 2) / 2)
    assert adapt.pooled_scores([]) is None


def test_reference_data_says_what_to_prepare(tmp_path):
    with pytest.raises(ValueError, match="is not prepared under"):
        adapt.reference_data(str(tmp_path), dataset="nuclei")
    with pytest.raises(ValueError, match="give reference_dataset"):
        adapt.reference_data(str(tmp_path), lineage={"dataset": "x"})
    gone = {"dataset": "x", "prepared_uri": "/nowhere/prepared/x/abc"}
    with pytest.raises(ValueError, match="not readable here"):
        adapt.reference_data(str(tmp_path), lineage=gone)


def test_reference_set_leaves_out_corrected_images():
    samples = [
        {"image_id": "a", "sha256": "1"},
        {"image_id": "b", "sha256": "2"},
        {"image_id": "c"},
    ]
    kept = adapt.without_images(samples, [{"image_id": "x", "sha256": "2"}, {"image_id": "y"}])
    assert [s["image_id"] for s in kept] == ["a", "c"]
