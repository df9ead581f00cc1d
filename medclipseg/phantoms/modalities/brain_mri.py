"""Brain MRI: the anatomy (layout), the look of each target (appearance) and the pixels (render).

An axial T1 contrast-enhanced slice: scalp, skull, CSF, cortex over white matter, ventricles;
gliomas stay clear of the brain surface, meningiomas sit against the skull.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from medclipseg.phantoms.geometry import PLACE_STEP, Target
from medclipseg.phantoms import raster


def layout(rng, height, width) -> dict:
    ys, xs = raster.coords(height, width)
    cx = width / 2.0 + rng.uniform(-0.025, 0.025) * width
    cy = height / 2.0 + rng.uniform(-0.025, 0.025) * height
    ax = rng.uniform(0.36, 0.42) * width
    ay = min(rng.uniform(0.42, 0.46) * height, ax * rng.uniform(1.12, 1.3))
    angle = math.radians(rng.uniform(-6, 6))
    dx, dy = xs - cx, ys - cy
    xr = dx * math.cos(angle) + dy * math.sin(angle)
    yr = -dx * math.sin(angle) + dy * math.cos(angle)
    rho = np.sqrt((xr / ax) ** 2 + (yr / ay) ** 2)
    rho *= 1.0 + 0.012 * raster.smooth_noise(rng, height, width, 60)
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
    region = raster.erode(brain, 4) & ~raster.dilate(ventricles, 1) & (np.abs(xr) > 3.0)
    brain_distance = cv2.distanceTransform(brain.astype(np.uint8), cv2.DIST_L2, 3)[::PLACE_STEP, ::PLACE_STEP]

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


def appearance(rng, target: Target, anatomy: dict) -> None:
    if target.category == "glioma":
        target.details.update(ring=bool(rng.random() < 0.75), rim=float(rng.uniform(2, 4)),
                              oedema=float(rng.uniform(4, 9)))
    elif target.category == "meningioma":
        target.details.update(ring=False, rim=0.0, oedema=float(rng.uniform(3, 5)) if rng.random() < 0.3 else 0.0)
    else:
        target.details.update(ring=bool(rng.random() < 0.5), rim=float(rng.uniform(1.5, 3)),
                              oedema=float(rng.uniform(5, 10)))
    target.details["has_oedema"] = target.details["oedema"] > 0


def render(rng, anatomy: dict, targets: list) -> np.ndarray:
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
    head += 0.06 * raster.smooth_noise(rng, height, width, 4) * (rho < 1.0) * (rho >= inner_table)
    head = raster.gaussian_blur(head, 0.7)
    # Brain: grey matter cortex with gyri over brighter white matter; dark sulci and fissure.
    rb = rho / brain_edge
    wiggle = 0.6 * raster.smooth_noise(rng, height, width, 13) + 0.4 * raster.smooth_noise(rng, height, width, 6)
    white = raster.ramp((0.8 + 0.08 * wiggle - rb) / 0.025)
    tissue = 0.40 + 0.2 * white + 0.02 * raster.smooth_noise(rng, height, width, 3)
    sulci = np.exp(-(raster.smooth_noise(rng, height, width, 9) / 0.17) ** 2) * raster.smoothstep(rb, 0.66, 0.93)
    tissue += (0.12 - tissue) * 0.8 * sulci
    fissure = np.maximum(0.0, 1.0 - (xr / 1.6) ** 2) * (np.abs(yr) > 0.28 * anatomy["ay"])
    tissue += (0.12 - tissue) * fissure
    nuclei = np.zeros((height, width), np.uint8)  # basal ganglia / thalami beside the ventricles
    for side in (-1, 1):
        for offset_y, size in ((-0.05, 0.12), (0.14, 0.1)):
            centre = (int(anatomy["cx"] + side * 0.24 * anatomy["ax"]), int(anatomy["cy"] + offset_y * anatomy["ay"]))
            cv2.ellipse(nuclei, centre, (int(0.09 * anatomy["ax"]), int(size * anatomy["ay"])),
                        math.degrees(anatomy["angle"]) + side * 10, 0, 360, 1, -1)
    tissue += (0.46 - tissue) * raster.gaussian_blur(nuclei.astype(np.float32), 2.5)
    tissue += (0.1 - tissue) * raster.soft_mask(anatomy["ventricles"], 0.8)
    for target in targets:
        details = target.details
        if details["oedema"] > 0:  # oedema is dark on T1; it never enters the ground truth mask
            oedema = np.clip(raster.soft_mask(target.mask, details["oedema"]) * 2.5, 0, 1) * (~target.mask)
            tissue += (0.3 - tissue) * 0.75 * oedema * anatomy["brain"]
        y0, y1, x0, x1 = raster.bounding_window(target.mask, 4)
        mask = target.mask[y0:y1, x0:x1]
        texture = raster.smooth_noise(rng, y1 - y0, x1 - x0, 4)
        if details["ring"]:
            depth = raster.inner_distance(mask)
            lesion = np.where(depth <= details["rim"], 0.93, 0.24 + 0.04 * texture)
        else:
            lesion = 0.84 + 0.05 * texture
        patch = tissue[y0:y1, x0:x1]
        patch += (lesion - patch) * raster.gaussian_blur(mask.astype(np.float32), 0.7)
    image = head + (tissue - head) * raster.ramp((brain_edge - rho) / (0.7 / (0.5 * (anatomy["ax"] + anatomy["ay"]))))
    image *= 1.0 + 0.08 * raster.smooth_noise(rng, height, width, width / 2)  # coil bias field
    # Magnitude-image noise: |signal + noise| is Rician-like (half-normal in the background).
    image += 0.02 * rng.standard_normal((height, width), dtype=np.float32)
    return raster.grey_to_bgr(np.abs(image) * (1 / 0.95))
