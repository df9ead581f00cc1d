"""Evaluation metrics on binary masks: Dice and normalised surface Dice of 2-D masks, and Dice,
normalised surface Dice and the 95th-percentile Hausdorff distance of 3-D volumes in millimetres.

Inputs may be any array-like convertible to a 2-D numpy array (bool, uint8
0/255, float, ...); a pixel is foreground when its value is ``> 0``.
Predictions are resized to the ground-truth size (nearest neighbour) before
scoring; see :func:`resize_prediction_to`.

Normalised surface Dice comes in two rules (``rule=``):

* ``"contour"`` (default): the 2-D contour NSD. The surface is the set of
  foreground pixels with a 4-neighbour in the background, every surface pixel
  weighs one, distances are Euclidean between pixel centres.
* ``"authors"``: how the MedCLIPSeg authors score a 2-D pair, and so how the
  paper's NSD numbers are computed. They hand the masks to DeepMind's
  surface-distance code as a one-slice volume (``mask[..., None]``, spacing
  1 x 1 x 1). Its surface elements are the 2 x 2 x 2 cells of the zero-extended
  volume that hold both foreground and background, each weighted by the area of
  the marching-cubes surface inside it. In a one-slice slab every cell touching
  a foreground pixel is such a cell, so the slab's top and bottom faces count as
  surface as much as its rim: the two rules differ, by several tenths on
  some random blob pairs (tests/test_evaluation_metrics.py prints the largest).

Volumes (:func:`dice_3d`, :func:`surface_dice_3d`, :func:`hausdorff95_3d`) take 3-D masks on
one voxel grid and the voxel size in mm along the array's three axes (``spacing_mm``, e.g.
``ScanVolume.spacing``), so that distances are physical on anisotropic grids. Their surface is the
3-D version of the contour rule: foreground voxels with a face neighbour (6-connectivity) in the
background, voxels outside the array counting as background; every surface voxel weighs one and
distances run between voxel centres. This is MONAI's surface (``compute_surface_dice`` and
``compute_hausdorff_distance`` with ``use_subvoxels=False``), and the values agree with MONAI's
to float rounding except where MONAI returns nan or inf for empty masks (each docstring says what
is returned instead). DeepMind's surface-distance code weighs surface cells by their marching-cubes
area instead, which gives other numbers on the same pair.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["NSD_RULES", "dice_3d", "dice_score", "hausdorff95_3d", "normalized_surface_dice", "resize_prediction_to",
           "surface_dice_3d"]

NSD_RULES = ("contour", "authors")


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


def _surface(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contour rule: foreground pixels with at least one 4-neighbour in the background.

    Pixels outside the image count as background, so foreground pixels on the
    image border are surface pixels. Returns the surface and its weights (one
    per surface pixel, zero elsewhere).
    """
    padded = np.pad(mask, 1, constant_values=False)
    interior = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    surface = mask & ~interior
    return surface, surface.astype(np.float64)


# Marching-cubes surface area inside one 2 x 2 x 2 cell of a one-slice slab, by the 2 x 2 pattern
# of mask pixels in the cell's slab layer (bit 1: top left, 2: top right, 4: bottom left,
# 8: bottom right); the cell's other layer is always outside the slab, so empty. One corner is
# cut off by a triangle of side sqrt(2)/2 (area sqrt(3)/8); two corners on an edge by a
# 1 x sqrt(2)/2 rectangle; two diagonal corners by two separate corner triangles; three corners
# by a right triangle of area 1/2 at mid-height plus triangles of sqrt(3)/4 and sqrt(3)/8; four
# corners by the unit square at mid-height (the slab's flat face).
_CORNER = math.sqrt(3.0) / 8.0
_EDGE = math.sqrt(2.0) / 2.0
_THREE = 0.5 + 3.0 * _CORNER
_SLAB_CELL_AREA = np.array([
    0.0, _CORNER, _CORNER, _EDGE,            # 0000, 0001, 0010, 0011
    _CORNER, _EDGE, 2 * _CORNER, _THREE,     # 0100, 0101, 0110, 0111
    _CORNER, 2 * _CORNER, _EDGE, _THREE,     # 1000, 1001, 1010, 1011
    _EDGE, _THREE, _THREE, 1.0,              # 1100, 1101, 1110, 1111
])


