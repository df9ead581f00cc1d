"""Corrections of a volume as undoable steps: each tool's result equals the same computation done in
the test with scipy on the same arrays, provenance follows the documented rules, undo and redo give
back the exact masks, and refused steps change nothing."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medclipseg.annotation.volume_editing import EditRefused, VolumeMaskEdits
from medclipseg.annotation.volume_planes import PlaneGeometry
from medclipseg.annotation.volume_tools import DRAWN, INTERPOLATED, PREDICTED, PROPAGATED

SPACING = (3.0, 1.0, 1.0)


def disc(shape, center, radius):
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius ** 2


def sdf(mask2d):
    """Signed distance (px, unit spacing): negative inside, positive outside."""
    return ndimage.distance_transform_edt(~mask2d) - ndimage.distance_transform_edt(mask2d)


def test_painting_and_interpolating_between_two_drawn_slices():
    edits = VolumeMaskEdits(np.zeros((9, 40, 40), bool), spacing=SPACING)
    first, last = disc((40, 40), (20, 20), 6), disc((40, 40), (20, 24), 12)
    edits.paint(first, index=1)
    edits.paint(last, index=7)
    assert edits.drawn() == [1, 7]
    outcome = edits.interpolate()
    assert outcome.changed == [2, 3, 4, 5, 6] or set(outcome.changed) <= set(range(2, 7))
    for s in range(2, 7):
        t = (s - 1) / 6
        expected = (1 - t) * sdf(first) + t * sdf(last) < 0
        assert np.array_equal(edits.mask[s], expected)
        assert edits.provenance[s] == INTERPOLATED
    assert edits.provenance[0] == PREDICTED and edits.provenance[8] == PREDICTED
    assert edits.counts() == {"drawn": 2, "interpolated": 5, "propagated": 0, "predicted": 2}
    assert edits.record() == {"drawn": [1, 7], "interpolated": [2, 3, 4, 5, 6], "propagated": []}
    assert "slices 3-7" in outcome.message


def test_interpolation_needs_two_drawn_slices_and_changes_nothing_when_refused():
    start = np.zeros((6, 10, 10), bool)
    start[2, 3:6, 3:6] = True
    edits = VolumeMaskEdits(start.copy(), spacing=SPACING)
    with pytest.raises(EditRefused, match="no slice is drawn"):
        edits.interpolate()
    edits.paint(start[2], index=2)
    with pytest.raises(EditRefused, match="only slice 3 is drawn"):
        edits.interpolate()
    edits.paint(start[2], index=3)
    with pytest.raises(EditRefused, match="no slices between"):
        edits.interpolate()
    with pytest.raises(EditRefused, match="does not lie between"):
        edits.interpolate(around=5)
    expected = start.copy()
    expected[3] = start[2]
    assert np.array_equal(edits.mask, expected) and edits.drawn() == [2, 3]


def test_undo_and_redo_restore_exact_masks_and_provenance():
    rng = np.random.default_rng(1)
    original = rng.random((8, 16, 16)) > 0.6
    edits = VolumeMaskEdits(original.copy(), spacing=SPACING)
    states = [(edits.mask.copy(), list(edits.provenance))]
    edits.paint(disc((16, 16), (8, 8), 4), index=0)
    states.append((edits.mask.copy(), list(edits.provenance)))
    edits.paint(disc((16, 16), (7, 9), 5), index=6)
    states.append((edits.mask.copy(), list(edits.provenance)))
    edits.interpolate()
    states.append((edits.mask.copy(), list(edits.provenance)))
    edits.grow(1.0)
    states.append((edits.mask.copy(), list(edits.provenance)))
    for mask, provenance in reversed(states[:-1]):
        edits.undo()
        assert np.array_equal(edits.mask, mask) and edits.provenance == provenance
    assert np.array_equal(edits.mask, original)
    with pytest.raises(EditRefused, match="Nothing to undo"):
        edits.undo()
    for mask, provenance in states[1:]:
        edits.redo()
        assert np.array_equal(edits.mask, mask) and edits.provenance == provenance
    with pytest.raises(EditRefused, match="Nothing to redo"):
        edits.redo()
    edits.undo()
    edits.grow(2.0)  # a new step drops what could be redone
    assert not edits.can_redo


def test_history_keeps_the_newest_steps_within_its_memory():
    edits = VolumeMaskEdits(np.zeros((4, 64, 64), bool), spacing=SPACING, history_bytes=3 * 64 * 64 // 8)
    for s in range(4):
        edits.paint(disc((64, 64), (32, 32), 5 + s), index=s)
    undone = 0
    while edits.can_undo:
        edits.undo()
        undone += 1
    assert 1 <= undone < 4
    assert edits.mask[0].any()  # the oldest step is no longer undoable


def test_propagation_follows_the_probability_and_stops_where_the_model_is_unsure():
    depth, size = 12, 48
    probability = np.zeros((depth, size, size), np.float32)
    entropy = np.full((depth, size, size), 0.05, np.float32)
    for s in range(depth):
        probability[s][disc((size, size), (24, 24), 10 + s % 2)] = 0.9
    entropy[9] = 0.6   # the model is unsure on slice 10
    mask = np.zeros((depth, size, size), bool)
    edits = VolumeMaskEdits(mask, spacing=SPACING)
    edits.paint(probability[4] > 0.5, index=4)
    edits.paint(np.zeros((size, size), bool), index=0)  # drawn empty: a stop
    before = edits.mask.copy()
    outcome = edits.propagate(4, probability, entropy)
    assert sorted(outcome.changed) == [1, 2, 3, 5, 6, 7, 8]
    for s in outcome.changed:
        assert np.array_equal(edits.mask[s], probability[s] > 0.5)
        assert edits.provenance[s] == PROPAGATED
    assert not edits.mask[9].any() and outcome.review == [9]
    up = next(stop for stop in outcome.stops if stop.direction > 0)
    down = next(stop for stop in outcome.stops if stop.direction < 0)
    assert up.slice == 9 and up.code == "uncertain" and down.slice == 0 and down.code == "drawn"
    assert "stopped at slice 10" in outcome.message and "Review slice 10" in outcome.message
    edits.undo()
    assert np.array_equal(edits.mask, before)
    # Without the stop it runs to the end of the volume; locked slices (saved by others) still stop it.
    outcome = edits.propagate(4, probability, entropy, max_band_entropy=None, max_area_change=None, locked=[10])
    assert sorted(outcome.changed) == [1, 2, 3, 5, 6, 7, 8, 9]
    with pytest.raises(EditRefused, match="Slice 12 is empty"):
        edits.propagate(11, probability, entropy)


def test_painting_in_another_plane_writes_the_stored_slices_it_crosses():
    shape = (10, 12, 14)   # axial stored: slices, rows (posterior), columns (left)
    planes = PlaneGeometry("axial", shape, (2.0, 0.5, 0.5))
    edits = VolumeMaskEdits(np.zeros(shape, bool), spacing=planes.stored_spacing)
    sagittal = np.zeros(planes.shape("sagittal")[1:], bool)     # rows: inferior (from the top), columns: posterior
    sagittal[1:4, 2:5] = True
    edits.paint(sagittal, index=6, plane_geometry=planes, plane="sagittal")
    view = planes.view(edits.mask, "sagittal")
    assert np.array_equal(view[6], sagittal) and edits.mask.sum() == sagittal.sum()
    touched = np.flatnonzero(edits.mask.any(axis=(1, 2)))
    # Sagittal rows 1-3 from the top are the three most superior-but-one axial slices: 8, 7, 6.
    assert list(touched) == [6, 7, 8]
    assert [edits.provenance[s] for s in touched] == [DRAWN] * 3 and edits.drawn() == [6, 7, 8]
    # The crosshair agrees: sagittal slice 7, row 2, column 3 is axial slice 9, row 3, column 7.
    assert planes.point((6, 1, 2), "sagittal", "axial") == (8, 2, 6)
    with pytest.raises(EditRefused, match="pixels"):
        edits.paint(np.zeros((3, 3), bool), index=0, plane_geometry=planes, plane="coronal")


def test_3d_tools_match_scipy_and_keep_or_mark_provenance():
    mask = np.zeros((8, 20, 20), bool)
    mask[2:6, 4:12, 4:12] = True
    mask[3:5, 6:10, 6:10] = False     # a hole
    mask[7, 17:19, 17:19] = True      # an island
    edits = VolumeMaskEdits(mask.copy(), spacing=SPACING)
    edits.fill_holes()
    assert np.array_equal(edits.mask, ndimage.binary_fill_holes(mask))
    edits.remove_islands()
    labels, count = ndimage.label(ndimage.binary_fill_holes(mask), structure=np.ones((3, 3, 3)))
    largest = 1 + int(np.argmax(ndimage.sum(np.ones_like(labels), labels, range(1, count + 1))))
    assert np.array_equal(edits.mask, labels == largest)
    assert edits.provenance == [PREDICTED] * 8   # clean-up keeps provenance
    before = edits.mask.copy()
    edits.grow(3.0)
    distance = ndimage.distance_transform_edt(~before, sampling=SPACING)
    assert np.array_equal(edits.mask, distance <= 3.0)
    edits.undo()
    edits.shrink(1.0)
    inside = ndimage.distance_transform_edt(np.pad(before, 1), sampling=SPACING)[1:-1, 1:-1, 1:-1]
    assert np.array_equal(edits.mask, inside > 1.0)
    edits.undo()
    edits.delete_component((3, 5, 5))
    assert not edits.mask.any()
    edits.undo()
    with pytest.raises(EditRefused, match="click inside"):
        edits.keep_component((0, 0, 0))
    probability = np.zeros(mask.shape, np.float32)
    probability[:, 10:15, 10:15] = 0.8
    edits.sphere((4, 12, 12), 2.0, probability, threshold=0.5)
    changed = np.flatnonzero(np.any(edits.mask != before, axis=(1, 2)))
    assert changed.size and all(edits.provenance[s] == DRAWN for s in changed)
    for value in (0, -1, float("nan"), 1e6, "wide", None):
        with pytest.raises(EditRefused, match="millimetres|between 0 and"):
            edits.grow(value)


def test_tool_requests_are_checked_in_words_and_dispatched():
    from medclipseg.annotation.volume_editing import apply_tool

    mask = np.zeros((6, 12, 12), bool)
    mask[1:4, 3:8, 3:8] = True
    edits = VolumeMaskEdits(mask.copy(), spacing=SPACING)
    probability = np.where(mask, 0.9, 0.1).astype(np.float32)
    entropy = np.full(mask.shape, 0.05, np.float32)
    outcome = apply_tool(edits, "grow", {"mm": 1}, probability=probability, entropy=entropy)
    assert outcome.changed and edits.mask.sum() > mask.sum()
    assert apply_tool(edits, "undo").label == "undo" and np.array_equal(edits.mask, mask)
    apply_tool(edits, "redo")
    apply_tool(edits, "undo")
    refusals = [("paint", {}, "Unknown tool"), ("grow", {"mm": "a lot"}, "millimetres"),
                ("grow", {}, "millimetres"), ("propagate", {"start": 99}, "outside"),
                ("propagate", {"start": 2, "direction": "sideways"}, "up, down or both"),
                ("propagate", {"start": 2, "max_band_entropy": 7}, "between 0 and 1"),
                ("delete_component", {"point": [1, 2]}, "three voxel numbers"),
                ("keep_component", {"point": [0, 0, 0]}, "click inside"),
                ("sphere", {"center": [2, 5, 5], "radius_mm": 0}, "between 0 and"),
                ("interpolate", {}, "no slice is drawn")]
    for tool, params, words in refusals:
        with pytest.raises(EditRefused, match=words):
            apply_tool(edits, tool, params, probability=probability, entropy=entropy)
        assert np.array_equal(edits.mask, mask)
    with pytest.raises(EditRefused, match="no prediction"):
        apply_tool(edits, "propagate", {"start": 2})
    # The stops switched off by None: propagation runs to the end of the mask's support.
    outcome = apply_tool(edits, "propagate", {"start": 2, "max_band_entropy": None, "max_area_change": None},
                         probability=probability, entropy=None)
    assert outcome.changed == [] or all(edits.provenance[s] == PROPAGATED for s in outcome.changed)


def test_next_uncertain_slice_and_progress():
    from medclipseg.annotation.volume_editing import next_uncertain_slice, progress

    strip = [0.1, 0.5, 0.2, 0.6, 0.05, 0.7]
    provenance = [PREDICTED, DRAWN, PREDICTED, INTERPOLATED, PREDICTED, PREDICTED]
    assert next_uncertain_slice(strip, provenance, 0, limit=0.3) == 3      # slice 1 is drawn
    assert next_uncertain_slice(strip, provenance, 3, limit=0.3) == 5
    assert next_uncertain_slice(strip, provenance, 5, limit=0.3) == 3      # wraps round
    assert next_uncertain_slice(strip, provenance, 3, limit=0.3, direction=-1) == 5
    assert next_uncertain_slice(strip, provenance, 0, limit=0.9) is None
    assert progress(provenance, reviewed=[0, 1]) == {"drawn": 1, "interpolated": 1, "propagated": 0,
                                                     "predicted": 4, "reviewed": 2, "depth": 6}


def test_set_slices_is_one_drawn_step_that_undoes_exactly():
    start = np.zeros((6, 20, 20), bool)
    start[2, 5:9, 5:9] = True
    edits = VolumeMaskEdits(start.copy(), spacing=SPACING)
    new = np.zeros((2, 20, 20), bool)
    new[0, 1:4, 1:4] = True
    new[1] = start[2]                      # unchanged pixels, but now drawn
    outcome = edits.set_slices([4, 2], new)
    assert outcome.changed == [2, 4] and outcome.can_undo
    assert np.array_equal(edits.mask[4], new[0]) and np.array_equal(edits.mask[2], start[2])
    assert edits.provenance[2] == edits.provenance[4] == DRAWN
    assert edits.set_slices([4], new[:1]).changed == []          # nothing new: no step
    edits.undo()
    assert np.array_equal(edits.mask, start) and edits.provenance == [PREDICTED] * 6
    with pytest.raises(EditRefused, match="distinct"):
        edits.set_slices([1, 1], np.zeros((2, 20, 20), bool))
    with pytest.raises(EditRefused, match="expected"):
        edits.set_slices([1], np.zeros((1, 20, 19), bool))
