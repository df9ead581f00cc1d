"""Tests for medclipseg.inference.predictor on a small `tiny` model (2 Monte-Carlo samples, tiny images)."""
from __future__ import annotations

import math
import struct
import time
import zlib

import cv2
import numpy as np
import pytest

from medclipseg.io.images import ImageReadError
from medclipseg.io.prompts import PromptError
from medclipseg.inference.predictor import Prediction, Predictor

PROMPT = "a round polyp in the lower left"
HEIGHT, WIDTH = 37, 53
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def rgb_image():
    return (np.random.RandomState(0).rand(HEIGHT, WIDTH, 3) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def seeded_prediction(small_tiny_predictor, rgb_image):
    return small_tiny_predictor.predict(rgb_image, PROMPT, num_samples=2, seed=1)


def _predict(predictor, image, prompt=PROMPT, **kwargs):
    kwargs.setdefault("num_samples", 2)
    kwargs.setdefault("seed", 0)
    return predictor.predict(image, prompt, **kwargs)


# -- outputs ---------------------------------------------------------------------------------------

def test_maps_have_input_resolution_and_dtypes(seeded_prediction):
    prediction = seeded_prediction
    assert isinstance(prediction, Prediction)
    for name in ("probability", "entropy", "mutual_information"):
        values = getattr(prediction, name)
        assert values.shape == (HEIGHT, WIDTH), name
        assert values.dtype == np.float32, name
        assert np.isfinite(values).all(), name
    assert prediction.mask.shape == (HEIGHT, WIDTH) and prediction.mask.dtype == np.bool_
    assert prediction.image_shape == (HEIGHT, WIDTH)
    assert prediction.num_samples == 2 and prediction.threshold == 0.5
    assert prediction.prompt == PROMPT and prediction.prompt_truncated is False
    assert prediction.model_id == "tiny"
    assert prediction.seconds >= 0


def test_probability_range_and_mask_threshold(seeded_prediction):
    prediction = seeded_prediction
    assert prediction.probability.min() >= 0.0 and prediction.probability.max() <= 1.0
    np.testing.assert_array_equal(prediction.mask, prediction.probability > prediction.threshold)


def test_entropy_and_mutual_information_bounds(seeded_prediction):
    entropy, information = seeded_prediction.entropy, seeded_prediction.mutual_information
    assert entropy.min() >= 0.0 and entropy.max() <= LN2 + 1e-6
    assert information.min() >= 0.0
    assert (information <= entropy + 1e-6).all()


def test_scores(seeded_prediction):
    scores = seeded_prediction.scores
    mask = seeded_prediction.mask
    assert scores["foreground_pixels"] == int(mask.sum())
    assert scores["foreground_fraction"] == pytest.approx(mask.mean())
    assert scores["mean_entropy"] == pytest.approx(float(seeded_prediction.entropy.mean()), rel=1e-6)
    assert 0.0 <= scores["uncertain_fraction"] <= 1.0
    assert scores["boundary_band_px"] >= 1
    probability = seeded_prediction.probability.astype(np.float64)
    assert scores["soft_foreground_pixels"] == pytest.approx(probability.sum(), rel=1e-6)
    assert scores["expected_dice"] == pytest.approx(
        (2 * probability[mask].sum() + 1) / (probability.sum() + mask.sum() + 1), rel=1e-6)
    for key in ("band_entropy", "band_mutual_information", "top_entropy", "expected_dice_miss"):
        assert key in scores, key


# -- reproducibility and thresholds ---------------------------------------------------------------

def test_same_seed_identical_maps(small_tiny_predictor, rgb_image, seeded_prediction):
    again = small_tiny_predictor.predict(rgb_image, PROMPT, num_samples=2, seed=1)
    for name in ("probability", "entropy", "mutual_information", "mask"):
        np.testing.assert_array_equal(getattr(again, name), getattr(seeded_prediction, name))


def test_different_seeds_differ(small_tiny_predictor, rgb_image, seeded_prediction):
    other = small_tiny_predictor.predict(rgb_image, PROMPT, num_samples=2, seed=2)
    assert not np.array_equal(other.probability, seeded_prediction.probability)


def test_with_threshold_rethresholds_cached_maps(seeded_prediction):
    median = float(np.median(seeded_prediction.probability))
    rethresholded = seeded_prediction.with_threshold(median)
    assert rethresholded.threshold == median
    np.testing.assert_array_equal(rethresholded.mask, seeded_prediction.probability > median)
    assert not np.array_equal(rethresholded.mask, seeded_prediction.mask)
    assert rethresholded.probability is seeded_prediction.probability  # no new model run
    assert rethresholded.num_samples == seeded_prediction.num_samples
    assert rethresholded.scores["foreground_pixels"] == int(rethresholded.mask.sum())
    # Every score, the acquisition ones included, is recomputed for the new mask.
    from medclipseg.inference.uncertainty import image_scores

    expected = image_scores(seeded_prediction.entropy, seeded_prediction.mutual_information, rethresholded.mask,
                            seeded_prediction.scores["boundary_band_px"], probability=seeded_prediction.probability)
    assert rethresholded.scores == expected
    assert rethresholded.scores["expected_dice"] != seeded_prediction.scores["expected_dice"]
    # The original is unchanged.
    np.testing.assert_array_equal(seeded_prediction.mask, seeded_prediction.probability > 0.5)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5])
