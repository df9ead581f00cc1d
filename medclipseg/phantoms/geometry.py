"""Targets: their shapes, sizes and locations, and their placement inside a modality's region.

Locations come from the target centroid on a 3x3 grid of the whole image (image left/right,
not the patient's side); sizes from the target's area as a fraction of the image, with bins per
modality (``SIZE_BINS``). In an image with several targets, two targets never share both size
and location, so the original prompt (which names both) always selects exactly one of them.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import cv2
import numpy as np

from medclipseg.phantoms.raster import dilate
from medclipseg.phantoms.vocabulary import IMAGE_SIZE_RANGE, LOCATIONS, SIZE_BINS, SIZES

PLACE_STEP = 2  # candidate target centres lie on this pixel grid
_LOCATION_BAND = 0.03  # keep centroids this far (fraction of a side) from the 3x3 grid lines


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


def size_of(modality: str, fraction: float) -> str:
    """Size label of an area fraction: bins split half-way through the gaps between them."""
    bins = SIZE_BINS[modality]
    small_medium = 0.5 * (bins["small"][1] + bins["medium"][0])
    medium_large = 0.5 * (bins["medium"][1] + bins["large"][0])
    if fraction < small_medium:
        return "small"
    return "medium" if fraction < medium_large else "large"


def location_of(cx: float, cy: float, height: int, width: int) -> str:
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


def place_targets(rng, modality: str, count: int, region: np.ndarray,
                   prefer: Optional[Callable] = None, attempts: int = 30) -> list:
    """Place up to ``count`` non-overlapping targets inside ``region``.

    Larger targets go first; a target that does not fit is retried smaller, then dropped; when
    targets were dropped, the whole image is tried again with smaller sizes (up to 3 rounds). No
    two targets share both size and location cell, and centroids avoid the 3x3 grid lines (so
    the location words are clear). ``prefer(category, r_in, r_out)`` may restrict candidate
    centres (r_in, r_out: radii of the circles inside and around the shape, about its anchor); it
    returns a boolean map on the placement grid (every ``PLACE_STEP``-th pixel) or None.
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
    """One placement round for [category, size, shape] plans (see ``place_targets``)."""
    spec = _SPECS[modality]
    height, width = region.shape
    bins = SIZE_BINS[modality]
    plans = sorted(plans, key=lambda plan: -SIZES.index(plan[1]))
    occupied = np.zeros((height, width), bool)
    placed: list = []
    for category, size, shape in plans:
        allowed = region & ~dilate(occupied, spec.gap)
        # Candidate centres on a 2-px grid: 4x fewer pixels to scan per attempt.
        distance = cv2.distanceTransform(allowed.astype(np.uint8), cv2.DIST_L2, 3)[::PLACE_STEP, ::PLACE_STEP]
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
                    row, col = row * PLACE_STEP, col * PLACE_STEP
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
                    actual_size = size_of(modality, len(ys) / float(height * width))
                    location = location_of(cx, cy, height, width)
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


def image_size(rng, modality: str) -> tuple:
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
