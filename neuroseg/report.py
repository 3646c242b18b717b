"""One self-contained HTML page per plate: what a biologist looks at after a night (light).

:func:`write_plate_report` reads a plate's rows of the cell table, its label images, its images
and its processed / quarantine records, and writes ``<root>/reports/plates/<plate_id>.html``:

- a summary line (images, cells, cells per image, failures, model, when);
- the failures with their reasons (decode errors recorded by the nightly run, files quarantined
  at ingestion, and any failure a caller passes in, e.g. a task that ran out of retries);
- cells per image (a table: median area in px and, where the pixel size is known, µm²; the
  image's quality flags and the model's confidence from the per-image table,
  :mod:`neuroseg.quality`, :mod:`neuroseg.confidence`), sorted "review first": the least
  confident image first, the order ``neuroseg review`` exports them in, and a histogram of
  cell areas (``area_px``); the plate summary per well (:mod:`neuroseg.summary`) when the
  nightly run wrote one;
- a grid of thumbnails (about 320 px wide) with the detected cells outlined and numbered by the
  table's ``cell_id``. Outlines come from the label image
  ``<root>/labels/plate_id=<plate_id>/<image_id>.png`` (16-bit, pixel value = ``cell_id``; a
  32-bit ``.tif`` above 65,535 cells); an image without one gets the cells' bounding boxes from
  the table instead.

Everything is embedded (JPEG or PNG thumbnails as base64, whichever is smaller, the histogram as
PNG, numbers and boxes as inline SVG), so the page opens from a disk, an S3 download or an
e-mail attachment without a server; no script runs in it. Images are shown as
:func:`neuroseg.normalize.to_uint8` shows them: 8-bit as stored, deeper images stretched between
their 1st and 99.8th percentiles. A 20-image plate of 1600x1200 images makes a page of well under
2 MB.

No TensorFlow and no Prefect are imported here (numpy, pandas, Pillow; matplotlib for the
histogram through :mod:`neuroseg.plots`).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from neuroseg import __version__, storage

__all__ = [
    "THUMB_WIDTH",
    "build_plate_report",
    "label_image_uri",
    "plate_report_uri",
    "report_link",
    "review_order",
    "write_plate_report",
]

THUMB_WIDTH = 320
"""Width in pixels of the thumbnails (images narrower than this are shown at their own size)."""

OUTLINE = (0, 255, 255)  # cyan, as the nightly overlays
_COLUMNS = [
    "image_id",
    "image_uri",
    "cell_id",
    "centroid_x",
    "centroid_y",
    "bbox_x",
    "bbox_y",
    "bbox_width",
    "bbox_height",
    "area_px",
    "area_um2",
    "pixel_size_um",
    "model_name",
    "model_version",
    "processed_at",
]


def plate_report_uri(root: str, plate_id: str) -> str:
    """Where a plate's page lives: ``<root>/reports/plates/<plate_id>.html``."""
    return storage.join(root, "reports", "plates", f"{plate_id}.html")


def report_link(uri: str) -> str:
    """A link to a written page: ``file:///...`` for a local path, the URI itself otherwise."""
    if storage.is_local(uri) and "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def label_image_uri(root: str, plate_id: str, image_id: str) -> str | None:
    """The image's label image (``.png``, else ``.tif``/``.tiff``), or None when there is none."""
    for suffix in (".png", ".tif", ".tiff"):
        uri = storage.join(root, "labels", f"plate_id={plate_id}", f"{image_id}{suffix}")
        if storage.exists(uri):
            return uri
    return None


# --------------------------------------------------------------------------- collecting


@dataclass
class _Image:
    image_id: str
    image_uri: str | None = None
    cells: pd.DataFrame | None = None
    record: dict = field(default_factory=dict)
    flags: str = ""  # the per-image table's quality flags ("out_of_focus;saturated"...)
    confidence: float | None = None  # the model's confidence in the image (neuroseg.confidence)


def _read_table(cells_uri: str, plate_id: str) -> pd.DataFrame:
    """The plate's rows (only the columns the page needs); empty when there are none. Read
    with the table's unified schema, so files before schema version 3 give null µm."""
    from neuroseg.inference import read_cells

    try:
        df = read_cells(cells_uri, columns=_COLUMNS, filters=[("plate_id", "==", plate_id)])
    except (FileNotFoundError, OSError) as exc:
        if storage.exists(cells_uri):  # a table that exists but cannot be read is an error
            raise ValueError(f"{cells_uri}: cannot read the cell table ({exc})") from exc
        df = pd.DataFrame(columns=_COLUMNS)
    df["image_id"] = df["image_id"].astype(str)
    return df.sort_values(["image_id", "cell_id"], kind="stable").reset_index(drop=True)


