"""Tests for medclipseg.io.masks: label images read as boolean masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from medclipseg.io.images import ImageReadError
from medclipseg.io.masks import read_mask


def _write_cv(path, array):
    assert cv2.imwrite(str(path), array)
    return path


def test_read_mask_threshold(tmp_path):
    label = np.zeros((10, 10), np.uint8)
    label[:, 5:] = 255
    label[0, 0] = 126
    label[0, 1] = 127
    mask = read_mask(_write_cv(tmp_path / "label.png", label))
    assert mask.dtype == bool and mask.shape == (10, 10)
    assert mask[:, 5:].all() and not mask[0, 0] and mask[0, 1]
    colour = read_mask(_write_cv(tmp_path / "label_rgb.png", np.repeat(label[:, :, None], 3, 2)))
    np.testing.assert_array_equal(colour, mask)


def test_read_mask_refuses_non_images_and_tiny_masks(tmp_path):
    with pytest.raises(ImageReadError, match="Could not decode the mask"):
        read_mask(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="too small"):
        read_mask(_write_cv(tmp_path / "tiny.png", np.zeros((4, 4), np.uint8)))


def test_read_mask_messages_name_the_upload_not_its_temporary_path(tmp_path):
    path = tmp_path / "upload-1234" / "mask.png"
    path.parent.mkdir()
    path.write_text("not an image")
    with pytest.raises(ImageReadError) as refused:
        read_mask(path, name="my_mask.png")
    assert "'my_mask.png'" in str(refused.value) and str(tmp_path) not in str(refused.value)
