"""Volume cases (CT/MR scans) in the app's handlers, without a browser: a real AnnotationService on
SQLite in tmp, a real scan (a crop of the MRIcron T1, written as NIfTI and as a DICOM series zip) and
the small `tiny` model. The editor's side is played as mask_editor.js plays it: the case value and
the slice payloads are decoded, the editor's values (mask as runs, the slice on screen, reviewed
slices, the edits of slices left behind) are built here, and the store's rows and files are checked.
"""
from __future__ import annotations

import base64
import json
import sqlite3

import nibabel as nib
import numpy as np
import pytest

from app_support import fill_queue
from medclipseg.annotation import volume_files
from medclipseg.app import handlers
from medclipseg.app.editor.payload import MAX_SLICES_PER_ANSWER, decoded_maps
from medclipseg.io.masks import mask_from_runs, mask_to_runs
from volume_support import real_t1, write_dicom_series, zip_folder

PROMPT = "brain tissue in the T1 MRI"
SAMPLES = 2


def small_t1():
    """A 40 x 44 x 12 block of the real T1 (1 mm), quick to segment on a CPU."""
    from medclipseg.io.volumes import ScanVolume

    volume = real_t1(crop=True)
    shift = np.eye(4)
    shift[:3, 3] = (10, 12, 14)
    return ScanVolume(array=volume.array[10:50, 12:56, 14:26].copy(), affine=volume.affine @ shift, modality="MR",
                      name="t1.nii.gz")


@pytest.fixture()
def service(tmp_path, small_tiny_predictor):
    from medclipseg.annotation.scratch import ScratchSpace
    from medclipseg.annotation.service import AnnotationService
    from medclipseg.annotation.store import AnnotationStore

    store = AnnotationStore(tmp_path / "db" / "annotations.db")
    (tmp_path / "tmp").mkdir()
    service = AnnotationService(store, small_tiny_predictor, num_samples=SAMPLES, volume_samples=SAMPLES,
                                scratch=ScratchSpace(parent=tmp_path / "tmp"))
    yield service
    service.close()
    store.close()


@pytest.fixture()
def nifti_path(tmp_path):
    path = tmp_path / "upload" / "subject1.nii.gz"
    path.parent.mkdir()
    nib.save(small_t1().nifti_image(), str(path))
    return path


@pytest.fixture()
def opened(service, nifti_path):
    """The NIfTI segmented and opened by alice: (screen, case, geometry)."""
    screen = handlers.segment(service, str(nifti_path), PROMPT, samples=SAMPLES, annotator="alice")
    assert screen.session is not None, screen.status
    case = service.store.get_case(screen.session.case_id)
    return screen, case, service.store.volume_geometry(case.id)


# ------------------------------------------------------------------------------ the editor's side


def decoded_probability(payload) -> np.ndarray:
    """The probability the editor reads: float32 for the case's first slice, 8-bit steps with exact
    values at the threshold's edge for the slices it asks for (payload.decoded_maps)."""
    if "probability_u8" in payload:
        return decoded_maps(payload)[0]
    raw = np.frombuffer(base64.b64decode(payload["probability"]), "<f4")
    return raw.reshape(payload["height"], payload["width"])


def start_mask(payload) -> np.ndarray:
    return mask_from_runs(payload["start_runs"], (payload["height"], payload["width"]))


def edit_value(case_value, mask, *, index, reviewed=(), pending=(), revision=1, threshold=None):
    """The editor's value on slice ``index`` of a volume case (currentValue + volumeValue in
    mask_editor.js). ``pending``: (slice, revision, mask) of slices left and not yet confirmed."""
    threshold = case_value["threshold"] if threshold is None else threshold
    return {"kind": "edit", "session": case_value["session"], "case_id": case_value["case_id"],
            "prediction_id": case_value["prediction_id"], "base_version": case_value["base_version"],
            "threshold": threshold, "uncertainty_threshold": case_value["uncertainty_threshold"],
            "width": case_value["width"], "height": case_value["height"], "revision": revision, "saved_revision": 0,
            "dirty": True, "edited": True, "runs": mask_to_runs(mask), "volume": True, "slice_index": int(index),
            "reviewed": [int(i) for i in reviewed],
            "pending": [{"index": int(i), "revision": int(r), "runs": ",".join(map(str, mask_to_runs(m)))}
                        for i, r, m in pending],
            "window": list(case_value["volume"]["window"])}


