"""Retraining inside the product: fine-tune the current model on the reviewed cases, score it on the
gold split, record it as a model version, promote it when asked or when it beats its parent.

    collect  latest corrected/accepted version of every case; gold cases are held out
    train    medclipseg.training.retrain.fine_tune from the current version (the recipe's epochs)
    score    parent and new model on the gold split (DSC, NSD, Spearman of uncertainty vs 1 - DSC)
    record   model folder moved into <files>/models/, then its model_versions row (never the reverse)
    promote  auto: only when the gold split is not empty and the new DSC beats the parent's

``run_retrain`` does all of it in the calling process (`medclipseg retrain` blocks on it; the app
runs that command as a background worker through ``launch_worker``), reporting progress to the
job row and a log. ``stop_signal`` tells a team when more annotation stopped paying.
"""
from __future__ import annotations

import json

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from medclipseg.annotation.errors import JobNotRunning, StorageError
from medclipseg.annotation.queue import RANKED_BY_MODEL, UNCERTAINTY_ORDER, order_column
from medclipseg.training.config import RetrainRecipe

PROMOTE_CHOICES = ("auto", "yes", "no")
HEARTBEAT_SECONDS = 5.0
# The stop signal: the gold DSC of the last STOP_ROUNDS versions gained less than STOP_MIN_GAIN
# over their parents, and the top of the queue is less uncertain than STOP_TOP_SCORE.
STOP_ROUNDS = 2
STOP_MIN_GAIN = 0.01
STOP_TOP_SCORE = 0.2


@dataclass
class RetrainOutcome:
    job_id: int
    version_id: str
    parent_id: str
    train_cases: int
    gold_cases: int
    gold_dsc: Optional[float]
    gold_nsd: Optional[float]
    gold_uncertainty_spearman: Optional[float]
    parent_gold_dsc: Optional[float]
    promoted: bool
    reason: str
    seconds: float

    def summary_line(self) -> str:
        """The CLI's last line (kept stable: scripts parse it)."""
        return (f"version={self.version_id} parent={self.parent_id} gold_dsc={_number(self.gold_dsc)} "
                f"parent_gold_dsc={_number(self.parent_gold_dsc)} promoted={'yes' if self.promoted else 'no'}")


def _number(value: Optional[float]) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4f}"


def check_promote(value) -> str:
    value = (value or "auto").strip().lower() if isinstance(value, str) or value is None else str(value)
    if value not in PROMOTE_CHOICES:
        raise StorageError(f"Promote must be one of {', '.join(PROMOTE_CHOICES)}, not {value!r}.")
    return value


def recipe_with(recipe: Optional[RetrainRecipe] = None, *, epochs=None) -> RetrainRecipe:
    from dataclasses import replace

    recipe = recipe or RetrainRecipe()
    if epochs is not None and epochs != "":
        try:
            epochs = int(epochs)
        except (TypeError, ValueError):
            raise StorageError(f"The number of epochs must be a whole number, not {epochs!r}.") from None
        if not 1 <= epochs <= 500:
            raise StorageError(f"The number of epochs must lie between 1 and 500 (got {epochs}).")
        recipe = replace(recipe, epochs=epochs)
    return recipe


NOTHING_TO_TRAIN = ("There are no corrected or accepted cases to train on yet (gold cases are held out for "
                    "scoring). Correct some cases first.")


def _reviewed_rows(store) -> list:
    """The latest reviewed version of every case that is still corrected or accepted; with the review
    step on, the latest approved one only. A case with several raters trains on their consensus."""
    rows = store.corrections(latest_only=True, approved_only=store.project_settings().review_required)
    rows = [row for row in rows if row["case_status"] in ("corrected", "accepted")]
    for row in rows:
        if (row.get("rater_count") or 0) > 1 and row.get("consensus_path"):
            row["mask_path"] = row["consensus_path"]
    return rows


def labelled_counts(store) -> tuple:
    """(training cases, gold cases), without reading any pixels."""
    rows = _reviewed_rows(store)
    gold = sum(1 for row in rows if row["gold"])
    return len(rows) - gold, gold


