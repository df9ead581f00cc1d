"""How far several raters' masks of one case agree, and their consensus, in 2-D and 3-D.

* :func:`pairwise_dice`: the Dice similarity of every pair of raters (1 where both are empty);
* :func:`majority_vote`: a voxel is foreground when more than half of the raters marked it;
* :func:`staple`: STAPLE (Warfield et al. 2004), the expectation-maximisation estimate of the true
  segmentation and of each rater's sensitivity and specificity, computed by ITK's STAPLE filter
  through SimpleITK rather than by our own EM loop;
* :func:`agreement`: all of it for one case: the pairwise matrix and its mean, each rater against
  the consensus, and the disagreement (1 - mean pairwise Dice) that orders the reviewer's queue;
* :func:`uncertainty_vs_disagreement`: how well a model's uncertainty map predicts where the raters
  disagree: the pixel AUROC of the uncertainty for "not unanimous", and its Spearman correlation with
  the raters' vote entropy.

Every function takes boolean arrays of one shape, H x W or D x H x W.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

CONSENSUS_METHODS = ("staple", "majority")


def _stack(masks: Sequence[np.ndarray]) -> np.ndarray:
    if len(masks) == 0:
        raise ValueError("Agreement needs at least one rater's mask.")
    shapes = {np.shape(mask) for mask in masks}
    if len(shapes) != 1:
        raise ValueError(f"The raters' masks differ in shape: {sorted(shapes)}.")
    stack = np.stack([np.asarray(mask).astype(bool) for mask in masks])
    if stack.ndim not in (3, 4):
        raise ValueError(f"Masks must be 2-D or 3-D, not {stack.ndim - 1}-D.")
    return stack


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A∩B| / (|A| + |B|); 1.0 when both are empty (two raters who agree that nothing is there)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def pairwise_dice(masks: Sequence[np.ndarray]) -> np.ndarray:
    """k x k matrix of Dice between raters (1 on the diagonal)."""
    stack = _stack(masks)
    k = len(stack)
    matrix = np.ones((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            matrix[i, j] = matrix[j, i] = dice(stack[i], stack[j])
    return matrix


def majority_vote(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Foreground where strictly more than half of the raters marked it (a tie is background)."""
    stack = _stack(masks)
    return stack.sum(axis=0) * 2 > len(stack)


@dataclass(frozen=True, eq=False)
class StapleResult:
    probability: np.ndarray     # float32, the estimated probability that each pixel is foreground
    sensitivity: tuple          # per rater
    specificity: tuple          # per rater

    @property
    def mask(self) -> np.ndarray:
        return self.probability >= 0.5


def staple(masks: Sequence[np.ndarray], *, max_iterations: int = 100) -> StapleResult:
    """STAPLE by ITK's STAPLEImageFilter. Raters who all agree everywhere give their common mask."""
    import SimpleITK as sitk

    stack = _stack(masks)
    if not stack.any():
        zero = np.zeros(stack.shape[1:], np.float32)
        return StapleResult(zero, tuple([1.0] * len(stack)), tuple([1.0] * len(stack)))
    if (stack == stack[0]).all():  # EM has nothing to estimate; ITK would divide by zero
        return StapleResult(stack[0].astype(np.float32), tuple([1.0] * len(stack)), tuple([1.0] * len(stack)))
    images = [sitk.GetImageFromArray(mask.astype(np.uint8)) for mask in stack]
    flt = sitk.STAPLEImageFilter()
    flt.SetForegroundValue(1.0)
    flt.SetMaximumIterations(int(max_iterations))
    probability = sitk.GetArrayFromImage(flt.Execute(images)).astype(np.float32)
    return StapleResult(np.clip(probability, 0.0, 1.0), tuple(float(v) for v in flt.GetSensitivity()),
                        tuple(float(v) for v in flt.GetSpecificity()))


