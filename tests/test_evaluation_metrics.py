"""Tests for medclipseg.evaluation.metrics against hand-computed and brute-force references."""

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from medclipseg.evaluation.metrics import dice_score, normalized_surface_dice, resize_prediction_to


def _square(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def _brute_force_surface(mask):
    height, width = mask.shape
    points = []
    for i in range(height):
        for j in range(width):
            if not mask[i, j]:
                continue
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ni, nj = i + di, j + dj
                if not (0 <= ni < height and 0 <= nj < width) or not mask[ni, nj]:
                    points.append((i, j))
                    break
    return points


def _brute_force_nsd(pred, truth, tolerance):
    pred_points = _brute_force_surface(pred)
    truth_points = _brute_force_surface(truth)

    def count_within(points, others):
        return sum(
            min(math.hypot(p[0] - q[0], p[1] - q[1]) for q in others) <= tolerance for p in points
        )

    within = count_within(pred_points, truth_points) + count_within(truth_points, pred_points)
    return within / (len(pred_points) + len(truth_points))


# --------------------------------------------------------------------- Dice


def test_dice_known_overlap():
    pred = _square((6, 6), (1, 3), (1, 3))  # 4 pixels
    truth = _square((6, 6), (1, 3), (1, 4))  # 6 pixels, 4 shared
    assert dice_score(pred, truth) == pytest.approx(2 * 4 / 10)


def test_dice_disjoint_and_identical():
    a = _square((5, 5), (0, 2), (0, 2))
    b = _square((5, 5), (3, 5), (3, 5))
    assert dice_score(a, b) == 0.0
    assert dice_score(a, a) == 1.0


def test_dice_empty_conventions():
    empty = np.zeros((4, 4), dtype=bool)
    full = np.ones((4, 4), dtype=bool)
    assert dice_score(empty, empty) == 1.0
    assert dice_score(full, empty) == 0.0
    assert dice_score(empty, full) == 0.0


def test_dice_accepts_uint8_255_and_lists():
    pred = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    truth = [[0, 1], [0, 0]]
    assert dice_score(pred, truth) == pytest.approx(2 * 1 / 3)


def test_dice_returns_python_float():
    assert isinstance(dice_score(np.ones((2, 2)), np.ones((2, 2))), float)


# ---------------------------------------------------------------------- NSD


def test_nsd_shifted_3x3_square_known_fractions():
    # 3x3 squares (8 surface pixels each) shifted by 2 columns: per square, 3 surface
    # pixels coincide (distance 0), 2 are at distance 1 and 3 at distance 2.
    a = _square((7, 9), (1, 4), (1, 4))
    b = _square((7, 9), (1, 4), (3, 6))
    assert normalized_surface_dice(a, b, tolerance=0.5) == pytest.approx(6 / 16)
    assert normalized_surface_dice(a, b, tolerance=1.0) == pytest.approx(10 / 16)
    assert normalized_surface_dice(a, b, tolerance=2.0) == pytest.approx(1.0)


def test_nsd_single_pixels():
    a = _square((5, 5), (2, 3), (2, 3))
    shifted_one = _square((5, 5), (2, 3), (3, 4))
    shifted_diag = _square((5, 5), (3, 4), (3, 4))
    shifted_far = _square((5, 5), (2, 3), (0, 1))
    assert normalized_surface_dice(a, shifted_one, tolerance=1.0) == 1.0
    assert normalized_surface_dice(a, shifted_one, tolerance=0.9) == 0.0
    assert normalized_surface_dice(a, shifted_diag, tolerance=1.0) == 0.0  # sqrt(2) away
    assert normalized_surface_dice(a, shifted_diag, tolerance=1.5) == 1.0
    assert normalized_surface_dice(a, shifted_far, tolerance=1.0) == 0.0


def test_nsd_image_edge_counts_as_background():
    # Full 5x5 mask: surface is the 16-pixel border ring. Inner 3x3 square: 8 surface
    # pixels, each 1 from the ring. Ring pixels within 1 of the square: 12 (corners are sqrt 2).
    full = np.ones((5, 5), dtype=bool)
    inner = _square((5, 5), (1, 4), (1, 4))
    assert normalized_surface_dice(full, inner, tolerance=1.0) == pytest.approx(20 / 24)
    assert normalized_surface_dice(inner, full, tolerance=1.0) == pytest.approx(20 / 24)


def test_nsd_empty_and_identical_conventions():
    empty = np.zeros((6, 6), dtype=np.uint8)
    blob = _square((6, 6), (1, 5), (2, 4)).astype(np.uint8) * 255
    assert normalized_surface_dice(empty, empty) == 1.0
    assert normalized_surface_dice(blob, empty) == 0.0
    assert normalized_surface_dice(empty, blob) == 0.0
    assert normalized_surface_dice(blob, blob, tolerance=0.0) == 1.0


def test_nsd_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(0)
    for tolerance in (0.0, 1.0, 1.5, 2.0):
        for _ in range(5):
            pred = rng.random((9, 11)) > 0.6
            truth = rng.random((9, 11)) > 0.5
            expected = _brute_force_nsd(pred, truth, tolerance)
            assert normalized_surface_dice(pred, truth, tolerance=tolerance) == pytest.approx(expected)


# ------------------------------------------- NSD against reference implementations


def _blob(rng, shape):
    """A smooth random blob covering 5 to 50 % of the image."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=rng.uniform(1.5, 5.0))
    return noise > np.quantile(noise, rng.uniform(0.5, 0.95))


def _blob_pairs(count=60, seed=0):
    """Truth blobs with predictions that are near misses (shifted, grown, shrunk) or unrelated."""
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(count):
        shape = tuple(int(v) for v in rng.integers(16, 72, 2))
        truth = _blob(rng, shape)
        kind = index % 3
        if kind == 0:
            pred = np.roll(truth, tuple(int(v) for v in rng.integers(-3, 4, 2)), axis=(0, 1))
        elif kind == 1:
            pred = ndimage.binary_dilation(truth, iterations=int(rng.integers(1, 4)))
            pred = ndimage.binary_erosion(pred, iterations=int(rng.integers(0, 5)))
        else:
            pred = _blob(rng, shape)
        if pred.any() and truth.any():
            pairs.append((pred, truth))
    return pairs


def _deepmind_nsd(pred, truth, tolerance):
    """The MedCLIPSeg evaluation's call: the pair as a one-slice volume, spacing 1 x 1 x 1."""
    surface_distance = pytest.importorskip(
        "surface_distance", reason="the reference needs the surface-distance package (requirements-dev.txt)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0/0 when both masks are empty; old scipy namespaces
        distances = surface_distance.compute_surface_distances(truth[..., None], pred[..., None], [1, 1, 1])
        return float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance))


