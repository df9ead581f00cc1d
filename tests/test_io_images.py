"""Tests for medclipseg.io.images: formats, conversions, refusals, size limits."""

from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from medclipseg.io import images as imageio
from medclipseg.io.images import ImageReadError, read_image


def _gradient(height=20, width=24, channels=None, dtype=np.uint8, scale=1):
    base = (np.arange(height * width).reshape(height, width) % 200).astype(np.int64) * scale
    if channels:
        base = np.stack([base + 10 * c for c in range(channels)], axis=2)
    return base.astype(dtype)


def _write_cv(path, array):
    assert cv2.imwrite(str(path), array)
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


# ---------------------------------------------------------------- ordinary formats


def test_grey_png_replicated_to_three_channels(tmp_path):
    grey = _gradient()
    loaded = read_image(_write_cv(tmp_path / "grey.png", grey))
    assert loaded.bgr.shape == (20, 24, 3) and loaded.bgr.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(loaded.bgr[:, :, channel], grey)
    assert loaded.original_channels == 1 and loaded.original_dtype == "uint8"
    assert any("replicated" in note for note in loaded.conversions)
    assert loaded.source_name.endswith("grey.png")


def test_rgb_png_keeps_bgr_order(tmp_path):
    bgr = _gradient(channels=3)
    loaded = read_image(_write_cv(tmp_path / "colour.png", bgr))
    np.testing.assert_array_equal(loaded.bgr, bgr)
    assert loaded.conversions == []
    assert loaded.original_channels == 3
    # same pixels as the authors' cv2.imread
    np.testing.assert_array_equal(loaded.bgr, cv2.imread(str(tmp_path / "colour.png")))


def test_rgba_png_composited_over_black(tmp_path):
    bgra = np.zeros((16, 16, 4), np.uint8)
    bgra[..., :3] = 200
    bgra[:, :8, 3] = 255  # opaque left half
    bgra[:, 8:, 3] = 0  # transparent right half
    loaded = read_image(_write_cv(tmp_path / "rgba.png", bgra))
    assert loaded.bgr.shape == (16, 16, 3)
    assert (loaded.bgr[:, :8] == 200).all() and (loaded.bgr[:, 8:] == 0).all()
    assert loaded.original_channels == 4
    assert "alpha channel dropped (composited over black)" in loaded.conversions


def test_grey_alpha_png(tmp_path):
    grey_alpha = np.zeros((12, 10, 2), np.uint8)
    grey_alpha[..., 0] = 100
    grey_alpha[..., 1] = 255
    grey_alpha[0, 0, 1] = 0
    path = tmp_path / "la.png"
    Image.fromarray(grey_alpha, mode="LA").save(path)
    loaded = read_image(path)
    assert loaded.original_channels == 2
    assert loaded.bgr[0, 0].tolist() == [0, 0, 0]
    assert loaded.bgr[5, 5].tolist() == [100, 100, 100]
    assert any("alpha" in note for note in loaded.conversions)


def test_16bit_png_min_max_scaling(tmp_path):
    values = np.full((10, 10), 1000, np.uint16)
    values[0, 0] = 1000
    values[5, 5] = 3000
    values[9, 9] = 2000
    loaded = read_image(_write_cv(tmp_path / "deep.png", values))
    assert loaded.original_dtype == "uint16"
    grey = loaded.bgr[:, :, 0]
    assert grey[0, 0] == 0 and grey[5, 5] == 255 and grey[9, 9] in (127, 128)
    assert any("16-bit" in note and "min..max" in note for note in loaded.conversions)


def test_constant_16bit_image_becomes_zeros(tmp_path):
    loaded = read_image(_write_cv(tmp_path / "flat.png", np.full((10, 10), 777, np.uint16)))
    assert not loaded.bgr.any()
    assert any("constant" in note for note in loaded.conversions)


def test_jpeg_bmp_and_16bit_tiff(tmp_path):
    bgr = _gradient(channels=3)
    jpeg = read_image(_write_cv(tmp_path / "photo.jpg", bgr))
    assert jpeg.bgr.shape == bgr.shape
    assert np.abs(jpeg.bgr.astype(int) - bgr.astype(int)).mean() < 10
    bmp = read_image(_write_cv(tmp_path / "bitmap.bmp", bgr))
    np.testing.assert_array_equal(bmp.bgr, bgr)
    deep = _gradient(dtype=np.uint16, scale=300)
    tiff = read_image(_write_cv(tmp_path / "deep.tif", deep))
    assert tiff.original_dtype == "uint16"
    assert tiff.bgr[:, :, 0].min() == 0 and tiff.bgr[:, :, 0].max() == 255


