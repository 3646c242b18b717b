"""Decode microscope images (PNG, TIFF) to RGB ``uint8`` arrays and masks to ``(H, W)`` ``uint8``.

Decoding rules (:func:`decode_image`, result ``(H, W, 3) uint8`` RGB, axes row, column, channel):

- 8-bit data is used as is (``L``, ``RGB``).
- 16-bit grayscale (Pillow modes ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) is scaled to 8 bits
  over the full range by ``value // 257`` (0 -> 0, 65535 -> 255). 32-bit integer ``I`` images are
  clipped to 0..65535 first and then scaled the same way.
- 16-bit RGB(A) and 16-bit gray+alpha PNGs are reduced to 8 bits by Pillow while decoding, which
  keeps the high byte (``value >> 8``, at most 1 below ``value // 257``).
- Grayscale is replicated to three channels; 1-bit images map 0 -> 0 and 1 -> 255.
- Alpha is composited over black: ``round(c * a / 255)`` per channel (``RGBA``, ``LA``, ``PA``
  and palette images with a ``transparency`` entry, which Pillow expands to ``RGBA`` first).
- Palette images without transparency and every other mode (``CMYK``, ``YCbCr``, ``F``, ...) are
  converted to RGB by Pillow (``F`` is clipped to 0..255).
- Multi-frame files give their first frame; EXIF orientation is not applied (pixels as stored).

Masks (:func:`decode_mask`, ``(H, W) uint8``): single-channel images follow the rules above
without replication; anything else is decoded as an image and reduced by the maximum over the
three channels (so an RGB mask is foreground wherever any channel is).

Safety: only PNG and TIFF are accepted. The size is read from the header and checked against
``max_pixels`` (default :data:`MAX_PIXELS`, 100 M pixels) before any pixel is decoded, so a
decompression bomb fails fast without allocating. PNG files are also checked chunk by chunk
(complete chunks, CRCs, an ``IEND``) without relying on Pillow's global
``ImageFile.LOAD_TRUNCATED_IMAGES``, and every Pillow error while loading is converted. Each
failure raises :class:`ImageDecodeError` with the message ``"<name>: <reason>"``. Pillow's own
decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) still applies on top of ``max_pixels``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from neuroseg import storage
from neuroseg.normalize import channel_max

__all__ = [
    "FORMATS",
    "MAX_PIXELS",
    "ImageDecodeError",
    "decode_image",
    "decode_labels",
    "decode_mask",
    "decode_native",
    "encode_png",
    "image_size",
    "read_image",
    "read_labels",
    "read_mask",
    "read_native",
]

MAX_PIXELS = 100_000_000
"""Default largest ``height * width`` accepted by the decoders (decompression-bomb guard)."""

FORMATS = ("PNG", "TIFF")
"""Pillow formats the decoders accept."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageDecodeError(ValueError):
    """An image could not be decoded; ``str(exc)`` is ``"<name>: <reason>"``."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")

    def __reduce__(self):
        return (type(self), (self.name, self.reason))


# ----------------------------------------------------------------------------- headers


def _check_data(data: bytes, name: str) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{name}: expected the file's bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if view.nbytes == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return view


def _png_size(data: memoryview, name: str) -> tuple[int, int]:
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        raise ImageDecodeError(name, "corrupt PNG: the IHDR header chunk is missing or cut short")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _tiff_size(data: memoryview) -> tuple[int, int] | None:
    """Width and height from the first IFD of a classic or Big TIFF; None when unreadable."""
    head = bytes(data[:16])
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or len(head) < 8:
        return None
    (version,) = struct.unpack(order + "H", head[2:4])
    try:
        if version == 42:
            (offset,) = struct.unpack(order + "I", head[4:8])
            count_fmt, entry_size, value_size = "H", 12, 4
        elif version == 43:
            (offset,) = struct.unpack(order + "Q", head[8:16])
            count_fmt, entry_size, value_size = "Q", 20, 8
        else:
            return None
        count_size = struct.calcsize(count_fmt)
        (count,) = struct.unpack(order + count_fmt, data[offset : offset + count_size])
        dims: dict[int, int] = {}
        for i in range(min(count, 4096)):
            pos = offset + count_size + i * entry_size
            tag, typ = struct.unpack(order + "HH", data[pos : pos + 4])
            if tag not in (256, 257):
                continue
            value = data[pos + entry_size - value_size : pos + entry_size]
            fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
            if fmt is None:
                return None
            (dims[tag],) = struct.unpack(order + fmt, value[: struct.calcsize(fmt)])
            if len(dims) == 2:
                return dims[256], dims[257]
    except struct.error:
        return None
    return None


def _header_size(data: memoryview, name: str) -> tuple[int, int] | None:
    """(width, height) parsed by hand from a PNG or TIFF header, None for other data."""
    if bytes(data[:8]) == _PNG_SIGNATURE:
        return _png_size(data, name)
    return _tiff_size(data)


def _check_pixels(width: int, height: int, name: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(name, f"corrupt header: image size {width}x{height} is empty")
    if width * height > max_pixels:
        raise ImageDecodeError(
            name,
            f"image of {width}x{height} = {width * height} pixels exceeds max_pixels="
            f"{max_pixels} (decompression-bomb guard); pass a larger max_pixels if it is genuine",
        )


def _check_png_chunks(data: memoryview, name: str) -> None:
    """Walk the PNG chunks (complete, CRC correct, ending with IEND) and inflate the IDAT data.

    Pillow zero-fills the missing rows when the compressed stream ends early, so the amount
    of image data is checked here against what the IHDR header promises.
    """
    pos, size = 8, len(data)
    idat: list[memoryview] = []
    while True:
        if pos + 12 > size:
            raise ImageDecodeError(
                name, f"truncated PNG: the file ends at byte {size} before the IEND chunk"
            )
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        label = ctype.decode("latin-1")
        if not ctype.isalpha() or length > 0x7FFFFFFF:
            raise ImageDecodeError(name, f"corrupt PNG: bad chunk header at byte {pos}")
        end = pos + 12 + length
        if end > size:
            raise ImageDecodeError(
                name,
                f"truncated PNG: the {label} chunk at byte {pos} needs {length} bytes but the "
                f"file ends at byte {size}",
            )
        (stored,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != stored:
            raise ImageDecodeError(name, f"corrupt PNG: CRC mismatch in the {label} chunk")
        if ctype == b"IDAT":
            idat.append(data[pos + 8 : end - 4])
        if ctype == b"IEND":
            break
        pos = end
    expected = _png_data_size(data)
    if expected is not None:
        _check_png_stream(idat, expected, name)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip


def _png_data_size(data: memoryview) -> int | None:
    """Bytes of filtered scanlines the IHDR promises; None for a header Pillow must judge."""
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = _PNG_CHANNELS.get(color)
    if channels is None or depth not in (1, 2, 4, 8, 16) or interlace not in (0, 1):
        return None
    bits = channels * depth
    if interlace == 0:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        pass_w = (width - x0 + dx - 1) // dx if width > x0 else 0
        pass_h = (height - y0 + dy - 1) // dy if height > y0 else 0
        if pass_w and pass_h:
            total += pass_h * (1 + (pass_w * bits + 7) // 8)
    return total


def _check_png_stream(idat: list[memoryview], expected: int, name: str) -> None:
    """Inflate the IDAT chunks in bounded pieces and count the bytes (nothing is kept)."""
    if not idat:
        raise ImageDecodeError(name, "corrupt PNG: no IDAT chunk (no image data)")
    inflater = zlib.decompressobj()
    got = 0
    try:
        for piece in idat:
            pending = piece
            while pending and not inflater.eof:
                got += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
                if got > expected:
                    return  # more data than needed: Pillow ignores the excess
    except zlib.error as exc:
        reason = f"corrupt PNG: the compressed image data is invalid ({exc})"
        raise ImageDecodeError(name, reason) from exc
    if got < expected:
        state = "complete" if inflater.eof else "cut short"
        raise ImageDecodeError(
            name,
            f"truncated PNG: the image data holds {got} of {expected} bytes "
            f"(compressed stream {state}; rows are missing)",
        )


def _open(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Validate `data` and open it with Pillow (header only, pixels not decoded yet)."""
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int | np.integer)
    ):
        raise TypeError(f"max_pixels must be an int, got {type(max_pixels).__name__}")
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    view = _check_data(data, name)
    size = _header_size(view, name)
    if size is not None and max_pixels is not None:
        _check_pixels(*size, name, max_pixels)
    try:
        img = Image.open(io.BytesIO(view), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(name, f"image too large for Pillow's bomb guard ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, _unidentified_reason(view)) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(name, f"corrupt image header ({exc})") from exc
    try:
        if size is None and max_pixels is not None:
            _check_pixels(*img.size, name, max_pixels)
        if img.format == "PNG":
            _check_png_chunks(view, name)
    except BaseException:
        img.close()
        raise
    return img


_OTHER_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"RIFF", "WebP/RIFF"),
)


