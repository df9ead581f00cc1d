"""DICOM files to the model's 8-bit BGR images: rescale, window/level, CT presets, safe metadata.

A file is DICOM when it has the ``DICM`` magic at byte offset 128 or a ``.dcm`` / ``.dicom``
name; :func:`medclipseg.io.images.read_image` hands such files here. Decoding is pydicom's.

* RescaleSlope/RescaleIntercept are applied (modality units, e.g. Hounsfield units for CT).
* A linear window maps the values to 8 bit: an explicit ``window=(center, width)``, else the
  header's WindowCenter/WindowWidth, else the min..max range.
* MONOCHROME1 is inverted so that high values are bright.
* A multi-frame file gives its middle frame; other 3-D pixel data is refused.
* Colour DICOM is converted from RGB to BGR; no window applies.
* ``metadata`` keeps technical fields only (modality, pixel spacing, window, photometric
  interpretation): never patient, study or institution identifiers.

Refused (``ImageReadError``): unreadable files, files without pixel data, undecodable pixel
data, and images outside the size limits of :mod:`medclipseg.io.images`.
"""
from __future__ import annotations

import io
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from medclipseg.io.images import (
    ImageReadError,
    ImageSource,
    LoadedImage,
    _check_size,
    _label,
    _name_of,
    _read_source_bytes,
    _resolve_max_pixels,
    _row_blocks,
    _subject,
    _to_uint8,
)

__all__ = [
    "CT_WINDOW_PRESETS",
    "DICOM_SUFFIXES",
    "DicomPixels",
    "dicom_to_8bit",
    "is_dicom",
    "read_dicom",
    "read_dicom_pixels",
]

# Standard CT display windows, (center, width) in Hounsfield units.
CT_WINDOW_PRESETS = {
    "Soft tissue": (40.0, 400.0),
    "Lung": (-600.0, 1500.0),
    "Bone": (400.0, 1800.0),
    "Brain": (40.0, 80.0),
    "Liver": (60.0, 160.0),
    "Mediastinum": (50.0, 350.0),
}

DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass
class DicomPixels:
    """One DICOM frame in modality units, for window/level controls.

    ``values`` is float32 ``H x W`` after RescaleSlope/Intercept for grey images; for colour
    DICOM it is ``H x W x 3`` in RGB order and the stored dtype (no windowing applies).
    """

    values: np.ndarray
    is_colour: bool
    photometric: str
    header_window: Optional[tuple]  # (center, width) from the header, if any
    metadata: dict
    conversions: list
    original_dtype: str
    original_shape: tuple
    source_name: Optional[str] = None


def is_dicom(data: bytes, name: Optional[str] = None) -> bool:
    """True for the DICOM 'DICM' magic at offset 128, or a .dcm/.dicom file name."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return bool(name) and Path(name).suffix.lower() in DICOM_SUFFIXES


def dicom_to_8bit(pixel_array_float: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window/level to uint8: ``center - width/2`` -> 0 and ``center + width/2`` -> 255.

    Values outside the window are clipped. ``width`` must be positive.
    """
    width = float(width)
    center = float(center)
    if not np.isfinite(width) or width <= 0:
        raise ValueError(f"window width must be positive, got {width:g}")
    if not np.isfinite(center):
        raise ValueError("window center must be finite")
    values = np.asarray(pixel_array_float)
    lower = center - width / 2.0
    factor = 255.0 / width
    out = np.empty(values.shape, np.uint8)
    if values.ndim == 0:
        blocks = [()]
    else:
        blocks = _row_blocks(values)
    # float64 a block of rows at a time: the same numbers as a whole-image float64 copy, without it.
    for rows in blocks:
        scaled = (values[rows].astype(np.float64) - lower) * factor
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
        out[rows] = np.clip(np.rint(scaled), 0, 255)
    return out


def _first_number(value: Any) -> Optional[float]:
    """First element of a (possibly multi-valued) DICOM number, or None."""
    if value is None:
        return None
    try:
        if not isinstance(value, (str, bytes)) and isinstance(value, SequenceABC):
            value = value[0]  # multi-valued element, e.g. several windows
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) else None


