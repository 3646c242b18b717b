"""Synthetic FNC-like fluorescence plates with exact ground truth (light: no TensorFlow).

The generator mimics the Fluorescent Neuronal Cells (FNC) "yellow" images that the seed notebook
trains on: a dark brownish background with noise, uneven illumination and faint neurites; yellow
cells of realistic sizes and shapes (irregular, sometimes tear-drop ellipses with soft edges,
granular texture and an occasional darker nucleus); and distractors that are *not* cells (small
bright debris, dim out-of-focus blobs, rarely a bright autofluorescent tissue edge).

Colours come from one camera model: every pixel has a scalar emission ``E`` and a channel is
``255 * tanh(E * k_c)`` with per-image channel weights ``k = (1, 0.55..0.85, ~0.05)``, so dim cells
look dark yellow-brown like the seed's ``(101, 61, 6)`` and bright ones saturate towards its
``(247, 237, 15)``, while the background keeps its own brownish weights.

Ground truth: a cell is a compact bright soma inside a dimmer soft-edged body; the mask is where
the cell's smooth displayed intensity (before texture and noise) exceeds ``MASK_FRACTION`` of its
displayed peak, which is where the cell is visibly brighter than its surroundings and, like the
real FNC annotations, includes the dim body around the bright core. ``instances`` keeps one id
per cell, so touching cells stay distinct there but merge in ``mask``, as the real semantic
masks do.

Everything is drawn from ``np.random.default_rng(seed)``, so a seed always gives the same plate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit

__all__ = [
    "STAINS",
    "SynthImage",
    "compare_with_real",
    "comparison_table",
    "grey12_png",
    "image_id",
    "plate_id",
    "synth_plate",
    "write_dataset",
    "write_uploads",
]

#: Mask threshold: a pixel belongs to a cell where the cell's profile is above this fraction of
#: its peak.
MASK_FRACTION = 0.12
#: The seed notebook's two cell colours: emission weights follow the dark one's channel ratios.
DARK_YELLOW = (101, 61, 6)
BRIGHT_YELLOW = (247, 237, 15)
#: The seed notebook's background fill colours (a range; real FNC backgrounds are darker).
BACKGROUND_1 = (20, 8, 0)
BACKGROUND_2 = (49, 25, 1)

#: Stain styles of :func:`synth_plate`: the FNC yellow and red collections.
STAINS = ("yellow", "red")

_MIN_SIDE = 16
_MAX_PIXELS = 100_000_000  # as neuroseg.images.MAX_PIXELS, so that the files decode


class SynthImage(NamedTuple):
    """One synthetic plate image with its ground truth.

    Attributes
    ----------
    image : ndarray, shape (H, W, 3), uint8
        RGB image.
    mask : ndarray, shape (H, W), uint8
        Semantic mask, 255 on cell pixels and 0 elsewhere (touching cells merge).
    instances : ndarray, shape (H, W), int32
        0 for background, ``1..n`` for the cells in raster order of their first pixel.
    """

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray


# --------------------------------------------------------------------------------------------
# validation and small helpers
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")
    return value


def _check_size(height: Any, width: Any) -> tuple[int, int]:
    h = _check_int("height", height, minimum=_MIN_SIDE)
    w = _check_int("width", width, minimum=_MIN_SIDE)
    if h * w > _MAX_PIXELS:
        raise ValueError(f"image of {h}x{w} pixels is larger than {_MAX_PIXELS:,} pixels")
    return h, w


def _derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for item ``keys`` of a run seeded with ``seed`` (stable across versions)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Zero-mean, unit-variance random field that varies over about ``cell`` pixels.

    Built as ``A @ G @ B.T`` from a coarse Gaussian grid ``G`` and Gaussian interpolation
    matrices, so its cost is a small matrix product instead of a full-image filter.
    """
    h, w = shape
    nr = max(2, math.ceil(h / cell) + 2)
    nc = max(2, math.ceil(w / cell) + 2)
    grid = rng.standard_normal((nr, nc)).astype(np.float32)

    def interp(n: int, k: int) -> np.ndarray:
        pos = (np.arange(n, dtype=np.float32) + 0.5) / n * (k - 2) + 0.5
        d = pos[:, None] - np.arange(k, dtype=np.float32)[None, :]
        wts = np.exp(-0.5 * (d / 0.6) ** 2)
        return wts / np.sqrt((wts**2).sum(axis=1, keepdims=True))

    field = interp(h, nr) @ grid @ interp(w, nc).T
    return field.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# cells
# --------------------------------------------------------------------------------------------


class _Cell(NamedTuple):
    row: float
    col: float
    radius: float  # equivalent radius (px) of the nominal shape
    aspect: float  # major / minor semi-axis
    angle: float  # orientation of the major axis (radians, from the column axis)
    peak: float  # emission at the brightest point


