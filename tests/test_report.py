"""The per-plate HTML report, from a real cell table, label images, images and records.

No model: the plate is drawn with known cells (a label image per image, written with the
nightly run's convention), measured with ``cell_records`` and written with ``write_cells``.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from neuroseg import storage
from neuroseg.cli import main
from neuroseg.inference import cells_file_uri, processed_record_uri, read_cells, write_cells
from neuroseg.measure import cell_records
from neuroseg.report import plate_report_uri, write_plate_report

PLATE = "P7"
WHEN = dt.datetime(2026, 11, 30, 2, 0, tzinfo=dt.UTC)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _labels(height: int, width: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    labels = np.zeros((height, width), np.int32)
    for i, (y, x, h, w) in enumerate(boxes, start=1):  # raster order of first pixels
        labels[y : y + h, x : x + w] = i
    return labels


def _add_image(root, image_id, image, labels, *, label_image=True, pixel_size_um=None):
    """Upload, table rows, label image (nightly convention) and processed record of one image."""
    uri = storage.join(root, "uploads", PLATE, f"{image_id}.png")
    storage.write_bytes(uri, _png(image[..., 0] if image.shape[2] == 1 else image))
    df = cell_records(
        labels,
        image,
        None,
        plate_id=PLATE,
        image_id=image_id,
        image_uri=uri,
        image_sha256="0" * 64,
        model_name="m",
        model_version="v1",
        processed_at=WHEN,
        pixel_size_um=pixel_size_um,
    )
    write_cells(df, cells_file_uri(storage.join(root, "cells"), PLATE, image_id))
    if label_image:
        path = storage.join(root, "labels", f"plate_id={PLATE}", f"{image_id}.png")
        storage.write_bytes(path, _png(labels.astype(np.uint16)))  # a 16-bit PNG
    record = {"plate_id": PLATE, "image_id": image_id, "image_uri": uri, "cells": len(df)}
    record |= {"model_name": "m", "model_version": "v1", "processed_at": WHEN.isoformat()}
    storage.write_json(processed_record_uri(root, PLATE, image_id), record)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("report-root"))
    rng = np.random.default_rng(0)
    rgb = np.zeros((90, 120, 3), np.uint8)
    rgb[..., :2] = 40
    a = _labels(90, 120, [(10, 10, 12, 15), (40, 60, 20, 20), (70, 100, 15, 20)])
    rgb[a > 0] = (220, 200, 30)
    _add_image(root, "a_rgb", rgb, a, pixel_size_um=0.5)  # cells of 180, 400, 300 px
    # 12-bit values in a 16-bit grey file: shown stretched, not black
    grey = rng.integers(100, 300, (90, 120), dtype=np.uint16)
    g = _labels(90, 120, [(20, 30, 25, 25)])
    grey[g > 0] = 3500
    _add_image(root, "b_grey16", grey[..., None], g)
    # no label image: the table's boxes are drawn instead
    _add_image(root, "c_nolabels", rgb, a, label_image=False)
    # processed, no cell found
    _add_image(root, "d_empty", np.zeros((90, 120, 3), np.uint8), np.zeros((90, 120), np.int32))
    # a full-size camera image (noise: the worst case for the thumbnail's size)
    big = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    _add_image(root, "e_big", big, _labels(1200, 1600, [(100, 200, 80, 90), (700, 1000, 60, 60)]))
    # failures: a decode error recorded by the nightly run, a file quarantined at ingestion
    storage.write_json(
        processed_record_uri(root, PLATE, "f_broken"),
        {
            "plate_id": PLATE,
            "image_id": "f_broken",
            "image_uri": storage.join(root, "uploads", PLATE, "f_broken.png"),
            "status": "quarantined",
            "reason": "f_broken.png: truncated PNG <IEND missing>",
        },
    )
    q = storage.join(root, "quarantine", "uploads", PLATE, "g_tiny.tif")
    storage.write_bytes(q + ".reason.txt", b"g_tiny.tif: image is 8x8, sides must be >= 16 px\n")
    return root


def _cards(page: str) -> dict[str, str]:
    found = re.findall(r'<figure class="card"[^>]*data-image-id="([^"]+)"(.*?)</figure>', page)
    return dict(found)


def test_page_shows_every_image_its_cells_and_the_failures(plate):
    out = write_plate_report(
        plate,
        PLATE,
        failures=[{"image_uri": "s3://lab/uploads/P7/h_lost.png", "reason": "worker died"}],
    )
    assert out["uri"] == plate_report_uri(plate, PLATE) and storage.exists(out["uri"])
    page = storage.read_bytes(out["uri"]).decode()
    table = read_cells(storage.join(plate, "cells"), filters=[("plate_id", "==", PLATE)])
    counts = table.groupby("image_id", observed=True).size().to_dict()
    cards = _cards(page)
    ids = ["a_rgb", "b_grey16", "c_nolabels", "d_empty", "e_big"]
    assert list(cards) == ids
    # one embedded thumbnail per image, no external resource anywhere
    assert len(re.findall(r'<image [^>]*href="data:image/(?:png|jpeg);base64,', page)) == 5
    assert not re.search(r'(?:src|href)="(?!data:|#)', page)
    for image_id, body in cards.items():
        n = counts.get(image_id, 0)
        assert f'data-image-id="{image_id}" data-cells="{n}"' in page
        numbers = [int(t) for t in re.findall(r"<text [^>]*>(\d+)</text>", body)]
        assert sorted(numbers) == sorted(table.loc[table["image_id"] == image_id, "cell_id"])
        # outlines from the label image; boxes only where there is none
        assert body.count("<rect ") == (n if image_id == "c_nolabels" else 0)
        row = re.search(rf'class="count-row" data-image-id="{image_id}">.*?</tr>', page).group(0)
        assert re.findall(r'<td class="n">([^<]*)</td>', row)[0] == str(n)
    assert out["per_image"] == {k: counts.get(k, 0) for k in ids}
    # µm where the pixel size is known (a_rgb: 0.5 µm, so 45, 100, 75 µm²), a dash elsewhere
    row = re.search(r'class="count-row" data-image-id="a_rgb">.*?</tr>', page).group(0)
    assert re.findall(r'<td class="n">([^<]*)</td>', row)[-1] == "75.0"
    assert '<span class="um2">75.0</span> µm²' in cards["a_rgb"]
    assert '<span class="px-um">0.5</span> µm/px' in cards["a_rgb"]
    row = re.search(r'class="count-row" data-image-id="b_grey16">.*?</tr>', page).group(0)
    assert re.findall(r'<td class="n">([^<]*)</td>', row)[-1] == "–"
    assert "µm" not in cards["b_grey16"]
    assert out["cells"] == len(table) == 9 and out["images"] == 5
    # the 16-bit grey image is stretched for display (a // 257 view would be black)
    data = re.search(r'<image [^>]*href="data:image/\w+;base64,([^"]+)"', cards["b_grey16"])
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(data.group(1)))).convert("L"))
    assert thumb.max() > 200 and thumb.mean() > 20
    # failures with their reasons, escaped
    fails = dict(
        re.findall(r'class="failure" data-image-id="([^"]+)"><td>[^<]*</td><td>([^<]*)<', page)
    )
    assert fails == {
        "f_broken": "f_broken.png: truncated PNG &lt;IEND missing&gt;",
        "g_tiny": "g_tiny.tif: image is 8x8, sides must be &gt;= 16 px",
        "h_lost": "worker died",
    }
    summary = json.loads(re.search(r'id="plate-summary">(.*?)</script>', page).group(1))
    assert summary["failures"] == 3 and summary["cells"] == 9
    # light: thumbnails of about 320 px, however large the image (20 such images: ~1 MB)
    thumb_big = re.search(r'<image [^>]*href="data:image/\w+;base64,([^"]+)"', cards["e_big"])
    assert Image.open(io.BytesIO(base64.b64decode(thumb_big.group(1)))).size == (320, 240)
    assert len(base64.b64decode(thumb_big.group(1))) < 60_000
    assert out["bytes"] < 150_000


def test_report_command(plate, tmp_path, capsys):
    out = tmp_path / "p7.html"
    assert main(["report", PLATE, "--root", plate, "--out", str(out)]) == 0
    assert "5 image(s), 9 cells, 2 failure(s)" in capsys.readouterr().out
    assert len(_cards(out.read_text())) == 5
    assert main(["report", "NOPE", "--root", plate]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"neuroseg: error: plate 'NOPE' has no processed image under {plate}"