def _unidentified_reason(data: memoryview) -> str:
    head = bytes(data[:8])
    if head == _PNG_SIGNATURE:
        return "corrupt PNG: the header could not be read"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "corrupt or truncated TIFF: the header (IFD) could not be read"
    for magic, kind in _OTHER_MAGIC:
        if head.startswith(magic):
            return f"{kind} is not supported: convert the file to PNG or TIFF"
    return "not a PNG or TIFF image"


def _load(img: Image.Image, name: str) -> None:
    try:
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(name, f"image too large for Pillow's bomb guard ({exc})") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(name, f"corrupt or truncated image data ({exc})") from exc


# ----------------------------------------------------------------------------- pixels


def _gray(img: Image.Image) -> np.ndarray | None:
    """(H, W) uint8 for single-channel modes with a rule of their own, else None."""
    mode = img.mode
    if mode == "L":
        return np.array(img, dtype=np.uint8)
    if mode == "1":
        return np.asarray(img, dtype=bool).astype(np.uint8) * np.uint8(255)
    if mode in _SIXTEEN_BIT:
        return (np.asarray(img).astype(np.uint16) // 257).astype(np.uint8)
    if mode == "I":
        return (np.clip(np.asarray(img), 0, 65535) // 257).astype(np.uint8)
    return None


def _over_black(rgba: np.ndarray) -> np.ndarray:
    """(H, W, C+1) uint8 with alpha last -> (H, W, C) composited over black."""
    color = rgba[..., :-1].astype(np.uint16)
    alpha = rgba[..., -1:].astype(np.uint16)
    return ((color * alpha + 127) // 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> np.ndarray:
    gray = _gray(img)
    if gray is not None:
        return np.repeat(gray[..., None], 3, axis=2)
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode == "RGBA":
        return _over_black(np.asarray(img))
    if mode == "LA":
        return np.repeat(_over_black(np.asarray(img)), 3, axis=2)
    if mode == "PA" or (mode == "P" and "transparency" in img.info):
        return _over_black(np.asarray(img.convert("RGBA")))
    return np.array(img.convert("RGB"), dtype=np.uint8)


def decode_image(data: bytes, *, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode PNG or TIFF bytes to an RGB image (rules in the module docstring).

    Parameters
    ----------
    data : bytes
        The file's content.
    name : str
        Used in error messages (a file name or URI).
    max_pixels : int
        Largest ``height * width`` accepted, checked from the header before decoding.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3) uint8``, axes row, column, RGB channel.

    Raises
    ------
    ImageDecodeError
        Empty, not a PNG/TIFF, truncated, corrupt or larger than `max_pixels`.
    """
    with _open(data, name, max_pixels) as img:
        _load(img, name)
        out = _to_rgb(img)
    return np.ascontiguousarray(out)


def decode_mask(data: bytes, *, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a mask to one channel (16-bit scaled by ``// 257``, colour by channel maximum).

    Parameters
    ----------
    data : bytes
        The file's content (PNG or TIFF, any mode).
    name : str
        Used in error messages.
    max_pixels : int
        Largest ``height * width`` accepted, checked from the header before decoding.

    Returns
    -------
    numpy.ndarray
        ``(H, W) uint8``.

    Raises
    ------
    ImageDecodeError
        As :func:`decode_image`.
    """
    with _open(data, name, max_pixels) as img:
        _load(img, name)
        out = _gray(img)
        if out is None:
            out = channel_max(_to_rgb(img))
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------- native pixels


def _native_pil(img: Image.Image) -> np.ndarray:
    """Pillow image -> (H, W, C) in its own dtype (alpha composited over black)."""
    mode = img.mode
    if mode == "1":
        out = np.asarray(img, dtype=bool).astype(np.uint8) * np.uint8(255)
    elif mode == "L":
        out = np.array(img, dtype=np.uint8)
    elif mode in _SIXTEEN_BIT:
        out = np.asarray(img).astype(np.uint16)
    elif mode == "I":
        raw = np.asarray(img)
        if raw.size and raw.min() >= 0 and raw.max() <= 65535:
            out = raw.astype(np.uint16)
        else:
            out = raw.astype(np.float32)
    elif mode == "F":
        out = np.asarray(img, dtype=np.float32)
    elif mode == "RGB":
        out = np.array(img, dtype=np.uint8)
    elif mode in ("RGBA", "LA"):
        out = _over_black(np.asarray(img))
    elif mode == "PA" or (mode == "P" and "transparency" in img.info):
        out = _over_black(np.asarray(img.convert("RGBA")))
    else:
        out = np.array(img.convert("RGB"), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def _yx_last_channels(array: np.ndarray, axes: str) -> np.ndarray:
    """Move the Y and X axes of a tifffile series to the front, every other axis to channels."""
    if len(axes) != array.ndim or "Y" not in axes or "X" not in axes:
        axes = "Q" * (array.ndim - 2) + "YX"
    y, x = axes.index("Y"), axes.index("X")
    rest = [i for i in range(array.ndim) if i not in (y, x)]
    out = np.transpose(array, (y, x, *rest))
    return out.reshape(out.shape[0], out.shape[1], -1)


def _native_tiff(data: bytes, name: str, max_pixels: int) -> np.ndarray | None:
    """Decode a TIFF with tifffile (all pages and samples); None where tifffile cannot."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - scikit-image depends on it
        return None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            total = int(np.prod(shape, dtype=np.int64))
            if len(shape) < 2 or total == 0:
                raise ImageDecodeError(name, f"TIFF holds no image (shape {shape})")
            if total > 16 * max_pixels:
                raise ImageDecodeError(
                    name, f"image too large: {total} values > {16 * max_pixels} allowed"
                )
            array = series.asarray()
    except ImageDecodeError:
        raise
    except MemoryError:
        raise
    except (ValueError, KeyError, IndexError, OSError, NotImplementedError, TypeError) as exc:
        if "imagecodecs" in str(exc) or isinstance(exc, NotImplementedError):
            return None  # a compression tifffile cannot decode without imagecodecs: Pillow's turn
        raise ImageDecodeError(name, f"corrupt or truncated TIFF ({exc})") from exc
    except Exception as exc:
        raise ImageDecodeError(name, f"corrupt or truncated TIFF ({exc})") from exc
    out = _yx_last_channels(np.asarray(array), axes)
    if out.dtype == bool:
        out = out.astype(np.uint8) * np.uint8(255)
    elif out.dtype.kind == "f" and out.dtype != np.float32:
        out = out.astype(np.float32)
    elif out.dtype.kind == "c":
        raise ImageDecodeError(name, "complex-valued TIFF is not supported")
    return out


def decode_native(data: bytes, *, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode PNG or TIFF bytes without loss: ``(H, W, C)`` in the file's own dtype.

    8-bit stays ``uint8``, 12/16-bit ``uint16``, 32-bit float ``float32`` (other floats
    converted), 32-bit integer ``uint16`` when it fits else ``float32``; 1-bit to 0/255. Grey
    is one channel, RGB three; alpha is composited over black (RGBA -> 3, LA -> 1 channel).
    TIFFs are read with tifffile: every page and sample of the first series becomes a channel
    (a two-page grey TIFF is ``(H, W, 2)``; ``CYX``, ``ZYX``, ``YXS`` likewise). 16-bit colour
    PNGs are the one lossy case (Pillow keeps the high byte). Safety checks and errors are
    those of :func:`decode_image`.

    Returns
    -------
    numpy.ndarray
        ``(H, W, C)``, axes row, column, channel.
    """
    with _open(data, name, max_pixels) as img:
        fmt = img.format
        if fmt == "TIFF":
            out = _native_tiff(bytes(data), name, max_pixels)
            if out is not None:
                if out.shape[:2] != (img.size[1], img.size[0]):
                    raise ImageDecodeError(
                        name, f"TIFF pages differ in size from the first ({img.size})"
                    )
                return np.ascontiguousarray(out)
        _load(img, name)
        out = _native_pil(img)
    return np.ascontiguousarray(out)


def decode_labels(data: bytes, *, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an instance label image: ``(H, W) int32``, 0 = background, values kept.

    Accepts one-channel 8-, 16- or 32-bit integer PNG/TIFF (and float TIFFs holding whole
    numbers). Colour or multi-channel label images are refused: their colours are not ids.

    Raises
    ------
    ImageDecodeError
        As :func:`decode_image`, and for several channels, negative or fractional values.
    """
    out = decode_native(data, name=name, max_pixels=max_pixels)
    if out.shape[2] != 1:
        raise ImageDecodeError(
            name, f"a label image must have one channel, this one has {out.shape[2]}"
        )
    out = out[..., 0]
    if out.dtype.kind == "f":
        if not np.all(np.isfinite(out)) or np.any(out != np.round(out)):
            raise ImageDecodeError(name, "label image holds fractional values, not integer ids")
    if out.size and out.min() < 0:
        raise ImageDecodeError(name, "label image holds negative values")
    if out.size and out.max() > np.iinfo(np.int32).max:
        raise ImageDecodeError(name, "label image holds ids beyond int32")
    return np.ascontiguousarray(out.astype(np.int32))


def image_size(data: bytes, *, name: str) -> tuple[int, int]:
    """``(height, width)`` read from the header only; no pixel is decoded.

    Raises
    ------
    ImageDecodeError
        Empty, not a PNG/TIFF or an unreadable header.
    """
    view = _check_data(data, name)
    size = _header_size(view, name)
    if size is None:
        with _open(data, name, None) as img:
            size = img.size
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(name, f"corrupt header: image size {width}x{height} is empty")
    return height, width


def read_image(uri: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read `uri` through :mod:`neuroseg.storage` and :func:`decode_image` it (URI as name).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3) uint8``.
    """
    name = os.fspath(uri)
    return decode_image(storage.read_bytes(name), name=name, max_pixels=max_pixels)


def read_mask(uri: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read `uri` through :mod:`neuroseg.storage` and :func:`decode_mask` it (URI as name).

    Returns
    -------
    numpy.ndarray
        ``(H, W) uint8``.
    """
    name = os.fspath(uri)
    return decode_mask(storage.read_bytes(name), name=name, max_pixels=max_pixels)


def read_native(uri: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read `uri` and :func:`decode_native` it: ``(H, W, C)`` in the file's own dtype."""
    name = os.fspath(uri)
    return decode_native(storage.read_bytes(name), name=name, max_pixels=max_pixels)


def read_labels(uri: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read `uri` and :func:`decode_labels` it: ``(H, W) int32``."""
    name = os.fspath(uri)
    return decode_labels(storage.read_bytes(name), name=name, max_pixels=max_pixels)


def encode_labels(labels: np.ndarray) -> tuple[bytes, str]:
    """Encode an instance label image losslessly: ``(bytes, suffix)``.

    16-bit PNG (``".png"``) while the largest id fits in 65,535, else a zlib-compressed 32-bit
    TIFF (``".tif"``). Fiji and napari open both with the ids as pixel values.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"expected a 2-D integer label image, got {labels.dtype} {labels.shape}")
    top = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise ValueError("label image holds negative values")
    buf = io.BytesIO()
    if top <= 65535:
        Image.fromarray(np.ascontiguousarray(labels.astype(np.uint16))).save(
            buf, format="PNG", compress_level=6
        )
        return buf.getvalue(), ".png"
    import tifffile

    tifffile.imwrite(buf, np.ascontiguousarray(labels.astype(np.uint32)), compression="zlib")
    return buf.getvalue(), ".tif"


def encode_png(array: np.ndarray, *, compress_level: int = 6) -> bytes:
    """Encode an 8-bit image as PNG bytes (lossless).

    Parameters
    ----------
    array : numpy.ndarray
        ``(H, W)`` (grayscale), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA), ``uint8``; a
        ``bool`` ``(H, W)`` mask is written as 0/255.
    compress_level : int
        zlib level, 0..9: 6 (the default) for files that are kept, 1 for pictures made often
        (several times faster, somewhat larger).

    Returns
    -------
    bytes
        The PNG file.
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype == bool and array.ndim == 2:
        array = array.astype(np.uint8) * np.uint8(255)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {array.dtype}; scale it to 0..255 first")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"expected shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"cannot encode an empty image of shape {array.shape}")
    if isinstance(compress_level, bool) or compress_level not in range(10):
        raise ValueError(f"compress_level must be an integer 0..9, got {compress_level!r}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()