def _slab_surface(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Authors' rule: surface cells of the mask taken as a one-slice 3-D volume.

    A cell is a 2 x 2 window of the zero-extended mask ((H+1) x (W+1) windows);
    every window holding a foreground pixel is a surface cell, the window of the
    four pixels of a full 2 x 2 block included. The slab has two layers of cells,
    one above and one below the slice, with the same patterns, so the same
    weights and, between two masks, the same in-plane distances: one layer gives
    the same ratio.
    """
    padded = np.pad(mask, 1, constant_values=False).astype(np.uint8)
    pattern = padded[:-1, :-1] + 2 * padded[:-1, 1:] + 4 * padded[1:, :-1] + 8 * padded[1:, 1:]
    return pattern > 0, _SLAB_CELL_AREA[pattern]


def normalized_surface_dice(pred, truth, tolerance: float = 2.0, rule: str = "contour") -> float:
    """Normalised surface Dice (Nikolov et al.) at a pixel ``tolerance``.

    ``NSD = (weight of pred-surface elements within tolerance of the truth
    surface + weight of truth-surface elements within tolerance of the pred
    surface) / (total pred-surface weight + total truth-surface weight)``, with
    Euclidean distances. ``rule`` picks the surface elements and their weights:
    ``"contour"`` (default, boundary pixels of weight one) or ``"authors"`` (the
    one-slice slab of the MedCLIPSeg evaluation; see the module docstring).
    Both masks empty gives 1.0; exactly one empty gives 0.0 (both rules).
    """
    if rule not in NSD_RULES:
        raise ValueError(f"rule must be one of {', '.join(NSD_RULES)}; got {rule!r}")
    pred_mask, truth_mask = _as_mask_pair(pred, truth)
    pred_empty = not pred_mask.any()
    truth_empty = not truth_mask.any()
    if pred_empty and truth_empty:
        return 1.0
    if pred_empty or truth_empty:
        return 0.0
    surface = _surface if rule == "contour" else _slab_surface
    pred_surface, pred_weight = surface(pred_mask)
    truth_surface, truth_weight = surface(truth_mask)
    # Distance of every element to the nearest surface element of each mask.
    distance_to_truth_surface = ndimage.distance_transform_edt(~truth_surface)
    distance_to_pred_surface = ndimage.distance_transform_edt(~pred_surface)

    # Within and total sum the same elements in the same order, so a perfect match gives exactly 1.
    pred_within = pred_weight[pred_surface & (distance_to_truth_surface <= tolerance)].sum()
    truth_within = truth_weight[truth_surface & (distance_to_pred_surface <= tolerance)].sum()
    total = pred_weight[pred_surface].sum() + truth_weight[truth_surface].sum()
    return float((pred_within + truth_within) / total)


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


# -- volumes ----------------------------------------------------------------------------------------

def _as_volume_mask(array, name: str) -> np.ndarray:
    mask = np.asarray(array)
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a 3-D mask, got an array with shape {mask.shape}")
    return mask > 0


def _as_volume_pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred_mask = _as_volume_mask(pred, "pred")
    truth_mask = _as_volume_mask(truth, "truth")
    if pred_mask.shape != truth_mask.shape:
        raise ValueError(f"pred and truth must be on the same voxel grid, got shapes {pred_mask.shape} and "
                         f"{truth_mask.shape}")
    return pred_mask, truth_mask


def _spacing_3d(spacing_mm) -> tuple:
    values = np.atleast_1d(np.asarray(spacing_mm, dtype=np.float64)).ravel()
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing_mm must be one or three positive voxel sizes in mm, got {spacing_mm!r}")
    return tuple(float(v) for v in values)


def dice_3d(pred, truth) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)`` of two 3-D masks (voxels ``> 0``); 1.0 when both
    are empty, 0.0 when exactly one is. Voxel size does not enter: every voxel of one grid weighs the
    same. (MONAI's ``compute_dice`` returns nan for an empty truth unless ``ignore_empty=False``.)"""
    pred_mask, truth_mask = _as_volume_pair(pred, truth)
    total = int(np.count_nonzero(pred_mask)) + int(np.count_nonzero(truth_mask))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred_mask & truth_mask)) / total


