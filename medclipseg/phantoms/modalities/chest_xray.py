"""Chest X-ray: the anatomy (layout), the look of each target (appearance) and the pixels (render).

A frontal radiograph: body, lungs with vessels from the hila, ribs, spine, trachea, heart;
pneumonia as patchy opacities, nodules as well-defined ones.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from medclipseg.phantoms.geometry import Target
from medclipseg.phantoms import raster


def layout(rng, height, width) -> dict:
    ys, xs = raster.coords(height, width)
    cx = width / 2.0 + rng.uniform(-0.02, 0.02) * width
    half = rng.uniform(0.42, 0.48) * width
    neck = rng.uniform(0.1, 0.13) * width
    body = np.abs(xs - cx) < neck + (half - neck) * raster.smoothstep(ys, 0.02 * height, 0.16 * height)
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
    region = raster.erode(lungs, 4)
    return {
        "region": region, "lungs": lungs, "body": body, "heart": heart, "cx": cx,
        "facts": {"projection": "frontal"},
    }


def appearance(rng, target: Target, anatomy: dict) -> None:
    pneumonia = target.category == "pneumonia"
    cx = target.centroid[0]
    target.details.update(
        density=float(rng.uniform(0.22, 0.32) if pneumonia else rng.uniform(0.3, 0.42)),
        edge=float(rng.uniform(2.0, 3.5) if pneumonia else rng.uniform(0.8, 1.2)),
        lung="right" if cx < anatomy["cx"] else "left")  # the patient's side (image is mirrored)


def render(rng, anatomy: dict, targets: list) -> np.ndarray:
    body, lungs, heart, cx = anatomy["body"], anatomy["lungs"], anatomy["heart"], anatomy["cx"]
    height, width = body.shape
    ys, xs = raster.coords(height, width)
    image = np.where(body, 0.5 + 0.18 * ys / height, 0.05).astype(np.float32)
    image += 0.03 * raster.fractal_noise(rng, height, width, (40, 12))
    lung_soft = raster.gaussian_blur(lungs.astype(np.float32), 3.0)
    lung_value = 0.14 + 0.05 * (ys / height) + 0.025 * raster.fractal_noise(rng, height, width, (20, 8, 4))
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
    image += 0.07 * raster.gaussian_blur(vessels, 1.0) * lung_soft
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
    image += 0.1 * raster.gaussian_blur(ribs, 1.0) * body * (0.45 + 0.55 * lung_soft)
    # Spine and mediastinum (bright centre), dark trachea, heart shadow.
    spine = np.exp(-((xs - cx) / (0.05 * width)) ** 4) * body
    image += (0.72 + 0.04 * np.sin(2 * np.pi * ys / (0.045 * height)) - image) * spine * 0.85
    trachea = np.exp(-((xs - cx) / (0.016 * width)) ** 2) * (ys < 0.38 * height) * body
    image += (0.35 - image) * 0.6 * raster.gaussian_blur(trachea.astype(np.float32), 1.5)
    image += (0.7 - image) * 0.9 * raster.gaussian_blur(heart.astype(np.float32), 4.0)
    for target in targets:
        details = target.details
        alpha = raster.soft_mask(target.mask, details["edge"])
        if target.category == "pneumonia":
            patchy = 0.75 + 0.25 * np.clip(raster.smooth_noise(rng, height, width, 9), -1.5, 1.5) / 1.5
            image += details["density"] * np.clip(alpha * 1.1, 0, 1) * patchy
        else:
            dome = np.sqrt(np.clip(raster.inner_distance(target.mask) / 4.0, 0, 1))
            image += details["density"] * alpha * (0.75 + 0.25 * dome)
    image += 0.012 * rng.standard_normal((height, width), dtype=np.float32)
    return raster.grey_to_bgr(np.clip(raster.gaussian_blur(image, 0.6), 0, 1))
