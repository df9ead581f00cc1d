"""Background jobs: one active at a time, dead workers reported failed, cancellation requests."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from annotation_support import sql_connection

from medclipseg.annotation import jobs
from medclipseg.annotation.errors import JobNotRunning
from medclipseg.annotation.store import AnnotationStore, StorageError


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_one_job_at_a_time_then_finish(store):
    first = store.start_job("retrain", by="alice", params={"epochs": 2}, parent_id="m@1")
    with pytest.raises(StorageError, match="already running .*job 1.*alice"):
        store.start_job("retrain", by="bob", params={})
    job = store.active_job()
    assert (job.id, job.status, job.created_by, job.params, job.parent_id) == (first, "running", "alice",
                                                                              {"epochs": 2}, "m@1")
    store.update_job(first, progress=0.5, message="epoch 1/2", eta_seconds=3.0)
    assert (store.job(first).progress, store.job(first).message) == (0.5, "epoch 1/2")
    store.finish_job(first, status="succeeded", message="done", version_id="m@2")
    finished = store.job(first)
    assert (finished.status, finished.progress, finished.version_id) == ("succeeded", 1.0, "m@2")
    assert store.active_job() is None
    second = store.start_job("retrain", by="bob", params={})
    assert second == first + 1
    with pytest.raises(StorageError, match="finishes as one of"):
        store.finish_job(second, status="done", message="")
    with pytest.raises(StorageError, match="Unknown job kind"):
        store.start_job("dance", by="bob", params={})


def test_unique_index_refuses_a_second_running_job_even_past_the_check(store):
    store.start_job("retrain", by="alice", params={})
    import sqlalchemy

    conn = sql_connection(store)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        conn.execute("INSERT INTO jobs (kind, status, created_by, created_at, params) "
                     "VALUES ('retrain', 'running', 'x', 'now', '{}')")
    conn.close()


def test_dead_worker_is_reported_failed_and_its_scratch_removed(store_location, tmp_path):
    path = store_location
    with AnnotationStore(path, files_dir=tmp_path / "files") as first:
        job_id = first.start_job("retrain", by="alice", params={}, pid=_dead_pid())
        scratch = first.job_folder(job_id)
        (scratch / "model").mkdir(parents=True)
        scratch.with_suffix(".log").write_text("epoch 1\n")
    with AnnotationStore(path, files_dir=tmp_path / "files") as restarted:  # as a server restart would find it
        assert restarted.active_job() is None
        job = restarted.job(job_id)
        assert job.status == "failed" and "process stopped" in job.message and job.finished_at
        assert not scratch.exists() and scratch.with_suffix(".log").exists()


def _move_job_to_another_machine(store, job_id):
    conn = sql_connection(store)
    with conn:
        conn.execute("UPDATE jobs SET host = 'another-machine' WHERE id = ?", [job_id])
    conn.close()


def test_a_slow_worker_alive_on_this_machine_is_never_reaped(store):
    """A heartbeat 10 minutes late does not kill a job whose process is alive here (it was only slow)."""
    job_id = store.start_job("retrain", by="alice", params={})  # this test's own process: alive
    store.update_job(job_id, heartbeat=time.time() - 600)
    assert store.active_job().id == job_id and store.reap_jobs() == []
    assert store.job(job_id).status == "running"


def test_a_silent_worker_elsewhere_is_reaped_only_once_its_renewed_grace_lapses(store):
    job_id = store.start_job("retrain", by="alice", params={})
    _move_job_to_another_machine(store, job_id)
    # The worker announced a long silent step: a heartbeat from 2 minutes ago promised 10 minutes.
    store.update_job(job_id, heartbeat=time.time() - 120, grace_seconds=600)
    _move_job_to_another_machine(store, job_id)
    assert store.reap_jobs() == [] and store.job(job_id).status == "running"
    # The same late heartbeat with the default grace (STALE_SECONDS) has lapsed: reaped.
    store.update_job(job_id, heartbeat=time.time() - jobs.STALE_SECONDS - 1)
    _move_job_to_another_machine(store, job_id)
    assert store.reap_jobs() == [job_id]
    job = store.job(job_id)
    assert job.status == "failed" and "stopped reporting" in job.message


def test_a_reaped_job_keeps_its_status_against_a_late_finish_and_records_no_version(store):
    job_id = store.start_job("retrain", by="alice", params={}, pid=_dead_pid())
    assert store.reap_jobs() == [job_id]
    reaped = store.job(job_id)
    with pytest.raises(JobNotRunning, match=f"Job {job_id} is no longer running .*failed"):
        store.finish_job(job_id, status="succeeded", message="done", version_id="m@2")
    after = store.job(job_id)
    assert (after.status, after.message, after.finished_at, after.version_id) == \
        ("failed", reaped.message, reaped.finished_at, None)
    # Its late progress and heartbeat are refused too: the reaped message stays.
    with pytest.raises(JobNotRunning):
        store.update_job(job_id, progress=0.9, message="epoch 9 of 10")
    with pytest.raises(JobNotRunning):
        store.update_job(job_id)  # a bare heartbeat
    late = store.job(job_id)
    assert (late.status, late.message, late.progress, late.heartbeat) == \
        ("failed", reaped.message, reaped.progress, reaped.heartbeat)
    folder = store.models_dir / "m-2"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(JobNotRunning):
        store.add_trained_version(folder, model_id="m@2", name="m", parent_id=None, created_by="alice",
                                  recipe={}, correction_ids=[], train_cases=1, job_id=job_id)
    assert [v.id for v in store.model_versions()] == []
    # Finishing twice is refused the same way.
    second = store.start_job("retrain", by="bob", params={})
    store.finish_job(second, status="cancelled", message="cancelled by request")
    with pytest.raises(JobNotRunning):
        store.finish_job(second, status="failed", message="late")
    assert store.job(second).status == "cancelled"


def test_cancel_request(store):
    job_id = store.start_job("retrain", by="alice", params={})
    assert store.request_cancel(job_id, by="bob") is True
    job = store.job(job_id)
    assert job.cancel_requested and job.message == "cancelling"
    store.finish_job(job_id, status="cancelled", message="cancelled by request")
    assert store.request_cancel(job_id, by="bob") is False
    with pytest.raises(StorageError, match="no job 99"):
        store.job(99)


def test_process_alive():
    assert jobs.process_alive(None) is False
    assert jobs.process_alive(_dead_pid()) is False
    import os

    assert jobs.process_alive(os.getpid()) is True