def labelled_examples(store) -> tuple:
    """(training examples, gold examples, training correction ids), images and masks read."""
    from medclipseg.training.retrain import TrainingExample

    train, gold, correction_ids = [], [], []
    for row in _reviewed_rows(store):
        if row.get("kind") == "volume":
            # A volume trains as 2-D slices: the ones its annotator reviewed (every slice when the
            # version names none, e.g. a whole volume accepted), with and without the structure.
            reviewed = json.loads(row.get("reviewed_slices") or "[]")
            examples = [TrainingExample(image_bgr=image, mask=mask, prompt=row["prompt"],
                                        name=f"case{row['case_id']:06d}_s{index:04d}")
                        for index, image, mask in store.volume_slice_examples(row["case_id"], row["mask_path"],
                                                                              reviewed)]
        else:
            examples = [TrainingExample(image_bgr=store.load_image(row["case_id"]),
                                        mask=store.load_mask(row["mask_path"]) > 0, prompt=row["prompt"],
                                        name=f"case{row['case_id']:06d}")]
        # The gold side is drawn per case, so every slice of a volume is on one side.
        (gold if row["gold"] else train).extend(examples)
        if not row["gold"]:
            correction_ids.append(int(row["id"]))
    return train, gold, correction_ids


def estimate_seconds(store, train_cases: int, recipe: RetrainRecipe) -> Optional[float]:
    """Seconds a retraining of `train_cases` cases should take, from the last finished one's rate."""
    for version in reversed(store.model_versions()):
        if version.kind == "trained" and version.seconds and version.train_cases:
            epochs = max(int(version.recipe.get("epochs", recipe.epochs)), 1)
            per_case_epoch = version.seconds / (version.train_cases * epochs)
            return per_case_epoch * train_cases * recipe.epochs
    return None


class _Heartbeat:
    """Keeps the job's heartbeat fresh while a long step (loading, scoring) reports nothing."""

    def __init__(self, store, job_id: int):
        self._store, self._job_id, self._stop = store, job_id, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"job-{job_id}-heartbeat")

    def _run(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._store.update_job(self._job_id)
            except Exception:  # a busy database must not kill the worker; the next beat retries
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_SECONDS)


