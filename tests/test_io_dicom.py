"""Tests for medclipseg.io.dicom: windowing, rescale, MONOCHROME1, multi-frame, safe metadata."""

from __future__ import annotations

import numpy as np
import pytest

from medclipseg.io.dicom import CT_WINDOW_PRESETS, DICOM_SUFFIXES, dicom_to_8bit, is_dicom, read_dicom, read_dicom_pixels
from medclipseg.io.images import ImageReadError, read_image


def _write_dicom(path, pixels, *, with_pixels=True, photometric="MONOCHROME2", window=(40, 400)):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "DOE^JOHN"
    dataset.PatientID = "PID-12345"
    dataset.Modality = "CT"
    dataset.PixelSpacing = [0.5, 0.75]
    dataset.RescaleIntercept = -1024
    dataset.RescaleSlope = 1
    if window is not None:
        dataset.WindowCenter = window[0]
        dataset.WindowWidth = window[1]
    dataset.Rows, dataset.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        dataset.NumberOfFrames = pixels.shape[0]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    if with_pixels:
        dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)
    return path


def _ct_pixels():
    # stored values; Hounsfield = stored - 1024
    stored = np.full((16, 16), 1024, np.uint16)  # water, 0 HU
    stored[0, :] = 0  # -1024 HU, air
    stored[1, :] = 1024 + 40 - 200  # lower edge of the window -> 0
    stored[2, :] = 1024 + 40 + 200  # upper edge -> 255
    stored[3, :] = 3000  # bone, clipped
    return stored


def test_dicom_window_and_no_identifiers(tmp_path):
    path = _write_dicom(tmp_path / "scan.dcm", _ct_pixels())
    loaded = read_image(path)
    grey = loaded.bgr[:, :, 0]
    assert loaded.bgr.shape == (16, 16, 3)
    assert grey[0, 0] == 0 and grey[1, 0] == 0
    assert grey[2, 0] == 255 and grey[3, 0] == 255
    assert abs(int(grey[8, 8]) - int(round((0 - (40 - 200)) * 255 / 400))) <= 1
    assert loaded.metadata["modality"] == "CT"
    assert loaded.metadata["pixel_spacing"] == (0.5, 0.75)
    assert loaded.metadata["window_center"] == 40 and loaded.metadata["window_width"] == 400
    assert loaded.metadata["photometric_interpretation"] == "MONOCHROME2"
    text = repr(loaded.metadata) + repr(loaded.conversions)
    assert "DOE" not in text and "JOHN" not in text and "PID-12345" not in text
    assert set(loaded.metadata) <= {
        "modality",
        "pixel_spacing",
        "window_center",
        "window_width",
        "photometric_interpretation",
    }


def test_dicom_detected_by_magic_and_window_override(tmp_path):
    path = _write_dicom(tmp_path / "scan_without_suffix", _ct_pixels())
    loaded = read_dicom(path, window=(0, 2))
    grey = loaded.bgr[:, :, 0]
    assert grey[0, 0] == 0 and grey[3, 0] == 255 and grey[8, 8] == 128
    pixels = read_dicom_pixels(path)
    assert pixels.values[0, 0] == -1024 and pixels.header_window == (40.0, 400.0)
    np.testing.assert_array_equal(dicom_to_8bit(pixels.values, 0, 2), grey)
    from_bytes = read_image(path.read_bytes())
    assert from_bytes.metadata["modality"] == "CT"


def test_dicom_min_max_monochrome1_and_multiframe(tmp_path):
    mono1 = _write_dicom(
        tmp_path / "mono1.dcm", _ct_pixels(), photometric="MONOCHROME1", window=None
    )
    loaded = read_image(mono1)
    grey = loaded.bgr[:, :, 0]
    assert grey[0, 0] == 255 and grey[3, 0] == 0  # inverted min..max
    assert any("MONOCHROME1" in note for note in loaded.conversions)

    frames = np.stack([np.full((16, 16), value, np.uint16) for value in (0, 1000, 2000)])
    frames[1, 0, 0] = 0
    multi = read_image(_write_dicom(tmp_path / "multi.dcm", frames, window=None))
    assert any("middle frame 1" in note for note in multi.conversions)
    assert multi.bgr[0, 0, 0] == 0 and multi.bgr[5, 5, 0] == 255


def test_dicom_without_pixel_data(tmp_path):
    path = _write_dicom(tmp_path / "nopixels.dcm", _ct_pixels(), with_pixels=False)
    with pytest.raises(ImageReadError, match="DICOM file has no pixel data"):
        read_image(path)


def test_dicom_to_8bit_rejects_bad_width():
    with pytest.raises(ValueError):
        dicom_to_8bit(np.zeros((2, 2)), 0, 0)


def test_dicom_recognised_by_magic_or_suffix():
    assert is_dicom(b"\0" * 128 + b"DICM" + b"rest")
    assert is_dicom(b"not a header", "scan.DCM") and is_dicom(b"", "x.dicom")
    assert not is_dicom(b"\x89PNG\r\n\x1a\n", "image.png")
    assert DICOM_SUFFIXES == (".dcm", ".dicom")


def test_ct_window_presets_are_center_and_positive_width():
    assert CT_WINDOW_PRESETS["Soft tissue"] == (40.0, 400.0)
    assert all(width > 0 for _, width in CT_WINDOW_PRESETS.values())
