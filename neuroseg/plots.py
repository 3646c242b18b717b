"""Report plots as PNG bytes (light; matplotlib is imported inside the functions).

Every function returns the bytes of a PNG image, ready to be written to ``reports/<run>/`` or
embedded in a Prefect artifact. Figures are drawn with matplotlib's object API on an Agg canvas
(:class:`matplotlib.figure.Figure` + ``FigureCanvasAgg``), so no global backend is selected, no
pyplot state is kept and the functions are safe to call from worker threads. The overlay is drawn
with numpy and Pillow only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "DPI",
    "confusion_png",
    "count_scatter_png",
    "history_png",
    "overlay_png",
    "roc_pr_png",
    "size_histogram_png",
]

DPI = 100
"""Resolution of the figures: a ``figsize`` of (w, h) inches gives ``w * DPI x h * DPI`` pixels."""

TRUE_COLOUR = (0, 255, 255)  # cyan
PRED_COLOUR = (255, 0, 255)  # magenta


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _fmt(value) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"


def confusion_png(
    conf, labels: Sequence[str] = ("background", "cell"), *, title: str = "Pixel confusion matrix"
) -> bytes:
    """Confusion matrix: colour = row-normalised rate, text = rate and count.

    Parameters
    ----------
    conf : (k, k) array of counts
        Rows are the true class, columns the predicted class (``[[tn, fp], [fn, tp]]``).
    labels : sequence of k str
        Class names.

    Returns
    -------
    bytes
        A 500x450 PNG.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] != len(labels):
        raise ValueError(
            f"conf must be a square ({len(labels)}, {len(labels)}) array, got {conf.shape}"
        )
    rows = conf.sum(axis=1, keepdims=True)
    rate = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    fig = _figure(5, 4.5)
    ax = fig.add_subplot()
    im = ax.imshow(rate, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    k = len(labels)
    for i in range(k):
        for j in range(k):
            colour = "white" if rate[i, j] > 0.5 else "black"
            ax.text(j, i, f"{rate[i, j]:.3f}\n{int(conf[i, j]):,}", ha="center", va="center",
                    color=colour, fontsize=11)  # fmt: skip
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def roc_pr_png(curves: Mapping) -> bytes:
    """ROC and precision-recall curves side by side.

    Parameters
    ----------
    curves : mapping
        Either one set of curves (keys ``fpr, tpr, recall, precision`` and optionally ``roc_auc``,
        ``average_precision``, as :meth:`neuroseg.metrics.PixelAccumulator.curves` returns), or a
        mapping from a name (e.g. ``"model"``, ``"baseline"``) to such sets.

    Returns
    -------
    bytes
        A 1000x450 PNG.
    """
    sets = {"": curves} if "fpr" in curves else dict(curves)
    if not sets:
        raise ValueError("roc_pr_png needs at least one set of curves")
    for name, c in sets.items():
        missing = [k for k in ("fpr", "tpr", "recall", "precision") if k not in c]
        if missing:
            raise ValueError(f"curves {name!r}: missing {', '.join(missing)}")
    fig = _figure(10, 4.5)
    roc, pr = fig.subplots(1, 2)
    for name, c in sets.items():
        prefix = f"{name} " if name else ""
        roc.plot(c["fpr"], c["tpr"], label=f"{prefix}AUC = {_fmt(c.get('roc_auc'))}")
        pr.step(c["recall"], c["precision"], where="post",
                label=f"{prefix}AP = {_fmt(c.get('average_precision'))}")  # fmt: skip
    roc.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    roc.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
            ylabel="true positive rate", title="ROC (pixels, from probabilities)")  # fmt: skip
    pr.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
           title="Precision-recall (pixels)")  # fmt: skip
    roc.legend(loc="lower right")
    pr.legend(loc="lower left")
    fig.tight_layout()
    return _png(fig)


def history_png(history: Mapping[str, Sequence[float]], *, phase_ends: Sequence[int] = ()) -> bytes:
    """Training curves: one panel per metric, with its ``val_`` twin in the same panel.

    Parameters
    ----------
    history : mapping of str to sequence of float
        Keras ``History.history``-like: ``{"loss": [...], "val_loss": [...], "acc": [...]}``.
    phase_ends : sequence of int
        Epoch counts after which a training phase ended (drawn as dotted vertical lines).

    Returns
    -------
    bytes
        A PNG 4.5 inches wide per panel and 4 high.
    """
    names = [k for k in history if not k.startswith("val_")]
    names += [k[4:] for k in history if k.startswith("val_") and k[4:] not in history]
    if not names:
        raise ValueError("history is empty: expected e.g. {'loss': [...], 'val_loss': [...]}")
    fig = _figure(4.5 * len(names), 4)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names, strict=True):
        for key, style in ((name, "-"), (f"val_{name}", "--")):
            if key in history and len(history[key]):
                values = np.asarray(history[key], dtype=float)
                ax.plot(np.arange(1, values.size + 1), values, style, marker=".", label=key)
        for end in phase_ends:
            ax.axvline(end + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="epoch", title=name)
        # A fixed corner: loc="best" searches the drawn data, takes seconds on long
        # histories and warns when it does (a timing-dependent warning, an error in CI).
        ax.legend(loc="upper right")
    fig.tight_layout()
    return _png(fig)


