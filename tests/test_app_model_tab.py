"""The Model tab's functions without a server: a real AnnotationService (SQLite in tmp, the demo weights).

Reads the tab of a new database, refuses every action in words, follows a job row through the
progress bar, log and cancel, and records a trained version by hand (a copy of the demo weights)
to check the versions table, promotion (the served model and the page's model line change),
background-style re-scoring, rollback and the retraining estimate.
"""
from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

from app_support import fill_queue
from medclipseg.annotation.errors import StorageError
from medclipseg.annotation.service import RequestError
from medclipseg.app import handlers, model_tab

SAMPLES = 4


@pytest.fixture(scope="module")
def predictor():
    from medclipseg.inference.predictor import Predictor

    return Predictor.from_pretrained("demo", device="cpu")


@pytest.fixture()
def service(tmp_path, predictor):
    from medclipseg.annotation.scratch import ScratchSpace
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    (tmp_path / "tmp").mkdir()
    store = AnnotationStore(tmp_path / "db" / "annotations.db")
    service = AnnotationService(store, predictor, num_samples=SAMPLES, scratch=ScratchSpace(parent=tmp_path / "tmp"))
    yield service
    service.close()
    store.close()


def corrected_cases(service, count, *, seed=0):
    """`count` queued cases (ranked by the serving model), each corrected with a square mask."""
    ids = fill_queue(service.store, count, seed=seed, model_id=service.model_id)
    for case_id in ids:
        mask = np.zeros((48, 64), bool)
        mask[10:30, 12:40] = True
        service.save(case_id, mask, annotator="alice", status="corrected")
    return ids


def trained_copy(service, *, gold=None, train_cases=2, seconds=12.0, epochs=3):
    """Record a copy of the demo weights as a trained version (what a retraining writes)."""
    from medclipseg.registry import demo_weights_dir, load_model

    folder = service.store.models_dir / "copy"
    service.store.models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(demo_weights_dir(), folder)
    model_id = load_model(str(folder), device="cpu").model_id
    return service.store.add_trained_version(
        folder, model_id=model_id, name="tiny", parent_id=service.store.current_model_id(), created_by="bob",
        recipe={"epochs": epochs}, correction_ids=[], train_cases=train_cases, gold=gold, parent_gold_dsc=0.25,
        seconds=seconds)


def test_duration_text():
    assert [model_tab.duration_text(s) for s in (0, 44.6, 200, 3599.4, 3900)] == [
        "0 s", "45 s", "3 min 20 s", "59 min 59 s", "1 h 05 min"]
    assert model_tab.estimate_text(None) == "no estimate until the first round"


def test_new_database_panel(service):
    fill_queue(service.store, 2, model_id=service.model_id)
    panel = model_tab.panel(service)
    model_id = service.model_id
    assert model_id.startswith("demo-tiny@")
    assert model_id in panel.header and f"`{model_id}`" in panel.current and "base" in panel.current
    assert len(panel.versions) == 1
    row = dict(zip(model_tab.VERSION_COLUMNS, panel.versions[0]))
    assert (row["current"], row["version"], row["kind"], row["parent"], row["gold DSC"]) == (
        model_tab.CURRENT_MARK, model_id, "base", "–", "–")
    assert panel.choices == [(f"{model_id} · base · current", model_id)]
    assert "0 corrected · 0 accepted" in panel.data and "Nothing to train on yet" in panel.data
    assert 'data-status="none"' in panel.progress and "No retraining has run yet" in panel.progress
    assert panel.log == "" and panel.job_id is None and not panel.running
    assert panel.rescoring == f"Every unreviewed case is ranked by `{model_id}`."
    assert "Keep going" in panel.stop


def test_reviewed_counts_split_as_retraining_does(service):
    from medclipseg.annotation.retraining import labelled_examples

    service.store.set_gold_fraction(0.5, seed=3)
    corrected_cases(service, 6)
    train, gold, _ids = labelled_examples(service.store)
    counts = model_tab.reviewed_counts(service.store)
    assert (counts["train"], counts["gold"], counts["corrected"]) == (len(train), len(gold), 6)
    assert counts["train"] and counts["gold"]  # seed 3 puts these six images on both sides
    text = model_tab.data_text(service)
    assert f"**{len(train)} case(s) to train on.**" in text and f"{len(gold)} of them gold" in text
    assert "50 % of new cases" in text and "no estimate until the first round" in text


