"""Phased training (the seed's schedule) with resumable ``.keras`` checkpoints.

A :class:`TrainConfig` names the model, the loss and a list of :class:`PhaseConfig`. Each phase
is one call of :func:`run_phase`, which starts from the previous phase's checkpoint (weights
*and* optimizer state, so Adam's moments and iteration count carry over as in the notebook's
single ``model`` object), trains, and writes its own checkpoint. An orchestrator runs the phases
as separate, retryable steps; :func:`train` chains them in-process.

The seed's schedule (:data:`PRESETS` ``"seed"``): the shallow CNN, Adam 1e-3, batch 50, the
weighted BCE with the cell weight scaled by 0.33; phase 1.1 on tiles with cells without
augmentation (5 epochs), 1.2 with random shapes (10), 2 on all tiles with shapes and affine
warps (5).

The ``nuclei`` preset trains the instance-aware U-Net: a ``three_class`` target (background,
interior, boundary of the instance labels, :mod:`neuroseg.instances`) with a class-weighted
cross-entropy plus Dice, affine and intensity augmentation on grey percentile-normalised tiles.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from neuroseg import storage
from neuroseg.augment import GREY_FILL
from neuroseg.losses import LOSSES, get_loss, loss_head, pixel_metrics
from neuroseg.models import build_model, head_channels, output_size, stride
from neuroseg.pipeline import (
    TileSet,
    class_weights_for,
    load_tiles,
    make_dataset,
    multiclass_weights_for,
)

__all__ = [
    "PRESETS",
    "PhaseConfig",
    "TrainConfig",
    "augmented_phases",
    "get_preset",
    "prepared_input",
    "run_phase",
    "train",
    "training_device",
]


class PhaseConfig(BaseModel):
    """One training phase.

    Attributes
    ----------
    name : str
        E.g. ``"1.1"``.
    epochs : int
    learning_rate : float
        Adam learning rate for this phase.
    batch_size : int
    tile_filter : {"cells", "all"}
        ``"cells"``: only tiles with cells (the seed's mask sum > 255 * 5).
    shapes, affine : bool
        Random shapes; random affine warps.
    intensity : bool
        Random gamma, contrast and brightness (:func:`neuroseg.augment.random_intensity`).
    steps_per_epoch : int, optional
        Batches per epoch (the data repeats); None: one pass over the tiles.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description='e.g. "1.1"')
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0, description="Adam learning rate")
    batch_size: int = Field(ge=1)
    tile_filter: Literal["cells", "all"] = Field(
        "cells", description="cells = only tiles with cells; all = every tile"
    )
    shapes: bool = Field(False, description="augment with random ellipses and rectangles")
    affine: bool = Field(False, description="augment with random affine warps")
    intensity: bool = Field(False, description="augment with random gamma, contrast, brightness")
    steps_per_epoch: int | None = Field(
        default=None, ge=1, description="batches per epoch; empty = one pass over the tiles"
    )


