"""The Model tab and the model endpoints, as plain functions: versions, retraining, promotion.

``panel(service)`` reads everything the tab shows into a ``ModelPanel``; ``panel_signature`` is
the cheap part of it that the page's timer compares, so a tick that finds nothing new sends
nothing. The actions (``start_retrain``, ``cancel_retrain``, ``promote_version``, ``roll_back``)
raise the service's errors in words when they refuse; ``medclipseg.app.layout`` shows those as
warnings and ``medclipseg.app.api`` as ``gr.Error``. No Gradio here, so all of it is tested
without a server.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from typing import Optional

from medclipseg.annotation import retraining
from medclipseg.annotation.errors import StorageError
from medclipseg.annotation.service import AnnotationService, RequestError, check_annotator

VERSION_COLUMNS = ("current", "version", "parent", "kind", "created (UTC)", "by", "train", "gold", "gold DSC",
                   "gold NSD", "unc. ρ")
CURRENT_MARK = "●"
NO_ESTIMATE = "no estimate until the first round"
POLL_SECONDS = 1.5
JOB_COLOURS = {"running": "#2f7dd1", "succeeded": "#2e9d57", "failed": "#c8443a", "cancelled": "#8a8f98"}


@dataclass(frozen=True)
class ModelPanel:
    """What the Model tab (and the page header) shows."""

    header: str            # one line: the version serving predictions now
    current: str           # Markdown card of the current version
    versions: list         # rows of VERSION_COLUMNS, oldest first
    choices: list          # (label, version id) for the promote menu, newest first
    data: str              # reviewed cases and the retraining estimate
    progress: str          # HTML progress bar of the shown job
    log: str               # the shown job's log tail
    stop: str              # the stop signal
    rescoring: str         # the re-scoring state of the queue
    job_id: Optional[int]  # the job shown: the running one, else the latest
    running: bool


@dataclass(frozen=True)
class StartedJob:
    job_id: int
    epochs: int
    promote: str
    train_cases: int
    gold_cases: int
    estimate_seconds: Optional[float]

    def message(self) -> str:
        text = (f"Started retraining job {self.job_id}: {self.train_cases} case(s) to train on "
                f"({self.gold_cases} gold held out), {self.epochs} epoch(s), promote {self.promote}; "
                f"{estimate_text(self.estimate_seconds)}.")
        note = auto_promotion_note(self.promote, self.gold_cases)
        return f"{text} {note}" if note else text


def auto_promotion_note(promote: str, gold_cases: int) -> str:
    """Why *auto* will not promote: it compares the new version with its parent on gold cases only."""
    if promote != "auto" or gold_cases:
        return ""
    return ("**auto needs gold cases to compare on; 0 gold cases now — the new version will not be promoted "
            "automatically** (promote it by hand afterwards, or choose *yes*).")


# ------------------------------------------------------------------------------ formatting


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _when(iso: Optional[str]) -> str:
    return (iso or "")[:19].replace("T", " ")


def duration_text(seconds: Optional[float]) -> str:
    """'45 s', '3 min 20 s', '1 h 05 min'."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        minutes, rest = divmod(int(round(seconds)), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60:02d} min"


def estimate_text(seconds: Optional[float]) -> str:
    return NO_ESTIMATE if seconds is None else f"estimate about {duration_text(seconds)}"


def version_rows(versions) -> list:
    """Rows of VERSION_COLUMNS for the versions table."""
    return [[CURRENT_MARK if v.current else "", v.id, v.parent_id or "–", v.kind, _when(v.created_at)[:16],
             v.created_by, _number(v.train_cases), _number(v.gold_cases), _number(v.gold_dsc),
             _number(v.gold_nsd), _number(v.gold_uncertainty_spearman)] for v in versions]


def version_choices(versions) -> list:
    """(label, id) pairs for the promote menu, newest first; the label says which is current."""
    choices = []
    for v in reversed(versions):
        label = f"{v.id} · {v.kind}"
        if v.gold_dsc is not None:
            label += f" · gold DSC {v.gold_dsc:.3f}"
        if v.current:
            label += " · current"
        choices.append((label, v.id))
    return choices


