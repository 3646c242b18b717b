"""neuroseg.images: every Pillow mode we accept, each bad input, and the real FNC images."""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from neuroseg import images, storage
from neuroseg.images import ImageDecodeError, decode_image, decode_mask, image_size

RNG = np.random.default_rng(7)
GRAY = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
WIDE = (RNG.integers(0, 65536, (5, 7))).astype(np.uint16)
WIDE[0, :3] = [0, 65535, 257]


def _save(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def _png(width, height, *, bit_depth=8, color_type=2, raw=b"", idat=True) -> bytes:
    """A PNG built by hand: valid IHDR, one IDAT of `raw` (filter bytes included), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr)
    if idat:
        body += _chunk(b"IDAT", zlib.compress(raw))
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


def _over_black(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    exact = color.astype(np.float64) * alpha.astype(np.float64)[..., None] / 255
    return np.floor(exact + 0.5).astype(np.uint8)  # 'round half up'; exact halves never occur


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_gray8(fmt):
    data = _save(Image.fromarray(GRAY), fmt)
    out = decode_image(data, name="g")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], GRAY)
    np.testing.assert_array_equal(decode_mask(data, name="g"), GRAY)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_rgb8(fmt):
    data = _save(Image.fromarray(RGB), fmt)
    np.testing.assert_array_equal(decode_image(data, name="c"), RGB)
    np.testing.assert_array_equal(decode_mask(data, name="c"), RGB.max(axis=2))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_rgba_composited_over_black(fmt):
    rgba = np.dstack([RGB, ALPHA])
    data = _save(Image.fromarray(rgba), fmt)
    expected = _over_black(RGB, ALPHA)
    np.testing.assert_array_equal(decode_image(data, name="a"), expected)
    np.testing.assert_array_equal(decode_mask(data, name="a"), expected.max(axis=2))
    # known answers: opaque keeps the colour, transparent is black, half alpha halves
    tiny = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], np.uint8)
    out = decode_image(_save(Image.fromarray(tiny), fmt), name="t")
    np.testing.assert_array_equal(out[0], [[200, 100, 50], [0, 0, 0], [100, 50, 25]])


def test_la_composited_over_black():
    la = Image.merge("LA", [Image.fromarray(GRAY), Image.fromarray(ALPHA)])
    data = _save(la)
    assert Image.open(io.BytesIO(data)).mode == "LA"
    expected = _over_black(GRAY[..., None], ALPHA)[..., 0]
    out = decode_image(data, name="la")
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)
    np.testing.assert_array_equal(decode_mask(data, name="la"), expected)


def _palette_image() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    colors = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [10, 20, 30]], np.uint8)
    index = RNG.integers(0, 4, (5, 7), dtype=np.uint8)
    img = Image.frombytes("P", (7, 5), index.tobytes())
    img.putpalette(colors.ravel().tolist())
    return img, colors, index


def test_palette_without_transparency():
    img, colors, index = _palette_image()
    for fmt in ("PNG", "TIFF"):
        data = _save(img, fmt)
        assert Image.open(io.BytesIO(data)).mode == "P"
        np.testing.assert_array_equal(decode_image(data, name="p"), colors[index])
        np.testing.assert_array_equal(decode_mask(data, name="p"), colors[index].max(axis=2))


def test_palette_with_transparency_composited_over_black():
    img, colors, index = _palette_image()
    data = _save(img, transparency=1)  # palette entry 1 (red) fully transparent
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" in reopened.info
    expected = colors[index].copy()
    expected[index == 1] = 0
    np.testing.assert_array_equal(decode_image(data, name="pt"), expected)
    # a per-entry alpha table (tRNS with several values): entry 2 at alpha 51
    data = _save(img, transparency=bytes([255, 0, 51, 255]))
    expected = colors[index].astype(np.float64)
    expected[index == 1] = 0
    expected[index == 2] = expected[index == 2] * 51 / 255
    np.testing.assert_array_equal(
        decode_image(data, name="pt2"), np.floor(expected + 0.5).astype(np.uint8)
    )


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_one_bit(fmt):
    bits = GRAY > 127
    img = Image.fromarray(bits)
    assert img.mode == "1"
    data = _save(img, fmt)
    assert Image.open(io.BytesIO(data)).mode == "1"
    expected = np.where(bits, 255, 0).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(data, name="b")[..., 1], expected)
    np.testing.assert_array_equal(decode_mask(data, name="b"), expected)


def _sixteen(mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(WIDE)
    if mode == "I;16B":
        return Image.frombytes("I;16B", (7, 5), WIDE.astype(">u2").tobytes())
    return Image.fromarray(WIDE.astype(np.int32))  # "I"


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF")],
)
def test_sixteen_bit_scaled_by_257(mode, fmt):
    data = _save(_sixteen(mode), fmt)
    opened = Image.open(io.BytesIO(data)).mode
    assert opened in ("I;16", "I;16B", "I")
    expected = (WIDE // 257).astype(np.uint8)
    assert expected[0, :3].tolist() == [0, 255, 1]
    out = decode_image(data, name="w")
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)
    np.testing.assert_array_equal(decode_mask(data, name="w"), expected)


def test_mode_i_clipped_to_sixteen_bits():
    values = np.array([[-5, 0, 65535, 70000, 257 * 100]], dtype=np.int32)
    data = _save(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    np.testing.assert_array_equal(decode_mask(data, name="i"), [[0, 0, 255, 255, 100]])


def test_sixteen_bit_rgb_png_keeps_high_byte():
    rgb16 = RNG.integers(0, 65536, (3, 4, 3)).astype(np.uint16)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    data = _png(4, 3, bit_depth=16, color_type=2, raw=raw)
    out = decode_image(data, name="rgb16")
    np.testing.assert_array_equal(out, (rgb16 >> 8).astype(np.uint8))
    assert np.abs(out.astype(int) - rgb16 // 257).max() <= 1


def test_other_modes_via_pillow():
    cmyk = Image.fromarray(RGB).convert("CMYK")
    data = _save(cmyk, "TIFF")
    out = decode_image(data, name="cmyk")
    np.testing.assert_array_equal(out, np.asarray(cmyk.convert("RGB")))
    floats = np.array([[-1.0, 0.0, 12.4, 254.6, 300.0]], dtype=np.float32)
    out = decode_mask(_save(Image.fromarray(floats), "TIFF"), name="f")
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(floats).convert("L")))


def test_outputs_are_writable_and_contiguous():
    out = decode_image(_save(Image.fromarray(RGB)), name="x")
    assert out.flags.c_contiguous and out.flags.writeable
    out[0, 0] = 1
    mask = decode_mask(_save(Image.fromarray(GRAY)), name="x")
    assert mask.flags.c_contiguous and mask.flags.writeable


# ----------------------------------------------------------------------------- sizes


def test_image_size_from_header():
    assert image_size(_save(Image.fromarray(RGB)), name="p") == (5, 7)
    assert image_size(_save(Image.fromarray(RGB), "TIFF"), name="t") == (5, 7)
    assert image_size(_save(Image.fromarray(RGB), "TIFF", big_tiff=True), name="bt") == (5, 7)
    big = Image.frombytes("I;16B", (7, 5), WIDE.astype(">u2").tobytes())
    assert image_size(_save(big, "TIFF"), name="mm") == (5, 7)
    # header only: a huge PNG with no pixel data still reports its size, at once
    assert image_size(_png(200_000, 100_000, idat=False), name="huge") == (100_000, 200_000)


def test_image_size_errors():
    with pytest.raises(ImageDecodeError, match="empty"):
        image_size(b"", name="e.png")
    with pytest.raises(ImageDecodeError, match="not a PNG or TIFF"):
        image_size(b"just text", name="t.png")
    with pytest.raises(ImageDecodeError, match="IHDR"):
        image_size(b"\x89PNG\r\n\x1a\n\x00\x00", name="cut.png")


# ----------------------------------------------------------------------------- bad input


def test_empty_bytes():
    with pytest.raises(ImageDecodeError) as err:
        decode_image(b"", name="plate/empty.png")
    assert str(err.value) == "plate/empty.png: empty file (0 bytes)"
    with pytest.raises(ImageDecodeError):
        decode_mask(b"", name="m.png")


def test_text_named_png():
    with pytest.raises(ImageDecodeError, match=r"^notes\.png: not a PNG or TIFF image$"):
        decode_image(b"this is a text file, not an image\n", name="notes.png")


def test_unsupported_format_named():
    jpeg = _save(Image.fromarray(RGB), "JPEG")
    with pytest.raises(ImageDecodeError, match="JPEG is not supported"):
        decode_image(jpeg, name="a.jpg")


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, -12, -1])
def test_truncated_png(cut):
    data = _save(Image.fromarray(RGB_BIG))
    n = int(len(data) * cut) if cut > 0 else len(data) + cut
    with pytest.raises(ImageDecodeError, match=r"^t\.png: truncated PNG"):
        decode_image(data[:n], name="t.png")


RGB_BIG = RNG.integers(0, 256, (64, 80, 3), dtype=np.uint8)


def test_truncated_png_refused_even_when_pillow_allows_truncation(monkeypatch):
    data = _save(Image.fromarray(RGB_BIG))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode_image(data[: len(data) // 2], name="t.png")
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode_mask(data[:-12], name="t.png")  # IEND removed


def test_truncated_tiff():
    data = _save(Image.fromarray(RGB_BIG), "TIFF")  # strips first, IFD at the end
    with pytest.raises(ImageDecodeError, match=r"^t\.tif: "):
        decode_image(data[: len(data) // 2], name="t.tif")
    # an IFD placed before the pixel data, data cut short
    buf = _save(Image.fromarray(RGB_BIG), "TIFF")
    ifd_first = _move_ifd_first(buf)
    np.testing.assert_array_equal(decode_image(ifd_first, name="ok.tif"), RGB_BIG)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(ifd_first[: len(ifd_first) - 500], name="t.tif")


def _move_ifd_first(data: bytes) -> bytes:
    """The same RGB image as a minimal uncompressed TIFF with the IFD right after the header.

    Pillow writes the pixel strips first and the IFD last, so cutting its files loses the header;
    this layout lets a cut hit the pixel data instead.
    """
    img = Image.open(io.BytesIO(data))
    h, w = img.size[1], img.size[0]
    pixels = np.asarray(img).tobytes()
    entries = [
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 1, 8),  # bits per sample (one value applies to all, acceptable to Pillow)
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 0),  # strip offset, patched below
        (277, 3, 1, 3),
        (278, 4, 1, h),
        (279, 4, 1, len(pixels)),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip = 8 + ifd_size
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = strip
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    return out + struct.pack("<I", 0) + pixels


def test_huge_png_header_fails_fast_without_allocating():
    data = _png(200_000, 200_000, raw=b"\x00" * 10)  # valid IHDR, IDAT and IEND
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, name="bomb.png")
    assert time.perf_counter() - start < 0.5
    msg = str(err.value)
    assert msg.startswith("bomb.png: image of 200000x200000 = 40000000000 pixels exceeds")
    assert "max_pixels=100000000" in msg
    with pytest.raises(ImageDecodeError, match="exceeds max_pixels"):
        decode_mask(data, name="bomb.png")
    # a tighter limit applies to ordinary images too
    with pytest.raises(ImageDecodeError, match="35 pixels exceeds max_pixels=34"):
        decode_image(_save(Image.fromarray(RGB)), name="x.png", max_pixels=34)
    assert decode_image(_save(Image.fromarray(RGB)), name="x.png", max_pixels=35).shape == (5, 7, 3)


def test_huge_tiff_header_fails_fast():
    entries = [(256, 4, 1, 150_000), (257, 4, 1, 150_000), (258, 3, 1, 8), (262, 3, 1, 1)]
    body = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        body += struct.pack("<HHI", tag, typ, count) + packed
    body += struct.pack("<I", 0)
    assert image_size(body, name="big.tif") == (150_000, 150_000)
    with pytest.raises(ImageDecodeError, match="exceeds max_pixels"):
        decode_image(body, name="big.tif")


def test_pillow_bomb_guard_converted():
    # our limit raised above Pillow's: Pillow's DecompressionBombError becomes ImageDecodeError
    data = _png(200_000, 200_000, raw=b"\x00")
    with pytest.raises(ImageDecodeError, match="Pillow's bomb guard"):
        decode_image(data, name="bomb.png", max_pixels=10**12)
    # between Pillow's warning and error limits: the warning, raised as an error, is converted
    assert Image.MAX_IMAGE_PIXELS is not None
    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageDecodeError, match="Pillow's bomb guard"):
            decode_image(_png(side, side, raw=b"\x00"), name="w.png", max_pixels=10**12)


def _idat_span(data: bytes) -> tuple[int, int]:
    pos = 8
    while True:
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if ctype == b"IDAT":
            return pos, length
        pos += 12 + length


def test_corrupt_idat_bad_crc():
    data = bytearray(_save(Image.fromarray(RGB_BIG)))
    pos, length = _idat_span(bytes(data))
    data[pos + 8 + length // 2] ^= 0xFF
    with pytest.raises(ImageDecodeError, match=r"^c\.png: corrupt PNG: CRC mismatch in the IDAT"):
        decode_image(bytes(data), name="c.png")


def test_corrupt_idat_valid_crc():
    """Garbage compressed data with a correct CRC: the decoder's error is converted."""
    raw = b"".join(b"\x00" + row.tobytes() for row in RGB_BIG)
    garbage = bytearray(zlib.compress(raw))
    garbage[2:40] = bytes(range(38))  # break the deflate stream right after the zlib header
    ihdr = struct.pack(">IIBBBBB", 80, 64, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", bytes(garbage))
        + _chunk(b"IEND", b"")
    )
    with pytest.raises(ImageDecodeError, match=r"^c\.png: corrupt PNG: the compressed image"):
        decode_image(data, name="c.png")
    with pytest.raises(ImageDecodeError):
        decode_mask(data, name="c.png")


def test_png_without_enough_pixel_data():
    """IDAT complete and CRC-correct but holding fewer rows than IHDR promises."""
    rows = b"".join(b"\x00" + row.tobytes() for row in RGB[:2])
    with pytest.raises(ImageDecodeError, match=r"holds 44 of 110 bytes \(compressed stream compl"):
        decode_image(_png(7, 5, raw=rows), name="short.png")  # Pillow alone zero-fills this
    # the compressed stream itself cut short (CRC made valid again)
    full = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in RGB))
    ihdr = struct.pack(">IIBBBBB", 7, 5, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", full[: len(full) // 2])
        + _chunk(b"IEND", b"")
    )
    with pytest.raises(ImageDecodeError, match=r"truncated PNG.*cut short"):
        decode_image(data, name="short.png")
    # no IDAT at all
    with pytest.raises(ImageDecodeError, match="no IDAT"):
        decode_image(_png(7, 5, idat=False), name="none.png")


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # fmt: skip