def _image_rows(root: str, plate_id: str) -> dict[str, tuple[str, float | None]]:
    """``{image_id: (flags, confidence or None)}`` of the plate from the per-image table
    (``<root>/images``)."""
    from neuroseg.quality import read_image_table

    try:
        table = read_image_table(
            storage.join(root, "images"), filters=[("plate_id", "==", plate_id)]
        )
    except (OSError, ValueError):  # no or unreadable quality rows: the page shows no flags
        return {}
    conf = pd.to_numeric(table["confidence"], errors="coerce")
    return {
        str(i): (f, None if pd.isna(c) else float(c))
        for i, f, c in zip(table["image_id"], table["quality_flags"], conf, strict=True)
    }


def review_order(images: Iterable[tuple[str, float | None]]) -> list[str]:
    """Image ids "review first": the least confident first, images without a confidence
    (processed before it was measured) last; ties by id.

    Parameters
    ----------
    images : iterable of (image_id, confidence or None)
    """
    images = list(images)
    known = sorted((c, i) for i, c in images if c is not None and math.isfinite(c))
    rest = sorted(i for i, c in images if c is None or not math.isfinite(c))
    return [i for _, i in known] + rest


def _records(root: str, plate_id: str) -> list[dict]:
    """The nightly run's processed records of the plate (``manifests/processed/<plate>/``)."""
    folder = storage.join(root, "manifests", "processed", plate_id)
    out = []
    for uri in storage.list_files(folder, suffixes=".json", recursive=False):
        try:
            rec = storage.read_json(uri)
        except ValueError:  # a damaged record: show it as a failure rather than fail the page
            rec = {"image_id": PurePosixPath(uri).stem, "status": "unreadable record"}
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _quarantined(root: str, plate_id: str) -> list[dict]:
    """Files of the plate quarantined with a reason (``quarantine/uploads/<plate>/``)."""
    folder = storage.join(root, "quarantine", "uploads", plate_id)
    out = []
    for uri in storage.list_files(folder, suffixes=".reason.txt", recursive=False):
        name = PurePosixPath(uri).name[: -len(".reason.txt")]
        try:
            reason = storage.read_bytes(uri).decode("utf-8", "replace").strip()
        except FileNotFoundError:
            continue
        out.append(
            {
                "image_id": PurePosixPath(name).stem,
                "file": name,
                "reason": reason,
                "where": uri[: -len(".reason.txt")],
            }
        )
    return out


def _collect(root, plate_id, cells_uri, failures):
    table = _read_table(cells_uri, plate_id)
    records = _records(root, plate_id)
    images: dict[str, _Image] = {}
    for image_id, rows in table.groupby("image_id", sort=True):
        images[image_id] = _Image(image_id, str(rows["image_uri"].iloc[0]), rows)
    fails: dict[str, dict] = {}
    for rec in records:
        image_id = str(rec.get("image_id", ""))
        if rec.get("status", "done") == "done" and "cells" in rec:
            img = images.setdefault(image_id, _Image(image_id))
            img.image_uri = img.image_uri or rec.get("image_uri")
            img.record = rec
        else:
            fails[image_id] = {
                "image_id": image_id,
                "file": PurePosixPath(str(rec.get("image_uri", image_id))).name,
                "reason": str(rec.get("reason") or rec.get("status") or "failed"),
                "where": str(rec.get("image_uri", "")),
            }
    for q in _quarantined(root, plate_id):
        fails.setdefault(q["image_id"], q)
    for f in failures:
        image_id = str(f.get("image_id") or PurePosixPath(str(f.get("image_uri", ""))).stem)
        fails[image_id] = {
            "image_id": image_id,
            "file": PurePosixPath(str(f.get("image_uri", image_id))).name,
            "reason": str(f.get("reason", "failed")),
            "where": str(f.get("image_uri", "")),
        }
    for image_id in images:  # processed since: the current state wins over an old quarantine
        fails.pop(image_id, None)
    return table, [images[k] for k in sorted(images)], [fails[k] for k in sorted(fails)]


# --------------------------------------------------------------------------- pictures


def _display_rgb(data: bytes, name: str) -> np.ndarray:
    """``(H, W, 3) uint8`` as the report shows an image (8-bit as is, deeper stretched)."""
    from neuroseg.images import decode_native
    from neuroseg.normalize import select_channels, to_uint8

    return np.ascontiguousarray(select_channels(to_uint8(decode_native(data, name=name))))