def test_actions_refuse_in_words(service):
    service.store.set_gold_fraction(0.0)
    with pytest.raises(RequestError, match="annotator name is required"):
        model_tab.start_retrain(service, "  ")
    with pytest.raises(StorageError, match="no corrected or accepted cases to train on"):
        model_tab.start_retrain(service, "alice")
    corrected_cases(service, 1)
    with pytest.raises(StorageError, match="between 1 and 500"):
        model_tab.start_retrain(service, "alice", epochs=0)
    with pytest.raises(StorageError, match="Promote must be one of auto, yes, no"):
        model_tab.start_retrain(service, "alice", promote="maybe")
    with pytest.raises(RequestError, match="Choose a model version"):
        model_tab.promote_version(service, None, "alice")
    with pytest.raises(RequestError, match="annotator name is required"):
        model_tab.promote_version(service, service.model_id, "")
    with pytest.raises(StorageError, match="no model version 'nothing@0'"):
        model_tab.promote_version(service, "nothing@0", "alice")
    assert "already the current version" in model_tab.promote_version(service, service.model_id, "alice")
    with pytest.raises(StorageError, match="no earlier model version"):
        model_tab.roll_back(service, "alice")
    with pytest.raises(StorageError, match="No retraining is running"):
        model_tab.cancel_retrain(service, "alice")
    assert service.store.recent_jobs() == []


def test_running_job_shows_progress_log_and_cancels(service):
    corrected_cases(service, 2)
    store = service.store
    job_id = store.start_job("retrain", by="carol", params={}, parent_id=service.model_id, pid=os.getpid())
    log = store.files_dir / "jobs" / f"{job_id:06d}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"line {index}\n" for index in range(2000)))
    store.update_job(job_id, progress=0.4, eta_seconds=95.0, message="epoch 1/2, step 3/6, loss 0.5",
                     log_path=str(log.relative_to(store.files_dir)))
    signature = model_tab.panel_signature(service)
    panel = model_tab.panel(service)
    assert panel.running and panel.job_id == job_id
    bar = panel.progress
    assert 'data-status="running"' in bar and 'data-progress="0.4000"' in bar and "width:40.0%" in bar
    assert f"Job {job_id} · running · 40 %" in bar and "epoch 1/2, step 3/6, loss 0.5" in bar
    eta = re.search(r"ETA (\d+) min (\d+) s", bar)
    assert eta and 80 <= 60 * int(eta[1]) + int(eta[2]) <= 95  # counts down from the reported 95 s
    assert panel.log.endswith("line 1999\n") and len(panel.log) <= 6000

    with pytest.raises(StorageError, match=f"already running \\(job {job_id}, started by carol\\)"):
        model_tab.start_retrain(service, "alice")
    assert "Cancelling job" in model_tab.cancel_retrain(service, "alice")
    assert store.job(job_id).cancel_requested
    assert "already cancelling" in model_tab.cancel_retrain(service, "alice")
    assert model_tab.panel_signature(service) != signature
    assert "cancel requested" in model_tab.panel(service).progress

    store.finish_job(job_id, status="cancelled", message="cancelled by request after 3 s; no version was recorded")
    panel = model_tab.panel(service)
    assert not panel.running and 'data-status="cancelled"' in panel.progress and "ETA" not in panel.progress
    summary = model_tab.job_summary(service)
    assert (summary["job_id"], summary["status"], summary["active"], summary["eta_seconds"]) == (
        job_id, "cancelled", False, None)
    assert summary["log_tail"].endswith("line 1999\n")
    with pytest.raises(StorageError, match=f"Job {job_id} is not running \\(cancelled\\)"):
        model_tab.cancel_retrain(service, "alice", job_id)
    with pytest.raises(RequestError, match="job_id must be a whole number"):
        model_tab.job_summary(service, "seven")


