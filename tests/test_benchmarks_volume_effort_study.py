"""The rules of benchmarks/volume_effort_study.py on small synthetic volumes with known answers.

No model and no training: the drawn-slice choice, the split of the volume, and the four ways of
filling a volume from drawn slices, each against a count or formula worked out here by hand.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import volume_effort_study as study  # noqa: E402

DEPTH, SIZE, RADIUS = 12, 21, 5
FIRST, LAST = 2, 9          # the cylinder's slices
LENGTH = LAST - FIRST + 1   # 8


def disc(center=(10, 10), radius=RADIUS) -> np.ndarray:
    rows, cols = np.mgrid[:SIZE, :SIZE]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius ** 2


@pytest.fixture
def cylinder() -> np.ndarray:
    volume = np.zeros((DEPTH, SIZE, SIZE), dtype=bool)
    volume[FIRST:LAST + 1] = disc()
    return volume


def dsc(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------------------------ drawn slices


def test_drawn_slices_spread_over_the_extent_with_both_ends(cylinder):
    # lo = 2, hi = 9: positions 2 + i * 7 / (k - 1), rounded half up, worked out by hand.
    assert study.drawn_slices(cylinder, 2) == [2, 9]
    assert study.drawn_slices(cylinder, 3) == [2, 6, 9]            # 2, 5.5, 9
    assert study.drawn_slices(cylinder, 5) == [2, 4, 6, 7, 9]      # 2, 3.75, 5.5, 7.25, 9
    # More slices asked for than the extent holds: every slice of it, once.
    assert study.drawn_slices(cylinder, 10) == list(range(2, 10))
    assert study.drawn_slices(cylinder, 30) == list(range(2, 10))


def test_one_drawn_slice_is_the_largest():
    volume = np.zeros((DEPTH, SIZE, SIZE), dtype=bool)
    for s, radius in {3: 2, 4: 4, 5: 6, 6: 6, 7: 3}.items():
        volume[s] = disc(radius=radius)
    assert study.drawn_slices(volume, 1) == [5]  # 5 and 6 tie: the lower one
    with pytest.raises(ValueError):
        study.drawn_slices(volume, 0)
    with pytest.raises(ValueError):
        study.drawn_slices(np.zeros_like(volume), 3)


def test_split_slice_balances_the_structures():
    a = np.zeros((10, 4, 4), dtype=bool)
    b = np.zeros((10, 4, 4), dtype=bool)
    a[0:10, 0, 0] = True   # one voxel on slices 0..9
    b[4:10, 1, 1] = True   # one voxel on slices 4..9
    # z = 6: a has 6/10 below, b 2/6: the smaller shares 0.4 and 1/3, so 1/3; z = 5 gives 1/6 (b),
    # z = 7 gives 0.3 (a): 6 is the best.
    assert study.split_slice({"a": a, "b": b}, ["a", "b"]) == 6
    assert study.training_slices(b, range(0, 6), margin=2) == [2, 3, 4, 5]


# ------------------------------------------------------------------------------ the methods


def test_interpolation_only(cylinder):
    one, provenance = study.fill_interpolation(cylinder, [5])
    # One slice of the cylinder's 8: 2A / (A + 8A) = 2 / 9.
    assert dsc(one, cylinder) == pytest.approx(2 / (LENGTH + 1))
    assert provenance.count("drawn") == 1 and provenance.count("interpolated") == 0
    ends, provenance = study.fill_interpolation(cylinder, [FIRST, LAST])
    assert np.array_equal(ends, cylinder)  # equal shapes interpolate to themselves
    assert provenance.count("interpolated") == LENGTH - 2
    # Drawn inside the extent: outside the drawn range stays empty; 4 of 8 slices -> 2*4/(4+8).
    inner, _ = study.fill_interpolation(cylinder, [4, 7])
    assert dsc(inner, cylinder) == pytest.approx(2 * 4 / (4 + LENGTH))


def test_propagation_with_a_perfect_model(cylinder):
    probability = cylinder.astype(float)
    entropy = np.zeros(cylinder.shape)
    for stop in (True, False):
        mask, provenance, stops = study.fill_propagation(cylinder, [5], probability, entropy, stop=stop)
        assert np.array_equal(mask, cylinder)
        assert provenance.count("propagated") == LENGTH - 1
        assert sorted(stops) == ["empty", "empty"]  # past both ends the model finds nothing


def test_the_uncertainty_stop(cylinder):
    probability = cylinder.astype(float)
    uncertain = np.full(cylinder.shape, 0.6)  # above the default band-entropy limit everywhere
    mask, provenance, stops = study.fill_propagation(cylinder, [5], probability, uncertain, stop=True)
    assert dsc(mask, cylinder) == pytest.approx(2 / (LENGTH + 1))  # nothing carried
    assert stops == ["uncertain", "uncertain"]
    mask, _, _ = study.fill_propagation(cylinder, [5], probability, uncertain, stop=False)
    assert np.array_equal(mask, cylinder)


def test_gaps_between_the_stops_are_interpolated(cylinder):
    probability = cylinder.astype(float)
    entropy = np.zeros(cylinder.shape)
    entropy[5:7] = 0.6  # slices 5 and 6 uncertain
    mask, provenance, stops = study.fill_propagation(cylinder, [FIRST, LAST], probability, entropy, stop=True)
    assert np.array_equal(mask, cylinder)
    # 2 -> 3, 4 (stops at 5); 9 -> 8, 7 (stops at 6); 5 and 6 interpolated between 4 and 7.
    assert [provenance[s] for s in range(FIRST, LAST + 1)] == [
        "drawn", "propagated", "propagated", "interpolated", "interpolated", "propagated", "propagated", "drawn"]
    assert sorted(stops) == ["empty", "empty", "uncertain", "uncertain"]


def test_a_slice_reached_twice_takes_the_nearer_drawn_slice():
    # The model sees two blobs on slices 2..8; slice 2 is drawn with the left one, slice 8 with the
    # right one. Without limits both fronts run to the other drawn slice; slices 3, 4 and 5 (5: a
    # tie, 3 from each) keep the left blob, 6 and 7 the right one.
    left, right = disc((10, 4), 3), disc((10, 16), 3)
    probability = np.zeros((DEPTH, SIZE, SIZE))
    probability[2:9] = (left | right).astype(float)
    truth = np.zeros((DEPTH, SIZE, SIZE), dtype=bool)
    truth[2:6] = left
    truth[6:9] = right
    mask, provenance, stops = study.fill_propagation(truth, [2, 8], probability, None, stop=False)
    assert np.array_equal(mask, truth)
    assert provenance.count("propagated") == 5
    assert sorted(stops) == ["drawn", "drawn", "empty", "empty"]


def test_model_alone(cylinder):
    nothing = np.zeros(cylinder.shape)
    drawn = study.drawn_slices(cylinder, 3)
    mask, provenance = study.fill_model(cylinder, drawn, nothing)
    # Only the 3 drawn slices: 2*3A / (3A + 8A) = 6 / 11.
    assert dsc(mask, cylinder) == pytest.approx(2 * 3 / (3 + LENGTH))
    assert provenance.count("drawn") == 3 and provenance.count("predicted") == DEPTH - 3
    results = study.run_methods(cylinder, drawn, cylinder.astype(float), np.zeros(cylinder.shape))
    assert set(results) == set(study.METHODS)
    assert all(results[m]["dsc"] == pytest.approx(1.0) for m in study.METHODS)


def test_inputs_are_not_changed(cylinder):
    before = cylinder.copy()
    probability = cylinder.astype(float)
    study.run_methods(cylinder, [3, 7], probability, np.zeros(cylinder.shape))
    assert np.array_equal(cylinder, before)
    assert np.array_equal(probability, before.astype(float))
