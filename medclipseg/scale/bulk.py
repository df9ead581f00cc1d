"""Bulk ingest and re-scoring through an engine of workers (medclipseg.scale.ray_engine).

The driver is the only writer: it scans the source, asks the workers which files are new (content
hashes), plans each file exactly as the single-process ingest does (medclipseg.annotation.ingest:
new, re-scored by another model, duplicate), sends what needs the model to the workers, and stores
each result as it comes back, in its own transaction. So an interrupted run keeps everything
stored before the interruption, and the same run started again predicts only the rest; the same
images with the same seed give the same predictions and the same queue as ``--engine local``.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Optional

from medclipseg.annotation.ingest import (
    IngestReport,
    _prompt_for,
    _volume_jobs,
    plan_image,
    plan_volume,
    read_prompt_csv,
    read_volume_job,
    record_duplicate,
    scan_source,
    store_image_result,
    store_volume_result,
)
from medclipseg.annotation import volume_files
from medclipseg.io.prompts import PromptError, validate_prompt

__all__ = ["ingest_with_engine", "rescore_with_engine", "RescoreReport"]

# Scans read by the driver and sent to the workers at a time (each is held until it is stored).
VOLUMES_IN_FLIGHT_PER_WORKER = 2


class _ResultError(RuntimeError):
    pass


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
    if (prompt is None) == (prompts_csv is None):
        raise ValueError("Give exactly one of a prompt for all images or a CSV file of prompts.")
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1.")
    if not 0.0 < threshold < 1.0:
        raise ValueError("The threshold must lie strictly between 0 and 1.")
    if prompt is not None:
        prompt = validate_prompt(prompt)
        prompts: Mapping = {}
    else:
        prompts = prompts_csv if isinstance(prompts_csv, Mapping) else read_prompt_csv(prompts_csv)
    files = scan_source(source)
    report = IngestReport()
    volume_jobs, files = _volume_jobs(files, report)
    total = len(files) + len(volume_jobs)
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, message)

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
    for index, result in engine.predict(to_predict, **options):
        row, plan = by_index[index], plans[index]
        store_image_result(store, report, row["name"], result.get("bgr"), row["prompt"], _as_result(result), plan,
                           metadata=result.get("metadata") or {}, batch=batch, seen=seen, tick=tick)
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
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, message)

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
        for case_id, result in results:
            _store_rescore(store, report, case_id, _as_result(result), model_id, failed, tick,
                           lambda prediction, case_id=case_id: store.add_prediction(case_id, prediction))
        for first in range(0, len(volumes), max(1, VOLUMES_IN_FLIGHT_PER_WORKER * engine.workers)):
            held = {}
            for case in volumes[first:first + VOLUMES_IN_FLIGHT_PER_WORKER * engine.workers]:
                held[case.id] = store.load_volume(case.id)
            rows = [{"index": case_id, "kind": "volume", "name": f"case {case_id}",
                     "prompt": store.get_case(case_id).prompt,
                     "payload": (volume, store.volume_geometry(case_id).window)} for case_id, volume in held.items()]
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
