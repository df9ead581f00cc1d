"""Bulk ingest and re-scoring through an engine of workers (medclipseg.scale.ray_engine).

The driver is the only writer: it scans the source, asks the workers which files are new (content
hashes), plans each file exactly as the single-process ingest does (medclipseg.annotation.ingest:
new, re-scored by another model, duplicate), sends what needs the model to the workers, and stores
each result as it comes back, in its own transaction. So an interrupted run keeps everything
stored before the interruption, and the same run started again predicts only the rest; the same
images with the same seed give the same predictions and the same queue as ``--engine local``.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from medclipseg.annotation import volume_files
from medclipseg.annotation.ingest import (
    IngestReport,
    Ticker,
    _prompt_for,
    open_source,
    plan_image,
    plan_volume,
    read_volume_job,
    record_duplicate,
    store_image_result,
    store_volume_result,
)
from medclipseg.io.prompts import PromptError

__all__ = ["ingest_with_engine", "rescore_with_engine", "RescoreReport"]

# Scans read by the driver and sent to the workers at a time (each is held until it is stored).
VOLUMES_IN_FLIGHT_PER_WORKER = 2
# Threads that store results on the driver (benchmarks/bulk_score.py: a 2-D case's write is about
# 32 ms on one core, three quarters of it compressing its maps).
WRITER_THREADS = max(1, min(4, os.cpu_count() or 1))


class _ResultError(RuntimeError):
    pass


class Writers:
    """Stores results on a few threads while the workers go on. Most of a write is encoding the
    case's files (zlib for the maps, PNG), which runs outside the GIL, so the driver's ceiling grows
    with its cores; the database transactions still run one at a time. At most ``2 x threads``
    results wait, so the driver holds a bounded number of images; the first error stops the run
    after the writes already started have finished."""

    def __init__(self, threads: Optional[int] = None):
        self.threads = int(threads or WRITER_THREADS)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="medclipseg-store")
        self.pending: deque = deque()

    def submit(self, function, *args, **kwargs) -> None:
        self.pending.append(self.pool.submit(function, *args, **kwargs))
        while len(self.pending) >= 2 * self.threads:
            self.pending.popleft().result()

    def __enter__(self) -> "Writers":
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            while self.pending:
                future = self.pending.popleft()
                if error is not None:
                    future.cancel()
                    continue
                future.result()
        finally:
            self.pool.shutdown(wait=True)


def _as_result(result: dict):
    if "error" in result:
        error = result["error"]
        return error if isinstance(error, Exception) else _ResultError(str(error))
    return result["prediction"]


def ingest_with_engine(store, engine, source, *, model_id: str, prompt: Optional[str] = None, prompts_csv=None,
                       batch: Optional[str] = None, num_samples: int = 30, threshold: float = 0.5,
                       seed: Optional[int] = 0,
                       progress: Optional[Callable[[int, int, str], None]] = None) -> IngestReport:
    """``medclipseg.annotation.ingest.ingest`` with the model on ``engine``'s workers (same report)."""
    started = time.perf_counter()
    prompt, prompts, files, volume_jobs, report = open_source(source, prompt=prompt, prompts_csv=prompts_csv,
                                                              num_samples=num_samples, threshold=threshold)
    tick = Ticker(len(files) + len(volume_jobs), progress)
    options = dict(num_samples=num_samples, threshold=threshold, seed=seed)
    _ingest_volumes(store, engine, volume_jobs, prompt, prompts, model_id, report, tick, batch, options)

    # Images: prompts first (no worker needed), then content hashes on the workers.
    rows = []
    for index, item in enumerate(files):
        try:
            text = _prompt_for(item.name, prompt, prompts)
        except PromptError as exc:
            report.failed.append((item.name, str(exc)))
            tick(f"{item.name}: failed: {exc}")
            continue
        rows.append({"index": index, "kind": "image", "name": item.name, "prompt": text, "payload": item.locator})
    identified = engine.identify(rows)
    seen: dict = {}
    plans: dict = {}
    waiting = []  # repeats of a file still being predicted: reported once it is stored
    to_predict = []
    for row in rows:
        digest, error = identified[row["index"]]
        if error is not None:
            report.failed.append((row["name"], error))
            tick(f"{row['name']}: failed: {error}")
            continue
        plan = plan_image(store, digest, row["prompt"], model_id, seen)
        if plan.predict:
            plans[row["index"]] = plan
            to_predict.append(row)
        elif plan.case_id is None:
            waiting.append((row, plan))
        else:
            record_duplicate(store, report, row["name"], row["prompt"], plan, tick)
    by_index = {row["index"]: row for row in to_predict}
    with Writers() as writers:
        for index, result in engine.predict(to_predict, **options):
            row, plan = by_index[index], plans[index]
            writers.submit(store_image_result, store, report, row["name"], result.get("bgr"), row["prompt"],
                           _as_result(result), plan, metadata=result.get("metadata") or {}, batch=batch, seen=seen,
                           tick=tick)
    for row, plan in waiting:
        record_duplicate(store, report, row["name"], row["prompt"], plan, tick)
    report.seconds = time.perf_counter() - started
    return report


