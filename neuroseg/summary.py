"""Plate summaries: per plate and well, counts, density, sizes and markers (light).

One row per well of a plate and one for the whole plate (``well = "all"``), from the per-image
table (:mod:`neuroseg.quality`: every processed image, with or without cells) and the cell
table. Images flagged ``out_of_focus`` or ``saturated`` are left out of the figures and counted
beside them (``images_flagged``, ``cells_in_flagged_images``); ``empty`` images stay in: no cell
is a result.

Columns: ``plate_id``, ``well``, ``images``, ``images_flagged``, ``cells``,
``cells_in_flagged_images``, ``imaged_area_mm2`` (images of known pixel size only; null when
none), ``cells_per_mm2`` (their cells over their area), ``median_area_px``,
``median_area_um2`` (cells of known size), and per marker ``<ch>`` (a channel label of the cell
table, :func:`neuroseg.measure.channel_labels`): ``threshold_<ch>``, ``positive_<ch>``,
``fraction_positive_<ch>``.

Wells come from the image id by :data:`WELL_PATTERN` (a regular expression with a group
``well``; ``A1``/``a01`` become ``A01``); images whose id does not match are in the plate row
only. Marker calls (:func:`marker_calls`): a cell is positive for ``<ch>`` when its
``mean_intensity_<ch>`` is above the marker's threshold: a fixed number in the image's units,
or ``"otsu"``: Otsu's threshold of the plate's (unflagged) cells' means of that channel
(:func:`otsu_threshold`, exact over the values; the same threshold for every well).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = [
    "WELL_PATTERN",
    "marker_calls",
    "otsu_threshold",
    "plate_summary",
    "read_plate_summary",
    "summary_uri",
    "well_id",
    "write_plate_summary",
]

#: Default well pattern: a row letter A-P and a column 1-48 between separators, as plate
#: imagers name files (``IXMtest_A06_s6_w1...``, ``plate1-B12-f03``).
WELL_PATTERN = r"(?:^|[_\W])(?P<well>[A-Pa-p]\d{1,2})(?=[_\W]|$)"

_BAD = ("out_of_focus", "saturated")


def well_id(image_id: str, pattern: str = WELL_PATTERN) -> str:
    """The well named in `image_id` (``"A06"``), or "" when `pattern` does not match."""
    match = re.search(pattern, str(image_id))
    if not match:
        return ""
    well = match.group("well") if "well" in match.re.groupindex else match.group(0)
    m = re.fullmatch(r"([A-Za-z]+)0*(\d+)", well)
    return f"{m.group(1).upper()}{int(m.group(2)):02d}" if m else well


def _check_markers(markers: Mapping[str, float | str] | None) -> dict[str, float | str]:
    out = {}
    for name, rule in (markers or {}).items():
        if rule == "otsu" or (
            isinstance(rule, int | float) and not isinstance(rule, bool) and np.isfinite(rule)
        ):
            out[str(name)] = rule
        else:
            raise ValueError(f"marker {name!r}: threshold must be a number or 'otsu', got {rule!r}")
    return out


def otsu_threshold(values: np.ndarray) -> float | None:
    """Otsu's threshold of `values`, exactly: of all splits between consecutive distinct
    values, the one of largest between-class variance, returned as the midpoint of the split
    (so ``values > threshold`` is exactly the upper class). None for fewer than two distinct
    values. (A histogram's bins, as in scikit-image, can put values of the lower class above
    the threshold.)"""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    if v.size < 2 or v[0] == v[-1]:
        return None
    n = v.size
    cum = np.cumsum(v)
    k = np.flatnonzero(np.diff(v) > 0)  # split after index k: lower class v[: k + 1]
    w0 = (k + 1) / n
    m0 = cum[k] / (k + 1)
    m1 = (cum[-1] - cum[k]) / (n - k - 1)
    best = k[int(np.argmax(w0 * (1 - w0) * (m0 - m1) ** 2))]
    return float((v[best] + v[best + 1]) / 2)


def marker_calls(
    cells: pd.DataFrame, markers: Mapping[str, float | str] | None
) -> tuple[pd.DataFrame, dict[str, float | None]]:
    """Positive / negative per cell and marker, and the thresholds used.

    Parameters
    ----------
    cells : DataFrame
        Cell records with ``mean_intensity_<ch>`` for each marker ``<ch>``.
    markers : mapping
        ``{channel label: threshold}``, a number in the image's units or ``"otsu"``.

    Returns
    -------
    (DataFrame, dict)
        Boolean columns ``positive_<ch>`` (False where the channel is missing), and
        ``{ch: threshold}`` (None when Otsu had fewer than two distinct values).
    """
    calls, thresholds = pd.DataFrame(index=cells.index), {}
    for ch, rule in _check_markers(markers).items():
        col = f"mean_intensity_{ch}"
        values = (
            pd.to_numeric(cells[col], errors="coerce")
            if col in cells
            else pd.Series(np.nan, index=cells.index)
        )
        if rule == "otsu":
            threshold = otsu_threshold(values.dropna().to_numpy(dtype=np.float64))
        else:
            threshold = float(rule)
        thresholds[ch] = threshold
        calls[f"positive_{ch}"] = (
            (values > threshold).fillna(False).astype(bool)
            if threshold is not None
            else pd.Series(False, index=cells.index)
        )
    return calls, thresholds


def _row(well: str, images: pd.DataFrame, cells: pd.DataFrame, markers, thresholds) -> dict:
    bad = images["quality_flags"].str.contains("|".join(_BAD), regex=True)
    good_ids = set(images.loc[~bad, "image_id"])
    good_cells = cells[cells["image_id"].isin(good_ids)]
    good = images[~bad]
    sized = good[pd.to_numeric(good["pixel_size_um"], errors="coerce").notna()]
    area = float((sized["height"] * sized["width"] * sized["pixel_size_um"] ** 2).sum()) / 1e6
    sized_cells = int(sized["cells"].sum())
    um2 = pd.to_numeric(good_cells.get("area_um2"), errors="coerce").dropna()
    row = {
        "well": well,
        "images": len(images),
        "images_flagged": int(bad.sum()),
        "cells": int(good["cells"].sum()),
        "cells_in_flagged_images": int(images.loc[bad, "cells"].sum()),
        "imaged_area_mm2": area if len(sized) else None,
        "cells_per_mm2": sized_cells / area if len(sized) and area > 0 else None,
        "median_area_px": float(good_cells["area_px"].median()) if len(good_cells) else None,
        "median_area_um2": float(um2.median()) if len(um2) else None,
    }
    for ch in markers:
        known = thresholds[ch] is not None and len(good_cells) > 0
        positive = int(good_cells[f"positive_{ch}"].sum()) if known else None
        row[f"threshold_{ch}"] = thresholds[ch]
        row[f"positive_{ch}"] = positive
        row[f"fraction_positive_{ch}"] = positive / len(good_cells) if known else None
    return row


def plate_summary(
    cells: pd.DataFrame,
    images: pd.DataFrame,
    *,
    well_pattern: str = WELL_PATTERN,
    markers: Mapping[str, float | str] | None = None,
) -> pd.DataFrame:
    """Summary rows of ONE plate: each well (sorted), then ``well = "all"``.

    Parameters
    ----------
    cells : DataFrame
        The plate's cell records (``image_id``, ``area_px``, ``area_um2``,
        ``mean_intensity_<ch>``).
    images : DataFrame
        The plate's rows of the per-image table with :func:`neuroseg.quality.plate_flags`
        applied (``image_id``, ``height``, ``width``, ``pixel_size_um``, ``cells``,
        ``quality_flags``), e.g. :func:`neuroseg.quality.read_image_table`.
    well_pattern, markers
        See the module.
    """
    markers = _check_markers(markers)
    re.compile(well_pattern)
    plates = set(images["plate_id"].astype(str)) if "plate_id" in images else set()
    if len(plates) > 1:
        raise ValueError(f"plate_summary takes one plate, got {sorted(plates)}")
    images = images.assign(well=[well_id(i, well_pattern) for i in images["image_id"]])
    bad_ids = set(
        images.loc[images["quality_flags"].str.contains("|".join(_BAD)), "image_id"].astype(str)
    )
    cells = cells.assign(image_id=cells["image_id"].astype(str))
    # Otsu thresholds from the plate's unflagged cells; the same threshold for every well
    calls, thresholds = marker_calls(cells[~cells["image_id"].isin(bad_ids)], markers)
    cells = cells.join(calls).fillna({c: False for c in calls.columns})
    wells = [w for w in sorted(set(images["well"])) if w]
    rows = []
    for well in [*wells, "all"]:
        sub = images if well == "all" else images[images["well"] == well]
        rows.append(
            _row(
                well, sub, cells[cells["image_id"].isin(set(sub["image_id"]))], markers, thresholds
            )
        )
    out = pd.DataFrame(rows)
    out.insert(0, "plate_id", next(iter(plates)) if plates else "")
    return out.astype(_dtypes(markers))


def _dtypes(markers) -> dict[str, str]:
    """Column types (nulls where unknown): counts int64, marker counts Int64, the rest
    float64, so a column of nulls stays typed in Parquet."""
    types = {"plate_id": "str", "well": "str"}
    types |= dict.fromkeys(
        ["images", "images_flagged", "cells", "cells_in_flagged_images"], "int64"
    )
    floats = ["imaged_area_mm2", "cells_per_mm2", "median_area_px", "median_area_um2"]
    for ch in markers:
        floats += [f"threshold_{ch}", f"fraction_positive_{ch}"]
        types[f"positive_{ch}"] = "Int64"
    return types | dict.fromkeys(floats, "float64")


def summary_uri(root: str, plate_id: str) -> str:
    """``<root>/summaries/plate_id=<id>/summary.parquet`` (a hive-partitioned table)."""
    from neuroseg import storage

    return storage.join(root, "summaries", f"plate_id={plate_id}", "summary.parquet")


def write_plate_summary(
    root: str,
    plate_id: str,
    *,
    cells_uri: str | None = None,
    well_pattern: str = WELL_PATTERN,
    markers: Mapping[str, float | str] | None = None,
) -> pd.DataFrame:
    """Summarise a plate from the cell and per-image tables under `root` and write it
    atomically to :func:`summary_uri` (``plate_id`` is the partition). Returns the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from neuroseg import storage
    from neuroseg.inference import read_cells
    from neuroseg.quality import read_image_table

    images = read_image_table(storage.join(root, "images"), filters=[("plate_id", "==", plate_id)])
    if images.empty:
        raise ValueError(f"plate {plate_id!r}: no row in {storage.join(root, 'images')}")
    cells_uri = cells_uri or storage.join(root, "cells")
    try:
        cells = read_cells(cells_uri, filters=[("plate_id", "==", plate_id)])
    except FileNotFoundError:
        cells = pd.DataFrame(columns=["image_id", "area_px", "area_um2"])
    df = plate_summary(cells, images, well_pattern=well_pattern, markers=markers)
    table = pa.Table.from_pandas(df.drop(columns=["plate_id"]), preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(summary_uri(root, plate_id), buf.getvalue())
    return df


def read_plate_summary(root: str, **kw) -> pd.DataFrame:
    """Every plate's summary rows (``pd.read_parquet`` of ``<root>/summaries``)."""
    from neuroseg import storage

    return storage.read_parquet(storage.join(root, "summaries"), **kw)
