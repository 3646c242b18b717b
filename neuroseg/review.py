"""Which images a person should correct, exported for napari or Fiji (light; no TensorFlow).

``neuroseg review PLATE --root ROOT --out DIR --top N`` (:func:`write_review`) takes the N
images of a plate the model is least sure of (the per-image table's ``confidence``,
:mod:`neuroseg.confidence`) and writes them as an annotated dataset::

    DIR/images/<image_id>.<png|tif>    the uploaded image, byte for byte
    DIR/labels/<image_id>.tif          the model's objects: 32-bit label image, value = cell_id
    DIR/review.json                    what was exported, from which model, with hashes
    DIR/README.txt                     how to correct them

The label images are uncompressed 32-bit integer TIFFs: napari opens a 32-bit integer image as
a *Labels* layer (paint, erase, fill, then save it back over the file) and Fiji opens it as a
32-bit image (whole-number values are kept when it is saved as TIFF). ``neuroseg ingest DIR
--dataset NAME`` takes the folder back as corrections (``review.json`` marks it): they go to
``<root>/corrections/NAME/``, with one manifest record per image, and a bad correction (a label
image of the wrong size, an image without one) is quarantined with its reason.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import PurePosixPath

import numpy as np

from neuroseg import storage

__all__ = [
    "REVIEW_FILE",
    "edited_images",
    "is_review_folder",
    "read_review",
    "review_candidates",
    "write_review",
]

#: The file that marks a folder written by :func:`write_review` (and taken back as corrections).
REVIEW_FILE = "review.json"
REVIEW_KIND = "neuroseg-review"

_README = """Images to correct: plate {plate}, model {model}, the {n} least confident first.

images/  the images, as uploaded
labels/  the model's objects (32-bit label images: 0 = background, 1..n = one cell each)

napari (pip install "napari[all]"):
  napari {first_image} {first_labels}
  The label image opens as a Labels layer over the image. Select it, then
  - paint (P): press M for a new label (the largest plus one) and paint a missed cell;
    touching cells keep different labels; "preserve labels" paints over background only;
  - erase (E): remove a false object or trim a wrong outline;
  - fill (F): click an object to give it the selected label: label 0 deletes it, the label
    of a neighbouring piece (pick it with L) joins two pieces of one cell;
  - save: with the Labels layer selected, File > Save Selected Layers... over
    labels/<same name>.tif (the image and its labels pair by name).
Fiji:
  File > Open the image and its label image; on the labels, Image > Lookup Tables > glasbey
  shows the objects. Select a region (freehand, oval, or the wand on an object with tolerance
  0), then Process > Math > Set... with a new label (above Analyze > Histogram's maximum), the
  label of the object it belongs to, or 0 to erase. File > Save As > Tiff over
  labels/<same name>.tif.
Then give the corrections back (a bad label image is set aside with its reason, the rest used):
  neuroseg ingest {out} --root {root} --dataset NAME
"""


def is_review_folder(source: str) -> bool:
    """Whether `source` holds a :data:`REVIEW_FILE` written by :func:`write_review`."""
    uri = storage.join(source, REVIEW_FILE)
    if not storage.exists(uri):
        return False
    try:
        return read_review(source).get("kind") == REVIEW_KIND
    except ValueError:
        return False


def read_review(source: str) -> dict:
    """The :data:`REVIEW_FILE` of a review folder.

    Raises
    ------
    ValueError
        It is not a JSON object (the message names the file).
    """
    uri = storage.join(source, REVIEW_FILE)
    try:
        data = storage.read_json(uri)
    except ValueError as exc:
        raise ValueError(f"{uri}: not a JSON review file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{uri}: not a JSON object")
    return data


def review_candidates(root: str, plate_id: str, *, top: int) -> list[dict]:
    """The `top` least confident processed images of a plate, least confident first.

    Rows of the per-image table (:func:`neuroseg.quality.read_image_table`) in
    :func:`neuroseg.report.review_order`; images processed before the confidence was measured
    come last.

    Raises
    ------
    ValueError
        `top` below 1, or the plate has no row in the per-image table.
    """
    from neuroseg.quality import read_image_table
    from neuroseg.report import review_order

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a whole number of images >= 1, got {top!r}")
    table = read_image_table(storage.join(root, "images"), filters=[("plate_id", "==", plate_id)])
    if table.empty:
        raise ValueError(
            f"plate {plate_id!r} has no processed image under {storage.join(root, 'images')}: "
            "run the nightly inference (neuroseg infer) first"
        )
    rows = {str(r["image_id"]): r for r in table.to_dict("records")}
    order = review_order(
        (i, None if r["confidence"] is None or np.isnan(r["confidence"]) else r["confidence"])
        for i, r in rows.items()
    )
    return [rows[i] for i in order[:top]]


def _label_tif(labels: np.ndarray) -> bytes:
    """An uncompressed 32-bit unsigned label TIFF (napari: a Labels layer; Fiji: 32-bit)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(labels, dtype=np.uint32))
    return buf.getvalue()


