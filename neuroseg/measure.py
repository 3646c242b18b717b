"""The published per-cell record: one row per detected cell (light; no TensorFlow).

:data:`CELL_SCHEMA` is a published schema: a change to its column names or types is a versioned
change (bump :data:`SCHEMA_VERSION`, stored in the schema metadata as
``neuroseg.schema_version``).

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
- ``model_name``, ``model_version`` (string), ``processed_at`` (timestamp[us, UTC]),
  ``flow_run_id`` (string, null outside a flow run): lineage.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from neuroseg.masks import analyze_labels
from neuroseg.shapes import shape_table

__all__ = ["CELL_COLUMNS", "CELL_SCHEMA", "SCHEMA_VERSION", "cell_records", "to_arrow"]

SCHEMA_VERSION = 2

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
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("processed_at", _TS),
    ("flow_run_id", pa.string()),
]
_NULLABLE = {"flow_run_id", "mean_probability"}

#: Column names of the per-cell record, in order.
CELL_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _FIELDS)

#: The published per-cell schema (pyarrow), with ``neuroseg.schema_version`` in its metadata.
CELL_SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, typ, nullable=name in _NULLABLE) for name, typ in _FIELDS],
    metadata={"neuroseg.schema_version": str(SCHEMA_VERSION)},
)

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

    Returns
    -------
    pandas.DataFrame
        One row per cell in label order, columns :data:`CELL_COLUMNS` with the dtypes of
        :data:`CELL_SCHEMA` (strings ``str``, ``processed_at`` ``datetime64[us, UTC]``). An
        image without cells gives an empty frame with the same columns and dtypes.
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
    channel_sum = image.reshape(-1, channels)[inside].sum(axis=1, dtype=np.float64)
    intensity = np.bincount(cells, weights=channel_sum, minlength=n + 1)[1 : n + 1] / (
        channels * area
    )
    if prob is None:
        mean_prob = np.full(n, np.nan)
    else:
        p = prob.ravel()[inside].astype(np.float64)
        mean_prob = np.bincount(cells, weights=p, minlength=n + 1)[1 : n + 1] / area

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
        **_shape_columns(labels, n),
        "model_name": [model_name] * n,
        "model_version": [model_version] * n,
        "processed_at": pd.DatetimeIndex([ts] * n, dtype="datetime64[us, UTC]"),
        "flow_run_id": [flow_run_id] * n,
    }
    return pd.DataFrame(
        {name: pd.Series(columns[name], dtype=_PANDAS_DTYPES[name]) for name in CELL_COLUMNS}
    )


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """Convert per-cell records to a :class:`pyarrow.Table` with exactly :data:`CELL_SCHEMA`.

    Raises
    ------
    ValueError
        When columns are missing or extra, or a value does not fit its type.
    """
    missing = [c for c in CELL_COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in CELL_COLUMNS]
    if missing or extra:
        raise ValueError(f"per-cell records: missing columns {missing}, unexpected {extra}")
    try:
        table = pa.Table.from_pandas(
            df[list(CELL_COLUMNS)], schema=CELL_SCHEMA, preserve_index=False, safe=True
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as exc:
        raise ValueError(f"per-cell records do not fit the schema: {exc}") from exc
    return table.replace_schema_metadata(CELL_SCHEMA.metadata)
