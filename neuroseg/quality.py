"""Image quality per image: focus, saturation, empty field (light; no TensorFlow).

Measures, on the image as decoded (:func:`neuroseg.images.decode_native`, ``(H, W, C)`` in the
file's own dtype):

- ``focus_score``: the variance of the Laplacian of Gaussian (sigma 1 px) of the grey plane
  (the maximum over channels) normalised between its 1st and 99.8th percentiles, so it does
  not depend on the bit depth or the exposure. A sharp image has strong fine edges; defocus
  or motion blur removes them. The sigma of 1 px keeps the camera's pixel noise, which blur
  in the optics does not remove, from counting as detail. CellProfiler's
  MeasureImageQuality reports the plain variance of the Laplacian ("FocusScore") and the
  power spectrum's slope; this is the former made independent of scale and noise.
- ``saturated_fraction``: the largest fraction, over channels, of pixels at the sensor's full
  scale: 255 for 8-bit, 4095 / 16383 / 65535 for 16-bit files whose maximum is one of those
  (12-, 14- and 16-bit cameras). A channel whose maximum is below full scale has none; float
  images have none (no full scale).
- ``empty``: the model found no cell in the image.

The focus score depends on what the image shows (dense small nuclei score 10x higher than a
few large neurons), so no single number tells a blurred image everywhere: as CellProfiler
users do, an image is ``out_of_focus`` when its score is below ``focus_relative`` (0.35) times
the median of its plate (plates of at least ``min_plate_images`` images; smaller ones get no
focus flag). ``saturated`` is absolute: more than ``max_saturated`` (0.5 %) of the pixels at
full scale. :func:`plate_flags` applies both; the thresholds (:data:`THRESHOLDS`) were chosen
on real images and blurred / saturated copies of them (README, "Image quality").

The per-image table (:data:`IMAGE_SCHEMA`, one Parquet file per image under
``<root>/images/plate_id=<id>/``) stores the measures and the absolute flags; the plate-relative
``out_of_focus`` is computed when it is read (:func:`read_image_table`), since it changes as
a plate's images arrive.

Schema versions (``neuroseg.image_schema_version`` in each file's metadata): 1, the columns
above; 2 (issue 26) adds ``confidence``, how sure the model is of the image's segmentation
(:func:`neuroseg.confidence.image_confidence`, 0..1; ``neuroseg review`` shows the least
confident first). :func:`read_image_table` reads files of both versions as one table
(``confidence`` null in version-1 rows).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "IMAGE_COLUMNS",
    "IMAGE_SCHEMA",
    "IMAGE_SCHEMA_VERSION",
    "THRESHOLDS",
    "focus_score",
    "image_quality",
    "image_record",
    "plate_flags",
    "read_image_table",
    "saturated_fraction",
    "write_image_record",
]

#: Flag thresholds: ``out_of_focus`` below ``focus_relative`` x the plate's median focus (for
#: plates of at least ``min_plate_images``); ``saturated`` above ``max_saturated`` (a fraction
#: of the pixels at full scale).
THRESHOLDS = {"focus_relative": 0.35, "min_plate_images": 3, "max_saturated": 0.005}

_FULL_SCALES_16 = (4095, 16383, 65535)


def _grey(image: np.ndarray) -> np.ndarray:
    from neuroseg.normalize import channel_max

    return channel_max(image)


def focus_score(image: np.ndarray) -> float:
    """Variance of the Laplacian of Gaussian (sigma 1) of the normalised grey plane.

    Parameters
    ----------
    image : (H, W[, C]) array of a real dtype

    Returns
    -------
    float
        0 for a flat image; larger for sharper images and for more, smaller objects (2e-5
        on the real FNC samples, 1e-4 to 5e-4 on BBBC039 and DSB 2018 nuclei; README).
    """
    from scipy import ndimage

    grey = _grey(image).astype(np.float32)  # float32: the same score to 1e-6, 1.3x faster
    lo, hi = np.percentile(grey, [1.0, 99.8])
    if not hi > lo:
        return 0.0
    x = np.clip((grey - lo) / (hi - lo), 0.0, 1.0)
    return float(np.var(ndimage.gaussian_laplace(x, sigma=1.0), dtype=np.float64))


def saturated_fraction(image: np.ndarray) -> float:
    """Largest fraction over channels of pixels at the sensor's full scale (see the module)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype == np.uint8:
        scales = (255,)
    elif image.dtype == np.uint16:
        scales = _FULL_SCALES_16
    else:
        return 0.0
    worst = 0.0
    for c in range(image.shape[2]):
        plane = image[..., c]
        top = int(plane.max()) if plane.size else 0
        if top in scales:
            worst = max(worst, float(np.count_nonzero(plane == top)) / plane.size)
    return worst


def image_quality(image: np.ndarray, *, cells: int) -> dict:
    """``{"focus_score", "saturated_fraction", "saturated", "empty"}`` of one decoded image
    whose segmentation found `cells` cells."""
    sat = saturated_fraction(image)
    return {
        "focus_score": focus_score(image),
        "saturated_fraction": sat,
        "saturated": sat > THRESHOLDS["max_saturated"],
        "empty": int(cells) == 0,
    }


