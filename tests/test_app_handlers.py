"""The app's handlers without a server: a real AnnotationService (SQLite in tmp).

The editor's side is driven the way the browser drives it: the case value the server sends is
decoded, the editor's value (the mask as runs) is built from masks computed here with numpy on the
stored probability map, and the rows and files the store holds afterwards are checked. Cases come
from synthetic predictions (no model run); upload, segment and ingest use the demo weights.
"""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from app_support import ROOT, fill_queue, write_text_as_png
from medclipseg.app import handlers
from medclipseg.app.handlers import KEEP, EditorSession, Screen
from medclipseg.io.masks import mask_from_runs, mask_to_runs

EXAMPLE = ROOT / "assets" / "examples" / "colonoscopy.png"
PROMPT = "Endoscopic colon image showing one medium oval-shaped hyperplastic growth on the left."
SAMPLES = 4
HEIGHT, WIDTH = 48, 64  # fill_queue's cases


@pytest.fixture(scope="module")
def predictor():
    from medclipseg.inference.predictor import Predictor

    return Predictor.from_pretrained("demo", device="cpu")


def new_service(tmp_path, predictor=None):
    from medclipseg.annotation.scratch import ScratchSpace
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(tmp_path / "db" / "annotations.db")
    (tmp_path / "tmp").mkdir()
    return AnnotationService(store, predictor, num_samples=SAMPLES, scratch=ScratchSpace(parent=tmp_path / "tmp"))


@pytest.fixture()
def service(tmp_path, predictor):
    """With the demo model (upload, segment, ingest)."""
    service = new_service(tmp_path, predictor)
    yield service
    service.close()
    service.store.close()


@pytest.fixture()
def cases(tmp_path):
    """Without a model: the queue holds synthetic cases, which is all the editor needs."""
    service = new_service(tmp_path)
    yield service
    service.close()
    service.store.close()


def rows(service, sql, params=()):
    connection = sqlite3.connect(service.store.path)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def corrections(service):
    return rows(service, "select version, annotator, status, pixels_added, pixels_erased, replaces_version, "
                         "mask_path from corrections order by version")


# ------------------------------------------------------------------------------ the browser's side, in numpy


def start_mask(payload) -> np.ndarray:
    return mask_from_runs(payload["start_runs"], (payload["height"], payload["width"]))


def model_mask(service, prediction_id, threshold) -> np.ndarray:
    """The model's mask as the editor computes it: stored float32 probability > threshold (float32)."""
    probability = service.store.load_prediction(prediction_id).probability
    assert probability.dtype == np.float32
    return probability > np.float32(threshold)


def edit_value(service, payload, mask, *, threshold=None, revision=1, dirty=True, base_version="from payload",
               uncertainty_threshold=None, case_id=None):
    """The editor's value after edits leaving ``mask`` (see currentValue in mask_editor.js)."""
    threshold = payload["threshold"] if threshold is None else threshold
    model = model_mask(service, payload["prediction_id"], threshold)
    return {"kind": "edit", "session": payload["session"],
            "case_id": payload["case_id"] if case_id is None else case_id, "prediction_id": payload["prediction_id"],
            "base_version": payload["base_version"] if base_version == "from payload" else base_version,
            "threshold": threshold,
            "uncertainty_threshold": payload["uncertainty_threshold"] if uncertainty_threshold is None
            else uncertainty_threshold,
            "width": payload["width"], "height": payload["height"], "revision": revision, "saved_revision": 0,
            "dirty": dirty, "edited": bool((mask != model).any()), "runs": mask_to_runs(mask)}


def painted(mask, box, value=True) -> np.ndarray:
    """``mask`` with the rectangle (top, left, bottom, right) set to ``value``: a brush or eraser drag."""
    top, left, bottom, right = box
    changed = mask.copy()
    changed[top:bottom, left:right] = value
    return changed


def open_first(service, annotator="alice", **view):
    """Fill the queue with one case and open it in the editor; (screen, case id, prediction id)."""
    (case_id,) = fill_queue(service.store, 1)
    prediction_id = service.store.latest_prediction_id(case_id)
    return handlers.open_case(service, case_id, prediction_id, annotator, **view), case_id, prediction_id


def differ_text(added, erased):
    return f"{added + erased:,} px differ from the model (+{added:,} / −{erased:,})"


# ------------------------------------------------------------------------------ opening a case


def test_open_case_starts_from_the_model_mask(cases):
    screen, case_id, prediction_id = open_first(cases, threshold=0.4, uncertainty_threshold=0.3, opacity=0.7)
    payload = screen.editor
    assert set(screen.changed()) == {"session", "editor", "stale_draft", "skip_confirm", "history", "numbers", "queue"}
    assert screen.skip_confirm is False   # a case opening hides the "Skip anyway" of the case before
    assert screen.session == EditorSession(case_id=case_id, prediction_id=prediction_id, name="img0000.png",
                                           shape=(HEIGHT, WIDTH), pixel_spacing=None)
    assert (payload["kind"], payload["start"], payload["base_version"]) == ("case", "prediction", None)
    assert (payload["threshold"], payload["uncertainty_threshold"], payload["opacity"]) == (0.4, 0.3, 0.7)
    expected = model_mask(cases, prediction_id, 0.4)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(start_mask(payload), expected)
    assert "model's mask" in payload["start_note"] and "nothing saved" in payload["start_note"]
    assert f"Case #{case_id} · img0000.png · “lesion 0”" == payload["title"]
    assert screen.history == f"**History of case #{case_id}**: no saved version yet."
    assert f"Mask area | {int(expected.sum()):,} px" in screen.numbers and differ_text(0, 0) in screen.numbers
    assert screen.queue.startswith("**Queue**: 1 unreviewed")
    # Without a threshold the prediction's own one is used.
    default = handlers.open_case(cases, case_id, prediction_id, "alice").editor
    assert default["threshold"] == 0.5
    np.testing.assert_array_equal(start_mask(default), model_mask(cases, prediction_id, 0.5))


