"""`medclipseg.io.png`: the one PNG encoder/decoder, lossless for every layout the package writes."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from medclipseg.io.png import PNGError, decode_png, encode_png


def test_round_trip_colour_grey_and_masks():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    data = encode_png(colour)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_png(data), colour)
    grey = rng.integers(0, 256, size=(17, 23), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(grey), grey=True), grey)
    mask = (rng.random((9, 11)) > 0.5).astype(np.uint8) * 255
    np.testing.assert_array_equal(decode_png(encode_png(mask), grey=True), mask)
    # A grey PNG read as colour comes back with the grey value in all three channels.
    np.testing.assert_array_equal(decode_png(encode_png(grey)), np.repeat(grey[..., None], 3, axis=2))


def test_compression_level_changes_size_not_pixels():
    smooth = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    fast, small = encode_png(smooth, compression=0), encode_png(smooth, compression=9)
    assert len(small) < len(fast)
    np.testing.assert_array_equal(decode_png(fast, grey=True), decode_png(small, grey=True))
    # None keeps OpenCV's own default: the same bytes as cv2.imencode without parameters.
    assert encode_png(smooth) == cv2.imencode(".png", smooth)[1].tobytes()


def test_refusals_in_words():
    with pytest.raises(PNGError, match="boolean"):
        encode_png(np.zeros((4, 4), bool))
    with pytest.raises(PNGError, match="cannot be written as PNG"):
        encode_png(np.zeros((4, 4, 2), np.float64))
    with pytest.raises(PNGError, match="not a readable PNG"):
        decode_png(b"definitely not a png")
    with pytest.raises(PNGError, match="not a readable PNG"):
        decode_png(b"")


def test_bilevel_png_is_one_bit_and_reads_back_as_0_255():
    import cv2

    rng = np.random.default_rng(3)
    mask = np.where(rng.random((37, 101)) > 0.7, 255, 0).astype(np.uint8)
    data = encode_png(mask, bilevel=True)
    # IHDR's bit depth (byte 24 of the file) is 1; every reader expands it to 0/255 grey.
    assert data[24] == 1
    assert np.array_equal(decode_png(data, grey=True), mask)
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), mask)
    with pytest.raises(PNGError):
        encode_png(np.zeros((4, 4, 3), np.uint8), bilevel=True)
