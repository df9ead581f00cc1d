"""Colonoscopy: the anatomy (layout), the look of each target (appearance) and the pixels (render).

Haustral folds around a dark lumen, polyps shaded as domes lit from the endoscope, specular
highlights on fold crests.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from medclipseg.phantoms.geometry import Target
from medclipseg.phantoms import raster


def layout(rng, height, width) -> dict:
    ys, xs = raster.coords(height, width)
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
    region = raster.erode(field_, 8) & (radius > 1.8 * lumen_r)
    region[:6] = region[-6:] = False
    region[:, :6] = region[:, -6:] = False
    return {
        "region": region, "field": field_, "radius": radius, "lumen_r": lumen_r, "frame": frame,
        "centre": centre, "fold_ratio": rng.uniform(1.4, 1.75),
        "facts": {"corners": corners},
    }


def appearance(rng, target: Target, anatomy: dict) -> None:
    adenoma = target.category == "adenomatous"
    target.details.update(
        redness=float(rng.uniform(0.75, 1.0) if adenoma else rng.uniform(0.2, 0.45)),
        height=float(rng.uniform(0.8, 1.2) if adenoma else rng.uniform(0.4, 0.7)),
        pits=adenoma)


def render(rng, anatomy: dict, targets: list) -> np.ndarray:
    radius, lumen_r = anatomy["radius"], anatomy["lumen_r"]
    height, width = radius.shape
    ys, xs = raster.coords(height, width)
    diag = math.hypot(height, width)
    # Haustral folds: rings around the lumen at geometric spacing (perspective), light falls off
    # towards the lumen, which stays dark.
    phase = np.log(np.maximum(radius, 1.0) / lumen_r) / math.log(anatomy["fold_ratio"])
    phase += 0.18 * raster.smooth_noise(rng, height, width, 60)
    angle = (2 * np.pi) * phase
    crest = 0.5 + 0.5 * np.cos(angle)
    crest *= crest * crest
    facing = np.sin(angle)
    reach = radius / (rng.uniform(0.22, 0.32) * diag)
    light = 1.0 - np.exp(-reach * np.sqrt(reach))
    light *= 1.0 - 0.92 * np.exp(-(radius / lumen_r) ** 2)
    intensity = light * (0.78 + 0.3 * crest + 0.1 * facing) * (1 + 0.05 * raster.fractal_noise(rng, height, width, (30, 10, 4)))
    vessels = np.exp(-(raster.smooth_noise(rng, height, width, 12) / 0.07) ** 2) * 0.3
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
    glow = raster.gaussian_blur(highlights, 0.8) + 0.35 * raster.gaussian_blur(highlights, 3.0)
    image += (1.0 - image) * np.clip(glow, 0, 1)[..., None]
    cx, cy = anatomy["centre"]
    edge2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / min(anatomy["frame"], 0.5 * diag) ** 2
    image *= (1.0 - 0.35 * np.minimum(edge2, 1.44) ** 1.5)[..., None]
    image *= raster.gaussian_blur(anatomy["field"].astype(np.float32), 1.5)[..., None]
    return raster.to_uint8(raster.gaussian_blur(image, 0.5))


def _paint_polyp(rng, image, highlights, light, target: Target) -> None:
    details = target.details
    y0, y1, x0, x1 = raster.bounding_window(target.mask, 8)
    mask = target.mask[y0:y1, x0:x1]
    h, w = mask.shape
    depth = raster.inner_distance(mask)
    dome = raster.gaussian_blur((depth / (float(depth.max()) + 1e-6)) ** 0.6, 1.5) * details["height"]
    size = math.sqrt(mask.sum())
    gy, gx = np.gradient(dome * 0.5 * size)
    light_dir = np.asarray([rng.uniform(-0.5, 0.5), rng.uniform(-0.6, -0.1), 1.0])
    light_dir /= np.linalg.norm(light_dir)
    lambert = (-gx * light_dir[0] - gy * light_dir[1] + light_dir[2]) / np.sqrt(gx * gx + gy * gy + 1.0)
    local_light = max(0.5, float(light[y0:y1, x0:x1][mask].mean()))
    shading = np.clip(lambert, 0.2, 1.0) * (1.0 + 0.25 * dome) * (local_light + 0.15)
    red = details["redness"]
    colour = np.asarray([95 - 30 * red, 110 - 40 * red, 200 + 10 * red], np.float32) / 255.0
    texture = 1.0 + (0.045 * raster.smooth_noise(rng, h, w, 2.5) if details["pits"] else 0.025 * raster.smooth_noise(rng, h, w, 6))
    polyp = colour[None, None, :] * (shading * texture)[..., None]
    # Contact shadow around the base on the side away from the light.
    shifted = np.roll(mask, (2, -1 if light_dir[0] > 0 else 1), axis=(0, 1))
    shadow = raster.gaussian_blur(shifted.astype(np.float32), 2.5) * (~mask)
    patch = image[y0:y1, x0:x1]
    patch *= (1.0 - 0.35 * shadow)[..., None]
    alpha = raster.gaussian_blur(mask.astype(np.float32), 0.9)
    patch += (polyp - patch) * alpha[..., None]
    # One to three highlights near the apex, offset towards the light.
    apex_y, apex_x = np.unravel_index(int(np.argmax(dome)), dome.shape)
    for _ in range(int(rng.integers(1, 4))):
        x = int(apex_x + light_dir[0] * 0.25 * size + rng.normal(0, 0.08 * size))
        y = int(apex_y + light_dir[1] * 0.25 * size + rng.normal(0, 0.08 * size))
        if 0 <= y < h and 0 <= x < w and mask[y, x]:
            axes = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
            cv2.ellipse(highlights[y0:y1, x0:x1], (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