def run_retrain(store, *, by: str, recipe: Optional[RetrainRecipe] = None, epochs=None, promote: str = "auto",
                job_id: Optional[int] = None, device=None, log: Callable[[str], None] = print) -> RetrainOutcome:
    """One retraining round, blocking (module docstring). ``job_id``: a job row the caller made
    (the app); otherwise one is made here. Raises StorageError in words when there is nothing to
    train on or another job runs; TrainingCancelled when cancelled (the job is marked)."""
    from medclipseg.registry import load_model
    from medclipseg.training.progress import TrainingCancelled
    from medclipseg.training.retrain import fine_tune, score_examples

    promote = check_promote(promote)
    recipe = recipe_with(recipe, epochs=epochs)
    parent = store.current_model_id()
    if parent is None:
        raise StorageError("This annotation database has no model yet: open it in the app or segment a case first.")
    if job_id is None:
        if labelled_counts(store)[0] == 0:
            raise StorageError(NOTHING_TO_TRAIN)
        job_id = store.start_job("retrain", by=by, params={"recipe": asdict(recipe), "promote": promote},
                                 parent_id=parent)
    else:
        adopted = store.job(job_id)
        if not adopted.active:  # a cancel request before the start is seen at the first step
            raise StorageError(f"Job {job_id} is {adopted.status}; nothing was started.")
        store.update_job(job_id, message="preparing: reading the reviewed cases", parent_id=parent,
                         pid=os.getpid())
    started = time.perf_counter()
    work = store.job_folder(job_id)

    def should_stop() -> bool:
        # A job no longer running (reaped as silent, or finished elsewhere) stops like a cancelled one.
        job = store.job(job_id)
        return job.cancel_requested or not job.active

    def report(fraction: float, message: str, eta: Optional[float] = None) -> None:
        store.update_job(job_id, progress=round(min(max(fraction, 0.0), 1.0), 4), message=message,
                         eta_seconds=None if eta is None else round(float(eta), 1))

    try:
        with _Heartbeat(store, job_id):
            train, gold, correction_ids = labelled_examples(store)
            if not train:
                raise StorageError(NOTHING_TO_TRAIN)
            parent_version = store.model_version(parent)
            log(f"retraining {parent} on {len(train)} cases ({len(gold)} gold cases held out), "
                f"{recipe.epochs} epochs")
            estimate = estimate_seconds(store, len(train), recipe)
            # Until the first training step reports, the page shows this message (no percentage).
            report(0.0, f"preparing: loading the model {parent} and {len(train)} case(s) to train on "
                        f"({len(gold)} gold case(s) held out)", estimate)
            last_logged = [0.0]

            def on_train_step(progress) -> None:
                # Training is 80 % of the bar; scoring the gold split the rest.
                now = time.perf_counter()
                if now - last_logged[0] >= 1.0 or progress.step == progress.total_steps:
                    last_logged[0] = now
                    eta = progress.eta_seconds
                    report(0.8 * progress.fraction, f"epoch {progress.epoch}/{progress.epochs}, step "
                           f"{progress.step}/{progress.total_steps}, loss {progress.loss:.4f}",
                           None if eta is None else eta + 0.25 * progress.elapsed_seconds)
                    log(f"epoch {progress.epoch}/{progress.epochs} step {progress.step}/{progress.total_steps} "
                        f"loss {progress.loss:.4f} eta {0 if eta is None else eta:.0f}s")

            trained_dir = work / "model"
            shutil.rmtree(work, ignore_errors=True)
            fine_tune(store.model_source(parent_version), train, recipe, trained_dir, device=device,
                      on_progress=on_train_step, should_stop=should_stop)
            loaded = load_model(str(trained_dir), device=device)
            version_id = loaded.model_id

            child_score = parent_score = None
            if gold:
                report(0.85, f"scoring the new model on {len(gold)} gold cases")
                log(f"scoring {version_id} and {parent} on {len(gold)} gold cases")
                key = RANKED_BY_MODEL[order_column(UNCERTAINTY_ORDER)]
                scoring = dict(num_samples=recipe.eval_samples, threshold=recipe.threshold,
                               nsd_tolerance=recipe.nsd_tolerance, device=device, uncertainty_key=key,
                               should_stop=should_stop)
                child_score = score_examples(loaded, gold, **scoring)
                report(0.92, f"scoring the parent on {len(gold)} gold cases")
                parent_score = score_examples(store.model_source(parent_version), gold, **scoring)
            if should_stop():
                raise TrainingCancelled("cancelled before the version was recorded")

            # Complete folder first, then the row: a row always names a whole model.
            store.models_dir.mkdir(parents=True, exist_ok=True)
            final_dir = store.models_dir / version_id.replace("@", "-")
            if not final_dir.exists():
                trained_dir.replace(final_dir)
            seconds = time.perf_counter() - started
            gold_numbers = None if child_score is None else {
                "cases": child_score.cases, "dsc": child_score.dsc, "nsd": child_score.nsd,
                "uncertainty_spearman": child_score.uncertainty_spearman}
            version = store.add_trained_version(
                final_dir, model_id=version_id, name=loaded.config.backbone, parent_id=parent, created_by=by,
                recipe=asdict(recipe), correction_ids=correction_ids, train_cases=len(train), gold=gold_numbers,
                parent_gold_dsc=None if parent_score is None else parent_score.dsc, job_id=job_id, seconds=seconds)

            promoted, reason = _decide(promote, child_score, parent_score)
            if promoted and not store.promote_if_current(version.id, expected_current=parent, by=by, reason=reason):
                # Someone promoted or rolled back while this round trained: their choice stands.
                promoted = False
                reason = (f"{reason}, but the current model changed to {store.current_model_id()} while it "
                          "trained (a promotion or rollback by hand), and that choice stands; promote this "
                          "version by hand if it should serve")
            message = f"version {version.id} recorded; {'promoted' if promoted else 'not promoted'}: {reason}"
            log(message)
            store.finish_job(job_id, status="succeeded", message=message, version_id=version.id)
    except TrainingCancelled:
        _finish_unless_ended(store, job_id, log, status="cancelled", message=f"cancelled by request after "
                             f"{time.perf_counter() - started:.0f} s; no version was recorded")
        log("cancelled; no version was recorded")
        raise
    except BaseException as exc:
        text = str(exc) if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
        try:
            _finish_unless_ended(store, job_id, log, status="failed", message=f"failed: {text}"[:2000])
        finally:
            log(f"failed: {text}")
        raise
    finally:
        # The model folder, if any, has been moved into models/; the rest is scratch.
        shutil.rmtree(work / "model", ignore_errors=True)
    return RetrainOutcome(job_id=job_id, version_id=version.id, parent_id=parent, train_cases=len(train),
                          gold_cases=len(gold), gold_dsc=version.gold_dsc, gold_nsd=version.gold_nsd,
                          gold_uncertainty_spearman=version.gold_uncertainty_spearman,
                          parent_gold_dsc=version.parent_gold_dsc, promoted=promoted, reason=reason,
                          seconds=seconds)


def _finish_unless_ended(store, job_id: int, log: Callable[[str], None], **outcome) -> None:
    """Mark the job's end, unless it already ended (reaped while this worker was slow): the job
    row's status then stands and this worker only says so in its log."""
    try:
        store.finish_job(job_id, **outcome)
    except JobNotRunning as exc:
        log(str(exc))