def test_open_case_shows_the_latest_saved_version_then_the_draft(cases):
    _, case_id, prediction_id = open_first(cases)
    model = model_mask(cases, prediction_id, 0.5)
    first = painted(model, (0, 0, 10, 10))
    cases.save(case_id, first, annotator="bob", prediction_id=prediction_id, threshold=0.45, base_version=None)
    shown = handlers.open_case(cases, case_id, prediction_id, "alice", threshold=0.7).editor
    assert (shown["start"], shown["base_version"], shown["threshold"]) == ("version", 1, 0.45)
    np.testing.assert_array_equal(start_mask(shown), first)
    assert "latest saved version, v1 (corrected) by bob" in shown["start_note"] and "makes v2" in shown["start_note"]

    second = painted(first, (20, 20, 30, 40), False)
    cases.save(case_id, second, annotator="carol", prediction_id=prediction_id, threshold=0.45, base_version=1)
    again = handlers.open_case(cases, case_id, prediction_id, "alice")
    assert (again.editor["start"], again.editor["base_version"]) == ("version", 2)
    np.testing.assert_array_equal(start_mask(again.editor), second)
    assert re.search(r"\| v2 \| corrected \| carol \|.*\n\| v1 \| corrected \| bob \|", again.history)

    # alice's draft (started from v2) comes first for alice, and only for her.
    draft = painted(second, (40, 50, 48, 64))
    cases.save_draft(case_id, "alice", draft, prediction_id=prediction_id, base_version=2, threshold=0.3)
    mine = handlers.open_case(cases, case_id, prediction_id, "alice").editor
    assert (mine["start"], mine["base_version"], mine["threshold"]) == ("draft", 2, 0.3)
    np.testing.assert_array_equal(start_mask(mine), draft)
    assert mine["start_note"].startswith(f"Restored your unsaved edits of case #{case_id}")
    assert "ask you to reopen" not in mine["start_note"]
    theirs = handlers.open_case(cases, case_id, prediction_id, "bob").editor
    assert theirs["start"] == "version"
    np.testing.assert_array_equal(start_mask(theirs), second)

    # A draft older than the latest version: the latest version opens (never hidden under the draft),
    # the draft is kept, and "Use my draft" puts it back over that version, knowingly.
    third = painted(second, (0, 30, 5, 40))
    cases.save(case_id, third, annotator="dave", prediction_id=prediction_id, threshold=0.45, base_version=2)
    reopened = handlers.open_case(cases, case_id, prediction_id, "alice")
    stale = reopened.editor
    assert (stale["start"], stale["base_version"], reopened.stale_draft) == ("version", 3, True)
    np.testing.assert_array_equal(start_mask(stale), third)
    assert "v3 (corrected) by dave" in stale["start_note"] and "*Use my draft*" in stale["start_note"]
    assert cases.draft(case_id, "alice") is not None
    restored = handlers.use_draft(cases, reopened.session, "alice")
    assert (restored.editor["start"], restored.editor["base_version"], restored.stale_draft) == ("draft", 3, False)
    np.testing.assert_array_equal(start_mask(restored.editor), draft)
    assert "a save makes v4, replacing it" in restored.status
    saved = handlers.save(cases, restored.session, edit_value(cases, restored.editor, draft, threshold=0.3), "alice")
    assert "replaces v3" in saved.status
    assert cases.store.latest_correction(case_id)["replaces_version"] == 3
    assert handlers.use_draft(cases, None, "alice").status.startswith("**Error:**")


# ------------------------------------------------------------------------------ edits and drafts


def test_editor_changed_keeps_a_draft_and_counts_the_edit(cases):
    screen, case_id, prediction_id = open_first(cases)
    session, payload = screen.session, screen.editor
    model = start_mask(payload)
    edited = painted(painted(model, (0, 0, 6, 8)), (20, 24, 30, 40), False)
    added, erased = int((edited & ~model).sum()), int((model & ~edited).sum())
    assert added and erased

    changed = handlers.editor_changed(cases, session, edit_value(cases, payload, edited, revision=4), "alice")
    assert set(changed.changed()) == {"numbers"}
    assert differ_text(added, erased) in changed.numbers
    assert f"Mask area | {int(edited.sum()):,} px" in changed.numbers
    draft = cases.draft(case_id, "alice")
    np.testing.assert_array_equal(draft.mask, edited)
    assert (draft.prediction_id, draft.base_version, draft.threshold, draft.revision) == (prediction_id, None, 0.5, 1)
    assert rows(cases, "select count(*) from corrections") == [(0,)]

    # A threshold change alone: the numbers follow the model's mask at the new threshold.
    looser = model_mask(cases, prediction_id, 0.3)
    moved = handlers.editor_changed(cases, session, edit_value(cases, payload, looser, threshold=0.3, revision=5),
                                    "alice")
    assert differ_text(0, 0) in moved.numbers and "0.30 / 8" in moved.numbers
    assert cases.draft(case_id, "alice").revision == 2 and cases.draft(case_id, "alice").threshold == 0.3
    np.testing.assert_array_equal(cases.draft(case_id, "alice").mask, looser)

    # Values of another case or of another kind change nothing.
    other = edit_value(cases, payload, model, case_id=case_id + 1)
    for value in (other, payload, {"kind": "saved", "case_id": case_id}, None, "edit"):
        assert handlers.editor_changed(cases, session, value, "alice").changed() == {}
    assert handlers.editor_changed(cases, None, edit_value(cases, payload, model), "alice").changed() == {}
    assert cases.draft(case_id, "alice").revision == 2

    # A clean editor (nothing since the last save) writes no draft; an edit without a name asks for one.
    handlers.editor_changed(cases, session, edit_value(cases, payload, model, dirty=False), "bob")
    assert cases.draft(case_id, "bob") is None
    nameless = handlers.editor_changed(cases, session, edit_value(cases, payload, edited), None)
    assert nameless.status.startswith("**Error:** These edits are not kept: Type your name in the Annotator box")
    broken = dict(edit_value(cases, payload, edited), runs=[5])
    assert "covers 5 pixels" in handlers.editor_changed(cases, session, broken, "alice").status