def slice_request(value, wanted, annotator="alice", window=None):
    request = dict(value, kind="slice_request", wanted=list(wanted), annotator=annotator)
    if window is not None:
        request["window"] = list(window)
    return request


def painted(mask, box, value=True) -> np.ndarray:
    top, left, bottom, right = box
    out = np.array(mask, bool)
    out[top:bottom, left:right] = value
    return out


def corrections(service):
    connection = sqlite3.connect(service.store.path)
    try:
        return connection.execute("select version, annotator, status, reviewed_slices, mask_path, pixels_added, "
                                  "pixels_erased from corrections order by version").fetchall()
    finally:
        connection.close()


def model_slice(service, case_value, geometry, index) -> np.ndarray:
    """The model's own mask on slice ``index`` (the prediction's threshold), from the store."""
    row = service.store.prediction_row(case_value["prediction_id"])
    return volume_files.mosaic_slice(service.store.load_mask(row["mask_path"]), geometry, index).astype(bool)


# ------------------------------------------------------------------------------ upload and open


def test_upload_of_a_nifti_previews_its_middle_slice(service, nifti_path):
    shown = handlers.upload(service, str(nifti_path))
    assert shown.preview is not None and shown.dicom_controls is False
    depth = small_t1().display_shape()[0]
    assert "a volume of 40 × 44 × 12 voxels" in shown.image_info
    assert f"segmented as {depth} " in shown.image_info and f"slice {depth // 2 + 1}" in shown.image_info
    assert f"a volume of {depth} " in shown.status and "**Segment**" in shown.status


def test_upload_of_a_dicom_series_zip_is_a_volume(service, tmp_path):
    folder = tmp_path / "series"
    write_dicom_series(small_t1(), folder / "t1")
    archive = zip_folder(folder, tmp_path / "series.zip")
    shown = handlers.upload(service, str(archive))
    assert shown.preview is not None, shown.status
    assert "a volume of 40 × 44 × 12 voxels" in shown.image_info and "MR" in shown.image_info


def test_segment_opens_the_start_slice_with_a_volume_block(service, opened):
    screen, case, geometry = opened
    value, session = screen.editor, screen.session
    assert case.is_volume and session.is_volume and session.depth == geometry.depth
    assert session.slice_index == case.start_slice == value["volume"]["index"]
    assert session.shape == (geometry.rows, geometry.columns) == (value["height"], value["width"])
    block = value["volume"]
    assert block["depth"] == geometry.depth and len(block["strip"]) == geometry.depth
    assert max(block["strip"]) == pytest.approx(1.0) and block["reviewed"] == [] and block["edited"] == []
    assert block["plane"] == geometry.plane and block["modality"] == geometry.modality == ""  # NIfTI says none
    assert [w["name"] for w in block["windows"]][0] == "As segmented"
    index = block["index"]
    assert sorted(n["index"] for n in block["neighbours"]) == [i for i in (index - 1, index + 1)
                                                               if 0 <= i < geometry.depth]
    # The start slice shows the model's own mask, and the editor's threshold on its maps draws it.
    assert value["start"] == "prediction" and value["follows_model"] is True
    model = model_slice(service, value, geometry, index)
    assert np.array_equal(start_mask(value), model)
    assert np.array_equal(decoded_probability(value) > np.float32(value["threshold"]), model)
    assert f"slice {index + 1}" in screen.status and f"({geometry.depth} slices)" in screen.status
    assert f"| Slice | {index + 1} of {geometry.depth}" in screen.numbers
    assert f"| Slices reviewed | 0 of {geometry.depth} |" in screen.numbers


# ------------------------------------------------------------------------------ slices, drafts, saves