def _ingest_volumes(store, engine, jobs, prompt, prompts, model_id, report, tick, batch, options) -> None:
    """Scans are read and planned by the driver (reading one is cheap next to predicting it), then
    predicted a few per worker at a time, so the driver holds a bounded number of scans."""
    in_flight = max(1, VOLUMES_IN_FLIGHT_PER_WORKER * int(getattr(engine, "workers", 1)))
    pending: list = []  # (row, volume, predicted_before)

    def flush():
        rows = [row for row, _, _ in pending]
        held = {row["index"]: (row, volume, before) for row, volume, before in pending}
        for index, result in engine.predict(rows, **options):
            row, volume, before = held.pop(index)
            store_volume_result(store, report, row["name"], volume, row["prompt"], _as_result(result), before,
                                batch=batch, tick=tick)
        pending.clear()

    keys: set = set()  # (scan hash, prompt) waiting in `pending`
    index = 0
    for job in jobs:
        text, volumes = read_volume_job(job, prompt, prompts, report, tick)
        for name, volume in volumes:
            key = (volume_files.content_hash(volume), text)
            if key in keys:
                flush()  # the same scan twice in one source: its first copy stored, this one is a duplicate
                keys.clear()
            before = plan_volume(store, volume, text, model_id, report, name, tick)
            if before is None:
                continue
            index += 1
            keys.add(key)
            pending.append(({"index": index, "kind": "volume", "name": name, "prompt": text,
                             "payload": (volume, None)}, volume, before))
            if len(pending) >= in_flight:
                flush()
                keys.clear()
    if pending:
        flush()


# -- re-scoring ---------------------------------------------------------------------------------

class RescoreReport:
    def __init__(self):
        self.rescored: list = []
        self.failed: list = []       # (case id, message)
        self.seconds = 0.0

    def summary(self) -> str:
        text = f"{len(self.rescored)} cases re-scored, {len(self.failed)} failed"
        if self.failed:
            text += ": " + ", ".join(f"case {case_id} ({message})" for case_id, message in self.failed[:5])
        return f"{text} ({self.seconds:.1f} s)"


def rescore_with_engine(store, engine, *, model_id: str, num_samples: int = 30, volume_samples: int = 8,
                        limit: Optional[int] = None, page: int = 2048,
                        progress: Optional[Callable[[int, int, str], None]] = None) -> RescoreReport:
    """Predict every unreviewed case the current version ``model_id`` has not ranked (as
    ``AnnotationService.rescore_pending`` does, seed 0), on the engine's workers; a case is written
    once, and a run started again does the rest only."""
    started = time.perf_counter()
    report = RescoreReport()
    total = store.rescore_backlog(model_id) if limit is None else min(limit, store.rescore_backlog(model_id))
    failed: set = set()
    tick = Ticker(total, progress)

    while limit is None or len(report.rescored) < limit:
        room = page if limit is None else min(page, limit - len(report.rescored))
        case_ids = store.cases_to_rescore(model_id, limit=room, exclude=failed)
        if not case_ids:
            break
        images, volumes = [], []
        for case_id in case_ids:
            case = store.get_case(case_id)
            if case.is_volume:
                volumes.append(case)
            else:
                images.append({"index": case_id, "kind": "stored", "name": f"case {case_id}", "prompt": case.prompt,
                               "payload": ("file", str(store.image_file(case_id)))})
        results = engine.predict(images, num_samples=num_samples, threshold=0.5, seed=0)
        with Writers() as writers:
            for case_id, result in results:
                writers.submit(_store_rescore, store, report, case_id, _as_result(result), model_id, failed, tick,
                               lambda prediction, case_id=case_id: store.add_prediction(case_id, prediction))
        in_flight = max(1, VOLUMES_IN_FLIGHT_PER_WORKER * engine.workers)
        for first in range(0, len(volumes), in_flight):
            held = {case.id: store.load_volume(case.id) for case in volumes[first:first + in_flight]}
            rows = [{"index": case.id, "kind": "volume", "name": f"case {case.id}", "prompt": case.prompt,
                     "payload": (held[case.id], store.volume_geometry(case.id).window)}
                    for case in volumes[first:first + in_flight]]
            for case_id, result in engine.predict(rows, num_samples=min(num_samples, volume_samples), threshold=0.5,
                                                  seed=0):
                volume = held[case_id]
                _store_rescore(store, report, case_id, _as_result(result), model_id, failed, tick,
                               lambda prediction, case_id=case_id, volume=volume:
                               store.add_volume_prediction(case_id, prediction, volume=volume))
    report.seconds = time.perf_counter() - started
    return report


def _store_rescore(store, report, case_id, result, model_id, failed, tick, write) -> None:
    if isinstance(result, Exception):
        failed.add(case_id)
        report.failed.append((case_id, f"{type(result).__name__}: {result}"))
        tick(f"case {case_id}: failed: {result}")
        return
    if store.has_prediction_by(case_id, model_id):
        return  # written already (a retried batch): never twice
    write(result)
    report.rescored.append(case_id)
    tick(f"case {case_id}: re-scored ({result.seconds:.2f} s)")
