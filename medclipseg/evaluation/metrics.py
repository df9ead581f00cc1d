"""Evaluation metrics on 2-D binary masks: Dice and normalised surface Dice.

Inputs may be any array-like convertible to a 2-D numpy array (bool, uint8
0/255, float, ...); a pixel is foreground when its value is ``> 0``.
Predictions are resized to the ground-truth size (nearest neighbour) before
scoring; see :func:`resize_prediction_to`.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["dice_score", "normalized_surface_dice", "resize_prediction_to"]


def _as_mask(array, name: str) -> np.ndarray:
    mask = np.asarray(array)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got an array with shape {mask.shape}")
    return mask > 0


def _as_mask_pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred_mask = _as_mask(pred, "pred")
    truth_mask = _as_mask(truth, "truth")
    if pred_mask.shape != truth_mask.shape:
        raise ValueError(
            f"pred and truth must have the same shape, got {pred_mask.shape} and "
            f"{truth_mask.shape}; resize the prediction first (resize_prediction_to)"
        )
    return pred_mask, truth_mask


def dice_score(pred, truth) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)``; 1.0 when both masks are empty."""
    pred_mask, truth_mask = _as_mask_pair(pred, truth)
    total = int(pred_mask.sum()) + int(truth_mask.sum())
    if total == 0:
        return 1.0
    intersection = int(np.logical_and(pred_mask, truth_mask).sum())
    return 2.0 * intersection / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with at least one 4-neighbour in the background.

    Pixels outside the image count as background, so foreground pixels on the
    image border are surface pixels.
    """
    padded = np.pad(mask, 1, constant_values=False)
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    return mask & ~interior


def normalized_surface_dice(pred, truth, tolerance: float = 2.0) -> float:
    """Normalised surface Dice (Nikolov et al.) at a pixel ``tolerance``.

    ``NSD = (#pred-surface pixels within tolerance of the truth surface
    + #truth-surface pixels within tolerance of the pred surface)
    / (#pred-surface + #truth-surface)``, using Euclidean pixel distances.
    Both masks empty gives 1.0; exactly one empty gives 0.0.
    """
    pred_mask, truth_mask = _as_mask_pair(pred, truth)
    pred_empty = not pred_mask.any()
    truth_empty = not truth_mask.any()
    if pred_empty and truth_empty:
        return 1.0
    if pred_empty or truth_empty:
        return 0.0

    pred_surface = _surface(pred_mask)
    truth_surface = _surface(truth_mask)
    # Distance of every pixel to the nearest surface pixel of each mask.
    distance_to_truth_surface = ndimage.distance_transform_edt(~truth_surface)
    distance_to_pred_surface = ndimage.distance_transform_edt(~pred_surface)

    pred_within = int((distance_to_truth_surface[pred_surface] <= tolerance).sum())
    truth_within = int((distance_to_pred_surface[truth_surface] <= tolerance).sum())
    total = int(pred_surface.sum()) + int(truth_surface.sum())
    return (pred_within + truth_within) / total


def resize_prediction_to(pred, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D prediction to ``shape = (H, W)``.

    Uses ``cv2.INTER_NEAREST``; the input dtype is preserved.
    """
    array = np.asarray(pred)
    if array.ndim != 2:
        raise ValueError(f"pred must be a 2-D mask, got an array with shape {array.shape}")
    if len(shape) != 2:
        raise ValueError(f"shape must be (H, W), got {tuple(shape)}")
    height, width = int(shape[0]), int(shape[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"target shape must be positive, got {(height, width)}")
    if array.shape == (height, width):
        return array.copy()
    work = array.astype(np.uint8) if array.dtype == bool else np.ascontiguousarray(array)
    resized = cv2.resize(work, (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(array.dtype, copy=False)


# -- uncertainty quality ----------------------------------------------------------------------------

def average_ranks(values) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        stop = start + 1
        while stop < len(values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = 0.5 * (start + stop - 1) + 1.0
        start = stop
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson on average ranks); nan when either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("spearman needs two 1-d sequences of the same length")
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    denominator = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


class PixelUncertaintyStats:
    """Accumulates, over many images, what pixel-level uncertainty metrics need, in fixed memory.

    - AUROC of the entropy as a detector of error pixels (prediction != truth), from histograms of
      entropy on error and on correct pixels (`bins` bins over [0, ln 2]; exact up to that binning,
      ties within a bin count one half).
    - Expected calibration error of the probability: pixels binned by confidence max(p, 1 - p)
      into `calibration_bins` equal bins over [0.5, 1]; ECE = sum_b n_b / N |accuracy_b - confidence_b|.
    """

    def __init__(self, bins: int = 4096, calibration_bins: int = 15):
        self.bins = bins
        self.calibration_bins = calibration_bins
        self.error_hist = np.zeros(bins, np.int64)
        self.correct_hist = np.zeros(bins, np.int64)
        self.conf_count = np.zeros(calibration_bins, np.int64)
        self.conf_sum = np.zeros(calibration_bins, np.float64)
        self.conf_correct = np.zeros(calibration_bins, np.int64)

    def add(self, probability: np.ndarray, entropy: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> None:
        probability = np.asarray(probability, np.float64).ravel()
        entropy = np.asarray(entropy, np.float64).ravel()
        truth = np.asarray(truth, bool).ravel()
        if not (probability.shape == entropy.shape == truth.shape):
            raise ValueError("probability, entropy and truth must have the same shape")
        correct = (probability > threshold) == truth
        index = np.clip((entropy / np.log(2.0) * self.bins).astype(np.int64), 0, self.bins - 1)
        self.error_hist += np.bincount(index[~correct], minlength=self.bins)
        self.correct_hist += np.bincount(index[correct], minlength=self.bins)
        confidence = np.maximum(probability, 1.0 - probability)
        binned = np.clip(((confidence - 0.5) * 2 * self.calibration_bins).astype(np.int64), 0,
                         self.calibration_bins - 1)
        # Calibration is judged for the 0.5 decision: a pixel is right when its likelier label is true.
        right = (probability > 0.5) == truth
        self.conf_count += np.bincount(binned, minlength=self.calibration_bins)
        self.conf_sum += np.bincount(binned, weights=confidence, minlength=self.calibration_bins)
        self.conf_correct += np.bincount(binned[right], minlength=self.calibration_bins)

    @property
    def pixels(self) -> int:
        return int(self.error_hist.sum() + self.correct_hist.sum())

    def error_rate(self) -> float:
        return float(self.error_hist.sum() / max(self.pixels, 1))

    def auroc(self) -> float:
        """P(entropy at an error pixel > entropy at a correct pixel), ties counted one half."""
        errors, corrects = self.error_hist.sum(), self.correct_hist.sum()
        if errors == 0 or corrects == 0:
            return float("nan")
        correct_below = np.concatenate([[0], np.cumsum(self.correct_hist)[:-1]])
        wins = (self.error_hist * (correct_below + 0.5 * self.correct_hist)).sum()
        return float(wins / (errors * corrects))

    def ece(self) -> float:
        total = self.conf_count.sum()
        if total == 0:
            return float("nan")
        filled = self.conf_count > 0
        accuracy = self.conf_correct[filled] / self.conf_count[filled]
        confidence = self.conf_sum[filled] / self.conf_count[filled]
        return float((self.conf_count[filled] / total * np.abs(accuracy - confidence)).sum())
