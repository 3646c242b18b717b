"""Annotated datasets: the FNC folder layout and COCO instance annotations (light: no TensorFlow).

* FNC layout: ``<dataset>/images/<name>.png`` with a binary mask of the same file name in
  ``<dataset>/masks/`` (:func:`find_fnc_samples`).
* COCO instance annotations, as LIVECell ships them (:func:`coco_instance_masks`): polygons
  are rasterised with :func:`skimage.draw.polygon`; run-length encodings (RLE), both the
  uncompressed ``counts`` list and pycocotools' compressed string, are decoded here without
  pycocotools.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "Sample",
    "coco_instance_masks",
    "decode_rle",
    "find_fnc_samples",
    "fnc_shared_root",
    "instances_to_binary",
    "rle_counts_from_string",
]

#: File suffixes recognised as images and masks (case-insensitive).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


class Sample(NamedTuple):
    """One annotated image of an FNC-layout dataset.

    Attributes
    ----------
    name : str
        Image id: the file name without its suffix.
    image_uri : str
        URI of the image.
    mask_uri : str or None
        URI of the mask of the same file name in ``masks/``, or ``None`` if it has none.
    labels_uri : str or None
        URI of the instance label image of the same name in ``labels/`` (0 background, one
        integer id per cell, touching cells apart), or ``None``.
    """

    name: str
    image_uri: str
    mask_uri: str | None
    labels_uri: str | None = None


# --------------------------------------------------------------------------------------------
# FNC layout
# --------------------------------------------------------------------------------------------


def _leaf(uri: str) -> str:
    return PurePosixPath(uri.replace("\\", "/")).name


def _split_name(leaf: str) -> tuple[str, str]:
    """``("a.b", ".tif")`` for ``"a.b.TIF"``: stem and lower-case suffix."""
    p = PurePosixPath(leaf)
    return p.stem, p.suffix.lower()


def find_fnc_samples(dataset_uri: str | os.PathLike) -> list[Sample]:
    """Image/mask (and instance label) pairs of a dataset in the FNC layout.

    Parameters
    ----------
    dataset_uri : str or path-like
        Folder (local, ``file://`` or ``s3://``) holding ``images/`` and ``masks/`` and/or
        ``labels/`` (instance label images). Only files directly inside those folders with a
        ``.png``, ``.tif`` or ``.tiff`` suffix (any case) count.

    Returns
    -------
    list of Sample
        One per image, sorted by file name. The mask is the file of the same name in
        ``masks/``; failing that, the one file there with the same stem and another image
        suffix (e.g. ``a.tif`` with ``a.png``). An image without a mask has ``mask_uri=None``;
        a mask without an image is ignored. Label images in ``labels/`` pair the same way
        (``labels_uri``). A missing or empty ``images/`` gives ``[]``.

    Raises
    ------
    ValueError
        If two images share a stem (``a.png`` and ``a.tif``), so the image id is ambiguous,
        or an image has several masks of its stem and none of its exact name.
    """
    from neuroseg import storage

    root = os.fspath(dataset_uri)

    def listing(folder: str) -> list[str]:
        return [
            u
            for u in storage.list_files(storage.join(root, folder), recursive=False)
            if _split_name(_leaf(u))[1] in IMAGE_SUFFIXES
        ]

    images = listing("images")
    match_mask = _matcher(listing("masks"), "masks")
    match_labels = _matcher(listing("labels"), "label images")

    samples: list[Sample] = []
    seen: dict[str, str] = {}
    for uri in sorted(images, key=_leaf):
        leaf = _leaf(uri)
        stem, _ = _split_name(leaf)
        if stem in seen:
            raise ValueError(
                f"{uri}: image id {stem!r} is ambiguous, {_leaf(seen[stem])} has the same stem"
            )
        seen[stem] = uri
        samples.append(Sample(stem, uri, match_mask(uri), match_labels(uri)))
    return samples


def _matcher(files: list[str], what: str):
    """``match(image_uri) -> uri | None``: the file of the same name, else the one of its stem."""
    by_name = {_leaf(u): u for u in files}
    by_stem: dict[str, list[str]] = {}
    for u in files:
        by_stem.setdefault(_split_name(_leaf(u))[0], []).append(u)

    def match(image_uri: str) -> str | None:
        leaf = _leaf(image_uri)
        found = by_name.get(leaf)
        if found is None:
            candidates = by_stem.get(_split_name(leaf)[0], [])
            if len(candidates) > 1:
                names = ", ".join(_leaf(c) for c in candidates)
                raise ValueError(f"{image_uri}: several {what} match its name ({names})")
            found = candidates[0] if candidates else None
        return found

    return match


def fnc_shared_root() -> Path | None:
    """The real FNC samples beside the checkout (``../shared/data/fnc-samples``), if present."""
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fnc-samples"
    return root if root.is_dir() else None


# --------------------------------------------------------------------------------------------
# COCO run-length encoding
# --------------------------------------------------------------------------------------------


def rle_counts_from_string(s: str | bytes) -> list[int]:
    """Decode pycocotools' compressed RLE string into run lengths.

    Each count is written in 5-bit groups, least significant first, as characters
    ``chr(48 + group)``; bit ``0x20`` of a group says another group follows, and bit ``0x10``
    of the last group is the sign. From the third count on, the stored value is the difference
    to the count two places earlier (pycocotools' ``rleFrString``).

    Parameters
    ----------
    s : str or bytes
        The ``counts`` string of a compressed RLE.

    Returns
    -------
    list of int
        Run lengths, alternating background and foreground, starting with background.

    Raises
    ------
    ValueError
        If a character is outside the encoding's range, the string ends inside a number, or a
        decoded count is negative.
    """
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("compressed RLE string ends in the middle of a count")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE string has an invalid character {chr(data[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x -= 1 << (5 * k)  # sign-extend (C: x |= -1 << 5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ValueError(f"compressed RLE string decodes to a negative count ({x})")
        counts.append(x)
    return counts


def decode_rle(rle: Mapping[str, Any], *, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one COCO RLE into a boolean mask.

    Parameters
    ----------
    rle : mapping
        ``{"size": [height, width], "counts": list[int] | str}``; runs are column-major
        (Fortran order), alternating background and foreground, starting with background.
    shape : (int, int), optional
        Expected ``(height, width)``; a different ``size`` raises.

    Returns
    -------
    ndarray, shape (height, width), bool
    """
    if not isinstance(rle, Mapping) or "counts" not in rle or "size" not in rle:
        raise ValueError("RLE segmentation needs 'size' and 'counts'")
    try:
        h, w = (int(v) for v in rle["size"])
    except (TypeError, ValueError):
        raise ValueError(f"RLE size must be [height, width], got {rle['size']!r}") from None
    if shape is not None and (h, w) != tuple(shape):
        raise ValueError(f"RLE size {h}x{w} does not match the image's {shape[0]}x{shape[1]}")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        runs = np.asarray(rle_counts_from_string(counts), dtype=np.int64)
    else:
        runs = np.asarray(list(counts), dtype=np.int64)
        if runs.ndim != 1 or (runs.size and runs.min() < 0):
            raise ValueError("RLE counts must be a list of non-negative integers")
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE counts sum to {int(runs.sum())}, expected {h}x{w} = {h * w}")
    flat = np.zeros(h * w, dtype=bool)
    ends = np.cumsum(runs)
    starts = ends - runs
    for s, e in zip(starts[1::2], ends[1::2], strict=True):
        flat[s:e] = True
    return flat.reshape((w, h)).T


# --------------------------------------------------------------------------------------------
# COCO instance masks
# --------------------------------------------------------------------------------------------


def _paint_polygons(out: np.ndarray, polygons: list[Any], value: int, *, file_name: str) -> None:
    from skimage.draw import polygon

    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).ravel()
        if xy.size % 2:
            raise ValueError(f"{file_name}: a polygon has an odd number of coordinates")
        if xy.size < 6:
            continue  # fewer than 3 vertices: no area
        # COCO puts the centre of pixel (r, c) at (x, y) = (c + 0.5, r + 0.5).
        rr, cc = polygon(xy[1::2] - 0.5, xy[0::2] - 0.5, shape=out.shape)
        out[rr, cc] = value


def coco_instance_masks(
    coco: Mapping[str, Any] | str | os.PathLike,
    *,
    image_names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Instance masks from COCO annotations (as LIVECell ships them).

    Parameters
    ----------
    coco : mapping or str or path-like
        The parsed COCO JSON or its URI. Uses ``images`` (``id, file_name, height, width``) and
        ``annotations`` (``image_id, segmentation, iscrowd``); ``segmentation`` is a list of
        polygons ``[x1, y1, x2, y2, ...]`` (x = column, in pixel coordinates), or an RLE dict
        with ``counts`` as a list (uncompressed) or a string (compressed).
    image_names : iterable of str, optional
        Only these file names (all must be in ``images``); default all images.

    Returns
    -------
    dict of str to ndarray
        ``file_name -> (height, width) int32`` instance labels, in ``images`` order. Each
        image's non-crowd annotations get ids ``1..k`` in file order; where two overlap the
        later one wins (a fully covered instance leaves its id unused). ``iscrowd`` regions are
        not instances and are skipped. Polygons use COCO's pixel convention (the centre of pixel
        ``(r, c)`` is at ``x = c + 0.5, y = r + 0.5``) and are rasterised with
        :func:`skimage.draw.polygon` (pixel centres inside or on the outline), which agrees with
        pycocotools except for pixels whose centres lie on or next to the outline. RLEs decode
        exactly as pycocotools does.

    Raises
    ------
    ValueError
        If the JSON lacks ``images``/``annotations``, a file name repeats, an annotation refers
        to an unknown image, a requested name is unknown, or a segmentation is malformed.
    """
    source = "COCO annotations"
    if not isinstance(coco, Mapping):
        from neuroseg import storage

        source = os.fspath(coco)
        coco = storage.read_json(source)
        if not isinstance(coco, Mapping):
            raise ValueError(f"{source}: not a COCO JSON object")
    images = coco.get("images")
    annotations = coco.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise ValueError(f"{source}: needs 'images' and 'annotations' lists")

    by_id: dict[Any, dict[str, Any]] = {}
    names: dict[str, Any] = {}
    for img in images:
        try:
            iid, name = img["id"], str(img["file_name"])
            h, w = int(img["height"]), int(img["width"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{source}: each image needs id, file_name, height and width"
            ) from None
        if name in names:
            raise ValueError(f"{source}: file name {name!r} appears twice in 'images'")
        if h <= 0 or w <= 0:
            raise ValueError(f"{source}: {name} has an invalid size {h}x{w}")
        names[name] = iid
        by_id[iid] = {"file_name": name, "shape": (h, w)}

    if image_names is None:
        wanted = list(names)
    else:
        wanted = list(image_names)
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(f"{source}: not in 'images': {', '.join(missing[:5])}")
    wanted_ids = {names[n] for n in wanted}
    # Fortran-ordered buffers so that RLE runs are contiguous slices.
    out = {iid: np.zeros(by_id[iid]["shape"], dtype=np.int32, order="F") for iid in wanted_ids}
    next_id = dict.fromkeys(wanted_ids, 1)

    for ann in annotations:
        iid = ann.get("image_id") if isinstance(ann, Mapping) else None
        if iid not in by_id:
            raise ValueError(f"{source}: an annotation refers to unknown image_id {iid!r}")
        if iid not in wanted_ids or ann.get("iscrowd", 0):
            continue
        target = out[iid]
        file_name = by_id[iid]["file_name"]
        value = next_id[iid]
        next_id[iid] += 1
        seg = ann.get("segmentation")
        if isinstance(seg, Mapping):
            try:
                fg = decode_rle(seg, shape=target.shape)
            except ValueError as exc:
                raise ValueError(f"{file_name}: {exc}") from None
            target[fg] = value
        elif isinstance(seg, list):
            _paint_polygons(target, seg, value, file_name=file_name)
        else:
            raise ValueError(f"{file_name}: segmentation must be polygons or an RLE dict")
    return {by_id[names[n]]["file_name"]: np.ascontiguousarray(out[names[n]]) for n in wanted}


def instances_to_binary(instances: np.ndarray) -> np.ndarray:
    """Semantic mask of an instance label image: 255 where ``instances > 0``, else 0.

    Parameters
    ----------
    instances : ndarray, shape (H, W), integer

    Returns
    -------
    ndarray, shape (H, W), uint8
        ``{0, 255}``; touching instances merge, as in FNC's binary masks.
    """
    arr = np.asarray(instances)
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(
            f"expected a 2-D integer label image, got shape {arr.shape} and dtype {arr.dtype}"
        )
    return np.where(arr > 0, np.uint8(255), np.uint8(0))
