"""Array helpers shared by the renderers: smooth noise, blurs, mask windows, morphology, casts."""
from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np


def coords(height: int, width: int) -> tuple:
    """Broadcastable float32 row (y, [H,1]) and column (x, [1,W]) coordinates."""
    return (np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :])


def smooth_noise(rng, height, width, cell, cell_x=None) -> np.ndarray:
    """Smooth Gaussian noise (unit std) with features about ``cell`` pixels wide."""
    cell_x = cell if cell_x is None else cell_x
    grid_h = max(2, int(height / cell) + 2)
    grid_w = max(2, int(width / cell_x) + 2)
    grid = rng.standard_normal((grid_h, grid_w), dtype=np.float32)
    field_ = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    field_ *= 1.0 / (float(field_[::3, ::3].std()) + 1e-6)  # a subsample is enough for the scale
    return field_


def fractal_noise(rng, height, width, cells=(48, 24, 12, 6)) -> np.ndarray:
    """Sum of noise octaves with halving amplitude (unit std approximately)."""
    total = np.zeros((height, width), np.float32)
    norm = 0.0
    for octave, cell in enumerate(cells):
        gain = 0.55 ** octave
        total += gain * smooth_noise(rng, height, width, cell)
        norm += gain * gain
    return total / math.sqrt(norm)


def gaussian_blur(image: np.ndarray, sigma: float, sigma_y: Optional[float] = None) -> np.ndarray:
    """Gaussian blur; large sigmas run on a downscaled copy (fast, visually the same)."""
    sigma_y = sigma if sigma_y is None else sigma_y
    if max(sigma, sigma_y) < 0.3:
        return image
    if max(sigma, sigma_y) > 6.0:
        factor = max(sigma, sigma_y) / 3.0
        height, width = image.shape[:2]
        small = cv2.resize(image, (max(2, round(width / factor)), max(2, round(height / factor))),
                           interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), max(0.3, sigma / factor), sigmaY=max(0.3, sigma_y / factor))
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(image, (0, 0), max(0.3, sigma), sigmaY=max(0.3, sigma_y))


def bounding_window(mask: np.ndarray, pad: int) -> tuple:
    """Padded bounding box (y0, y1, x0, x1) of a mask's foreground, clipped to the image."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    height, width = mask.shape
    return max(0, y - pad), min(height, y + h + pad), max(0, x - pad), min(width, x + w + pad)


def soft_mask(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Float blur of a boolean mask, computed on its padded bounding box only."""
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    y0, y1, x0, x1 = bounding_window(mask, int(3 * sigma) + 3)
    out[y0:y1, x0:x1] = gaussian_blur(mask[y0:y1, x0:x1].astype(np.float32), sigma)
    return out


def inner_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (px) to the mask border inside the mask, 0 outside (bounding box only)."""
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    y0, y1, x0, x1 = bounding_window(mask, 2)
    out[y0:y1, x0:x1] = cv2.distanceTransform(mask[y0:y1, x0:x1].astype(np.uint8), cv2.DIST_L2, 3)
    return out


def smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def ramp(x):
    """Cheap stand-in for a sigmoid (same slope at 0, linear, clipped to [0, 1])."""
    return np.clip(0.5 + 0.25 * x, 0.0, 1.0)


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def smooth_curve(rng, length: int, cell: float) -> np.ndarray:
    """Smooth 1-D noise (unit std) of a given length."""
    knots = max(2, int(length / cell) + 2)
    values = rng.standard_normal((1, knots), dtype=np.float32)
    curve = cv2.resize(values, (length, 1), interpolation=cv2.INTER_CUBIC)[0]
    return curve / (float(curve.std()) + 1e-6)


def grey_to_bgr(grey: np.ndarray) -> np.ndarray:
    """Float grey in [0, 1] -> uint8 BGR with three equal channels."""
    grey8 = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey8, cv2.COLOR_GRAY2BGR)


def to_uint8(image: np.ndarray) -> np.ndarray:
    scaled = image * np.float32(255.0)
    scaled += np.float32(0.5)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)