def test_bytes_and_array_sources(tmp_path):
    bgr = _gradient(channels=3)
    ok, encoded = cv2.imencode(".png", bgr)
    assert ok
    from_bytes = read_image(encoded.tobytes(), name="upload.png")
    np.testing.assert_array_equal(from_bytes.bgr, bgr)
    assert from_bytes.source_name == "upload.png"
    from_rgb_array = read_image(bgr[:, :, ::-1].copy(), channel_order="rgb")
    np.testing.assert_array_equal(from_rgb_array.bgr, bgr)
    floats = read_image(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10))
    assert floats.bgr[0, 0, 0] == 0 and floats.bgr[9, 9, 0] == 255


# ---------------------------------------------------------------- refusals


def test_tiny_image_refused(tmp_path):
    with pytest.raises(ImageReadError, match="too small"):
        read_image(_write_cv(tmp_path / "tiny.png", np.zeros((4, 4), np.uint8)))


def test_huge_png_refused_from_header_quickly(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 100)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(ImageReadError, match="too large") as info:
        read_image(path)
    assert time.perf_counter() - start < 1.0
    assert "20000x20000" in str(info.value)


def test_max_pixels_argument_and_env(tmp_path, monkeypatch):
    path = _write_cv(tmp_path / "medium.png", np.zeros((100, 100), np.uint8))
    with pytest.raises(ImageReadError, match="too large"):
        read_image(path, max_pixels=5000)
    monkeypatch.setenv("MEDCLIPSEG_MAX_PIXELS", "5000")
    with pytest.raises(ImageReadError, match="limit is 5,000"):
        read_image(path)
    monkeypatch.delenv("MEDCLIPSEG_MAX_PIXELS")
    assert read_image(path).bgr.shape == (100, 100, 3)


def test_truncated_png(tmp_path):
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    data = cv2.imencode(".png", noise)[1].tobytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="(?i)could not decode") as info:
        read_image(path)
    assert "cut.png" in str(info.value)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 5)
    with pytest.raises(ImageReadError, match="not a recognised image") as info:
        read_image(path)
    assert "notes.png" in str(info.value)


def test_empty_and_missing_files(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(path)
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "absent.png")


def test_bad_channel_layouts():
    with pytest.raises(ImageReadError, match="2 channels"):
        read_image(np.zeros((16, 16, 2), np.uint8))
    grey_alpha = read_image(np.full((16, 16, 2), 255, np.uint8), has_alpha=True)
    assert (grey_alpha.bgr == 255).all()
    with pytest.raises(ImageReadError, match="more than 4 channels"):
        read_image(np.zeros((16, 16, 5), np.uint8))
    with pytest.raises(ImageReadError, match="only 2-D"):
        read_image(np.zeros((3, 16, 16, 3), np.uint8))


def test_module_constants():
    assert imageio.MIN_IMAGE_SIDE == 8
    assert imageio.MAX_IMAGE_PIXELS > 0


def test_arrays_are_bgr_unless_told_otherwise():
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB order
    assert imageio.DEFAULT_CHANNEL_ORDER == "bgr"
    assert read_image(rgb).bgr[0, 0].tolist() == [200, 0, 0]
    assert read_image(rgb, channel_order="rgb").bgr[0, 0].tolist() == [0, 0, 200]


def test_image_suffixes_cover_every_readable_kind():
    assert imageio.IMAGE_SUFFIXES == (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
    assert all(suffix == suffix.lower() for suffix in imageio.IMAGE_SUFFIXES)


def test_the_io_package_exposes_each_modules_public_names():
    from medclipseg import io
    from medclipseg.io import dicom, masks, prompts

    assert io.read_dicom is dicom.read_dicom and io.read_mask is masks.read_mask
    assert io.validate_prompt is prompts.validate_prompt and io.PromptError is prompts.PromptError
    assert io.read_image is read_image and io.IMAGE_SUFFIXES is imageio.IMAGE_SUFFIXES
    with pytest.raises(AttributeError):
        io.no_such_name  # noqa: B018
