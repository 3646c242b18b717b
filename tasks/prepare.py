"""Prefect tasks of the preparation flow (thin wrappers of ``neuroseg.prepare``)."""

from __future__ import annotations

from prefect import task

from neuroseg import prepare as lib
from tasks.common import IO_RETRIES


@task(name="prepare-image", task_run_name="prepare-{image_id}", **IO_RETRIES)
def prepare_image(
    out_uri: str,
    image_id: str,
    image_uri: str,
    mask_uri: str | None,
    tile: int,
    min_overlap: int,
    labels_uri: str | None = None,
    input: dict | None = None,
    channel: int | None = None,
) -> dict:
    """Mask/label analysis and tiling of one image; returns its small meta record (no arrays)."""
    return lib.prepare_image(
        out_uri,
        image_id,
        image_uri,
        mask_uri,
        tile=tile,
        min_overlap=min_overlap,
        labels_uri=labels_uri,
        input=input,
        channel=channel,
    )


@task(name="finalize-prepared", **IO_RETRIES)
def finalize(
    out_uri: str,
    metas: list[dict],
    seed: int,
    params: dict,
    fractions: tuple[float, float, float] = lib.SPLIT_FRACTIONS,
) -> dict:
    """Tile index, cell table, by-image split and summary of a prepared dataset."""
    return lib.finalize(out_uri, metas, seed=seed, params=params, fractions=fractions)
