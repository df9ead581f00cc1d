"""Breast ultrasound: the anatomy (layout), the look of each target (appearance) and the pixels (render).

The image is rendered in beam space (rows = depth, columns = scan lines) and mapped to a linear
or curved probe's field, so that posterior shadowing and enhancement run down the beam.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from medclipseg.phantoms.geometry import Target
from medclipseg.phantoms import raster


def layout(rng, height, width) -> dict:
    ys, xs = raster.coords(height, width)
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
    skin = (0.03 + 0.006 * raster.smooth_curve(rng, beam_w, 40)) * beam_h
    fat = (rng.uniform(0.14, 0.26) + 0.025 * raster.smooth_curve(rng, beam_w, 60)) * beam_h
    gland = (rng.uniform(0.66, 0.8) + 0.035 * raster.smooth_curve(rng, beam_w, 70)) * beam_h
    muscle = gland + (rng.uniform(0.08, 0.13) + 0.01 * raster.smooth_curve(rng, beam_w, 50)) * beam_h
    column = np.clip(np.round(map_u), 0, beam_w - 1).astype(np.int32)
    region = field_ & (map_v > 0.75 * fat[column]) & (map_v < gland[column] + 0.02 * beam_h)
    region &= raster.erode(field_, 6)
    return {
        "region": region, "field": field_, "map_u": map_u, "map_v": map_v,
        "inv_x": np.ascontiguousarray(inv_x, dtype=np.float32),
        "inv_y": np.ascontiguousarray(inv_y, dtype=np.float32),
        "beam": (beam_h, beam_w), "layers": (skin, fat, gland, muscle),
        "facts": {"probe": "curved" if sector else "linear"},
    }


def appearance(rng, target: Target, anatomy: dict) -> None:
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


def render(rng, anatomy: dict, targets: list) -> np.ndarray:
    beam_h, beam_w = anatomy["beam"]
    skin, fat, gland, muscle = anatomy["layers"]
    v = np.arange(beam_h, dtype=np.float32)[:, None]
    # Tissue echogenicity in beam space (rows = depth): layered bands with their own texture.
    ligaments = np.exp(-(raster.smooth_noise(rng, beam_h, beam_w, 9, 12) / 0.16) ** 2)  # Cooper's ligaments
    fat_echo = 0.28 + 0.05 * raster.smooth_noise(rng, beam_h, beam_w, 10) + 0.45 * ligaments
    gland_echo = 0.62 + 0.16 * raster.fractal_noise(rng, beam_h, beam_w, (24, 10, 5)) + 0.2 * ligaments
    gland_echo -= 0.3 * np.clip(raster.smooth_noise(rng, beam_h, beam_w, 14, 30) - 1.2, 0, 1)  # ducts / fat islands
    stripes = np.sin(2 * np.pi * v / rng.uniform(5, 8) + 2.0 * raster.smooth_noise(rng, beam_h, beam_w, 20, 36))
    muscle_echo = 0.42 + 0.15 * stripes
    deep_echo = 0.07 + 0.55 * np.exp(-((v - muscle[None, :] - 0.03 * beam_h) / 2.0) ** 2)  # pleura/rib line
    echo = 0.9 + np.zeros((beam_h, beam_w), np.float32)
    echo += (fat_echo - echo) * raster.ramp((v - skin[None, :]) / 1.5)
    echo += (gland_echo - echo) * raster.ramp((v - fat[None, :]) / 3.0)
    echo += (muscle_echo - echo) * raster.ramp((v - gland[None, :]) / 3.0)
    echo += (deep_echo - echo) * raster.ramp((v - muscle[None, :]) / 2.0)
    # Lesions: masks mapped into beam space, where posterior effects run straight down the beam.
    for target in targets:
        details = target.details
        beam_mask = cv2.remap(target.mask.astype(np.float32), anatomy["inv_x"], anatomy["inv_y"],
                              cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        inside = beam_mask > 0.5
        if not inside.any():
            continue
        alpha = raster.soft_mask(inside, details["edge"])
        y0, y1, x0, x1 = raster.bounding_window(inside, int(3 * details["edge"]) + 3)
        texture = 1.0 + (0.35 if target.category == "malignant" else 0.15) * raster.smooth_noise(rng, y1 - y0, x1 - x0, 5)
        patch = echo[y0:y1, x0:x1]
        patch += (details["level"] * texture - patch) * alpha[y0:y1, x0:x1]
        if details["halo"]:
            ring = np.clip(raster.soft_mask(inside, 2.5) * 2.2, 0, 1) * (1 - alpha)
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
    return raster.grey_to_bgr(image)
