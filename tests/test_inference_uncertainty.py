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
