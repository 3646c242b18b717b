"""Prefect tasks of the training flow (thin wrappers of ``neuroseg.training``/``registry``)."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.artifacts import update_progress_artifact

from neuroseg import storage
from neuroseg.progress import Progress
from tasks.common import IO_RETRIES


@task(name="resolve-prepared", **IO_RETRIES)
def resolve_prepared(root: str, dataset: str) -> dict:
    """The latest prepared version of a dataset (``prepared/<dataset>/latest.json``)."""
    latest = storage.join(root, "prepared", dataset, "latest.json")
    if not storage.exists(latest):
        raise ValueError(
            f"dataset {dataset!r} is not prepared under {root}: run `neuroseg prepare {dataset}`"
        )
    return storage.read_json(latest)


# Tagged "gpu": a tag concurrency limit (deployments/pools.sh) gives each GPU one phase at a time.
@task(name="train-phase", tags=["gpu"], task_run_name="phase-{phase_index}")
def train_phase(
    prepared_uri: str,
    config: dict,
    phase_index: int,
    init_checkpoint: str | None,
    work_uri: str,
    progress_id: str | None,
    epochs_before: int,
    total_epochs: int,
) -> dict:
    """Train one phase from the previous checkpoint; write its checkpoint and done-record."""
    from neuroseg.training import run_phase

    logger = get_run_logger()
    name = config["phases"][phase_index]["name"]
    epochs = config["phases"][phase_index]["epochs"]
    # one line per epoch: "train 5/14 epochs (36%), 12.3 s/epoch, about 2 min left; phase ..."
    progress = Progress(
        "train",
        total_epochs,
        unit="epochs",
        done=epochs_before,
        emit=logger.info,
        every_percent=0.01,
    )

    def on_epoch(epoch: int, logs: dict) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items()))
        progress.update(note=f"phase {name} epoch {epoch}/{epochs}: {shown}")
        if progress_id:
            done = 100.0 * (epochs_before + epoch) / total_epochs
            update_progress_artifact(progress_id, progress=min(done, 100.0))

    t0 = time.perf_counter()
    result = run_phase(
        prepared_uri,
        config,
        phase_index,
        init_checkpoint=init_checkpoint,
        checkpoint_uri=storage.join(work_uri, f"phase-{phase_index}.keras"),
        on_epoch=on_epoch,
    )
    record = {
        "phase": name,
        "index": phase_index,
        "checkpoint_uri": result["checkpoint_uri"],
        "history": result["history"],
        "seconds": round(time.perf_counter() - t0, 2),
        "device": result.get("device"),
    }
    storage.write_json(storage.join(work_uri, f"phase-{phase_index}.json"), record)
    logger.info("phase %s done in %.0f s on %s", name, record["seconds"], record["device"])
    return record


@task(name="register-model", **IO_RETRIES)
def register(root: str, name: str, checkpoint_uri: str, config: dict, lineage: dict) -> dict:
    """Put the trained model into the registry (``models/<name>/<version>/``)."""
    from neuroseg.registry import register_model

    uri = register_model(root, name, model_file_uri=checkpoint_uri, config=config, lineage=lineage)
    return {"uri": uri, "version": uri.rstrip("/").rsplit("/", 1)[-1]}