def test_promotion_switches_the_model_rescoring_and_rollback(service):
    store = service.store
    base = service.model_id
    store.set_gold_fraction(0.0)  # both cases train (a random gold draw could hold both out)
    corrected_cases(service, 2)
    queued = fill_queue(store, 3, seed=50, model_id=base)
    version = trained_copy(service, gold={"cases": 4, "dsc": 0.7, "nsd": 0.8, "uncertainty_spearman": 0.5},
                           train_cases=2, seconds=12.0, epochs=3)
    assert version.id != base and not version.current
    before = model_tab.panel_signature(service)
    assert model_tab.panel_signature(service) == before  # nothing changed: the timer sends nothing

    panel = model_tab.panel(service)
    rows = [dict(zip(model_tab.VERSION_COLUMNS, row)) for row in panel.versions]
    assert [row["version"] for row in rows] == [base, version.id]
    assert [row["current"] for row in rows] == [model_tab.CURRENT_MARK, ""]
    assert (rows[1]["parent"], rows[1]["kind"], rows[1]["by"], rows[1]["train"], rows[1]["gold"],
            rows[1]["gold DSC"], rows[1]["gold NSD"], rows[1]["unc. ρ"]) == (
        base, "trained", "bob", "2", "4", "0.700", "0.800", "0.500")
    assert panel.choices[0] == (f"{version.id} · trained · gold DSC 0.700", version.id)
    # The estimate scales the last round's seconds per case and epoch: 12 s / (2 cases x 3 epochs).
    train_cases = model_tab.reviewed_counts(store)["train"]
    expected = 12.0 / (2 * 3) * train_cases * 5
    assert f"estimate about {model_tab.duration_text(expected)}" in model_tab.data_text(service, epochs=5)

    message = model_tab.promote_version(service, version.id, "alice")
    assert f"Promoted `{version.id}` (now serving `{version.id}`)" in message
    assert "3 case(s) will be re-scored" in message
    assert service.model_id == version.id and store.current_model_id() == version.id
    panel = model_tab.panel(service)
    assert version.id in panel.header and base not in panel.header
    assert f"**Current version** `{version.id}` (trained, from `{base}`)" in panel.current
    assert "DSC 0.700, NSD 0.800, uncertainty Spearman ρ 0.500 (parent's DSC 0.250)" in panel.current
    assert f"**3 case(s) waiting to be re-scored** by `{version.id}`" in panel.rescoring
    assert model_tab.panel_signature(service) != before

    # An old prediction in the editor says it is not the current version's.
    screen = handlers.next_case(service, "expected_dice_miss", "dora")
    assert f"predicted by `{base}` (an earlier version" in screen.status

    promoted = model_tab.panel_signature(service)
    assert service.rescore_pending() == 3
    assert model_tab.panel_signature(service) != promoted  # the re-scoring state is redrawn
    for case_id in queued:
        prediction = store.load_prediction(store.latest_prediction_id(case_id))
        assert prediction.model_id == version.id
    assert model_tab.panel(service).rescoring == f"Every unreviewed case is ranked by `{version.id}`."
    screen = handlers.next_case(service, "expected_dice_miss", "dora")
    assert f"predicted by `{version.id}`;" in screen.status and f"`{version.id}`" in screen.numbers

    message = model_tab.roll_back(service, "alice")
    assert message.startswith(f"Rolled back from `{version.id}` to `{base}` (now serving `{base}`)")
    assert service.model_id == base
    assert [row[0] for row in model_tab.panel(service).versions] == [model_tab.CURRENT_MARK, ""]
    log = store.promotion_log()
    assert [(entry["version_id"], entry["promoted_by"]) for entry in log[-2:]] == [
        (version.id, "alice"), (base, "alice")]


def test_preparing_phase_shows_what_the_worker_does_not_a_stuck_percentage(service):
    corrected_cases(service, 1)
    store = service.store
    job_id = store.start_job("retrain", by="carol", params={}, parent_id=service.model_id, pid=os.getpid())
    store.update_job(job_id, message="preparing: loading the model demo and 1 case(s) to train on", eta_seconds=40.0)
    bar = model_tab.panel(service).progress
    assert 'data-phase="preparing"' in bar and "mcs-job-moving" in bar   # a moving bar, no fraction
    assert f"Job {job_id} · preparing" in bar
    assert '<span style="overflow-wrap:anywhere">loading the model demo' in bar   # the caption says "preparing"
    assert "0 %" not in bar and "ETA" not in bar
    store.update_job(job_id, progress=0.05, message="epoch 1/3, step 1/6, loss 0.7", eta_seconds=30.0)
    bar = model_tab.panel(service).progress
    assert 'data-phase="running"' in bar and f"Job {job_id} · running · 5 %" in bar and "ETA" in bar


def test_auto_promotion_without_gold_cases_is_announced(service, monkeypatch):
    from medclipseg.annotation import retraining

    service.store.set_gold_fraction(0.0)
    corrected_cases(service, 2)
    assert "No gold cases yet: promote *auto* has nothing to compare on" in model_tab.data_text(service)
    # The worker itself is not started here: a job row stands for it.
    monkeypatch.setattr(retraining, "launch_worker", lambda store, *, by, epochs, promote: store.start_job(
        "retrain", by=by, params={"train_cases": 2, "gold_cases": 0}, parent_id=store.current_model_id()))
    message = model_tab.start_retrain(service, "alice", promote="auto").message()
    assert ("auto needs gold cases to compare on; 0 gold cases now — the new version will not be promoted "
            "automatically") in message
    service.store.finish_job(model_tab.panel(service).job_id, status="cancelled", message="cancelled")
    assert "auto needs" not in model_tab.start_retrain(service, "alice", promote="yes").message()


def test_job_text_follows_a_promotion_by_hand(service):
    store = service.store
    corrected_cases(service, 2)
    version = trained_copy(service)
    job_id = store.start_job("retrain", by="carol", params={}, parent_id=service.model_id, pid=os.getpid())
    store.finish_job(job_id, status="succeeded", version_id=version.id, message=(
        f"version {version.id} recorded; not promoted: no gold cases yet to compare it with its parent; "
        "promote it by hand"))
    assert "promote it by hand" in model_tab.panel(service).progress
    model_tab.promote_version(service, version.id, "alice")
    bar = model_tab.panel(service).progress
    assert "promote it by hand" not in bar
    assert f"version {version.id} recorded; not promoted by the job, then promoted by hand by alice at " in bar
    assert "it serves predictions now" in bar
