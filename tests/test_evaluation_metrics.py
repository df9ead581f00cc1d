"""Tests for medclipseg.evaluation.metrics against hand-computed and brute-force references."""

import math

import numpy as np
import pytest

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
