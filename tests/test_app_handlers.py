"""The app's handlers without a server: a real AnnotationService (SQLite in tmp, the demo weights).

Follows one annotator along upload -> segment -> sliders -> strokes -> save and checks the row the
database holds afterwards, then the review queue (next, accept, skip), ingest and export, the
service's choice of mask by status, and the scratch space the app's files live in.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from app_support import ROOT, fill_queue, write_text_as_png
from medclipseg.annotation.correction import ADD_COLOUR, ERASE_COLOUR
from medclipseg.app import handlers
from medclipseg.app.handlers import KEEP, EditorSession, Screen

EXAMPLE = ROOT / "assets" / "examples" / "colonoscopy.png"
PROMPT = "Endoscopic colon image showing one medium oval-shaped hyperplastic growth on the left."
SAMPLES = 4
VIEW = dict(opacity=0.4, uncertainty_threshold=0.35)


@pytest.fixture(scope="module")
def predictor():
    from medclipseg.inference.predictor import Predictor

    return Predictor.from_pretrained("demo", device="cpu")


@pytest.fixture()
def service(tmp_path, predictor):
    from medclipseg.annotation.scratch import ScratchSpace
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(tmp_path / "db" / "annotations.db")
    service = AnnotationService(store, predictor, num_samples=SAMPLES,
                                scratch=ScratchSpace(parent=tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    yield service
    service.close()
    store.close()


def rows(service, sql):
    connection = sqlite3.connect(service.store.path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def stroke_layer(shape, colour, box):
    """An RGBA editor layer with one painted rectangle (top, left, bottom, right)."""
    layer = np.zeros(tuple(shape) + (4,), np.uint8)
    top, left, bottom, right = box
    layer[top:bottom, left:right, :3] = colour
    layer[top:bottom, left:right, 3] = 255
    return layer


def segmented(service):
    screen = handlers.segment(service, str(EXAMPLE), PROMPT, samples=SAMPLES, threshold=0.5, annotator="alice",
                              **VIEW)
    assert isinstance(screen.session, EditorSession), screen.status
    return screen


def test_upload_segment_sliders_strokes_save(service):
    shown = handlers.upload(service, str(EXAMPLE))
    assert shown.preview.ndim == 3 and "colonoscopy.png" in shown.image_info and shown.windowed is False
    assert shown.upload is KEEP  # a readable file stays in the box

    screen = segmented(service)
    session = screen.session
    assert set(screen.changed()) == {"session", "overlay", "heatmap", "numbers", "editor", "status"}
    assert screen.status.startswith("Segmented **colonoscopy.png**") and f"{SAMPLES} samples" in screen.status
    assert screen.overlay.shape[:2] == cv2.imread(str(EXAMPLE)).shape[:2]
    assert "0.50 / 4" in screen.numbers
    case_id = session.case_id
    assert rows(service, "select status, assigned_to, source from cases") == [("unreviewed", "alice", "upload")]

    # Sliders re-render from the cached maps: no second prediction row, no model run.
    moved = handlers.change_threshold(service, session, 0.6, **VIEW)
    assert moved.session is session and session.threshold == 0.6 and "0.60 / 4" in moved.numbers
    looser = handlers.change_uncertainty(service, session, 0.4, 0.45)
    assert set(looser.changed()) == {"overlay", "heatmap", "numbers"} and "0.45 nats" in looser.numbers
    assert set(handlers.change_opacity(service, session, 0.9, 0.45).changed()) == {"overlay"}
    assert rows(service, "select count(*) from predictions") == [(1,)]

    # Strokes: apply one add stroke, undo it, apply again; the save takes a pending erase stroke too.
    height, width = session.edits.shape
    predicted = service.prediction(session.prediction_id).with_threshold(0.6).mask
    add_box = (0, 0, height // 4, width // 4)
    applied = handlers.apply_strokes(service, session, {"layers": [stroke_layer((height, width), ADD_COLOUR,
                                                                                 add_box)]}, **VIEW)
    assert applied.status == "Strokes applied." and len(session.edits) == 1
    assert handlers.undo(service, session, **VIEW).status == "Last correction step undone." and not session.edits
    handlers.apply_strokes(service, session, {"layers": [stroke_layer((height, width), ADD_COLOUR, add_box)]},
                           **VIEW)
    erase_box = (height // 2, width // 2, height, width)
    saved = handlers.save(service, session, {"layers": [stroke_layer((height, width), ERASE_COLOUR, erase_box)]},
                          "alice", **VIEW)
    assert saved.status.startswith(f"Saved correction v1 of case #{case_id} by **alice**"), saved.status
    assert saved.queue.startswith("**Queue**:") and "1 corrected" in saved.queue

    expected = predicted.copy()
    expected[add_box[0]:add_box[2], add_box[1]:add_box[3]] = True
    expected[erase_box[0]:erase_box[2], erase_box[1]:erase_box[3]] = False
    (row,) = rows(service, "select c.annotator, c.status, c.version, c.threshold, c.pixels_added, c.pixels_erased, "
                           "c.mask_path, c.prediction_id, k.status from corrections c join cases k on k.id = c.case_id")
    annotator, status, version, threshold, added, erased, mask_path, prediction_id, case_status = row
    assert (annotator, status, version, case_status, prediction_id) == ("alice", "corrected", 1, "corrected",
                                                                        session.prediction_id)
    assert threshold == pytest.approx(0.6)
    assert (added, erased) == (int((expected & ~predicted).sum()), int((predicted & ~expected).sum()))
    assert np.array_equal(service.store.load_mask(mask_path), expected)


def test_review_queue_next_accept_skip(service):
    ids = fill_queue(service.store, 3)
    first = handlers.next_case(service, "foreground_entropy", "bob", **VIEW)
    assert isinstance(first.session, EditorSession) and first.session.case_id in ids
    assert first.prompt.startswith("lesion ") and f"Case #{first.session.case_id}" in first.status
    accepted = handlers.accept(service, first.session, "bob")
    assert "accepted as predicted by **bob**" in accepted.status and "1 accepted" in accepted.queue
    predicted = service.prediction(first.session.prediction_id).mask
    (mask_path, added, erased), = rows(service, "select mask_path, pixels_added, pixels_erased from corrections")
    assert np.array_equal(service.store.load_mask(mask_path), predicted) and (added, erased) == (0, 0)

    second = handlers.next_case(service, "random", "bob", **VIEW)
    assert second.session.case_id not in (None, first.session.case_id)
    skipped = handlers.skip(service, second.session, "bob")
    assert skipped.session is None and skipped.status == f"Case #{second.session.case_id} skipped."
    assert service.store.get_case(second.session.case_id).status == "skipped"
    assert rows(service, "select count(*) from corrections") == [(1,)]  # a skip saves no mask

    third = handlers.next_case(service, "random", "bob", **VIEW)
    handlers.accept(service, third.session, "bob")
    empty = handlers.next_case(service, "random", "bob", **VIEW)
    assert empty.session is KEEP and empty.status == "No unreviewed cases left in the queue."


def test_refusals_are_messages_and_write_nothing(service, tmp_path):
    before = rows(service, "select (select count(*) from cases), (select count(*) from corrections)")
    assert handlers.segment(service, None, PROMPT, samples=SAMPLES, threshold=0.5, **VIEW).status == \
        "**Error:** Upload an image (or pick an example) first."
    too_many = handlers.segment(service, str(EXAMPLE), PROMPT, samples=100_000, threshold=0.5, **VIEW)
    assert "between 1 and 64" in too_many.status and too_many.session is KEEP
    assert "Prompt is empty" in handlers.segment(service, str(EXAMPLE), " ", samples=4, threshold=0.5,
                                                 **VIEW).status
    bad = handlers.upload(service, str(write_text_as_png(tmp_path / "notes.png")))
    assert bad.upload is None and "not a recognised image" in bad.status
    for screen in (handlers.save(service, None, None, "alice", **VIEW), handlers.accept(service, None, "alice"),
                   handlers.skip(service, None, "alice"), handlers.undo(service, None, **VIEW)):
        assert screen.status.startswith("**Error:** Segment an image or take a case")
    assert "annotator name is required" in handlers.next_case(service, "random", "", **VIEW).status
    assert rows(service, "select (select count(*) from cases), (select count(*) from corrections)") == before

    session = segmented(service).session
    nameless = handlers.save(service, session, None, None, **VIEW)
    assert "annotator name is required" in nameless.status
    assert rows(service, "select count(*) from corrections") == [(0,)]


def test_ingest_and_export(service, tmp_path):
    files = [str(ROOT / "assets" / "examples" / name) for name in ("dermoscopy.png", "chest_xray.png")]
    assert "Give one prompt" in handlers.ingest(service, files, "", None, "", SAMPLES).ingest_report
    report = handlers.ingest(service, files, "A lesion in the image.", None, "first", SAMPLES)
    assert report.ingest_report.startswith("2 images added") and "2 unreviewed" in report.queue
    assert sorted(rows(service, "select original_name, batch from cases")) == [("chest_xray.png", "first"),
                                                                              ("dermoscopy.png", "first")]
    nothing = handlers.export(service, 0.1, 0.2, 0, ["corrected", "accepted"])
    assert nothing.export_file is None and nothing.export_report.startswith("**Error:**")

    opened = handlers.next_case(service, "image_entropy", "heidi", **VIEW)
    handlers.accept(service, opened.session, "heidi")
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


# ------------------------------------------------------------------------------ the service underneath


def test_service_chooses_the_mask_from_the_status(service):
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
    assert service.save(case_id, annotator="ann", status="skipped") is None
    assert service.store.get_case(case_id).status == "skipped"


def test_segment_without_queue_stores_nothing(service):
    result = service.segment(str(EXAMPLE), PROMPT, num_samples=SAMPLES, add_to_queue=False)
    assert result.case is None and result.prediction_id is None and result.prediction.mask.any() is not None
    assert rows(service, "select (select count(*) from cases), (select count(*) from predictions)") == [(0, 0)]


def test_mask_upload_errors_name_the_file_not_the_folder(service, tmp_path):
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
    from medclipseg.app.api import annotator_of, uploaded

    assert uploaded(None, "image") is None
    assert uploaded({"path": "/cache/abc/scan.png", "orig_name": "scan.png", "meta": {}}, "image") == \
        ("/cache/abc/scan.png", "scan.png")
    with pytest.raises(RequestError, match="as a file"):
        uploaded("/etc/passwd", "image")
    assert annotator_of("  carol ", None) == "carol" and annotator_of("", None) is None
