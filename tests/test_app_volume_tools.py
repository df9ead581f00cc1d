"""The volume tools through the app's handlers (``volume_tool``, the editor component's server
function), on a volume whose model the test controls (tests/volume_tool_support.py): interpolation
equals the signed-distance interpolation computed here, propagation stops where the model was made
unsure, undo gives back the exact mask, provenance is kept in the draft, the saved version and the
reopened editor, and refusals say why in words and change nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from medclipseg.annotation import volume_files
from medclipseg.app import handlers
from medclipseg.io.masks import mask_to_runs
from volume_tool_support import DEPTH, ROWS, SLICE_MM, UNSURE, controlled_case, disc


@pytest.fixture()
def service(tmp_path, small_tiny_predictor):
    from medclipseg.annotation.scratch import ScratchSpace
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(tmp_path / "db" / "annotations.db")
    (tmp_path / "tmp").mkdir()
    service = AnnotationService(store, small_tiny_predictor, num_samples=2, volume_samples=2,
                                scratch=ScratchSpace(parent=tmp_path / "tmp"))
    yield service
    service.close()
    store.close()


@pytest.fixture()
def opened(service):
    case, prediction_id, _ = controlled_case(service.store)
    screen = handlers.open_case(service, case.id, prediction_id, "alice")
    assert screen.session is not None, screen.status
    return screen, case


def runs(mask) -> str:
    return ",".join(map(str, mask_to_runs(mask)))


def value_of(case_value, *, index, mask, pending=(), base_version=None):
    return {"kind": "edit", "session": case_value["session"], "case_id": case_value["case_id"],
            "prediction_id": case_value["prediction_id"],
            "base_version": case_value["base_version"] if base_version is None else base_version,
            "threshold": case_value["threshold"], "uncertainty_threshold": 0.35, "width": case_value["width"],
            "height": case_value["height"], "revision": 5, "saved_revision": 0, "dirty": True, "edited": True,
            "runs": mask_to_runs(mask), "volume": True, "slice_index": int(index), "reviewed": [],
            "pending": [{"index": int(i), "revision": int(r), "runs": runs(m), "drawn": True} for i, r, m in pending],
            "window": list(case_value["volume"]["window"])}


def tool_request(case_value, tool, params=None, *, index=0, mask=None, pending=(), wanted=(), base_version=None):
    mask = np.zeros((ROWS, ROWS), bool) if mask is None else mask
    return dict(value_of(case_value, index=index, mask=mask, pending=pending, base_version=base_version),
                kind="tool_request", tool=tool, params=params or {}, wanted=list(wanted), annotator="alice")


def draft_volume(service, case) -> np.ndarray:
    geometry = service.store.volume_geometry(case.id)
    return volume_files.unmosaic(service.draft(case.id, "alice").mask, geometry).astype(bool)


def sdf(mask2d):
    """Signed distance in mm (1 mm pixels): negative inside."""
    return ndimage.distance_transform_edt(~mask2d) - ndimage.distance_transform_edt(mask2d)


def test_interpolation_between_two_painted_slices_is_the_signed_distance_one_and_undoes_exactly(service, opened):
    screen, case = opened
    value = screen.editor
    low, high = disc(5, (20, 20)), disc(11, (26, 28))
    before = handlers.volume_tool(service, tool_request(value, "fill_holes"), "alice")   # materialises the model
    assert before["kind"] == "tool", before
    model = draft_volume(service, case)
    answer = handlers.volume_tool(service, tool_request(value, "interpolate", index=8, mask=high,
                                                        pending=[(2, 3, low), (8, 4, high)], wanted=[5, 8, 9]),
                                  "alice")
    assert answer["kind"] == "tool", answer
    assert answer["provenance"]["drawn"] == [2, 8] and answer["provenance"]["interpolated"] == [3, 4, 5, 6, 7]
    assert answer["progress"]["drawn"] == 2 and answer["progress"]["interpolated"] == 5
    assert answer["stored"] == [[2, 3], [8, 4]] and [s["index"] for s in answer["slices"]] == [5]
    volume = draft_volume(service, case)
    for index in range(3, 8):
        t = (index - 2) / 6
        expected = (1 - t) * sdf(low) + t * sdf(high) < 0
        assert np.array_equal(volume[index], expected), index
    assert np.array_equal(volume[2], low) and np.array_equal(volume[8], high)
    assert service.draft(case.id, "alice").slice_provenance["interpolated"] == [3, 4, 5, 6, 7]
    # Undo: the interpolation, then the two slice edits, each one step; the exact model mask is back.
    undone = handlers.volume_tool(service, tool_request(value, "undo"), "alice")
    assert undone["kind"] == "tool" and undone["changed"] == [3, 4, 5, 6, 7] and "Undid interpolation" in undone["message"]
    for _ in range(2):
        assert handlers.volume_tool(service, tool_request(value, "undo"), "alice")["kind"] == "tool"
    assert np.array_equal(draft_volume(service, case), model)
    assert service.draft(case.id, "alice").slice_provenance == {"drawn": [], "interpolated": [], "propagated": []}
    redone = handlers.volume_tool(service, tool_request(value, "redo"), "alice")
    assert redone["changed"] == [2] and redone["can_undo"] and redone["can_redo"]


def test_refusals_say_why_and_change_nothing(service, opened):
    screen, case = opened
    value = screen.editor
    one = handlers.volume_tool(service, tool_request(value, "interpolate", pending=[(3, 2, disc(4))]), "alice")
    assert one["kind"] == "refused" and "two drawn slices" in one["message"] and "only slice 4" in one["message"]
    kept = draft_volume(service, case)
    assert np.array_equal(kept[3], disc(4))     # the slice edit it carried is kept (it is the annotator's)
    empty = handlers.volume_tool(service, tool_request(value, "propagate", {"start": 0}, pending=[(0, 3, disc(0) & False)]),
                                 "alice")
    assert empty["kind"] == "refused" and "slice 1 is empty" in empty["message"].lower()
    assert np.array_equal(draft_volume(service, case)[1:], kept[1:])
    nothing = handlers.volume_tool(service, tool_request(value, "redo"), "alice")
    assert nothing["kind"] == "refused" and nothing["message"] == "Nothing to redo."
    for bad, words in (({"mm": -1}, "between 0"), ({"mm": "a lot"}, "number")):
        assert bad and words in handlers.volume_tool(service, tool_request(value, "grow", bad), "alice")["message"]
    assert "name" in handlers.volume_tool(service, tool_request(value, "fill_holes"), None)["message"]
    assert handlers.volume_tool(service, {"case_id": "x"}, "alice")["kind"] == "error"


def test_propagation_stops_where_the_model_is_unsure_and_leaves_slices_saved_by_others(service, opened):
    screen, case = opened
    value = screen.editor
    start = disc(8.0)   # the model's own slice 4
    answer = handlers.volume_tool(service, tool_request(value, "propagate", {"start": 4, "direction": "up",
                                                                              "max_band_entropy": 0.3,
                                                                              "max_area_change": None},
                                                        index=4, mask=start, pending=[(4, 2, start)]), "alice")
    assert answer["kind"] == "tool", answer
    assert answer["stops"] == [{"slice": UNSURE, "direction": "up", "code": "uncertain",
                                "reason": answer["stops"][0]["reason"]}]
    assert "uncertain" in answer["stops"][0]["reason"] or "unsure" in answer["stops"][0]["reason"]
    assert answer["review"] == [UNSURE] and answer["provenance"]["propagated"] == list(range(5, UNSURE))
    assert f"slice {UNSURE + 1}" in answer["message"]
    volume = draft_volume(service, case)
    probability = np.stack([disc(6.0 + 0.5 * i) for i in range(DEPTH)])
    for index in range(5, UNSURE):
        assert np.array_equal(volume[index], probability[index]), index
    # Bob saves slices 1-2 meanwhile: alice's propagation downwards leaves them and says so.
    geometry = service.store.volume_geometry(case.id)
    service.save(case.id, volume_files.mosaic(np.zeros((DEPTH, ROWS, ROWS), bool)), annotator="bob",
                 prediction_id=value["prediction_id"], threshold=value["threshold"], base_version=None,
                 reviewed_slices=[1, 2])
    down = handlers.volume_tool(service, tool_request(value, "propagate", {"start": 4, "direction": "down"}, index=4,
                                                      mask=start), "alice")
    assert down["kind"] == "tool" and down["locked"] == [1, 2], down
    assert "saved by another annotator" in down["message"] and down["provenance"]["propagated"][:1] == [3]
    assert volume_files.unmosaic(service.draft(case.id, "alice").mask, geometry)[2].sum() == volume[2].sum()


def test_provenance_goes_into_the_saved_version_and_comes_back_on_reopening(service, opened):
    screen, case = opened
    value, session = screen.editor, screen.session
    low, high = disc(5), disc(9)
    handlers.volume_tool(service, tool_request(value, "interpolate", index=6, mask=high,
                                               pending=[(2, 3, low), (6, 4, high)]), "alice")
    # A reload: the editor opens the draft with its provenance, and the steps are still undoable.
    again = handlers.open_case(service, case.id, value["prediction_id"], "alice")
    block = again.editor["volume"]
    assert block["provenance"]["drawn"] == [2, 6] and block["provenance"]["interpolated"] == [3, 4, 5]
    assert block["progress"]["interpolated"] == 3 and block["can_undo"]
    saved = handlers.save(service, session, value_of(value, index=6, mask=high), "alice")
    assert "Saved correction v1" in saved.status and "slices reviewed (3, 7)" in saved.status, saved.status
    row = service.latest_correction(case.id)
    assert json.loads(row["slice_provenance"])["interpolated"] == [3, 4, 5]
    assert json.loads(row["reviewed_slices"]) == [2, 6]
    reopened = handlers.open_case(service, case.id, value["prediction_id"], "alice")
    assert reopened.editor["volume"]["provenance"]["drawn"] == [2, 6]


def test_a_reload_during_a_propagation_waits_for_it_and_the_step_stays_undoable(service, opened, monkeypatch):
    import threading
    import time

    from medclipseg.annotation import volume_tools

    screen, case = opened
    value = screen.editor
    slow, started = volume_tools.propagate, threading.Event()

    def propagate_slowly(*args, **kwargs):
        started.set()
        time.sleep(0.5)
        return slow(*args, **kwargs)

    monkeypatch.setattr(volume_tools, "propagate", propagate_slowly)
    answers = {}
    worker = threading.Thread(target=lambda: answers.update(step=handlers.volume_tool(
        service, tool_request(value, "propagate", {"start": 4, "direction": "up", "max_band_entropy": 0.3,
                                                    "max_area_change": None}), "alice")))
    worker.start()
    assert started.wait(5)
    reopened = handlers.open_case(service, case.id, value["prediction_id"], "alice")   # the reload
    worker.join()
    assert answers["step"]["kind"] == "tool"
    block = reopened.editor["volume"]
    assert block["provenance"]["propagated"] == list(range(5, UNSURE)) and block["can_undo"]
    undone = handlers.volume_tool(service, tool_request(reopened.editor, "undo"), "alice")
    assert undone["changed"] == list(range(5, UNSURE))
    assert service.latest_correction(case.id) is None     # nothing saved that the annotator did not save


def test_3d_piece_and_ball_brush_by_click(service, opened):
    screen, case = opened
    value = screen.editor
    kept = handlers.volume_tool(service, tool_request(value, "delete_component", {"point": [6, 24, 24]}), "alice")
    assert kept["kind"] == "tool" and kept["changed"] == list(range(DEPTH))
    assert not draft_volume(service, case).any()
    missed = handlers.volume_tool(service, tool_request(value, "keep_component", {"point": [6, 0, 0]}), "alice")
    assert missed["kind"] == "refused" and "No mask under that point" in missed["message"]
    ball = handlers.volume_tool(service, tool_request(value, "sphere", {"center": [6, 24, 24], "radius_mm": 4,
                                                                         "threshold": 0.5}), "alice")
    assert ball["kind"] == "tool" and ball["provenance"]["drawn"] == [4, 5, 6, 7, 8]   # 2 mm slices
    volume = draft_volume(service, case)
    assert volume[6, 24, 24] and volume[6, 24, 20] and not volume[6, 24, 29] and not volume[3].any()


def test_the_editors_propagation_stop_fields_start_at_the_library_defaults():
    import re

    from medclipseg.annotation import volume_tools
    from medclipseg.app.editor.component import editor_source

    html = editor_source("mask_editor.html")
    band = re.search(r'class="mse-stop-entropy"[^>]*value="([0-9.]+)"', html)
    area = re.search(r'class="mse-stop-area"[^>]*value="([0-9.]+)"', html)
    assert float(band.group(1)) == volume_tools.DEFAULT_MAX_BAND_ENTROPY
    assert float(area.group(1)) / 100 == volume_tools.DEFAULT_MAX_AREA_CHANGE


def test_the_editor_server_functions_refuse_a_volume_another_annotator_holds(service, opened):
    """An annotator's slice, plane and tool requests on a volume someone else holds are refused in words
    and keep nothing; a reviewer (others' work allowed) may work on it."""
    screen, case = opened
    assert service.store.next_case("alice", acquisition="random").id == case.id  # alice holds it now
    request = tool_request(screen.editor, "fill_holes")
    for call in (handlers.volume_tool, handlers.volume_slices, handlers.volume_plane):
        answer = call(service, dict(request, annotator="bob"), "bob", others_allowed=False)
        assert answer["kind"] == "error" and "held by alice" in answer["message"], (call.__name__, answer)
    assert service.draft(case.id, "bob") is None
    assert handlers.volume_tool(service, dict(request, annotator="rev"), "rev", others_allowed=True)["kind"] == "tool"
    # The holder herself is never refused.
    assert handlers.volume_tool(service, request, "alice", others_allowed=False)["kind"] == "tool"
    # A browser reload reopens the case only for its holder (or a reviewer).
    refused = handlers.reopen(service, case.id, "bob", others_allowed=False)
    assert refused.session is handlers.KEEP and "now held by alice" in refused.status
    assert handlers.reopen(service, case.id, "rev", others_allowed=True).session.case_id == case.id


def test_a_reviewer_approves_a_volume_with_an_unsaved_slice_edit_as_one_edited_version(service, opened):
    """The reviewer's painting on a volume is saved, when they approve, as the next version of the
    reviewed chain and approved (not left behind, not saved as a label of their own first)."""
    from medclipseg.annotation import volume_files
    from medclipseg.app import review as review_page

    screen, case = opened
    saved = handlers.save(service, screen.session, value_of(screen.editor, index=0, mask=np.zeros((ROWS, ROWS), bool)),
                          "alice")
    assert "v1" in saved.status, saved.status
    service.store.submit_for_review(case.id, by="alice")
    shown = review_page.next_case_to_review(service, "uncertainty", "rev")
    assert f"Reviewing case #{case.id}" in shown.status and shown.editor["base_version"] == 1
    painted = disc(6, center=(20, 20))
    before = volume_files.unmosaic(service.store.load_mask(service.latest_correction(case.id)["mask_path"]),
                                   service.store.volume_geometry(case.id)).astype(bool)
    value = value_of(shown.editor, index=5, mask=painted, pending=[(5, 3, painted)])
    decided = review_page.decide(service, shown.session, value, "rev", approve=True, comment="",
                                 own_allowed=False)
    assert f"approved v2 (your edit of v1)" in decided.status, decided.status
    latest = service.store.latest_correction(case.id)
    assert (latest["version"], latest["annotator"]) == (2, "rev")
    after = volume_files.unmosaic(service.store.load_mask(latest["mask_path"]),
                                  service.store.volume_geometry(case.id)).astype(bool)
    np.testing.assert_array_equal(after[5], painted)
    np.testing.assert_array_equal(np.delete(after, 5, axis=0), np.delete(before, 5, axis=0))
    status = service.store.review_status(case.id)
    assert (status["review_state"], status["review_version"]) == ("approved", 2)