def _monai_nsd(pred, truth, tolerance):
    """MONAI's 2-D NSD: boundary pixels by erosion, Euclidean distances, one class."""
    pytest.importorskip("monai", reason="the reference needs MONAI (requirements-dev.txt)")
    import torch
    from monai.metrics import compute_surface_dice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty classes and deprecated defaults
        value = compute_surface_dice(torch.as_tensor(pred)[None, None].float(),
                                     torch.as_tensor(truth)[None, None].float(), [tolerance],
                                     include_background=True)
    return float(value.item())


def test_authors_nsd_matches_deepmind_surface_distance_on_random_blobs():
    pairs = _blob_pairs()
    for pred, truth in pairs:
        for tolerance in (1.0, 2.0):
            expected = _deepmind_nsd(pred, truth, tolerance)
            assert normalized_surface_dice(pred, truth, tolerance=tolerance, rule="authors") == pytest.approx(
                expected, abs=1e-6)


def test_contour_nsd_matches_monai_on_random_blobs():
    for pred, truth in _blob_pairs(seed=1):
        expected = _monai_nsd(pred, truth, 2.0)
        assert normalized_surface_dice(pred, truth, tolerance=2.0) == pytest.approx(expected, abs=1e-6)
        assert normalized_surface_dice(pred, truth, tolerance=2.0, rule="contour") == pytest.approx(
            expected, abs=1e-6)


def test_authors_and_contour_rules_differ_on_random_blobs():
    differences = [abs(normalized_surface_dice(p, t, rule="authors") - normalized_surface_dice(p, t))
                   for p, t in _blob_pairs(count=150, seed=2)]
    largest = max(differences)
    print(f"largest |authors - contour| NSD difference over {len(differences)} blob pairs: {largest:.3f}")
    assert largest > 0.25
    assert np.mean(differences) > 0.02


def test_authors_nsd_is_exactly_the_public_call():
    """``medclipseg.metrics.normalized_surface_dice(pred, truth, tolerance=2.0, rule="authors")``."""
    from medclipseg import metrics

    truth = _square((12, 12), (2, 8), (2, 8))
    pred = _square((12, 12), (3, 9), (2, 8))
    value = metrics.normalized_surface_dice(pred, truth, tolerance=2.0, rule="authors")
    assert value == pytest.approx(_deepmind_nsd(pred, truth, 2.0), abs=1e-6)
    assert metrics.normalized_surface_dice(pred, truth) == normalized_surface_dice(pred, truth, rule="contour")