def test_slice_requests_answer_at_most_five_slices(service, opened):
    screen, case, geometry = opened
    value = screen.editor
    index = value["volume"]["index"]
    on_screen = start_mask(value)
    state = edit_value(value, on_screen, index=index, revision=0)
    wanted = [i for i in range(geometry.depth) if i != index][:3]
    answer = handlers.volume_slices(service, slice_request(state, wanted), "alice")
    assert answer["kind"] == "slices" and answer["case_id"] == case.id and answer["session"] == value["session"]
    assert [s["index"] for s in answer["slices"]] == wanted and len(answer["slices"]) <= MAX_SLICES_PER_ANSWER
    for item in answer["slices"]:
        assert (item["height"], item["width"]) == (geometry.rows, geometry.columns)
        assert item["follows_model"] is True
        assert np.array_equal(start_mask(item), model_slice(service, value, geometry, item["index"]))
        assert item["window"] == value["volume"]["window"]
    # Another window: the picture changes, the maps and masks do not.
    narrower = value["volume"]["windows"][2]
    again = handlers.volume_slices(service, slice_request(state, wanted[:1], window=(narrower["center"],
                                                                                     narrower["width"])), "alice")
    assert again["slices"][0]["window"] == [narrower["center"], narrower["width"]]
    assert again["slices"][0]["image"] != answer["slices"][0]["image"]
    assert all(np.array_equal(a, b) for a, b in zip(decoded_maps(again["slices"][0]), decoded_maps(answer["slices"][0])))
    # Six at once is more than a request may pull.
    too_many = handlers.volume_slices(service, slice_request(state, range(6)), "alice")
    assert too_many == {"kind": "error", "message": "The editor asked for 6 slices at once; 5 is the most."}


def test_slice_requests_out_of_range_or_for_the_wrong_case_are_refused_in_words(service, opened):
    screen, case, geometry = opened
    value = screen.editor
    index = value["volume"]["index"]
    state = edit_value(value, start_mask(value), index=index, revision=0)
    depth = geometry.depth
    answer = handlers.volume_slices(service, slice_request(state, [depth]), "alice")
    assert answer == {"kind": "error",
                      "message": f"The editor asked for slice {depth + 1}, but the volume has slices 1 to {depth}."}
    answer = handlers.volume_slices(service, slice_request(state, [-1]), "alice")
    assert answer["kind"] == "error" and "slices 1 to" in answer["message"]
    # A 2-D case has no slices; a case that does not exist says so; garbage is not a request.
    (image_case,) = fill_queue(service.store, 1)
    answer = handlers.volume_slices(service, slice_request(dict(state, case_id=image_case), [0]), "alice")
    assert answer == {"kind": "error", "message": f"Case #{image_case} is an image, not a volume; it has no slices."}
    answer = handlers.volume_slices(service, slice_request(dict(state, case_id=9999), [0]), "alice")
    assert answer["kind"] == "error" and "9999" in answer["message"]
    assert handlers.volume_slices(service, "slices please", "alice") == {
        "kind": "error", "message": "The editor's slice request is not one."}
    assert handlers.volume_slices(service, dict(state, kind="edit"), "alice")["message"] == \
        "The editor's slice request is not one."
    # A mask of the wrong size for this volume's slices.
    wrong = dict(slice_request(state, [0]), width=geometry.columns + 1)
    assert handlers.volume_slices(service, wrong, "alice")["message"] == \
        "The editor's mask does not have the image's size."
    assert corrections(service) == [] and service.draft(case.id, "alice") is None


