"""Preparation flow: mask analysis and tiling per image in parallel, split by image, summary.

The mapped work runs on Prefect's thread pool by default, or on a Dask cluster (a temporary
local one, or a scheduler address) through prefect-dask, chosen by the ``executor`` parameter.
A dataset whose content and parameters are unchanged is not prepared again.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.utilities.annotations import unmapped
from pydantic import BaseModel, Field, model_validator

from neuroseg import ingest as ingest_lib
from neuroseg import prepare as lib
from neuroseg import storage
from neuroseg.normalize import input_spec
from tasks.common import ExecutorConfig, artifact_key, make_task_runner
from tasks.prepare import finalize, prepare_image

__all__ = ["ExecutorConfig", "PrepareParams", "prepare"]


class PrepareParams(BaseModel):
    """Which ingested dataset to prepare, and how."""

    root: str = Field("./neuroseg-data", description="storage root of the system")
    dataset: str = Field("synthetic", description="name of an ingested annotated dataset")
    tile: int = Field(400, ge=32, le=4096, description="tile side in pixels (seed: 400)")
    min_overlap: int = Field(100, ge=0, description="minimum tile overlap (seed: 100)")
    seed: int = Field(0, description="seed of the by-image train/val/test split")
    val_fraction: float = Field(
        0.15, ge=0, le=1, description="share of the images in the validation split"
    )
    test_fraction: float = Field(
        0.15,
        ge=0,
        le=1,
        description="share of the images in the test split (0 and 0: every image trains, "
        "e.g. one fold of a cross-validation scored on images kept outside the dataset)",
    )
    channels: Literal["rgb", "grey"] = Field(
        "rgb", description="model input planes: rgb (FNC composites) or grey (one stain)"
    )
    normalization: Literal["fixed", "percentile"] = Field(
        "fixed",
        description="fixed: 8-bit as is (the seed's); percentile: per image 1 / 99.8 "
        "percentiles, any bit depth (for 12/16-bit microscope images)",
    )
    channel: int | None = Field(
        None, ge=0, description="channel (0-based) of multi-channel images; default: all"
    )
    scale: float = Field(
        1.0,
        ge=0.1,
        le=4.0,
        description="resize the images by this factor for the model (0.5: half the rows and "
        "columns, twice the context per convolution); prediction resizes alike",
    )
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @model_validator(mode="after")
    def _split_fits(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction > 1:
            raise ValueError(
                f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} exceeds 1"
            )
        return self

    def fractions(self) -> tuple[float, float, float]:
        """``(train, val, test)`` shares of the images."""
        return lib.split_fractions(self.val_fraction, self.test_fraction)

    def input_spec(self) -> dict:
        """The model input these parameters declare (see neuroseg.normalize)."""
        spec = {"channels": self.channels, "normalization": self.normalization}
        return dict(input_spec(spec, scale=self.scale))


def _optional(record: dict, key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) and value else None


def _map_images(
    out_uri: str,
    records_uri: str,
    tile: int,
    min_overlap: int,
    input: dict | None = None,
    channel: int | None = None,
) -> list[dict]:
    # the work list is read from storage, not passed as a parameter: Prefect refuses flow-run
    # parameters over 512 kB (about 1,500 manifest records)
    records = storage.read_json(records_uri)
    futures = prepare_image.map(
        out_uri,
        [r["image_id"] for r in records],
        [r["image_uri"] for r in records],
        [_optional(r, "mask_uri") for r in records],
        tile,
        min_overlap,
        [_optional(r, "labels_uri") for r in records],
        unmapped(input),
        channel,
    )
    return [f.result() for f in futures]


def prepare_images_subflow(executor: ExecutorConfig):
    """The per-image fan-out as a subflow running on the chosen task runner."""
    return flow(name="prepare-images", task_runner=make_task_runner(executor))(_map_images)


@flow(name="prepare", flow_run_name="prepare-{params.dataset}", log_prints=True)
def prepare(params: PrepareParams) -> dict:
    """Prepare an ingested dataset for training; returns its summary."""
    logger = get_run_logger()
    if params.min_overlap >= params.tile:
        raise ValueError(f"min_overlap {params.min_overlap} must be below tile {params.tile}")
    manifest = ingest_lib.read_manifest(params.root, "datasets", params.dataset)
    if manifest.empty:
        raise ValueError(
            f"dataset {params.dataset!r} has no ingested images under {params.root}/manifests"
        )
    records = manifest.to_dict("records")
    spec = params.input_spec()
    fractions = params.fractions()
    version = lib.prepared_version(
        records,
        tile=params.tile,
        min_overlap=params.min_overlap,
        seed=params.seed,
        input=spec,
        channel=params.channel,
        fractions=fractions,
    )
    out = lib.prepared_uri(params.root, params.dataset, version)
    summary_uri = storage.join(out, "summary.json")
    cached = storage.exists(summary_uri)
    if cached:
        logger.info("dataset unchanged: reusing %s", out)
        summary = storage.read_json(summary_uri)
    else:
        logger.info("preparing %d image(s) into %s", len(records), out)
        records_uri = storage.join(out, "records.json")
        storage.write_json(
            records_uri,
            [
                {k: _optional(r, k) for k in ("image_id", "image_uri", "mask_uri", "labels_uri")}
                for r in records
            ],
        )
        metas = prepare_images_subflow(params.executor)(
            out, records_uri, params.tile, params.min_overlap, spec, params.channel
        )
        summary = finalize(
            out,
            metas,
            params.seed,
            {
                "tile": params.tile,
                "min_overlap": params.min_overlap,
                "seed": params.seed,
                "input": spec,
                "channel": params.channel,
                "fractions": list(fractions),
            },
            fractions,
        )
    # also when cached: preparing A, then B, then A again leaves A for the next training run
    storage.write_json(
        storage.join(params.root, "prepared", params.dataset, "latest.json"),
        {"version": version, "uri": out},
    )
    _publish(params.dataset, out, summary)
    return {
        **{k: summary[k] for k in ("images", "tiles", "foreground_fraction", "suggested_overlap")},
        "cells": summary["n_cells"],
        "class_weights": summary["class_weights"],
        "prepared_uri": out,
        "version": version,
        "cached": cached,
    }


def _publish(dataset: str, out: str, s: dict) -> None:
    key = artifact_key("prepare", dataset)
    rows = [
        {"statistic": "images", "value": s["images"]},
        {"statistic": "tiles", "value": s["tiles"]},
        {"statistic": "tiles with cells", "value": s["tiles_with_cells"]},
        {"statistic": "cells", "value": s["n_cells"]},
        {"statistic": "foreground fraction", "value": round(s["foreground_fraction"], 6)},
        {"statistic": "class weights (bg, cell)", "value": str(s["class_weights"])},
        {"statistic": "suggested overlap (px)", "value": s["suggested_overlap"]},
    ]
    for name in ("area", "width", "height"):
        for p in (50, 95):
            k = f"{name}_p{p}"
            if s.get(k) is not None:
                rows.append({"statistic": f"{name} p{p}", "value": round(float(s[k]), 2)})
    create_table_artifact(key=key, table=rows, description=f"Prepared dataset at {out}")
    hist = [
        {"measure": m, "from": round(b["from"], 1), "to": round(b["to"], 1), "cells": b["count"]}
        for m, bins in s.get("histograms", {}).items()
        for b in bins
    ]
    if hist:
        create_table_artifact(key=key + "-histograms", table=hist, description="Cell sizes")
    create_markdown_artifact(
        key=key + "-splits",
        markdown=f"Split by image (never by tile): `{s['splits']}`\n\nPrepared data: `{out}`",
    )