class TrainConfig(BaseModel):
    """Everything that defines a training run (stored in the model's ``config.json``).

    Attributes
    ----------
    model : {"shallow", "unet"}
    width, depth, batch_norm
        Passed to :func:`neuroseg.models.build_model` (width None: the architecture's default).
    loss : str
        A :func:`neuroseg.losses.get_loss` name.
    loss_params : dict
        Extra loss parameters (``alpha``, ``gamma``, ``beta``, ``lam``, ``smooth``,
        ``centre_weight``, ``separation_weight``; with ``separation_weight > 0`` the targets
        carry the separation map of :func:`neuroseg.instances.separation_targets`).
    positive_scale : float
        Factor on the cell class weight (the seed's 0.33).
    phases : list of PhaseConfig
    crop : int, optional
        Random crop of the training tiles (U-Net only; validation uses full tiles).
    mixed_precision : bool
        bfloat16 compute.
    seed : int, optional
        Seeds weights, shuffling and augmentation.
    early_stopping_patience : int, optional
        Stop a phase when the validation loss (training loss without a validation split) has
        not improved for this many epochs, restoring the best weights.
    val_max_tiles : int, optional
        Validate on at most this many evenly spaced validation tiles.
    binarize_masks : bool
        Re-threshold warped masks at 0.5 (else soft edges).
    target : {"binary", "three_class"}
        What the model learns: the cell mask (the seed's; a sigmoid head), or background /
        interior / boundary of the instance labels (a softmax head, a three-class loss
        ``weighted_cce`` or ``cce_dice``, instances by :mod:`neuroseg.instances`).
    boundary_width : int
        Boundary thickness in pixels of the three-class targets.
    centre : bool
        ``three_class`` U-Nets: also learn each object's centre map (its normalised distance to
        its outline, :func:`neuroseg.instances.centre_targets`) in a fourth, sigmoid channel;
        the post-processing sweep may then seed the watershed from it
        (``postprocess["markers"] = "centre"``), which keeps touching nuclei of any size apart
        where the interior class joins them.
    class_weighting : {"sqrt", "inverse", "none"}
        Class weights of the three-class losses from the training tiles' class frequencies
        (:func:`neuroseg.pipeline.multiclass_weights_for`).
    small_object_area : int
        With ``separation_weight``: objects under this many pixels (micronuclei), with a
        1-pixel ring around them, weigh like the pixels between close objects
        (:func:`neuroseg.instances.separation_targets`), and their boundary is one pixel wide,
        so that they keep an interior to seed a marker of their own
        (:func:`neuroseg.instances.three_class_targets`); 0: neither.
    """

    model_config = ConfigDict(extra="forbid")

    model: Literal["shallow", "unet"]
    width: int | None = Field(default=None, ge=1)
    depth: int = Field(default=3, ge=1, le=6)
    batch_norm: bool = True
    loss: str = "weighted_bce"
    loss_params: dict[str, float] = Field(default_factory=dict)
    positive_scale: float = Field(default=0.33, gt=0)
    phases: list[PhaseConfig] = Field(min_length=1)
    crop: int | None = Field(default=None, ge=8)
    mixed_precision: bool = False
    seed: int | None = 0
    early_stopping_patience: int | None = Field(default=None, ge=1)
    val_max_tiles: int | None = Field(default=None, ge=1)
    binarize_masks: bool = True
    target: Literal["binary", "three_class"] = "binary"
    boundary_width: int = Field(default=2, ge=1, le=8)
    class_weighting: Literal["sqrt", "inverse", "none"] = "none"
    centre: bool = False
    space_to_depth: bool = False
    small_object_area: int = Field(default=0, ge=0)

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value not in LOSSES:
            raise ValueError(f"unknown loss {value!r}; choose one of {', '.join(LOSSES)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.crop is not None:
            if self.model != "unet":
                raise ValueError("crop needs the fully convolutional 'unet' model")
            step = stride(self.depth, self.space_to_depth)
            if self.crop % step:
                raise ValueError(
                    f"crop {self.crop} must be divisible by {step} (2**depth"
                    + (", twice that with space_to_depth)" if self.space_to_depth else ")")
                )
        if self.centre and (self.model != "unet" or self.target != "three_class"):
            raise ValueError("centre needs the 'unet' model and target 'three_class'")
        if self.space_to_depth and self.model != "unet":
            raise ValueError("space_to_depth needs the 'unet' model")
        if self.small_object_area and not self.loss_params.get("separation_weight", 0.0) > 0:
            raise ValueError(
                "small_object_area weighs small objects with separation_weight: set it above 0"
            )
        get_loss(self.loss, **self.loss_params)  # unknown parameters raise here
        if loss_head(self.loss) != self.target:
            raise ValueError(
                f"loss {self.loss!r} trains a {loss_head(self.loss)} head but target is "
                f"{self.target!r} (three_class takes weighted_cce or cce_dice)"
            )
        return self


def _phases(spec: list[tuple], *, batch: int, lr: float, steps: int | None) -> list[PhaseConfig]:
    return [
        PhaseConfig(
            name=name,
            epochs=epochs,
            learning_rate=lr,
            batch_size=batch,
            tile_filter=tile_filter,
            shapes=shapes,
            affine=affine,
            steps_per_epoch=steps,
        )
        for name, epochs, tile_filter, shapes, affine in spec
    ]


def augmented_phases(
    spec: list[tuple[str, int, float, str]], *, batch_size: int, steps: int
) -> list[PhaseConfig]:
    """Phases with affine and intensity augmentation (no random shapes), one per
    ``(name, epochs, learning_rate, tile_filter)``, each of ``steps`` batches per epoch."""
    return [
        PhaseConfig(
            name=name,
            epochs=epochs,
            learning_rate=lr,
            batch_size=batch_size,
            tile_filter=tile_filter,
            affine=True,
            intensity=True,
            steps_per_epoch=steps,
        )
        for name, epochs, lr, tile_filter in spec
    ]


#: The instance-aware network of the ``nuclei`` and ``fnc`` presets, the shipped models'
#: since 2026-12-04: a space-to-depth stem runs a width-16 depth-3 U-Net at half resolution
#: (0.48 M parameters; 0.5-0.7x the prediction time of the width-8 depth-4 network without the
#: stem that the presets used before, as many parameters, higher validation scores). A run
#: that fine-tunes a shipped model (``init_model``) needs the same network.
_THREE_CLASS_UNET: dict[str, Any] = {
    "model": "unet",
    "width": 16,
    "depth": 3,
    "space_to_depth": True,
    "target": "three_class",
    "loss": "cce_dice",
    "loss_params": {"lam": 0.5},
    "boundary_width": 2,
    "class_weighting": "none",
}

#: Named configurations: ``seed`` (the notebook exactly), ``cpu-small`` (a small U-Net that
#: trains end to end in a few minutes on two CPU cores), ``tiny`` (seconds; for tests) and
#: ``nuclei`` (the instance-aware three-class U-Net for grey fluorescence nuclei, the shipped
#: model's network: 2,750 steps of 16 random 128x128 crops of 256x256 tiles, 44,000 crops,
#: about 12 min on two cores of a fast CPU, 25 min on a slow one; the shipped model trained
#: for 3.5x these epochs, ``scripts/train_nuclei_model.py --epochs 14,38,24``); ``fnc`` (the
#: shipped FNC model's network: the same three-class U-Net on grey
#: percentile-normalised input, so that yellow and red stains look alike, with 192 px crops of
#: 400 px tiles for the larger neurons; 400 steps of 8, about 9 min on two CPU cores; the shipped
#: model is this pretrained on synthetic plates and fine-tuned on real ones with ``init_model``,
#: see ``scripts/train_fnc_model.py``).
PRESETS: dict[str, TrainConfig] = {
    "seed": TrainConfig(
        model="shallow",
        loss="weighted_bce",
        positive_scale=0.33,
        phases=_phases(
            [
                ("1.1", 5, "cells", False, False),
                ("1.2", 10, "cells", True, False),
                ("2", 5, "all", True, True),
            ],
            batch=50,
            lr=1e-3,
            steps=None,
        ),
    ),
    "cpu-small": TrainConfig(
        model="unet",
        width=16,
        depth=3,
        loss="weighted_bce",
        positive_scale=0.33,
        crop=160,
        phases=[
            *_phases(
                [
                    ("1.1", 3, "cells", False, False),
                    ("1.2", 5, "cells", True, False),
                ],
                batch=8,
                lr=2e-3,
                steps=32,
            ),
            *_phases([("2", 6, "all", True, True)], batch=8, lr=1e-3, steps=32),
        ],
        val_max_tiles=16,
    ),
    "tiny": TrainConfig(
        model="unet",
        width=4,
        depth=2,
        crop=32,
        phases=_phases(
            [
                ("1.1", 1, "cells", False, False),
                ("1.2", 1, "cells", True, False),
                ("2", 1, "all", True, True),
            ],
            batch=4,
            lr=1e-2,
            steps=2,
        ),
        val_max_tiles=4,
    ),
    "nuclei": TrainConfig(
        # the pixels between close nuclei weigh 11x: the shipped model's recipe since
        # 2026-12-03 (validation F1 BBBC039 0.935 -> 0.949, DSB 0.882 -> 0.885); since
        # 2026-12-04 nuclei under 50 px (micronuclei) weigh so too and keep a 1-px boundary
        # (validation pooled F1 0.934 -> 0.938, DSB 0.891 -> 0.904, both swept with small_peak)
        **{**_THREE_CLASS_UNET, "loss_params": {"lam": 0.5, "separation_weight": 10.0}},
        small_object_area=50,
        crop=128,
        phases=augmented_phases(
            [("1", 4, 2e-3, "cells"), ("2", 11, 1e-3, "all"), ("3", 7, 3e-4, "all")],
            batch_size=16,
            steps=125,
        ),
        val_max_tiles=64,
    ),
    "fnc": TrainConfig(
        **_THREE_CLASS_UNET,
        crop=192,
        phases=augmented_phases(
            [("1", 3, 2e-3, "cells"), ("2", 5, 1e-3, "all")], batch_size=8, steps=50
        ),
        val_max_tiles=32,
    ),
}


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """A copy of a preset with top-level fields replaced (validated).

    Parameters
    ----------
    name : {"seed", "cpu-small", "tiny", "nuclei", "fnc"}
    **overrides
        ``TrainConfig`` fields, e.g. ``seed=3``, ``mixed_precision=True`` or ``phases=[...]``
        (dicts or ``PhaseConfig``).

    Returns
    -------
    TrainConfig
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    data = PRESETS[name].model_dump()
    data.update(overrides)
    return TrainConfig.model_validate(data)


def training_device() -> str:
    """Where TensorFlow trains: ``"GPU:0 (<device name>)"`` or ``"CPU"``."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU:0 ({details.get('device_name', 'GPU')})"


def _spread(tiles: TileSet, limit: int | None) -> TileSet:
    if limit is None or len(tiles) <= limit:
        return tiles
    keep = np.unique(np.linspace(0, len(tiles) - 1, limit).round().astype(int))
    return tiles.take(keep)


def prepared_input(prepared_uri: str) -> dict:
    """The ``input`` entry of the prepared data's ``summary.json`` params ({} when absent)."""
    try:
        summary = storage.read_json(storage.join(prepared_uri, "summary.json"))
    except (FileNotFoundError, ValueError):
        return {}
    params = summary.get("params") if isinstance(summary, dict) else None
    spec = params.get("input") if isinstance(params, dict) else None
    return dict(spec) if isinstance(spec, dict) else {}


def _load_checkpoint(uri: str, config: TrainConfig) -> keras.Model:
    with tempfile.TemporaryDirectory(prefix="neuroseg-ckpt-") as tmp:
        path = os.path.join(tmp, "model.keras")
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri}: no such checkpoint") from None
        with open(path, "wb") as f:
            f.write(data)
        try:
            model = keras.saving.load_model(path, compile=True)
        except (ValueError, OSError, KeyError) as exc:
            raise ValueError(f"{uri}: not a loadable .keras model ({exc})") from exc
    if model.name != config.model:
        raise ValueError(
            f"{uri}: checkpoint holds a {model.name!r} model, config wants {config.model!r}"
        )
    channels = 4 if config.centre else head_channels(config.target)
    if model.output_shape[-1] != channels:
        raise ValueError(
            f"{uri}: checkpoint predicts {model.output_shape[-1]} channel(s), config wants "
            f"{channels} (target {config.target!r}, centre {config.centre})"
        )
    return model