def test_edits_of_a_left_slice_are_kept_in_the_draft_and_a_save_stores_one_version(service, opened):
    screen, case, geometry = opened
    value, session = screen.editor, screen.session
    first = value["volume"]["index"]
    second = first + 1 if first + 1 < geometry.depth else first - 1
    model_first = model_slice(service, value, geometry, first)
    painted_first = painted(model_first, (5, 6, 15, 20))
    erased_first = painted(painted_first, (0, 0, 3, geometry.columns), False)
    assert not np.array_equal(erased_first, model_first)
    # The annotator paints on the start slice, then goes to the next: the edit travels with the request.
    state = edit_value(value, erased_first, index=second, reviewed=[first], pending=[(first, 2, erased_first)],
                       revision=2)
    state["runs"] = mask_to_runs(model_slice(service, value, geometry, second))
    answer = handlers.volume_slices(service, slice_request(state, [second + 1] if second + 1 < geometry.depth
                                                           else [second - 1]), "alice")
    assert answer["kind"] == "slices" and answer["stored"] == [[first, 2]] and answer["reviewed"] == [first]
    draft = service.draft(case.id, "alice")
    assert draft is not None and list(draft.reviewed_slices) == [first]
    assert np.array_equal(volume_files.mosaic_slice(draft.mask, geometry, first), erased_first)
    assert np.array_equal(volume_files.mosaic_slice(draft.mask, geometry, second),
                          model_slice(service, value, geometry, second))
    # Coming back: the slice is served as it was left, no longer following the model.
    back = handlers.volume_slices(service, slice_request(dict(state, pending=[]), [first]), "alice")
    assert back["slices"][0]["follows_model"] is False
    assert np.array_equal(start_mask(back["slices"][0]), erased_first)
    # A request overtaken by a newer one cannot put the older mask back.
    stale = edit_value(value, model_first, index=second, reviewed=[first], pending=[(first, 1, model_first)],
                       revision=2)
    handlers.volume_slices(service, slice_request(stale, []), "alice")
    assert np.array_equal(volume_files.mosaic_slice(service.draft(case.id, "alice").mask, geometry, first),
                          erased_first)
    # The debounced change event says where the annotator is.
    on_second = model_slice(service, value, geometry, second)
    changed = handlers.editor_changed(service, session, edit_value(value, on_second, index=second, reviewed=[first],
                                                                    revision=2), "alice")
    assert f"| Slice | {second + 1} of {geometry.depth}" in changed.numbers
    assert f"| Slices reviewed | 1 of {geometry.depth} |" in changed.numbers

    # Save on the second slice (on screen, so reviewed): one version, both slices reviewed, the painted
    # voxels of the first slice and the model's everywhere else.
    saved = handlers.save(service, session, edit_value(value, on_second, index=second, reviewed=[first],
                                                        revision=2), "alice")
    rows = corrections(service)
    assert len(rows) == 1, saved.status
    version, annotator, status, reviewed, mask_path, added, erased = rows[0]
    assert (version, annotator, status) == (1, "alice", "corrected")
    assert json.loads(reviewed) == sorted([first, second])
    assert saved.editor["kind"] == "saved" and saved.editor["base_version"] == 1
    assert "Saved correction v1" in saved.status and f"2 of {geometry.depth} slices reviewed" in saved.status
    stored = service.store.load_mask(mask_path).astype(bool)
    expected = service.store.load_mask(service.store.prediction_row(value["prediction_id"])["mask_path"]).astype(bool)
    expected = expected.copy()
    expected[first * geometry.rows:(first + 1) * geometry.rows] = erased_first
    assert np.array_equal(stored, expected)
    assert added == int((erased_first & ~model_first).sum()) and erased == int((model_first & ~erased_first).sum())
    assert service.draft(case.id, "alice") is None
    assert f"v1 was reviewed on 2 of {geometry.depth} slices" in saved.history
    # The file behind it: painted voxels back on the scan's own grid, nothing else changed.
    volume = service.store.load_volume(case.id)
    on_file = volume.from_display(volume_files.unmosaic(stored, geometry), plane=geometry.plane)
    assert on_file.shape == volume.shape

    # Saving the same again writes nothing.
    value_v1 = dict(value, base_version=1)
    again = handlers.save(service, session, edit_value(value_v1, on_second, index=second, reviewed=[first, second],
                                                        revision=2), "alice")
    assert "Nothing saved" in again.status and len(corrections(service)) == 1


def test_reopen_goes_back_to_the_slice_and_the_draft(service, opened):
    screen, case, geometry = opened
    value = screen.editor
    first = value["volume"]["index"]
    mask = painted(model_slice(service, value, geometry, first), (2, 2, 9, 9))
    handlers.volume_slices(service, slice_request(edit_value(value, mask, index=(first + 1) % geometry.depth,
                                                             reviewed=[first], pending=[(first, 1, mask)]), []),
                           "alice")
    target = (first + 3) % geometry.depth
    again = handlers.reopen(service, case.id, "alice", target)
    assert again.session.slice_index == target and again.editor["volume"]["index"] == target
    assert again.editor["start"] == "draft" and again.editor["volume"]["reviewed"] == [first]
    assert again.editor["volume"]["edited"] == [first]
    assert "1 of" in again.editor["start_note"]
    # Out of range is the nearest slice; none is the start slice.
    assert handlers.reopen(service, case.id, "alice", 10_000).session.slice_index == geometry.depth - 1
    assert handlers.reopen(service, case.id, "alice").session.slice_index == case.start_slice
    # Another annotator does not see alice's draft.
    other = handlers.reopen(service, case.id, "bob")
    assert other.editor["start"] == "prediction" and other.editor["volume"]["reviewed"] == []


