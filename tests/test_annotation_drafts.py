"""Drafts, version lineage and conflict checks of the annotation store (schema version 3), on real SQLite files."""
from __future__ import annotations

import pickle
import threading
from datetime import datetime, timezone

import numpy as np
import pytest

from annotation_support import sql_connection, case_with_prediction, stored_files
from medclipseg.annotation import drafts
from medclipseg.annotation.service import AnnotationService
from medclipseg.annotation.store import KEEP_UNCHECKED, AnnotationStore, StorageError, VersionConflict

SHAPE = (24, 32)


def box(top, left, bottom, right) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[top:bottom, left:right] = True
    return mask


def draft_rows(store) -> list:
    conn = sql_connection(store)
    rows = conn.execute("SELECT case_id, annotator, revision FROM drafts ORDER BY id").fetchall()
    conn.close()
    return rows


def draft_files(store) -> list:
    return sorted(path.name for path in (store.files_dir / "masks").glob("*-draft.png"))


def minute_utc(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def test_draft_round_trip(store):
    case, prediction_id = case_with_prediction(store, 1)
    first = box(2, 3, 10, 12)
    draft = store.save_draft(case.id, " alice ", first, prediction_id=prediction_id, threshold=0.4)
    assert (draft.case_id, draft.annotator, draft.prediction_id, draft.base_version, draft.threshold) == (
        case.id, "alice", prediction_id, None, 0.4)
    assert (draft.revision, draft.pixels) == (1, 8 * 9)
    loaded = store.draft(case.id, "alice")
    assert loaded.mask.dtype == bool
    np.testing.assert_array_equal(loaded.mask, first)
    assert (loaded.revision, loaded.pixels, loaded.updated_at) == (1, 72, draft.updated_at)

    second = box(0, 0, 5, 5) | first
    again = store.save_draft(case.id, "alice", second.astype(np.uint8) * 255, base_version=None)
    assert (again.revision, again.pixels, again.prediction_id, again.threshold) == (
        2, int(second.sum()), None, None)
    np.testing.assert_array_equal(store.draft(case.id, "alice").mask, second)
    # One row and one file per case and annotator: the replaced PNG is gone.
    assert draft_rows(store) == [(case.id, "alice", 2)]
    assert len(draft_files(store)) == 1

    bob = box(20, 20, 24, 32)
    store.save_draft(case.id, "bob", bob)
    np.testing.assert_array_equal(store.draft(case.id, "bob").mask, bob)
    np.testing.assert_array_equal(store.draft(case.id, "alice").mask, second)
    assert store.draft(case.id, "alice").revision == 2 and store.draft(case.id, "bob").revision == 1
    other, _ = case_with_prediction(store, 2)
    assert store.draft(other.id, "alice") is None
    assert len(draft_files(store)) == 2


@pytest.mark.parametrize("kwargs, mask, message", [
    ({"annotator": "  "}, None, "enter your name"),
    ({}, np.zeros((5, 5), bool), "shape"),
    ({"threshold": 1.5}, None, "strictly between"),
    ({"base_version": 0}, None, "base version"),
    ({"base_version": True}, None, "base version"),
    ({"prediction_id": 999}, None, "does not exist"),
], ids=["annotator", "shape", "threshold", "base-zero", "base-bool", "prediction"])
def test_draft_refused_in_words_and_nothing_written(store, kwargs, mask, message):
    case, _ = case_with_prediction(store, 1)
    before = stored_files(store)
    kwargs = {"annotator": "alice", **kwargs}
    annotator = kwargs.pop("annotator")
    with pytest.raises(StorageError, match=message):
        store.save_draft(case.id, annotator, box(1, 1, 4, 4) if mask is None else mask, **kwargs)
    assert stored_files(store) == before and draft_rows(store) == []


def test_draft_refuses_a_prediction_of_another_case(store):
    case, _ = case_with_prediction(store, 1)
    _, other_prediction = case_with_prediction(store, 2)
    with pytest.raises(StorageError, match=f"belongs to case {case.id + 1}"):
        store.save_draft(case.id, "alice", box(1, 1, 4, 4), prediction_id=other_prediction)


def test_discard_draft(store):
    case, _ = case_with_prediction(store, 1)
    before = stored_files(store)
    store.save_draft(case.id, "alice", box(1, 1, 4, 4))
    store.save_draft(case.id, "bob", box(1, 1, 6, 6))
    assert store.discard_draft(case.id, "alice") is True
    assert store.draft(case.id, "alice") is None and store.discard_draft(case.id, "alice") is False
    assert store.draft(case.id, "bob").pixels == 25
    assert store.discard_draft(case.id, "bob") is True
    assert stored_files(store) == before and draft_rows(store) == []
    # A new draft after a discard starts counting again.
    assert store.save_draft(case.id, "alice", box(1, 1, 4, 4)).revision == 1


def test_failed_draft_save_keeps_the_previous_draft(store, monkeypatch):
    case, _ = case_with_prediction(store, 1)
    kept = box(3, 3, 9, 9)
    store.save_draft(case.id, "alice", kept, base_version=None, threshold=0.5)
    before = stored_files(store)

    def failing_write(db, row, existing):
        db["drafts"].update(existing["id"], {"pixels": -1})  # part of the write happens, then it fails
        raise OSError("disk full while writing the row")

    monkeypatch.setattr(drafts, "write_row", failing_write)
    with pytest.raises(OSError, match="disk full"):
        store.save_draft(case.id, "alice", box(0, 0, 20, 20), threshold=0.7)
    monkeypatch.undo()
    draft = store.draft(case.id, "alice")
    np.testing.assert_array_equal(draft.mask, kept)
    assert (draft.revision, draft.pixels, draft.threshold) == (1, 36, 0.5)
    assert stored_files(store) == before  # no orphan PNG of the failed save


def test_conflict_is_refused_in_words_and_nothing_is_written(store):
    case, prediction_id = case_with_prediction(store, 1)
    first = store.save_correction(case.id, box(1, 1, 8, 8), annotator="alice", base_version=None)
    assert (first.version, first.replaces_version) == (1, None)
    store.save_draft(case.id, "bob", box(2, 2, 6, 6), base_version=None)
    before, rows = stored_files(store), store.counts()["corrections"]

    with pytest.raises(VersionConflict) as refused:
        store.save_correction(case.id, box(0, 0, 3, 3), annotator="bob", base_version=None,
                              prediction_id=prediction_id)
    error = refused.value
    assert isinstance(error, StorageError)
    assert (error.case_id, error.latest_version, error.latest_annotator, error.base_version, error.draft_kept) == (
        case.id, 1, "alice", None, True)
    assert str(error) == (f"Case #{case.id} was saved as v1 by alice at {minute_utc(first.created_at)} after you "
                          "opened it (it had no saved version then); reopen the case to see that version. "
                          "Your edits are kept as a draft.")
    assert stored_files(store) == before and store.counts()["corrections"] == rows
    assert store.draft(case.id, "bob").pixels == 16  # kept by the refused save

    second = store.save_correction(case.id, None, annotator="carol", status="accepted", base_version=1)
    with pytest.raises(VersionConflict) as refused:
        store.save_correction(case.id, box(0, 0, 3, 3), annotator="dave", base_version=1)
    assert str(refused.value) == (
        f"Case #{case.id} was saved as v2 by carol at {minute_utc(second.created_at)} after you opened it "
        "(you started from v1); reopen the case to see that version. Nothing was saved.")
    assert (refused.value.latest_version, refused.value.base_version, refused.value.draft_kept) == (2, 1, False)
    restored = pickle.loads(pickle.dumps(refused.value))
    assert str(restored) == str(refused.value) and restored.latest_annotator == "carol"


def test_conflict_with_a_version_that_was_never_saved(store):
    case, _ = case_with_prediction(store, 1)
    with pytest.raises(VersionConflict, match=f"Case #{case.id} has no saved version, but your editor started "
                                              "from v2") as refused:
        store.save_correction(case.id, box(1, 1, 3, 3), annotator="alice", base_version=2)
    assert refused.value.latest_version is None and refused.value.latest_annotator is None
    store.save_correction(case.id, box(1, 1, 3, 3), annotator="alice")
    with pytest.raises(VersionConflict, match="latest saved version is v1, not v4"):
        store.save_correction(case.id, box(1, 1, 3, 3), annotator="alice", base_version=4)
    with pytest.raises(StorageError, match="base version"):
        store.save_correction(case.id, box(1, 1, 3, 3), annotator="alice", base_version="1")
    assert store.counts()["corrections"] == 1


def test_versions_name_the_version_they_replace(store):
    case, _ = case_with_prediction(store, 1)
    saved = [store.save_correction(case.id, box(1, 1, 8, 8), annotator="alice", base_version=None),
             store.save_correction(case.id, box(1, 1, 9, 9), annotator="bob", base_version=1),
             store.save_correction(case.id, None, annotator="alice", status="accepted", base_version=2),
             store.save_correction(case.id, box(0, 0, 2, 2), annotator="carol")]  # unchecked, as before
    assert [(c.version, c.replaces_version) for c in saved] == [(1, None), (2, 1), (3, 2), (4, 3)]
    assert [row["replaces_version"] for row in store.case_history(case.id)] == [None, 1, 2, 3]
    other, _ = case_with_prediction(store, 2)
    assert store.save_correction(other.id, box(0, 0, 2, 2), annotator="alice",
                                 base_version=KEEP_UNCHECKED).replaces_version is None


def test_successful_save_deletes_only_the_savers_draft(store):
    case, _ = case_with_prediction(store, 1)
    other, _ = case_with_prediction(store, 2)
    store.save_draft(case.id, "alice", box(1, 1, 4, 4))
    store.save_draft(case.id, "bob", box(1, 1, 5, 5))
    store.save_draft(other.id, "alice", box(1, 1, 6, 6))
    store.save_correction(case.id, box(1, 1, 4, 4), annotator="alice", base_version=None)
    assert store.draft(case.id, "alice") is None
    assert store.draft(case.id, "bob").pixels == 16 and store.draft(other.id, "alice").pixels == 25
    assert draft_rows(store) == [(case.id, "bob", 1), (other.id, "alice", 1)]
    assert len(draft_files(store)) == 2


def test_case_history_and_latest_correction(store):
    case, prediction_id = case_with_prediction(store, 1)
    assert store.case_history(case.id) == [] and store.latest_correction(case.id) is None
    predicted = store.load_prediction(prediction_id).mask
    corrected = predicted.copy()
    corrected[0:4, 0:4] = ~corrected[0:4, 0:4]
    first = store.save_correction(case.id, corrected, annotator="alice", threshold=0.5)
    second = store.save_correction(case.id, None, annotator="bob", status="accepted", base_version=1)
    history = store.case_history(case.id)
    assert [list(row) for row in history] == [[
        "version", "status", "annotator", "created_at", "pixels_added", "pixels_erased", "pixels_changed",
        "model_id", "threshold", "replaces_version", "prediction_id"]] * 2
    added, erased = int((corrected & ~predicted).sum()), int((predicted & ~corrected).sum())
    assert added + erased == 16
    assert history[0] == {"version": 1, "status": "corrected", "annotator": "alice", "created_at": first.created_at,
                          "pixels_added": added, "pixels_erased": erased, "pixels_changed": 16,
                          "model_id": "test-model", "threshold": 0.5, "replaces_version": None,
                          "prediction_id": prediction_id}
    assert history[1] == {"version": 2, "status": "accepted", "annotator": "bob", "created_at": second.created_at,
                          "pixels_added": 0, "pixels_erased": 0, "pixels_changed": 0, "model_id": "test-model",
                          "threshold": 0.5, "replaces_version": 1, "prediction_id": prediction_id}
    latest = store.latest_correction(case.id)
    assert (latest["id"], latest["version"], latest["status"], latest["annotator"]) == (second.id, 2, "accepted", "bob")
    assert isinstance(latest["scores"], dict) and latest["replaces_version"] == 1
    np.testing.assert_array_equal(store.load_mask(latest["mask_path"]), predicted)
    with pytest.raises(StorageError, match="Case 999 does not exist"):
        store.case_history(999)
    with pytest.raises(StorageError, match="Case 999 does not exist"):
        store.latest_correction(999)


def test_concurrent_saves_from_the_same_version_one_wins(store_location, tmp_path):
    """Both threads pass the early check before either writes; the check under the write lock refuses one."""
    with AnnotationStore(store_location, files_dir=tmp_path / "files") as store:
        case, _ = case_with_prediction(store, 1)
        store.save_correction(case.id, box(1, 1, 4, 4), annotator="alice")
        before = stored_files(store)
        both_checked = threading.Barrier(2, timeout=20)
        compared = store._compared_mask

        def compared_after_both_checked(*args, **kwargs):
            both_checked.wait()
            return compared(*args, **kwargs)

        store._compared_mask = compared_after_both_checked
        outcomes = {}

        def save(annotator, mask):
            try:
                outcomes[annotator] = store.save_correction(case.id, mask, annotator=annotator, base_version=1)
            except Exception as exc:  # recorded, checked below
                outcomes[annotator] = exc

        threads = [threading.Thread(target=save, args=("bob", box(0, 0, 5, 5))),
                   threading.Thread(target=save, args=("carol", box(0, 0, 6, 6)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        kinds = sorted(type(outcome).__name__ for outcome in outcomes.values())
        assert kinds == ["Correction", "VersionConflict"]
        winner = next(name for name, outcome in outcomes.items() if not isinstance(outcome, Exception))
        loser = next(outcome for outcome in outcomes.values() if isinstance(outcome, Exception))
        assert (outcomes[winner].version, outcomes[winner].replaces_version) == (2, 1)
        assert (loser.latest_version, loser.latest_annotator, loser.base_version) == (2, winner, 1)
        assert [row["annotator"] for row in store.case_history(case.id)] == ["alice", winner]
        # The winner's two mask files, nothing of the refused save.
        assert len(stored_files(store)) == len(before) + 2


def test_service_passes_drafts_and_base_version_through(store, tmp_path):
    from medclipseg.annotation.scratch import ScratchSpace

    service = AnnotationService(store, scratch=ScratchSpace(parent=tmp_path / "scratch"))
    try:
        case, _ = case_with_prediction(store, 1)
        service.save_draft(case.id, "alice", box(1, 1, 4, 4), base_version=None)
        assert service.draft(case.id, "alice").pixels == 9
        saved = service.save(case.id, box(1, 1, 4, 4), annotator="alice", base_version=None)
        assert saved.version == 1 and service.draft(case.id, "alice") is None
        with pytest.raises(VersionConflict):
            service.save(case.id, box(1, 1, 5, 5), annotator="bob", base_version=None)
        assert service.save(case.id, box(1, 1, 5, 5), annotator="bob").version == 2  # unchecked by default
        assert [row["version"] for row in service.case_history(case.id)] == [1, 2]
        assert service.latest_correction(case.id)["annotator"] == "bob"
        service.save_draft(case.id, "bob", box(1, 1, 4, 4))
        assert service.discard_draft(case.id, "bob") is True
    finally:
        service.close()