def size_histogram_png(areas, *, true_areas=None, bins: int = 30) -> bytes:
    """Histogram of cell areas (pixels), predicted and optionally true, on shared bins.

    Returns
    -------
    bytes
        A 600x400 PNG.
    """
    areas = np.asarray(areas, dtype=float).ravel()
    true = None if true_areas is None else np.asarray(true_areas, dtype=float).ravel()
    both = areas if true is None else np.concatenate([areas, true])
    edges = np.histogram_bin_edges(both, bins=bins) if both.size else np.linspace(0, 1, bins + 1)
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    ax.hist(areas, bins=edges, alpha=0.6, color="#c0399f", label=f"predicted (n = {areas.size})")
    if true is not None:
        ax.hist(true, bins=edges, alpha=0.6, color="#1f9fb4", label=f"true (n = {true.size})")
    ax.set(xlabel="area (pixels)", ylabel="cells", title="Cell size distribution")
    ax.legend(loc="upper right")  # not "best": see history_png
    fig.tight_layout()
    return _png(fig)


def count_scatter_png(true_counts, pred_counts) -> bytes:
    """Predicted against true cell count per image, with the identity line.

    Returns
    -------
    bytes
        A 450x450 PNG.
    """
    t = np.asarray(true_counts, dtype=float).ravel()
    p = np.asarray(pred_counts, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"got {t.size} true counts but {p.size} predicted counts")
    top = max(float(np.max(t, initial=0)), float(np.max(p, initial=0)), 1.0) * 1.05
    mae = float(np.abs(p - t).mean()) if t.size else float("nan")
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot()
    ax.plot([0, top], [0, top], "k--", linewidth=0.8)
    ax.scatter(t, p, s=18, color="#c0399f")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="true count", ylabel="predicted count",
           title=f"Cells per image (MAE = {_fmt(mae)})")  # fmt: skip
    fig.tight_layout()
    return _png(fig)


def _outline(labels: np.ndarray) -> np.ndarray:
    """Inner boundary pixels of a label image (4-neighbour with a different label)."""
    lab = np.pad(labels, 1, mode="edge")
    centre = lab[1:-1, 1:-1]
    edge = (
        (lab[:-2, 1:-1] != centre)
        | (lab[2:, 1:-1] != centre)
        | (lab[1:-1, :-2] != centre)
        | (lab[1:-1, 2:] != centre)
    )
    return edge & (centre > 0)


def _resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0], labels.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1], labels.shape[1] - 1)
    return labels[rows.astype(np.intp)][:, cols.astype(np.intp)]


def overlay_png(image, true_labels, pred_labels, *, max_side: int = 1024) -> bytes:
    """The image with outlines of the true cells (cyan) and of the predicted cells (magenta).

    Parameters
    ----------
    image : (H, W, 3) uint8 array
    true_labels : (H, W) int array or None
        Ground-truth labels (or a boolean mask), or None to draw predictions only.
    pred_labels : (H, W) int array
        Predicted labels (or a boolean mask).
    max_side : int
        The picture is downscaled so that its longer side is at most this (labels by nearest
        neighbour, so outlines stay crisp).

    Returns
    -------
    bytes
        A PNG of ``round(H * s) x round(W * s)`` pixels, ``s = min(1, max_side / max(H, W))``.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape} {image.dtype}")
    shape = image.shape[:2]
    layers = [(true_labels, TRUE_COLOUR), (pred_labels, PRED_COLOUR)]
    for lab, _ in layers:
        if lab is not None and np.shape(lab) != shape:
            raise ValueError(f"labels shape {np.shape(lab)} differs from image shape {shape}")
    if int(max_side) < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side!r}")
    scale = min(1.0, int(max_side) / max(shape))
    out_shape = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    pic = Image.fromarray(image)
    if out_shape != shape:
        pic = pic.resize((out_shape[1], out_shape[0]), Image.Resampling.BILINEAR)
    canvas = np.array(pic)
    for lab, colour in layers:
        if lab is None:
            continue
        lab = np.asarray(lab)
        lab = lab.astype(np.int32) if lab.dtype == bool else lab
        if out_shape != shape:
            lab = _resize_labels(lab, out_shape)
        canvas[_outline(lab)] = colour
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()
