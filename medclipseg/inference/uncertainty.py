"""Uncertainty from Monte-Carlo probabilities: entropy, mutual information, image-level scores.

All entropies are in nats. For K sample probabilities p_k of a pixel and their mean p:
    predictive entropy   H[p]              (total uncertainty; what the authors display)
    expected entropy     mean_k H[p_k]     (aleatoric part)
    mutual information   H[p] - mean_k H[p_k]  >= 0  (epistemic part: disagreement of samples)
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

PROBABILITY_CLAMP = 1e-7
MAX_BINARY_ENTROPY = float(np.log(2.0))


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(PROBABILITY_CLAMP, 1.0 - PROBABILITY_CLAMP)
    return -(p * torch.log(p) + (1.0 - p) * torch.log1p(-p))


class MonteCarloAccumulator:
    """Running sums over sample chunks [c, B, H, W] of probabilities, with a convergence test."""

    def __init__(self):
        self.count = 0
        self.sum_probability: Optional[torch.Tensor] = None
        self.sum_entropy: Optional[torch.Tensor] = None
        self._previous_entropy: Optional[torch.Tensor] = None
        self.last_entropy_change = float("inf")
        self.last_mask_change = float("inf")

    def add_logits(self, logits: torch.Tensor) -> None:
        probabilities = torch.sigmoid(logits.float())
        chunk_probability = probabilities.sum(0)
        chunk_entropy = binary_entropy(probabilities).sum(0)
        if self.sum_probability is None:
            self.sum_probability, self.sum_entropy = chunk_probability, chunk_entropy
        else:
            self.sum_probability = self.sum_probability + chunk_probability
            self.sum_entropy = self.sum_entropy + chunk_entropy
        self.count += probabilities.shape[0]

    @property
    def mean_probability(self) -> torch.Tensor:
        return self.sum_probability / self.count

    @property
    def predictive_entropy(self) -> torch.Tensor:
        return binary_entropy(self.mean_probability)

    @property
    def expected_entropy(self) -> torch.Tensor:
        return self.sum_entropy / self.count

    @property
    def mutual_information(self) -> torch.Tensor:
        return (self.predictive_entropy - self.expected_entropy).clamp_min(0.0)

    def converged(self, entropy_tolerance: float, mask_tolerance: float, threshold: float = 0.5) -> bool:
        """True when the last chunk moved the entropy map and the mask by less than the tolerances.

        entropy change: mean absolute change of the entropy map (nats);
        mask change: 1 - Dice of the thresholded masks before and after the chunk (0 if both empty),
        so the tolerance is relative to the size of the structure, not of the image.
        """
        entropy = self.predictive_entropy
        mask = self.mean_probability > threshold
        converged = False
        if self._previous_entropy is not None:
            previous_entropy, previous_mask = self._previous_entropy
            self.last_entropy_change = float((entropy - previous_entropy).abs().mean())
            overlap = float((mask & previous_mask).sum())
            total = float(mask.sum() + previous_mask.sum())
            self.last_mask_change = 0.0 if total == 0 else 1.0 - 2.0 * overlap / total
            converged = self.last_entropy_change < entropy_tolerance and self.last_mask_change < mask_tolerance
        self._previous_entropy = (entropy, mask)
        return converged


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` pixels of the mask boundary, on either side."""
    import cv2

    mask_u8 = mask.astype(np.uint8)
    if width < 1 or not mask_u8.any():
        return np.zeros(mask.shape, dtype=bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    dilated = cv2.dilate(mask_u8, kernel)
    eroded = cv2.erode(mask_u8, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (dilated != eroded)


def _masked_mean(values: np.ndarray, where: np.ndarray) -> float:
    return float(values[where].mean()) if where.any() else 0.0


def image_scores(
    entropy: np.ndarray,
    mutual_information: np.ndarray,
    mask: np.ndarray,
    band_width: int,
    uncertain_threshold: float = 0.5 * MAX_BINARY_ENTROPY,
) -> dict:
    """Image-level numbers used to rank cases (all entropies in nats).

    mean_entropy            over the whole image
    mean_entropy_foreground over the predicted foreground (0 when the mask is empty)
    mean_entropy_boundary   over a band of `band_width` px around the predicted boundary (0 if none)
    mean_mutual_information over the whole image; mutual_information_foreground likewise
    foreground_fraction     predicted area / image area
    uncertain_fraction      area with entropy above `uncertain_threshold` / image area
    """
    band = boundary_band(mask, band_width)
    return {
        "mean_entropy": float(entropy.mean()),
        "mean_entropy_foreground": _masked_mean(entropy, mask),
        "mean_entropy_boundary": _masked_mean(entropy, band),
        "mean_mutual_information": float(mutual_information.mean()),
        "mutual_information_foreground": _masked_mean(mutual_information, mask),
        "foreground_fraction": float(mask.mean()),
        "foreground_pixels": int(mask.sum()),
        "uncertain_fraction": float((entropy > uncertain_threshold).mean()),
        "boundary_band_px": int(band_width),
    }