def _sample_radius(rng: np.random.Generator) -> float:
    # Log-normal equivalent radius, calibrated so that the mask's bounding-box and area
    # percentiles land near the FNC yellow set's (p95: width 103, height 83, area 3,900 px).
    return float(np.clip(rng.lognormal(math.log(16.5), 0.35), 6.0, 45.0))


def _sample_cell(
    rng: np.random.Generator, row: float, col: float, bg: float, *, size: float = 1.0
) -> _Cell:
    radius = _sample_radius(rng) * size
    aspect = float(np.clip(rng.lognormal(math.log(1.7), 0.28), 1.0, 3.5))
    # Orientation with a mild preference for the horizontal, as in the FNC set where the
    # bounding boxes are wider than tall (p95 width 103 vs height 83).
    angle = float(rng.vonmises(0.0, 1.3) / 2.0) if rng.random() < 0.75 else rng.uniform(0, np.pi)
    # Peak emission: log-uniform from dark yellow (~0.4) to saturated bright yellow (~2.6),
    # always clearly above the local background.
    peak = float(np.exp(rng.uniform(math.log(0.45), math.log(4.0))))
    peak = max(peak, 5.0 * bg)
    return _Cell(row, col, radius, aspect, angle, peak)


def _render_cell(
    rng: np.random.Generator, cell: _Cell
) -> tuple[int, int, np.ndarray, np.ndarray, list[tuple[float, float, float]]]:
    """Profile (0..1, smooth, blurred) and textured emission of one cell in a local patch.

    Returns ``(r0, c0, profile, emission, stubs)``; the patch's top-left corner is ``(r0, c0)``
    in image coordinates (may be negative); ``stubs`` are (angle, length, width) of processes.
    """
    a = cell.radius * math.sqrt(cell.aspect)  # semi-major
    b = cell.radius / math.sqrt(cell.aspect)  # semi-minor
    # Processes (neurite stubs) stick out of the soma: up to ~0.6 of the semi-major axis.
    n_stubs = int(rng.choice([0, 1, 1, 2, 2, 3]))
    stubs = [
        (
            float(cell.angle + rng.choice([0.0, np.pi]) + rng.normal(0, 0.5)),
            float(rng.uniform(0.3, 0.9)),
            float(rng.uniform(0.1, 0.22)),
        )
        for _ in range(n_stubs)
    ]
    half = math.ceil(a * 2.6) + 6
    r0 = round(cell.row) - half
    c0 = round(cell.col) - half
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    yy -= cell.row - round(cell.row)
    xx -= cell.col - round(cell.col)
    ca, sa = math.cos(cell.angle), math.sin(cell.angle)
    u = xx * ca + yy * sa  # along the major axis
    v = -xx * sa + yy * ca
    theta = np.arctan2(v / b, u / a)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)

    # Irregular outline: low harmonics, an egg / tear-drop term and pointed processes.
    boundary = np.ones_like(theta)
    for k, sd in ((2, 0.06), (3, 0.05), (4, 0.025), (5, 0.015)):
        boundary += rng.normal(0, sd) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    boundary += rng.uniform(0, 0.2) * np.cos(theta - rng.uniform(0, 2 * np.pi))
    for st_angle, st_len, st_width in stubs:
        rel = st_angle - cell.angle
        d = np.angle(np.exp(1j * (theta - math.atan2(math.sin(rel) * a / b, math.cos(rel)))))
        boundary += st_len * np.exp(-0.5 * (d / st_width) ** 2)
    boundary = np.maximum(boundary, 0.45)

    # A bright soma (the inner part of the outline) in a dimmer, soft-edged body: in the real
    # images most of an annotated cell is the dim body around a compact bright core.
    d = rho / boundary  # 1 on the outline
    core_r = rng.uniform(0.35, 0.65)
    core = expit((core_r - d) / rng.uniform(0.06, 0.14))
    core *= 1.0 - rng.uniform(0.1, 0.35) * np.minimum(d / core_r, 1.0) ** 2  # brighter centre
    body = expit((1.0 - d) / rng.uniform(0.05, 0.1))
    body_w = rng.uniform(0.1, 0.3)
    profile = (1.0 - body_w) * core + body_w * body
    profile = ndi.gaussian_filter(profile, sigma=rng.uniform(0.8, 1.8), truncate=3.0)
    profile /= profile.max()

    # Granular texture and an occasional darker nucleus, on the emission only.
    grain = ndi.gaussian_filter(
        rng.standard_normal(profile.shape).astype(np.float32), sigma=rng.uniform(0.7, 1.6)
    )
    grain /= grain.std() + 1e-6
    texture = 1.0 + rng.uniform(0.05, 0.18) * grain
    if rng.random() < 0.35:
        nr = rng.uniform(0.25, 0.45)
        off_u, off_v = rng.normal(0, 0.15, size=2)
        dn = np.sqrt(((u / a) - off_u) ** 2 + ((v / b) - off_v) ** 2) / nr
        texture *= 1.0 - rng.uniform(0.2, 0.5) * expit((1.0 - dn) / 0.15)
    emission = (cell.peak * profile * np.clip(texture, 0.2, None)).astype(np.float32)
    return r0, c0, profile.astype(np.float32), emission, stubs


