"""Retraining inside the product, end to end with the demo model: `medclipseg retrain`, the
background worker (progress, cancel, a kill mid-job), versions, promotion and re-scoring."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medclipseg.annotation.gold import is_gold
from medclipseg.annotation.retraining import launch_worker, log_tail, poll_children, stop_signal
from medclipseg.annotation.service import AnnotationService
from medclipseg.annotation.store import AnnotationStore, StorageError
from medclipseg.registry import load_model

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "A bright round lesion in the ultrasound image."


def _lesion(seed: int, size: int = 64):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, radius = rng.integers(18, size - 18), rng.integers(18, size - 18), rng.integers(6, 12)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    grey = np.clip(rng.normal(60, 12, (size, size)) + 140 * mask, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), mask


def _reviewed_store(path, cases: int = 6, gold_wanted: int = 2, files_dir=None) -> AnnotationStore:
    """A database with `cases` corrected cases of which exactly `gold_wanted` are gold (seed chosen)."""
    import hashlib

    images = [_lesion(seed) for seed in range(cases)]
    hashes = []
    for pixels, _mask in images:
        digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}x3:".encode("ascii"))
        digest.update(np.ascontiguousarray(pixels).tobytes())
        hashes.append(digest.hexdigest())
    seed = next(s for s in range(10_000) if sum(is_gold(h, seed=str(s), fraction=0.4) for h in hashes) == gold_wanted)
    store = AnnotationStore(path, files_dir=files_dir)
    store.set_gold_fraction(0.4, seed=seed)
    service = AnnotationService(store, weights="demo", device="cpu", num_samples=4)
    for pixels, mask in images:
        result = service.segment(pixels, PROMPT, num_samples=4, add_to_queue=True)
        store.save_correction(result.case.id, mask, annotator="alice")
    for seed in range(100, 103):  # three more, left unreviewed in the queue
        service.segment(_lesion(seed)[0], PROMPT, num_samples=4, add_to_queue=True)
    service.close()
    assert sum(1 for row in store.corrections() if row["gold"]) == gold_wanted
    return store


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "medclipseg", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_retrain_cli_records_scores_promotes_and_the_app_follows(tmp_path):
    db = tmp_path / "annotations.db"
    store = _reviewed_store(db)
    service = AnnotationService(store, weights="demo", device="cpu", num_samples=4)
    before = service.model_id
    assert before.startswith("demo-tiny@") and store.current_model_id() == before

    run = _cli("retrain", "--db", str(db), "--epochs", "2", "--promote", "yes", "--by", "alice")
    assert run.returncode == 0, run.stderr
    last = run.stdout.strip().splitlines()[-1]
    fields = dict(part.split("=", 1) for part in last.split())
    assert list(fields) == ["version", "parent", "gold_dsc", "parent_gold_dsc", "promoted"]
    assert fields["parent"] == before and fields["promoted"] == "yes" and fields["version"] != before
    assert 0.0 <= float(fields["gold_dsc"]) <= 1.0 and 0.0 <= float(fields["parent_gold_dsc"]) <= 1.0

    version = store.model_version(fields["version"])
    assert (version.kind, version.parent_id, version.created_by, version.train_cases, version.gold_cases) == \
        ("trained", before, "alice", 4, 2)
    train_ids = sorted(row["id"] for row in store.corrections() if not row["gold"])
    assert sorted(version.correction_ids) == train_ids  # gold cases never trained on
    assert version.recipe["epochs"] == 2 and version.current
    assert load_model(store.model_source(version), device="cpu").model_id == version.id  # the folder is that model
    assert float(fields["gold_dsc"]) == pytest.approx(version.gold_dsc, abs=1e-4)

    # The running service switches to the promoted version without a restart, then re-ranks the queue.
    assert service.model_id == version.id
    assert store.rescore_backlog(version.id) == 3
    assert service.rescore_pending() == 3 and store.rescore_backlog(version.id) == 0
    case = store.next_case("bob", acquisition="band_entropy")
    served = store.load_prediction(store.latest_prediction_id(case.id))
    assert served.model_id == version.id

    listing = _cli("models", "--db", str(db))
    assert listing.returncode == 0
    marked = [line for line in listing.stdout.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and version.id in marked[0]
    rolled = _cli("rollback", "--db", str(db), "--by", "alice")
    assert rolled.returncode == 0 and rolled.stdout.strip() == f"current={before}"
    assert service.model_id == before
    service.close()
    store.close()


def test_retrain_refuses_without_training_cases(tmp_path):
    db = tmp_path / "annotations.db"
    store = AnnotationStore(db)
    store.ensure_base_version("demo-tiny@defbf9b6e01c", source="demo", name="demo-tiny")
    run = _cli("retrain", "--db", str(db), "--epochs", "1")
    assert run.returncode == 2 and "no corrected or accepted cases" in run.stderr
    with pytest.raises(StorageError, match="no corrected or accepted cases"):
        launch_worker(store, by="alice", epochs=1)
    assert store.recent_jobs() == []
    store.close()


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        poll_children()
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_killed_mid_training_is_failed_and_leaves_nothing_promotable(tmp_path):
    db = tmp_path / "annotations.db"
    store = _reviewed_store(db, cases=4, gold_wanted=1)
    base = store.current_model_id()
    job_id = launch_worker(store, by="alice", epochs=400, promote="yes")
    with pytest.raises(StorageError, match="already running"):
        launch_worker(store, by="bob", epochs=1)
    job = _wait(lambda: (lambda j: j if "epoch" in j.message else None)(store.job(job_id)), 240, "training to start")
    assert job.progress >= 0.0 and job.pid
    os.killpg(job.pid, signal.SIGKILL)  # the worker runs in its own session
    _wait(lambda: store.active_job() is None, 30, "the dead worker to be noticed")
    store.close()

    restarted = AnnotationStore(db)  # what the app finds after a restart
    job = restarted.job(job_id)
    assert job.status == "failed" and "did not finish" in job.message
    assert [v.id for v in restarted.model_versions()] == [base] and restarted.current_model_id() == base
    assert not restarted.models_dir.exists() or not any(restarted.models_dir.iterdir())
    assert not restarted.job_folder(job_id).exists()
    assert "epoch" in log_tail(restarted, job)
    # The next retraining may start.
    again = launch_worker(restarted, by="bob", epochs=1, promote="no")
    restarted.request_cancel(again, by="bob")
    finished = _wait(lambda: (lambda j: j if not j.active else None)(restarted.job(again)), 240, "the cancel")
    assert finished.status in ("cancelled", "succeeded")  # a 1-epoch round may finish before it sees the request
    if finished.status == "cancelled":
        assert [v.id for v in restarted.model_versions()] == [base]
    restarted.close()


def test_a_retraining_round_on_postgresql_finds_the_database_without_a_password_on_its_command_line(
        postgres_database, tmp_path):
    """The app's worker process trains from, and records into, a PostgreSQL store; the URL (with its
    password) reaches it through the environment, never its command line."""
    from urllib.parse import urlsplit

    store = _reviewed_store(postgres_database, cases=4, gold_wanted=1, files_dir=tmp_path / "files")
    base = store.current_model_id()
    job_id = launch_worker(store, by="alice", epochs=1, promote="yes")
    job = store.job(job_id)
    with open(f"/proc/{job.pid}/cmdline", "rb") as handle:
        command_line = handle.read().decode(errors="replace")
    assert f":{urlsplit(postgres_database).password}@" not in command_line and "postgresql" not in command_line
    finished = _wait(lambda: (lambda j: j if not j.active else None)(store.job(job_id)), 300, "the round")
    assert finished.status == "succeeded", log_tail(store, finished)
    current = store.model_version(store.current_model_id())
    assert current.parent_id == base and current.kind == "trained" and current.train_cases == 3
    assert (tmp_path / "files" / current.path).is_dir()
    store.close()


def test_stop_signal_reads_gains_and_top_of_queue(tmp_path):
    store = AnnotationStore(tmp_path / "annotations.db")
    store.ensure_base_version("m@0", source="demo", name="m")
    signal_now = stop_signal(store)
    assert not signal_now.stop and "Keep going" in signal_now.text
    for index, (dsc, parent) in enumerate(((0.60, 0.40), (0.605, 0.60), (0.607, 0.605))):
        folder = store.models_dir / f"m-{index + 1}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        store.add_trained_version(folder, model_id=f"m@{index + 1}", name="m", parent_id=f"m@{index}",
                                  created_by="alice", recipe={}, correction_ids=[], train_cases=5,
                                  gold={"cases": 3, "dsc": dsc, "nsd": dsc}, parent_gold_dsc=parent)
    result = stop_signal(store)
    assert result.stop and result.recent_gains == [0.005, 0.002] and "Consider stopping" in result.text
    store.close()


def test_a_promotion_by_hand_during_a_round_is_not_overridden_by_its_promotion(tmp_path):
    """The round was asked to promote its version, but someone promoted another version while it
    trained: the round records its version, leaves the hand-made choice current, and says why."""
    from medclipseg.annotation.retraining import run_retrain

    store = _reviewed_store(tmp_path / "annotations.db")
    AnnotationService(store, weights="demo", device="cpu", num_samples=4).close()  # records the base version
    base = store.current_model_id()
    chosen = store.models_dir / "chosen-by-hand"
    chosen.mkdir(parents=True)
    (chosen / "config.json").write_text("{}")
    store.add_trained_version(chosen, model_id="chosen@1", name="chosen", parent_id=base, created_by="carol",
                              recipe={}, correction_ids=[], train_cases=1)
    lines = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("scoring "):  # mid-round, after training: carol promotes by hand
            store.promote("chosen@1", by="carol", reason="promoted by hand")

    outcome = run_retrain(store, by="alice", epochs=1, promote="yes", device="cpu", log=log)
    assert outcome.promoted is False and "changed to chosen@1" in outcome.reason
    assert store.current_model_id() == "chosen@1"
    assert store.model_version(outcome.version_id).kind == "trained"  # recorded, not promoted
    job = store.job(outcome.job_id)
    assert job.status == "succeeded" and "not promoted" in job.message and "by hand" in job.message
    assert [row["version_id"] for row in store.promotion_log()] == [base, "chosen@1"]
    store.close()
