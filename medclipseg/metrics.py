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
