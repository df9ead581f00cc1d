"""`medclipseg` command line: phantoms, pretrain, train, evaluate, benchmark, predict.

    medclipseg phantoms  --out data/phantoms --per-modality 400 --seed 0 [--shift]
    medclipseg pretrain  --data data/phantoms --out runs/demo/stage1 [--epochs 30]
    medclipseg train    --data DATASET --out runs/busi [--backbone tiny] [--init SOURCE] [--pct 25] [--epochs 100]
    medclipseg evaluate --data DATASET --weights SOURCE [--design contradictory] [--out results.json]
    medclipseg benchmark --out docs/results.md [--weights SOURCE] [--runs runs/demo] [--data DATASET]
    medclipseg predict  --weights SOURCE --image scan.png --prompt "..." [--out-dir out/]
    medclipseg export   --out exports/v1 [--db feedback_db/annotations.db] [--val 0.1] [--test 0.2] [--zip]
    medclipseg ingest   --source FOLDER_OR_ZIP (--prompt "..." | --prompts-csv prompts.csv) [--db annotations.db]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_common_data(parser: argparse.ArgumentParser) -> None:
    from medclipseg.datasets.layout import DATA_PERCENTAGES, PROMPT_DESIGNS

    parser.add_argument("--data", required=True, help="dataset folder in the authors' layout")
    parser.add_argument("--pct", type=int, default=100, choices=DATA_PERCENTAGES, help="training data percentage")
    parser.add_argument("--design", default="original", choices=PROMPT_DESIGNS, help="test prompt design")


def build_parser() -> argparse.ArgumentParser:
    from medclipseg.registry import BACKBONES

    parser = argparse.ArgumentParser(prog="medclipseg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train adapters and head on a dataset in the authors' layout")
    _add_common_data(train)
    train.add_argument("--out", required=True, help="run folder (checkpoints, history); resumed if it exists")
    train.add_argument("--backbone", default="tiny", choices=sorted(BACKBONES))
    train.add_argument("--init", help="start from weights: our model folder or an authors' .pth (path or hf://)")
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=24)
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--min-lr", type=float, default=1e-4)
    train.add_argument("--seed", type=int, default=666)
    train.add_argument("--max-steps-per-epoch", type=int)
    train.add_argument("--no-validate", action="store_true")
    train.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    train.add_argument("--device")
    train.add_argument("--contrastive-weight", type=float, default=0.1,
                       help="weight of the soft patch contrastive loss (0 for the ablation)")
    train.add_argument("--means-only", action="store_true",
                       help="ablation: train and predict with the value means (no probabilistic attention)")
    train.add_argument("--head-only", action="store_true", help="ablation: no adapters, train upscaler and head only")

    phantoms = commands.add_parser("phantoms", help="write a synthetic five-modality data set in the authors' layout")
    from medclipseg.phantoms import add_phantoms_arguments
    add_phantoms_arguments(phantoms)

    pretrain = commands.add_parser("pretrain", help="stage 1: align the tiny ViT with the frozen MiniLM text tower")
    pretrain.add_argument("--data", required=True, help="dataset folder in the authors' layout (train split used)")
    pretrain.add_argument("--out", required=True, help="model folder written at the end")
    pretrain.add_argument("--epochs", type=int, default=30)
    pretrain.add_argument("--batch-size", type=int, default=64)
    pretrain.add_argument("--lr", type=float, default=1e-3)
    pretrain.add_argument("--dense-weight", type=float, default=1.0)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--max-steps", type=int)
    pretrain.add_argument("--model", default="{}", help="JSON overrides of the tiny config, e.g. '{\"width\": 64}'")
    pretrain.add_argument("--device")

    bench = commands.add_parser("benchmark", help="regenerate the results report (docs/results.md)")
    bench.add_argument("--out", default="docs/results.md")
    bench.add_argument("--weights", default=None, help="model source (default: MEDCLIPSEG_WEIGHTS or demo)")
    bench.add_argument("--runs", help="folder with ablation and data-fraction runs (<name>/best)")
    bench.add_argument("--data", help="test set in the authors' layout instead of fresh phantoms")
    bench.add_argument("--shifted-data", help="a second, shifted test set in the authors' layout")
    bench.add_argument("--work", default="benchmark_data", help="where fresh phantom test sets are written")
    bench.add_argument("--per-modality", type=int, default=30)
    bench.add_argument("--num-samples", type=int, default=30)
    bench.add_argument("--secondary-samples", type=int, default=8)
    bench.add_argument("--device")

    evaluate = commands.add_parser("evaluate", help="DSC/NSD of a model on a split")
    _add_common_data(evaluate)
    evaluate.add_argument("--weights", default=None, help="model source (default: MEDCLIPSEG_WEIGHTS or demo)")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"))
    evaluate.add_argument("--num-samples", type=int, default=30)
    evaluate.add_argument("--threshold", type=float, default=0.5)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--mode", default="exact", choices=("exact", "fast"))
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N images")
    evaluate.add_argument("--out", default="results.json", help="results JSON")
    evaluate.add_argument("--device")

    predict = commands.add_parser("predict", help="segment one image; writes mask and uncertainty maps")
    predict.add_argument("--weights", default=None)
    predict.add_argument("--image", required=True)
    predict.add_argument("--prompt", required=True)
    predict.add_argument("--num-samples", type=int, default=30)
    predict.add_argument("--threshold", type=float, default=0.5)
    predict.add_argument("--seed", type=int)
    predict.add_argument("--mode", default="exact", choices=("exact", "fast"))
    predict.add_argument("--out-dir", default=".")
    predict.add_argument("--device")

    export = commands.add_parser("export", help="export corrected annotations as a dataset in the authors' layout")
    export.add_argument("--db", help="annotation database (default: MEDCLIPSEG_DB or feedback_db/annotations.db)")
    export.add_argument("--out", required=True, help="export folder (must be new or empty, see --overwrite)")
    export.add_argument("--val", type=float, default=0.1, help="fraction of images for validation")
    export.add_argument("--test", type=float, default=0.2, help="fraction of images for testing")
    export.add_argument("--seed", type=int, default=0, help="seed of the split")
    export.add_argument("--status", action="append", choices=("corrected", "accepted"),
                        help="export cases with this status (repeatable; default: corrected and accepted)")
    export.add_argument("--annotator", help="export only this annotator's corrections")
    export.add_argument("--zip", action="store_true", help="also write <out>.zip")
    export.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")

    ingest = commands.add_parser("ingest", help="add a folder or .zip of images to the review queue (predicted)")
    ingest.add_argument("--db", help="annotation database (default: MEDCLIPSEG_DB, /data on Spaces, or "
                                     "feedback_db/annotations.db)")
    ingest.add_argument("--source", required=True, help="folder (searched recursively) or .zip of images")
    prompt_source = ingest.add_mutually_exclusive_group(required=True)
    prompt_source.add_argument("--prompt", help="one prompt for every image")
    prompt_source.add_argument("--prompts-csv",
                               help="CSV with columns image,prompt (or the authors' Image,Description)")
    ingest.add_argument("--batch", help="batch name stored with the cases (the queue can be limited to it)")
    ingest.add_argument("--weights", default=None, help="model source (default: MEDCLIPSEG_WEIGHTS or demo)")
    ingest.add_argument("--num-samples", type=int, default=30)
    ingest.add_argument("--threshold", type=float, default=0.5)
    ingest.add_argument("--batch-size", type=int, default=8)
    ingest.add_argument("--seed", type=int, default=0)
    ingest.add_argument("--mode", default="exact", choices=("exact", "fast"))
    ingest.add_argument("--device")
    return parser


def run_train(args) -> int:
    from medclipseg.training.stage2 import TrainConfig, train

    config = TrainConfig(data=args.data, out=args.out, backbone=args.backbone, init=args.init, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr, seed=args.seed, pct=args.pct,
                         design=args.design, max_steps_per_epoch=args.max_steps_per_epoch,
                         validate=not args.no_validate, device=args.device, resume=not args.no_resume,
                         contrastive_weight=args.contrastive_weight, stochastic=not args.means_only,
                         fusion_layers=[] if args.head_only else None)
    result = train(config)
    print(json.dumps({"best": result["best"], "last": result["last"], "epochs": len(result["history"])}))
    return 0


def run_phantoms(args) -> int:
    from medclipseg.phantoms import run_phantoms as write_phantoms

    return write_phantoms(args)


def run_pretrain(args) -> int:
    from medclipseg.training.stage1 import PretrainConfig, pretrain

    try:
        overrides = json.loads(args.model)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model must be a JSON object: {exc}") from None
    config = PretrainConfig(data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            dense_weight=args.dense_weight, seed=args.seed, max_steps=args.max_steps,
                            model=overrides, device=args.device)
    result = pretrain(config)
    print(json.dumps({"out": result["out"], "seconds": result["seconds"], "final": result["history"][-1]}))
    return 0


def run_benchmark(args) -> int:
    from medclipseg.evaluation.report import BenchmarkConfig, run_benchmark as benchmark

    config = BenchmarkConfig(out=args.out, weights=args.weights, runs=args.runs, data=args.data,
                             shifted_data=args.shifted_data, work=args.work, per_modality=args.per_modality,
                             num_samples=args.num_samples, secondary_samples=args.secondary_samples,
                             device=args.device)
    results = benchmark(config)
    print(json.dumps({"out": args.out, "dsc": results["in_distribution"]["overall"].get("dsc"),
                      "seconds": results["seconds"]}))
    return 0


def run_evaluate(args) -> int:
    from medclipseg.datasets.layout import load_split
    from medclipseg.evaluation.evaluate import evaluate_samples, write_results
    from medclipseg.inference.predictor import Predictor

    samples = load_split(args.data, args.split, design=args.design, pct=args.pct)
    if args.limit:
        samples = samples[: args.limit]
    predictor = Predictor.from_pretrained(args.weights, mode=args.mode, device=args.device)
    results = evaluate_samples(predictor, samples, num_samples=args.num_samples, threshold=args.threshold,
                               seed=args.seed)
    results["config"] = {"data": str(args.data), "split": args.split, "design": args.design, "pct": args.pct,
                         "weights": predictor.model_id, "num_samples": args.num_samples,
                         "threshold": args.threshold, "mode": args.mode, "seed": args.seed}
    path = write_results(results, args.out)
    print(json.dumps({**results["summary"], "results": str(path)}))
    return 0


def run_predict(args) -> int:
    import cv2
    import numpy as np

    from medclipseg.inference.predictor import Predictor

    predictor = Predictor.from_pretrained(args.weights, mode=args.mode, device=args.device)
    prediction = predictor.predict(args.image, args.prompt, num_samples=args.num_samples,
                                   threshold=args.threshold, seed=args.seed, channel_order="bgr")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    cv2.imwrite(str(out / f"{stem}_mask.png"), prediction.mask.astype(np.uint8) * 255)
    np.savez_compressed(out / f"{stem}_maps.npz", probability=prediction.probability, entropy=prediction.entropy,
                        mutual_information=prediction.mutual_information)
    print(json.dumps({"mask": str(out / f"{stem}_mask.png"), "maps": str(out / f"{stem}_maps.npz"),
                      "num_samples": prediction.num_samples, "seconds": round(prediction.seconds, 3),
                      **prediction.scores}))
    return 0


def run_export(args) -> int:
    import sqlite3

    from medclipseg.annotation.export import EXPORTABLE_STATUSES, export_dataset
    from medclipseg.annotation.store import AnnotationStore, StorageError, default_db_path

    db = Path(args.db) if args.db else default_db_path()
    if not db.is_file():
        raise ValueError(f"No annotation database at '{db}' (give --db or set MEDCLIPSEG_DB).")
    try:
        store = AnnotationStore(db)
        try:
            result = export_dataset(store, args.out, val_fraction=args.val, test_fraction=args.test, seed=args.seed,
                                    statuses=tuple(args.status or EXPORTABLE_STATUSES), annotator=args.annotator,
                                    make_zip=args.zip, overwrite=args.overwrite)
        finally:
            store.close()
    except (StorageError, sqlite3.DatabaseError) as exc:
        raise ValueError(f"{db}: {exc}") from None
    empty = [split for split, count in result.counts.items() if count == 0]
    if empty:
        hint = " (train with --no-validate)" if "val" in empty else ""
        print(f"medclipseg export: note: no cases in the {' and '.join(empty)} split{hint}", file=sys.stderr)
    print(json.dumps({"out": str(result.root), "counts": result.counts, "total": sum(result.counts.values()),
                      "manifest": str(result.manifest_path),
                      "zip": str(result.zip_path) if result.zip_path else None}))
    return 0


def run_ingest(args) -> int:
    from medclipseg.io.images import validate_prompt
    from medclipseg.inference.predictor import Predictor
    from medclipseg.annotation.ingest import ingest, read_prompt_csv, scan_source
    from medclipseg.annotation.store import AnnotationStore

    # Check the inputs before the model is loaded, so that a typo fails at once.
    prompts = read_prompt_csv(args.prompts_csv) if args.prompts_csv else None
    prompt = validate_prompt(args.prompt) if args.prompt is not None else None
    total = len(scan_source(args.source))
    store = AnnotationStore(args.db)
    try:
        print(f"{total} images in {args.source}; database {store.path}", flush=True)
        predictor = Predictor.from_pretrained(args.weights, mode=args.mode, device=args.device)

        def progress(done: int, total: int, message: str) -> None:
            print(f"[{done}/{total}] {message}", flush=True)

        report = ingest(store, predictor, args.source, prompt=prompt, prompts_csv=prompts, batch=args.batch,
                        batch_size=args.batch_size, num_samples=args.num_samples, threshold=args.threshold,
                        seed=args.seed, progress=progress)
    finally:
        store.close()
    print(report.summary())
    return 0


def main(argv=None) -> int:
    from medclipseg.weights.checkpoint import CheckpointMismatchError
    from medclipseg.datasets.layout import LayoutError
    from medclipseg.io.images import ImageReadError, PromptError
    from medclipseg.weights.sources import WeightsSourceError
    from medclipseg.annotation.store import StorageError

    args = build_parser().parse_args(argv)
    handlers = {"train": run_train, "evaluate": run_evaluate, "predict": run_predict, "phantoms": run_phantoms,
                "pretrain": run_pretrain, "benchmark": run_benchmark, "export": run_export,
                "ingest": run_ingest}
    try:
        return handlers[args.command](args)
    except (LayoutError, ImageReadError, PromptError, WeightsSourceError, CheckpointMismatchError,
            StorageError, FileNotFoundError, ValueError) as exc:
        print(f"medclipseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
