"""Discovery, validation and manifest records of incoming images (light: no TensorFlow).

Two kinds of input are ingested into a storage root:

* ``uploads``: microscope plates, ``<source>/<plate_id>/<image>.{png,tif,tiff}``, copied to
  ``<root>/uploads/<plate_id>/`` (nothing is copied when the source already is that folder);
* ``datasets``: annotated data in the FNC layout, ``<source>/images/<name>`` with the same file
  name in ``<source>/masks/``, copied to ``<root>/datasets/<dataset>/``;
* ``corrections``: the same layout (usually a folder written by ``neuroseg review``, with
  ``labels/``): a lab's corrected segmentations, copied to ``<root>/corrections/<dataset>/``,
  from which the adapt flow fine-tunes the serving model.

Every valid image gets one JSON record, keyed by what it is, under ``<root>/manifests/``:
``manifests/uploads/<plate_id>/<image_id>.json`` or ``manifests/datasets/<name>/<image_id>.json``
(``manifests/corrections/<name>/...`` for corrections).
A record holds the content hash (sha256) of the image (and mask), byte size, dimensions, the
source and destination URIs and the time. One file per image means parallel tasks never race on
a shared manifest, and a re-run that finds the same hash skips the image. Invalid inputs are
copied to ``<root>/quarantine/<kind>/<group>/`` with a ``.reason.txt`` beside them.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from neuroseg import storage
from neuroseg.images import decode_labels, decode_mask, decode_native, encode_labels, image_size

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
MIN_SIDE = 16
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}$")


@dataclass(frozen=True)
class Candidate:
    """One image found at the source, before validation."""

    kind: str  # "uploads" | "datasets" | "corrections"
    group: str  # plate id or dataset name
    image_id: str
    image_uri: str
    mask_uri: str | None = None
    file_name: str = ""
    labels_uri: str | None = None  # instance label image in labels/
    coco_uri: str | None = None  # or the dataset's COCO annotations.json, read for this image

    def to_dict(self) -> dict:
        return asdict(self)


class InvalidInput(ValueError):
    """A file that cannot be used; it is quarantined with this message as the reason."""


def check_id(value: str, *, what: str) -> str:
    """Return ``value`` if it is a safe identifier for storage keys, else raise ``ValueError``."""
    if not _SAFE_ID.match(value or ""):
        raise ValueError(
            f"{what} {value!r} is not a safe identifier (letters, digits, '._=+-', max 128)"
        )
    return value


def _relative(path: str, base: str) -> str:
    base = base.rstrip("/")
    return path[len(base) + 1 :] if path.startswith(base + "/") else PurePosixPath(path).name


def _strip_scheme(uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


def discover_uploads(source: str) -> tuple[list[Candidate], list[dict]]:
    """Find plate images under ``source`` (``<plate_id>/<image>``).

    Returns the candidates and a list of problems (``{"file", "reason"}``) for files that are not
    in a plate folder or have unsafe names; those are reported, never silently dropped.
    """
    if not storage.exists(source):
        raise FileNotFoundError(f"{source}: no such folder or prefix")
    files = storage.list_files(source, suffixes=IMAGE_SUFFIXES)
    base = _strip_scheme(source)
    found, problems = [], []
    for uri in files:
        rel = _relative(_strip_scheme(uri), base)
        parts = rel.split("/")
        if len(parts) != 2:
            problems.append({"file": uri, "reason": "not inside a plate folder <plate_id>/<image>"})
            continue
        plate, name = parts
        stem = PurePosixPath(name).stem
        try:
            check_id(plate, what="plate id")
            check_id(stem, what="image id")
        except ValueError as exc:
            problems.append({"file": uri, "reason": str(exc)})
            continue
        found.append(Candidate("uploads", plate, stem, uri, None, name))
    return found, problems


COCO_FILE = "annotations.json"
"""A dataset's COCO instance annotations (as LIVECell ships them), beside ``images/``."""


#: The kinds of annotated input: datasets to train on, and a lab's corrections.
ANNOTATED_KINDS = ("datasets", "corrections")


def discover_dataset(
    source: str, name: str, *, kind: str = "datasets"
) -> tuple[list[Candidate], list[dict]]:
    """Find the annotated images of a dataset (or of a set of corrections, ``kind``).

    Layout: ``images/`` with, per image, a binary mask of the same name in ``masks/`` and/or an
    instance label image in ``labels/``, or instances in a COCO ``annotations.json`` beside
    ``images/`` (used for images that have neither).
    """
    if kind not in ANNOTATED_KINDS:
        raise ValueError(f"kind must be one of {', '.join(ANNOTATED_KINDS)}, got {kind!r}")
    from neuroseg.datasets import find_fnc_samples

    check_id(name, what="dataset name")
    if not storage.exists(source):
        raise FileNotFoundError(f"{source}: no such folder or prefix")
    coco = storage.join(source, COCO_FILE)
    coco_uri = coco if storage.exists(coco) else None
    found, problems = [], []
    for sample in find_fnc_samples(source):
        file_name = PurePosixPath(_strip_scheme(sample.image_uri)).name
        stem = PurePosixPath(file_name).stem
        try:
            check_id(stem, what="image id")
        except ValueError as exc:
            problems.append({"file": sample.image_uri, "reason": str(exc)})
            continue
        found.append(
            Candidate(
                kind,
                name,
                stem,
                sample.image_uri,
                sample.mask_uri,
                file_name,
                sample.labels_uri,
                coco_uri if not (sample.mask_uri or sample.labels_uri) else None,
            )
        )
    if not found and not problems:
        raise FileNotFoundError(f"{source}: no images found in images/ (FNC layout expected)")
    return found, problems


