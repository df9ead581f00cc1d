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


# Soft-foreground level for the acquisition band: pixels the threshold dropped but the samples
# still give a real chance of being foreground (a missed structure leaves its mass here).
SOFT_FOREGROUND_PROBABILITY = 0.1
# top_entropy averages this share of the image's pixels, and at least TOP_ENTROPY_MIN_PIXELS.
TOP_ENTROPY_FRACTION = 0.01
TOP_ENTROPY_MIN_PIXELS = 16


def _ellipse_kernel(width: int) -> np.ndarray:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))


def _padded_bounding_box(mask: np.ndarray, pad: int) -> Optional[tuple]:
    """Slices of the mask's bounding box grown by `pad` px (clipped to the image); None if empty.

    Morphology with a kernel of half-width <= pad gives the same result inside this box as on
    the whole image and nothing outside it, so small structures are processed on a small crop.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (slice(max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, height)),
            slice(max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, width)))


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` pixels of the mask boundary, on either side."""
    import cv2

    mask_u8 = mask.astype(np.uint8)
    band = np.zeros(mask.shape, dtype=bool)
    box = _padded_bounding_box(mask_u8, width) if width >= 1 else None
    if box is None:
        return band
    crop = mask_u8[box]
    kernel = _ellipse_kernel(width)
    dilated = cv2.dilate(crop, kernel)
    # Outside the image counts as background, so a mask touching the edge has a band there too.
    eroded = cv2.erode(crop, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    band[box] = dilated != eroded
    return band


def acquisition_region(mask: np.ndarray, probability: np.ndarray, width: int) -> np.ndarray:
    """U = dilate(mask OR probability >= SOFT_FOREGROUND_PROBABILITY, elliptical kernel of half-width `width`).

    The predicted foreground, the soft foreground the threshold dropped, and the band around both.
    """
    import cv2

    seed = (np.asarray(mask, dtype=bool) | (probability >= SOFT_FOREGROUND_PROBABILITY)).view(np.uint8)
    if width < 1:
        return seed.view(bool).copy()
    region = np.zeros(seed.shape, dtype=bool)
    box = _padded_bounding_box(seed, width)
    if box is not None:
        region[box] = cv2.dilate(seed[box], _ellipse_kernel(width)).view(bool)
    return region


def top_pixel_count(num_pixels: int) -> int:
    """k = min(N, max(TOP_ENTROPY_MIN_PIXELS, ceil(TOP_ENTROPY_FRACTION * N))) for an image of N pixels."""
    return int(min(num_pixels, max(TOP_ENTROPY_MIN_PIXELS, int(np.ceil(TOP_ENTROPY_FRACTION * num_pixels)))))


def _masked_mean(values: np.ndarray, where: np.ndarray) -> float:
    return float(values[where].mean()) if where.any() else 0.0


# Pixels sampled to guess the k-th largest value before the exact selection in _top_mean.
_TOP_SAMPLE_PIXELS = 32768


def _top_mean(values: np.ndarray, k: int) -> float:
    """Exact mean of the k largest values.

    np.partition on a whole map slows down twenty-fold when most pixels share one value (saturated
    probabilities give a constant entropy floor), so a cut t is first guessed from a strided sample,
    set low enough that at least k values usually reach it; then only values above t are selected,
    and values equal to t fill up the rest (they are tied, so which ones does not matter).
    """
    flat = values.ravel()
    n = flat.size
    if k >= n:
        return float(flat.mean(dtype=np.float64))
    stride = max(1, n // _TOP_SAMPLE_PIXELS)
    if stride > 1:
        sample = flat[::stride]
        # Twice the expected rank plus a margin: the cut lies below the true k-th value unless the
        # sample is very unrepresentative, and the fallback below stays exact in that case too.
        rank = min(sample.size, 2 * (k * sample.size) // n + 32)
        cut = np.partition(sample, sample.size - rank)[sample.size - rank]
        above = flat[flat > cut]
        if above.size >= k:
            return float(np.partition(above, above.size - k)[above.size - k:].mean(dtype=np.float64))
        tied = int(np.count_nonzero(flat == cut))
        if above.size + tied >= k:
            return float((above.sum(dtype=np.float64) + (k - above.size) * float(cut)) / k)
    return float(np.partition(flat, n - k)[n - k:].mean(dtype=np.float64))


def image_scores(
    entropy: np.ndarray,
    mutual_information: np.ndarray,
    mask: np.ndarray,
    band_width: int,
    uncertain_threshold: float = 0.5 * MAX_BINARY_ENTROPY,
    *,
    probability: Optional[np.ndarray] = None,
) -> dict:
    """Image-level numbers used to rank cases (all entropies in nats, maps at the image's resolution).

    mean_entropy            over the whole image
    mean_entropy_foreground over the predicted foreground (0 when the mask is empty)
    mean_entropy_boundary   over a band of `band_width` px around the predicted boundary (0 if none)
    mean_mutual_information over the whole image; mutual_information_foreground likewise
    foreground_fraction     predicted area / image area
    uncertain_fraction      area with entropy above `uncertain_threshold` / image area

    With `probability` p (the Monte-Carlo mean probability map, same shape), scores that do not
    bury empty or missed predictions; with m the predicted mask, H the predictive entropy, I the
    mutual information and N the number of pixels:

    band_entropy            mean of H over U = dilate(m OR p >= 0.1, elliptical kernel of half-width
                            `band_width`) (see ``acquisition_region``); 0 when U is empty
    band_mutual_information mean of I over the same U; 0 when U is empty
    top_entropy             mean of H over the k highest-entropy pixels,
                            k = min(N, max(16, ceil(0.01 N)))
    expected_dice           (2 sum(p m) + 1) / (sum(p) + sum(m) + 1): Dice of m against a truth whose
                            pixels are foreground with odds p, smoothed by one pixel, so a confident
                            empty prediction of an absent structure scores ~1 and an empty
                            prediction with probability mass ~0
    expected_dice_miss      1 - expected_dice (the acquisition score: high = likely wrong)
    soft_foreground_pixels  sum(p), the expected foreground area in pixels

    Without `probability` these keys are left out.
    """
    mask = np.asarray(mask, dtype=bool)
    band = boundary_band(mask, band_width)
    scores = {
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
    if probability is None:
        return scores
    if probability.shape != mask.shape:
        raise ValueError(f"probability has shape {probability.shape}, the mask {mask.shape}")
    region = acquisition_region(mask, probability, band_width)
    soft_foreground = float(probability.sum(dtype=np.float64))
    overlap = float(probability[mask].sum(dtype=np.float64))
    expected_dice = (2.0 * overlap + 1.0) / (soft_foreground + scores["foreground_pixels"] + 1.0)
    scores.update({
        "band_entropy": _masked_mean(entropy, region),
        "band_mutual_information": _masked_mean(mutual_information, region),
        "top_entropy": _top_mean(entropy, top_pixel_count(entropy.size)),
        "expected_dice": expected_dice,
        "expected_dice_miss": 1.0 - expected_dice,
        "soft_foreground_pixels": soft_foreground,
    })
    return scores
