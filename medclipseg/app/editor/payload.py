"""What the mask editor and the server say to each other (plain dicts, JSON on the wire).

Server to editor, when a case opens (``case_payload``): the image as PNG, the probability map as
float32 and the entropy map as float16 (little-endian, base64: the editor thresholds exactly as
numpy does on the stored maps), the mask to start from as row-major runs, the thresholds, the
saved version the edit starts from and the colour map of the heat map. After a save the server
sends only ``saved_value`` (the new version number), so the editor keeps everything it holds.

Editor to server, after every edit (``read_edit``): the mask as runs, the thresholds, the
version it started from, and a revision counter.
"""
from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from medclipseg.inference.uncertainty import MAX_BINARY_ENTROPY
from medclipseg.io.masks import MaskRunsError, mask_from_runs, mask_to_runs, runs_text
from medclipseg.io.png import encode_png

HEATMAP_COLOURMAP = "magma"


class EditorError(ValueError):
    """The editor's value is missing or does not belong to the open case."""


@lru_cache(maxsize=4)
def colormap_table(name: str = HEATMAP_COLOURMAP) -> tuple:
    """256 RGB entries (flat, 0..255) of a matplotlib colour map, for the editor's heat map."""
    from matplotlib import colormaps

    colours = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return tuple(int(v) for v in np.round(colours * 255).astype(np.uint8).ravel())


def _base64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype)).tobytes()).decode("ascii")


def case_payload(*, case_id: int, prediction_id: int, image_rgb: np.ndarray, probability: np.ndarray,
                 entropy: np.ndarray, start_mask: np.ndarray, start: str, start_note: str,
                 base_version: Optional[int], threshold: float, uncertainty_threshold: float, opacity: float,
                 title: str) -> dict:
    """The value that opens a case in the editor. ``start`` is 'draft', 'version' or 'prediction'."""
    height, width = probability.shape
    if image_rgb.shape[:2] != (height, width) or entropy.shape != (height, width) or \
            start_mask.shape != (height, width):
        raise EditorError("The image, maps and start mask of a case must have the same size.")
    if start not in ("draft", "version", "prediction"):
        raise EditorError(f"Unknown start {start!r}.")
    png = encode_png(np.ascontiguousarray(image_rgb[..., ::-1]), compression=1)
    return {
        "kind": "case", "session": uuid.uuid4().hex, "case_id": int(case_id), "prediction_id": int(prediction_id),
        "width": int(width), "height": int(height), "title": title,
        "image": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        "probability": _base64(probability, "<f4"), "entropy": _base64(entropy, "<f2"),
        "start_runs": runs_text(mask_to_runs(start_mask)), "start": start, "start_note": start_note,
        "base_version": None if base_version is None else int(base_version),
        "threshold": float(threshold), "uncertainty_threshold": float(uncertainty_threshold),
        "opacity": float(opacity), "max_entropy": float(MAX_BINARY_ENTROPY), "colormap": list(colormap_table()),
    }


def saved_value(case_id: int, version: Optional[int], revision: int, message: str) -> dict:
    """Tells the editor a save went through: it is now based on ``version``, clean up to ``revision``."""
    return {"kind": "saved", "case_id": int(case_id), "base_version": None if version is None else int(version),
            "revision": int(revision), "message": message}


def closed_value(message: str) -> dict:
    return {"kind": "closed", "message": message}


@dataclass(frozen=True)
class EditorEdit:
    """The editor's state as the server reads it."""

    case_id: int
    prediction_id: int
    base_version: Optional[int]
    threshold: float
    uncertainty_threshold: float
    mask: np.ndarray
    revision: int
    dirty: bool          # edits since the case opened or was last saved
    edited: bool         # the mask differs from the model's at the threshold


def _number(value, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EditorError(f"The editor sent no usable {name}.") from None
    if not low <= number <= high:
        raise EditorError(f"The editor's {name} {number:g} is outside {low:g}..{high:g}.")
    return number


def _whole(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EditorError(f"The editor sent no usable {name}.") from None


def read_edit(value, *, case_id: int, shape: tuple) -> EditorEdit:
    """The editor's value for the open case ``case_id`` (of ``shape``), checked."""
    if not isinstance(value, dict) or value.get("kind") != "edit":
        raise EditorError("The editor holds no mask yet: wait until the case is shown, then try again.")
    if value.get("case_id") != case_id:
        raise EditorError(f"The editor shows case #{value.get('case_id')}, not case #{case_id}; "
                          "reopen the case you mean to save.")
    if (value.get("height"), value.get("width")) != tuple(int(n) for n in shape):
        raise EditorError("The editor's mask does not have the image's size.")
    try:
        mask = mask_from_runs(value.get("runs") or [], shape)
    except MaskRunsError as exc:
        raise EditorError(str(exc)) from None
    base = value.get("base_version")
    return EditorEdit(
        case_id=int(case_id), prediction_id=_whole(value.get("prediction_id"), "prediction id"),
        base_version=None if base is None else _whole(base, "base version"),
        threshold=_number(value.get("threshold"), "mask threshold", 0.0, 1.0),
        uncertainty_threshold=_number(value.get("uncertainty_threshold"), "uncertainty threshold", 0.0,
                                      MAX_BINARY_ENTROPY + 1e-6),
        mask=mask, revision=_whole(value.get("revision") or 0, "revision"), dirty=bool(value.get("dirty")),
        edited=bool(value.get("edited")))
