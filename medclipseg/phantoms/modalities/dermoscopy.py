"""Dermoscopy: the anatomy (layout), the look of each target (appearance) and the pixels (render).

Skin of three tones with creases and pores, nevi with a pigment network or variegated
melanomas, hairs drawn over everything and, sometimes, the dark lens border.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from medclipseg.phantoms.geometry import Target
from medclipseg.phantoms import raster


_SKIN_TONES = {  # RGB of the skin at tone 0 (fair) ... 1 (tan)
    "fair": (238, 204, 186), "light": (224, 180, 156), "tan": (196, 142, 110),
}


def layout(rng, height, width) -> dict:
    ys, xs = raster.coords(height, width)
    aperture = rng.random() < 0.4
    field_ = np.ones((height, width), bool)
    radius = None
    if aperture:  # a dark circular border of the dermatoscope lens
        radius = rng.uniform(0.5, 0.6) * math.hypot(height, width)
        centre = (width / 2.0 + rng.uniform(-0.03, 0.03) * width, height / 2.0 + rng.uniform(-0.03, 0.03) * height)
        field_ = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 < radius ** 2
    else:
        centre = (width / 2.0, height / 2.0)
    region = raster.erode(field_, 8)
    region[:6] = region[-6:] = False
    region[:, :6] = region[:, -6:] = False
    tone = str(rng.choice(list(_SKIN_TONES)))
    hairs = int(rng.integers(2, 14)) if rng.random() < 0.55 else 0
    return {
        "region": region, "field": field_, "aperture": aperture, "radius": radius, "centre": centre,
        "facts": {"skin": tone, "hairs": hairs > 0, "hair_count": hairs, "aperture": aperture},
    }


def appearance(rng, target: Target, anatomy: dict) -> None:
    malignant = target.category == "malignant"
    target.details.update(
        variegated=malignant, network=bool(not malignant and rng.random() < 0.7),
        edge=float(rng.uniform(1.0, 2.0) if malignant else rng.uniform(2.0, 3.5)),
        darkness=float(rng.uniform(0.0, 1.0)))


def render(rng, anatomy: dict, targets: list) -> np.ndarray:
    field_ = anatomy["field"]
    height, width = field_.shape
    ys, xs = raster.coords(height, width)
    rgb = np.asarray(_SKIN_TONES[anatomy["facts"]["skin"]], np.float32) / 255.0
    rgb = rgb * rng.uniform(0.94, 1.04, size=3).astype(np.float32)
    # Skin: mottled luminance, patchy redness, fine crease lines and pores.
    shade = 1.0 + 0.035 * raster.fractal_noise(rng, height, width, (40, 16, 6))
    creases = np.exp(-(raster.smooth_noise(rng, height, width, 14, 40) / 0.09) ** 2) + np.exp(-(raster.smooth_noise(rng, height, width, 40, 14) / 0.09) ** 2)
    shade -= 0.05 * creases
    pores = np.zeros((height, width), np.float32)
    count = int(rng.integers(30, 120))
    for x, y in zip(rng.integers(0, width, count), rng.integers(0, height, count)):
        pores[y, x] = 1.0
    shade -= 0.9 * raster.gaussian_blur(pores, 0.9)
    redness = 0.035 * np.maximum(raster.smooth_noise(rng, height, width, 50), 0.0)  # patchy erythema, never green
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
        image *= raster.gaussian_blur(field_.astype(np.float32), 2.0)[..., None]
        image += 0.02 * (~field_)[..., None]
    out = raster.to_uint8(raster.gaussian_blur(image, 0.6))
    _draw_hairs(rng, out, anatomy["facts"]["hair_count"])
    return out


def _paint_skin_lesion(rng, image: np.ndarray, target: Target) -> None:
    details = target.details
    y0, y1, x0, x1 = raster.bounding_window(target.mask, int(3 * details["edge"]) + 6)
    mask = target.mask[y0:y1, x0:x1]
    h, w = mask.shape
    depth = raster.inner_distance(mask)
    centre = np.clip(depth / (float(depth.max()) + 1e-6), 0, 1)
    lesion_scale = max(6.0, math.sqrt(mask.sum()) / 3.0)
    if details["variegated"]:  # melanoma: dark brown, black, blue-grey, red and regression areas
        palette = np.asarray([(35, 55, 90), (25, 28, 40), (60, 90, 140), (120, 100, 95),
                              (75, 85, 160), (175, 180, 200)], np.float32) / 255.0  # BGR
        chosen = np.concatenate([[int(rng.integers(0, 2))], 2 + rng.choice(4, size=3, replace=False)])
        logits = np.stack([1.7 * raster.smooth_noise(rng, h, w, 1.5 * lesion_scale) for _ in chosen], axis=-1)
        logits[..., 0] += 1.5 * centre - 0.5
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        colour = weights @ palette[chosen]
        dots = (raster.smooth_noise(rng, h, w, 2.5) > 2.1) & (depth > 0) & (centre < 0.5)  # peripheral dots
        colour[dots] = (25 / 255, 25 / 255, 35 / 255)
        edge_noise = raster.smooth_noise(rng, h, w, lesion_scale)
        sharp, fuzzy = raster.gaussian_blur(mask.astype(np.float32), 0.8), raster.gaussian_blur(mask.astype(np.float32), details["edge"] + 1.5)
        alpha = np.where(edge_noise > 0, sharp, fuzzy)
    else:  # nevus: uniform brown, darker centre, regular pigment network
        base = np.asarray((60, 100, 158), np.float32) / 255.0 * (1.0 - 0.4 * details["darkness"])
        colour = base[None, None, :] * (1.0 - 0.28 * centre[..., None] ** 0.7)
        colour = colour * (1.0 + 0.05 * raster.smooth_noise(rng, h, w, lesion_scale))[..., None]
        if details["network"]:  # pigment network: an irregular mesh of darker lines
            mesh = np.exp(-(raster.smooth_noise(rng, h, w, rng.uniform(3.0, 4.5)) / 0.3) ** 2)
            fade = np.clip(centre * 2.5, 0, 1)  # the network thins out towards the border
            colour *= (1.0 - 0.22 * fade * mesh)[..., None]
        alpha = raster.gaussian_blur(mask.astype(np.float32), details["edge"])
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