def current_card(service: AnnotationService, versions) -> str:
    current = next((v for v in versions if v.current), None)
    if current is None:
        return "**Current version**: none yet (the first segmentation records the model this database starts with)."
    lines = [f"**Current version** `{current.id}` ({current.kind}"
             + (f", from `{current.parent_id}`" if current.parent_id else "") + ")",
             f"created {_when(current.created_at)} UTC by **{current.created_by}**"]
    if current.kind == "trained":
        lines.append(f"trained on {_number(current.train_cases)} case(s); gold split of "
                     f"{_number(current.gold_cases)}: DSC {_number(current.gold_dsc)}, NSD {_number(current.gold_nsd)}, "
                     f"uncertainty Spearman ρ {_number(current.gold_uncertainty_spearman)}"
                     + (f" (parent's DSC {_number(current.parent_gold_dsc)})" if current.parent_gold_dsc is not None
                        else ""))
    else:
        lines.append("the model this database started with (not trained here; no gold scores)")
    return "  \n".join(lines)


def reviewed_counts(store) -> dict:
    """Cases corrected and accepted, and how the latest reviews split into training and gold cases
    (``retraining.labelled_counts``: no image loaded)."""
    counts = store.counts()
    train, gold = retraining.labelled_counts(store)
    return {"corrected": counts["corrected"], "accepted": counts["accepted"], "train": train, "gold": gold}


def data_text(service: AnnotationService, epochs=None) -> str:
    store = service.store
    counts = reviewed_counts(store)
    fraction = store.gold_settings()["fraction"]
    try:
        recipe = retraining.recipe_with(None, epochs=epochs)
    except StorageError as exc:
        return f"{counts['corrected']} corrected · {counts['accepted']} accepted. **{exc}**"
    estimate = retraining.estimate_seconds(store, counts["train"], recipe) if counts["train"] else None
    text = (f"**Reviewed**: {counts['corrected']} corrected · {counts['accepted']} accepted · "
            f"{counts['gold']} of them gold (held out to score versions; {100 * fraction:.0f} % of new cases). "
            f"**{counts['train']} case(s) to train on.**  \n")
    if counts["train"]:
        text += f"A round of {recipe.epochs} epoch(s): {estimate_text(estimate)}."
        if not counts["gold"]:
            text += ("  \nNo gold cases yet: promote *auto* has nothing to compare on, so it will not promote "
                     "the new version (promote it by hand afterwards, or choose *yes*).")
    else:
        text += "Nothing to train on yet: correct or accept some cases first."
    return text


def _job_to_show(store):
    job = store.active_job()
    if job is None:
        recent = store.recent_jobs(1)
        job = recent[0] if recent else None
    return job


def _eta_left(job) -> Optional[float]:
    """The job's last ETA, less the time since it reported it."""
    if job.eta_seconds is None:
        return None
    since = time.time() - float(job.heartbeat) if job.heartbeat else 0.0
    return max(0.0, float(job.eta_seconds) - max(0.0, since))


def progress_html(job, message: Optional[str] = None) -> str:
    """An HTML bar: the job's status, progress, message and ETA (data attributes for scripts).

    Before the first training step (the worker starts, loads the model and reads the cases) there
    is no fraction to show: the bar moves without a percentage and the worker's message says what
    it does. ``message`` replaces the job's own (``job_message``: a promotion since it finished)."""
    if job is None:
        return ('<div id="job-bar" data-status="none" data-progress="0"><div class="mcs-job-text">'
                "No retraining has run yet.</div></div>")
    fraction = 1.0 if job.status == "succeeded" else min(max(float(job.progress or 0.0), 0.0), 1.0)
    colour = JOB_COLOURS.get(job.status, "#8a8f98")
    preparing = job.active and fraction <= 0.0
    if preparing:
        parts = [f"Job {job.id} · preparing"]
        bar = (f'<div class="mcs-job-moving" style="height:100%;width:30%;background:{colour};'
               'border-radius:7px"></div>')
    else:
        parts = [f"Job {job.id} · {job.status}", f"{100 * fraction:.0f} %"]
        bar = f'<div style="height:100%;width:{100 * fraction:.1f}%;background:{colour};transition:width 0.4s"></div>'
        if job.active:
            eta = _eta_left(job)
            parts.append("ETA " + ("unknown" if eta is None else duration_text(eta)))
    if job.active and job.cancel_requested:
        parts.append("cancel requested")
    caption = " · ".join(parts)
    text = job.message if message is None else message
    if preparing and text.startswith("preparing: "):
        text = text[len("preparing: "):]   # the caption says it already
    text = html.escape(text)
    return (f'<div id="job-bar" data-status="{job.status}" data-phase="{"preparing" if preparing else job.status}" '
            f'data-progress="{fraction:.4f}" data-job="{job.id}">'
            '<div style="height:14px;border-radius:7px;background:rgba(128,128,128,0.25);overflow:hidden">'
            f'{bar}</div><div class="mcs-job-text" style="margin-top:4px"><b>{html.escape(caption)}</b>'
            f'<br><span style="overflow-wrap:anywhere">{text}</span></div></div>')