def _read_labels(uri: str) -> np.ndarray:
    from neuroseg.images import decode_labels

    return decode_labels(storage.read_bytes(uri), name=uri)


def _inner_edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell with a 4-neighbour outside it (the cell's own outline)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[[0, -1], :] = True  # a cell cut by the image border is closed there
    edge[:, [0, -1]] = True
    return edge & (labels != 0)


def _thumb_size(height: int, width: int, target: int) -> tuple[int, int]:
    if width <= target:
        return height, width
    return max(1, round(height * target / width)), target


def _encode_smallest(rgb: np.ndarray) -> tuple[str, bytes]:
    """The thumbnail as JPEG (quality 85, no chroma subsampling) or PNG, whichever is smaller."""
    from PIL import Image

    img = Image.fromarray(rgb)
    jpg, png = io.BytesIO(), io.BytesIO()
    img.save(jpg, format="JPEG", quality=85, subsampling=0, optimize=True)
    img.save(png, format="PNG", compress_level=6)
    if png.tell() <= jpg.tell():
        return "image/png", png.getvalue()
    return "image/jpeg", jpg.getvalue()


def _thumbnail(rgb: np.ndarray, labels: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    th, tw = size
    small = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.Resampling.BOX)).copy()
    if labels is not None:
        edge = _inner_edges(labels).astype(np.uint8) * np.uint8(255)
        if (th, tw) != labels.shape:  # any outline pixel under a thumbnail pixel marks it
            edge = np.asarray(Image.fromarray(edge).resize((tw, th), Image.Resampling.BOX))
        small[edge > 0] = OUTLINE
    return small


