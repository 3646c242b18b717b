"""The published per-cell record: one row per detected cell (light; no TensorFlow).

:data:`CELL_SCHEMA` is a published schema: a change to its column names or types is a versioned
change (bump :data:`SCHEMA_VERSION`, stored in the schema metadata as
``neuroseg.schema_version``). Each image's records hold the core columns of
:data:`CELL_SCHEMA`, in order, followed by three columns per channel of the image
(:func:`cell_schema`).

Column definitions (pixels of the original image; x = column, y = row):

- ``plate_id``, ``image_id``, ``image_uri``, ``image_sha256`` (string): where the cell comes from.
- ``cell_id`` (int32): the label of the cell, 1..n within the image.
- ``centroid_x``, ``centroid_y`` (float64): mean column / row of the cell's pixels (pixel centres
  at integer coordinates, so the top-left pixel's centre is (0, 0)).
- ``bbox_x``, ``bbox_y`` (int32): column / row of the top-left pixel of the bounding box;
  ``bbox_width``, ``bbox_height`` (int32): box size in pixels (inclusive, as the seed's
  ``markGroups``).
- ``area_px`` (int64): number of pixels.
- ``mean_intensity`` (float64, in the image's own units): mean of the raw decoded image over the
  cell's pixels and over its channels (for 8-bit RGB the mean of ``(R + G + B) / 3``, 0..255;
  for a 12-bit camera image in a 16-bit file the camera's own 0..4095 values). Schema version 2
  made this the image's own units; version 1 scaled 16-bit images to 0..255 first.
- ``mean_probability`` (float64, 0..1): mean model probability over the cell's pixels (NaN when
  no probability map is given).
- ``touches_border`` (bool): the bounding box touches an image edge (the cell may be cut).
- ``perimeter``, ``major_axis_length``, ``minor_axis_length``, ``eccentricity``, ``solidity``,
  ``orientation`` (float64): as :func:`skimage.measure.regionprops` defines ``perimeter``,
  ``axis_major_length``, ``axis_minor_length``, ``eccentricity``, ``solidity`` and
  ``orientation`` (radians in [-pi/2, pi/2], angle between the row axis and the major axis),
  computed for all cells at once by :func:`neuroseg.shapes.shape_table`.
- ``pixel_size_um`` (float64, null when unknown; schema version 3): side of a square pixel in
  µm, from the image's metadata (:func:`neuroseg.imagemeta.image_meta`) or a size the user
  gave; never guessed. ``area_um2`` (``area_px * pixel_size_um**2``), ``perimeter_um``,
  ``centroid_x_um``, ``centroid_y_um``, ``major_axis_length_um``, ``minor_axis_length_um``
  (the pixel columns times ``pixel_size_um``; the centroid's origin is the top-left pixel's
  centre): null where the size is unknown.
- ``model_name``, ``model_version`` (string), ``processed_at`` (timestamp[us, UTC]),
  ``flow_run_id`` (string, null outside a flow run): lineage.
- Per channel ``<ch>`` of the image (schema version 3), in the image's own units over the
  cell's pixels: ``mean_intensity_<ch>``, ``integrated_intensity_<ch>`` (the sum) and
  ``max_intensity_<ch>`` (float64). ``<ch>`` is the channel's OME name in lower case with every
  run of other characters than ``a-z0-9`` replaced by ``_`` (``"c-Fos"`` -> ``c_fos``) when the
  file names every channel distinctly, else ``c0``, ``c1``, ... (:func:`channel_labels`).
  Images with other channels write other columns: read a table of several with
  :func:`neuroseg.inference.read_cells`, which unifies them (null where an image lacks a
  channel) and reads version-2 files with null µm columns.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from neuroseg.masks import analyze_labels
from neuroseg.shapes import shape_table

__all__ = [
    "CELL_COLUMNS",
    "CELL_SCHEMA",
    "CHANNEL_MEASURES",
    "SCHEMA_VERSION",
    "UM_COLUMNS",
    "cell_records",
    "cell_schema",
    "channel_columns",
    "channel_labels",
    "table_schema",
    "to_arrow",
]

SCHEMA_VERSION = 3

_TS = pa.timestamp("us", tz="UTC")
_FIELDS = [
    ("plate_id", pa.string()),
    ("image_id", pa.string()),
    ("image_uri", pa.string()),
    ("image_sha256", pa.string()),
    ("cell_id", pa.int32()),
    ("centroid_x", pa.float64()),
    ("centroid_y", pa.float64()),
    ("bbox_x", pa.int32()),
    ("bbox_y", pa.int32()),
    ("bbox_width", pa.int32()),
    ("bbox_height", pa.int32()),
    ("area_px", pa.int64()),
    ("mean_intensity", pa.float64()),
    ("mean_probability", pa.float64()),
    ("touches_border", pa.bool_()),
    ("perimeter", pa.float64()),
    ("major_axis_length", pa.float64()),
    ("minor_axis_length", pa.float64()),
    ("eccentricity", pa.float64()),
    ("solidity", pa.float64()),
    ("orientation", pa.float64()),
    ("pixel_size_um", pa.float64()),
    ("area_um2", pa.float64()),
    ("perimeter_um", pa.float64()),
    ("centroid_x_um", pa.float64()),
    ("centroid_y_um", pa.float64()),
    ("major_axis_length_um", pa.float64()),
    ("minor_axis_length_um", pa.float64()),
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("processed_at", _TS),
    ("flow_run_id", pa.string()),
]
#: The µm columns (schema version 3): null where the pixel size is unknown.
UM_COLUMNS: tuple[str, ...] = (
    "pixel_size_um",
    "area_um2",
    "perimeter_um",
    "centroid_x_um",
    "centroid_y_um",
    "major_axis_length_um",
    "minor_axis_length_um",
)
_NULLABLE = {"flow_run_id", "mean_probability", *UM_COLUMNS}

#: The core column names of the per-cell record, in order (channel columns follow them).
CELL_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _FIELDS)

#: The three per-channel measures, each a column ``<measure>_<channel label>``.
CHANNEL_MEASURES: tuple[str, ...] = ("mean_intensity", "integrated_intensity", "max_intensity")
_CHANNEL_COLUMN = re.compile(r"^(mean|integrated|max)_intensity_[0-9a-z_]+$")
_LABEL = re.compile(r"^[0-9a-z]+(_[0-9a-z]+)*$")


def channel_columns(label: str) -> list[str]:
    """The three column names of one channel: ``mean_intensity_<label>``, ...."""
    if not isinstance(label, str) or not _LABEL.match(label):
        raise ValueError(f"channel label must be lower-case a-z0-9 words joined by _: {label!r}")
    return [f"{m}_{label}" for m in CHANNEL_MEASURES]


def channel_labels(names: Sequence[str] | None, n: int) -> list[str]:
    """Column labels of an image's `n` channels.

    The channel names in lower case, every run of characters other than ``a-z0-9`` replaced
    by ``_`` and trimmed (``"NeuN 488"`` -> ``neun_488``), when there is one name per channel
    and the labels are distinct and non-empty; else ``c0``, ``c1``, ... .
    """
    fallback = [f"c{i}" for i in range(n)]
    if names is None or len(names) != n:
        return fallback
    labels = [re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_") for name in names]
    if not all(labels) or len(set(labels)) != n:
        return fallback
    return labels


def cell_schema(channels: Sequence[str] = ()) -> pa.Schema:
    """The per-cell schema of an image whose channel labels are `channels`: the core columns
    of :data:`CELL_SCHEMA`, then :func:`channel_columns` of each channel (float64)."""
    extra = [pa.field(c, pa.float64()) for label in channels for c in channel_columns(label)]
    return pa.schema(
        [pa.field(name, typ, nullable=name in _NULLABLE) for name, typ in _FIELDS] + extra,
        metadata={"neuroseg.schema_version": str(SCHEMA_VERSION)},
    )


#: The published core per-cell schema (pyarrow), with ``neuroseg.schema_version`` in its
#: metadata; :func:`cell_schema` adds an image's channel columns.
CELL_SCHEMA: pa.Schema = cell_schema()

_STRING_COLUMNS = [n for n, t in _FIELDS if t == pa.string()]
_PANDAS_DTYPES = {
    **{n: "str" for n in _STRING_COLUMNS},
    **{n: "int32" for n, t in _FIELDS if t == pa.int32()},
    **{n: "int64" for n, t in _FIELDS if t == pa.int64()},
    **{n: "float64" for n, t in _FIELDS if t == pa.float64()},
    "touches_border": "bool",
    "processed_at": "datetime64[us, UTC]",
}

_SHAPE_PROPS = {
    "perimeter": "perimeter",
    "axis_major_length": "major_axis_length",
    "axis_minor_length": "minor_axis_length",
    "eccentricity": "eccentricity",
    "solidity": "solidity",
    "orientation": "orientation",
}


def _utc(value) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"processed_at: not a timestamp: {value!r}") from exc
    if ts is pd.NaT:
        raise ValueError("processed_at must not be missing")
    if ts.tzinfo is None:
        raise ValueError(
            f"processed_at must be timezone-aware (e.g. datetime.now(timezone.utc)), got {value!r}"
        )
    return ts.tz_convert("UTC").as_unit("us").floor("us")


def _shape_columns(labels: np.ndarray, n: int) -> dict[str, np.ndarray]:
    # regionprops' definitions, computed for all cells at once (see neuroseg.shapes)
    props = shape_table(labels, n)
    return {new: np.asarray(props[old], dtype=np.float64) for old, new in _SHAPE_PROPS.items()}


def cell_records(
    labels: np.ndarray,
    image: np.ndarray,
    prob: np.ndarray | None,
    *,
    plate_id: str,
    image_id: str,
    image_uri: str,
    image_sha256: str,
    model_name: str,
    model_version: str,
    processed_at: dt.datetime | pd.Timestamp | str,
    flow_run_id: str | None = None,
    pixel_size_um: float | None = None,
    channel_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Measure every labelled cell of one image as a per-cell record.

    Parameters
    ----------
    labels : (H, W) integer array
        Cell labels ``1..n`` (0 = background), every label present, e.g. from
        :func:`neuroseg.predict.segment`.
    image : (H, W[, C]) array
        The decoded image in its own dtype and units (for ``mean_intensity``), e.g. from
        ``neuroseg.images.decode_native``.
    prob : (H, W) float array or None
        The cell probability map (for ``mean_probability``; NaN when None).
    plate_id, image_id, image_uri, image_sha256, model_name, model_version : str
        Identity and lineage, repeated on every row.
    processed_at : timezone-aware datetime, pandas Timestamp or ISO string with offset
        Stored in UTC with microsecond precision.
    flow_run_id : str or None
        Prefect flow run id (null outside a flow run).
    pixel_size_um : float or None
        Side of a square pixel in µm (e.g. :func:`neuroseg.imagemeta.image_meta`); None leaves
        the µm columns null.
    channel_names : sequence of str or None
        The image's channel names (one per channel, e.g. OME's); they name the per-channel
        columns through :func:`channel_labels` (None: ``c0``, ``c1``, ...).

    Returns
    -------
    pandas.DataFrame
        One row per cell in label order, columns :data:`CELL_COLUMNS` then the
        :func:`channel_columns` of each channel, with the dtypes of :func:`cell_schema`
        (strings ``str``, ``processed_at`` ``datetime64[us, UTC]``). An image without cells
        gives an empty frame with the same columns and dtypes.
    """
    labels = np.asarray(labels)
    image = np.asarray(image)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 2-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if image.ndim == 2:
        image = image[..., None]
    if (
        image.ndim != 3
        or image.shape[:2] != labels.shape
        or image.shape[2] < 1
        or image.dtype.kind not in "uif"
    ):
        raise ValueError(
            f"image must be ({labels.shape[0]}, {labels.shape[1]}[, C]) of a real dtype like "
            f"the labels, got shape {image.shape} dtype {image.dtype}"
        )
    if prob is not None:
        prob = np.asarray(prob)
        if prob.shape != labels.shape:
            raise ValueError(f"prob shape {prob.shape} differs from labels shape {labels.shape}")
    for key, value in (
        ("plate_id", plate_id),
        ("image_id", image_id),
        ("image_uri", image_uri),
        ("image_sha256", image_sha256),
        ("model_name", model_name),
        ("model_version", model_version),
    ):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    if flow_run_id is not None and not isinstance(flow_run_id, str):
        raise ValueError(f"flow_run_id must be a string or None, got {flow_run_id!r}")
    if pixel_size_um is not None and not (
        isinstance(pixel_size_um, int | float | np.floating)
        and not isinstance(pixel_size_um, bool)
        and np.isfinite(pixel_size_um)
        and pixel_size_um > 0
    ):
        raise ValueError(f"pixel_size_um must be a positive number or None, got {pixel_size_um!r}")
    ts = _utc(processed_at)

    base = analyze_labels(labels)
    n = int(base["cell_id"].size)
    if n and not np.array_equal(base["cell_id"], np.arange(1, n + 1)):
        raise ValueError(
            "labels must be numbered 1..n without gaps "
            "(relabel with skimage.segmentation.relabel_sequential)"
        )
    # sums over the cells' pixels only (a plate is mostly background); bincount adds each
    # cell's pixels in the same order as over the whole image, so the sums are the same
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    cells = flat[inside]
    area = base["area_px"].astype(np.float64)
    channels = image.shape[2]
    values = image.reshape(-1, channels)[inside]
    channel_sum = values.sum(axis=1, dtype=np.float64)
    intensity = np.bincount(cells, weights=channel_sum, minlength=n + 1)[1 : n + 1] / (
        channels * area
    )
    if prob is None:
        mean_prob = np.full(n, np.nan)
    else:
        p = prob.ravel()[inside].astype(np.float64)
        mean_prob = np.bincount(cells, weights=p, minlength=n + 1)[1 : n + 1] / area
    shapes = _shape_columns(labels, n)
    per_channel = _channel_columns(values, cells, n, area, channel_labels(channel_names, channels))

    columns = {
        "plate_id": [plate_id] * n,
        "image_id": [image_id] * n,
        "image_uri": [image_uri] * n,
        "image_sha256": [image_sha256] * n,
        "cell_id": base["cell_id"],
        "centroid_x": base["centroid_x"],
        "centroid_y": base["centroid_y"],
        "bbox_x": base["bbox_x"],
        "bbox_y": base["bbox_y"],
        "bbox_width": base["bbox_width"],
        "bbox_height": base["bbox_height"],
        "area_px": base["area_px"],
        "mean_intensity": intensity,
        "mean_probability": mean_prob,
        "touches_border": base["touches_border"],
        **shapes,
        **_um_columns(base, shapes, n, pixel_size_um),
        "model_name": [model_name] * n,
        "model_version": [model_version] * n,
        "processed_at": pd.DatetimeIndex([ts] * n, dtype="datetime64[us, UTC]"),
        "flow_run_id": [flow_run_id] * n,
    }
    frame = {name: pd.Series(columns[name], dtype=_PANDAS_DTYPES[name]) for name in CELL_COLUMNS}
    frame.update({k: pd.Series(v, dtype="float64") for k, v in per_channel.items()})
    return pd.DataFrame(frame)