def job_message(store, job) -> Optional[str]:
    """The finished job's message, brought up to date when its version was promoted by hand later
    (the worker's words, "not promoted ... promote it by hand", would be stale); None: the job's own."""
    if job is None or job.active or not job.version_id:
        return None
    promotions = [row for row in store.promotion_log() if row["version_id"] == job.version_id]
    if not promotions or "not promoted" not in (job.message or ""):
        return None
    last = promotions[-1]
    now = ("it serves predictions now" if store.current_model_id() == job.version_id
           else f"no longer current (now {store.current_model_id()})")
    return (f"version {job.version_id} recorded; not promoted by the job, then promoted by hand by "
            f"{last['promoted_by']} at {_when(last['created_at'])[:16]} UTC; {now}.")


def rescoring_text(service: AnnotationService) -> str:
    store = service.store
    current = store.current_model_id()
    if current is None:
        return "Re-scoring: no model version yet."
    backlog = store.rescore_backlog(current)
    if backlog:
        text = f"**{backlog} case(s) waiting to be re-scored** by `{current}` (in the background)."
    else:
        text = f"Every unreviewed case is ranked by `{current}`."
    for note in (service.model_warning, service.rescore_error):
        if note:
            text += f"  \n**Warning:** {note}"
    return text


def header_text(service: AnnotationService) -> str:
    return f"Model serving predictions: `{service.model_id}`"


# ------------------------------------------------------------------------------ reading the tab


def panel_signature(service: AnnotationService, epochs=None) -> tuple:
    """What changes when the tab must be redrawn: a few small queries, no image, no model call."""
    store = service.store
    retraining.poll_children()
    job = _job_to_show(store)
    job_part = None
    if job is not None:
        log_size = -1
        if job.log_path:
            try:
                log_size = (store.files_dir / job.log_path).stat().st_size
            except OSError:
                pass
        job_part = (job.id, job.status, job.progress, job.message, job.eta_seconds, job.cancel_requested,
                    job.version_id, log_size, round(_eta_left(job) or 0.0) if job.active else None)
    # Re-scoring adds predictions and a promotion changes the current id, so these counts stand in
    # for the re-scoring backlog, whose query scans every unreviewed case.
    counts = store.counts()
    return (service.model_id, store.current_model_id(), len(store.model_versions()), job_part,
            tuple(sorted(counts.items())), service.model_warning, service.rescore_error, str(epochs))


def panel(service: AnnotationService, epochs=None) -> ModelPanel:
    store = service.store
    versions = store.model_versions()
    job = _job_to_show(store)
    return ModelPanel(header=header_text(service), current=current_card(service, versions),
                      versions=version_rows(versions), choices=version_choices(versions),
                      data=data_text(service, epochs), progress=progress_html(job, job_message(store, job)),
                      log=retraining.log_tail(store, job), stop=retraining.stop_signal(store).text,
                      rescoring=rescoring_text(service), job_id=None if job is None else job.id,
                      running=bool(job is not None and job.active))


def job_summary(service: AnnotationService, job_id=None) -> dict:
    """A job's state for the API: the given one, else the running one, else the latest."""
    store = service.store
    if job_id is not None and job_id != "":
        try:
            job_id = int(job_id)
        except (TypeError, ValueError):
            raise RequestError(f"job_id must be a whole number, not {job_id!r}.") from None
        store.active_job()  # marks a dead worker's job failed before it is reported
        job = store.job(job_id)
    else:
        job = _job_to_show(store)
    if job is None:
        return {"job_id": None, "status": None, "message": "No retraining has run yet."}
    return {"job_id": job.id, "kind": job.kind, "status": job.status, "active": job.active,
            "progress": 1.0 if job.status == "succeeded" else float(job.progress),
            "message": job.message, "eta_seconds": _eta_left(job) if job.active else None,
            "created_by": job.created_by, "created_at": job.created_at, "finished_at": job.finished_at,
            "parent_id": job.parent_id, "version_id": job.version_id, "cancel_requested": job.cancel_requested,
            "params": job.params, "log_tail": retraining.log_tail(store, job, max_chars=4000)}