def _paste(
    dst: np.ndarray, patch: np.ndarray, r0: int, c0: int, op: str = "max"
) -> tuple[slice, slice, np.ndarray] | None:
    """Combine ``patch`` into ``dst`` at ``(r0, c0)``, clipped to ``dst``; return the views."""
    h, w = dst.shape[:2]
    ph, pw = patch.shape[:2]
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + ph, h), min(c0 + pw, w)
    if rs >= re or cs >= ce:
        return None
    sub = patch[rs - r0 : re - r0, cs - c0 : ce - c0]
    view = dst[rs:re, cs:ce]
    if op == "max":
        np.maximum(view, sub, out=view)
    elif op == "add":
        view += sub
    return slice(rs, re), slice(cs, ce), sub


def _draw_curve(
    rng: np.random.Generator,
    emission: np.ndarray,
    start: tuple[float, float],
    angle: float,
    length: float,
    strength: float,
) -> None:
    """A faint, wandering neurite (anti-aliased, tapering), added to ``emission``."""
    n = max(int(length / 2.0), 2)
    turn = np.cumsum(rng.normal(0, 0.08, size=n))
    ang = angle + turn
    steps = 2.0 * np.stack([np.sin(ang), np.cos(ang)], axis=1)
    pts = np.asarray(start, dtype=np.float64) + np.cumsum(steps, axis=0)
    fade = np.linspace(1.0, 0.2, n) * strength
    h, w = emission.shape
    # Sample each 2 px segment at 4 points, splat bilinearly: cheap anti-aliasing.
    t = np.linspace(0, 1, 4, endpoint=False)
    prev = np.vstack([np.asarray(start, dtype=np.float64)[None], pts[:-1]])
    seg = prev[:, None, :] + (pts - prev)[:, None, :] * t[None, :, None]
    val = np.repeat(fade, 4) / 2.0
    r, c = seg[..., 0].ravel(), seg[..., 1].ravel()
    r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    fr, fc = r - r0, c - c0
    for dr, dc, wt in (
        (0, 0, (1 - fr) * (1 - fc)),
        (1, 0, fr * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 1, fr * fc),
    ):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        np.add.at(emission, (rr[ok], cc[ok]), (val * wt)[ok].astype(np.float32))


def _blob(
    emission: np.ndarray, row: float, col: float, sigma_r: float, sigma_c: float, amp: float
) -> None:
    """Add an axis-aligned Gaussian blob (debris or out-of-focus haze) to ``emission``."""
    hr, hc = int(3 * sigma_r) + 1, int(3 * sigma_c) + 1
    r0, c0 = int(row) - hr, int(col) - hc
    yy = np.arange(-hr, hr + 1, dtype=np.float32) + (int(row) - row)
    xx = np.arange(-hc, hc + 1, dtype=np.float32) + (int(col) - col)
    patch = (
        amp
        * np.exp(-0.5 * (yy[:, None] / sigma_r) ** 2)
        * np.exp(-0.5 * (xx[None, :] / sigma_c) ** 2)
    )
    _paste(emission, patch.astype(np.float32), r0, c0, op="add")


def _place_cells(
    rng: np.random.Generator, n: int, h: int, w: int, bg: float, *, size: float = 1.0
) -> list[_Cell]:
    """Cell centres: partly clustered, mostly non-overlapping, with some touching pairs
    (``size`` scales every cell's radius: one magnification per image)."""
    n_clusters = int(rng.integers(1, 4))
    centres = np.column_stack([rng.uniform(0, h, n_clusters), rng.uniform(0, w, n_clusters)])
    spread = rng.uniform(120, 350, n_clusters)
    clustered = rng.uniform(0.2, 0.8)
    touch_p = rng.uniform(0.05, 0.2)
    cells: list[_Cell] = []
    tries = 0
    while len(cells) < n and tries < 40 * n + 40:
        tries += 1
        if cells and rng.random() < touch_p:
            # A partner touching an existing cell.
            other = cells[int(rng.integers(len(cells)))]
            cell = _sample_cell(rng, 0.0, 0.0, bg, size=size)
            phi = rng.uniform(0, 2 * np.pi)
            dist = (other.radius + cell.radius) * rng.uniform(0.85, 1.05)
            row, col = other.row + dist * math.sin(phi), other.col + dist * math.cos(phi)
            if not (0 <= row < h and 0 <= col < w):
                continue
            cells.append(cell._replace(row=row, col=col))
            continue
        if rng.random() < clustered:
            k = int(rng.integers(n_clusters))
            row, col = rng.normal(centres[k], spread[k])
        else:
            row, col = rng.uniform(0, h), rng.uniform(0, w)
        if not (0 <= row < h and 0 <= col < w):
            continue
        cell = _sample_cell(rng, float(row), float(col), bg, size=size)
        if any(
            math.hypot(c.row - row, c.col - col) < 1.7 * (c.radius + cell.radius) + 4 for c in cells
        ):
            continue
        cells.append(cell)
    return cells