def _decide(promote: str, child, parent) -> tuple:
    if promote == "yes":
        return True, "promoted on request"
    if promote == "no":
        return False, "kept unpromoted on request"
    if child is None or parent is None:
        return False, "no gold cases yet to compare it with its parent; promote it by hand"
    if child.dsc > parent.dsc:
        return True, f"gold DSC {child.dsc:.3f} beats the parent's {parent.dsc:.3f}"
    return False, f"gold DSC {child.dsc:.3f} does not beat the parent's {parent.dsc:.3f}"


# ------------------------------------------------------------------------------------ the worker


def launch_worker(store, *, by: str, epochs=None, promote: str = "auto") -> int:
    """Start `medclipseg retrain` for this database in its own process (its own session, so a
    server restart does not take it down); returns the job id at once. The job row is made here,
    so a second start is refused before any process is spawned."""
    promote = check_promote(promote)
    recipe = recipe_with(None, epochs=epochs)
    train, gold = labelled_counts(store)  # counted only: the worker reads the pixels
    if not train:
        raise StorageError(NOTHING_TO_TRAIN)
    job_id = store.start_job("retrain", by=by, params={"recipe": asdict(recipe), "promote": promote,
                                                       "train_cases": train, "gold_cases": gold},
                             parent_id=store.current_model_id())
    log_path = store.job_folder(job_id).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The worker finds the database through the environment, not its command line: a PostgreSQL
    # URL carries a password, and a command line is visible to every user of the machine.
    env = dict(os.environ, MEDCLIPSEG_DB=store.url, MEDCLIPSEG_FILES_DIR=str(store.files_dir))
    command = [sys.executable, "-m", "medclipseg", "retrain", "--job", str(job_id),
               "--by", by, "--epochs", str(recipe.epochs), "--promote", promote]
    try:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
    except OSError as exc:
        store.finish_job(job_id, status="failed", message=f"could not start the worker: {exc}")
        raise StorageError(f"Could not start the retraining worker: {exc}.") from exc
    # The worker first imports PyTorch (seconds on a small machine); the page says so meanwhile.
    store.update_job(job_id, pid=process.pid, log_path=str(log_path.relative_to(store.files_dir)),
                     message="preparing: starting the worker process (loading PyTorch)")
    _children.append(process)  # reaped by poll_children so a finished worker is no zombie
    return job_id


_children: list = []


def poll_children() -> None:
    for process in list(_children):
        if process.poll() is not None:
            _children.remove(process)


def log_tail(store, job, max_chars: int = 6000) -> str:
    if job is None or not job.log_path:
        return ""
    path = store.files_dir / job.log_path
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_chars))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------ stop signal


@dataclass(frozen=True)
class StopSignal:
    stop: bool
    text: str
    recent_gains: list
    top_score: Optional[float]


def stop_signal(store, *, acquisition: str = UNCERTAINTY_ORDER, rounds: int = STOP_ROUNDS,
                min_gain: float = STOP_MIN_GAIN, top_score: float = STOP_TOP_SCORE) -> StopSignal:
    """Whether annotating more still pays: the gold DSC gains of the last `rounds` trained versions
    and the uncertainty of the next case in the queue."""
    trained = [v for v in store.model_versions() if v.kind == "trained" and v.gold_dsc is not None
               and v.parent_gold_dsc is not None]
    gains = [round(v.gold_dsc - v.parent_gold_dsc, 4) for v in trained[-rounds:]]
    top = store.top_rank(acquisition)
    flat = len(gains) >= rounds and all(gain < min_gain for gain in gains)
    calm = top is None or top < top_score
    if len(gains) < rounds:
        text = f"Keep going: {len(gains)} of the {rounds} scored rounds needed to judge progress."
    elif flat and calm:
        text = (f"Consider stopping: the last {rounds} rounds gained {', '.join(f'{g:+.3f}' for g in gains)} gold "
                f"DSC (< {min_gain}) and the queue's top uncertainty is "
                f"{'empty' if top is None else f'{top:.3f}'} (< {top_score}).")
    elif flat:
        text = (f"Rounds stopped improving the gold split ({', '.join(f'{g:+.3f}' for g in gains)}), but the queue "
                f"still holds uncertain cases (top {top:.3f}); correct those before stopping.")
    else:
        text = f"Keep going: the last rounds gained {', '.join(f'{g:+.3f}' for g in gains)} gold DSC."
    return StopSignal(stop=flat and calm, text=text, recent_gains=gains, top_score=top)