def _adam7_png(array: np.ndarray) -> bytes:
    """An Adam7-interlaced PNG built by hand (Pillow cannot write one)."""
    height, width = array.shape[:2]
    big = array.dtype == np.uint16
    color = 0 if array.ndim == 2 else 2
    raw = b""
    for x0, y0, dx, dy in ADAM7:
        sub = array[y0::dy, x0::dx]
        if sub.size:
            sub = sub.astype(">u2") if big else sub
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", width, height, 16 if big else 8, color, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def test_interlaced_and_multi_idat_png():
    """Adam7-interlaced PNGs decode exactly, and missing interlaced data is detected."""
    for array in (RGB_BIG, GRAY, WIDE, RGB_BIG[:3, :2], GRAY[:1, :1]):
        data = _adam7_png(array)
        assert data[28] == 1  # the interlace byte
        got = decode_mask(data, name="i") if array.ndim == 2 else decode_image(data, name="i")
        want = (array // 257).astype(np.uint8) if array.dtype == np.uint16 else array
        np.testing.assert_array_equal(got, want)
    short = _adam7_png(RGB_BIG)
    pos, length = _idat_span(short)
    stream = zlib.decompress(short[pos + 8 : pos + 8 + length])
    ihdr = short[8:33]
    cut = b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(stream[:-50]))
    with pytest.raises(ImageDecodeError, match="truncated PNG: the image data holds"):
        decode_image(cut + _chunk(b"IEND", b""), name="i.png")