def test_reopen_after_a_reload_returns_the_draft(cases):
    screen, case_id, _ = open_first(cases)
    edited = painted(start_mask(screen.editor), (5, 5, 15, 25))
    handlers.editor_changed(cases, screen.session, edit_value(cases, screen.editor, edited), "alice")
    reopened = handlers.reopen(cases, str(case_id), "alice")  # the browser keeps the id as text
    assert reopened.session.case_id == case_id and reopened.editor["start"] == "draft"
    np.testing.assert_array_equal(start_mask(reopened.editor), edited)
    assert reopened.status == reopened.editor["start_note"] and "Restored your unsaved edits" in reopened.status
    assert handlers.reopen(cases, case_id, "bob").editor["start"] == "prediction"
    for nothing in (None, "", "seven", 999):
        assert handlers.reopen(cases, nothing, "alice").changed() == {}


def test_next_case_keeps_the_unsaved_edits_and_opens_another_case(cases):
    from medclipseg.annotation.queue import DEFAULT_ACQUISITION as ORDER

    ids = fill_queue(cases.store, 2)
    first = handlers.next_case(cases, ORDER, "alice")
    case_a = first.session.case_id
    edited = painted(start_mask(first.editor), (2, 2, 10, 20))
    # Next pressed while the edit is still in the editor's debounce: the value it carries is the only copy.
    second = handlers.next_case(cases, ORDER, "alice", edit_value(cases, first.editor, edited), session=first.session)
    case_b = second.session.case_id
    assert case_b != case_a and set(ids) == {case_a, case_b}, second.status
    np.testing.assert_array_equal(cases.draft(case_a, "alice").mask, edited)
    assert cases.store.get_case(case_a).assigned_to is None and cases.store.get_case(case_b).assigned_to == "alice"
    # Next again: the case left earlier (still ranked first) comes back, with the draft.
    third = handlers.next_case(cases, ORDER, "alice", second.editor, session=second.session)
    assert third.session.case_id == case_a and third.editor["start"] == "draft"
    np.testing.assert_array_equal(start_mask(third.editor), edited)
    # No other case left: the open one stays open, and stays reserved.
    cases.skip(case_b, annotator="alice")
    alone = handlers.next_case(cases, ORDER, "alice", third.editor, session=third.session)
    assert alone.session is KEEP and alone.editor is KEEP
    assert alone.status == f"No other unreviewed case in the queue: case #{case_a} stays open."
    assert cases.store.get_case(case_a).assigned_to == "alice"


def test_stayed_says_where():
    session = EditorSession(case_id=4, prediction_id=9, name="a.png", shape=(2, 2))
    assert handlers.stayed(session).changed() == {"status": "Stayed on case #4: save, accept or undo your edits first."}
    assert handlers.stayed(None).status.startswith("Stayed on the open case")


# ------------------------------------------------------------------------------ saving


def test_save_a_correction(cases):
    screen, case_id, _ = open_first(cases)
    session, payload = screen.session, screen.editor
    model = start_mask(payload)
    edited = painted(painted(model, (0, 0, 12, 16)), (16, 16, 40, 48), False)
    added, erased = int((edited & ~model).sum()), int((model & ~edited).sum())
    value = edit_value(cases, payload, edited, revision=6)
    handlers.editor_changed(cases, session, value, "alice")
    saved = handlers.save(cases, session, value, "alice")
    assert saved.status == (f"Saved correction v1 of case #{case_id} by **alice**: {differ_text(added, erased)}.")
    assert saved.editor == {"kind": "saved", "case_id": case_id, "base_version": 1, "revision": 6,
                            "message": saved.status.replace("**", "")}
    assert "1 corrected" in saved.queue and re.search(r"\| v1 \| corrected \| alice \|", saved.history)
    ((version, annotator, status, db_added, db_erased, replaces, mask_path),) = corrections(cases)
    assert (version, annotator, status, db_added, db_erased, replaces) == (1, "alice", "corrected", added, erased, None)
    np.testing.assert_array_equal(cases.store.load_mask(mask_path), edited)
    assert cases.draft(case_id, "alice") is None  # the draft is gone once saved
    assert rows(cases, "select status from cases where id = ?", (case_id,)) == [("corrected",)]

    # Saving again what was just saved writes nothing.
    clean = edit_value(cases, payload, edited, revision=6, dirty=False, base_version=1)
    nothing = handlers.save(cases, session, clean, "alice")
    assert nothing.changed() == {"status": "Nothing saved: the mask is the same as v1, the latest version."}
    assert len(corrections(cases)) == 1

    # A further edit makes v2, which names v1 as the version it replaces.
    further = painted(edited, (44, 0, 48, 64))
    second = handlers.save(cases, session, edit_value(cases, payload, further, revision=9, base_version=1), "bob")
    more_added = int((further & ~model).sum())
    assert second.status == (f"Saved correction v2 of case #{case_id} by **bob**: "
                             f"{differ_text(more_added, erased)}; replaces v1.")
    assert second.editor["kind"] == "saved" and second.editor["base_version"] == 2
    assert [row[:3] + (row[5],) for row in corrections(cases)] == [(1, "alice", "corrected", None),
                                                                  (2, "bob", "corrected", 1)]
    np.testing.assert_array_equal(cases.store.load_mask(corrections(cases)[1][6]), further)


