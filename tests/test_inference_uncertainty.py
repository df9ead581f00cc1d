"""Entropy, mutual information and image-level scores against hand-written formulas."""
import math

import numpy as np
import pytest
import torch

from medclipseg.inference.uncertainty import MonteCarloAccumulator, binary_entropy, boundary_band, image_scores


def test_binary_entropy_values():
    p = torch.tensor([0.5, 0.1, 0.9, 0.0, 1.0], dtype=torch.float64)
    expected = [math.log(2), -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))] * 1
    got = binary_entropy(p)
    assert got[0].item() == pytest.approx(math.log(2), abs=1e-12)
    assert got[1].item() == pytest.approx(expected[1], abs=1e-12)
    assert got[2].item() == pytest.approx(expected[1], abs=1e-12)  # symmetric
    assert 0 <= got[3].item() < 1e-5 and 0 <= got[4].item() < 1e-5  # finite at 0 and 1


def test_accumulator_entropy_and_mutual_information():
    # Two samples of one pixel: p = 0.2 and 0.8 -> mean 0.5.
    logits = torch.logit(torch.tensor([0.2, 0.8], dtype=torch.float64)).view(2, 1, 1)
    accumulator = MonteCarloAccumulator()
    accumulator.add_logits(logits[:1])
    accumulator.add_logits(logits[1:])
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert accumulator.count == 2
    assert accumulator.mean_probability.item() == pytest.approx(0.5, abs=1e-6)
    assert accumulator.predictive_entropy.item() == pytest.approx(math.log(2), abs=1e-6)
    assert accumulator.expected_entropy.item() == pytest.approx(h(0.2), abs=1e-6)
    assert accumulator.mutual_information.item() == pytest.approx(math.log(2) - h(0.2), abs=1e-6)


def test_identical_samples_have_no_mutual_information():
    logits = torch.full((4, 3, 3), 0.7)
    accumulator = MonteCarloAccumulator()
    accumulator.add_logits(logits)
    assert torch.allclose(accumulator.mutual_information, torch.zeros(3, 3), atol=1e-6)


def test_convergence_uses_mask_dice_and_entropy_change():
    accumulator = MonteCarloAccumulator()
    base = torch.zeros(1, 8, 8) - 3.0
    base[:, 2:6, 2:6] = 3.0
    accumulator.add_logits(base)
    assert not accumulator.converged(1e-3, 0.01)  # nothing to compare with yet
    accumulator.add_logits(base)
    assert accumulator.converged(1e-3, 0.01)
    assert accumulator.last_mask_change == 0.0 and accumulator.last_entropy_change == pytest.approx(0.0, abs=1e-9)
    shifted = base.clone()
    shifted[:, 2:6, 2:6] = -3.0
    shifted[:, 0:4, 0:4] = 3.0
    for _ in range(4):
        accumulator.add_logits(shifted)
    assert not accumulator.converged(1e-3, 0.01)
    assert accumulator.last_mask_change > 0.01


def test_boundary_band_and_scores():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    band = boundary_band(mask, 1)
    # 3x3 dilation minus 3x3 erosion (elliptical 3x3 kernel is a cross): a ring around the edge.
    assert band[5, 10] and band[4, 10] and not band[10, 10] and not band[0, 0]
    assert not boundary_band(np.zeros((5, 5), bool), 2).any()

    entropy = np.zeros((20, 20), np.float32)
    entropy[mask] = 0.4
    entropy[0, 0] = 0.6
    mutual = entropy / 2
    scores = image_scores(entropy, mutual, mask, band_width=1, uncertain_threshold=0.5)
    assert scores["mean_entropy"] == pytest.approx(entropy.mean())
    assert scores["mean_entropy_foreground"] == pytest.approx(0.4)
    assert scores["mean_entropy_boundary"] == pytest.approx(entropy[band].mean())
    assert scores["foreground_pixels"] == 100 and scores["foreground_fraction"] == pytest.approx(0.25)
    assert scores["uncertain_fraction"] == pytest.approx(1 / 400)
    assert scores["mean_mutual_information"] == pytest.approx(mutual.mean())

    empty = image_scores(entropy, mutual, np.zeros_like(mask), band_width=1)
    assert empty["mean_entropy_foreground"] == 0.0 and empty["mean_entropy_boundary"] == 0.0