def test_without_a_name_slices_are_served_and_nothing_is_kept(service, opened):
    screen, case, geometry = opened
    value = screen.editor
    first = value["volume"]["index"]
    mask = painted(model_slice(service, value, geometry, first), (2, 2, 9, 9))
    state = edit_value(value, mask, index=(first + 1) % geometry.depth, reviewed=[first], pending=[(first, 1, mask)])
    answer = handlers.volume_slices(service, slice_request(state, [first], annotator=""), None)
    assert answer["kind"] == "slices" and answer["stored"] == [] and len(answer["slices"]) == 1
    assert service.draft(case.id, "alice") is None and corrections(service) == []


def test_image_cases_are_unchanged(service):
    (case_id,) = fill_queue(service.store, 1)
    prediction_id = service.store.latest_prediction_id(case_id)
    screen = handlers.open_case(service, case_id, prediction_id, "alice")
    assert screen.session.kind == "image" and not screen.session.is_volume and screen.session.depth is None
    assert "volume" not in screen.editor and "follows_model" not in screen.editor
    assert "| Slice |" not in screen.numbers


def test_the_page_wires_the_editors_slice_requests(service, opened):
    """The editor's server function in the built page: its name is the one mask_editor.js calls, it takes
    the typed name without logins and only the login name with them."""
    from types import SimpleNamespace

    from medclipseg.app.api import login_name
    from medclipseg.app.layout import build_app
    from medclipseg.team.access import Team

    screen, case, geometry = opened
    value = screen.editor
    index = value["volume"]["index"]
    mask = painted(model_slice(service, value, geometry, index), (1, 1, 6, 6))
    state = edit_value(value, mask, index=(index + 1) % geometry.depth, reviewed=[index], pending=[(index, 1, mask)])
    for team, expected in ((Team.from_setting("carol:pw"), None), (None, "alice")):
        demo = build_app(service, team=team)
        editors = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "editor"]
        assert len(editors) == 1
        assert [fn.__name__ for fn in editors[0].server_fns] == ["volume_slices", "volume_plane", "volume_tool"]
        assert editors[0].get_config()["server_fns"] == ["volume_slices", "volume_plane", "volume_tool"]
        # A request as Gradio hands it over: no login (the typed name counts only without logins).
        answer = editors[0].volume_slices(slice_request(state, [index], annotator="alice"), SimpleNamespace())
        if expected:
            assert answer["kind"] == "slices" and answer["stored"] == [[index, 1]]
        else:  # logins on and none with the request: refused in words, nothing kept
            assert answer["kind"] == "error" and "sign in" in answer["message"]
        assert (service.draft(case.id, "alice") is not None) == (expected is not None)
    # With logins, the name is the one the session cookie belongs to.
    app = SimpleNamespace(tokens={"t0k": "carol"}, cookie_id="abc")
    assert login_name(SimpleNamespace(app=app, cookies={"access-token-abc": "t0k"})) == "carol"
    assert login_name(SimpleNamespace(app=app, cookies={"access-token-unsecure-abc": "t0k"})) == "carol"
    assert login_name(SimpleNamespace(app=app, cookies={"access-token-abc": "forged"})) is None
    assert login_name(SimpleNamespace(username="dave")) == "dave" and login_name(None) is None


# ------------------------------------------------------------------------------ three planes


def reformatted(axial: np.ndarray, plane: str) -> np.ndarray:
    """An axial display volume ([slice, row, column]: toward superior, posterior, left) in another
    plane's display convention, written out here with numpy: coronal [anterior, inferior, left],
    sagittal [left, inferior, posterior]."""
    if plane == "axial":
        return axial
    if plane == "coronal":
        return axial[::-1, ::-1, :].transpose(1, 0, 2)
    return axial[::-1].transpose(2, 0, 1)


def decoded_image(payload) -> np.ndarray:
    from medclipseg.io.png import decode_png

    return decode_png(base64.b64decode(payload["image"].split(",", 1)[1]))


