"""Overlays, heat map and image-level numbers, checked against direct computations."""
import numpy as np
import pytest

from app_support import prediction_from_probability
from medclipseg.app.render import (
    MASK_COLOUR,
    display_size,
    entropy_heatmap,
    image_numbers,
    numbers_markdown,
    overlay_mask,
    uncertain_region,
)


def make_prediction(height=40, width=50, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    probability = np.clip(1.2 - np.hypot(yy - height / 2, xx - width / 2) / 10.0, 0, 1)
    return prediction_from_probability(probability, mutual_fraction=rng.uniform(0, 0.2, (height, width)),
                                       prompt="a blob", model_id="test@0", seconds=0.1)


def test_display_size():
    assert display_size(100, 200) == (100, 200)
    assert display_size(3000, 1500, max_side=1500) == (1500, 750)


def test_overlay_fill_blend_and_untouched_background():
    image = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 10:40] = True
    out = overlay_mask(image, mask, opacity=0.5)
    expected = np.round(0.5 * 100 + 0.5 * np.asarray(MASK_COLOUR, float))
    assert np.abs(out[20, 25].astype(float) - expected).max() <= 1  # inside, away from the contour
    assert (out[0, 0] == 100).all()                                  # outside, away from the contour
    assert (out[10, 25] != 100).any()                                # contour drawn on the boundary


def test_overlay_zero_opacity_keeps_interior_and_rejects_bad_opacity():
    image = np.random.default_rng(1).integers(0, 255, (30, 30, 3), dtype=np.uint8)
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    out = overlay_mask(image, mask, opacity=0.0)
    assert (out[15, 15] == image[15, 15]).all()
    with pytest.raises(ValueError):
        overlay_mask(image, mask, opacity=1.5)


def test_overlay_downscales_large_images():
    image = np.zeros((2000, 1000, 3), np.uint8)
    out = overlay_mask(image, np.zeros((2000, 1000), bool), max_side=500)
    assert out.shape == (500, 250, 3)


def test_heatmap_is_an_image_with_colour_bar():
    prediction = make_prediction()
    picture = entropy_heatmap(prediction.entropy, threshold_nats=0.3)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] > 50  # image plus colour bar


def test_numbers_match_direct_computation():
    prediction = make_prediction()
    threshold = 0.4
    corrected = prediction.mask.copy()
    corrected[:5, :5] = True
    numbers = image_numbers(prediction, uncertainty_threshold=threshold, mask=corrected, pixel_spacing=(0.5, 0.25))
    assert numbers["area_px"] == int(corrected.sum())
    assert numbers["area_mm2"] == pytest.approx(corrected.sum() * 0.125)
    assert numbers["mean_entropy_foreground"] == pytest.approx(float(prediction.entropy[corrected].mean()), rel=1e-6)
    assert numbers["uncertain_px"] == int((prediction.entropy >= threshold).sum())
    assert numbers["mean_entropy_image"] == pytest.approx(float(prediction.entropy.mean()), rel=1e-6)
    assert (uncertain_region(prediction.entropy, threshold) == (prediction.entropy >= threshold)).all()
    text = numbers_markdown(numbers, model_id="m@1", seconds=0.5)
    assert "Mask area" in text and "mm²" in text and "m@1" in text


def test_numbers_of_the_own_mask_are_the_predictions_scores():
    """The prediction already carries its image scores: they are shown, not computed again."""
    prediction = make_prediction()
    prediction.scores.update(mean_entropy=0.123, mean_entropy_foreground=0.456, mean_entropy_boundary=0.321,
                             mean_mutual_information=0.0789)
    numbers = image_numbers(prediction, uncertainty_threshold=0.3)
    assert (numbers["mean_entropy_image"], numbers["mean_entropy_foreground"], numbers["mean_entropy_boundary"],
            numbers["mean_mutual_information"]) == (0.123, 0.456, 0.321, 0.0789)
    assert image_numbers(prediction, uncertainty_threshold=0.3, mask=prediction.mask.copy()) == numbers
    # A corrected mask has its own scores, from the same function the prediction's came from.
    from medclipseg.inference.uncertainty import image_scores

    corrected = prediction.mask.copy()
    corrected[:5, :5] = True
    expected = image_scores(prediction.entropy, prediction.mutual_information, corrected,
                            prediction.scores["boundary_band_px"])
    numbers = image_numbers(prediction, uncertainty_threshold=0.3, mask=corrected)
    assert numbers["mean_entropy_boundary"] == pytest.approx(expected["mean_entropy_boundary"])


def test_small_images_are_enlarged_by_whole_pixels():
    from medclipseg.app.render import enlarged

    image = np.arange(64 * 48 * 3, dtype=np.uint32).reshape(64, 48, 3).astype(np.uint8)
    big = enlarged(image, 256)
    assert big.shape == (256, 192, 3)  # factor 4 = 256 // 64
    np.testing.assert_array_equal(big[::4, ::4], image)
    np.testing.assert_array_equal(big[3::4, 3::4], image)
    same = np.zeros((300, 200, 3), np.uint8)
    assert enlarged(same, 256) is same
