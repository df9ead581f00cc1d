"""The error types of the annotation store; their messages are written for the person using the app."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional


class StorageError(RuntimeError):
    """A storage problem; the message is shown to users as is."""


def _minute_utc(iso: Optional[str]) -> str:
    """'2026-12-01T21:40:12.345+00:00' -> '2026-12-01 21:40 UTC' (the stored text when unreadable)."""
    try:
        moment = datetime.fromisoformat(str(iso))
    except (TypeError, ValueError):
        return str(iso)
    if moment.tzinfo is None:  # the store writes UTC; a naive time can only be UTC too
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class VersionConflict(StorageError):
    """A save refused because the case's latest saved version is not the one the annotator started from.

    ``latest_version`` is None when the case has no saved version (the editor expected one);
    ``base_version`` None means the annotator opened the case when none was saved.
    """

    def __init__(self, *, case_id: int, latest_version: Optional[int], latest_annotator: Optional[str],
                 latest_created_at: Optional[str], base_version: Optional[int], draft_kept: bool):
        self.case_id = case_id
        self.latest_version = latest_version
        self.latest_annotator = latest_annotator
        self.latest_created_at = latest_created_at
        self.base_version = base_version
        self.draft_kept = draft_kept
        started = "it had no saved version then" if base_version is None else f"you started from v{base_version}"
        if latest_version is not None and (base_version is None or latest_version > base_version):
            what = (f"Case #{case_id} was saved as v{latest_version} by {latest_annotator} at "
                    f"{_minute_utc(latest_created_at)} after you opened it ({started}); "
                    "reopen the case to see that version.")
        elif latest_version is None:
            what = (f"Case #{case_id} has no saved version, but your editor started from v{base_version}; "
                    "reopen the case.")
        else:  # only a client that sent a version it never saw gets here
            what = (f"Case #{case_id}'s latest saved version is v{latest_version}, not v{base_version} "
                    "that your editor started from; reopen the case.")
        kept = " Your edits are kept as a draft." if draft_kept else " Nothing was saved."
        super().__init__(what + kept)

    def __reduce__(self):
        # Keyword-only fields: rebuilt from them, so the error survives pickling (worker processes).
        return _rebuild_conflict, (self.case_id, self.latest_version, self.latest_annotator,
                                   self.latest_created_at, self.base_version, self.draft_kept)


def _rebuild_conflict(case_id, latest_version, latest_annotator, latest_created_at, base_version, draft_kept):
    return VersionConflict(case_id=case_id, latest_version=latest_version, latest_annotator=latest_annotator,
                           latest_created_at=latest_created_at, base_version=base_version, draft_kept=draft_kept)


class SavedVersionExists(StorageError):
    """A skip refused because the case has a saved version (it is corrected or accepted): skipping
    takes that version out of export and retraining, so the caller must say it means to
    (``discard_saved``)."""

    def __init__(self, *, case_id: int, version: int, annotator: str, status: str, created_at: Optional[str]):
        self.case_id, self.version, self.annotator = case_id, version, annotator
        self.status, self.created_at = status, created_at
        super().__init__(f"Case #{case_id} has a saved version, v{version} ({status}) by {annotator} at "
                         f"{_minute_utc(created_at)}; skipping the case takes that version out of export and "
                         "retraining. Skip it with discard_saved to do so anyway (unskip puts it back).")

    def __reduce__(self):
        # Keyword-only fields: rebuilt from them, so the error survives pickling (worker processes).
        return _rebuild_saved, (self.case_id, self.version, self.annotator, self.status, self.created_at)


def _rebuild_saved(case_id, version, annotator, status, created_at):
    return SavedVersionExists(case_id=case_id, version=version, annotator=annotator, status=status,
                              created_at=created_at)


class JobNotRunning(StorageError):
    """A job's worker tried to finish it or record its result after the job stopped running (it was
    reaped as silent, cancelled and finished, or finished twice): what the job row says stands."""

    def __init__(self, job_id: int, status: str):
        self.job_id, self.status = int(job_id), str(status)
        super().__init__(f"Job {job_id} is no longer running (it is {status}); its result was not recorded.")

    def __reduce__(self):
        return JobNotRunning, (self.job_id, self.status)
