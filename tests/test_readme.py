"""The README's pandas examples run as written, on a real cell table (local and moto S3)."""

from __future__ import annotations

import re

import numpy as np

from neuroseg import storage
from neuroseg.inference import write_cells
from neuroseg.measure import cell_records
from neuroseg.predict import relabel_raster
from tests.conftest import REPO


def _example(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- readme-example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README example {name!r} not found"
    return match.group(1)


def _write_table(cells_uri: str) -> int:
    """Two plates of measured cells, written as the nightly run writes them."""
    rng = np.random.default_rng(0)
    total = 0
    for plate in ("P001", "P002"):
        for k in range(2):
            labels = np.zeros((200, 300), np.int32)
            for i in range(1, 6):
                r, c = rng.integers(20, 180), rng.integers(20, 280)
                rad = rng.integers(6, 18)
                rr, cc = np.ogrid[:200, :300]
                labels[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] = i
            labels, _ = relabel_raster(labels)
            image = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
            df = cell_records(
                labels,
                image,
                np.full(labels.shape, 0.9, np.float32),
                plate_id=plate,
                image_id=f"{plate}_{k}",
                image_uri=f"mem://{plate}_{k}.png",
                image_sha256="0" * 64,
                model_name="m",
                model_version="v",
                processed_at="2026-11-24T02:00:00Z",
            )
            write_cells(df, storage.join(cells_uri, f"plate_id={plate}", f"{plate}_{k}.parquet"))
            total += len(df)
    return total


def test_local_example(tmp_path, monkeypatch, capsys):
    n = _write_table(str(tmp_path / "neuroseg-data" / "cells"))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_example("local"), scope)
    assert len(scope["cells"]) == n
    assert set(scope["plate"]["plate_id"].astype(str)) == {"P001"}
    assert scope["per_image"].sum() == n and len(scope["per_image"]) == 4
    expected = scope["cells"].query("area_px >= 500 and eccentricity < 0.8")
    assert len(scope["large_round"]) == len(expected)
    assert "P001_0" in capsys.readouterr().out


def test_s3_example(s3_bucket, s3_server):
    root = f"{s3_bucket}/neuroseg"
    _write_table(f"{root}/cells")
    code = _example("s3").replace("s3://lab/neuroseg", root)
    code = code.replace("http://127.0.0.1:9000", s3_server)
    scope: dict = {}
    exec(code, scope)
    assert len(scope["plate"]) > 0
    assert set(scope["plate"]["plate_id"].astype(str)) == {"P001"}