def test_threshold_outside_open_interval(small_tiny_predictor, rgb_image, seeded_prediction, threshold):
    with pytest.raises(ValueError, match="threshold"):
        small_tiny_predictor.predict(rgb_image, PROMPT, num_samples=1, threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        seeded_prediction.with_threshold(threshold)


def test_num_samples_must_be_positive(small_tiny_predictor, rgb_image):
    with pytest.raises(ValueError, match="num_samples"):
        small_tiny_predictor.predict(rgb_image, PROMPT, num_samples=0)


def test_bad_mode_refused(small_tiny_model, minilm_tokenizer):
    with pytest.raises(ValueError, match="mode"):
        Predictor(small_tiny_model, minilm_tokenizer, mode="quick", device="cpu")


# -- sampling options ------------------------------------------------------------------------------

def test_adaptive_stops_early(small_tiny_predictor, rgb_image):
    # Loose tolerances: sampling stops as soon as min_samples are reached and a chunk was compared.
    prediction = _predict(small_tiny_predictor, rgb_image, num_samples=64, adaptive=True, min_samples=4,
                          entropy_tolerance=1e9, mask_tolerance=1.1)
    assert 4 <= prediction.num_samples <= 8
    assert prediction.probability.shape == (HEIGHT, WIDTH)


def test_adaptive_respects_num_samples_cap(small_tiny_predictor, rgb_image):
    prediction = _predict(small_tiny_predictor, rgb_image, num_samples=3, adaptive=True, min_samples=2,
                          entropy_tolerance=0.0, mask_tolerance=0.0)
    assert prediction.num_samples == 3


def test_antithetic_rounds_odd_counts_up(small_tiny_predictor, rgb_image):
    assert _predict(small_tiny_predictor, rgb_image, num_samples=1, antithetic=True).num_samples == 2
    assert _predict(small_tiny_predictor, rgb_image, num_samples=3, antithetic=True).num_samples == 4


# -- inputs ----------------------------------------------------------------------------------------

def test_channel_order_and_path_inputs_agree(small_tiny_predictor, rgb_image, tmp_path):
    """Arrays are RGB unless they say otherwise (BGR arrays from read_image and cv2.imread pass
    channel_order="bgr"), so the same file gives the same prediction whichever way it is read."""
    from medclipseg.io.images import read_image

    bgr = np.ascontiguousarray(rgb_image[:, :, ::-1])
    path = tmp_path / "scan.png"
    cv2.imwrite(str(path), bgr)
    from_path = _predict(small_tiny_predictor, path)
    from_read_image = _predict(small_tiny_predictor, read_image(path).bgr, channel_order="bgr")
    from_imread = _predict(small_tiny_predictor, cv2.imread(str(path)), channel_order="bgr")
    from_loaded = _predict(small_tiny_predictor, read_image(path))
    from_rgb = _predict(small_tiny_predictor, rgb_image)
    from_bgr = _predict(small_tiny_predictor, bgr, channel_order="bgr")
    from_bytes = _predict(small_tiny_predictor, path.read_bytes())
    for other in (from_read_image, from_imread, from_loaded, from_rgb, from_bgr, from_bytes):
        np.testing.assert_array_equal(other.probability, from_path.probability)
    assert "RGB channel order converted to BGR" in from_rgb.conversions
    assert from_path.conversions == [] and from_read_image.conversions == []


def test_arrays_are_rgb_by_default_as_pil_gives_them(tmp_path):
    """The demo model on a colourful example: PIL's array (RGB, no channel_order), OpenCV's array
    with channel_order="bgr", the file's path and bytes, and the same pixels saved by PIL as an
    opaque RGBA PNG and as a BMP give one probability map; OpenCV's array without channel_order is
    read as RGB, so it is the channel-swapped image and gives another map."""
    from PIL import Image

    from medclipseg.weights.sources import assets_dir

    demo = Predictor.from_pretrained("demo", device="cpu")
    path = assets_dir() / "examples" / "colonoscopy.png"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert np.abs(rgb[..., 0].astype(int) - rgb[..., 2]).mean() > 10  # the channels really differ
    np.testing.assert_array_equal(bgr[..., ::-1], rgb)                  # the same pixels, two orders
    rgba, bmp = tmp_path / "colonoscopy-rgba.png", tmp_path / "colonoscopy.bmp"
    Image.fromarray(rgb).convert("RGBA").save(rgba)                      # other formats, written by PIL
    Image.fromarray(rgb).save(bmp)

    def probability(image, **kwargs):
        return demo.predict(image, "a polyp", num_samples=4, seed=7, **kwargs).probability

    expected = probability(str(path))
    np.testing.assert_array_equal(probability(rgb), expected)
    np.testing.assert_array_equal(probability(bgr, channel_order="bgr"), expected)
    np.testing.assert_array_equal(probability(path.read_bytes()), expected)
    np.testing.assert_array_equal(probability(rgba), expected)
    np.testing.assert_array_equal(probability(bmp), expected)
    swapped = probability(bgr)                                           # a BGR array sent as if RGB
    assert np.abs(swapped - expected).max() > 1e-3


def test_preprocessing_lives_in_transforms():
    """Training and inference share one pre-processing function."""
    from medclipseg.datasets import torch_dataset
    from medclipseg.inference import predictor, transforms
    from medclipseg.training import stage1

    assert predictor.preprocess_bgr is transforms.preprocess_bgr
    assert torch_dataset.preprocess_bgr is transforms.preprocess_bgr
    assert stage1.preprocess_bgr is transforms.preprocess_bgr
    tensor = transforms.preprocess_bgr(np.full((10, 20, 3), 255, np.uint8), 32)
    assert tuple(tensor.shape) == (1, 3, 32, 32)
    expected = (1.0 - np.array(transforms.IMAGENET_MEAN)) / np.array(transforms.IMAGENET_STD)
    np.testing.assert_allclose(tensor[0, :, 0, 0].numpy(), expected, rtol=1e-6)


def test_grey_array_is_replicated(small_tiny_predictor):
    grey = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) % 251).astype(np.uint8)
    prediction = _predict(small_tiny_predictor, grey)
    assert prediction.probability.shape == (HEIGHT, WIDTH)
    assert "grey image replicated to 3 channels" in prediction.conversions