def test_save_of_the_models_own_mask_is_an_acceptance(cases):
    screen, _, prediction_id = open_first(cases)
    payload = screen.editor
    # The threshold moved, no pixel painted: the model's mask at 0.35 is saved as accepted.
    at_035 = model_mask(cases, prediction_id, 0.35)
    saved = handlers.save(cases, screen.session, edit_value(cases, payload, at_035, threshold=0.35), "alice")
    assert "no pixel changed" in saved.status and "accepted as predicted" in saved.status
    assert saved.status.startswith("The mask is the model's own at threshold 0.35")
    assert saved.editor["kind"] == "saved" and saved.editor["base_version"] == 1
    ((version, _, status, added, erased, replaces, mask_path),) = corrections(cases)
    assert (version, status, added, erased, replaces) == (1, "accepted", 0, 0, None)
    np.testing.assert_array_equal(cases.store.load_mask(mask_path), at_035)
    assert rows(cases, "select threshold from corrections") == [(pytest.approx(0.35),)]
    # The same mask again, now based on v1: nothing saved.
    again = handlers.save(cases, screen.session, edit_value(cases, payload, at_035, threshold=0.35,
                                                            base_version=1), "alice")
    assert again.status.startswith("Nothing saved") and len(corrections(cases)) == 1


def test_a_conflicting_save_names_the_other_annotator_and_writes_nothing(cases):
    screen, case_id, prediction_id = open_first(cases)
    alice, payload = screen.session, screen.editor
    mine = painted(start_mask(payload), (0, 0, 20, 20))
    value = edit_value(cases, payload, mine, revision=3)
    handlers.editor_changed(cases, alice, value, "alice")

    bob = handlers.open_case(cases, case_id, prediction_id, "bob")
    assert bob.editor["base_version"] is None
    handlers.save(cases, bob.session, edit_value(cases, bob.editor, start_mask(bob.editor)), "bob")
    before = corrections(cases)
    files_before = sorted(p.name for p in cases.store.files_dir.rglob("*") if p.is_file())

    refused = handlers.save(cases, alice, value, "alice")
    assert refused.status.startswith(f"**Error:** Not saved. Case #{case_id} was saved as v1 by bob at ")
    assert "(you started from no saved version)" in refused.status and "*Use my draft*" in refused.status
    # The editor now shows bob's v1; alice's edits are her draft, offered back by the button.
    assert (refused.editor["start"], refused.editor["base_version"], refused.stale_draft) == ("version", 1, True)
    np.testing.assert_array_equal(start_mask(refused.editor), cases.store.load_mask(
        cases.store.latest_correction(case_id)["mask_path"]))
    assert corrections(cases) == before
    not_drafts = [name for name in files_before if "-draft" not in name]
    assert sorted(p.name for p in cases.store.files_dir.rglob("*") if p.is_file() and "-draft" not in p.name) \
        == not_drafts
    np.testing.assert_array_equal(cases.draft(case_id, "alice").mask, mine)

    # Accept with edits goes through the same check.
    accepted = handlers.accept(cases, alice, value, "alice")
    assert accepted.status.startswith(f"**Error:** Not saved. Case #{case_id} was saved as v1 by bob")
    assert corrections(cases) == before

    # Knowingly over bob's version: the draft back, then a save that names v1 as the one it replaces.
    mine_again = handlers.use_draft(cases, refused.session, "alice")
    np.testing.assert_array_equal(start_mask(mine_again.editor), mine)
    saved = handlers.save(cases, mine_again.session, edit_value(cases, mine_again.editor, mine), "alice")
    assert "Saved correction v2" in saved.status and "replaces v1" in saved.status