@dataclass(frozen=True, eq=False)
class Agreement:
    raters: tuple
    pairwise: np.ndarray            # k x k Dice
    consensus: np.ndarray           # bool, the chosen method's consensus
    method: str
    vs_consensus: dict = field(default_factory=dict)   # rater -> Dice against the consensus
    staple: Optional[StapleResult] = None

    @property
    def mean_pairwise(self) -> float:
        k = len(self.raters)
        if k < 2:
            return 1.0
        return float(self.pairwise[np.triu_indices(k, 1)].mean())

    @property
    def disagreement(self) -> float:
        """1 - mean pairwise Dice: 0 when the raters agree exactly."""
        return 1.0 - self.mean_pairwise

    def summary(self) -> dict:
        return {"raters": list(self.raters), "method": self.method, "mean_pairwise_dice": self.mean_pairwise,
                "disagreement": self.disagreement, "pairwise_dice": self.pairwise.round(6).tolist(),
                "dice_vs_consensus": {rater: round(value, 6) for rater, value in self.vs_consensus.items()},
                "staple_sensitivity": None if self.staple is None else list(self.staple.sensitivity),
                "staple_specificity": None if self.staple is None else list(self.staple.specificity)}


def agreement(masks_by_rater: dict, *, method: str = "staple") -> Agreement:
    """Agreement of one case's raters ({rater: mask}) and their consensus by `method`."""
    if method not in CONSENSUS_METHODS:
        raise ValueError(f"Unknown consensus method {method!r}; use one of {', '.join(CONSENSUS_METHODS)}.")
    raters = tuple(masks_by_rater)
    masks = [masks_by_rater[rater] for rater in raters]
    result = staple(masks) if method == "staple" else None
    consensus = result.mask if result is not None else majority_vote(masks)
    return Agreement(raters=raters, pairwise=pairwise_dice(masks), consensus=consensus, method=method,
                     vs_consensus={rater: dice(mask, consensus) for rater, mask in zip(raters, masks)},
                     staple=result)


def pixel_auroc(scores: np.ndarray, positive: np.ndarray) -> Optional[float]:
    """The exact area under the ROC curve of `scores` separating `positive` pixels from the rest: the
    Mann-Whitney U over average ranks (a tie counts one half). None when either class is empty."""
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, np.float64).ravel(), np.asarray(positive, bool).ravel()
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores, method="average")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def vote_entropy(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Per pixel, the binary entropy (nats) of the share of raters who marked it: 0 where they agree."""
    share = _stack(masks).mean(axis=0)
    inside = np.clip(share, 1e-12, 1 - 1e-12)
    entropy = -(inside * np.log(inside) + (1 - inside) * np.log(1 - inside))
    return np.where((share == 0) | (share == 1), 0.0, entropy)


def uncertainty_vs_disagreement(uncertainty: np.ndarray, masks: Sequence[np.ndarray]) -> dict:
    """How well a per-pixel uncertainty map (e.g. the model's predictive entropy) predicts where
    raters disagree, on one case: ``pixel_auroc`` for "the raters are not unanimous here", and
    ``pixel_spearman`` between the uncertainty and the raters' vote entropy (None where a measure is
    undefined: every pixel disputed or none, or a constant map); ``disputed_pixels``."""
    from scipy.stats import spearmanr

    stack = _stack(masks)
    uncertainty = np.asarray(uncertainty, np.float64)
    if uncertainty.shape != stack.shape[1:]:
        raise ValueError(f"The uncertainty map is {uncertainty.shape}, the raters' masks {stack.shape[1:]}.")
    votes = stack.mean(axis=0)
    disputed = (votes > 0) & (votes < 1)
    auroc = pixel_auroc(uncertainty, disputed)
    rho = None
    if auroc is not None and np.ptp(uncertainty) > 0:
        rho = float(spearmanr(uncertainty.ravel(), vote_entropy(list(stack)).ravel()).statistic)
    return {"raters": int(len(stack)), "disputed_pixels": int(disputed.sum()), "pixel_auroc": auroc,
            "pixel_spearman": rho if rho is not None and np.isfinite(rho) else None}