def write_review(root: str, plate_id: str, out: str, *, top: int = 5) -> dict:
    """Export the `top` least confident images of a plate with their label images.

    Parameters
    ----------
    root : str
        Storage root of the nightly run (local folder or ``s3://``).
    plate_id : str
    out : str
        A new or empty folder (local or ``s3://``); never written over, so corrections in
        progress are never lost.
    top : int
        How many images.

    Returns
    -------
    dict
        The :data:`REVIEW_FILE` content plus ``out`` and ``problems`` (images left out, with
        the reason: e.g. no label image).

    Raises
    ------
    ValueError
        `out` is not empty, `top` < 1, the plate has no processed image, or none of the chosen
        images could be exported.
    """
    from neuroseg.images import decode_labels
    from neuroseg.report import label_image_uri

    if storage.exists(out) and storage.list_files(out):
        raise ValueError(f"{out}: not empty; give a new folder (a review never writes over one)")
    rows = review_candidates(root, plate_id, top=top)
    exported, problems = [], []
    for row in rows:
        image_id, image_uri = str(row["image_id"]), str(row["image_uri"])
        luri = label_image_uri(root, plate_id, image_id)
        try:
            if luri is None:
                raise FileNotFoundError(f"{image_id}: no label image under {root}/labels")
            labels = decode_labels(storage.read_bytes(luri), name=luri)
            data = storage.read_bytes(image_uri)
        except (OSError, ValueError) as exc:  # the rest of the plate goes on
            problems.append({"image_id": image_id, "reason": " ".join(str(exc).split())})
            continue
        suffix = PurePosixPath(image_uri).suffix.lower() or ".png"
        tif = _label_tif(labels)
        storage.write_bytes(storage.join(out, "images", image_id + suffix), data)
        storage.write_bytes(storage.join(out, "labels", image_id + ".tif"), tif)
        conf = row.get("confidence")
        exported.append(
            {
                "image_id": image_id,
                "file": f"images/{image_id}{suffix}",
                "labels_file": f"labels/{image_id}.tif",
                "confidence": None if conf is None or np.isnan(conf) else float(conf),
                "cells": int(row["cells"]),
                "source_uri": image_uri,
                "image_sha256": storage.sha256_bytes(data),
                "labels_sha256": storage.sha256_bytes(tif),
                "model_name": str(row["model_name"]),
                "model_version": str(row["model_version"]),
            }
        )
    if not exported:
        reasons = "; ".join(p["reason"] for p in problems)
        raise ValueError(f"plate {plate_id!r}: no image could be exported ({reasons})")
    review = {
        "kind": REVIEW_KIND,
        "version": 1,
        "plate_id": plate_id,
        "root": root,
        "top": top,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "images": exported,
    }
    storage.write_json(storage.join(out, REVIEW_FILE), review)
    models = sorted({f"{e['model_name']}@{e['model_version']}" for e in exported})
    first = exported[0]
    storage.write_bytes(
        storage.join(out, "README.txt"),
        _README.format(
            plate=plate_id,
            model=", ".join(models),
            n=len(exported),
            first_image=storage.join(out, first["file"]),
            first_labels=storage.join(out, first["labels_file"]),
            out=out,
            root=root,
        ).encode(),
    )
    return {**review, "out": out, "problems": problems}


def edited_images(review: dict, records: list[dict]) -> list[str]:
    """Ids of ingested corrections whose label image differs from the exported one.

    Parameters
    ----------
    review : dict
        The review folder's :data:`REVIEW_FILE`.
    records : list of dict
        Manifest records of the ingested corrections (``image_id``, ``labels_sha256``).
    """
    exported = {e["image_id"]: e.get("labels_sha256") for e in review.get("images", [])}
    return sorted(
        str(r["image_id"])
        for r in records
        if r.get("labels_sha256") and exported.get(r["image_id"]) != r.get("labels_sha256")
    )