def test_accept_with_and_without_edits(cases):
    ids = fill_queue(cases.store, 2)
    first = handlers.next_case(cases, "random", "bob")
    assert first.session.case_id in ids and first.prompt.startswith("lesion ")
    assert f"Case #{first.session.case_id}" in first.status and "ranked by Random order" in first.status
    model = start_mask(first.editor)
    edited = painted(model, (0, 0, 8, 8))
    added = int((edited & ~model).sum())
    accepted = handlers.accept(cases, first.session, edit_value(cases, first.editor, edited), "bob")
    assert accepted.status.startswith("The mask shown differs from the model's, so *Accept* saved it as a "
                                      "correction")
    assert f"Saved correction v1 of case #{first.session.case_id} by **bob**: {differ_text(added, 0)}" in \
        accepted.status
    assert accepted.editor["kind"] == "saved" and accepted.editor["base_version"] == 1
    ((_, _, status, db_added, _, _, mask_path),) = corrections(cases)
    assert (status, db_added) == ("corrected", added)
    np.testing.assert_array_equal(cases.store.load_mask(mask_path), edited)

    second = handlers.next_case(cases, "random", "bob")
    assert second.session.case_id not in (None, first.session.case_id)
    plain = handlers.accept(cases, second.session, edit_value(cases, second.editor, start_mask(second.editor)), "bob")
    assert plain.status == (f"Case #{second.session.case_id} accepted as predicted (threshold 0.50) by **bob**: v1.")
    assert plain.editor == {"kind": "saved", "case_id": second.session.case_id, "base_version": 1, "revision": 1,
                            "message": plain.status.replace("**", "")}
    assert "1 corrected" in plain.queue and "1 accepted" in plain.queue
    (mask_path, status), = rows(cases, "select mask_path, status from corrections where case_id = ?",
                                (second.session.case_id,))
    assert status == "accepted"
    np.testing.assert_array_equal(cases.store.load_mask(mask_path),
                                  model_mask(cases, second.session.prediction_id, 0.5))
    empty = handlers.next_case(cases, "random", "bob")
    assert empty.session is KEEP and empty.status == "No unreviewed cases left in the queue."


def test_skip_closes_the_editor_and_keeps_the_draft(cases):
    screen, case_id, _ = open_first(cases)
    edited = painted(start_mask(screen.editor), (0, 0, 4, 4))
    handlers.editor_changed(cases, screen.session, edit_value(cases, screen.editor, edited), "alice")
    skipped = handlers.skip(cases, screen.session, "alice")
    assert skipped.session is None and skipped.status == f"Case #{case_id} skipped."
    assert skipped.editor["kind"] == "closed" and skipped.editor["message"].startswith(f"Case #{case_id} skipped.")
    assert (skipped.history, skipped.numbers) == ("", "") and "1 skipped" in skipped.queue
    assert cases.store.get_case(case_id).status == "skipped"
    assert rows(cases, "select count(*) from corrections") == [(0,)]  # a skip saves no mask
    np.testing.assert_array_equal(cases.draft(case_id, "alice").mask, edited)


def test_skip_of_a_saved_case_asks_first_and_passes_the_confirmation_on(cases):
    from medclipseg.annotation.service import ConfirmationNeeded

    screen, case_id, _ = open_first(cases)
    handlers.save(cases, screen.session, edit_value(cases, screen.editor, painted(start_mask(screen.editor),
                                                                                (0, 0, 6, 6))), "alice")
    with pytest.raises(ConfirmationNeeded):  # what the page's confirmation dialog is built on
        cases.skip(case_id, annotator="alice")
    refused = handlers.skip(cases, screen.session, "alice")
    assert refused.status.startswith("**Error:**") and "v1" in refused.status and "alice" in refused.status
    assert "out of export and retraining" in refused.status and "Skip anyway" in refused.status
    assert refused.skip_confirm is True and refused.session is KEEP   # the page shows "Skip anyway"
    assert cases.store.get_case(case_id).status == "corrected"
    skipped = handlers.skip(cases, screen.session, "alice", discard_saved=True)
    assert skipped.status == f"Case #{case_id} skipped." and cases.store.get_case(case_id).status == "skipped"
    assert skipped.skip_confirm is False


def _lying(service, payload, mask, flag):
    """The editor's value for ``mask`` with its ``edited`` flag set to ``flag`` whatever the mask is."""
    return dict(edit_value(service, payload, mask), edited=flag)


def test_the_server_decides_corrected_or_accepted_not_the_pages_flag(cases):
    """The page's ``edited`` flag is a claim: the server compares the mask itself with the model's mask
    (and the saved version it started from) and saves accordingly, whichever way the flag lies."""
    ids = fill_queue(cases.store, 4, seed=40)
    opened = [handlers.open_case(cases, case_id, cases.store.latest_prediction_id(case_id), "alice") for case_id in ids]
    saved = []
    for index, (action, differs) in enumerate(((handlers.save, True), (handlers.save, False),
                                               (handlers.accept, True), (handlers.accept, False))):
        screen = opened[index]
        model = model_mask(cases, screen.editor["prediction_id"], screen.editor["threshold"])
        mask = painted(model, (2, 2, 14, 20), True) if differs else model
        assert (mask != model).any() == differs
        result = action(cases, screen.session, _lying(cases, screen.editor, mask, flag=not differs), "alice")
        assert not result.status.startswith("**Error"), result.status
        (status, added, mask_path), = rows(cases, "select status, pixels_added, mask_path from corrections "
                                                  "where case_id = ?", (ids[index],))
        assert status == ("corrected" if differs else "accepted")
        assert added == int((mask & ~model).sum())
        np.testing.assert_array_equal(cases.store.load_mask(mask_path), mask)  # the mask sent, never dropped
        saved.append(status)
    assert saved == ["corrected", "accepted", "corrected", "accepted"]
    # From a saved version: the model's own mask again, flagged as unedited, is a new version (accepted);
    # the saved version's mask again, flagged as edited, saves nothing.
    screen = handlers.open_case(cases, ids[0], cases.store.latest_prediction_id(ids[0]), "alice")
    version_mask = start_mask(screen.editor)
    unchanged = handlers.save(cases, screen.session, _lying(cases, screen.editor, version_mask, flag=True), "alice")
    assert unchanged.status.startswith("Nothing saved")
    model = model_mask(cases, screen.editor["prediction_id"], screen.editor["threshold"])
    back = handlers.save(cases, screen.session, _lying(cases, screen.editor, model, flag=True), "alice")
    assert "accepted as predicted" in back.status
    assert rows(cases, "select version, status from corrections where case_id = ? order by version", (ids[0],)) == \
        [(1, "corrected"), (2, "accepted")]


