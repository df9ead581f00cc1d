"""Bulk scoring throughput: the single-process engine against Ray Data with 1 and 2 workers.

    python benchmarks/bulk_score.py [--images 1000] [--num-samples 8] [--workers 1 2] [--engines local ray]

Writes ``--images`` phantom images (five modalities, 160-256 px) to a temporary folder, then for
each engine ingests them into a new SQLite store with the shipped demo model, as
``medclipseg ingest --engine ...`` does (seed 0, so every engine stores the same predictions). Times
the whole ingest (reading, hashing, predicting, storing; Ray's start-up of the workers and the
model load on each included, ``ray.init`` itself not), and separately the driver's store writes,
the part that does not spread over workers; then the driver's write ceiling (cases stored per
second with no model running, with 1 and with ``bulk.WRITER_THREADS`` writer threads). Prints a
table, then one line per run, the last one for the last run:

    engine=<local|ray> workers=<n> images_per_s=<x>
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODALITIES = ("breast_ultrasound", "colonoscopy", "dermoscopy", "chest_xray", "brain_mri")
PROMPT = "One lesion in the image."


def write_phantoms(folder: Path, count: int) -> None:
    import cv2

    from medclipseg.phantoms import generate_phantom

    for index in range(count):
        phantom = generate_phantom(MODALITIES[index % len(MODALITIES)], 40_000 + index, num_targets=1)
        side = 160 + 32 * (index % 4)
        cv2.imwrite(str(folder / f"img{index:05d}.png"), cv2.resize(phantom.image, (side, side)))


class TimedStore:
    """The store, with the seconds its case writes take counted (the driver's serial part)."""

    def __init__(self, store):
        self.store, self.write_seconds, self.writes = store, 0.0, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def add_case_with_prediction(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.store.add_case_with_prediction(*args, **kwargs)
        finally:
            self.write_seconds += time.perf_counter() - started
            self.writes += 1


def run(engine_name: str, workers: int, source: Path, folder: Path, args, demo) -> dict:
    from medclipseg.annotation.ingest import ingest
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(folder / f"{engine_name}-{workers}.db")
    store.ensure_base_version(demo.model_id, source="demo", name="demo")
    timed = TimedStore(store)
    started = time.perf_counter()
    if engine_name == "local":
        report = ingest(timed, demo, source, prompt=PROMPT, num_samples=args.num_samples, seed=0,
                        batch_size=args.batch_size)
    else:
        from medclipseg.scale.bulk import ingest_with_engine
        from medclipseg.scale.ray_engine import PredictorSpec, RayEngine

        engine = RayEngine(PredictorSpec(source="demo", device="cpu", model_id=demo.model_id), workers=workers,
                           batch_size=args.batch_size)
        report = ingest_with_engine(timed, engine, source, model_id=demo.model_id, prompt=PROMPT,
                                    num_samples=args.num_samples, seed=0)
    seconds = time.perf_counter() - started
    from medclipseg.annotation.queue import ACQUISITION_SCORES, UNCERTAINTY_ORDER

    column = ACQUISITION_SCORES[UNCERTAINTY_ORDER]
    ranks = [row[column] for row in store._db().query(f'SELECT "{column}" FROM cases ORDER BY original_name')]
    store.close()
    if report.failed:
        raise SystemExit(f"{engine_name}: {len(report.failed)} images failed: {report.failed[:3]}")
    return {"engine": engine_name, "workers": workers, "images": len(report.added), "seconds": seconds,
            "images_per_s": len(report.added) / seconds, "write_seconds": timed.write_seconds,
            "writes": timed.writes, "ranks": ranks}


def write_ceiling(folder: Path, demo, threads: int, count: int = 200) -> float:
    """Cases per second the driver stores with ``threads`` writer threads and no model running: the
    most any number of workers can deliver into one store from one driver."""
    from medclipseg.annotation.ingest import ImagePlan, IngestReport, Ticker, store_image_result
    from medclipseg.annotation.store import AnnotationStore, content_hash
    from medclipseg.phantoms import generate_phantom
    from medclipseg.scale.bulk import Writers

    results = []
    for index in range(count):
        image = generate_phantom(MODALITIES[index % len(MODALITIES)], 60_000 + index, num_targets=1).image
        results.append((image, demo.predict(image, PROMPT, num_samples=2, seed=0, channel_order="bgr")))
    store = AnnotationStore(folder / f"writes-{threads}.db")
    store.ensure_base_version(demo.model_id, source="demo", name="demo")
    report, seen, tick = IngestReport(), {}, Ticker(count, None)
    started = time.perf_counter()
    with Writers(threads) as writers:
        for index, (image, prediction) in enumerate(results):
            plan = ImagePlan(predict=True, repeat_key=(content_hash(image), PROMPT))
            writers.submit(store_image_result, store, report, f"w{index}.png", image, PROMPT, prediction, plan,
                           metadata={}, batch=None, seen=seen, tick=tick)
    seconds = time.perf_counter() - started
    store.close()
    return len(report.added) / seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"], choices=("local", "ray"))
    args = parser.parse_args(argv)

    import os

    import torch

    from medclipseg.inference.predictor import Predictor

    demo = Predictor.from_pretrained("demo", device="cpu")
    cpus = os.cpu_count()
    print(f"{cpus} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; demo model "
          f"{demo.model_id}; {args.images} images, {args.num_samples} samples each", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="medclipseg-bulk-") as folder:
        folder = Path(folder)
        source = folder / "source"
        source.mkdir()
        started = time.perf_counter()
        write_phantoms(source, args.images)
        print(f"wrote {args.images} phantoms in {time.perf_counter() - started:.1f} s", flush=True)
        if "local" in args.engines:
            results.append(run("local", 1, source, folder, args, demo))
            print(_line(results[-1]), flush=True)
        if "ray" in args.engines:
            from medclipseg.scale.ray_engine import connect

            started = time.perf_counter()
            ray = connect(None, num_cpus=cpus)
            print(f"ray.init: {time.perf_counter() - started:.1f} s (not counted)", flush=True)
            for workers in args.workers:
                results.append(run("ray", workers, source, folder, args, demo))
                print(_line(results[-1]), flush=True)
            ray.shutdown()
        from medclipseg.scale.bulk import WRITER_THREADS

        ceilings = {threads: write_ceiling(folder, demo, threads) for threads in sorted({1, WRITER_THREADS})}
    base = results[0]
    print()
    print("| engine | workers | images | seconds | images/s | vs first row | store writes (driver) | "
          "max rank difference vs first row |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        difference = max(abs(a - b) for a, b in zip(row["ranks"], base["ranks"])) if row["ranks"] else 0.0
        print(f"| {row['engine']} | {row['workers']} | {row['images']} | {row['seconds']:.1f} | "
              f"{row['images_per_s']:.2f} | {row['images_per_s'] / base['images_per_s']:.2f}x | "
              f"{row['write_seconds']:.1f} s ({1000 * row['write_seconds'] / max(1, row['writes']):.1f} ms each, "
              f"{row['writes'] / max(row['write_seconds'], 1e-9):.0f}/s) | {difference:.2e} |")
    print()
    for threads, rate in ceilings.items():
        print(f"driver write ceiling, no model running: {rate:.1f} cases/s with {threads} writer thread"
              f"{'s' if threads != 1 else ''} (SQLite, {cpus} cores)")
    for row in results:
        print(_line(row))


def _line(row: dict) -> str:
    return f"engine={row['engine']} workers={row['workers']} images_per_s={row['images_per_s']:.2f}"


if __name__ == "__main__":
    main()
