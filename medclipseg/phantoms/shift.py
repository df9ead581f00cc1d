"""Acquisition: in-distribution variation and the shifted range (noise, gain, gamma, blur,
resolution, modality-typical artefacts), applied to rendered pixels and never to masks."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from medclipseg.phantoms.raster import gaussian_blur, to_uint8

_GREY_MODALITIES = ("breast_ultrasound", "brain_mri", "chest_xray")


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


def apply_shift(image: np.ndarray, shift: Shift, rng, modality: str, anatomy: dict, targets: list) -> np.ndarray:
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
        work = to_uint8(values)
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
    glare = gaussian_blur(glare, 10.0) * rng.uniform(0.6, 0.9)
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
