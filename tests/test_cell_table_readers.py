"""Other readers of the cell table: DuckDB and Polars read a table of mixed files (schema
version 2, a grey image, a named 3-channel image with µm) with the right types. Skipped when
they are not installed (they are test extras)."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuroseg import storage
from neuroseg.inference import cells_file_uri, write_cells
from neuroseg.measure import CELL_COLUMNS, UM_COLUMNS, cell_records

WHEN = dt.datetime(2026, 12, 6, 2, 0, tzinfo=dt.UTC)


def _labels():
    labels = np.zeros((40, 50), np.int32)
    labels[2:12, 3:13] = 1  # 100 px
    labels[20:30, 20:40] = 2  # 200 px
    return labels


def _records(image, plate, image_id, **kw):
    return cell_records(
        _labels(),
        image,
        None,
        plate_id=plate,
        image_id=image_id,
        image_uri=f"/up/{plate}/{image_id}.tif",
        image_sha256="0" * 64,
        model_name="m",
        model_version="v",
        processed_at=WHEN,
        **kw,
    )


@pytest.fixture
def table(tmp_path):
    cells = str(tmp_path / "cells")
    three = np.zeros((40, 50, 3), np.uint16)
    three[_labels() == 1] = (100, 2000, 7)
    three[_labels() == 2] = (300, 10, 4095)
    df = _records(three, "P1", "named", pixel_size_um=0.65, channel_names=["DAPI", "NeuN", "c-Fos"])
    write_cells(df, cells_file_uri(cells, "P1", "named"))
    write_cells(_records(three[..., :1], "P1", "grey"), cells_file_uri(cells, "P1", "grey"))
    old = _records(three[..., :1], "P0", "old")  # as schema version 2 wrote it
    keep = [c for c in CELL_COLUMNS if c not in UM_COLUMNS and c != "plate_id"]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(old[keep], preserve_index=False), buf)
    storage.write_bytes(cells_file_uri(cells, "P0", "old"), buf.getvalue())
    return cells


def test_duckdb_reads_mixed_files_by_name(table):
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    rel = con.sql(
        f"SELECT * FROM read_parquet('{table}/*/*.parquet', hive_partitioning = true, "
        "union_by_name = true) ORDER BY plate_id, image_id, cell_id"
    )
    types = dict(zip(rel.columns, map(str, rel.types), strict=True))
    assert types["cell_id"] == "INTEGER" and types["area_px"] == "BIGINT"
    assert types["area_um2"] == "DOUBLE" and types["mean_intensity_neun"] == "DOUBLE"
    assert types["processed_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["touches_border"] == "BOOLEAN"
    rows = rel.df()
    assert rows["image_id"].tolist() == ["old", "old", "grey", "grey", "named", "named"]
    named = rows[rows.image_id == "named"]
    np.testing.assert_allclose(named["area_um2"], [100 * 0.4225, 200 * 0.4225])
    assert named["mean_intensity_neun"].tolist() == [2000, 10]
    assert named["max_intensity_c_fos"].tolist() == [7, 4095]
    assert rows.loc[rows.image_id != "named", "area_um2"].isna().all()
    assert rows.loc[rows.image_id == "grey", "mean_intensity_c0"].tolist() == [100, 300]
    assert rows.loc[rows.image_id == "old", "mean_intensity_c0"].isna().all()


def test_polars_reads_mixed_files_with_the_unified_schema(table):
    pl = pytest.importorskip("polars")
    from neuroseg.measure import table_schema

    files = sorted(storage.list_files(table, suffixes=".parquet"))
    schema = table_schema([pq.read_schema(f) for f in files])
    df = (
        pl.scan_parquet(
            files,
            schema=pl.from_arrow(schema.empty_table()).schema,
            hive_partitioning=True,
            missing_columns="insert",
        )
        .sort("plate_id", "image_id", "cell_id")
        .collect()
    )
    assert df.schema["cell_id"] == pl.Int32 and df.schema["area_px"] == pl.Int64
    assert df.schema["area_um2"] == pl.Float64 and df.schema["touches_border"] == pl.Boolean
    assert df.schema["processed_at"] == pl.Datetime("us", "UTC")
    assert df["image_id"].to_list() == ["old", "old", "grey", "grey", "named", "named"]
    named = df.filter(pl.col("image_id") == "named")
    np.testing.assert_allclose(named["area_um2"].to_numpy(), [42.25, 84.5])
    assert named["mean_intensity_dapi"].to_list() == [100, 300]
    assert df.filter(pl.col("image_id") == "old")["pixel_size_um"].null_count() == 2
    assert df["plate_id"].to_list()[:2] == ["P0", "P0"]