def plane_request(value, wanted, *, strips=(), annotator="alice", plane_edits=(), revision=1):
    """The editor's plane request: its state with ``plane_edits`` ((plane, slice, revision, mask) painted
    in other planes), the (plane, slice) pairs it wants and the strips it needs."""
    request = dict(value, kind="plane_request", wanted=[list(pair) for pair in wanted], strips=list(strips),
                   annotator=annotator, revision=revision)
    request["plane_edits"] = [{"plane": plane, "index": int(index), "revision": int(rev),
                               "runs": ",".join(map(str, mask_to_runs(mask)))}
                              for plane, index, rev, mask in plane_edits]
    return request


def flipped(mask, box) -> np.ndarray:
    """``mask`` with every pixel of ``box`` (top, left, bottom, right) turned over: a sure change."""
    top, left, bottom, right = box
    out = np.array(mask, bool)
    out[top:bottom, left:right] = ~out[top:bottom, left:right]
    return out


def display_scan(service, case_id, geometry) -> np.ndarray:
    return np.stack([service.store.volume_slice(case_id, i) for i in range(geometry.depth)])


def model_volume(service, case_value, geometry) -> np.ndarray:
    row = service.store.prediction_row(case_value["prediction_id"])
    return volume_files.unmosaic(service.store.load_mask(row["mask_path"]).astype(bool), geometry)


def test_the_case_value_describes_the_three_planes(opened):
    screen, case, geometry = opened
    planes = screen.editor["volume"]["planes"]
    assert geometry.plane == "axial"
    depth, rows, columns = geometry.display_shape
    slice_mm, row_mm, column_mm = geometry.display_spacing
    assert planes["axial"] == {"depth": depth, "shape": [depth, rows, columns],
                               "spacing": [slice_mm, row_mm, column_mm], "axes": [[0, False], [1, False], [2, False]]}
    assert planes["coronal"]["shape"] == [rows, depth, columns]
    assert planes["coronal"]["spacing"] == [row_mm, slice_mm, column_mm]
    assert planes["coronal"]["axes"] == [[1, True], [0, True], [2, False]]
    assert planes["sagittal"]["shape"] == [columns, depth, rows]
    assert planes["sagittal"]["axes"] == [[2, False], [0, True], [1, False]]