def test_authors_nsd_counts_the_slab_faces():
    # A 4x4 square against itself shifted by 3 columns. The contour rule scores the rims only:
    # 8 of 12 rim pixels of each square are within 2 of the other rim (2/3). The authors' rule also
    # weighs the cells of the slab's flat faces, most of which lie within 2 of the other square.
    truth = _square((8, 12), (2, 6), (1, 5))
    pred = _square((8, 12), (2, 6), (4, 8))
    assert normalized_surface_dice(pred, truth) == pytest.approx(2 / 3)
    authors = normalized_surface_dice(pred, truth, rule="authors")
    assert authors == pytest.approx(_deepmind_nsd(pred, truth, 2.0), abs=1e-6)
    assert authors == pytest.approx(0.8608, abs=1e-4)


@pytest.mark.parametrize("rule", ["contour", "authors"])
def test_nsd_empty_mask_rules(rule):
    empty = np.zeros((10, 10), dtype=bool)
    blob = _square((10, 10), (2, 6), (3, 8))
    assert normalized_surface_dice(empty, empty, rule=rule) == 1.0  # nothing to find, nothing found
    assert normalized_surface_dice(blob, empty, rule=rule) == 0.0  # empty truth, something predicted
    assert normalized_surface_dice(empty, blob, rule=rule) == 0.0  # a missed structure


def test_empty_mask_rules_agree_with_the_references(monkeypatch):
    """Where the references define a value (one mask empty) ours is the same; both empty is
    undefined there (nan) and 1.0 here, as in the authors' evaluation and the spec."""
    empty = np.zeros((10, 10), dtype=bool)
    blob = _square((10, 10), (2, 6), (3, 8))
    # The package still spells infinity np.Inf, which NumPy 2 removed; only its empty-mask branch uses it.
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    for pred, truth in ((blob, empty), (empty, blob)):
        assert _deepmind_nsd(pred, truth, 2.0) == normalized_surface_dice(pred, truth, rule="authors") == 0.0
        assert _monai_nsd(pred, truth, 2.0) == normalized_surface_dice(pred, truth) == 0.0
    assert math.isnan(_deepmind_nsd(empty, empty, 2.0)) and math.isnan(_monai_nsd(empty, empty, 2.0))


def test_nsd_rejects_unknown_rule():
    with pytest.raises(ValueError, match="rule must be one of contour, authors"):
        normalized_surface_dice(np.ones((3, 3)), np.ones((3, 3)), rule="3d")


# -------------------------------------------------------------- validation


@pytest.mark.parametrize("metric", [dice_score, normalized_surface_dice])
def test_metrics_reject_shape_mismatch(metric):
    with pytest.raises(ValueError, match="same shape"):
        metric(np.zeros((4, 4)), np.zeros((4, 5)))


@pytest.mark.parametrize("metric", [dice_score, normalized_surface_dice])
def test_metrics_reject_non_2d(metric):
    with pytest.raises(ValueError, match="2-D"):
        metric(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="2-D"):
        metric(np.zeros(4), np.zeros(4))


# ------------------------------------------------------------------ resize


def test_resize_upsamples_blocks_and_preserves_bool():
    pred = np.array([[True, False], [False, True]])
    out = resize_prediction_to(pred, (4, 4))
    expected = np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=bool
    )
    assert out.dtype == bool
    np.testing.assert_array_equal(out, expected)


def test_resize_respects_height_width_order_and_uint8():
    pred = np.array([[0, 255, 0], [255, 0, 255]], dtype=np.uint8)
    out = resize_prediction_to(pred, (4, 6))
    assert out.shape == (4, 6)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(np.repeat(pred, 2, axis=0), 2, axis=1))


def test_resize_downsample_nearest_takes_existing_values():
    pred = np.arange(16, dtype=np.uint8).reshape(4, 4)
    out = resize_prediction_to(pred, (2, 2))
    # Nearest neighbour: only original values appear, one per 2x2 block.
    for i in range(2):
        for j in range(2):
            assert out[i, j] in pred[2 * i:2 * i + 2, 2 * j:2 * j + 2]


def test_resize_then_score_against_truth_shape():
    truth = _square((8, 8), (0, 4), (0, 4))
    pred_small = np.array([[1, 0], [0, 0]], dtype=np.uint8)
    pred = resize_prediction_to(pred_small, truth.shape)
    assert dice_score(pred, truth) == 1.0


def test_resize_rejects_non_2d():
    with pytest.raises(ValueError):
        resize_prediction_to(np.zeros((2, 2, 3)), (4, 4))
    with pytest.raises(ValueError):
        resize_prediction_to(np.zeros((2, 2)), (4,))