def test_refusals_without_a_case_or_a_mask(cases):
    for screen in (handlers.save(cases, None, None, "alice"), handlers.accept(cases, None, None, "alice"),
                   handlers.skip(cases, None, "alice")):
        assert screen.status.startswith("**Error:** Segment an image or take a case")
    assert "annotator name is required" in handlers.next_case(cases, "random", "").status
    screen, case_id, _ = open_first(cases)
    for action in (handlers.save, handlers.accept):
        assert "holds no mask yet" in action(cases, screen.session, None, "alice").status
        assert "holds no mask yet" in action(cases, screen.session, screen.editor, "alice").status
        nameless = action(cases, screen.session, edit_value(cases, screen.editor, start_mask(screen.editor)), None)
        assert nameless.status.startswith("**Error:** Not saved. Type your name in the Annotator box")
    assert "annotator name is required" in handlers.skip(cases, screen.session, " ").status
    assert rows(cases, "select count(*) from corrections") == [(0,)]
    assert cases.store.get_case(case_id).status == "unreviewed"


# ------------------------------------------------------------------------------ history and progress


def test_history_lists_versions_newest_first(cases):
    _, case_id, prediction_id = open_first(cases)
    model = model_mask(cases, prediction_id, 0.5)
    first = painted(painted(model, (0, 0, 5, 7)), (10, 10, 40, 50), False)
    cases.save(case_id, first, annotator="bob", prediction_id=prediction_id, threshold=0.5, base_version=None)
    cases.save(case_id, annotator="carol", status="accepted", prediction_id=prediction_id, threshold=0.5,
               base_version=1)
    text = handlers.history_markdown(cases, case_id)
    lines = text.splitlines()
    assert lines[0] == f"**History of case #{case_id}** (newest first)"
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| v")]
    created = dict(rows(cases, "select version, created_at from corrections"))

    def when(version):
        return datetime.fromisoformat(created[version]).strftime("%Y-%m-%d %H:%M UTC")

    added, erased = int((first & ~model).sum()), int((model & ~first).sum())
    assert table == [
        ["v2", "accepted", "carol", when(2), "0 (+0 / −0)", "`synthetic@0`", "v1"],
        ["v1", "corrected", "bob", when(1), f"{added + erased:,} (+{added:,} / −{erased:,})", "`synthetic@0`", "—"],
    ]


def test_ingest_progress_shows_done_of_total():
    running = handlers.ingest_progress_html(3, 12, "img_<3>.png")
    assert 'data-done="3"' in running and 'data-total="12"' in running
    assert "3 / 12 images · img_&lt;3&gt;.png" in running and "<3>" not in running
    assert re.search(r"width:25\.0%", running)
    big = handlers.ingest_progress_html(1234, 5000, "x")
    assert "1,234 / 5,000 images" in big and "width:24.7%" in big
    done = handlers.ingest_progress_html(None, None, "12 images added")
    assert "width:100.0%" in done and ">12 images added<" in done and 'data-done=""' in done
    assert "width:0.0%" in handlers.ingest_progress_html(0, 0, "Starting")


# ------------------------------------------------------------------------------ with the model: upload, segment, ingest


