"""Background jobs of an annotation database (retraining), at most one active at a time.

A job row is inserted before its worker starts, in the same write transaction that checks that
no other job is active (a unique partial index enforces it as well), so two clicks or two
servers cannot start two retrainings. The worker updates ``progress``, ``eta_seconds``,
``message`` and ``heartbeat`` as it goes and reads ``cancel_requested`` between training steps.

A worker that dies (killed, machine restarted) cannot mark its own job; :func:`reap` does, so
after a restart the job is reported failed. A job is reaped only when its worker is known to be
gone: its process no longer exists on the machine the job row names (``host``), or the worker's
own promise has lapsed: each heartbeat renews ``grace_until`` (``STALE_SECONDS`` ahead by default,
longer when the worker announces a long step), and a worker on another machine, whose process
cannot be seen from here, is reaped only once that time has passed. A worker whose process is
alive on this machine is never reaped for a slow heartbeat.

A reaped job stays failed: :func:`finish` and a version row for the job are refused
(:class:`~medclipseg.annotation.errors.JobNotRunning`) once it is no longer running, so a
worker that was only slow cannot overwrite the status with its late result, and it stops at its
next step. Nothing a dead worker wrote can be promoted: a model version row is only inserted
once its folder is complete (medclipseg.annotation.versions).
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Callable, Optional

from medclipseg.annotation.errors import JobNotRunning, StorageError

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
    grace_until: Optional[float] = None
    host: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.status == "running"


def job_from_row(row: dict) -> Job:
    return Job(id=row["id"], kind=row["kind"], status=row["status"], created_by=row["created_by"],
               created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
               pid=row["pid"], heartbeat=row["heartbeat"], progress=float(row["progress"] or 0.0),
               eta_seconds=row["eta_seconds"], message=row["message"] or "", log_path=row["log_path"],
               params=json.loads(row["params"] or "{}"), parent_id=row["parent_id"], version_id=row["version_id"],
               cancel_requested=bool(row["cancel_requested"]), grace_until=row.get("grace_until"),
               host=row.get("host"))


def this_host() -> str:
    return socket.gethostname()


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


def reap(db, *, now: float, now_iso: str, is_alive: Callable[[Optional[int]], bool] = process_alive,
         host: Optional[str] = None) -> list:
    """Mark running jobs whose worker is gone as failed (the module docstring says when); returns their ids."""
    host = this_host() if host is None else host
    reaped = []
    for row in list(db["jobs"].rows_where("status = 'running'")):
        local = row.get("host") in (None, host)  # rows from before version 7 were all local
        if local and row["pid"] and not is_alive(row["pid"]):
            why = "its process stopped"
        elif local and row["pid"]:
            continue  # alive here: slow, not dead (a cancel request stops it)
        else:
            promised = row.get("grace_until")
            if promised is None:
                promised = (float(row["heartbeat"]) if row["heartbeat"] is not None else 0.0) + STALE_SECONDS
            if now <= float(promised):
                continue
            why = "it stopped reporting"
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
        "cancel_requested": 0, "grace_until": now + STALE_SECONDS, "host": this_host()}).last_rowid)


def update(db, job_id: int, *, grace_seconds: Optional[float] = None, **fields) -> None:
    """Progress of a running job. A heartbeat renews its grace: ``grace_seconds`` (default
    ``STALE_SECONDS``) from the heartbeat, so a worker about to run a long silent step can promise a
    later beat. A job no longer running (reaped, cancelled, finished) is not updated: JobNotRunning,
    nothing written, so a late worker's progress never overwrites the message of its end."""
    allowed = {"pid", "heartbeat", "progress", "eta_seconds", "message", "log_path", "parent_id"}
    unknown = set(fields) - allowed
    if unknown:
        raise StorageError(f"Cannot update job fields {sorted(unknown)}.")
    require_running(db, job_id)
    if fields.get("heartbeat") is not None:
        fields["grace_until"] = float(fields["heartbeat"]) + float(
            STALE_SECONDS if grace_seconds is None else max(0.0, grace_seconds))
    if "pid" in fields:
        fields["host"] = this_host()
    db["jobs"].update(int(job_id), fields)


def require_running(db, job_id: int) -> Job:
    """The job, while it runs; JobNotRunning otherwise."""
    job = get(db, job_id)
    if job.status != "running":
        raise JobNotRunning(job.id, job.status)
    return job


def finish(db, job_id: int, *, status: str, message: str, now_iso: str, version_id: Optional[str] = None) -> None:
    """Record a running job's end; JobNotRunning (nothing written) when it is not running any more."""
    if status not in FINAL_STATUSES:
        raise StorageError(f"A job finishes as one of {', '.join(FINAL_STATUSES)}, not {status!r}.")
    require_running(db, job_id)
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
