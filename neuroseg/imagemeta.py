"""Physical pixel size and channel names from an image file's metadata (light; no TensorFlow).

:func:`image_meta` reads, in this order of precedence:

1. **OME-TIFF** (the OME-XML in the first page's description): ``PhysicalSizeX`` /
   ``PhysicalSizeY`` of the first ``Pixels`` element with their ``PhysicalSizeXUnit`` /
   ``PhysicalSizeYUnit`` (OME's default µm; nm, mm, cm, m, Å, pm too), and each ``Channel``'s
   ``Name``.
2. **ImageJ TIFF**: ``XResolution`` / ``YResolution`` (pixels per unit) with the ``unit`` of the
   ImageJ description (``micron``, ``um``, ``µm``, ``nm``, ``mm``, ``cm``, ...).
3. **TIFF resolution tags**: ``XResolution`` / ``YResolution`` with ``ResolutionUnit`` inch or
   centimetre (``NONE`` means no physical size).

Never guessed: the size is ``None`` when the file has none of these, when X and Y differ by
more than 0.1 % (non-square pixels: the table's µm columns assume square ones), and when a
TIFF's resolution tags give a pixel larger than :data:`MAX_PIXEL_SIZE_UM` (image editors write
72, 96 or 300 dpi as a display default, 84-353 µm per pixel: no microscope image has such
pixels). PNG files give ``None`` (their ``pHYs`` chunk is not read). Broken metadata never
fails an image: it gives ``None``.
"""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["MAX_PIXEL_SIZE_UM", "ImageMeta", "image_meta"]

MAX_PIXEL_SIZE_UM = 50.0
"""Largest pixel size (µm) accepted from TIFF resolution tags; larger ones are display dpi."""

_UM_PER_UNIT = {
    "um": 1.0,
    "µm": 1.0,  # micro sign
    "μm": 1.0,  # Greek mu
    "\\u00b5m": 1.0,  # ImageJ writes the micro sign escaped
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "inch": 25_400.0,
    "in": 25_400.0,
}


@dataclass(frozen=True)
class ImageMeta:
    """What an image file says about itself.

    Attributes
    ----------
    pixel_size_um : float or None
        Side of a (square) pixel in micrometres; None when unknown.
    channel_names : tuple of str or None
        One name per channel of the first image, in file order (OME only); None when absent.
    source : str or None
        Where the pixel size came from: ``"ome"``, ``"imagej"``, ``"tiff-resolution"``, or
        None.
    """

    pixel_size_um: float | None = None
    channel_names: tuple[str, ...] | None = None
    source: str | None = None


def _um_per(unit: str | None, default: float | None) -> float | None:
    if unit is None or not str(unit).strip():
        return default
    return _UM_PER_UNIT.get(str(unit).strip().lower())


def _square(x: float | None, y: float | None) -> float | None:
    """One pixel size from X and Y (Y missing: X); None unless both positive and equal."""
    if x is None:
        return None
    y = x if y is None else y
    if not (math.isfinite(x) and math.isfinite(y)) or x <= 0 or y <= 0:
        return None
    if abs(x - y) > 1e-3 * max(x, y):
        return None
    return float(x)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome(xml: str) -> ImageMeta:
    root = ET.fromstring(xml)
    pixels = next((e for e in root.iter() if _local(e.tag) == "Pixels"), None)
    if pixels is None:
        return ImageMeta()

    def size(axis: str) -> float | None:
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            return None
        scale = _um_per(pixels.get(f"PhysicalSize{axis}Unit"), 1.0)  # OME's default: µm
        try:
            return float(value) * scale if scale is not None else None
        except ValueError:
            return None

    names = tuple((c.get("Name") or "").strip() for c in pixels if _local(c.tag) == "Channel")
    size_um = _square(size("X"), size("Y"))
    return ImageMeta(
        pixel_size_um=size_um,
        channel_names=names if names and all(names) else None,
        source="ome" if size_um is not None else None,
    )


def _per_unit(tag) -> float | None:
    """Pixels per unit of a resolution tag (a rational ``(num, den)`` or a number)."""
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, tuple | list):
        if len(value) != 2 or not value[1]:
            return None
        value = value[0] / value[1]
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 and math.isfinite(value) else None


def _from_resolution(page, um_per_unit: float) -> float | None:
    x = _per_unit(page.tags.get("XResolution"))
    y = _per_unit(page.tags.get("YResolution"))
    if x is None:
        return None
    return _square(um_per_unit / x, None if y is None else um_per_unit / y)


def _tiff(data: bytes) -> ImageMeta:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if tif.is_ome and tif.ome_metadata:
            meta = _ome(tif.ome_metadata)
            if meta.pixel_size_um is not None or meta.channel_names:
                return meta
        page = tif.pages.first
        if tif.is_imagej:
            scale = _um_per((tif.imagej_metadata or {}).get("unit"), None)
            if scale is not None:
                size = _from_resolution(page, scale)
                if size is not None:
                    return ImageMeta(pixel_size_um=size, source="imagej")
        unit = page.tags.get("ResolutionUnit")
        scale = {2: 25_400.0, 3: 10_000.0}.get(int(unit.value) if unit is not None else 2)
        if scale is None:  # RESUNIT.NONE: no physical size
            return ImageMeta()
        size = _from_resolution(page, scale)
        if size is None or size > MAX_PIXEL_SIZE_UM:
            return ImageMeta()
        return ImageMeta(pixel_size_um=size, source="tiff-resolution")


_TIFF_MAGIC = re.compile(rb"^(II\*\x00|MM\x00\*|II\+\x00|MM\x00\+)")


def image_meta(data: bytes) -> ImageMeta:
    """Pixel size and channel names of an image file's bytes (see the module's rules).

    Parameters
    ----------
    data : bytes
        The file's content (PNG, TIFF, OME-TIFF, ImageJ TIFF).

    Returns
    -------
    ImageMeta
        Empty (every field None) for PNG, for files without physical metadata and for
        unreadable metadata; decoding errors are :func:`neuroseg.images.decode_native`'s job.
    """
    if not _TIFF_MAGIC.match(bytes(data[:4])):
        return ImageMeta()
    try:
        return _tiff(bytes(data))
    except Exception:  # metadata is optional: a file tifffile cannot parse has none for us
        return ImageMeta()