# --------------------------------------------------------------------------- page


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _card(img: _Image, root: str, plate_id: str, thumb_width: int) -> tuple[str, dict]:
    """One grid cell: the thumbnail with outlines and cell numbers, and its caption."""
    cells = img.cells if img.cells is not None else pd.DataFrame(columns=_COLUMNS)
    n = len(cells)
    info = {"image_id": img.image_id, "cells": n, "outlines": "none", "problem": None}
    try:
        if not img.image_uri:
            raise FileNotFoundError("no image URI recorded")
        rgb = _display_rgb(storage.read_bytes(img.image_uri), img.image_uri)
    except (OSError, ValueError) as exc:
        info["problem"] = f"image not shown: {' '.join(str(exc).split())}"
        body = f'<div class="missing">{_e(info["problem"])}</div>'
        return _figure(img, n, cells, body, info), info
    height, width = rgb.shape[:2]
    labels = None
    luri = label_image_uri(root, plate_id, img.image_id)
    if luri is not None:
        try:
            labels = _read_labels(luri)
            if labels.shape != (height, width):
                info["problem"] = f"label image is {labels.shape[1]}x{labels.shape[0]}"
                labels = None
        except (OSError, ValueError) as exc:
            info["problem"] = f"label image unreadable ({' '.join(str(exc).split())})"
            labels = None
    info["outlines"] = "label image" if labels is not None else "bounding boxes"
    th, tw = _thumb_size(height, width, thumb_width)
    mime, data = _encode_smallest(_thumbnail(rgb, labels, (th, tw)))
    info["bytes"] = len(data)
    sx, sy = tw / width, th / height
    parts = [
        f'<svg class="thumb" viewBox="0 0 {tw} {th}" width="{tw}" height="{th}" role="img" '
        f'aria-label="{_e(img.image_id)}: {n} cells">',
        f'<image width="{tw}" height="{th}" href="data:{mime};base64,'
        f'{base64.b64encode(data).decode("ascii")}"/>',
    ]
    if labels is None and n:
        parts.append('<g class="boxes">')
        for r in cells.itertuples(index=False):
            parts.append(
                f'<rect x="{r.bbox_x * sx:.1f}" y="{r.bbox_y * sy:.1f}" '
                f'width="{max(r.bbox_width * sx, 1):.1f}" '
                f'height="{max(r.bbox_height * sy, 1):.1f}"/>'
            )
        parts.append("</g>")
    if n:
        parts.append('<g class="ids">')
        for r in cells.itertuples(index=False):
            # the number sits at the top right corner of the cell's box, clamped into view
            x = min(max((r.bbox_x + r.bbox_width) * sx, 4.0), tw - 4.0)
            y = min(max(r.bbox_y * sy, 9.0), th - 2.0)
            parts.append(f'<text x="{x:.1f}" y="{y:.1f}">{int(r.cell_id)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return _figure(img, n, cells, "".join(parts), info), info


def _figure(img: _Image, n: int, cells: pd.DataFrame, body: str, info: dict) -> str:
    median = float(np.median(cells["area_px"])) if n else None
    um2 = _median_um2(cells)
    size = pd.to_numeric(cells["pixel_size_um"], errors="coerce").dropna() if n else ()
    note = f'<span class="note">{_e(info["problem"])}</span>' if info.get("problem") else ""
    if img.flags:
        note += f'<span class="flag">{_e(img.flags.replace(";", ", ").replace("_", " "))}</span>'
    if img.confidence is not None:
        note += f'<span class="conf">confidence {img.confidence:.2f}</span>'
    outlines = {"label image": "outlines", "bounding boxes": "boxes"}.get(info["outlines"], "")
    return (
        f'<figure class="card" id="img-{_e(img.image_id)}" data-image-id="{_e(img.image_id)}" '
        f'data-cells="{n}">{body}<figcaption><b>{_e(img.image_id)}</b> · '
        f'<span class="count">{n}</span> cells'
        + (f" · median {_num(median)} px" if median is not None else "")
        + (f' (<span class="um2">{_num(um2, 1)}</span> µm²)' if um2 is not None else "")
        + (f' · <span class="px-um">{size.iloc[0]:g}</span> µm/px' if len(size) else "")
        + (f' · <span class="src">{outlines}</span>' if outlines else "")
        + f"{note}</figcaption></figure>"
    )


def _summary_table(root: str, plate_id: str) -> list[str]:
    """The plate summary per well (``neuroseg.summary``), when one was written: HTML rows."""
    from neuroseg.summary import summary_uri

    uri = summary_uri(root, plate_id)
    if not storage.exists(uri):
        return []
    try:
        df = storage.read_parquet(uri)
    except (OSError, ValueError):
        return []
    markers = [c[len("fraction_positive_") :] for c in df.columns if c.startswith("fraction_pos")]
    head = ["well", "images", "flagged", "cells", "cells / mm²", "median µm²"]
    head += [f"{m}+ (%)" for m in markers]
    out = ['<div><h2 id="summary">Plate summary</h2><div class="counts"><table>']
    out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for r in df.to_dict(orient="records"):
        cells = [
            _e(r["well"]),
            _num(r["images"]),
            _num(r["images_flagged"]),
            _num(r["cells"]),
            _num(r["cells_per_mm2"], 1),
            _num(r["median_area_um2"], 1),
        ]
        cells += [
            _num(None if pd.isna(f) else 100 * f, 1)
            for f in (r[f"fraction_positive_{m}"] for m in markers)
        ]
        tag = "th" if r["well"] == "all" else "td"
        out.append(
            f'<tr class="summary-row" data-well="{_e(r["well"])}">'
            + "".join(f"<{tag}>{c}</{tag}>" for c in cells)
            + "</tr>"
        )
    out.append("</table></div></div>")
    return out


def _median_um2(cells: pd.DataFrame) -> float | None:
    """Median cell area in µm² over the cells whose pixel size is known; None if none is."""
    if cells is None or not len(cells) or "area_um2" not in cells:
        return None
    known = pd.to_numeric(cells["area_um2"], errors="coerce").dropna()
    return float(known.median()) if len(known) else None


def _histogram(areas: np.ndarray) -> str:
    if not areas.size:
        return '<p class="muted">No cells: no size histogram.</p>'
    from neuroseg.plots import size_histogram_png

    png = size_histogram_png(areas)
    return (
        '<img class="hist" alt="histogram of cell areas" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}">'
    )


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f4f5f7}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#cfd5e2}
main{padding:8px 24px 24px}
h2{font-size:17px;margin:18px 0 8px}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #dde1e8;padding:3px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.fail{border-left:4px solid #c62828;background:#fff;padding:8px 12px}
.fail td{max-width:900px;word-break:break-word}
.ok{color:#2e7d32}
.cols{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.counts{max-height:420px;overflow:auto}
.hist{width:480px;max-width:100%;background:#fff;border:1px solid #dde1e8}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{margin:0;background:#fff;border:1px solid #dde1e8;padding:5px}
.card svg{display:block;width:100%;height:auto;background:#000}
.card figcaption{padding:4px 2px 0;font-size:13px}
.card .note{display:block;color:#c62828}
.card .flag{display:block;color:#e65100;font-weight:bold}
.card .conf{display:block;color:#6b7280}
.ids text{font:bold 11px system-ui,sans-serif;fill:#ffeb3b;stroke:#000;stroke-width:2.5px;
paint-order:stroke;text-anchor:middle}
.boxes rect{fill:none;stroke:#ff40ff;stroke-width:1}
.missing{padding:40px 10px;text-align:center;color:#c62828;background:#fafafa}
.muted{color:#6b7280}
footer{padding:0 24px 24px;color:#6b7280;font-size:12px}
"""


def build_plate_report(
    root: str,
    plate_id: str,
    *,
    cells_uri: str | None = None,
    failures: Iterable[Mapping] = (),
    thumb_width: int = THUMB_WIDTH,
) -> tuple[str, dict]:
    """The HTML page of one plate and a summary of what is on it.

    Parameters
    ----------
    root : str
        The storage root (local folder or ``s3://bucket/prefix``).
    plate_id : str
    cells_uri : str, optional
        The cell table (default ``<root>/cells``).
    failures : iterable of dict, optional
        More failures to list (``image_uri`` or ``image_id``, and ``reason``), e.g. images whose
        task failed tonight without leaving a record.
    thumb_width : int
        Thumbnail width in pixels.

    Returns
    -------
    (str, dict)
        The page, and ``{"plate_id", "images", "cells", "failures", "per_image" {image_id:
        cells}, "problems"}``.

    Raises
    ------
    ValueError
        The plate has no processed image, no row and no failure under `root`.
    """
    if not plate_id or "/" in plate_id:
        raise ValueError(f"plate id must be a plain name, got {plate_id!r}")
    if not 16 <= int(thumb_width) <= 2048:
        raise ValueError(f"thumb_width must be 16..2048 pixels, got {thumb_width!r}")
    cells_uri = cells_uri or storage.join(root, "cells")
    table, images, fails = _collect(root, plate_id, cells_uri, list(failures))
    rows = _image_rows(root, plate_id)
    for img in images:
        img.flags, img.confidence = rows.get(img.image_id, ("", None))
    rank = {k: n for n, k in enumerate(review_order((i.image_id, i.confidence) for i in images))}
    images = sorted(images, key=lambda i: rank[i.image_id])  # review first
    flagged = {i.image_id: i.flags for i in images if i.flags}
    if not images and not fails:
        raise ValueError(f"plate {plate_id!r} has no processed image under {root}")
    cards, infos = [], []
    for img in images:
        card, info = _card(img, root, plate_id, int(thumb_width))
        cards.append(card)
        infos.append(info)
    total = len(table)
    n_images = len(images)
    models = sorted(
        {f"{a}@{b}" for a, b in zip(table["model_name"], table["model_version"], strict=True)}
    )
    models += sorted(
        {
            f"{i.record['model_name']}@{i.record['model_version']}"
            for i in images
            if i.record.get("model_name") and i.cells is None
        }
        - set(models)
    )
    stamps = sorted(
        str(i.record.get("processed_at", "")) for i in images if i.record.get("processed_at")
    )
    if not stamps and total:
        stamps = sorted(pd.to_datetime(table["processed_at"]).astype(str))
    when = stamps[0][:16].replace("T", " ") if stamps else "–"
    if stamps and stamps[-1][:16] != stamps[0][:16]:
        when += f" – {stamps[-1][:16].replace('T', ' ')}"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    per_image = {info["image_id"]: info["cells"] for info in infos}
    summary = {
        "plate_id": plate_id,
        "images": n_images,
        "cells": total,
        "failures": len(fails),
        "per_image": per_image,
        "problems": {i["image_id"]: i["problem"] for i in infos if i["problem"]},
        "flagged": flagged,
        "cells_unflagged": sum(n for k, n in per_image.items() if k not in flagged),
        "models": models,
        "review_first": [{"image_id": i.image_id, "confidence": i.confidence} for i in images],
    }
    mean = total / n_images if n_images else float("nan")
    head = (
        f"{n_images} image{'s' * (n_images != 1)} · {total:,} cells · {_num(mean, 1)} per image · "
        + (
            f'<b style="color:#ff8a80">{len(fails)} failed</b>'
            if fails
            else '<span style="color:#a5d6a7">no failures</span>'
        )
        + (
            f' · <b class="flagged" style="color:#ffcc80">{len(flagged)} flagged</b> '
            f"({summary['cells_unflagged']:,} cells in unflagged images)"
            if flagged
            else ""
        )
        + f" · model {_e(', '.join(models) or '–')} · processed {_e(when)}"
    )
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Plate {_e(plate_id)} · neuroseg</title><style>{_CSS}</style></head><body>",
        f"<header><h1>Plate {_e(plate_id)}</h1><p>{head}</p></header><main>",
    ]
    if fails:
        out.append(f'<h2 id="failures">Failures ({len(fails)})</h2><div class="fail"><table>')
        out.append("<tr><th>file</th><th>reason</th></tr>")
        for f in fails:
            out.append(
                f'<tr class="failure" data-image-id="{_e(f["image_id"])}"><td>{_e(f["file"])}'
                f"</td><td>{_e(f['reason'])}</td></tr>"
            )
        out.append("</table></div>")
    out.append(
        '<div class="cols"><div><h2>Cells per image</h2><p class="muted">Review first: the '
        "images the model is least sure of come first (<code>confidence</code>, 0..1); "
        f"<code>neuroseg review {_e(plate_id)} --root ROOT --out DIR</code> exports them with "
        'their label images for correction.</p><div class="counts"><table>'
    )
    out.append(
        '<tr><th>image</th><th class="n">confidence</th><th class="n">cells</th>'
        '<th class="n">median area (px)</th><th class="n">mean area (px)</th>'
        '<th class="n">median area (µm²)</th><th>quality</th></tr>'
    )
    for img in images:
        a = img.cells["area_px"] if img.cells is not None else pd.Series([], dtype=float)
        out.append(
            f'<tr class="count-row" data-image-id="{_e(img.image_id)}">'
            f'<td><a href="#img-{_e(img.image_id)}">{_e(img.image_id)}</a></td>'
            f'<td class="n conf">{_num(img.confidence, 2)}</td><td class="n">{len(a)}</td>'
            f'<td class="n">{_num(a.median() if len(a) else None)}'
            f'</td><td class="n">{_num(a.mean() if len(a) else None)}</td>'
            f'<td class="n">{_num(_median_um2(img.cells), 1)}</td>'
            f'<td class="qc">{_e(img.flags.replace(";", ", ") or "ok")}</td></tr>'
        )
    out.append(
        f'<tr><th>total</th><th></th><th class="n">{total}</th><th class="n">'
        f'{_num(table["area_px"].median() if total else None)}</th><th class="n">'
        f"{_num(table['area_px'].mean() if total else None)}</th>"
        f'<th class="n">{_num(_median_um2(table), 1)}</th><th>{len(flagged)} flagged</th>'
        "</tr></table></div></div>"
    )
    out.extend(_summary_table(root, plate_id))
    out.append("<div><h2>Cell sizes</h2>")
    out.append(_histogram(table["area_px"].to_numpy(dtype=float)))
    out.append("</div></div>")
    out.append(
        f'<h2 id="images">Images ({n_images})</h2><p class="muted">Cells outlined in cyan '
        "(from the label image; magenta boxes where an image has none) and numbered by "
        "<code>cell_id</code>, as in the cell table.</p>"
    )
    out.append(f'<div class="grid">{"".join(cards)}</div></main>')
    out.append(
        f"<footer>neuroseg {__version__} · plate report made {now} from "
        f"<code>{_e(cells_uri)}</code> · query the rows: <code>pd.read_parquet("
        f"&quot;{_e(cells_uri)}&quot;, filters=[(&quot;plate_id&quot;, &quot;==&quot;, "
        f"&quot;{_e(plate_id)}&quot;)])</code></footer>"
    )
    out.append(
        '<script type="application/json" id="plate-summary">'
        + json.dumps(summary, sort_keys=True).replace("<", "\\u003c")
        + "</script></body></html>"
    )
    return "\n".join(out), summary


def write_plate_report(
    root: str,
    plate_id: str,
    *,
    out: str | None = None,
    cells_uri: str | None = None,
    failures: Iterable[Mapping] = (),
    thumb_width: int = THUMB_WIDTH,
) -> dict:
    """Build a plate's page and write it atomically (default :func:`plate_report_uri`).

    Returns the summary of :func:`build_plate_report` plus ``uri`` and ``bytes``.
    """
    page, summary = build_plate_report(
        root, plate_id, cells_uri=cells_uri, failures=failures, thumb_width=thumb_width
    )
    uri = out or plate_report_uri(root, plate_id)
    data = page.encode("utf-8")
    storage.write_bytes(uri, data)
    return {**summary, "uri": uri, "bytes": len(data)}
