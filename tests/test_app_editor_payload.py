"""The values the mask editor and the server exchange (medclipseg.app.editor.payload), decoded with numpy."""
from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from medclipseg.app.editor.payload import (
    EditorError,
    case_payload,
    closed_value,
    colormap_table,
    read_edit,
    saved_value,
)
from medclipseg.io.masks import mask_from_runs, mask_to_runs

HEIGHT, WIDTH = 30, 41  # odd sizes: a swapped width and height cannot pass


def maps(seed=0, shape=(HEIGHT, WIDTH)):
    """(image RGB, probability float32, entropy float32, start mask), with probabilities right at 0.5 too."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    probability = rng.random(shape, dtype=np.float32)
    probability[0, :5] = [0.0, 0.5, np.nextafter(np.float32(0.5), np.float32(1)), 1.0, 1e-7]
    p = np.clip(probability.astype(np.float64), 1e-6, 1 - 1e-6)
    entropy = (-(p * np.log(p) + (1 - p) * np.log(1 - p))).astype(np.float32)
    start = rng.random(shape) < 0.3
    return image, probability, entropy, start


def payload_of(image_, probability_, entropy_, start_mask_, **changes):
    arguments = dict(case_id=7, prediction_id=11, image_rgb=image_, probability=probability_, entropy=entropy_,
                     start_mask=start_mask_, start="prediction", start_note="Showing the model's mask.",
                     base_version=None, threshold=0.5, uncertainty_threshold=0.35, opacity=0.4, title="Case #7")
    arguments.update(changes)
    return case_payload(**arguments)


def decoded(text, dtype, shape):
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype)).reshape(shape)


def test_case_payload_maps_decode_to_the_stored_arrays():
    image, probability, entropy, start = maps()
    value = payload_of(image, probability, entropy, start, base_version=3, start="version")
    assert value["kind"] == "case" and (value["width"], value["height"]) == (WIDTH, HEIGHT)
    assert (value["case_id"], value["prediction_id"], value["base_version"], value["start"]) == (7, 11, 3, "version")
    # Bit for bit what the store keeps: probability float32, entropy float16, little-endian.
    got_probability = decoded(value["probability"], "<f4", (HEIGHT, WIDTH))
    assert got_probability.tobytes() == probability.astype("<f4").tobytes()
    got_entropy = decoded(value["entropy"], "<f2", (HEIGHT, WIDTH))
    assert got_entropy.tobytes() == entropy.astype("<f2").tobytes()
    # Thresholding the decoded map is thresholding the stored one (ties at 0.5 included).
    np.testing.assert_array_equal(got_probability > np.float32(0.5), probability > np.float32(0.5))
    np.testing.assert_array_equal(mask_from_runs(value["start_runs"], (HEIGHT, WIDTH)), start)


def test_case_payload_image_is_a_png_of_the_image():
    image, probability, entropy, start = maps(1)
    value = payload_of(image, probability, entropy, start)
    prefix = "data:image/png;base64,"
    assert value["image"].startswith(prefix)
    png = base64.b64decode(value["image"][len(prefix):])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(bgr[..., ::-1], image)  # lossless, channels in RGB order once decoded


def test_case_payload_numbers_and_colour_map():
    image, probability, entropy, start = maps(2)
    value = payload_of(image, probability, entropy, start, threshold=np.float32(0.25), uncertainty_threshold=0.4,
                       opacity=0.6, case_id=np.int64(7))
    assert type(value["case_id"]) is int and type(value["threshold"]) is float
    assert (value["threshold"], value["uncertainty_threshold"], value["opacity"]) == (0.25, 0.4, 0.6)
    assert value["max_entropy"] == pytest.approx(np.log(2))
    assert value["base_version"] is None and value["session"] != payload_of(image, probability, entropy,
                                                                            start)["session"]
    from matplotlib import colormaps

    expected = np.round(np.asarray(colormaps["magma"].colors) * 255).astype(int)  # magma's own 256 entries
    assert np.array_equal(np.asarray(value["colormap"]).reshape(256, 3), expected)
    assert value["colormap"] == list(colormap_table())


@pytest.mark.parametrize("which", ["image", "entropy", "start_mask", "transposed"])
def test_case_payload_refuses_mismatched_sizes(which):
    image, probability, entropy, start = maps(3)
    changes = {"image": dict(image_rgb=image[:-1]), "entropy": dict(entropy=entropy[:, :-2]),
               "start_mask": dict(start_mask=start[:-1, :-1]),
               "transposed": dict(start_mask=np.zeros((WIDTH, HEIGHT), bool))}[which]
    with pytest.raises(EditorError, match="must have the same size"):
        payload_of(image, probability, entropy, start, **changes)


def test_case_payload_refuses_an_unknown_start():
    image, probability, entropy, start = maps(4)
    with pytest.raises(EditorError, match="Unknown start 'model'"):
        payload_of(image, probability, entropy, start, start="model")


def test_saved_and_closed_values():
    assert saved_value(np.int64(4), np.int64(2), 9, "Saved.") == {"kind": "saved", "case_id": 4, "base_version": 2,
                                                                  "revision": 9, "message": "Saved."}
    assert saved_value(4, None, 0, "")["base_version"] is None
    assert closed_value("Skipped.") == {"kind": "closed", "message": "Skipped."}


# ------------------------------------------------------------------------------ the editor's value, read back


def edit_value(mask, **changes):
    """The value the editor sets after an edit (see currentValue in mask_editor.js)."""
    value = {"kind": "edit", "session": "abc", "case_id": 7, "prediction_id": 11, "base_version": None,
             "threshold": 0.5, "uncertainty_threshold": 0.35, "width": mask.shape[1], "height": mask.shape[0],
             "revision": 3, "saved_revision": 0, "dirty": True, "edited": True, "runs": mask_to_runs(mask)}
    value.update(changes)
    return value


def test_read_edit_gives_the_mask_back():
    mask = np.random.default_rng(5).random((HEIGHT, WIDTH)) < 0.4
    edit = read_edit(edit_value(mask, base_version=2, threshold=0.3), case_id=7, shape=(HEIGHT, WIDTH))
    np.testing.assert_array_equal(edit.mask, mask)
    assert (edit.case_id, edit.prediction_id, edit.base_version, edit.revision) == (7, 11, 2, 3)
    assert (edit.threshold, edit.uncertainty_threshold, edit.dirty, edit.edited) == (0.3, 0.35, True, True)
    clean = read_edit(edit_value(mask, dirty=False, edited=False, revision=0), case_id=7, shape=(HEIGHT, WIDTH))
    assert clean.base_version is None and not clean.dirty and not clean.edited
    # The extremes of the ranges are values the sliders can take.
    edge = read_edit(edit_value(mask, threshold=1.0, uncertainty_threshold=float(np.log(2))), case_id=7,
                     shape=(HEIGHT, WIDTH))
    assert edge.threshold == 1.0


MASK = np.zeros((HEIGHT, WIDTH), bool)


@pytest.mark.parametrize("value, words", [
    (None, "holds no mask yet"),
    ("edit", "holds no mask yet"),
    (edit_value(MASK, kind="case"), "holds no mask yet"),
    (edit_value(MASK, kind="saved"), "holds no mask yet"),
    (edit_value(MASK, case_id=8), "shows case #8, not case #7"),
    (edit_value(MASK, width=HEIGHT, height=WIDTH), "does not have the image's size"),
    (edit_value(MASK, width=None), "does not have the image's size"),
    (edit_value(MASK, runs=[HEIGHT * WIDTH - 1]), f"covers {HEIGHT * WIDTH - 1:,} pixels"),
    (edit_value(MASK, runs=[]), "without run lengths"),
    (edit_value(MASK, threshold=1.5), "mask threshold 1.5 is outside 0..1"),
    (edit_value(MASK, threshold=-0.01), "mask threshold -0.01 is outside 0..1"),
    (edit_value(MASK, threshold=None), "no usable mask threshold"),
    (edit_value(MASK, threshold="half"), "no usable mask threshold"),
    (edit_value(MASK, uncertainty_threshold=0.8), "uncertainty threshold 0.8 is outside"),
    (edit_value(MASK, uncertainty_threshold=None), "no usable uncertainty threshold"),
    (edit_value(MASK, prediction_id=None), "no usable prediction id"),
    (edit_value(MASK, base_version="v2"), "no usable base version"),
    (edit_value(MASK, revision="three"), "no usable revision"),
])
def test_read_edit_refusals_are_sentences(value, words):
    with pytest.raises(EditorError) as refused:
        read_edit(value, case_id=7, shape=(HEIGHT, WIDTH))
    message = str(refused.value)
    assert words in message, message
    assert message[0].isupper() and message.rstrip().endswith(".")


def test_volume_slice_maps_go_as_8_bit_steps_with_the_exact_values_off_them():
    from medclipseg.annotation.volume_files import dequantise, quantise
    from medclipseg.app.editor.payload import decoded_maps, slice_payload

    rng = np.random.default_rng(3)
    probability = dequantise("probability", rng.integers(0, 256, (HEIGHT, WIDTH)).astype(np.uint8))
    probability[0, :3] = [np.nextafter(np.float32(0.5), np.float32(1)), np.float32(0.5), np.float32(0.123456)]
    entropy = dequantise("entropy", quantise("entropy", rng.random((HEIGHT, WIDTH)) * 0.69))
    value = slice_payload(index=0, image_rgb=np.zeros((HEIGHT, WIDTH, 3), np.uint8), probability=probability,
                          entropy=entropy, start_mask=probability > 0.5, follows_model=True, window=(0.0, 1.0))
    assert "probability_u8" in value and "entropy_u8" in value and "probability" not in value
    got_probability, got_entropy = decoded_maps(value)
    assert got_probability.view(np.uint32).tolist() == probability.view(np.uint32).tolist()   # bit for bit
    assert np.array_equal(got_entropy, entropy)
    assert len(base64.b64decode(value["probability_u8"])) == HEIGHT * WIDTH
    # Values off the steps everywhere: the whole float map goes.
    smooth = slice_payload(index=0, image_rgb=np.zeros((HEIGHT, WIDTH, 3), np.uint8),
                           probability=rng.random((HEIGHT, WIDTH)).astype(np.float32), entropy=entropy,
                           start_mask=probability > 0.5, follows_model=True, window=(0.0, 1.0))
    assert "probability" in smooth and "probability_u8" not in smooth
