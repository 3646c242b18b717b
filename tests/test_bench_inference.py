"""``neuroseg bench inference`` and ``bench orchestration`` at tiny sizes: structure and sanity.

The full-size numbers come from the command line (see the report); here the benches run on
2-3 small synthetic images so that they take seconds, and the checks are the ones that could
fail: every step timed, rows written equal to cells counted, the flow and the library loop
producing the same cell table.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuroseg.benchmarks.inference import (
    FALLBACK_MODEL,
    bench_inference,
    fallback_model,
)

STEPS = {"decode", "normalize", "predict", "label", "measure", "write"}


def test_fallback_model_finds_bright_discs_and_keeps_the_cpu_small_architecture():
    from neuroseg.models import build_model
    from neuroseg.predict import segment

    model = fallback_model(seed=0)
    from neuroseg.training import PRESETS

    small = PRESETS["cpu-small"]
    plain = build_model(small.model, tile=400, width=small.width, depth=small.depth)
    assert [w.shape for w in model.get_weights()] == [w.shape for w in plain.get_weights()]
    rr, cc = np.indices((400, 400))
    image = np.full((400, 400, 3), 12, np.uint8)
    for r, c in ((100, 120), (300, 250)):
        image[(rr - r) ** 2 + (cc - c) ** 2 <= 15**2] = (230, 200, 30)
    prob = model.predict(image[None].astype("f4"), verbose=0)[0, ..., 0]
    labels, n = segment(prob)
    assert n == 2
    assert prob[100, 120] > 0.99 and prob[5, 5] < 0.01
    centres = [np.argwhere(labels == k).mean(axis=0) for k in (1, 2)]
    np.testing.assert_allclose(centres, [(100, 120), (300, 250)], atol=0.5)


def test_bench_inference_small():
    r = bench_inference(images=2, height=256, width=320, step_images=1, repeat=1)
    assert r["model"] == FALLBACK_MODEL or r["model"].startswith("shipped ")
    assert r["image_size"] == [256, 320] and r["tiles_per_image"] == 1
    assert set(r["precisions"]) == {"fp32", "bf16"}
    for res in r["precisions"].values():
        assert set(res["steps"]) == STEPS and all(v > 0 for v in res["steps"].values())
        assert res["sum_of_steps"] == pytest.approx(sum(res["steps"].values()))
        assert 0 < res["end_to_end_seconds"] < 60 and res["load_seconds"] > 0
        assert 0 < res["end_to_end_best_seconds"] <= res["end_to_end_seconds"]
        assert res["images_per_second"] == pytest.approx(1 / res["end_to_end_seconds"])
    plate = r["library_plate"]
    assert r["library_plate_seconds"] == plate["seconds"] > plate["load_seconds"] > 0
    assert plate["images"] == 2 and plate["failed"] == 0
    assert plate["rows"] == plate["cells"]  # every counted cell is a row of the table
    assert {"decode", "predict", "measure", "write"} <= set(plate["steps"])  # predict: + label
    assert r["target"]["end_to_end_fp32_seconds"] == 1.5 and isinstance(r["target"]["met"], bool)
    assert r["images_source"].startswith("synthetic FNC")
    assert r["bf16_speedup"] > 0


def test_bench_inference_of_a_grey_model_on_12_bit_images(tmp_path):
    """A grey percentile model (a real registered 1x1 convolution) is benched on grey 12-bit
    images of its own size, through the same steps."""
    from tests.conftest import register_grey_model

    uri = register_grey_model(str(tmp_path))
    r = bench_inference(
        model=uri, images=2, height=96, width=128, step_images=1, repeat=1, precisions=("fp32",)
    )
    assert r["images_source"] == "synthetic, 12-bit grey" and r["image_size"] == [96, 128]
    assert r["input"]["channels"] == "grey"
    res = r["precisions"]["fp32"]
    assert set(res["steps"]) == STEPS and res["cells_per_image"] > 0
    assert r["library_plate"]["rows"] == r["library_plate"]["cells"] > 0


def test_bench_inference_unknown_model():
    with pytest.raises(ValueError, match="no shipped model"):
        bench_inference(model="nosuchmodel", images=1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"images": 0}, "images"),
        ({"precisions": ("fp16",)}, "precisions"),
        ({"repeat": 0}, "repeat"),
    ],
)
def test_bench_inference_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        bench_inference(**kw)


@pytest.mark.slow
def test_bench_orchestration_small(prefect_api):
    from flows.bench import bench_orchestration

    r = bench_orchestration(images=3, height=256, width=320, seed=2)
    inf = r["inference"]
    variants = ("library", "flow_1_thread", "flow_default", "library_again")
    for name in variants:
        assert inf[name]["images"] == 3 and inf[name]["failed"] == 0
        assert inf[name]["seconds"] > 0 and inf[name]["images_per_second"] > 0
    rows = {inf[name]["rows"] for name in variants}
    assert len(rows) == 1 and rows.pop() == inf["library"]["cells"] > 0 and inf["same_rows"]
    lib = (inf["library"]["seconds"] + inf["library_again"]["seconds"]) / 2
    assert inf["library_seconds"] == pytest.approx(lib)
    assert inf["overhead_ratio"] == pytest.approx(inf["flow_1_thread"]["seconds"] / lib - 1)
    assert inf["overhead_seconds_per_image"] == pytest.approx(inf["overhead_seconds"] / 3)
    small = inf["small_images"]
    assert small["images"] == 3 and len(small["runs"]["flow"]) == len(small["runs"]["library"])
    assert inf["projected_overhead_ratio"] == pytest.approx(small["overhead_seconds"] / lib)
    ip = r["ingest_prepare"]
    assert ip["library"]["ingested"] == ip["flows"]["ingested"] == 3
    assert ip["library"]["tiles"] == ip["flows"]["tiles"] == 3 * 2  # 256x320 in 256-px tiles
    assert ip["ratio"] == pytest.approx(ip["flows"]["seconds"] / ip["library"]["seconds"])
    ex = r["prepare_executors"]
    assert ex["threads"]["seconds"] > 0 and ex["dask"]["seconds"] > 0
    assert r["same_results"]