def version_summary(version) -> dict:
    return {"id": version.id, "current": version.current, "kind": version.kind, "parent_id": version.parent_id,
            "name": version.name, "created_at": version.created_at, "created_by": version.created_by,
            "train_cases": version.train_cases, "gold_cases": version.gold_cases, "gold_dsc": version.gold_dsc,
            "gold_nsd": version.gold_nsd, "gold_uncertainty_spearman": version.gold_uncertainty_spearman,
            "parent_gold_dsc": version.parent_gold_dsc, "seconds": version.seconds, "job_id": version.job_id,
            "recipe": version.recipe}


# ------------------------------------------------------------------------------ actions


def start_retrain(service: AnnotationService, by: Optional[str], epochs=None, promote: str = "auto") -> StartedJob:
    """Start a retraining worker; refused in words without a name, while a job runs or with nothing to train on."""
    by = check_annotator(by)
    store = service.store
    promote = retraining.check_promote(promote)
    recipe = retraining.recipe_with(None, epochs=epochs)
    if store.current_model_id() is None:
        service.predictor  # records the configured model as the base version
    running = store.active_job()
    if running is not None:
        raise StorageError(f"A retraining is already running (job {running.id}, started by {running.created_by}); "
                           "wait for it or cancel it.")
    counts = reviewed_counts(store)
    if not counts["train"]:
        raise StorageError("There are no corrected or accepted cases to train on yet"
                           + (f" ({counts['gold']} gold case(s) are held out for scoring)" if counts["gold"] else "")
                           + ": correct or accept some cases first.")
    job_id = retraining.launch_worker(store, by=by, epochs=recipe.epochs, promote=promote)
    job = store.job(job_id)
    train, gold = job.params.get("train_cases", counts["train"]), job.params.get("gold_cases", counts["gold"])
    return StartedJob(job_id=job_id, epochs=recipe.epochs, promote=promote, train_cases=int(train),
                      gold_cases=int(gold), estimate_seconds=retraining.estimate_seconds(store, int(train), recipe))


def cancel_retrain(service: AnnotationService, by: Optional[str], job_id=None) -> str:
    by = check_annotator(by)
    store = service.store
    job = store.active_job()
    if job_id is not None and job_id != "":
        job = store.job(int(job_id))
    if job is None or not job.active:
        raise StorageError("No retraining is running." if job is None else f"Job {job.id} is not running ({job.status}).")
    if job.cancel_requested:
        return f"Job {job.id} is already cancelling: it stops at its next training step."
    if not store.request_cancel(job.id, by=by):
        raise StorageError(f"Job {job.id} finished before it could be cancelled.")
    return f"Cancelling job {job.id}: it stops at its next training step and records no version."


def _serving_note(service: AnnotationService, version_id: str) -> str:
    serving = service.model_id  # loads the promoted version now, so that the next prediction is quick
    if serving == version_id:
        return f"now serving `{serving}`"
    return f"still serving `{serving}`: {service.model_warning or 'the new version is loading'}"


def promote_version(service: AnnotationService, version_id: Optional[str], by: Optional[str]) -> str:
    by = check_annotator(by)
    if not isinstance(version_id, str) or not version_id.strip():
        raise RequestError("Choose a model version to promote first.")
    version_id = version_id.strip()
    store = service.store
    if store.model_version(version_id).current:
        return f"`{version_id}` is already the current version."
    version = store.promote(version_id, by=by)
    backlog = store.rescore_backlog(version.id)
    return (f"Promoted `{version.id}` ({_serving_note(service, version.id)}); {backlog} case(s) will be "
            "re-scored by it in the background.")


def roll_back(service: AnnotationService, by: Optional[str]) -> str:
    by = check_annotator(by)
    store = service.store
    previous = store.current_model_id()
    version = store.rollback(by=by)
    return (f"Rolled back from `{previous}` to `{version.id}` ({_serving_note(service, version.id)}); "
            f"{store.rescore_backlog(version.id)} case(s) will be re-scored.")


def recipe_epochs() -> int:
    """The epochs a round takes when the Model tab's number is left as it is."""
    return retraining.recipe_with(None).epochs


__all__ = ["ModelPanel", "StartedJob", "VERSION_COLUMNS", "POLL_SECONDS", "panel", "panel_signature",
           "job_summary", "version_summary", "start_retrain", "cancel_retrain", "promote_version", "roll_back",
           "recipe_epochs"]
