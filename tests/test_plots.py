"""Report plots decode as real PNG images of the documented sizes."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from neuroseg import plots
from neuroseg.metrics import PixelAccumulator


def decode(data: bytes) -> Image.Image:
    assert isinstance(data, bytes) and data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_confusion_png():
    img = decode(plots.confusion_png([[9000, 120], [30, 850]]))
    assert img.size == (500, 450)
    # an empty row (no true cells) must not fail
    decode(plots.confusion_png([[100, 0], [0, 0]]))
    with pytest.raises(ValueError, match="square"):
        plots.confusion_png([[1, 2, 3]])


def test_roc_pr_png_from_accumulated_curves():
    rng = np.random.default_rng(0)
    y = rng.random((100, 100)) < 0.2
    p = np.clip(y * 0.4 + rng.random(y.shape) * 0.6, 0, 1).astype(np.float32)
    curves = PixelAccumulator().update(y, p).curves()
    img = decode(plots.roc_pr_png(curves))
    assert img.size == (1000, 450)
    baseline = PixelAccumulator().update(y, rng.random(y.shape).astype(np.float32)).curves()
    decode(plots.roc_pr_png({"model": curves, "baseline": baseline}))
    with pytest.raises(ValueError, match="missing"):
        plots.roc_pr_png({"model": {"fpr": [0, 1]}})


def test_roc_pr_png_single_class_nan_scores():
    curves = PixelAccumulator().update(np.zeros((5, 5), bool), np.zeros((5, 5), np.float32))
    decode(plots.roc_pr_png(curves.curves()))


def test_history_png():
    history = {"loss": [0.9, 0.5, 0.4], "val_loss": [1.0, 0.7, 0.6], "acc": [0.5, 0.7, 0.8]}
    img = decode(plots.history_png(history, phase_ends=[1]))
    assert img.size == (900, 400)
    with pytest.raises(ValueError, match="empty"):
        plots.history_png({})


def test_size_histogram_and_count_scatter():
    img = decode(plots.size_histogram_png([100, 200, 250, 900], true_areas=[120, 210, 800]))
    assert img.size == (600, 400)
    decode(plots.size_histogram_png([]))
    img = decode(plots.count_scatter_png([3, 10, 7], [4, 8, 7]))
    assert img.size == (450, 450)


def test_overlay_png_colours_and_downscaling():
    image = np.full((120, 160, 3), 40, np.uint8)
    true = np.zeros((120, 160), np.int32)
    pred = np.zeros_like(true)
    true[20:60, 20:60] = 1
    pred[70:110, 100:150] = 3
    img = np.asarray(decode(plots.overlay_png(image, true, pred)))
    assert img.shape == (120, 160, 3)
    assert tuple(img[20, 30]) == plots.TRUE_COLOUR  # top edge of the true square
    assert tuple(img[40, 40]) == (40, 40, 40)  # inside: untouched
    assert tuple(img[109, 120]) == plots.PRED_COLOUR  # bottom edge of the prediction
    # downscaled so that the long side is max_side
    big = np.zeros((1200, 1600, 3), np.uint8)
    lab = np.zeros((1200, 1600), np.int32)
    lab[100:400, 100:400] = 1
    img = decode(plots.overlay_png(big, None, lab, max_side=800))
    assert img.size == (800, 600)
    assert (np.asarray(img) == plots.PRED_COLOUR).all(axis=2).sum() > 500
    with pytest.raises(ValueError, match="shape"):
        plots.overlay_png(image, true[:10], pred)


def test_nightly_overlay_draws_unbroken_outlines_at_display_scale():
    """The nightly report's overlay (inference.overlay_png): a 12-bit grey plate subsampled to
    800 px, with the cell outlines drawn at that scale, one pixel wide and unbroken."""
    from neuroseg.inference import overlay_png

    image = np.full((1200, 1600), 300, np.uint16)
    image[200:600, 300:900] = 3000
    labels = np.zeros((1200, 1600), np.int32)
    labels[200:600, 300:900] = 1
    img = np.asarray(decode(overlay_png(image, labels)))
    assert img.shape == (600, 800, 3)
    cyan = (img == (0, 255, 255)).all(axis=2)
    assert cyan[100, 150:450].all() and cyan[299, 150:450].all()  # top and bottom edges
    assert cyan[100:300, 150].all() and cyan[100:300, 449].all()  # left and right edges
    assert cyan.sum() == 2 * 300 + 2 * 198  # the ring, nothing else
    assert (img[200, 300] == img[200, 300, 0]).all() and img[200, 300, 0] > img[50, 50, 0]
    with pytest.raises(ValueError, match="labels shape"):
        overlay_png(image, labels[:10])


def test_import_does_not_load_matplotlib():
    code = "import sys, neuroseg.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_plot_searches_for_the_best_legend_place(monkeypatch):
    """loc="best" scans the drawn data and warns when that takes over a second: on a
    busy CI host the warning failed a flow (warnings are errors in the suite), so every
    legend sits in a fixed corner."""
    import matplotlib.legend

    def refuse(*args, **kwargs):
        raise AssertionError('a legend was placed with loc="best"')

    monkeypatch.setattr(matplotlib.legend.Legend, "_find_best_position", refuse)
    rng = np.random.default_rng(1)
    decode(plots.history_png({"loss": [0.9, 0.5], "val_loss": [1.0, 0.7]}, phase_ends=[0]))
    decode(
        plots.size_histogram_png(rng.gamma(4, 200, 50_000), true_areas=rng.gamma(4, 210, 40_000))
    )
    y = rng.random((64, 64)) < 0.2
    curves = PixelAccumulator().update(y, rng.random(y.shape).astype(np.float32)).curves()
    decode(plots.roc_pr_png(curves))
    decode(plots.count_scatter_png([3, 10, 7], [4, 8, 7]))