# -- acquisition scores ----------------------------------------------------------------------------

ACQUISITION_KEYS = ("band_entropy", "band_mutual_information", "top_entropy", "expected_dice", "expected_dice_miss",
                    "soft_foreground_pixels")


def _entropy(p):
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return (-(p * np.log(p) + (1 - p) * np.log1p(-p))).astype(np.float32)


def _opencv_ellipse(width):
    # OpenCV's elliptical structuring element of size 2w+1: row dy spans round(sqrt(w^2 - dy^2)) px
    # either side of the centre.
    dy, dx = np.mgrid[-width:width + 1, -width:width + 1]
    return np.abs(dx) <= np.rint(np.sqrt(width * width - dy * dy))


def _reference_region(mask, probability, width):
    from scipy import ndimage

    seed = mask | (probability >= 0.1)
    if width < 1:
        return seed
    return ndimage.binary_dilation(seed, structure=_opencv_ellipse(width), border_value=0)


def _reference_top_mean(values, fraction=0.01, minimum=16):
    flat = np.sort(values.astype(np.float64).ravel())[::-1]
    k = min(flat.size, max(minimum, math.ceil(fraction * flat.size)))
    return flat[:k].mean()


def _reference_expected_dice(probability, mask):
    p = probability.astype(np.float64)
    m = mask.astype(np.float64)
    return (2 * (p * m).sum() + 1) / (p.sum() + m.sum() + 1)


def _blob_maps(height=60, width=70, centre=(25, 30), radius=12.0, scale=2.0, peak=1.0):
    yy, xx = np.mgrid[:height, :width]
    distance = np.hypot(yy - centre[0], xx - centre[1])
    probability = (peak / (1 + np.exp((distance - radius) / scale))).astype(np.float32)
    entropy = _entropy(probability)
    mutual = (entropy * (0.1 + 0.4 * (xx / width))).astype(np.float32)  # not proportional to the entropy
    return probability, entropy, mutual


@pytest.mark.parametrize("width", [1, 2, 3, 6])
def test_boundary_band_matches_dilation_minus_erosion(width):
    from scipy import ndimage

    mask = np.zeros((40, 50), bool)
    mask[3:20, 0:12] = True  # touches the left edge: outside the image counts as background
    mask[30:34, 40:50] = True
    mask[25, 25] = True
    kernel = _opencv_ellipse(width)
    expected = (ndimage.binary_dilation(mask, kernel, border_value=0)
                != ndimage.binary_erosion(mask, kernel, border_value=0))
    np.testing.assert_array_equal(boundary_band(mask, width), expected)


@pytest.mark.parametrize("width", [0, 1, 2, 5])
def test_band_scores_over_dilated_soft_foreground(width):
    probability, entropy, mutual = _blob_maps()
    probability[50:60, 60:70] = 0.3  # soft foreground the threshold drops, at the image corner
    entropy = _entropy(probability)
    mask = probability > 0.5
    from medclipseg.inference.uncertainty import acquisition_region

    region = _reference_region(mask, probability, width)
    assert region.any() and not region.all()
    np.testing.assert_array_equal(acquisition_region(mask, probability, width), region)
    scores = image_scores(entropy, mutual, mask, band_width=width, probability=probability)
    assert scores["band_entropy"] == pytest.approx(entropy[region].astype(np.float64).mean(), rel=1e-6)
    assert scores["band_mutual_information"] == pytest.approx(mutual[region].astype(np.float64).mean(), rel=1e-6)


