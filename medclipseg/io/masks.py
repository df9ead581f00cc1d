"""Label images as boolean masks, read the way the authors' pipeline reads them."""
from __future__ import annotations

import os
import re
from typing import Optional, Union

import cv2
import numpy as np

from medclipseg.io.images import (
    ImageReadError,
    _check_size,
    _label,
    _name_of,
    _probe_header,
    _read_source_bytes,
    _resolve_max_pixels,
    _sniff_format,
)

__all__ = ["MaskRunsError", "mask_from_runs", "mask_to_runs", "read_mask", "runs_text"]


def read_mask(
    source: Union[str, os.PathLike, bytes], *, max_pixels: Optional[int] = None, name: Optional[str] = None
) -> np.ndarray:
    """Read a label image as a boolean mask: grey value ``>= 127`` is foreground.

    The file is read as grey like ``cv2.imread(path, 0)`` in the authors' pipeline (colour
    labels are converted to grey first). Resizing (nearest neighbour) is left to the caller.
    ``name`` labels the source in messages instead of its path (an upload's own file name,
    not the server's temporary copy).
    """
    source_name = name or _name_of(source)
    data = _read_source_bytes(source, source_name)
    limit = _resolve_max_pixels(max_pixels)
    _probe_header(data, _sniff_format(data), source_name, limit)
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise ImageReadError(
            f"Could not decode the mask {_label(source_name)} (not an image, truncated or corrupt)."
        )
    _check_size(int(grey.shape[1]), int(grey.shape[0]), source_name, limit)
    return grey >= 127


class MaskRunsError(ValueError):
    """Runs that do not describe a mask of the expected size."""


def mask_to_runs(mask: np.ndarray) -> list:
    """Row-major run lengths of a boolean mask, starting with background: [bg, fg, bg, ...].

    The first run may be 0 (the mask starts with foreground); the runs sum to the pixel count.
    """
    flat = np.asarray(mask, bool).ravel()
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat[0] else runs


def runs_text(runs) -> str:
    """Runs as one comma-separated string: a JSON value of one string is copied as one piece by
    the browser, where a list of numbers is copied number by number."""
    return ",".join(str(int(run)) for run in runs)


def mask_from_runs(runs, shape: tuple) -> np.ndarray:
    """The boolean mask of ``shape`` that ``runs`` (see ``mask_to_runs``; a list, or ``runs_text``) describe."""
    height, width = int(shape[0]), int(shape[1])
    if isinstance(runs, str):
        if not re.fullmatch(r"\d+(,\d+)*", runs):
            raise MaskRunsError("The edited mask did not arrive as a list of whole run lengths.")
        runs = [int(run) for run in runs.split(",")]
    try:
        given = np.asarray(list(runs))
        with np.errstate(invalid="ignore"):
            lengths = given.astype(np.int64)
    except (TypeError, ValueError, OverflowError):
        lengths = None
    # Numbers only, and floats only when whole (a cast alone would truncate 6.9 to 6 silently).
    if lengths is None or given.dtype.kind not in "iuf" or not np.array_equal(lengths, given):
        raise MaskRunsError("The edited mask did not arrive as a list of whole run lengths.")
    if lengths.ndim != 1 or lengths.size == 0:
        raise MaskRunsError("The edited mask arrived without run lengths.")
    if (lengths < 0).any():
        raise MaskRunsError("The edited mask has a negative run length.")
    if int(lengths.sum()) != height * width:
        raise MaskRunsError(f"The edited mask covers {int(lengths.sum()):,} pixels; the image has "
                            f"{height * width:,} ({width} x {height}).")
    values = (np.arange(lengths.size) % 2).astype(bool)
    return np.repeat(values, lengths).reshape(height, width)