def _volume_surfaces(pred_mask: np.ndarray, truth_mask: np.ndarray) -> tuple:
    """(pred surface, truth surface) inside the bounding box of both masks grown by one voxel:
    cropping changes neither the surfaces (the grown box's rim is background, as the outside of
    the array is) nor the distances between them, and keeps the distance transforms small."""
    union = pred_mask | truth_mask
    lows, highs = [], []
    for axis in range(3):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
        lows.append(int(present[0]))
        highs.append(int(present[-1]) + 1)
    box = tuple(slice(low, high) for low, high in zip(lows, highs))
    structure = ndimage.generate_binary_structure(3, 1)  # the 6 face neighbours
    surfaces = []
    for mask in (pred_mask, truth_mask):
        grown = np.pad(mask[box], 1, constant_values=False)
        surfaces.append(grown & ~ndimage.binary_erosion(grown, structure=structure, border_value=0))
    return surfaces[0], surfaces[1]


def _surface_distances(pred_mask: np.ndarray, truth_mask: np.ndarray, spacing: tuple) -> tuple:
    """(mm from every pred surface voxel to the nearest truth surface voxel, and the reverse);
    both masks must hold foreground."""
    pred_surface, truth_surface = _volume_surfaces(pred_mask, truth_mask)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_truth[pred_surface], to_pred[truth_surface]


def surface_dice_3d(pred, truth, spacing_mm, tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice (Nikolov et al.) of two 3-D masks at a tolerance in millimetres.

    ``NSD = (pred surface voxels within tolerance_mm of the truth surface + truth surface voxels
    within tolerance_mm of the pred surface) / (pred surface voxels + truth surface voxels)``, with
    Euclidean distances between voxel centres scaled by ``spacing_mm`` (voxel size in mm along the
    array's axes: one number or three). Surface: the module docstring (MONAI's, without subvoxels).
    Both masks empty gives 1.0 (MONAI: nan); exactly one empty gives 0.0 (as MONAI).
    """
    spacing = _spacing_3d(spacing_mm)
    tolerance = float(tolerance_mm)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance_mm must be a finite distance >= 0, got {tolerance_mm!r}")
    pred_mask, truth_mask = _as_volume_pair(pred, truth)
    pred_empty, truth_empty = not pred_mask.any(), not truth_mask.any()
    if pred_empty and truth_empty:
        return 1.0
    if pred_empty or truth_empty:
        return 0.0
    pred_to_truth, truth_to_pred = _surface_distances(pred_mask, truth_mask, spacing)
    within = int(np.count_nonzero(pred_to_truth <= tolerance)) + int(np.count_nonzero(truth_to_pred <= tolerance))
    return within / (pred_to_truth.size + truth_to_pred.size)


def hausdorff95_3d(pred, truth, spacing_mm) -> float:
    """95th-percentile Hausdorff distance in mm between the surfaces of two 3-D masks: the larger of
    the two directed 95th percentiles (pred surface -> truth surface and back, numpy's linear
    percentile), MONAI's ``compute_hausdorff_distance(..., percentile=95)``. Both masks empty gives
    0.0 (MONAI: nan); exactly one empty gives inf (MONAI: inf for the maximum, nan at a percentile)."""
    spacing = _spacing_3d(spacing_mm)
    pred_mask, truth_mask = _as_volume_pair(pred, truth)
    pred_empty, truth_empty = not pred_mask.any(), not truth_mask.any()
    if pred_empty and truth_empty:
        return 0.0
    if pred_empty or truth_empty:
        return math.inf
    pred_to_truth, truth_to_pred = _surface_distances(pred_mask, truth_mask, spacing)
    return float(max(np.percentile(pred_to_truth, 95), np.percentile(truth_to_pred, 95)))


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