def test_acquisition_scores_on_a_disk():
    probability, entropy, mutual = _blob_maps()
    mask = probability > 0.5
    scores = image_scores(entropy, mutual, mask, band_width=3, probability=probability)
    assert scores["top_entropy"] == pytest.approx(_reference_top_mean(entropy), rel=1e-6)
    assert scores["expected_dice"] == pytest.approx(_reference_expected_dice(probability, mask), rel=1e-9)
    assert scores["expected_dice_miss"] == pytest.approx(1 - scores["expected_dice"], abs=1e-12)
    assert scores["soft_foreground_pixels"] == pytest.approx(probability.astype(np.float64).sum(), rel=1e-9)
    # Existing keys are the same with and without the probability map.
    without = image_scores(entropy, mutual, mask, band_width=3)
    assert set(scores) - set(without) == set(ACQUISITION_KEYS)
    assert {key: scores[key] for key in without} == without


def test_empty_mask_without_probability_mass():
    probability = np.zeros((30, 30), np.float32)
    entropy = _entropy(probability)
    mask = np.zeros(probability.shape, bool)
    scores = image_scores(entropy, entropy * 0.5, mask, band_width=2, probability=probability)
    assert scores["expected_dice"] == 1.0 and scores["expected_dice_miss"] == 0.0
    assert scores["band_entropy"] == 0.0 and scores["band_mutual_information"] == 0.0  # U is empty
    assert scores["soft_foreground_pixels"] == 0.0
    assert scores["top_entropy"] == pytest.approx(_reference_top_mean(entropy), rel=1e-6)


def test_empty_mask_with_probability_mass():
    probability = np.zeros((30, 30), np.float32)
    probability[10:20, 5:15] = 0.4  # 100 px the threshold drops
    entropy = _entropy(probability)
    mutual = entropy * 0.3
    mask = probability > 0.5
    assert not mask.any()
    scores = image_scores(entropy, mutual, mask, band_width=2, probability=probability)
    assert scores["soft_foreground_pixels"] == pytest.approx(40.0, rel=1e-6)
    assert scores["expected_dice"] == pytest.approx(1 / 41, rel=1e-6)
    region = _reference_region(mask, probability, 2)
    assert scores["band_entropy"] == pytest.approx(entropy[region].astype(np.float64).mean(), rel=1e-6)
    assert scores["band_mutual_information"] == pytest.approx(mutual[region].astype(np.float64).mean(), rel=1e-6)
    assert scores["mean_entropy_foreground"] == 0.0  # the old default gives this miss nothing


def test_all_foreground():
    probability = np.full((20, 25), 0.9, np.float32)
    entropy = _entropy(probability)
    mask = np.ones(probability.shape, bool)
    scores = image_scores(entropy, entropy, mask, band_width=3, probability=probability)
    n = probability.size
    assert scores["expected_dice"] == pytest.approx((2 * 0.9 * n + 1) / (0.9 * n + n + 1), rel=1e-6)
    assert scores["band_entropy"] == pytest.approx(float(entropy[0, 0]), rel=1e-6)
    assert scores["top_entropy"] == pytest.approx(float(entropy[0, 0]), rel=1e-6)
    assert scores["soft_foreground_pixels"] == pytest.approx(0.9 * n, rel=1e-6)


def test_one_pixel_speck():
    probability = np.full((32, 32), 0.01, np.float32)
    probability[16, 16] = 0.6
    entropy = _entropy(probability)
    mask = probability > 0.5
    scores = image_scores(entropy, entropy * 0.2, mask, band_width=2, probability=probability)
    region = _reference_region(mask, probability, 2)
    assert region.sum() == _opencv_ellipse(2).sum()  # the speck's own neighbourhood only
    assert scores["band_entropy"] == pytest.approx(entropy[region].astype(np.float64).mean(), rel=1e-6)
    assert scores["expected_dice"] == pytest.approx(_reference_expected_dice(probability, mask), rel=1e-9)
    assert scores["top_entropy"] == pytest.approx(_reference_top_mean(entropy), rel=1e-6)