# --------------------------------------------------------------------------------------------
# the plate
# --------------------------------------------------------------------------------------------


def _dendrites(rng: np.random.Generator, emission: np.ndarray, cell: _Cell) -> None:
    """Thick primary dendrites of a red-stained neuron: 1-4 bright, tapering processes that
    leave the soma's outline (added to ``emission``; not part of the mask)."""
    a = cell.radius * math.sqrt(cell.aspect)
    for _ in range(int(rng.integers(1, 5))):
        ang = cell.angle + rng.choice([0.0, np.pi]) + rng.normal(0, 0.9)
        start = (cell.row + 0.7 * a * math.sin(ang), cell.col + 0.7 * a * math.cos(ang))
        strength = cell.peak * rng.uniform(0.25, 0.8)
        # a few parallel strokes make a process 2-5 px wide near the soma
        for off in rng.uniform(-1.5, 1.5, size=int(rng.integers(2, 5))):
            s0 = (start[0] + off * math.cos(ang), start[1] - off * math.sin(ang))
            _draw_curve(rng, emission, s0, ang, rng.uniform(40, 300), strength / 1.5)


def _neurite_web(rng: np.random.Generator, h: int, w: int, cells: list[_Cell]) -> np.ndarray:
    """The red stain's web of neurites: many wandering, crossing fibres of varied width and
    brightness, denser in a band of tissue around the cells (where the real images' neurites
    cross, a bright knot looks like a small soma: the false positives to learn away)."""
    thin = np.zeros((h, w), np.float32)
    thick = np.zeros((h, w), np.float32)
    scale = (h * w) / (1200 * 1600)
    peak = float(np.median([c.peak for c in cells])) if cells else 1.5
    density = rng.uniform(40, 260) * scale
    for _ in range(int(rng.poisson(density))):
        if cells and rng.random() < 0.6:  # near a cell: the tissue band
            c = cells[int(rng.integers(len(cells)))]
            start = (c.row + rng.normal(0, 120), c.col + rng.normal(0, 120))
        else:
            start = (rng.uniform(0, h), rng.uniform(0, w))
        layer = thick if rng.random() < 0.4 else thin
        _draw_curve(rng, layer, start, rng.uniform(0, 2 * np.pi), rng.uniform(80, 600),
                    peak * rng.uniform(0.15, 0.9))  # fmt: skip
    # thick fibres: blurred wider, brightness kept
    web = thin + 2.5 * ndi.gaussian_filter(thick, sigma=1.6, truncate=2.5)
    # varicosities: small bright beads along the fibres
    for _ in range(int(rng.poisson(rng.uniform(20, 120) * scale))):
        s = rng.uniform(1.0, 3.0)
        if cells:
            c = cells[int(rng.integers(len(cells)))]
            row, col = c.row + rng.normal(0, 150), c.col + rng.normal(0, 150)
        else:
            row, col = rng.uniform(0, h), rng.uniform(0, w)
        _blob(web, row, col, s, s * rng.uniform(0.6, 1.6), peak * rng.uniform(0.3, 1.0))
    return web


