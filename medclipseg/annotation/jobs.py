"""Background jobs of an annotation database (retraining), at most one active at a time.

A job row is inserted before its worker starts, in the same write transaction that checks that
no other job is active (a unique partial index enforces it as well), so two clicks or two
servers cannot start two retrainings. The worker updates ``progress``, ``eta_seconds``,
``message`` and ``heartbeat`` as it goes and reads ``cancel_requested`` between training steps.

A worker that dies (killed, machine restarted) cannot mark its own job; :func:`reap` does, for
any running job whose process is gone or whose heartbeat is older than ``STALE_SECONDS``, so
after a restart the job is reported failed. Nothing the dead worker wrote can be promoted: a
model version row is only inserted once its folder is complete (medclipseg.annotation.versions).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

from medclipseg.annotation.errors import StorageError

STALE_SECONDS = 45.0
KINDS = ("retrain",)
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    status: str
    created_by: str
    created_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    pid: Optional[int]
    heartbeat: Optional[float]
    progress: float
    eta_seconds: Optional[float]
    message: str
    log_path: Optional[str]
    params: dict
    parent_id: Optional[str]
    version_id: Optional[str]
    cancel_requested: bool

    @property
    def active(self) -> bool:
        return self.status == "running"


def job_from_row(row: dict) -> Job:
    return Job(id=row["id"], kind=row["kind"], status=row["status"], created_by=row["created_by"],
               created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
               pid=row["pid"], heartbeat=row["heartbeat"], progress=float(row["progress"] or 0.0),
               eta_seconds=row["eta_seconds"], message=row["message"] or "", log_path=row["log_path"],
               params=json.loads(row["params"] or "{}"), parent_id=row["parent_id"], version_id=row["version_id"],
               cancel_requested=bool(row["cancel_requested"]))


def process_alive(pid: Optional[int]) -> bool:
    """True while a process with this id exists and is not a zombie (Linux; elsewhere: it exists)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def active(db) -> Optional[Job]:
    rows = list(db["jobs"].rows_where("status = 'running'", limit=1))
    return job_from_row(rows[0]) if rows else None


def get(db, job_id) -> Job:
    rows = list(db["jobs"].rows_where("id = ?", [int(job_id)]))
    if not rows:
        raise StorageError(f"There is no job {job_id} in this annotation database.")
    return job_from_row(rows[0])


def recent(db, limit: int = 20) -> list:
    return [job_from_row(row) for row in db["jobs"].rows_where(order_by="id DESC", limit=int(limit))]


def reap(db, *, now: float, now_iso: str, is_alive: Callable[[Optional[int]], bool] = process_alive) -> list:
    """Mark running jobs whose worker is gone as failed; returns their ids."""
    reaped = []
    for row in list(db["jobs"].rows_where("status = 'running'")):
        stale = row["heartbeat"] is None or now - float(row["heartbeat"]) > STALE_SECONDS
        if not is_alive(row["pid"]) or stale:
            why = "its process stopped" if not is_alive(row["pid"]) else "it stopped reporting"
            db["jobs"].update(row["id"], {
                "status": "failed", "finished_at": now_iso,
                "message": f"The job did not finish: {why} (server restart, crash or kill). "
                           "Nothing it trained was recorded; start it again."})
            reaped.append(int(row["id"]))
    return reaped


def start(db, *, kind: str, by: str, params: dict, parent_id: Optional[str], now: float, now_iso: str,
          pid: Optional[int] = None) -> int:
    """Insert a running job; StorageError in words when one is active already."""
    if kind not in KINDS:
        raise StorageError(f"Unknown job kind {kind!r}.")
    reap(db, now=now, now_iso=now_iso)
    running = active(db)
    if running is not None:
        raise StorageError(f"A retraining is already running (job {running.id}, started by {running.created_by} "
                           f"at {running.created_at[:19].replace('T', ' ')}); wait for it or cancel it.")
    return int(db["jobs"].insert({
        "kind": kind, "status": "running", "created_by": by, "created_at": now_iso, "started_at": now_iso,
        "pid": pid if pid is not None else os.getpid(), "heartbeat": now, "progress": 0.0,
        "message": "starting", "params": json.dumps(params), "parent_id": parent_id,
        "cancel_requested": 0}).last_rowid)


def update(db, job_id: int, **fields) -> None:
    allowed = {"pid", "heartbeat", "progress", "eta_seconds", "message", "log_path", "parent_id"}
    unknown = set(fields) - allowed
    if unknown:
        raise StorageError(f"Cannot update job fields {sorted(unknown)}.")
    db["jobs"].update(int(job_id), fields)


def finish(db, job_id: int, *, status: str, message: str, now_iso: str, version_id: Optional[str] = None) -> None:
    if status not in FINAL_STATUSES:
        raise StorageError(f"A job finishes as one of {', '.join(FINAL_STATUSES)}, not {status!r}.")
    changes = {"status": status, "message": message, "finished_at": now_iso, "version_id": version_id}
    if status == "succeeded":
        changes["progress"] = 1.0
    db["jobs"].update(int(job_id), changes)


def request_cancel(db, job_id: int) -> bool:
    """Ask a running job to stop at its next step; False when it is not running."""
    job = get(db, job_id)
    if job.status != "running":
        return False
    db["jobs"].update(job.id, {"cancel_requested": 1, "message": "cancelling"})
    return True
