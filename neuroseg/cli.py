"""The ``neuroseg`` command line: one entry point for people and scripts.

Every command runs the same flows the deployments run. Flows, TensorFlow and Prefect are imported
lazily inside each command so that ``neuroseg --help`` and ``import neuroseg`` stay light.
Bad input ends with a one-line ``neuroseg: error: ...`` and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

DEFAULT_ROOT = "./neuroseg-data"


class UsageError(ValueError):
    """A command-line argument a user must fix."""


# --------------------------------------------------------------------------- environment


def configure_prefect(root: str | None = None) -> None:
    """Set safe Prefect defaults before Prefect is imported.

    Without ``PREFECT_API_URL`` Prefect starts a temporary in-process API; it keeps its database
    in ``PREFECT_HOME``, which defaults here to ``<root>/.prefect`` for local roots (or
    ``./.prefect``) rather than the user's home folder. Values already set win.
    """
    if "PREFECT_HOME" not in os.environ:
        base = Path(root) if root and "://" not in root else Path(".")
        home = (base / ".prefect").resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _StderrHandler(logging.StreamHandler):
    """A log handler writing to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; stderr is looked up
        pass


def configure_output(*, verbose: bool = False) -> None:
    """Quiet start-up unless `verbose`; neuroseg's progress lines on stderr.

    TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` once, when it is imported, and every command
    imports it lazily, after this has run. Quiet is level 2: errors stay, the INFO notices
    (oneDNN custom operations, the CPU-instruction hint, "All log messages before
    absl::InitializeLog()") and TensorFlow's warnings go; a level the user exported wins.
    absl's Python warnings are raised to ERROR. TensorFlow 2.21 prints some notices before its
    logging reads the level (oneDNN on AVX-512 CPUs); :mod:`neuroseg.tfquiet` holds those back.
    ``--verbose`` shows everything (level 0) and neuroseg's debug lines.
    """
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        from neuroseg import tfquiet

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logging.getLogger("absl").setLevel(logging.ERROR)
        tfquiet.install()
    log = logging.getLogger("neuroseg")
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False  # Prefect's root console handler would print each line twice