def synth_plate(
    *,
    seed: int,
    height: int = 1200,
    width: int = 1600,
    n_cells: int | None = None,
    stain: str = "yellow",
) -> SynthImage:
    """Generate one synthetic FNC-like image with its mask and instance labels.

    Parameters
    ----------
    seed : int
        Seed of ``np.random.default_rng``; the same seed always gives the same arrays.
    height, width : int
        Image size in pixels (at least 16 each, at most 100 M pixels).
    n_cells : int or None
        Number of true cells to place. ``None`` draws it from a gamma-Poisson mixture scaled to
        the image area (mean about 8 per 1600x1200 image, as in the FNC yellow set, with some
        images holding very few cells). Dense requests may place fewer cells when the image runs
        out of room.
    stain : {"yellow", "red"}
        ``"yellow"``: the FNC yellow collection (above). ``"red"``: the red collection, whose
        stain fills the whole neuron: red somata (more of them, a per-image cell size, often
        packed in a band of tissue) with thick dendrites leaving them, inside a dense web of
        bright, crossing neurites that is *not* part of the mask (:func:`_neurite_web`); the
        cells to count are the somata.

    Returns
    -------
    SynthImage
        ``image (H, W, 3) uint8``, ``mask (H, W) uint8`` in ``{0, 255}``, and
        ``instances (H, W) int32`` with ids ``1..n`` in raster order of each cell's first pixel.
        ``mask == 255`` exactly where ``instances > 0``.

    Raises
    ------
    ValueError
        If an argument is not an integer in its range.
    """
    seed = _check_int("seed", seed, minimum=0)
    h, w = _check_size(height, width)
    if stain not in STAINS:
        raise ValueError(f"stain must be one of {', '.join(STAINS)}, got {stain!r}")
    red = stain == "red"
    scale = (h * w) / (1200 * 1600)
    if n_cells is not None:
        n_cells = _check_int("n_cells", n_cells, minimum=0, maximum=max(10, int(400 * scale)))
    rng = np.random.default_rng(seed)

    # Background level, brownish hue, uneven illumination and tissue mottling.
    bg = float(np.exp(rng.uniform(math.log(0.01), math.log(0.16))))
    bg_weights = np.array([1.0, rng.uniform(0.3, 0.52), rng.uniform(0.0, 0.03)], dtype=np.float32)
    # Cell hue: green/red from the seed's dark yellow (0.6) to the greener real images (0.85).
    cell_weights = np.array(
        [1.0, rng.uniform(0.55, 0.85), rng.uniform(0.04, 0.07)], dtype=np.float32
    )
    illum = 1.0 + rng.uniform(0.08, 0.25) * _smooth_field(rng, (h, w), rng.uniform(350, 700))
    illum -= rng.uniform(0.0, 0.25) * _vignette(h, w)
    np.clip(illum, 0.4, None, out=illum)
    mottle = 1.0 + rng.uniform(0.05, 0.18) * _smooth_field(rng, (h, w), rng.uniform(25, 60))
    background = bg * np.clip(mottle, 0.2, None)

    if red:
        # the red collection: a dark, neutral background and a red stain (grey input sees
        # the maximum over channels, so the hue matters less than the structure)
        bg = float(np.exp(rng.uniform(math.log(0.01), math.log(0.08))))
        bg_weights = np.array([1.0, rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)], np.float32)
        cell_weights = np.array(
            [1.0, rng.uniform(0.02, 0.12), rng.uniform(0.02, 0.12)], dtype=np.float32
        )
        background = bg * np.clip(mottle, 0.2, None)

    # Cells.
    if n_cells is None:
        mean = 35.0 if red else 8.0
        lam = rng.gamma(1.3, mean / 1.3) * scale
        n_cells = int(min(rng.poisson(lam), max(10, int(400 * scale))))
    size = float(np.exp(rng.uniform(math.log(0.7), math.log(1.4)))) if red else 1.0
    cells = _place_cells(rng, n_cells, h, w, bg, size=size)
    emission = np.zeros((h, w), dtype=np.float32)
    best = np.zeros((h, w), dtype=np.float32)  # owner's profile, to split touching cells
    owner = np.zeros((h, w), dtype=np.int32)
    for idx, cell in enumerate(cells, start=1):
        r0, c0, profile, cell_emission, stubs = _render_cell(rng, cell)
        _paste(emission, cell_emission, r0, c0, op="max")
        ph, pw = profile.shape
        rs, cs = max(r0, 0), max(c0, 0)
        re, ce = min(r0 + ph, h), min(c0 + pw, w)
        if rs >= re or cs >= ce:
            continue
        prof = profile[rs - r0 : re - r0, cs - c0 : ce - c0]
        # Visible cell: displayed intensity above a fraction of the cell's displayed peak.
        inside = np.tanh(cell.peak * prof) > MASK_FRACTION * math.tanh(cell.peak)
        take = inside & (prof > best[rs:re, cs:ce])
        best[rs:re, cs:ce][take] = prof[take]
        owner[rs:re, cs:ce][take] = idx
        if red:
            _dendrites(rng, emission, cell)
        # Long faint neurites leave the soma along its processes (not part of the mask).
        for st_angle, st_len, _ in stubs:
            if rng.random() < 0.7:
                reach = cell.radius * math.sqrt(cell.aspect) * (1.0 + st_len)
                start = (
                    cell.row + reach * math.sin(st_angle),
                    cell.col + reach * math.cos(st_angle),
                )
                _draw_curve(
                    rng,
                    emission,
                    start,
                    st_angle,
                    rng.uniform(40, 250),
                    cell.peak * rng.uniform(0.08, 0.25),
                )

    # Distractors that are not cells: background fibres, bright debris, out-of-focus blobs,
    # and now and then a bright autofluorescent tissue edge.
    for _ in range(int(rng.poisson(6 * scale))):
        _draw_curve(
            rng,
            emission,
            (rng.uniform(0, h), rng.uniform(0, w)),
            rng.uniform(0, 2 * np.pi),
            rng.uniform(60, 400),
            rng.uniform(0.05, 0.25),
        )
    for _ in range(int(rng.poisson(rng.uniform(3, 25) * scale))):
        s = rng.uniform(0.7, 2.5)
        _blob(
            emission,
            rng.uniform(0, h),
            rng.uniform(0, w),
            s,
            s * rng.uniform(0.7, 1.4),
            rng.uniform(0.5, 3.0),
        )
    for _ in range(int(rng.poisson(rng.uniform(1, 6) * scale))):
        s = rng.uniform(25, 70)
        _blob(
            emission,
            rng.uniform(0, h),
            rng.uniform(0, w),
            s,
            s * rng.uniform(0.6, 1.6),
            rng.uniform(0.04, 0.2),
        )
    if rng.random() < 0.1:
        emission += _tissue_edge(rng, h, w)
    if red:
        emission += _neurite_web(rng, h, w, cells)

    # Camera: slight defocus of all structure, illumination, saturating response, noise.
    image = _camera(rng, emission, background, illum, bg_weights, cell_weights)
    instances = _raster_order(owner)
    mask = np.where(instances > 0, np.uint8(255), np.uint8(0))
    return SynthImage(image, mask, instances)


