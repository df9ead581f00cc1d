"""Turning brush strokes into a corrected mask.

The browser editor cannot hold a server-side mask as an editable layer, so the annotator paints
on a picture of image + mask with two brush colours: green adds foreground, magenta erases it.
The server reads the stroke layers (PNG, lossless), classifies painted pixels by colour and
combines them with the current mask::

    corrected = (predicted or add) and not erase

Edits are kept as a list of (add, erase) steps so that the last one can be undone and the
corrected mask can be recomputed when the mask threshold changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

ADD_COLOUR_HEX = "#00e000"
ERASE_COLOUR_HEX = "#ff00ff"
ADD_COLOUR = (0, 224, 0)
ERASE_COLOUR = (255, 0, 255)
MIN_STROKE_ALPHA = 128  # anti-aliased stroke edges below half opacity are ignored


def combine(predicted: np.ndarray, add: np.ndarray, erase: np.ndarray) -> np.ndarray:
    """corrected = (predicted or add) and not erase (all bool, same shape)."""
    if not (predicted.shape == add.shape == erase.shape):
        raise ValueError(f"mask shapes differ: {predicted.shape}, {add.shape}, {erase.shape}")
    return (predicted.astype(bool) | add.astype(bool)) & ~erase.astype(bool)


def _as_rgba(layer: np.ndarray) -> np.ndarray:
    layer = np.asarray(layer)
    if layer.ndim == 2:  # grey without alpha: any non-black pixel counts as painted in white
        alpha = np.where(layer > 0, 255, 0).astype(np.uint8)
        return np.dstack([layer, layer, layer, alpha])
    if layer.shape[2] == 3:
        alpha = np.where(layer.max(axis=2) > 0, 255, 0).astype(np.uint8)
        return np.dstack([layer, alpha])
    if layer.shape[2] == 4:
        return layer
    raise ValueError(f"stroke layer has {layer.shape[2]} channels; expected RGB or RGBA")


def classify_strokes(layer_rgba: np.ndarray) -> tuple:
    """(add, erase) bool masks of one RGBA stroke layer, by which brush colour is nearer.

    A painted pixel is green-dominant (add) or red+blue-dominant (erase); other colours are
    ignored, so a stray colour from the editor's palette does not change the mask.
    """
    rgba = _as_rgba(layer_rgba).astype(np.int16)
    red, green, blue, alpha = rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3]
    painted = alpha >= MIN_STROKE_ALPHA
    add = painted & (green > red + 40) & (green > blue + 40)
    erase = painted & (red > green + 40) & (blue > green + 40)
    return add, erase


def strokes_to_masks(layers: Iterable[Optional[np.ndarray]], shape: tuple) -> tuple:
    """Merge every stroke layer into (add, erase) masks of ``shape`` (H, W).

    Layers may come at display resolution; they are resized with nearest neighbour. Where an
    add and an erase stroke overlap, erase wins (the safer reading of a contradictory edit).
    """
    height, width = int(shape[0]), int(shape[1])
    add = np.zeros((height, width), bool)
    erase = np.zeros((height, width), bool)
    for layer in layers:
        if layer is None:
            continue
        layer_add, layer_erase = classify_strokes(layer)
        if layer_add.shape != (height, width):
            layer_add = cv2.resize(layer_add.astype(np.uint8), (width, height),
                                   interpolation=cv2.INTER_NEAREST).astype(bool)
            layer_erase = cv2.resize(layer_erase.astype(np.uint8), (width, height),
                                     interpolation=cv2.INTER_NEAREST).astype(bool)
        add |= layer_add
        erase |= layer_erase
    return add & ~erase, erase


@dataclass
class EditHistory:
    """Applied (add, erase) steps on one prediction; the corrected mask follows any threshold."""

    shape: tuple
    steps: list = field(default_factory=list)

    def apply(self, add: np.ndarray, erase: np.ndarray) -> bool:
        """Record a step; returns False (and records nothing) when the strokes are empty."""
        if add.shape != tuple(self.shape) or erase.shape != tuple(self.shape):
            raise ValueError("stroke masks do not match the image size")
        if not add.any() and not erase.any():
            return False
        self.steps.append((add.astype(bool), erase.astype(bool)))
        return True

    def undo(self) -> bool:
        if not self.steps:
            return False
        self.steps.pop()
        return True

    def corrected(self, predicted: np.ndarray) -> np.ndarray:
        """Steps replayed in order on ``predicted`` (later strokes override earlier ones)."""
        mask = predicted.astype(bool).copy()
        for add, erase in self.steps:
            mask = combine(mask, add, erase)
        return mask

    def __len__(self) -> int:
        return len(self.steps)


def changed_pixels(before: np.ndarray, after: np.ndarray) -> dict:
    """Pixels added, erased and changed between two masks."""
    before = before.astype(bool)
    after = after.astype(bool)
    added = int((after & ~before).sum())
    erased = int((before & ~after).sum())
    return {"pixels_added": added, "pixels_erased": erased, "pixels_changed": added + erased}


def masks_from_layer_images(layers: Sequence, shape: tuple) -> tuple:
    """``strokes_to_masks`` for layer values as the editor delivers them (arrays or file paths)."""
    arrays = []
    for layer in layers or []:
        if layer is None:
            continue
        if isinstance(layer, (str, bytes)) or hasattr(layer, "__fspath__"):
            decoded = cv2.imread(str(layer), cv2.IMREAD_UNCHANGED)
            if decoded is None:
                raise ValueError(f"could not read stroke layer {layer}")
            if decoded.ndim == 3 and decoded.shape[2] == 4:
                decoded = decoded[..., [2, 1, 0, 3]]
            elif decoded.ndim == 3:
                decoded = decoded[..., ::-1]
            arrays.append(decoded)
        else:
            arrays.append(np.asarray(layer))
    return strokes_to_masks(arrays, shape)