def _positive_um(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of µm, got {text!r}")
    return value


def pixel_size_argument(sp) -> None:
    sp.add_argument(
        "--pixel-size-um",
        type=_positive_um,
        metavar="UM",
        help="pixel size in µm, for images whose metadata lacks it (PNG); wins over the "
        "files' own (OME, ImageJ, TIFF resolution). Default: the files' metadata, else the "
        "µm columns stay null",
    )


def tta_argument(parser: argparse.ArgumentParser) -> None:
    """``--tta none|flip2|flips``: test-time augmentation (default: the model's own)."""
    parser.add_argument(
        "--tta",
        choices=("none", "flip2", "flips"),
        help="test-time augmentation: average the predictions of 2 or 4 flips of each image "
        "(2x or 4x the prediction time, more accurate); default: the model's own (none)",
    )


def backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend auto|tf|onnx``: what runs the network."""
    parser.add_argument(
        "--backend",
        choices=("auto", "tf", "onnx"),
        default="auto",
        help="what runs the network: onnx (ONNX Runtime, no TensorFlow needed), tf "
        "(TensorFlow); default auto: onnx when the model has model.onnx, onnxruntime is "
        "installed and precision is fp32, else tf",
    )


def _size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` into ``(height, width)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1600x1200, got {text!r}") from None
    if w < 16 or h < 16 or w * h > 100_000_000:
        raise argparse.ArgumentTypeError(f"size {text!r} out of range (16 px .. 100 Mpx)")
    return h, w


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# --------------------------------------------------------------------------- commands


def cmd_synth(args) -> int:
    from neuroseg import synth

    height, width = args.size
    if args.dataset:
        uri = synth.write_dataset(
            args.root,
            name=args.dataset,
            images=args.images,
            seed=args.seed,
            height=height,
            width=width,
        )
        print(f"wrote {args.images} annotated images to {uri}")
    else:
        written = synth.write_uploads(
            args.root,
            plates=args.plates,
            images_per_plate=args.images,
            seed=args.seed,
            height=height,
            width=width,
        )
        print(f"wrote {len(written)} images in {args.plates} plate(s) under {args.root}/uploads")
    return 0


def cmd_ingest(args) -> int:
    configure_prefect(args.root)
    from flows.ingest import IngestParams, ingest

    params = IngestParams(
        source=args.source, root=args.root, dataset=args.dataset, corrections=args.corrections
    )
    summary = ingest(params)
    what = "corrections" if summary.get("kind") == "corrections" else "ingested"
    print(
        f"{what}: {summary['ingested']} new, skipped {summary['skipped']} already known, "
        f"quarantined {summary['quarantined']} -> {summary['manifest']}"
    )
    for row in summary.get("failures", []):
        print(f"  quarantined {row['file']}: {row['reason']}")
    if summary.get("kind") == "corrections" and summary.get("events"):
        print(
            "  emitted neuroseg.corrections.ingested: the adapt deployment's trigger fine-tunes "
            f"the serving model on them (or: neuroseg adapt {args.dataset} --root {args.root})"
        )
    return 0


def cmd_review(args) -> int:
    from neuroseg.review import write_review

    result = write_review(args.root, args.plate, args.out, top=args.top)
    print(
        f"plate {args.plate}: the {len(result['images'])} least confident image(s) with their "
        f"label images -> {args.out} (see README.txt there)"
    )
    for e in result["images"]:
        conf = "-" if e["confidence"] is None else f"{e['confidence']:.2f}"
        print(f"  {e['image_id']}: confidence {conf}, {e['cells']} cells")
    for p in result["problems"]:
        print(f"  left out {p['image_id']}: {p['reason']}")
    print(f"correct them, then: neuroseg ingest {args.out} --root {args.root} --dataset NAME")
    return 0


def cmd_adapt(args) -> int:
    configure_prefect(args.root)
    from flows.adapt import AdaptParams, adapt

    options = {
        k: getattr(args, k)
        for k in ("reference_dataset", "metric", "tolerance", "epochs", "steps_per_epoch")
        if getattr(args, k) is not None
    }
    params = AdaptParams(
        root=args.root,
        corrections=args.corrections,
        model=args.model,
        promote=not args.no_promote,
        **options,
    )
    result = adapt(params)
    print(result["reason"])
    print(f"  candidate {result['candidate']} ({result['candidate_uri']}), {result['seconds']} s")
    return 0


def cmd_prepare(args) -> int:
    configure_prefect(args.root)
    from flows.prepare import ExecutorConfig, PrepareParams, prepare

    params = PrepareParams(
        root=args.root,
        dataset=args.dataset,
        tile=args.tile,
        min_overlap=args.min_overlap,
        seed=args.seed,
        channels=args.channels,
        normalization=args.normalization,
        channel=args.channel,
        scale=args.scale,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        executor=ExecutorConfig(
            kind=args.executor, address=args.dask_address, workers=args.workers
        ),
    )
    summary = prepare(params)
    state = "reused (unchanged dataset)" if summary["cached"] else "prepared"
    print(
        f"{state}: {summary['images']} images, {summary['tiles']} tiles, {summary['cells']} cells "
        f"-> {summary['prepared_uri']}"
    )
    print(
        f"  class weights {summary['class_weights']}, suggested overlap "
        f"{summary['suggested_overlap']} px, "
        f"foreground {100 * summary['foreground_fraction']:.2f} %"
    )
    return 0


def add_network_arguments(ap: argparse.ArgumentParser) -> None:
    """``--width``, ``--depth`` and ``--space-to-depth``: U-Net overrides of a preset (the train
    command and the training scripts); :func:`network_arguments` reads them back."""
    ap.add_argument("--width", type=int, help="U-Net filters at the first level (preset's)")
    ap.add_argument("--depth", type=int, help="U-Net poolings (preset's)")
    ap.add_argument(
        "--space-to-depth",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="a space-to-depth stem: the U-Net runs at half resolution (default: the preset's)",
    )


def network_arguments(args) -> dict:
    """The :class:`flows.train.TrainParams` fields of :func:`add_network_arguments`."""
    return {"width": args.width, "depth": args.depth, "space_to_depth": args.space_to_depth}


def cmd_train(args) -> int:
    configure_prefect(args.root)
    from flows.train import TrainParams, train

    params = TrainParams(
        root=args.root,
        dataset=args.dataset,
        preset=args.preset,
        model=args.model,
        loss=args.loss,
        epochs=args.epochs,
        precision="bf16" if args.bf16 else "preset",
        centre=args.centre,
        separation_weight=args.separation_weight,
        small_object_area=args.small_object_area,
        **network_arguments(args),
        model_name=args.name,
        run_id=args.run_id,
        init_model=args.init_model,
        evaluate=not args.no_evaluate,
        promote=not args.no_promote,
    )
    result = train(params)
    print(f"registered {result['model_uri']} (device {result['device']})")
    if result.get("evaluation"):
        ev = result["evaluation"]
        print(
            f"  object F1 {ev['object_f1']:.3f}, pixel F1 {ev['pixel_f1']:.3f}, "
            f"count MAE {ev['count_mae']:.2f}; promoted: {ev['promoted']}"
        )
    return 0


def cmd_evaluate(args) -> int:
    configure_prefect(args.root)
    from flows.evaluate import EvaluateParams, evaluate

    params = EvaluateParams(
        root=args.root,
        dataset=args.dataset,
        model=args.model,
        split=args.split,
        images=args.images,
        promote=args.promote,
        force=args.force,
        sweep=not args.no_sweep,
        tta=args.tta or "model",
        backend=args.backend,
    )
    result = evaluate(params)
    _print_json(result["key_figures"])
    print(f"report: {result['report_uri']}")
    return 0


def cmd_infer(args) -> int:
    configure_prefect(args.root)
    from flows.infer import InferParams, nightly_inference

    params = InferParams(
        root=args.root,
        uploads=args.uploads,
        cells=args.cells,
        model=args.model,
        reprocess=args.reprocess,
        precision=args.precision,
        tta=args.tta or "model",
        backend=args.backend,
        plates=args.plate or None,
        channel=args.channel,
        pixel_size_um=args.pixel_size_um,
        markers=_markers(args.marker or []),
        **({"well_pattern": args.well_pattern} if args.well_pattern else {}),
    )
    summary = nightly_inference(params)
    print(
        f"processed {summary['images']} image(s) in {summary['plates']} plate(s): "
        f"{summary['cells']} cells, {summary['failed']} failed, {summary['skipped']} already done, "
        f"{summary.get('other_runs', 0)} left to another run "
        f"-> {summary['cells_uri']}"
    )
    for plate, uri in summary.get("summaries", {}).items():
        print(f"  summary of plate {plate}: {uri}")
    for plate, uri in summary.get("reports", {}).items():
        print(f"  report of plate {plate}: {uri}")
    return 0


def _markers(specs: list[str]) -> dict:
    """``["neun=800", "c_fos=otsu"]`` -> ``{"neun": 800.0, "c_fos": "otsu"}``."""
    out = {}
    for spec in specs:
        name, sep, rule = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--marker must be CHANNEL=THRESHOLD or CHANNEL=otsu, got {spec!r}")
        try:
            out[name] = "otsu" if rule == "otsu" else float(rule)
        except ValueError:
            raise ValueError(f"--marker {spec!r}: threshold must be a number or 'otsu'") from None
    return out


def cmd_segment(args) -> int:
    from neuroseg.segment_files import segment_files

    df = segment_files(
        args.images,
        out=args.out,
        model=args.model,
        threshold=args.threshold,
        watershed=args.watershed,
        precision=args.precision,
        channel=args.channel,
        labels=args.labels,
        tta=args.tta,
        pixel_size_um=args.pixel_size_um,
        backend=args.backend,
    )
    skipped = f", {df.attrs['failed']} skipped" if df.attrs.get("failed") else ""
    print(f"{len(df)} cells in {df.attrs['images']} image(s){skipped} -> {args.out}")
    if args.labels:
        print(f"label images (pixel value = cell_id) -> {args.labels}")
    return 0


def cmd_report(args) -> int:
    from neuroseg.report import write_plate_report

    result = write_plate_report(args.root, args.plate, out=args.out, cells_uri=args.cells)
    print(
        f"plate {result['plate_id']}: {result['images']} image(s), {result['cells']} cells, "
        f"{result['failures']} failure(s) -> {result['uri']} ({result['bytes'] / 1e6:.2f} MB)"
    )
    return 0


def _shipped_nuclei() -> list[str]:
    from neuroseg import registry

    return [
        name
        for name in ("nuclei",)
        if os.path.exists(os.path.join(registry.shipped_model_uri(name), "config.json"))
    ]


def _bench_backends() -> tuple[str, ...]:
    """Both backends where both are installed (timed in one run), else the one that is."""
    import importlib.util

    have = [
        name
        for name, module in (("tf", "tensorflow"), ("onnx", "onnxruntime"))
        if importlib.util.find_spec(module) is not None
    ]
    return tuple(have) or ("tf",)


def cmd_export(args) -> int:
    from neuroseg import registry

    uri = registry.resolve_model_uri(args.root, args.model)
    if args.format == "onnx":
        if args.out:
            raise ValueError(
                "--out applies to `export bioimageio` only (model.onnx goes into the model folder)"
            )
        from neuroseg.serving.onnx import export_onnx

        info = export_onnx(uri, force=args.force)
        what = "already had" if info.get("skipped") else "wrote"
        print(
            f"{what} {uri}/model.onnx ({info['converter']}, opset {info['opset']}; max abs "
            f"difference to Keras {info['check']['max_abs_diff']:.1e} on a "
            f"{'x'.join(str(v) for v in info['check']['shape'])} test tensor)"
        )
        return 0
    if not args.out:
        raise ValueError("export bioimageio needs --out FILE.zip")
    from neuroseg.serving.bioimageio import export_package

    _print_json(export_package(uri, args.out, sample=args.sample))
    return 0


def cmd_import_model(args) -> int:
    from neuroseg import registry

    uri = registry.import_model(args.root, args.source, name=args.name)
    name, version = uri.rstrip("/").split("/")[-2:]
    if args.promote:
        registry.set_production(args.root, name, version, reason=f"imported from {args.source}")
    serving = registry.production_version(args.root, name) == version
    state = "production" if serving else "not promoted"
    print(f"{name}@{version} ({state}) -> {uri}")
    return 0


def cmd_bench(args) -> int:
    standing = args.dask_address is not None or args.workers is not None
    if standing and args.what != "orchestration":
        raise ValueError("--dask-address and --workers apply to `bench orchestration` only")
    if args.dask_address is not None and args.workers is not None:
        raise ValueError("give --dask-address (a running cluster) or --workers N, not both")
    if args.tta is not None and args.what != "inference":
        raise ValueError("--tta applies to `bench inference` only")
    if args.backend is not None and args.what != "inference":
        raise ValueError("--backend applies to `bench inference` only")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.what == "masks":
        from neuroseg.benchmarks.masks import bench_masks

        result = bench_masks(fnc_root=args.fnc_root, repeat=args.repeat)
    elif args.what == "pipeline":
        from neuroseg.benchmarks.pipeline import bench_pipeline

        result = bench_pipeline()
    elif args.what == "inference":
        configure_prefect(None)
        from neuroseg.benchmarks.inference import bench_inference

        models = args.model or ["default", *_shipped_nuclei()]
        backends = tuple(dict.fromkeys(args.backend or _bench_backends()))
        runs = {
            m: bench_inference(model=m, images=args.images, tta=args.tta, backends=backends)
            for m in models
        }
        result = runs[models[0]] if len(models) == 1 else runs
    elif standing:  # orchestration on a standing Dask cluster
        configure_prefect(None)
        from flows.bench import bench_dask_cluster

        result = bench_dask_cluster(
            address=args.dask_address,
            workers=2 if args.workers is None else args.workers,
            images=args.images,
        )
    else:  # orchestration
        configure_prefect(None)
        from flows.bench import bench_orchestration

        result = bench_orchestration(images=args.images)
    print(json.dumps(result, indent=2, sort_keys=True, default=float))
    return 0


def cmd_demo(args) -> int:
    configure_prefect(args.root)
    from flows.demo import DemoParams, demo

    params = DemoParams(
        root=args.root,
        plates=args.plates,
        images_per_plate=args.images,
        train_images=args.train_images,
        real_images=args.real_images,
        nuclei_images=args.nuclei_images,
        train=not args.no_train,
        seed=args.seed,
        height=args.size[0],
        width=args.size[1],
    )
    t0 = time.perf_counter()
    demo(params)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuroseg",
        description="Segment and count neuronal cells in fluorescence-microscopy images.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def root_arg(sp):
        sp.add_argument(
            "--root",
            default=DEFAULT_ROOT,
            help=f"storage root: a folder or s3://bucket/prefix (default {DEFAULT_ROOT})",
        )

    sp = sub.add_parser("demo", help="run the whole system end to end on synthetic plates")
    root_arg(sp)
    sp.add_argument("--plates", type=int, default=2, help="synthetic plates for the nightly run")
    sp.add_argument("--images", type=int, default=3, help="images per plate")
    sp.add_argument("--train-images", type=int, default=16, help="annotated synthetic images")
    sp.add_argument("--real-images", help="a folder of real images (FNC layout or plain images)")
    sp.add_argument(
        "--nuclei-images",
        help="a folder of nucleus images (images/ + labels/) for the nuclei model "
        "(default: ../shared/data/nuclei/bbbc039 when present)",
    )
    sp.add_argument("--no-train", action="store_true", help="use the shipped model, skip training")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--size", type=_size, default=(1200, 1600), help="WIDTHxHEIGHT (1600x1200)")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("synth", help="generate FNC-like synthetic plates with exact masks")
    sp.add_argument("root", help="storage root to write into (folder or s3://...)")
    sp.add_argument("--plates", type=int, default=2, help="plates under uploads/ (default 2)")
    sp.add_argument("--images", type=int, default=3, help="images per plate, or dataset size")
    sp.add_argument("--dataset", help="write an annotated dataset datasets/NAME instead")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--size", type=_size, default=(1200, 1600), help="WIDTHxHEIGHT (1600x1200)")
    sp.set_defaults(func=cmd_synth)

    sp = sub.add_parser("ingest", help="validate and record new uploads or an annotated dataset")
    sp.add_argument("source", help="folder or s3:// prefix: <plate>/<image> or images/+masks/")
    root_arg(sp)
    sp.add_argument(
        "--dataset", help="ingest an annotated dataset (images/ + masks/ or labels/) as NAME"
    )
    sp.add_argument(
        "--corrections",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="with --dataset: a lab's corrections, into ROOT/corrections/NAME (default: when "
        "the folder holds the review.json of `neuroseg review`)",
    )
    sp.set_defaults(func=cmd_ingest)

    sp = sub.add_parser(
        "review", help="export a plate's least confident images and label images to correct"
    )
    sp.add_argument("plate", help="plate id")
    root_arg(sp)
    sp.add_argument("--out", required=True, help="a new folder: images/, labels/, review.json")
    sp.add_argument("--top", type=int, default=5, help="how many images (default 5)")
    sp.set_defaults(func=cmd_review)

    sp = sub.add_parser(
        "adapt", help="fine-tune the serving model on ingested corrections; promote if better"
    )
    sp.add_argument("corrections", help="name of ingested corrections (ingest --dataset NAME)")
    root_arg(sp)
    sp.add_argument("--model", default="neuroseg", help="the registry name the nightly run serves")
    sp.add_argument("--reference-dataset", help="prepared data to replay and score on")
    sp.add_argument("--metric", choices=("f1_iou50", "f1_centroid"))
    sp.add_argument("--tolerance", type=float, help="reference score drop allowed (0.02)")
    sp.add_argument("--epochs", type=int, help="fine-tuning epochs (4)")
    sp.add_argument("--steps-per-epoch", type=int, help="batches per epoch (40)")
    sp.add_argument("--no-promote", action="store_true", help="score the candidate only")
    sp.set_defaults(func=cmd_adapt)

    sp = sub.add_parser("prepare", help="analyse masks and tile an ingested dataset")
    sp.add_argument("dataset", help="name of an ingested dataset")
    root_arg(sp)
    sp.add_argument("--tile", type=int, default=400)
    sp.add_argument("--min-overlap", type=int, default=100)
    sp.add_argument("--seed", type=int, default=0, help="seed of the by-image split")
    sp.add_argument("--val-fraction", type=float, default=0.15, help="share of images for val")
    sp.add_argument("--test-fraction", type=float, default=0.15, help="share of images for test")
    sp.add_argument("--channels", choices=("rgb", "grey"), default="rgb", help="model input planes")
    sp.add_argument(
        "--normalization",
        choices=("fixed", "percentile"),
        default="fixed",
        help="fixed: 8-bit as is (FNC); percentile: per-image 1/99.8 (12/16-bit nuclei)",
    )
    sp.add_argument("--channel", type=int, help="channel (0-based) of multi-channel images")
    sp.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="resize the images by this factor for the model (0.5: large cells, more context)",
    )
    sp.add_argument("--executor", choices=("threads", "dask"), default="threads")
    sp.add_argument("--dask-address", help="scheduler address; default: a temporary local cluster")
    sp.add_argument("--workers", type=int, default=2, help="workers of a temporary cluster")
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("train", help="train a model in phases and register it")
    root_arg(sp)
    sp.add_argument("--dataset", default="synthetic", help="prepared dataset name")
    sp.add_argument(
        "--preset", default="cpu-small", choices=("seed", "cpu-small", "tiny", "nuclei", "fnc")
    )
    sp.add_argument(
        "--init-model",
        help="fine-tune: start from this model's weights (NAME, NAME@VERSION, folder, fnc)",
    )
    sp.add_argument("--model", choices=("shallow", "unet"), help="override the preset's model")
    sp.add_argument(
        "--loss",
        choices=(
            "weighted_bce",
            "dice",
            "jaccard",
            "focal",
            "tversky",
            "bce_dice",
            "weighted_cce",
            "cce_dice",
        ),
    )
    sp.add_argument("--epochs", type=int, help="epochs of every phase (override)")
    sp.add_argument("--name", default="neuroseg", help="model name in the registry")
    sp.add_argument("--run-id", help="resume this training run (its checkpoints are kept)")
    sp.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    sp.add_argument(
        "--centre",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="three-class presets: also learn a centre map (default: the preset's)",
    )
    sp.add_argument(
        "--separation-weight",
        type=float,
        help="three-class losses: extra weight on the pixels between close objects "
        "(default: the preset's; nuclei 10)",
    )
    sp.add_argument(
        "--small-object-area",
        type=int,
        metavar="PX",
        help="with a separation weight: objects under PX pixels (micronuclei) weigh as much "
        "as the pixels between close objects; 0 = none (default: the preset's)",
    )
    add_network_arguments(sp)
    sp.add_argument("--no-evaluate", action="store_true", help="skip evaluation after training")
    sp.add_argument("--no-promote", action="store_true", help="never promote this model")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="score a registered model on a dataset's test split")
    root_arg(sp)
    sp.add_argument("--dataset", default="synthetic")
    sp.add_argument("--model", default="neuroseg", help="NAME, NAME@VERSION, a folder, 'default'")
    sp.add_argument("--split", default="test", help="test | val | all")
    sp.add_argument("--images", help="a folder of real images with masks/ (instead of --dataset)")
    sp.add_argument("--promote", action="store_true", help="promote if it beats production")
    sp.add_argument("--force", action="store_true", help="promote even if it does not")
    sp.add_argument("--no-sweep", action="store_true", help="keep the model's threshold")
    tta_argument(sp)
    backend_argument(sp)
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("infer", help="segment new plates under uploads/ into the cell table")
    root_arg(sp)
    sp.add_argument("--uploads", help="uploads root (default ROOT/uploads)")
    sp.add_argument("--cells", help="cell table root (default ROOT/cells)")
    sp.add_argument("--model", default="neuroseg", help="registry name, NAME@VERSION or a folder")
    sp.add_argument("--plate", action="append", help="only this plate (repeatable)")
    sp.add_argument("--reprocess", action="store_true", help="replace rows of older models")
    sp.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    sp.add_argument(
        "--channel", type=int, help="channel (0-based) of multi-channel images to segment"
    )
    pixel_size_argument(sp)
    sp.add_argument(
        "--marker",
        action="append",
        metavar="CH=T",
        help="positive call for the plate summary: channel label = threshold on "
        "mean_intensity_<label> (image units) or 'otsu' (per plate); repeatable",
    )
    sp.add_argument("--well-pattern", help="regex with a group 'well' finding the well in ids")
    tta_argument(sp)
    backend_argument(sp)
    sp.set_defaults(func=cmd_infer)

    sp = sub.add_parser("segment", help="segment image files into one Parquet file")
    sp.add_argument("images", nargs="+", help="image files (local or s3://)")
    sp.add_argument("--out", required=True, help="output .parquet")
    sp.add_argument(
        "--model", default="default", help="'default' (FNC), 'nuclei' (shipped) or a model folder"
    )
    sp.add_argument("--threshold", type=float, help="override the model's threshold")
    sp.add_argument("--watershed", action="store_true", help="split touching cells")
    sp.add_argument("--labels", help="folder for one 16-bit label image per input (cell_id)")
    sp.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    sp.add_argument(
        "--channel", type=int, help="channel (0-based) of multi-channel images to segment"
    )
    pixel_size_argument(sp)
    tta_argument(sp)
    backend_argument(sp)
    sp.set_defaults(func=cmd_segment)

    sp = sub.add_parser(
        "export", help="write a model as ONNX (into its folder) or as a bioimage.io package"
    )
    sp.add_argument("format", choices=("onnx", "bioimageio"))
    sp.add_argument(
        "model", help="'default', 'nuclei', NAME (production), NAME@VERSION or a model folder"
    )
    root_arg(sp)
    sp.add_argument("--out", help="bioimageio: the package file to write (FILE.zip)")
    sp.add_argument("--force", action="store_true", help="onnx: export again if already done")
    sp.add_argument(
        "--sample", help="bioimageio: an image for the test tensors and cover (default: synthetic)"
    )
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser(
        "import-model", help="add a model folder or bioimage.io package to the registry"
    )
    sp.add_argument("source", help="bioimageio:FILE.zip or a model folder")
    root_arg(sp)
    sp.add_argument("--name", help="registry name (default: the model's own)")
    sp.add_argument("--promote", action="store_true", help="serve it as NAME's production model")
    sp.set_defaults(func=cmd_import_model)

    sp = sub.add_parser("report", help="write a plate's HTML report (thumbnails, counts, failures)")
    sp.add_argument("plate", help="plate id (the folder name under uploads/)")
    root_arg(sp)
    sp.add_argument("--out", help="output .html (default ROOT/reports/plates/PLATE.html)")
    sp.add_argument("--cells", help="cell table root (default ROOT/cells)")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("bench", help="benchmarks printing JSON")
    sp.add_argument("what", choices=("masks", "pipeline", "inference", "orchestration"))
    sp.add_argument("--fnc-root", help="folder of real FNC samples (default ../shared/...)")
    sp.add_argument("--repeat", type=int, default=3)
    sp.add_argument("--images", type=int, default=20, help="plate size for inference benches")
    sp.add_argument(
        "--model",
        action="append",
        help="inference: a shipped model (default, nuclei) or a model folder; repeatable "
        "(default: every shipped model, each on its own kind of image)",
    )
    sp.add_argument(
        "--dask-address",
        metavar="ADDR",
        help="orchestration: time the nightly run on the standing Dask cluster at ADDR",
    )
    sp.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="orchestration: start a local standing Dask cluster and time 1..N workers",
    )
    tta_argument(sp)
    sp.add_argument(
        "--backend",
        action="append",
        choices=("tf", "onnx"),
        help="inference: time this backend (repeatable; default: both where both are "
        "installed, in one run, with onnx_speedup = tf fp32 / onnx end-to-end seconds)",
    )
    sp.set_defaults(func=cmd_bench)

    verbose = "show TensorFlow's start-up messages and debug lines (quiet by default)"
    p.add_argument("--verbose", action="store_true", help=verbose)
    for command in sub.choices.values():  # also accepted after the command's name
        command.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose
        )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_output(verbose=args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("neuroseg: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"neuroseg: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