def _save_checkpoint(model: keras.Model, uri: str) -> None:
    with tempfile.TemporaryDirectory(prefix="neuroseg-ckpt-") as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            storage.write_bytes(uri, f.read())


class _EpochReporter(keras.callbacks.Callback):
    def __init__(self, on_epoch: Callable[[int, dict], Any]):
        super().__init__()
        self._on_epoch = on_epoch

    def on_epoch_end(self, epoch, logs=None):
        self._on_epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})


def run_phase(
    prepared_uri: str,
    config: TrainConfig | dict,
    phase_index: int,
    *,
    init_checkpoint: str | None = None,
    checkpoint_uri: str,
    on_epoch: Callable[[int, dict], Any] | None = None,
) -> dict:
    """Train one phase and save a checkpoint with the optimizer state.

    Parameters
    ----------
    prepared_uri : str
        Prepared version folder (``tiles.parquet`` + shards; local or ``s3://``).
    config : TrainConfig or dict
    phase_index : int
        Index into ``config.phases``.
    init_checkpoint : str, optional
        ``.keras`` URI to resume from (weights and optimizer; the phase's learning rate is set
        on the restored optimizer). None builds a fresh model.
    checkpoint_uri : str
        ``.keras`` URI to write (local or ``s3://``; written locally first, then uploaded).
    on_epoch : callable, optional
        ``on_epoch(epoch, logs)`` after each epoch; ``epoch`` counts from 1 within the phase,
        ``logs`` holds ``loss``, ``precision``, ``recall`` and, when the prepared data has a
        ``val`` split, ``val_loss``, ``val_precision``, ``val_recall`` (floats).

    Returns
    -------
    dict
        ``history`` (metric name -> list of per-epoch floats), ``checkpoint_uri``, ``seconds``,
        ``device``, ``phase`` (name), ``epochs`` (run), ``class_weights`` (``[w0, w1]``;
        three_class: ``[w_background, w_interior, w_boundary]``), ``train_tiles``,
        ``val_tiles``, ``optimizer_iterations``, ``architecture``, ``target``, ``tile``,
        ``output_size``.
    """
    config = TrainConfig.model_validate(config)
    if not 0 <= phase_index < len(config.phases):
        raise ValueError(f"phase_index {phase_index} out of range for {len(config.phases)} phases")
    if not str(checkpoint_uri).endswith(".keras"):
        raise ValueError(f"checkpoint_uri must end with .keras, got {checkpoint_uri!r}")
    phase = config.phases[phase_index]
    start = time.perf_counter()
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed + phase_index)
    data_seed = None if config.seed is None else config.seed * 1009 + phase_index

    three = config.target == "three_class"
    train_all = load_tiles(prepared_uri, split="train", tile_filter="all")
    if len(train_all) == 0:
        raise ValueError(f"{prepared_uri}: the prepared data has no 'train' tiles")
    if three:
        class_weights = multiclass_weights_for(
            train_all,
            split="train",
            tile_filter="cells",
            boundary_width=config.boundary_width,
            weighting=config.class_weighting,
            small_area=config.small_object_area,
        )
    else:
        class_weights = class_weights_for(train_all, split="train", tile_filter="cells")
    train_tiles = train_all.filtered(phase.tile_filter)
    if len(train_tiles) == 0:
        raise ValueError(f"{prepared_uri}: no train tiles pass filter {phase.tile_filter!r}")
    tile = train_all.tile
    val_tiles = _spread(
        load_tiles(prepared_uri, split="val", tile_filter="all"), config.val_max_tiles
    )

    if init_checkpoint is not None:
        model = _load_checkpoint(init_checkpoint, config)
        optimizer = getattr(model, "optimizer", None)
    else:
        model = build_model(
            config.model,
            tile=tile,
            width=config.width,
            depth=config.depth,
            batch_norm=config.batch_norm,
            mixed_precision=config.mixed_precision,
            head=config.target,
            centre=config.centre,
            space_to_depth=config.space_to_depth,
        )
        optimizer = None
    if optimizer is None:
        optimizer = keras.optimizers.Adam(learning_rate=phase.learning_rate)
    else:
        optimizer.learning_rate = phase.learning_rate
    loss = get_loss(
        config.loss,
        class_weights=class_weights,
        positive_scale=config.positive_scale,
        **config.loss_params,
    )
    model.compile(optimizer=optimizer, loss=loss, metrics=pixel_metrics(config.target))
    out = output_size(model, tile=tile)

    crop = config.crop if config.crop is not None and config.crop < tile else None
    train_out = None if config.model == "unet" else out
    repeat = phase.steps_per_epoch is not None
    targets = {
        "target": config.target,
        "boundary_width": config.boundary_width,
        "centre": config.centre,
        # the loss weighs the pixels between close objects: the targets carry their map
        "separation": float(config.loss_params.get("separation_weight", 0.0)) > 0,
        "small_area": config.small_object_area,
    }
    fill = GREY_FILL if prepared_input(prepared_uri).get("channels") == "grey" else None
    train_ds = make_dataset(
        train_tiles,
        split="train",
        batch_size=phase.batch_size,
        tile_filter="all",
        shapes=phase.shapes,
        affine=phase.affine,
        output_size=train_out,
        crop=crop,
        shuffle=True,
        seed=data_seed,
        repeat=repeat,
        drop_remainder=len(train_tiles) >= phase.batch_size,
        binarize=config.binarize_masks,
        intensity=phase.intensity,
        fill=fill,
        **targets,
    )
    val_ds = None
    if len(val_tiles):
        val_ds = make_dataset(
            val_tiles,
            split="val",
            batch_size=phase.batch_size,
            tile_filter="all",
            output_size=train_out,
            shuffle=False,
            **targets,
        )
    callbacks: list[keras.callbacks.Callback] = []
    if config.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss" if val_ds is not None else "loss",
                patience=config.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    if on_epoch is not None:
        callbacks.append(_EpochReporter(on_epoch))
    history = model.fit(
        train_ds,
        epochs=phase.epochs,
        steps_per_epoch=phase.steps_per_epoch,
        validation_data=val_ds,
        callbacks=callbacks,
        shuffle=False,  # the dataset reshuffles itself every epoch
        verbose=0,
    )
    _save_checkpoint(model, checkpoint_uri)
    hist = {k: [float(v) for v in values] for k, values in history.history.items()}
    return {
        "history": hist,
        "checkpoint_uri": checkpoint_uri,
        "seconds": time.perf_counter() - start,
        "device": training_device(),
        "phase": phase.name,
        "epochs": len(next(iter(hist.values()), [])),
        "class_weights": [float(w) for w in class_weights],
        "train_tiles": len(train_tiles),
        "val_tiles": len(val_tiles),
        "optimizer_iterations": int(model.optimizer.iterations.numpy()),
        "architecture": config.model,
        "target": config.target,
        "tile": tile,
        "output_size": out,
    }


def train(
    prepared_uri: str,
    config: TrainConfig | dict,
    *,
    checkpoint_dir: str,
    on_epoch: Callable[[str, int, dict], Any] | None = None,
) -> list[dict]:
    """Run every phase in order, each resuming from the previous checkpoint.

    Parameters
    ----------
    prepared_uri : str
    config : TrainConfig or dict
    checkpoint_dir : str
        Folder URI; phase ``i`` writes ``phase-<i>.keras`` there.
    on_epoch : callable, optional
        ``on_epoch(phase_name, epoch, logs)``.

    Returns
    -------
    list of dict
        :func:`run_phase` results; the last ``checkpoint_uri`` is the trained model.
    """
    config = TrainConfig.model_validate(config)
    results: list[dict] = []
    previous = None
    for i, phase in enumerate(config.phases):
        callback = None
        if on_epoch is not None:

            def callback(epoch, logs, _name=phase.name):
                on_epoch(_name, epoch, logs)

        result = run_phase(
            prepared_uri,
            config,
            i,
            init_checkpoint=previous,
            checkpoint_uri=storage.join(checkpoint_dir, f"phase-{i}.keras"),
            on_epoch=callback,
        )
        results.append(result)
        previous = result["checkpoint_uri"]
    return results
