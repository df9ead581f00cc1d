"""`medclipseg.team.agreement` against formulas written here: Dice by set counting, the majority
rule, and STAPLE's expectation-maximisation (Warfield et al. 2004) as a short loop of our own."""
from __future__ import annotations

import numpy as np
import pytest

from medclipseg.team.agreement import agreement, dice, majority_vote, pairwise_dice, staple


def disk(shape, centre, radius):
    grid = np.indices(shape)
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= radius ** 2


def raters_2d(seed=0):
    rng = np.random.default_rng(seed)
    truth = disk((48, 64), (24, 30), 12)
    masks = [disk((48, 64), (24 + d, 30 - d), 12 + d) for d in (0, 1, -1)]
    noisy = truth ^ (rng.random(truth.shape) < 0.08)
    return truth, masks + [noisy]


def set_dice(a, b):
    a_set, b_set = set(zip(*np.nonzero(a))), set(zip(*np.nonzero(b)))
    if not a_set and not b_set:
        return 1.0
    return 2 * len(a_set & b_set) / (len(a_set) + len(b_set))


def em_staple(masks, iterations=200):
    """Binary STAPLE written from the paper: global prior, p = q = 0.99999 at the start."""
    data = np.stack([m.reshape(-1).astype(float) for m in masks])  # raters x voxels
    prior = data.mean()
    p = np.full(len(masks), 0.99999)
    q = np.full(len(masks), 0.99999)
    for _ in range(iterations):
        a = prior * np.prod(np.where(data == 1, p[:, None], 1 - p[:, None]), axis=0)
        b = (1 - prior) * np.prod(np.where(data == 0, q[:, None], 1 - q[:, None]), axis=0)
        w = a / (a + b)
        p_new = (data * w).sum(axis=1) / w.sum()
        q_new = ((1 - data) * (1 - w)).sum(axis=1) / (1 - w).sum()
        if np.allclose(p_new, p, atol=1e-9) and np.allclose(q_new, q, atol=1e-9):
            break
        p, q = p_new, q_new
    return w.reshape(masks[0].shape), p, q


def test_dice_and_pairwise_matrix_match_set_counting():
    _, masks = raters_2d()
    matrix = pairwise_dice(masks)
    for i in range(len(masks)):
        for j in range(len(masks)):
            assert matrix[i, j] == pytest.approx(set_dice(masks[i], masks[j]) if i != j else 1.0)
    assert dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert dice(np.ones((4, 4)), np.zeros((4, 4))) == 0.0


def test_majority_vote_is_strictly_more_than_half():
    a, b, c = (np.array([[1, 1, 0, 0]], bool), np.array([[1, 0, 1, 0]], bool), np.array([[1, 0, 0, 0]], bool))
    np.testing.assert_array_equal(majority_vote([a, b, c]), [[True, False, False, False]])
    np.testing.assert_array_equal(majority_vote([a, b]), [[True, False, False, False]])  # a tie is background


@pytest.mark.parametrize("dims", [2, 3])
def test_staple_agrees_with_the_papers_em(dims):
    if dims == 2:
        _, masks = raters_2d()
    else:
        rng = np.random.default_rng(3)
        truth = disk((12, 24, 24), (6, 12, 12), 6)
        masks = [disk((12, 24, 24), (6, 12 + d, 12), 6 + d) for d in (0, 1)] + \
            [truth ^ (rng.random(truth.shape) < 0.05)]
    result = staple(masks)
    weights, p, q = em_staple(masks)
    assert np.mean(result.mask == (weights >= 0.5)) > 0.995
    np.testing.assert_allclose(result.sensitivity, p, atol=0.02)
    np.testing.assert_allclose(result.specificity, q, atol=0.02)


def test_staple_of_unanimous_or_empty_raters_is_their_mask():
    mask = disk((20, 20), (10, 10), 5)
    np.testing.assert_array_equal(staple([mask, mask, mask]).mask, mask)
    assert not staple([np.zeros((5, 5), bool)] * 2).mask.any()


def test_case_agreement_ranks_the_noisy_rater_last_and_measures_disagreement():
    truth, masks = raters_2d()
    named = dict(zip(("ann", "bea", "cyd", "noisy"), masks))
    result = agreement(named, method="staple")
    assert result.raters == ("ann", "bea", "cyd", "noisy")
    assert min(result.vs_consensus, key=result.vs_consensus.get) == "noisy"
    assert dice(result.consensus, truth) > 0.9
    upper = [set_dice(masks[i], masks[j]) for i in range(4) for j in range(i + 1, 4)]
    assert result.mean_pairwise == pytest.approx(np.mean(upper))
    assert result.disagreement == pytest.approx(1 - np.mean(upper))
    majority = agreement(named, method="majority")
    np.testing.assert_array_equal(majority.consensus, majority_vote(masks))
    assert agreement({"solo": truth}).disagreement == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        agreement({"a": truth, "b": truth[:-1]})
    with pytest.raises(ValueError, match="Unknown consensus method"):
        agreement({"a": truth}, method="mean")