def _dicom_metadata(dataset: Any) -> dict:
    """Only technical fields: never patient, study or institution identifiers."""
    metadata: dict = {}
    modality = dataset.get("Modality")
    if modality:
        metadata["modality"] = str(modality)
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    if spacing is not None:
        try:
            metadata["pixel_spacing"] = tuple(float(v) for v in spacing)
        except (TypeError, ValueError):
            pass
    center = _first_number(dataset.get("WindowCenter"))
    width = _first_number(dataset.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        metadata["window_center"] = center
        metadata["window_width"] = width
    photometric = dataset.get("PhotometricInterpretation")
    if photometric:
        metadata["photometric_interpretation"] = str(photometric)
    return metadata


def _check_decoded_size(dataset: Any, rows: int, columns: int, frames: int, samples: int,
                        name: Optional[str]) -> None:
    """Refuse, from the header alone, pixel data whose decoded size (all frames) is over the limits:
    MEDCLIPSEG_MAX_VOLUME_BYTES for the bytes, MEDCLIPSEG_MAX_VOLUME_VOXELS for the frames' pixels."""
    from medclipseg import settings

    bits = int(dataset.get("BitsAllocated", 16) or 16)
    pixels = rows * columns * frames
    decoded = pixels * samples * max(1, (bits + 7) // 8)
    what = f"{frames:,} frames of {columns} x {rows}" if frames > 1 else f"{columns} x {rows}"
    if decoded > settings.max_volume_file_bytes():
        raise ImageReadError(
            f"{_subject(name)} is too large: its pixel data ({what}, {samples} sample(s) of {bits} bits) would "
            f"take {decoded:,} bytes; the limit is {settings.max_volume_file_bytes():,} bytes "
            f"(set {settings.MAX_VOLUME_BYTES_ENV} to change it)."
        )
    if frames > 1 and pixels > settings.max_volume_voxels():
        raise ImageReadError(
            f"{_subject(name)} is too large: its {what} pixels hold {pixels:,} values; the limit is "
            f"{settings.max_volume_voxels():,} (set {settings.MAX_VOLUME_VOXELS_ENV} to change it)."
        )


def _dicom_pixels_from_bytes(data: bytes, name: Optional[str], max_pixels: int) -> DicomPixels:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise ImageReadError("Reading DICOM files needs the 'pydicom' package.") from exc

    has_magic = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=not has_magic)
    except Exception as exc:  # InvalidDicomError and parser errors alike
        raise ImageReadError(f"{_subject(name)} is not a readable DICOM file ({exc}).") from exc

    if not has_magic and "Rows" not in dataset and "SOPClassUID" not in dataset:
        # Parsed without the DICM marker and nothing DICOM-like inside: not a DICOM at all.
        raise ImageReadError(
            f"{_subject(name)} is not a readable DICOM file (no 'DICM' marker, no image header)."
        )
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and (
        "DoubleFloatPixelData" not in dataset
    ):
        prefix = f"{_subject(name)}: " if name else ""
        raise ImageReadError(f"{prefix}DICOM file has no pixel data.")

    rows = int(dataset.get("Rows", 0) or 0)
    columns = int(dataset.get("Columns", 0) or 0)
    if rows and columns:
        _check_size(columns, rows, name, max_pixels)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    frames = int(_first_number(dataset.get("NumberOfFrames")) or 1)
    _check_decoded_size(dataset, rows, columns, frames, samples, name)

    try:
        if frames > 1:
            # Only the frame shown is decoded: the others never reach memory as pixels.
            from pydicom.pixels import pixel_array

            middle = frames // 2
            pixels = pixel_array(dataset, index=middle)
        else:
            pixels = dataset.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        syntax_text = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageReadError(
            f"Could not decode the pixel data of {_label(name)}{syntax_text}: {exc}"
        ) from exc

    original_dtype = str(pixels.dtype)
    original_shape = tuple(int(s) for s in pixels.shape)
    conversions: list = []

    expected_frame_ndim = 3 if samples > 1 else 2
    if frames > 1 and pixels.ndim == expected_frame_ndim:
        original_shape = (frames,) + original_shape
        conversions.append(
            f"multi-frame DICOM ({frames} frames): middle frame {middle} used"
        )
    elif pixels.ndim != expected_frame_ndim:
        raise ImageReadError(
            f"{_subject(name)} has pixel data of shape {original_shape}; only 2-D images "
            "(or multi-frame DICOM) are supported."
        )

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2") or "")
    metadata = _dicom_metadata(dataset)
    header_window = None
    if "window_center" in metadata:
        header_window = (metadata["window_center"], metadata["window_width"])

    if samples > 1:
        values = np.asarray(pixels)  # original dtype, RGB order
        is_colour = True
    else:
        slope = _first_number(dataset.get("RescaleSlope"))
        intercept = _first_number(dataset.get("RescaleIntercept"))
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        values = pixels.astype(np.float32)
        if slope != 1.0 or intercept != 0.0:
            # In place: the same float32 arithmetic without two more image-sized temporaries.
            values *= np.float32(slope)
            values += np.float32(intercept)
            conversions.append(f"rescale applied (slope {slope:g}, intercept {intercept:g})")
        is_colour = False

    _check_size(int(values.shape[1]), int(values.shape[0]), name, max_pixels)
    return DicomPixels(
        values=values,
        is_colour=is_colour,
        photometric=photometric,
        header_window=header_window,
        metadata=metadata,
        conversions=conversions,
        original_dtype=original_dtype,
        original_shape=original_shape,
        source_name=name,
    )


def read_dicom_pixels(
    source: ImageSource, *, max_pixels: Optional[int] = None, name: Optional[str] = None
) -> DicomPixels:
    """Read one DICOM frame in modality units (for a window/level control + ``dicom_to_8bit``)."""
    source_name = name or _name_of(source)
    data = _read_source_bytes(source, source_name)
    return _dicom_pixels_from_bytes(data, source_name, _resolve_max_pixels(max_pixels))


def _window_dicom(pixels: DicomPixels, window: Optional[Sequence[float]]) -> LoadedImage:
    conversions = list(pixels.conversions)
    metadata = dict(pixels.metadata)
    if pixels.is_colour:
        colour = _to_uint8(pixels.values, conversions)
        if window is not None:
            conversions.append("window ignored for a colour DICOM")
        bgr = np.ascontiguousarray(colour[:, :, ::-1])
        conversions.append("RGB channel order converted to BGR")
        channels = 3
    else:
        if window is not None:
            center, width = float(window[0]), float(window[1])
            origin = "requested"
        elif pixels.header_window is not None:
            center, width = pixels.header_window
            origin = "header"
        else:
            low = float(np.nanmin(pixels.values))
            high = float(np.nanmax(pixels.values))
            center, width = (low + high) / 2.0, max(high - low, 1e-6)
            origin = "min..max"
        if width <= 0:
            raise ImageReadError(f"Window width must be positive, got {width:g}.")
        grey = dicom_to_8bit(pixels.values, center, width)
        conversions.append(f"window applied ({origin}: center {center:g}, width {width:g})")
        if pixels.photometric.upper() == "MONOCHROME1":
            grey = 255 - grey
            conversions.append("MONOCHROME1 inverted (high values shown bright)")
        bgr = np.repeat(grey[:, :, None], 3, axis=2)
        conversions.append("grey image replicated to 3 channels")
        metadata["window_center"] = center
        metadata["window_width"] = width
        channels = 1
    return LoadedImage(
        bgr=bgr,
        original_dtype=pixels.original_dtype,
        original_channels=channels,
        original_shape=pixels.original_shape,
        conversions=conversions,
        metadata=metadata,
        source_name=pixels.source_name,
    )


def _dicom_from_bytes(
    data: bytes, name: Optional[str], window: Optional[Sequence[float]], max_pixels: int
) -> LoadedImage:
    return _window_dicom(_dicom_pixels_from_bytes(data, name, max_pixels), window)


def read_dicom(
    source: ImageSource,
    window: Optional[Sequence[float]] = None,
    *,
    max_pixels: Optional[int] = None,
    name: Optional[str] = None,
) -> LoadedImage:
    """Read a DICOM file to uint8 BGR; ``window=(center, width)`` overrides the header window.

    ``metadata`` holds only modality, pixel spacing, the window used (center/width) and the
    photometric interpretation.
    """
    source_name = name or _name_of(source)
    data = _read_source_bytes(source, source_name)
    return _dicom_from_bytes(data, source_name, window, _resolve_max_pixels(max_pixels))
