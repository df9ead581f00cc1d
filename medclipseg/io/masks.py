"""Label images as boolean masks, read the way the authors' pipeline reads them."""
from __future__ import annotations

import os
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

__all__ = ["read_mask"]


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
