"""Train the shipped default model with the project's own flows, then score it on real images.

    .venv/bin/python scripts/train_default_model.py --work /tmp/neuroseg-ship

Steps (each one of the flows the deployments run): synthetic FNC-like dataset -> ingest ->
prepare (400x400 tiles, >= 100 px overlap, split by image) -> train (the cpu-small preset)
with evaluation and promotion on the synthetic test split -> copy of
the registered model folder into ``neuroseg/assets/models/default/`` -> evaluation on the real
FNC samples (none of which is used for training) -> ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "neuroseg" / "assets" / "models" / "default"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="scratch storage root")
    ap.add_argument("--images", type=int, default=30, help="synthetic training images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crop", type=int, default=None, help="override the preset's crop")
    ap.add_argument("--loss", default=None, help="loss name (default: the preset's)")
    ap.add_argument("--out", default=str(ASSET), help="where to copy the model folder")
    ap.add_argument("--fnc", default=str(REPO.parent / "shared" / "data" / "fnc-samples"))
    args = ap.parse_args()

    from neuroseg.cli import configure_prefect

    configure_prefect(args.work)
    from flows.evaluate import EvaluateParams, evaluate
    from flows.ingest import IngestParams, ingest
    from flows.prepare import PrepareParams, prepare
    from flows.train import TrainParams, train
    from neuroseg import storage, synth

    t0 = time.time()
    work = args.work
    synth.write_dataset(
        storage.join(work, "incoming"), name="synthetic", images=args.images, seed=args.seed
    )
    ingest(
        IngestParams(
            source=storage.join(work, "incoming", "datasets", "synthetic"),
            root=work,
            dataset="synthetic",
        )
    )
    prepare(PrepareParams(root=work, dataset="synthetic", seed=args.seed))
    result = train(
        TrainParams(
            root=work,
            dataset="synthetic",
            preset="cpu-small",
            crop=args.crop,
            loss=args.loss,
            model_name="default",
            seed=args.seed,
        )
    )
    src, dest = Path(result["model_uri"]), Path(args.out)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    scores = {"synthetic test split": result["evaluation"]}
    for colour in ("yellow", "red"):
        folder = Path(args.fnc) / colour
        if folder.is_dir():
            ev = evaluate(
                EvaluateParams(root=work, model=str(dest), images=str(folder), sweep=False)
            )
            scores[f"real FNC {colour}"] = ev["key_figures"]
    (dest / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True))
    print(
        json.dumps(
            {"seconds": round(time.time() - t0), "model": str(src), "scores": scores},
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