def test_upload_segment_save_and_segment_again(service):
    shown = handlers.upload(service, str(EXAMPLE))
    assert shown.preview.ndim == 3 and "colonoscopy.png" in shown.image_info and shown.windowed is False
    assert shown.upload is KEEP  # a readable file stays in the box

    screen = handlers.segment(service, str(EXAMPLE), PROMPT, samples=SAMPLES, annotator="alice")
    session, payload = screen.session, screen.editor
    assert isinstance(session, EditorSession), screen.status
    assert screen.status.startswith("Segmented **colonoscopy.png**") and f"{SAMPLES} samples" in screen.status
    assert screen.status.endswith(payload["start_note"]) and payload["start"] == "prediction"
    height, width = cv2.imread(str(EXAMPLE)).shape[:2]
    assert session.shape == (height, width) and (payload["height"], payload["width"]) == (height, width)
    np.testing.assert_array_equal(start_mask(payload), model_mask(service, session.prediction_id, 0.5))
    assert rows(service, "select status, assigned_to, source from cases") == [("unreviewed", "alice", "upload")]

    edited = painted(start_mask(payload), (0, 0, height // 4, width // 4))
    saved = handlers.save(service, session, edit_value(service, payload, edited), "alice")
    assert saved.status.startswith(f"Saved correction v1 of case #{session.case_id} by **alice**"), saved.status

    # The same image and prompt again: the same case, opened at its saved version, not the raw prediction.
    again = handlers.segment(service, str(EXAMPLE), PROMPT, samples=SAMPLES, annotator="bob",
                             editor_value=dict(saved.editor, uncertainty_threshold=0.5))
    assert again.session.case_id == session.case_id and again.session.prediction_id != session.prediction_id
    assert (again.editor["start"], again.editor["base_version"]) == ("version", 1)
    assert again.editor["uncertainty_threshold"] == 0.5  # the uncertainty view carries over to the next case
    np.testing.assert_array_equal(start_mask(again.editor), edited)
    assert "latest saved version, v1 (corrected) by alice" in again.status
    assert rows(service, "select count(*) from cases") == [(1,)]

    # Without a name the case opens for viewing; the status says how to edit it (the editor locks itself).
    nameless = handlers.segment(service, str(EXAMPLE), PROMPT, samples=SAMPLES, annotator=None)
    assert nameless.session.case_id == session.case_id
    assert nameless.status.endswith("**Type your name in Annotator to edit this case (drafts and versions are kept "
                                    "under your name).**")


def test_unreadable_volumes_are_refused_in_words(cases, tmp_path):
    # Volumes are read (tests/test_app_volume_handlers.py); a file that is no NIfTI is refused by name.
    import gzip

    for name in ("brain.nii.gz", "BRAIN.NII"):
        volume = tmp_path / name
        volume.write_bytes(gzip.compress(b"\0" * 352))
        shown = handlers.upload(cases, str(volume))
        assert shown.upload is None and shown.preview is None and shown.dicom_controls is False
        assert shown.status.startswith(f"**Error:** {name}: ") and "NIfTI" in shown.status
        assert shown.image_info == ""   # one message, in the status line


def test_a_model_that_found_nothing_says_so_and_what_to_do(cases):
    from app_support import ranked_case

    probability = np.full((HEIGHT, WIDTH), 0.02, np.float32)
    probability[10, 10] = 0.2
    case_id, prediction_id = ranked_case(cases.store, probability, rank=1, prompt="the left putamen")
    note = handlers.open_case(cases, case_id, prediction_id, "alice").editor["start_note"]
    assert note.startswith("The model found nothing for “the left putamen” (no pixel above the threshold 0.50; the "
                           "highest probability is 0.20). Draw the structure with the brush (B) and save"), note
    assert "Model tab" in note and note.endswith("nothing saved for this case yet.")
    (found,) = fill_queue(cases.store, 1)
    assert "found nothing" not in handlers.open_case(cases, found, cases.store.latest_prediction_id(found),
                                                     "alice").editor["start_note"]


def test_segment_refusals_write_nothing(service, tmp_path):
    before = rows(service, "select (select count(*) from cases), (select count(*) from corrections)")
    assert handlers.segment(service, None, PROMPT, samples=SAMPLES).status == \
        "**Error:** Upload an image (or pick an example) first."
    too_many = handlers.segment(service, str(EXAMPLE), PROMPT, samples=100_000)
    assert "between 1 and 64" in too_many.status and too_many.session is KEEP
    assert "Prompt is empty" in handlers.segment(service, str(EXAMPLE), " ", samples=4).status
    bad = handlers.upload(service, str(write_text_as_png(tmp_path / "notes.png")))
    assert bad.upload is None and "not a recognised image" in bad.status
    assert rows(service, "select (select count(*) from cases), (select count(*) from corrections)") == before


def test_ingest_and_export(service, tmp_path):
    files = [str(ROOT / "assets" / "examples" / name) for name in ("dermoscopy.png", "chest_xray.png")]
    assert "Give one prompt" in handlers.ingest(service, files, "", None, "", SAMPLES).ingest_report
    report = handlers.ingest(service, files, "A lesion in the image.", None, "first", SAMPLES)
    assert report.ingest_report.startswith("2 images added") and "2 unreviewed" in report.queue
    assert sorted(rows(service, "select original_name, batch from cases")) == [("chest_xray.png", "first"),
                                                                              ("dermoscopy.png", "first")]
    nothing = handlers.export(service, 0.1, 0.2, 0, ["corrected", "accepted"])
    assert nothing.export_file is None and nothing.export_report.startswith("**Error:**")

    opened = handlers.next_case(service, "image_entropy", "heidi")
    handlers.accept(service, opened.session, edit_value(service, opened.editor, start_mask(opened.editor)), "heidi")
    exported = handlers.export(service, 0.0, 0.0, 0, ["corrected", "accepted"])
    assert exported.export_report.startswith("Exported 1 cases")
    with zipfile.ZipFile(exported.export_file) as archive:
        assert any(name.endswith("manifest.json") for name in archive.namelist())
    # The archive lives in the service's scratch space, which closing the service empties.
    scratch_root = service.scratch.root
    assert Path(exported.export_file).is_relative_to(scratch_root)
    service.close()
    assert not scratch_root.exists()


def test_window_presets_and_examples():
    assert handlers.choose_preset("Lung").changed() == {"window_center": -600, "window_width": 1500}
    assert handlers.choose_preset(handlers.HEADER_WINDOW).changed() == {}
    examples = handlers.load_examples()
    picked = handlers.choose_example(examples, 1)
    assert picked.upload.endswith("brain_mri.png") and "meningioma" in picked.prompt
    assert handlers.window_of(True, 40, 400) == (40.0, 400.0)
    assert handlers.window_of(False, 40, 400) is None and handlers.window_of(True, None, 400) is None
    assert Screen().changed() == {} and not KEEP


def test_a_case_too_large_for_the_editor_is_refused_in_words(cases, monkeypatch):
    fill_queue(cases.store, 1)  # 64 x 48
    monkeypatch.setattr(handlers, "EDITOR_MAX_PIXELS", 48 * 64 - 1)
    screen = handlers.next_case(cases, "band_entropy", "alice")
    assert screen.session is None and screen.editor["kind"] == "closed"
    assert "is larger than the editor holds (3,071 pixels" in screen.status and "save_correction" in screen.status


def test_window_controls_name_the_modality(cases):
    """pydicom's own MR and CT files: the CT presets (Hounsfield units) are offered for CT only."""
    from pydicom.data import get_testdata_file

    mr = handlers.upload(cases, get_testdata_file("MR_small.dcm"))
    assert mr.dicom_controls is True and mr.windowed is True and mr.window_presets is False
    assert mr.window_note.startswith("**MR window** in the scanner's own signal units") and "CT" not in mr.window_note
    assert (mr.window_center, mr.window_width) == (600.0, 1600.0)  # the header's window
    ct = handlers.upload(cases, get_testdata_file("CT_small.dcm"))
    assert ct.window_presets is True and ct.window_note.startswith("**CT window** in Hounsfield units")
    png = handlers.upload(cases, str(ROOT / "assets" / "examples" / "colonoscopy.png"))
    assert png.dicom_controls is False and png.window_presets is KEEP


# ------------------------------------------------------------------------------ the service underneath


def test_service_chooses_the_mask_from_the_status(cases):
    service = cases
    from medclipseg.annotation.service import RequestError

    case_id = fill_queue(service.store, 1)[0]
    with pytest.raises(RequestError, match="Send the corrected mask"):
        service.save(case_id, annotator="ann", status="corrected")
    with pytest.raises(RequestError, match="accepted case keeps the predicted mask"):
        service.save(case_id, np.ones((48, 64), bool), annotator="ann", status="accepted")
    with pytest.raises(RequestError, match="No case given"):
        service.save(None, annotator="ann", status="skipped")
    with pytest.raises(RequestError, match="status must be one of"):
        service.save(case_id, annotator="ann", status="done")
    accepted = service.save(case_id, annotator="ann", status="accepted", threshold=0.3)
    expected = service.prediction(service.store.latest_prediction_id(case_id)).with_threshold(0.3).mask
    (mask_path,), = rows(service, f"select mask_path from corrections where id = {accepted.id}")
    assert np.array_equal(service.store.load_mask(mask_path), expected) and accepted.pixels_changed == 0
    # Skipping a case with a saved version drops it from export and retraining: asked first.
    from medclipseg.annotation.service import ConfirmationNeeded

    with pytest.raises(ConfirmationNeeded, match="v1"):
        service.save(case_id, annotator="ann", status="skipped")
    assert service.store.get_case(case_id).status == "accepted"
    other = fill_queue(service.store, 2)[1]
    assert service.save(other, annotator="ann", status="skipped") is None
    assert service.store.get_case(other).status == "skipped"


def test_segment_without_queue_stores_nothing(service):
    result = service.segment(str(EXAMPLE), PROMPT, num_samples=SAMPLES, add_to_queue=False)
    assert result.case is None and result.prediction_id is None and result.prediction.mask.any() is not None
    assert rows(service, "select (select count(*) from cases), (select count(*) from predictions)") == [(0, 0)]


def test_mask_upload_errors_name_the_file_not_the_folder(cases, tmp_path):
    service = cases
    from medclipseg.annotation.service import RequestError

    hidden = tmp_path / "server-side-folder" / "upload-123"
    hidden.mkdir(parents=True)
    bad = write_text_as_png(hidden / "mask.png")
    with pytest.raises(RequestError) as refused:
        service.read_mask_file(str(bad), name="my-mask.png")
    assert "'my-mask.png'" in str(refused.value) and "server-side-folder" not in str(refused.value)
    with pytest.raises(RequestError, match="No mask given"):
        service.read_mask_file(None)


def test_scratch_folders_are_removed_after_use(tmp_path):
    from medclipseg.annotation.scratch import ScratchSpace

    scratch = ScratchSpace(keep_seconds=3600, parent=tmp_path)
    with scratch.folder() as first:
        (first / "mask.png").write_bytes(b"x")
        assert scratch.purge(older_than=0) == 0  # in use: never removed
    assert first.exists() and scratch.purge(older_than=0) == 1 and not first.exists()
    root = scratch.root
    assert root.name.startswith(f"{ScratchSpace.PREFIX}{os.getpid()}-")
    scratch.close()
    assert not root.exists() and list(tmp_path.iterdir()) == []

    # A root left by a process that is gone (a killed server) is removed when a new one is made.
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    orphan = tmp_path / f"{ScratchSpace.PREFIX}{finished.stdout.strip()}-abc"
    (orphan / "old").mkdir(parents=True)
    alive = tmp_path / f"{ScratchSpace.PREFIX}1-abc"  # pid 1 runs
    alive.mkdir()
    with ScratchSpace(parent=tmp_path).folder():
        pass
    assert not orphan.exists() and alive.exists()


def test_api_accepts_files_only_as_uploads():
    from medclipseg.annotation.service import RequestError
    from medclipseg.app.api import uploaded
    from medclipseg.team.access import Team

    assert uploaded(None, "image") is None
    assert uploaded({"path": "/cache/abc/scan.png", "orig_name": "scan.png", "meta": {}}, "image") == \
        ("/cache/abc/scan.png", "scan.png")
    with pytest.raises(RequestError, match="as a file"):
        uploaded("/etc/passwd", "image")
    assert Team.open().actor(None, "  carol ").name == "carol" and Team.open().actor(None, "").name is None
