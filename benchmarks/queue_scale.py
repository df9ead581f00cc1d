"""How fast the review queue serves its next case as it grows.

    python benchmarks/queue_scale.py [--cases 100000] [--calls 20]

Fills a new store with N unreviewed cases, one prediction each (synthetic rows: the queue reads
ranks, never pixels), then times ``AnnotationStore.next_case`` for `calls` annotators in turn
(each call leases a case, so later calls skip earlier leases) with the default acquisition, its
plain (not diverse) base order and random order. Every case carries an image fingerprint and the
last 64 cases are labelled, so a diverse order compares its candidates with a full round. The baseline, measured on the same database in the same run, is the query the
queue used before ranks moved onto ``cases``: a join of every unreviewed case with its latest
prediction through a correlated ``max(id)`` subquery, sorted. The last line reads
``next_case_ms=<median> cases=<N>``.
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from medclipseg.annotation.diversity import ROUND_CONTEXT, source_and_slice
from medclipseg.annotation.queue import ACQUISITIONS, DEFAULT_ACQUISITION, rank_random_foreground
from medclipseg.annotation.store import AnnotationStore

OLD_QUERY = (
    "SELECT c.id FROM cases c JOIN predictions p ON p.id = (SELECT max(id) FROM predictions WHERE case_id = c.id) "
    "WHERE c.status = 'unreviewed' AND (c.assigned_to IS NULL OR c.lease_expires IS NULL OR c.lease_expires <= ?) "
    "ORDER BY p.score_foreground_entropy IS NULL, p.score_foreground_entropy DESC, c.id ASC LIMIT 1")


def fill(store: AnnotationStore, cases: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    fingerprints = np.random.default_rng(seed).standard_normal((cases, 256)).astype(np.float16)
    now = "2026-01-01T00:00:00.000+00:00"
    db = store._connections.db()
    with db.conn:  # one transaction: the fill is setup, not what is measured
        case_rows, prediction_rows = [], []
        for case_id in range(1, cases + 1):
            prompt = rng.choice(["Putamen in the brain MRI image.", "No putamen in the brain MRI image."])
            key = rng.random()
            name = f"scan{case_id // 200}_slice{case_id % 200:03d}.png"
            source_key, slice_index = source_and_slice(name)
            row = {"id": case_id, "content_hash": f"{case_id:064x}", "prompt": prompt,
                   "original_name": name, "width": 181, "height": 217, "source": "ingest",
                   "batch": None, "image_path": f"images/{case_id}.png", "metadata": "{}", "status": "unreviewed",
                   "created_at": now, "updated_at": now, "random_key": key,
                   "rank_random_foreground": rank_random_foreground(prompt, key),
                   "ranked_model_id": "demo-tiny@0", "ranked_prediction_id": case_id,
                   "descriptor": fingerprints[case_id - 1].tobytes(), "source_key": source_key,
                   "slice_index": slice_index}
            for acquisition in ACQUISITIONS.values():
                if acquisition.score_key:
                    row[acquisition.column] = rng.random()
            case_rows.append(row)
            prediction_rows.append({
                "id": case_id, "case_id": case_id, "model_id": "demo-tiny@0", "prompt": prompt, "threshold": 0.5,
                "num_samples": 8, "seconds": 0.1, "created_at": now, "maps_path": "maps/x.npz",
                "mask_path": "masks/x.png", "scores": "{}", "score_foreground_entropy": row["rank_foreground_entropy"],
                "foreground_pixels": 100})
        db["cases"].insert_all(case_rows, batch_size=2000)
        db["predictions"].insert_all(prediction_rows, batch_size=2000)
        # A round in progress: the last ROUND_CONTEXT cases labelled (what diverse orders compare with).
        labelled = rng.sample(range(1, cases + 1), ROUND_CONTEXT)
        db["corrections"].insert_all([{
            "case_id": case_id, "prediction_id": case_id, "version": 1, "annotator": "bench", "prompt": "p",
            "status": "corrected", "mask_path": "masks/x.png", "predicted_mask_path": "masks/x.png",
            "pixels_added": 0, "pixels_erased": 0, "pixels_changed": 0, "created_at": now} for case_id in labelled])
        db.execute(f"UPDATE cases SET status = 'corrected' WHERE id IN ({','.join(map(str, labelled))})")
        # The index the old query relied on (version 1 had it; version 2 dropped it).
        db.execute("CREATE INDEX IF NOT EXISTS bench_old_score ON predictions (score_foreground_entropy)")


def median_ms(call, calls: int) -> float:
    times = []
    for index in range(calls):
        started = time.perf_counter()
        call(index)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases in the queue")
    parser.add_argument("--calls", type=int, default=20, help="next_case calls timed per order")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medclipseg-queue-bench-") as folder:
        store = AnnotationStore(Path(folder) / "annotations.db")
        started = time.perf_counter()
        fill(store, args.cases)
        print(f"filled {args.cases:,} cases in {time.perf_counter() - started:.1f} s")
        conn = store._connections.db().conn
        baseline = median_ms(lambda i: conn.execute(OLD_QUERY, [time.time()]).fetchall(), args.calls)
        default = median_ms(lambda i: store.next_case(f"annotator{i}", acquisition=DEFAULT_ACQUISITION), args.calls)
        base = next(name for name, a in ACQUISITIONS.items()
                    if not a.diverse and a.column == ACQUISITIONS[DEFAULT_ACQUISITION].column)
        plain = median_ms(lambda i: store.next_case(f"plain{i}", acquisition=base), args.calls)
        randomly = median_ms(lambda i: store.next_case(f"random{i}", acquisition="random"), args.calls)
        store.close()
    print(f"old join query (baseline): {baseline:.2f} ms  next_case {DEFAULT_ACQUISITION}: {default:.2f} ms  "
          f"{base}: {plain:.2f} ms  random: {randomly:.2f} ms  speedup={baseline / default:.0f}x")
    print(f"next_case_ms={default:.2f} cases={args.cases}")


if __name__ == "__main__":
    main()