def _tied_floor(shape, seed, distinct):
    values = np.full(shape, 1.6e-6, np.float32)
    rng = np.random.RandomState(seed)
    values.ravel()[rng.choice(values.size, distinct, replace=False)] = rng.rand(distinct).astype(np.float32)
    return values


def _high_only_where_sampled():
    # 320 x 320 is sampled every third pixel: the sample holds all the high values, the rest of
    # the image none, so the guessed cut lies above the true k-th value.
    values = (np.random.RandomState(3).rand(320 * 320) * 0.1).astype(np.float32)
    values[np.arange(0, 3 * 800, 3)] = 0.5 + np.arange(800, dtype=np.float32) / 2000
    return values.reshape(320, 320)


@pytest.mark.parametrize("make_values", [
    lambda: np.random.RandomState(0).rand(300, 310).astype(np.float32),
    lambda: _tied_floor((300, 300), 1, 100),       # fewer distinct values than k: ties fill the rest
    lambda: _tied_floor((300, 300), 2, 5000),      # more distinct values than k above a tied floor
    lambda: np.full((300, 300), 0.25, np.float32),  # all tied
    _high_only_where_sampled,
    lambda: np.random.RandomState(4).rand(10, 10).astype(np.float32),  # 1 % < 16 px: the 16 largest
    lambda: np.random.RandomState(5).rand(3, 4).astype(np.float32),    # fewer than 16 px: all of them
])
def test_top_entropy_is_the_exact_top_percent_mean(make_values):
    entropy = make_values()
    probability = np.zeros(entropy.shape, np.float32)
    scores = image_scores(entropy, entropy, probability > 0.5, band_width=1, probability=probability)
    assert scores["top_entropy"] == pytest.approx(_reference_top_mean(entropy), rel=1e-6)


def test_misses_rank_above_confident_correct_predictions():
    """The documented failure: an empty prediction scores 0 on the foreground entropy and is served
    last. The new scores rank it above a confident, correct prediction."""
    height, width = 64, 64
    yy, xx = np.mgrid[:height, :width]
    distance = np.hypot(yy - 30, xx - 34)
    confident = (1 / (1 + np.exp(-8 * (12 - distance)))).astype(np.float32)  # sharp edge
    missed = (0.4 * np.exp(-(distance / 10) ** 2)).astype(np.float32)  # mass, but nowhere above 0.5
    speck = np.full((height, width), 0.02, np.float32)
    speck[30, 34] = 0.55  # a 1 px prediction, entropy near ln 2

    def scores(probability):
        entropy = _entropy(probability)
        return image_scores(entropy, entropy * 0.3, probability > 0.5, band_width=2, probability=probability)

    confident_scores, missed_scores, speck_scores = scores(confident), scores(missed), scores(speck)
    assert missed_scores["foreground_pixels"] == 0 and confident_scores["foreground_pixels"] > 400
    assert missed_scores["mean_entropy_foreground"] == 0.0
    assert missed_scores["mean_entropy_foreground"] < confident_scores["mean_entropy_foreground"]
    for key in ("expected_dice_miss", "band_entropy", "top_entropy", "band_mutual_information"):
        assert missed_scores[key] > confident_scores[key], key
    assert confident_scores["expected_dice"] > 0.9 and missed_scores["expected_dice"] < 0.1
    assert speck_scores["mean_entropy_foreground"] > confident_scores["mean_entropy_foreground"]


def test_probability_shape_must_match():
    entropy = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="shape"):
        image_scores(entropy, entropy, entropy > 0, band_width=1, probability=np.zeros((8, 9), np.float32))


def test_scores_fast_on_a_large_image():
    import time

    probability, entropy, mutual = _blob_maps(height=1411, width=1411, centre=(700, 700), radius=650, scale=20)
    mask = probability > 0.5
    image_scores(entropy, mutual, mask, band_width=19, probability=probability)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        image_scores(entropy, mutual, mask, band_width=19, probability=probability)
        times.append(time.perf_counter() - started)
    assert min(times) < 0.5  # ~0.05 s here; generous for shared CPUs