def test_image_data_split_over_many_idat_chunks():
    raw = b"".join(b"\x00" + row.tobytes() for row in RGB_BIG)
    stream = zlib.compress(raw)
    ihdr = struct.pack(">IIBBBBB", 80, 64, 8, 2, 0, 0, 0)
    parts = [stream[i : i + 100] for i in range(0, len(stream), 100)]
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + b"".join(_chunk(b"IDAT", p) for p in parts)
        + _chunk(b"IEND", b"")
    )
    assert len(parts) > 10
    np.testing.assert_array_equal(decode_image(data, name="multi"), RGB_BIG)


def test_bad_arguments():
    with pytest.raises(TypeError):
        decode_image("not bytes", name="x")
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(_save(Image.fromarray(RGB)), name="x", max_pixels=0)


def test_error_is_value_error_and_pickles():
    err = ImageDecodeError("s3://b/x.png", "truncated PNG")
    assert isinstance(err, ValueError)
    assert str(err) == "s3://b/x.png: truncated PNG"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ImageDecodeError and str(back) == str(err) and back.reason == err.reason
    assert not storage.is_transient(err)


# ----------------------------------------------------------------------------- encode / read


def test_encode_png_round_trips():
    for array in (GRAY, RGB, np.dstack([RGB, ALPHA])):
        data = images.encode_png(array)
        assert data.startswith(b"\x89PNG")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), array)
    np.testing.assert_array_equal(decode_image(images.encode_png(RGB), name="r"), RGB)
    np.testing.assert_array_equal(decode_mask(images.encode_png(GRAY), name="g"), GRAY)
    mask = GRAY > 100
    np.testing.assert_array_equal(decode_mask(images.encode_png(mask), name="m"), mask * 255)
    np.testing.assert_array_equal(
        decode_image(images.encode_png(np.asfortranarray(RGB)), name="f"), RGB
    )