_FIELDS = [
    ("plate_id", pa.string()),
    ("image_id", pa.string()),
    ("image_uri", pa.string()),
    ("image_sha256", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("channels", pa.int32()),
    ("dtype", pa.string()),
    ("pixel_size_um", pa.float64()),
    ("cells", pa.int64()),
    ("focus_score", pa.float64()),
    ("saturated_fraction", pa.float64()),
    ("saturated", pa.bool_()),
    ("empty", pa.bool_()),
    ("confidence", pa.float64()),
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("processed_at", pa.timestamp("us", tz="UTC")),
    ("flow_run_id", pa.string()),
]
_NULLABLE = {"pixel_size_um", "flow_run_id", "confidence"}

#: Version of the per-image table's schema (2: ``confidence`` added; see the module).
IMAGE_SCHEMA_VERSION = 2

#: Columns of the per-image table, in order.
IMAGE_COLUMNS: tuple[str, ...] = tuple(n for n, _ in _FIELDS)

#: The per-image table's schema (one file per image; ``plate_id`` is the hive partition).
IMAGE_SCHEMA: pa.Schema = pa.schema(
    [pa.field(n, t, nullable=n in _NULLABLE) for n, t in _FIELDS],
    metadata={"neuroseg.image_schema_version": str(IMAGE_SCHEMA_VERSION)},
)


def image_record(
    image: np.ndarray,
    *,
    cells: int,
    plate_id: str,
    image_id: str,
    image_uri: str,
    image_sha256: str,
    pixel_size_um: float | None,
    model_name: str,
    model_version: str,
    processed_at: dt.datetime,
    flow_run_id: str | None = None,
    confidence: float | None = None,
) -> dict:
    """One row of the per-image table: identity, size, cells, :func:`image_quality` and the
    model's ``confidence`` in its segmentation (:mod:`neuroseg.confidence`; None: unknown)."""
    image = np.asarray(image)
    return {
        "plate_id": plate_id,
        "image_id": image_id,
        "image_uri": image_uri,
        "image_sha256": image_sha256,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "channels": int(image.shape[2]) if image.ndim == 3 else 1,
        "dtype": str(image.dtype),
        "pixel_size_um": None if pixel_size_um is None else float(pixel_size_um),
        "cells": int(cells),
        **image_quality(image, cells=cells),
        "confidence": None if confidence is None else float(confidence),
        "model_name": model_name,
        "model_version": model_version,
        "processed_at": pd.Timestamp(processed_at).tz_convert("UTC"),
        "flow_run_id": flow_run_id,
    }


def write_image_record(record: dict, uri: str) -> None:
    """Write one image's row (without ``plate_id``, the partition) atomically to `uri`."""
    import io

    import pyarrow.parquet as pq

    from neuroseg import storage

    table = pa.Table.from_pylist([record], schema=IMAGE_SCHEMA).drop_columns(["plate_id"])
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


def plate_flags(images: pd.DataFrame, *, thresholds: dict | None = None) -> pd.DataFrame:
    """Add ``focus_relative``, ``out_of_focus`` and ``quality_flags`` to per-image rows.

    ``focus_relative`` is an image's focus score over the median of its plate's
    (``plate_id``); ``out_of_focus`` is ``focus_relative < focus_relative`` threshold on plates
    of at least ``min_plate_images`` images (False elsewhere: too few to compare);
    ``quality_flags`` joins ``out_of_focus``, ``saturated`` and ``empty`` with ``;`` ("" when good).
    """
    t = {**THRESHOLDS, **(thresholds or {})}
    out = images.copy()
    plate = out["plate_id"].astype(str)
    median = out.groupby(plate)["focus_score"].transform("median")
    size = out.groupby(plate)["focus_score"].transform("size")
    out["focus_relative"] = np.where(median > 0, out["focus_score"] / median, np.nan)
    out["out_of_focus"] = (size >= t["min_plate_images"]) & (
        out["focus_relative"] < t["focus_relative"]
    )
    out["saturated"] = out["saturated_fraction"] > t["max_saturated"]
    names = ("out_of_focus", "saturated", "empty")
    out["quality_flags"] = [
        ";".join(n for n, v in zip(names, row, strict=True) if bool(v))
        for row in out[list(names)].itertuples(index=False)
    ]
    return out


def read_image_table(images_uri: str, **kw) -> pd.DataFrame:
    """Read the per-image table (``<root>/images``) with :func:`plate_flags` applied over each
    whole plate (``filters`` on ``plate_id`` keep whole plates). Empty when there is none.

    Files of every schema version are read with the current schema (a column a file lacks,
    such as version 1's ``confidence``, reads as null)."""
    from neuroseg import storage

    if not storage.exists(images_uri) or not storage.list_files(images_uri, suffixes=".parquet"):
        empty = pd.DataFrame({n: pd.Series(dtype="object") for n in IMAGE_COLUMNS})
        return plate_flags(
            empty.astype({"focus_score": float, "saturated_fraction": float, "confidence": float})
        )
    fields = [f.with_nullable(True) for f in IMAGE_SCHEMA if f.name != "plate_id"]
    schema = pa.schema([*fields, pa.field("plate_id", pa.string())])
    df = storage.read_parquet(images_uri, schema=schema, **kw)
    df["plate_id"] = df["plate_id"].astype(str)
    return plate_flags(df)
