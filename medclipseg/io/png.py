"""PNG bytes from arrays and back: the one PNG codec of the package (OpenCV's).

Arrays are in OpenCV's layout: H x W greyscale, or H x W x 3 (BGR) / H x W x 4 (BGRA) colour,
uint8 or uint16. PNG is lossless, so ``decode_png(encode_png(a))`` gives ``a`` back exactly.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


class PNGError(ValueError):
    """An array that cannot be written as PNG, or bytes that are not a readable PNG."""


def encode_png(array: np.ndarray, *, compression: Optional[int] = None, bilevel: bool = False) -> bytes:
    """PNG bytes of `array`. `compression` is zlib's level 0..9; None keeps OpenCV's default.
    `bilevel`: a 0/255 grey mask written with 1 bit a pixel (read back as 0/255 by every PNG reader;
    a stacked volume mask encodes in half the time)."""
    import cv2

    array = np.asarray(array)
    if array.dtype == bool:
        raise PNGError("Convert a boolean mask to 0/255 uint8 before encoding it as PNG.")
    params = [] if compression is None else [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    if bilevel:
        if array.ndim != 2 or array.dtype != np.uint8:  # values are the caller's: 0 and 255 only
            raise PNGError("A bilevel PNG holds a grey 0/255 uint8 mask only.")
        params += [cv2.IMWRITE_PNG_BILEVEL, 1]
    try:
        ok, encoded = cv2.imencode(".png", array, params)
    except cv2.error:
        ok = False  # OpenCV raises for layouts PNG cannot hold (e.g. float, 2 channels)
    if not ok:
        raise PNGError(f"An array of {array.dtype} with shape {tuple(array.shape)} cannot be written as PNG.")
    return encoded.tobytes()


def decode_png(data: bytes, *, grey: bool = False) -> np.ndarray:
    """uint8 H x W (grey=True) or H x W x 3 BGR pixels of PNG `data`; PNGError if undecodable."""
    import cv2

    flags = cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if image is None:
        raise PNGError("The data is not a readable PNG image.")
    return image