def record_uri(root: str, kind: str, group: str, image_id: str) -> str:
    """URI of the manifest record of one image."""
    return storage.join(root, "manifests", kind, group, f"{image_id}.json")


def labels_destination(root: str, cand: Candidate) -> str | None:
    """Where an ingested dataset image's instance label image is stored (None: it has none)."""
    if cand.kind not in ANNOTATED_KINDS or not (cand.labels_uri or cand.coco_uri):
        return None
    suffix = (
        PurePosixPath(_strip_scheme(cand.labels_uri)).suffix.lower() if cand.labels_uri else ".png"
    )
    return storage.join(root, cand.kind, cand.group, "labels", cand.image_id + suffix)


def destinations(root: str, cand: Candidate) -> tuple[str, str | None]:
    """Where an ingested image (and its mask) are stored under ``root``."""
    suffix = PurePosixPath(cand.file_name).suffix.lower() or ".png"
    if cand.kind == "uploads":
        return storage.join(root, "uploads", cand.group, cand.image_id + suffix), None
    base = storage.join(root, cand.kind, cand.group)
    mask_suffix = PurePosixPath(_strip_scheme(cand.mask_uri or "x.png")).suffix.lower()
    return (
        storage.join(base, "images", cand.image_id + suffix),
        storage.join(base, "masks", cand.image_id + mask_suffix) if cand.mask_uri else None,
    )


def validate(
    cand: Candidate,
    image_bytes: bytes,
    mask_bytes: bytes | None,
    labels_bytes: bytes | None = None,
) -> dict:
    """Check that an image (and its mask and label image) decode and agree; return their sizes.

    A dataset image needs a mask or a label image; each must have the image's size.

    Raises
    ------
    InvalidInput
        With a one-line reason naming the file.
    """
    try:
        height, width = image_size(image_bytes, name=cand.image_uri)
        if min(height, width) < MIN_SIDE:
            raise InvalidInput(f"{cand.image_uri}: image is {width}x{height}, below {MIN_SIDE} px")
        image = decode_native(image_bytes, name=cand.image_uri)
        info = {"height": height, "width": width, "channels": int(image.shape[2])}
        info["dtype"] = str(image.dtype)
        if cand.kind in ANNOTATED_KINDS:
            if mask_bytes is None and labels_bytes is None:
                raise InvalidInput(
                    f"{cand.image_uri}: no mask in masks/ nor label image in labels/ "
                    "with the same name"
                )
            if mask_bytes is not None:
                mask = decode_mask(mask_bytes, name=cand.mask_uri or "mask")
                _check_size(cand.mask_uri or "mask", "mask", mask.shape, height, width)
                info["mask_foreground_px"] = int((mask > 127).sum())
            if labels_bytes is not None:
                where = cand.labels_uri or f"{cand.coco_uri} ({cand.file_name})"
                labels = decode_labels(labels_bytes, name=where)
                _check_size(where, "label image", labels.shape, height, width)
                info["n_instances"] = int(np.unique(labels[labels > 0]).size)
                info.setdefault("mask_foreground_px", int((labels > 0).sum()))
        return info
    except InvalidInput:
        raise
    except ValueError as exc:  # ImageDecodeError and friends carry the file name already
        raise InvalidInput(str(exc)) from exc


def _check_size(where: str, what: str, shape: tuple, height: int, width: int) -> None:
    if tuple(shape) != (height, width):
        raise InvalidInput(f"{where}: {what} is {shape[1]}x{shape[0]}, image is {width}x{height}")


_COCO_CACHE: dict[str, dict] = {}


def _coco_labels(cand: Candidate) -> bytes:
    """A COCO image's instances as a 16-bit label PNG (the parsed JSON is cached per process)."""
    from neuroseg.datasets import coco_instance_masks

    coco = _COCO_CACHE.get(cand.coco_uri)
    if coco is None:
        coco = _COCO_CACHE.setdefault(cand.coco_uri, storage.read_json(cand.coco_uri))
    try:
        masks = coco_instance_masks(coco, image_names=[cand.file_name])
    except ValueError as exc:
        raise InvalidInput(f"{cand.coco_uri}: {cand.file_name}: {exc}") from exc
    return encode_labels(masks[cand.file_name])[0]