def test_a_plane_request_answers_the_reformatted_slices_and_strips(service, opened):
    from medclipseg.io.volumes import window_to_uint8

    screen, case, geometry = opened
    value = screen.editor
    index = value["volume"]["index"]
    scan = display_scan(service, case.id, geometry)
    model = model_volume(service, value, geometry)
    entropy = service.store.prediction_maps_volume(value["prediction_id"], "entropy")
    window = tuple(value["volume"]["window"])
    state = edit_value(value, model[index], index=index)
    wanted = [("coronal", geometry.rows // 2), ("sagittal", 3), ("axial", index)]
    answer = handlers.volume_plane(service, plane_request(state, wanted, strips=["coronal", "sagittal"]), "alice")
    assert answer["kind"] == "planes", answer
    assert [(s["plane"], s["index"]) for s in answer["slices"]] == wanted
    for payload, (plane, number) in zip(answer["slices"], wanted):
        expected_scan = reformatted(scan, plane)[number]
        assert (payload["height"], payload["width"]) == expected_scan.shape
        grey = decoded_image(payload)
        assert np.array_equal(grey[..., 0], window_to_uint8(expected_scan, window)), plane
        # Nothing reviewed: the start is the model's own mask, and the editor's threshold draws it.
        expected_mask = reformatted(model, plane)[number]
        assert payload["follows_model"] and np.array_equal(start_mask(payload), expected_mask), plane
        assert np.array_equal(decoded_probability(payload) > np.float32(value["threshold"]), expected_mask), plane
        decoded_entropy = decoded_maps(payload)[1]
        assert np.allclose(decoded_entropy, reformatted(entropy, plane)[number], atol=2e-3), plane
        row_axis, column_axis = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}[plane]
        assert payload["spacing"] == [geometry.display_spacing[row_axis], geometry.display_spacing[column_axis]]
    for plane in ("coronal", "sagittal"):
        means = reformatted(entropy, plane).mean(axis=(1, 2))
        assert np.allclose(answer["strips"][plane]["strip_nats"], means, atol=1e-3), plane
    assert answer["reviewed"] == [] and answer["edited"] == []


def test_painting_a_sagittal_slice_changes_exactly_the_expected_axial_voxels(service, opened):
    screen, case, geometry = opened
    value = screen.editor
    index = value["volume"]["index"]
    model = model_volume(service, value, geometry)
    column = geometry.columns // 2
    sagittal = reformatted(model, "sagittal")[column]          # [slice from the top, row]
    painted_mask = flipped(sagittal, (2, 5, 6, 15))           # rows 2..5 from the top: four axial slices
    state = edit_value(value, model[index], index=index)
    answer = handlers.volume_plane(service, plane_request(state, [("sagittal", column)],
                                                          plane_edits=[("sagittal", column, 3, painted_mask)]),
                                   "alice")
    assert answer["kind"] == "planes", answer
    assert answer["stored_planes"] == [["sagittal", column, 3]]
    expected = model.copy()
    reformatted(expected, "sagittal")[column] = painted_mask    # a numpy view: writes the axial volume
    changed = sorted(int(s) for s in np.flatnonzero((expected != model).any(axis=(1, 2))))
    assert changed == [geometry.depth - 1 - k for k in range(5, 1, -1)]
    assert answer["edited"] == changed and answer["reviewed"] == changed
    assert np.array_equal(start_mask(answer["slices"][0]), painted_mask)
    # Every axial slice as the slice protocol serves it: the painted voxels, nothing else.
    for first in range(0, geometry.depth, 5):
        wanted = list(range(first, min(first + 5, geometry.depth)))
        slices = handlers.volume_slices(service, slice_request(state, wanted), "alice")["slices"]
        for payload in slices:
            assert np.array_equal(start_mask(payload), expected[payload["index"]]), payload["index"]
            assert payload["follows_model"] == (payload["index"] not in changed)
    # The draft holds it: a reload shows the same volume.
    draft = service.draft(case.id, "alice")
    assert np.array_equal(volume_files.unmosaic(np.asarray(draft.mask, bool), geometry), expected)
    assert sorted(draft.reviewed_slices) == changed
    # An older plane edit does not overwrite a slice stored since with a newer revision.
    slice_edit = flipped(model[changed[0]], (0, 0, 2, 2))
    newer = edit_value(value, model[index], index=index, pending=[(changed[0], 9, slice_edit)])
    assert handlers.volume_slices(service, slice_request(newer, []), "alice")["stored"] == [[changed[0], 9]]
    back = sagittal   # the model's column again, sent with revision 5: older than slice changed[0]'s 9
    answer = handlers.volume_plane(service, plane_request(newer, [], plane_edits=[("sagittal", column, 5, back)]),
                                   "alice")
    assert answer["kind"] == "planes" and answer["edited"] == changed[1:], answer
    slices = handlers.volume_slices(service, slice_request(newer, changed), "alice")["slices"]
    assert np.array_equal(start_mask(slices[0]), slice_edit)
    for payload in slices[1:]:   # newer than their revision 3: they are the model's again
        assert np.array_equal(start_mask(payload), model[payload["index"]]), payload["index"]


def test_a_save_from_another_plane_keeps_the_plane_edit(service, opened):
    screen, case, geometry = opened
    value = screen.editor
    index = value["volume"]["index"]
    model = model_volume(service, value, geometry)
    row = geometry.rows // 2
    coronal = reformatted(model, "coronal")[geometry.rows - 1 - row]
    painted_mask = flipped(coronal, (0, 0, geometry.depth, 8))
    state = edit_value(value, np.zeros_like(model[index]), index=index, reviewed=[index])
    state.update(plane="coronal", plane_edits=[{"plane": "coronal", "index": geometry.rows - 1 - row, "revision": 2,
                                                "runs": ",".join(map(str, mask_to_runs(painted_mask)))}])
    screen = handlers.save(service, screen.session, state, "alice")
    assert "Saved correction v1" in screen.status, screen.status
    expected = model.copy()
    reformatted(expected, "coronal")[geometry.rows - 1 - row] = painted_mask
    saved = service.latest_correction(case.id)
    assert np.array_equal(volume_files.unmosaic(service.store.load_mask(saved["mask_path"]).astype(bool), geometry),
                          expected)   # the on-screen acquisition mask (empty here) is not an edit from coronal