def _vignette(h: int, w: int) -> np.ndarray:
    r = (np.arange(h, dtype=np.float32) - (h - 1) / 2) / (h / 2)
    c = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / (w / 2)
    return 0.5 * (r[:, None] ** 2 + c[None, :] ** 2)


def _tissue_edge(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A bright, textured region beyond a wavy line near a corner (autofluorescent tissue)."""
    corner_r = rng.choice([0.0, float(h)])
    corner_c = rng.choice([0.0, float(w)])
    radius = rng.uniform(0.12, 0.3) * math.hypot(h, w)
    r = np.arange(h, dtype=np.float32)[:, None] - corner_r
    c = np.arange(w, dtype=np.float32)[None, :] - corner_c
    dist = np.sqrt(r * r + c * c) + 0.1 * radius * _smooth_field(rng, (h, w), 0.5 * radius)
    texture = np.clip(1.0 + 0.3 * _smooth_field(rng, (h, w), 20.0), 0.3, None)
    return (rng.uniform(0.8, 2.0) * expit((radius - dist) / 6.0) * texture).astype(np.float32)


def _camera(
    rng: np.random.Generator,
    emission: np.ndarray,
    background: np.ndarray,
    illum: np.ndarray,
    bg_weights: np.ndarray,
    cell_weights: np.ndarray,
) -> np.ndarray:
    h, w = emission.shape
    blur = rng.uniform(0.5, 1.0)
    emission = ndi.gaussian_filter(emission, sigma=blur, truncate=2.5)
    emission *= illum
    background = background * illum
    # Shared (luminance) shot noise plus small per-channel read noise.
    shot = rng.standard_normal((h, w), dtype=np.float32)
    shot *= rng.uniform(0.03, 0.06) * np.sqrt(emission + background + 0.002)
    out = np.empty((h, w, 3), dtype=np.uint8)
    read = rng.uniform(0.6, 1.6)
    for ch in range(3):
        e = emission * cell_weights[ch] + background * bg_weights[ch]
        e += shot * (cell_weights[ch] if ch < 2 else 0.3)
        np.maximum(e, 0, out=e)
        v = np.tanh(e) * 255.0
        v += rng.standard_normal((h, w), dtype=np.float32) * (read if ch < 2 else read / 3)
        np.clip(v, 0, 255, out=v)
        out[..., ch] = (v + 0.5).astype(np.uint8)
    return out


def _raster_order(owner: np.ndarray) -> np.ndarray:
    """Relabel ids to ``1..n`` in raster order of each label's first pixel (drop empty ids)."""
    flat = owner.ravel()
    nz = np.flatnonzero(flat)
    if nz.size == 0:
        return np.zeros_like(owner, dtype=np.int32)
    ids, first = np.unique(flat[nz], return_index=True)
    order = ids[np.argsort(first)]
    lut = np.zeros(int(owner.max()) + 1, dtype=np.int32)
    lut[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return lut[owner]


# --------------------------------------------------------------------------------------------
# writing plates and datasets through neuroseg.storage
# --------------------------------------------------------------------------------------------

_WELLS_PER_ROW = 12  # a 96-well-like layout: r01c01 .. r01c12, r02c01, ...


def plate_id(index: int) -> str:
    """Lab-like plate id of the ``index``-th plate (0-based): ``P001``, ``P002``, ..."""
    return f"P{index + 1:03d}"


def image_id(plate: str, index: int) -> str:
    """Lab-like image id of the ``index``-th image (0-based) of ``plate``: ``P001_r01c01``, ..."""
    row, col = divmod(index, _WELLS_PER_ROW)
    return f"{plate}_r{row + 1:02d}c{col + 1:02d}"


def grey12_png(*, seed: int, height: int = 520, width: int = 696) -> bytes:
    """A synthetic plate as a microscope camera writes it: one channel, 12-bit values
    (0..4080, the brightest colour channel x 16) in a 16-bit PNG."""
    import io

    from PIL import Image

    plate = synth_plate(seed=seed, height=height, width=width)
    grey = plate.image.max(axis=2).astype(np.uint16) * np.uint16(16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    return buf.getvalue()


def write_uploads(
    root_uri: str,
    *,
    plates: int = 2,
    images_per_plate: int = 3,
    seed: int = 0,
    height: int = 1200,
    width: int = 1600,
) -> list[str]:
    """Write synthetic microscope uploads, ``<root>/uploads/<plate_id>/<image_id>.png``.

    Parameters
    ----------
    root_uri : str
        Storage root (local folder, ``file://`` or ``s3://bucket/prefix``).
    plates : int
        Number of plates (1..999), ids ``P001``, ``P002``, ...
    images_per_plate : int
        Images per plate (1..1188), ids ``<plate>_r01c01``, ``<plate>_r01c02``, ... (12 a row).
    seed : int
        Run seed; image ``i`` of plate ``p`` (0-based) is ``synth_plate`` with a seed derived
        from ``(seed, p, i)``, so a run is reproducible image by image.
    height, width : int
        Image size in pixels.

    Returns
    -------
    list of str
        URIs written, plate by plate, in image order. Only images are written (uploads have no
        masks); use :func:`write_dataset` for annotated data.
    """
    from neuroseg import storage
    from neuroseg.images import encode_png

    seed = _check_int("seed", seed, minimum=0)
    plates = _check_int("plates", plates, minimum=1, maximum=999)
    images_per_plate = _check_int("images_per_plate", images_per_plate, minimum=1, maximum=1188)
    _check_size(height, width)
    written = []
    for p in range(plates):
        pid = plate_id(p)
        for i in range(images_per_plate):
            plate = synth_plate(seed=_derive_seed(seed, p, i), height=height, width=width)
            uri = storage.join(root_uri, "uploads", pid, f"{image_id(pid, i)}.png")
            storage.write_bytes(uri, encode_png(plate.image))
            written.append(uri)
    return written


def write_dataset(
    root_uri: str,
    *,
    name: str = "synthetic",
    images: int = 8,
    seed: int = 0,
    height: int = 1200,
    width: int = 1600,
    stains: Sequence[str] = ("yellow",),
) -> str:
    """Write an annotated synthetic dataset in the FNC layout.

    Files are ``<root>/datasets/<name>/images/syn_0001.png`` (RGB) and
    ``<root>/datasets/<name>/masks/syn_0001.png`` (0/255 grayscale), ``syn_0002``, ...

    Parameters
    ----------
    root_uri : str
        Storage root (local folder, ``file://`` or ``s3://bucket/prefix``).
    name : str
        Dataset name (one safe storage key).
    images : int
        Number of images (1..9999); image ``i`` (0-based) uses a seed derived from
        ``(seed, i)``.
    seed : int
        Run seed.
    height, width : int
        Image size in pixels.
    stains : sequence of {"yellow", "red"}
        Image ``i`` has stain ``stains[i % len(stains)]`` (:func:`synth_plate`).

    Returns
    -------
    str
        The dataset URI, ``<root>/datasets/<name>``.
    """
    from neuroseg import storage
    from neuroseg.images import encode_png

    seed = _check_int("seed", seed, minimum=0)
    images = _check_int("images", images, minimum=1, maximum=9999)
    _check_size(height, width)
    stains = list(stains)
    bad = [x for x in stains if x not in STAINS]
    if not stains or bad:
        raise ValueError(f"stains must be a non-empty list of {', '.join(STAINS)}, got {stains}")
    dataset = storage.join(root_uri, "datasets", name)
    for i in range(images):
        plate = synth_plate(
            seed=_derive_seed(seed, i),
            height=height,
            width=width,
            stain=stains[i % len(stains)],
        )
        key = f"syn_{i + 1:04d}.png"
        storage.write_bytes(storage.join(dataset, "images", key), encode_png(plate.image))
        storage.write_bytes(storage.join(dataset, "masks", key), encode_png(plate.mask))
    return dataset


# --------------------------------------------------------------------------------------------
# statistics: synthetic versus real
# --------------------------------------------------------------------------------------------


class _Tally:
    """Pooled cell and pixel statistics over a set of (image, mask) pairs."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.fg_pct: list[float] = []
        self.area: list[np.ndarray] = []
        self.width: list[np.ndarray] = []
        self.height: list[np.ndarray] = []
        self.fg_sum = np.zeros(3)
        self.bg_sum = np.zeros(3)
        self.fg_n = 0
        self.bg_n = 0

    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        from neuroseg.masks import analyze_mask

        cols = analyze_mask(mask)
        fg = mask > 127
        self.counts.append(len(cols["area_px"]))
        self.fg_pct.append(100.0 * float(fg.mean()))
        self.area.append(np.asarray(cols["area_px"], dtype=np.float64))
        self.width.append(np.asarray(cols["bbox_width"], dtype=np.float64))
        self.height.append(np.asarray(cols["bbox_height"], dtype=np.float64))
        n_fg = int(fg.sum())
        total = image.reshape(-1, 3).sum(axis=0, dtype=np.float64)
        fg_sum = image[fg].sum(axis=0, dtype=np.float64)
        self.fg_sum += fg_sum
        self.bg_sum += total - fg_sum
        self.fg_n += n_fg
        self.bg_n += fg.size - n_fg

    def result(self) -> dict[str, Any]:
        def pct(parts: list[np.ndarray], q: float) -> float:
            values = np.concatenate(parts) if parts else np.zeros(0)
            return float(np.percentile(values, q)) if values.size else float("nan")

        counts = np.asarray(self.counts)
        out: dict[str, Any] = {
            "images": len(counts),
            "cells": int(counts.sum()),
            "cells_per_image": float(counts.mean()),
            "cells_per_image_min": int(counts.min()),
            "cells_per_image_max": int(counts.max()),
            "foreground_pct": 100.0 * self.fg_n / max(self.fg_n + self.bg_n, 1),
            "foreground_pct_min": float(min(self.fg_pct)),
            "foreground_pct_max": float(max(self.fg_pct)),
        }
        for key, parts in (("area", self.area), ("width", self.width), ("height", self.height)):
            out[f"{key}_p50"] = pct(parts, 50)
            out[f"{key}_p95"] = pct(parts, 95)
        out["cell_rgb"] = [float(v) for v in self.fg_sum / max(self.fg_n, 1)]
        out["background_rgb"] = [float(v) for v in self.bg_sum / max(self.bg_n, 1)]
        return out


def compare_with_real(
    real_root: str | None, *, n: int = 8, seed: int = 0, height: int = 1200, width: int = 1600
) -> dict[str, dict[str, Any]]:
    """Measure the same statistics on real FNC samples and on ``n`` synthetic images.

    Parameters
    ----------
    real_root : str or None
        Folder (or URI) holding ``yellow/`` and/or ``red/`` in the FNC layout (``images/`` and
        ``masks/``), e.g. :func:`neuroseg.datasets.fnc_shared_root`; ``None`` measures only the
        synthetic set.
    n : int
        Number of synthetic images (seeds derived from ``(seed, i)`` as in
        :func:`write_dataset`).
    seed : int
        Run seed of the synthetic set.
    height, width : int
        Synthetic image size.

    Returns
    -------
    dict
        ``{"yellow": stats, "red": stats, "synthetic": stats}`` (real sets only where present),
        each with ``images, cells, cells_per_image(_min/_max), foreground_pct(_min/_max)``
        (pooled over pixels), ``area_p50, area_p95, width_p50, width_p95, height_p50,
        height_p95`` (pooled over cells, 4-connected components of the mask) and ``cell_rgb``,
        ``background_rgb`` (mean RGB of mask and non-mask pixels).
    """
    from neuroseg import storage
    from neuroseg.datasets import find_fnc_samples
    from neuroseg.images import read_image, read_mask

    n = _check_int("n", n, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    out: dict[str, dict[str, Any]] = {}
    if real_root is not None:
        for colour in ("yellow", "red"):
            tally = _Tally()
            for sample in find_fnc_samples(storage.join(str(real_root), colour)):
                if sample.mask_uri is None:
                    continue
                tally.add(read_image(sample.image_uri), read_mask(sample.mask_uri))
            if tally.counts:
                out[colour] = tally.result()
    tally = _Tally()
    for i in range(n):
        plate = synth_plate(seed=_derive_seed(seed, i), height=height, width=width)
        tally.add(plate.image, plate.mask)
    out["synthetic"] = tally.result()
    return out


def comparison_table(stats: dict[str, dict[str, Any]]) -> str:
    """Format :func:`compare_with_real`'s result as a Markdown table (one column per set)."""

    def rgb(v: Sequence[float]) -> str:
        return "(" + ", ".join(f"{x:.0f}" for x in v) + ")"

    rows = [
        ("images", lambda s: f"{s['images']}"),
        ("cells", lambda s: f"{s['cells']}"),
        (
            "cells per image: mean (min-max)",
            lambda s: (
                f"{s['cells_per_image']:.1f} ({s['cells_per_image_min']}-"
                f"{s['cells_per_image_max']})"
            ),
        ),
        (
            "foreground %: pooled (min-max)",
            lambda s: (
                f"{s['foreground_pct']:.2f} ({s['foreground_pct_min']:.2f}-"
                f"{s['foreground_pct_max']:.2f})"
            ),
        ),
        ("area px p50 / p95", lambda s: f"{s['area_p50']:.0f} / {s['area_p95']:.0f}"),
        ("bbox width p50 / p95", lambda s: f"{s['width_p50']:.0f} / {s['width_p95']:.0f}"),
        ("bbox height p50 / p95", lambda s: f"{s['height_p50']:.0f} / {s['height_p95']:.0f}"),
        ("mean RGB of cell pixels", lambda s: rgb(s["cell_rgb"])),
        ("mean RGB of background", lambda s: rgb(s["background_rgb"])),
    ]
    names = list(stats)
    lines = [
        "| statistic | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(stats[k]) for k in names) + " |")
    return "\n".join(lines)
