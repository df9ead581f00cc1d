"""Uncertainty-quality metrics against independent computations (scipy / sklearn / direct sums)."""
import numpy as np
import pytest

from medclipseg.evaluation.metrics import PixelUncertaintyStats, average_ranks, spearman


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 50).astype(float)
    y = x + rng.normal(0, 2, 50)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_perfect_and_constant():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def _pairwise_auroc(scores_positive, scores_negative):
    """Mann-Whitney by brute force: P(pos > neg) + 0.5 P(pos == neg)."""
    pos = np.asarray(scores_positive)[:, None]
    neg = np.asarray(scores_negative)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_pixel_auroc_matches_brute_force_on_binned_entropy():
    rng = np.random.default_rng(1)
    truth = rng.random((40, 40)) < 0.3
    probability = np.clip(truth * 0.7 + rng.normal(0.15, 0.25, truth.shape), 1e-6, 1 - 1e-6)
    entropy = -(probability * np.log(probability) + (1 - probability) * np.log(1 - probability))
    stats = PixelUncertaintyStats(bins=4096)
    stats.add(probability, entropy, truth)
    error = (probability > 0.5) != truth
    # Compare on the same binning the accumulator uses (it is exact up to the bin width).
    binned = np.clip((entropy / np.log(2) * 4096).astype(int), 0, 4095)
    expected = _pairwise_auroc(binned[error], binned[~error])
    assert stats.auroc() == pytest.approx(expected, abs=1e-12)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert stats.auroc() == pytest.approx(sklearn_metrics.roc_auc_score(error.ravel(), entropy.ravel()), abs=2e-3)


def test_pixel_stats_accumulate_over_images():
    rng = np.random.default_rng(2)
    parts = [(rng.random((8, 9)), rng.random((8, 9)) < 0.5) for _ in range(3)]
    whole = PixelUncertaintyStats()
    for probability, truth in parts:
        whole.add(probability, probability * 0.5, truth)
    joined = PixelUncertaintyStats()
    joined.add(np.concatenate([p for p, _ in parts]), np.concatenate([p * 0.5 for p, _ in parts]),
               np.concatenate([t for _, t in parts]))
    assert whole.auroc() == joined.auroc() and whole.pixels == 216
    assert whole.ece() == pytest.approx(joined.ece(), abs=1e-12)


def test_ece_direct_formula():
    rng = np.random.default_rng(3)
    probability = rng.random(5000)
    truth = rng.random(5000) < probability ** 2  # over-confident on the positive side
    stats = PixelUncertaintyStats(calibration_bins=15)
    stats.add(probability, np.zeros_like(probability), truth)
    confidence = np.maximum(probability, 1 - probability)
    correct = (probability > 0.5) == truth
    edges = np.linspace(0.5, 1.0, 16)
    expected = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence >= low) & ((confidence < high) if high < 1.0 else (confidence <= high))
        if inside.any():
            expected += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert stats.ece() == pytest.approx(expected, abs=1e-9)


def test_perfectly_calibrated_and_perfect_detector():
    stats = PixelUncertaintyStats()
    probability = np.array([0.9, 0.9, 0.1, 0.6])
    truth = np.array([True, True, False, False])  # the only error has the highest entropy
    entropy = -(probability * np.log(probability) + (1 - probability) * np.log(1 - probability))
    stats.add(probability, entropy, truth)
    assert stats.auroc() == 1.0
    assert np.isnan(PixelUncertaintyStats().auroc())