def _um_columns(base: dict, shapes: dict, n: int, size: float | None) -> dict[str, np.ndarray]:
    """The µm columns: pixel columns times the pixel size (area times its square); NaN
    (null in Parquet) when the size is unknown."""
    if size is None:
        return {name: np.full(n, np.nan) for name in UM_COLUMNS}
    size = float(size)
    return {
        "pixel_size_um": np.full(n, size),
        "area_um2": base["area_px"].astype(np.float64) * size * size,
        "perimeter_um": shapes["perimeter"] * size,
        "centroid_x_um": np.asarray(base["centroid_x"], dtype=np.float64) * size,
        "centroid_y_um": np.asarray(base["centroid_y"], dtype=np.float64) * size,
        "major_axis_length_um": shapes["major_axis_length"] * size,
        "minor_axis_length_um": shapes["minor_axis_length"] * size,
    }


def _channel_columns(
    values: np.ndarray, cells: np.ndarray, n: int, area: np.ndarray, labels: list[str]
) -> dict[str, np.ndarray]:
    """Mean, integrated (sum) and maximum of each channel over each cell's pixels.

    ``values`` is ``(pixels inside cells, C)`` in the image's units and ``cells`` their labels
    (every label 1..n present)."""
    out: dict[str, np.ndarray] = {}
    if n:
        order = np.argsort(cells, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(cells[order]) != 0])
    for c, label in enumerate(labels):
        mean_col, sum_col, max_col = channel_columns(label)
        if not n:
            out[mean_col] = out[sum_col] = out[max_col] = np.zeros(0)
            continue
        v = values[:, c].astype(np.float64)
        total = np.bincount(cells, weights=v, minlength=n + 1)[1 : n + 1]
        out[mean_col] = total / area
        out[sum_col] = total
        out[max_col] = np.maximum.reduceat(v[order], starts)
    return out


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """Convert per-cell records to a :class:`pyarrow.Table` with exactly :func:`cell_schema`
    of their channel columns (:data:`CELL_SCHEMA` when there are none).

    Raises
    ------
    ValueError
        When core columns are missing, a column is neither a core nor a channel column, or a
        value does not fit its type.
    """
    missing = [c for c in CELL_COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in CELL_COLUMNS and not _CHANNEL_COLUMN.match(c)]
    if missing or extra:
        raise ValueError(f"per-cell records: missing columns {missing}, unexpected {extra}")
    channel_cols = [c for c in df.columns if c not in CELL_COLUMNS]
    schema = pa.schema(
        list(CELL_SCHEMA) + [pa.field(c, pa.float64()) for c in channel_cols],
        metadata=CELL_SCHEMA.metadata,
    )
    try:
        table = pa.Table.from_pandas(
            df[[*CELL_COLUMNS, *channel_cols]], schema=schema, preserve_index=False, safe=True
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as exc:
        raise ValueError(f"per-cell records do not fit the schema: {exc}") from exc
    return table.replace_schema_metadata(schema.metadata)


def table_schema(file_schemas: Sequence[pa.Schema]) -> pa.Schema:
    """One schema for a cell table whose files hold different columns (hive partitions).

    The core columns of :data:`CELL_SCHEMA` without ``plate_id`` (the partition) in their
    order, then every channel column found in `file_schemas` (float64, in order of first
    appearance), then ``plate_id`` (string). Reading with it gives nulls where a file lacks
    a column: a version-2 file has no µm and no channel columns, an image no column of
    another image's channels.
    """
    core = [f for f in CELL_SCHEMA if f.name != "plate_id"]
    seen = {f.name for f in CELL_SCHEMA}
    extra = []
    for schema in file_schemas:
        for name in schema.names:
            if name not in seen and _CHANNEL_COLUMN.match(name):
                seen.add(name)
                extra.append(pa.field(name, pa.float64()))
    return pa.schema(
        [*core, *extra, pa.field("plate_id", pa.string())], metadata=CELL_SCHEMA.metadata
    )
