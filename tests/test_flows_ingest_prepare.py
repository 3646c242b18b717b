"""Ingestion and preparation flows against a real Prefect API, local folders and moto's S3."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from neuroseg import storage


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _huge_header_png(width: int = 200_000, height: int = 200_000) -> bytes:
    """A syntactically valid PNG whose header claims an absurd size (decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _cell_image(seed: int, shape=(300, 420)):
    """A small FNC-like image (dark background, yellow discs) and its exact mask."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rr, cc = np.mgrid[:h, :w]
    mask = np.zeros(shape, bool)
    for _ in range(4):
        r, c, rad = rng.integers(20, h - 20), rng.integers(20, w - 20), rng.integers(8, 18)
        mask |= (rr - r) ** 2 + (cc - c) ** 2 <= rad**2
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 30, 15, 1
    img[mask] = (230, 200, 20)
    img = np.clip(img + rng.integers(0, 8, img.shape), 0, 255).astype(np.uint8)
    return img, (mask * 255).astype(np.uint8)


def _write_uploads(source: str) -> None:
    for plate in ("P001", "P002"):
        for i in range(2):
            img, _ = _cell_image(hash((plate, i)) % 1000)
            storage.write_bytes(storage.join(source, plate, f"{plate}_r01c0{i}.png"), _png(img))
    good = _png(_cell_image(7)[0])
    storage.write_bytes(storage.join(source, "P002", "zero.png"), b"")
    storage.write_bytes(storage.join(source, "P002", "truncated.png"), good[: len(good) // 2])
    storage.write_bytes(storage.join(source, "P002", "notes.png"), b"this is not an image\n")
    storage.write_bytes(storage.join(source, "P002", "bomb.png"), _huge_header_png())


def _write_dataset(source: str, n: int = 4) -> None:
    for i in range(n):
        img, mask = _cell_image(i)
        storage.write_bytes(storage.join(source, "images", f"img{i}.png"), _png(img))
        storage.write_bytes(storage.join(source, "masks", f"img{i}.png"), _png(mask))
    img, mask = _cell_image(99)
    storage.write_bytes(storage.join(source, "images", "wrongsize.png"), _png(img))
    storage.write_bytes(storage.join(source, "masks", "wrongsize.png"), _png(mask[:100, :100]))
    storage.write_bytes(storage.join(source, "images", "nomask.png"), _png(img))


def _artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {a.key for a in client.read_artifacts() if a.key}


def _run_ingest_checks(source: str, root: str) -> None:
    from flows.ingest import IngestParams, ingest

    _write_uploads(source)
    first = ingest(IngestParams(source=source, root=root))
    assert first["ingested"] == 4
    assert first["quarantined"] == 4
    reasons = {row["file"].rsplit("/", 1)[-1]: row["reason"] for row in first["failures"]}
    assert set(reasons) == {"zero.png", "truncated.png", "notes.png", "bomb.png"}
    for name, reason in reasons.items():
        assert name in reason  # one line naming the file
        assert "\n" not in reason
    assert storage.exists(storage.join(root, "quarantine", "uploads", "P002", "bomb.png"))
    why = storage.read_bytes(
        storage.join(root, "quarantine", "uploads", "P002", "bomb.png.reason.txt")
    )
    assert b"bomb.png" in why
    # good images copied under uploads/ and recorded with their content hash
    manifest = pd.DataFrame(
        [
            storage.read_json(u)
            for u in storage.list_files(storage.join(root, "manifests", "uploads"))
        ]
    )
    assert sorted(manifest["image_id"]) == [
        "P001_r01c00",
        "P001_r01c01",
        "P002_r01c00",
        "P002_r01c01",
    ]
    for rec in manifest.to_dict("records"):
        assert storage.sha256_bytes(storage.read_bytes(rec["image_uri"])) == rec["sha256"]
    second = ingest(IngestParams(source=source, root=root))
    assert second["ingested"] == 0
    assert second["skipped"] == 4


def test_ingest_uploads_local(prefect_api, tmp_path):
    _run_ingest_checks(str(tmp_path / "incoming"), str(tmp_path / "root"))
    assert {"ingest-uploads", "ingest-uploads-failures"} <= _artifact_keys()


def test_ingest_uploads_s3(prefect_api, s3_bucket):
    _run_ingest_checks(f"{s3_bucket}/incoming", f"{s3_bucket}/root")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_ingest_and_prepare_dataset(prefect_api, tmp_path, where, request):
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare

    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        src, root = f"{bucket}/src", f"{bucket}/root"
    else:
        src, root = str(tmp_path / "src"), str(tmp_path / "root")
    _write_dataset(src)
    res = ingest(IngestParams(source=src, root=root, dataset="tiny"))
    assert res["ingested"] == 4
    reasons = " ".join(f["reason"] for f in res["failures"])
    assert "wrongsize.png" in reasons and "mask is 100x100" in reasons
    assert "nomask.png" in reasons

    params = PrepareParams(root=root, dataset="tiny", tile=128, min_overlap=32)
    summary = prepare(params)
    assert summary["images"] == 4 and not summary["cached"]
    out = summary["prepared_uri"]
    tiles = storage.read_parquet(storage.join(out, "tiles.parquet"))
    splits = storage.read_json(storage.join(out, "splits.json"))
    # split by image: every image in exactly one split, every tile follows its image
    ids = [i for part in splits.values() for i in part]
    assert sorted(ids) == ["img0", "img1", "img2", "img3"] and len(set(ids)) == 4
    assert tiles.groupby("image_id")["split"].nunique().max() == 1
    # the shards hold the tiles the index describes, with the mask's foreground
    shard = np.load(io.BytesIO(storage.read_bytes(storage.join(out, "tiles", "img0.npz"))))
    rows = tiles[tiles["image_id"] == "img0"].sort_values("tile_index")
    assert shard["images"].shape == (len(rows), 128, 128, 3)
    assert list((shard["masks"] > 127).reshape(len(rows), -1).sum(1)) == list(rows["foreground_px"])
    cells = storage.read_parquet(storage.join(out, "cells.parquet"))
    assert summary["cells"] == len(cells) > 0
    again = prepare(params)
    assert again["cached"] and again["prepared_uri"] == out
    assert "prepare-tiny" in _artifact_keys()


@pytest.mark.slow
def test_prepare_on_local_dask_cluster(prefect_api, tmp_path):
    from flows.ingest import IngestParams, ingest
    from flows.prepare import ExecutorConfig, PrepareParams, prepare

    src, root = str(tmp_path / "src"), str(tmp_path / "root")
    _write_dataset(src, n=3)
    ingest(IngestParams(source=src, root=root, dataset="dsk"))
    threads = prepare(PrepareParams(root=root, dataset="dsk", tile=128, min_overlap=32, seed=1))
    dask = prepare(
        PrepareParams(
            root=root,
            dataset="dsk",
            tile=128,
            min_overlap=32,
            seed=2,
            executor=ExecutorConfig(kind="dask", workers=2),
        )
    )
    assert dask["tiles"] == threads["tiles"] and dask["cells"] == threads["cells"]
    assert dask["prepared_uri"] != threads["prepared_uri"]  # another split seed, another version