def test_encode_png_compress_level_trades_size_not_pixels():
    rng = np.random.default_rng(0)
    noisy = np.clip(rng.normal(60, 20, (120, 160, 3)), 0, 255).astype(np.uint8)
    fast, small = images.encode_png(noisy, compress_level=1), images.encode_png(noisy)
    for data in (fast, small):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), noisy)
    assert len(fast) > len(small)
    for level in (-1, 10, 2.5, True):
        with pytest.raises(ValueError, match="compress_level"):
            images.encode_png(noisy, compress_level=level)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint16),
        np.zeros((4, 4), np.float32),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros(4, np.uint8),
        np.zeros((0, 4), np.uint8),
    ],
)
def test_encode_png_refuses(bad):
    with pytest.raises(ValueError):
        images.encode_png(bad)


def test_read_image_and_mask_local_and_s3(tmp_path, s3_bucket):
    for root in (str(tmp_path), s3_bucket):
        img_uri = storage.join(root, "images/a.png")
        mask_uri = storage.join(root, "masks/a.png")
        storage.write_bytes(img_uri, images.encode_png(RGB))
        storage.write_bytes(mask_uri, images.encode_png(GRAY))
        np.testing.assert_array_equal(images.read_image(img_uri), RGB)
        np.testing.assert_array_equal(images.read_mask(mask_uri), GRAY)
        bad_uri = storage.join(root, "images/bad.png")
        storage.write_bytes(bad_uri, b"oops")
        with pytest.raises(ImageDecodeError) as err:
            images.read_image(bad_uri)
        assert str(err.value).startswith(bad_uri + ": ")
        with pytest.raises(FileNotFoundError):
            images.read_image(storage.join(root, "images/missing.png"))


def test_images_is_light():
    code = "import sys, neuroseg.images; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- real FNC data


@pytest.mark.fnc
def test_real_fnc_images_and_masks(fnc_root):
    pairs = sorted(fnc_root.glob("*/images/*.png"))
    assert pairs
    for image_path in pairs:
        mask_path = image_path.parent.parent / "masks" / image_path.name
        with Image.open(image_path) as ref:
            width, height = ref.size
            reference = np.asarray(ref.convert("RGB"))
        image = images.read_image(str(image_path))
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, reference)
        assert image_size(image_path.read_bytes(), name=str(image_path)) == (height, width)
        mask = images.read_mask(str(mask_path))
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 255} and mask.max() == 255
    yellow = images.read_image(str(sorted(fnc_root.glob("yellow/images/*.png"))[0]))
    assert yellow.shape == (1200, 1600, 3)
