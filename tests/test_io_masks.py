"""Tests for medclipseg.io.masks: label images read as boolean masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from medclipseg.io.images import ImageReadError
from medclipseg.io.masks import MaskRunsError, mask_from_runs, mask_to_runs, read_mask


def _write_cv(path, array):
    assert cv2.imwrite(str(path), array)
    return path


def test_read_mask_threshold(tmp_path):
    label = np.zeros((10, 10), np.uint8)
    label[:, 5:] = 255
    label[0, 0] = 126
    label[0, 1] = 127
    mask = read_mask(_write_cv(tmp_path / "label.png", label))
    assert mask.dtype == bool and mask.shape == (10, 10)
    assert mask[:, 5:].all() and not mask[0, 0] and mask[0, 1]
    colour = read_mask(_write_cv(tmp_path / "label_rgb.png", np.repeat(label[:, :, None], 3, 2)))
    np.testing.assert_array_equal(colour, mask)


def test_read_mask_refuses_non_images_and_tiny_masks(tmp_path):
    with pytest.raises(ImageReadError, match="Could not decode the mask"):
        read_mask(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="too small"):
        read_mask(_write_cv(tmp_path / "tiny.png", np.zeros((4, 4), np.uint8)))


def test_read_mask_messages_name_the_upload_not_its_temporary_path(tmp_path):
    path = tmp_path / "upload-1234" / "mask.png"
    path.parent.mkdir()
    path.write_text("not an image")
    with pytest.raises(ImageReadError) as refused:
        read_mask(path, name="my_mask.png")
    assert "'my_mask.png'" in str(refused.value) and str(tmp_path) not in str(refused.value)


# ------------------------------------------------------------------------------ run lengths (the editor's wire format)


def runs_by_scanning(mask):
    """Run lengths written out pixel by pixel: background first, so a leading foreground gets a 0 run."""
    runs, current, count = [], False, 0
    for value in np.asarray(mask, bool).ravel().tolist():
        if value == current:
            count += 1
            continue
        runs.append(count)
        current, count = value, 1
    runs.append(count)
    return runs


@pytest.mark.parametrize("shape, fraction, seed", [((1, 1), 0.5, 0), ((7, 5), 0.3, 1), ((48, 64), 0.5, 2),
                                                   ((33, 17), 0.9, 3), ((64, 48), 0.05, 4)])
def test_mask_runs_round_trip_random_masks(shape, fraction, seed):
    mask = np.random.default_rng(seed).random(shape) < fraction
    runs = mask_to_runs(mask)
    assert runs == runs_by_scanning(mask)
    assert sum(runs) == mask.size and all(isinstance(run, int) for run in runs)
    assert all(run > 0 for run in runs[1:])  # only the first run may be empty
    back = mask_from_runs(runs, shape)
    assert back.dtype == bool and back.shape == shape
    np.testing.assert_array_equal(back, mask)


def test_mask_runs_edge_masks():
    empty, full = np.zeros((4, 6), bool), np.ones((4, 6), bool)
    assert mask_to_runs(empty) == [24]
    assert mask_to_runs(full) == [0, 24]
    first = np.zeros((3, 3), bool)
    first[0, 0] = True
    assert mask_to_runs(first) == [0, 1, 8]
    last = np.zeros((3, 3), bool)
    last[2, 2] = True
    assert mask_to_runs(last) == [8, 1]
    for mask in (empty, full, first, last, np.ones((1, 1), bool), np.zeros((1, 1), bool)):
        np.testing.assert_array_equal(mask_from_runs(mask_to_runs(mask), mask.shape), mask)
    # Row-major: a column of foreground is one run per row.
    column = np.zeros((3, 4), bool)
    column[:, 1] = True
    assert mask_to_runs(column) == [1, 1, 3, 1, 3, 1, 2]
    # 0/255 masks are read as booleans too.
    np.testing.assert_array_equal(mask_from_runs(mask_to_runs(column.astype(np.uint8) * 255), (3, 4)), column)


def test_mask_from_runs_takes_json_numbers():
    # What arrives from the browser: a JSON list, possibly with numbers written as floats.
    np.testing.assert_array_equal(mask_from_runs([1.0, 2.0, 3.0], (2, 3)),
                                  np.array([[False, True, True], [False, False, False]]))
    np.testing.assert_array_equal(mask_from_runs((n for n in [0, 6]), (2, 3)), np.ones((2, 3), bool))


@pytest.mark.parametrize("runs, words", [
    ([5, 5], "covers 10 pixels; the image has 12 (4 x 3)"),
    ([20], "covers 20 pixels; the image has 12 (4 x 3)"),
    ([14, -2], "negative run length"),
    (["a", "b"], "list of whole run lengths"),
    ([None, 12], "list of whole run lengths"),
    (["6", "6"], "list of whole run lengths"),
    ([True, False], "list of whole run lengths"),
    ([float("nan"), 12], "list of whole run lengths"),
    ([6.9, 6.1], "list of whole run lengths"),  # would truncate to 6 + 6
    (5, "list of whole run lengths"),
    ([], "without run lengths"),
    ([[6, 6]], "without run lengths"),
])
def test_mask_from_runs_refusals_are_sentences(runs, words):
    with pytest.raises(MaskRunsError) as refused:
        mask_from_runs(runs, (3, 4))
    message = str(refused.value)
    assert words in message and message[0].isupper() and message.endswith(".")


def test_runs_as_text_round_trip_and_refusals():
    from medclipseg.io.masks import MaskRunsError, mask_from_runs, mask_to_runs, runs_text

    rng = np.random.default_rng(7)
    mask = rng.random((9, 13)) < 0.4
    text = runs_text(mask_to_runs(mask))
    assert text == ",".join(str(run) for run in mask_to_runs(mask))
    np.testing.assert_array_equal(mask_from_runs(text, mask.shape), mask)
    for bad in ("", "1,,2", "1.5,116", "-1,118", "a,b", " 117"):
        with pytest.raises(MaskRunsError, match="whole run lengths"):
            mask_from_runs(bad, mask.shape)
