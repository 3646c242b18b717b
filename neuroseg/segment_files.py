"""Segment a few image files into one per-cell Parquet file (``neuroseg segment``).

The ad-hoc counterpart of the nightly run: no storage root, no manifests, no Prefect. The model
is loaded once, every image is decoded, predicted tile by tile, segmented and measured, and all
cells go into ONE Parquet file with the published per-cell schema
(:data:`neuroseg.measure.CELL_SCHEMA`), written atomically. A file that cannot be read or
decoded is reported on stderr in one line and skipped; the other images go on.

Importing this module is light; TensorFlow comes in when the model is loaded.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import sys
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from neuroseg import storage
from neuroseg.imagemeta import image_meta
from neuroseg.images import decode_native, encode_labels
from neuroseg.measure import CELL_COLUMNS, cell_records, to_arrow
from neuroseg.predict import segment_image
from neuroseg.progress import Progress

__all__ = ["load_bundle", "segment_files"]

_PRECISIONS = ("fp32", "bf16")


def load_bundle(
    model: Any = "default",
    *,
    precision: str = "fp32",
    tta: str | None = None,
    backend: str = "auto",
):
    """The model bundle ``segment_files`` uses.

    Parameters
    ----------
    model : str or bundle
        ``"default"`` (the model shipped in the package, see
        :func:`neuroseg.registry.default_model_uri`), the name of another shipped model
        (``"nuclei"``: :func:`neuroseg.registry.shipped_model_uri`), a model folder URI (local
        or ``s3://``, with ``config.json`` and ``model.keras`` or ``model.onnx``),
        ``bioimageio:FILE.zip`` (a bioimage.io package neuroseg exported), or an already
        loaded bundle (anything with
        ``predict_tiles``, ``config``, ``name`` and ``version``, e.g. a
        :class:`neuroseg.registry.ModelBundle`), returned as is.
    precision : {"fp32", "bf16"}
        Numeric precision of a model loaded here.
    tta : {"none", "flip2", "flips"} or None
        Test-time augmentation (:data:`neuroseg.predict.TTA_MODES`); None: the model's own. A
        loaded bundle given as ``model`` is used as it is.
    backend : {"auto", "tf", "onnx"}
        What runs the network (:data:`neuroseg.registry.BACKENDS`).

    Returns
    -------
    ServingBundle
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if not isinstance(model, str):
        missing = [
            a for a in ("predict_tiles", "config", "name", "version") if not hasattr(model, a)
        ]
        if missing:
            raise ValueError(
                f"model must be 'default', a model folder URI or a loaded bundle; "
                f"{type(model).__name__} lacks {', '.join(missing)}"
            )
        return model
    from neuroseg import registry

    if not model:
        raise ValueError("model must be 'default' or a model folder URI, got ''")
    how = {"precision": precision, "tta": tta, "backend": backend}
    if model == "default":
        return registry.load_default_model(**how)
    if model.startswith(registry.BIOIMAGEIO_PREFIX):
        return registry.load_model(registry.resolve_model_uri("", model), **how)
    if "/" not in model and os.sep not in model and not os.path.exists(model):
        shipped = registry.shipped_model_uri(model)  # a shipped model's name, e.g. "nuclei"
        if os.path.exists(os.path.join(shipped, "config.json")):
            return registry.load_model(shipped, **how)
    return registry.load_model(model, **how)


def _normalise_uri(uri: str) -> str:
    """Local paths become absolute (the table records where a file was); URIs stay as given."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


def _plate_id(uri: str) -> str:
    """The name of the folder holding the file; "" at a filesystem or bucket root."""
    if "://" in uri:
        parts = uri.split("://", 1)[1].split("/")[1:]  # drop the bucket
        return parts[-2] if len(parts) >= 2 else ""
    return PurePosixPath(uri.replace(os.sep, "/")).parent.name


def _stem(uri: str) -> str:
    return PurePosixPath(uri.replace(os.sep, "/")).stem


def _one_line(uri: str, exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if text.startswith(uri) else f"{uri}: {text}"


def _check_args(images, out, threshold, watershed) -> list[str]:
    if isinstance(images, str) or not isinstance(images, list | tuple):
        raise ValueError("images must be a list of image paths or URIs")
    if not images:
        raise ValueError("no images given: pass one or more image files")
    bad = [x for x in images if not isinstance(x, str) or not x]
    if bad:
        raise ValueError(f"image paths must be non-empty strings, got {bad[0]!r}")
    if not isinstance(out, str) or not out or out.endswith(("/", os.sep)):
        raise ValueError(f"out must name a file such as cells.parquet, got {out!r}")
    if storage.is_local(out) and os.path.isdir(_normalise_uri(out)):
        raise ValueError(f"{out}: is a folder; out must name a file such as cells.parquet")
    if threshold is not None and not (
        isinstance(threshold, int | float) and 0.0 <= float(threshold) < 1.0
    ):
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    if not isinstance(watershed, bool):
        raise ValueError(f"watershed must be True or False, got {watershed!r}")
    uris: list[str] = []
    for uri in map(_normalise_uri, images):
        if uri not in uris:  # the same file twice would duplicate its cells
            uris.append(uri)
    return uris


def segment_files(
    images: list[str],
    *,
    out: str,
    model: Any = "default",
    threshold: float | None = None,
    watershed: bool = False,
    precision: str = "fp32",
    channel: int | None = None,
    labels: str | None = None,
    tta: str | None = None,
    pixel_size_um: float | None = None,
    backend: str = "auto",
) -> pd.DataFrame:
    """Segment image files and write all their cells to one Parquet file.

    Parameters
    ----------
    images : list of str
        Image files (PNG or TIFF; local paths, ``file://`` or ``s3://`` URIs). Local paths are
        recorded as absolute paths in ``image_uri``; a file named twice is processed once.
    out : str
        Output Parquet file (local or ``s3://``), written atomically with
        :data:`neuroseg.measure.CELL_SCHEMA` (zstd compression); replaced if it exists.
    model : str or bundle
        ``"default"`` (the shipped model), a model folder URI, or a loaded bundle
        (see :func:`load_bundle`). Loaded once for all images.
    threshold : float or None
        Cell probability threshold (a pixel is cell when ``prob > threshold``); None uses the
        model's ``config["threshold"]`` (0.5 when absent).
    watershed : bool
        True splits touching cells (:func:`neuroseg.predict.segment`); False keeps the model's
        ``config["watershed"]`` setting (off when absent). ``min_area`` always comes from the
        model's config (0 when absent).
    precision : {"fp32", "bf16"}
        Precision of a model loaded from a URI.
    channel : int, optional
        Channel (0-based) of multi-channel images to segment; default: the model's declared
        input (:mod:`neuroseg.normalize`: grey models take the maximum over channels).
    labels : str, optional
        Folder (local or ``s3://``) for one label image per input, ``<stem>.png`` (16-bit; a
        32-bit ``<stem>.tif`` above 65,535 cells), pixel value = the table's ``cell_id``.
    tta : {"none", "flip2", "flips"} or None
        Test-time augmentation of a model loaded here (:data:`neuroseg.predict.TTA_MODES`:
        averaged flipped predictions, 2 or 4 times the prediction time); None: the model's own.
    pixel_size_um : float, optional
        Pixel size in µm of every image, winning over the files' own metadata; default: each
        file's (:func:`neuroseg.imagemeta.image_meta`), else the µm columns are null.
    backend : {"auto", "tf", "onnx"}
        What runs a model loaded here (:data:`neuroseg.registry.BACKENDS`; auto: ONNX Runtime
        when the model has ``model.onnx`` and it is installed).

    Returns
    -------
    pandas.DataFrame
        The rows written: one per cell, columns :data:`neuroseg.measure.CELL_COLUMNS` then
        the channel columns of every image (``mean_intensity_<ch>`` ...; null for an image
        without that channel), images in the order given; ``attrs["images"]`` counts the
        images processed (with or without cells), ``attrs["failed"]`` those skipped.
        ``plate_id`` is the name of the folder holding the image ("" at a filesystem or
        bucket root), ``image_id`` the file stem, ``image_sha256`` the hash of the file's
        bytes, ``processed_at`` the UTC time the image was done, ``flow_run_id`` null.

    Raises
    ------
    ValueError
        Invalid arguments, or none of the images could be processed (each failure is also
        reported on stderr as one line naming the file and the reason).
    neuroseg.registry.ModelNotFoundError
        The model folder (or the shipped model) does not exist.
    """
    uris = _check_args(images, out, threshold, watershed)
    if pixel_size_um is not None and (
        isinstance(pixel_size_um, bool)
        or not isinstance(pixel_size_um, int | float)
        or not 0 < pixel_size_um < float("inf")
    ):
        raise ValueError(f"pixel_size_um must be a positive number of µm, got {pixel_size_um!r}")
    stems = [_stem(u) for u in uris]
    if labels is not None:
        if not isinstance(labels, str) or not labels:
            raise ValueError(f"labels must name a folder, got {labels!r}")
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise ValueError(
                f"two input images share the name {twice[0]!r}: their label images would "
                "overwrite each other; segment them in separate calls"
            )
    bundle = load_bundle(model, precision=precision, tta=tta, backend=backend)

    frames, failed = [], []
    progress = Progress("segment", len(uris), unit="images")
    for uri, stem in progress.track(zip(uris, stems, strict=True)):
        try:
            data = storage.read_bytes(uri)
            image = decode_native(data, name=uri)
            if channel is not None and not 0 <= channel < image.shape[2]:
                raise ValueError(f"has {image.shape[2]} channel(s), --channel {channel} asked")
        except (OSError, ValueError) as exc:  # missing, unreadable, corrupt, not an image
            failed.append(uri)
            print(f"neuroseg segment: skipped {_one_line(uri, exc)}", file=sys.stderr)
            continue
        label_image, _, prob = segment_image(
            bundle, image, channel=channel, threshold=threshold, watershed=watershed or None
        )
        if labels is not None:
            data_out, suffix = encode_labels(label_image)
            storage.write_bytes(storage.join(labels, stem + suffix), data_out)
        plate = _plate_id(uri)
        meta = image_meta(data)
        df = cell_records(
            label_image,
            image,
            prob,
            plate_id=plate or "-",  # cell_records wants a non-empty id; "" is restored below
            image_id=stem,
            image_uri=uri,
            image_sha256=storage.sha256_bytes(data),
            model_name=str(bundle.name),
            model_version=str(bundle.version),
            processed_at=dt.datetime.now(dt.UTC),
            flow_run_id=None,
            pixel_size_um=pixel_size_um if pixel_size_um is not None else meta.pixel_size_um,
            channel_names=meta.channel_names,
        )
        if not plate:
            df["plate_id"] = pd.Series([""] * len(df), dtype="str")
        frames.append(df)
    if not frames:
        raise ValueError(
            f"none of the {len(uris)} image(s) could be processed (see the errors above); "
            f"nothing written to {out}"
        )
    cells = pd.concat(frames, ignore_index=True)
    cells = cells[[*CELL_COLUMNS, *(c for c in cells.columns if c not in CELL_COLUMNS)]]
    _write(cells, out)
    # an image without cells has no row: the counts of the batch travel beside the table
    cells.attrs.update(images=len(frames), failed=len(failed))
    return cells


def _write(cells: pd.DataFrame, out: str) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(to_arrow(cells), buf, compression="zstd")
    storage.write_bytes(out, buf.getvalue())