def test_rgba_array_alpha_dropped(small_tiny_predictor, rgb_image):
    alpha = np.full((HEIGHT, WIDTH, 1), 255, np.uint8)
    prediction = _predict(small_tiny_predictor, np.concatenate([rgb_image, alpha], axis=2))
    assert prediction.probability.shape == (HEIGHT, WIDTH)
    assert any("alpha channel dropped" in c for c in prediction.conversions)


def test_16_bit_image_scaled(small_tiny_predictor, tmp_path):
    deep = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) * 20).astype(np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), deep)
    for source in (deep, path):
        prediction = _predict(small_tiny_predictor, source)
        assert prediction.probability.shape == (HEIGHT, WIDTH)
        assert any(c.startswith("16-bit image scaled") for c in prediction.conversions)


def test_too_small_image_refused(small_tiny_predictor):
    with pytest.raises(ImageReadError, match="too small"):
        _predict(small_tiny_predictor, np.zeros((4, 4, 3), np.uint8))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_huge_png_header_refused_fast(small_tiny_predictor, tmp_path):
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    started = time.perf_counter()
    with pytest.raises(ImageReadError, match="too large"):
        _predict(small_tiny_predictor, path)
    assert time.perf_counter() - started < 2.0


def test_text_file_named_png_refused(small_tiny_predictor, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not a recognised image"):
        _predict(small_tiny_predictor, path)


def test_missing_file_refused(small_tiny_predictor, tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        _predict(small_tiny_predictor, tmp_path / "absent.png")


@pytest.mark.parametrize("prompt", ["", "   \n\t ", "x" * 10_000])
def test_bad_prompts_refused(small_tiny_predictor, rgb_image, prompt):
    with pytest.raises(PromptError):
        _predict(small_tiny_predictor, rgb_image, prompt=prompt)


def test_prompt_cleaned(small_tiny_predictor, rgb_image):
    prediction = _predict(small_tiny_predictor, rgb_image, prompt="  a polyp\nin the colon\x00 ", num_samples=1)
    assert prediction.prompt == "a polyp in the colon"


def test_long_prompt_truncated_to_token_limit(small_tiny_predictor, rgb_image):
    prompt = "polyp " * 100  # 600 characters: under the character limit, over 64 tokens
    assert small_tiny_predictor.tokenizer.token_count(prompt) > small_tiny_predictor.tokenizer.max_length
    prediction = _predict(small_tiny_predictor, rgb_image, prompt=prompt, num_samples=1)
    assert prediction.prompt_truncated is True
    assert prediction.probability.shape == (HEIGHT, WIDTH)
