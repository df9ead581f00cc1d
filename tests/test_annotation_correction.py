"""Brush strokes -> corrected mask: colour classification, resizing, history, pixel counts."""
import numpy as np
import pytest

from medclipseg.annotation.correction import (
    ADD_COLOUR,
    ERASE_COLOUR,
    EditHistory,
    changed_pixels,
    classify_strokes,
    combine,
    masks_from_layer_images,
    strokes_to_masks,
)


def layer(shape, strokes):
    """RGBA layer with (colour, slice) strokes painted fully opaque."""
    rgba = np.zeros(shape + (4,), np.uint8)
    for colour, where in strokes:
        rgba[where + (slice(0, 3),)] = colour
        rgba[where + (3,)] = 255
    return rgba


def test_combine_truth_table():
    predicted = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    add = np.array([0, 0, 1, 1, 0, 0, 1, 1], bool)
    erase = np.array([0, 1, 0, 1, 0, 1, 0, 1], bool)
    expected = [(p or a) and not e for p, a, e in zip(predicted, add, erase)]
    assert combine(predicted, add, erase).tolist() == expected


def test_combine_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        combine(np.zeros((2, 2), bool), np.zeros((2, 3), bool), np.zeros((2, 2), bool))


def test_classify_by_colour_and_alpha():
    rgba = layer((6, 6), [(ADD_COLOUR, (slice(0, 2), slice(0, 6))), (ERASE_COLOUR, (slice(4, 6), slice(0, 6)))])
    rgba[2, 0] = (0, 224, 0, 100)        # faint anti-aliased edge: ignored
    rgba[3, 0] = (200, 200, 200, 255)    # a colour that is neither brush: ignored
    add, erase = classify_strokes(rgba)
    assert add.sum() == 12 and add[:2].all()
    assert erase.sum() == 12 and erase[4:].all()
    assert not add[2:4].any() and not erase[2:4].any()


def test_strokes_resized_to_image_and_erase_wins():
    shape = (20, 30)
    small = layer((10, 15), [(ADD_COLOUR, (slice(0, 5), slice(0, 15)))])
    other = layer((10, 15), [(ERASE_COLOUR, (slice(4, 10), slice(0, 15)))])
    add, erase = strokes_to_masks([small, None, other], shape)
    assert add.shape == shape and erase.shape == shape
    assert erase[8:].all() and not erase[:8].any()
    assert add[:8].all() and not add[8:].any()  # rows 8-9 were painted both ways: erase wins


def test_layers_read_from_png_files(tmp_path):
    import cv2

    rgba = layer((8, 8), [(ADD_COLOUR, (slice(0, 4), slice(0, 8)))])
    path = tmp_path / "layer.png"
    cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]])
    add, erase = masks_from_layer_images([str(path)], (8, 8))
    assert add[:4].all() and not add[4:].any() and not erase.any()


def test_history_replays_undoes_and_follows_threshold():
    history = EditHistory(shape=(4, 4))
    predicted = np.zeros((4, 4), bool)
    add = np.zeros((4, 4), bool)
    add[0] = True
    erase = np.zeros((4, 4), bool)
    erase[0, 0] = True
    assert history.apply(add, np.zeros((4, 4), bool))
    assert history.apply(np.zeros((4, 4), bool), erase)
    assert not history.apply(np.zeros((4, 4), bool), np.zeros((4, 4), bool))  # empty strokes are no step
    corrected = history.corrected(predicted)
    assert corrected[0, 1:].all() and not corrected[0, 0] and corrected.sum() == 3
    # a different predicted mask (another threshold) gets the same edits
    other = np.ones((4, 4), bool)
    assert history.corrected(other).sum() == 15
    assert history.undo() and history.corrected(predicted).sum() == 4
    assert history.undo() and not history.undo()


def test_changed_pixels():
    before = np.array([[1, 1, 0, 0]], bool)
    after = np.array([[1, 0, 1, 1]], bool)
    assert changed_pixels(before, after) == {"pixels_added": 2, "pixels_erased": 1, "pixels_changed": 3}