def quarantine(root: str, cand: Candidate, data: bytes | None, reason: str) -> str:
    """Copy a bad input to ``quarantine/`` with a reason file; return the quarantine URI."""
    name = cand.file_name or PurePosixPath(_strip_scheme(cand.image_uri)).name
    dest = storage.join(root, "quarantine", cand.kind, cand.group, name)
    if data is not None:
        storage.write_bytes(dest, data)
    storage.write_bytes(dest + ".reason.txt", (reason.strip() + "\n").encode())
    return dest


PLATE_SIDECAR = "plate.json"
"""A plate folder's settings beside its images (``{"pixel_size_um": 0.65}``), copied along
with them; the nightly run reads and validates it (``neuroseg.inference.plate_sidecar``)."""


def _copy_plate_sidecar(image_uri: str, image_dest: str) -> None:
    """Copy the source plate folder's settings file beside the ingested image, if it has one
    and the copy there differs."""
    src = image_uri.rsplit("/", 1)[0] + "/" + PLATE_SIDECAR
    dst = image_dest.rsplit("/", 1)[0] + "/" + PLATE_SIDECAR
    try:
        data = storage.read_bytes(src)
    except FileNotFoundError:
        return
    try:
        same = storage.read_bytes(dst) == data
    except FileNotFoundError:
        same = False
    if not same:
        storage.write_bytes(dst, data)


def ingest_one(root: str, cand: Candidate) -> dict:
    """Validate one candidate and record it; idempotent.

    Returns a dict with ``status`` ("ingested", "skipped", "quarantined") and details.
    Transient storage errors propagate (the caller retries); a vanished or forbidden file is a
    permanent failure and is reported as "failed" without retries.
    """
    rec_uri = record_uri(root, cand.kind, cand.group, cand.image_id)
    try:
        image_bytes = storage.read_bytes(cand.image_uri)
        mask_bytes = storage.read_bytes(cand.mask_uri) if cand.mask_uri else None
        labels_bytes = storage.read_bytes(cand.labels_uri) if cand.labels_uri else None
    except (FileNotFoundError, PermissionError) as exc:
        return {**cand.to_dict(), "status": "failed", "reason": f"{cand.image_uri}: {exc}"}
    sha = storage.sha256_bytes(image_bytes)
    try:
        if cand.coco_uri and labels_bytes is None:
            labels_bytes = _coco_labels(cand)
        mask_sha = storage.sha256_bytes(mask_bytes) if mask_bytes is not None else None
        labels_sha = storage.sha256_bytes(labels_bytes) if labels_bytes is not None else None
        if storage.exists(rec_uri):
            old = storage.read_json(rec_uri)
            if (
                old.get("sha256") == sha
                and old.get("mask_sha256") == mask_sha
                and old.get("labels_sha256") == labels_sha
            ):
                return {**old, "status": "skipped"}
        info = validate(cand, image_bytes, mask_bytes, labels_bytes)
    except InvalidInput as exc:
        where = quarantine(root, cand, image_bytes, str(exc))
        return {**cand.to_dict(), "status": "quarantined", "reason": str(exc), "quarantine": where}
    image_dest, mask_dest = destinations(root, cand)
    if _strip_scheme(image_dest) != _strip_scheme(cand.image_uri):
        storage.write_bytes(image_dest, image_bytes)
        if cand.kind == "uploads":
            _copy_plate_sidecar(cand.image_uri, image_dest)
    if (
        mask_dest
        and mask_bytes is not None
        and _strip_scheme(mask_dest) != _strip_scheme(cand.mask_uri or "")
    ):
        storage.write_bytes(mask_dest, mask_bytes)
    labels_dest = labels_destination(root, cand)
    if labels_dest and _strip_scheme(labels_dest) != _strip_scheme(cand.labels_uri or ""):
        storage.write_bytes(labels_dest, labels_bytes)
    record = {
        "kind": cand.kind,
        "group": cand.group,
        "image_id": cand.image_id,
        "source_uri": cand.image_uri,
        "image_uri": image_dest,
        "mask_uri": mask_dest,
        "sha256": sha,
        "mask_sha256": mask_sha,
        "labels_uri": labels_dest,
        "labels_sha256": labels_sha,
        "bytes": len(image_bytes),
        "ingested_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **info,
    }
    storage.write_json(rec_uri, record)  # written last: the record means "fully ingested"
    return {**record, "status": "ingested"}


def read_manifest(root: str, kind: str, group: str | None = None) -> pd.DataFrame:
    """All manifest records of a kind (optionally one plate or dataset) as a table."""
    base = storage.join(root, "manifests", kind, *([group] if group else []))
    if not storage.exists(base):
        return pd.DataFrame()
    rows = [storage.read_json(u) for u in storage.list_files(base, suffixes=(".json",))]
    df = pd.DataFrame(rows)
    return df.sort_values(["group", "image_id"]).reset_index(drop=True) if len(df) else df
