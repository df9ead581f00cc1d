"""Reading user images robustly into the 8-bit, 3-channel BGR arrays the model expects.

Supported inputs
----------------
``read_image`` accepts a path (``str`` / ``Path``), raw file bytes, or a numpy array.
Files may be PNG, JPEG, BMP or TIFF (8 or 16 bit, grey, grey+alpha, RGB, RGBA; decoded with
``cv2.imdecode(..., cv2.IMREAD_UNCHANGED)``) or DICOM (recognised by the ``DICM`` magic at
byte offset 128 or a ``.dcm`` / ``.dicom`` extension; decoded with pydicom).

The result is always ``uint8`` with shape ``H x W x 3`` in **BGR** channel order, exactly as
``cv2.imread`` returns it, because the model's exact pre-processing expects BGR.

Conversions (each one applied is recorded in ``LoadedImage.conversions``)
-------------------------------------------------------------------------
* 16-bit integer, other integer and floating-point images are scaled to 8 bit by their own
  min..max range (a constant image becomes all zeros; NaN/inf become 0).
* Boolean arrays become 0/255.
* Grey images are replicated to 3 channels.
* An alpha channel is dropped after compositing the colour over black
  (``colour * alpha / alpha_max``; float alpha is taken to lie in 0..1).
* Palette images are expanded to colour by the decoder.
* Numpy arrays are taken as BGR(A) like OpenCV; pass ``channel_order="rgb"`` for RGB(A)
  arrays (e.g. from Gradio or PIL).
* JPEG EXIF orientation is *not* applied (``IMREAD_UNCHANGED`` ignores it), matching how the
  authors read images.
* DICOM: RescaleSlope/RescaleIntercept are applied, then a linear window (the header's
  WindowCenter/WindowWidth when present, else the min..max range, or an explicit override)
  maps the values to 8 bit; MONOCHROME1 is inverted so that high values are bright; for a
  multi-frame DICOM the middle frame is used.

Refused inputs (``ImageReadError``, a ``ValueError`` with a user-facing message)
-------------------------------------------------------------------------------
Empty files, files that are not images, truncated/corrupt files, images smaller than
``MIN_IMAGE_SIDE`` on a side, images with more than ``max_pixels`` pixels (checked from the
file header before decoding, so a huge image is refused without allocating its pixels),
2-channel arrays that are not declared grey+alpha, more than 4 channels, 3-D volumes (other
than multi-frame DICOM), and DICOM files without pixel data.
"""

from __future__ import annotations

import io
import os
import struct
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence as SequenceABC
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "ImageReadError",
    "PromptError",
    "LoadedImage",
    "DicomPixels",
    "read_image",
    "read_dicom",
    "read_dicom_pixels",
    "dicom_to_8bit",
    "read_mask",
    "validate_prompt",
    "is_dicom",
    "CT_WINDOW_PRESETS",
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

_DEFAULT_MAX_PIXELS = 100_000_000
_MAX_PIXELS_ENV = "MEDCLIPSEG_MAX_PIXELS"


def _max_pixels_from_env(default: int) -> int:
    raw = os.environ.get(_MAX_PIXELS_ENV)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        return default
    return value if value > 0 else default


# Largest accepted image, in pixels (width * height). Override with MEDCLIPSEG_MAX_PIXELS.
MAX_IMAGE_PIXELS = _max_pixels_from_env(_DEFAULT_MAX_PIXELS)
# Smallest accepted side length, in pixels.
MIN_IMAGE_SIDE = 8

_DICOM_SUFFIXES = (".dcm", ".dicom")
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]


class ImageReadError(ValueError):
    """An image could not be read; the message is meant to be shown to the user."""


class PromptError(ValueError):
    """A text prompt is unusable; the message is meant to be shown to the user."""


@dataclass
class LoadedImage:
    """An image ready for the model plus a record of how it was obtained."""

    bgr: np.ndarray  # uint8, H x W x 3, BGR channel order
    original_dtype: str
    original_channels: int
    original_shape: tuple
    conversions: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    source_name: Optional[str] = None

    @property
    def height(self) -> int:
        return int(self.bgr.shape[0])

    @property
    def width(self) -> int:
        return int(self.bgr.shape[1])

    @property
    def rgb(self) -> np.ndarray:
        """The same pixels in RGB order (for display)."""
        return np.ascontiguousarray(self.bgr[..., ::-1])


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


# --------------------------------------------------------------------------------------
# small helpers


def _name_of(source: Any) -> Optional[str]:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return None


def _label(name: Optional[str]) -> str:
    """How a source is named inside a message."""
    return f"'{name}'" if name else "the image"


def _subject(name: Optional[str]) -> str:
    """How a source is named at the start of a message."""
    return f"'{name}'" if name else "The image"


def _resolve_max_pixels(max_pixels: Optional[int]) -> int:
    if max_pixels is not None:
        if max_pixels <= 0:
            raise ValueError("max_pixels must be positive")
        return int(max_pixels)
    # An environment variable set after import still wins over the module default.
    return _max_pixels_from_env(MAX_IMAGE_PIXELS)


def _check_size(width: int, height: int, name: Optional[str], max_pixels: int) -> None:
    """Refuse images that are too small or too large (from header dimensions when possible)."""
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{_subject(name)} has an invalid size {width}x{height}.")
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ImageReadError(
            f"{_subject(name)} is too small ({width}x{height} pixels); "
            f"each side must be at least {MIN_IMAGE_SIDE} pixels."
        )
    if width * height > max_pixels:
        raise ImageReadError(
            f"{_subject(name)} is too large ({width}x{height} = {width * height:,} pixels); "
            f"the limit is {max_pixels:,} pixels (set {_MAX_PIXELS_ENV} to change it)."
        )


def _read_source_bytes(source: Any, name: Optional[str]) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageReadError(f"File not found: '{path}'.")
        if path.is_dir():
            raise ImageReadError(f"'{path}' is a folder, not an image file.")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageReadError(f"Could not read '{path}': {exc.strerror or exc}.") from exc
    if len(data) == 0:
        raise ImageReadError(f"{_subject(name) if name else 'The file'} is empty (0 bytes).")
    return data


def is_dicom(data: bytes, name: Optional[str] = None) -> bool:
    """True for the DICOM 'DICM' magic at offset 128, or a .dcm/.dicom file name."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return bool(name) and Path(name).suffix.lower() in _DICOM_SUFFIXES


def _sniff_format(data: bytes) -> Optional[str]:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def _png_header_size(data: bytes) -> Optional[tuple]:
    """(width, height) from a PNG IHDR chunk without decoding anything."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _probe_header(data: bytes, fmt: Optional[str], name: Optional[str], limit: int) -> tuple:
    """Check the size from the header only; returns (width, height, PIL mode), None if unknown.

    PNG sizes are parsed directly from IHDR and checked before anything else. Other formats
    use PIL's lazy ``Image.open``, which reads only the header. Nothing is decoded here, so a
    huge image is refused without allocating its pixels.
    """
    size = _png_header_size(data) if fmt == "PNG" else None
    if size is not None:
        _check_size(size[0], size[1], name, limit)
    mode = None
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return (size or (None, None)) + (None,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as pil_image:
                mode = pil_image.mode
                if size is None:
                    size = pil_image.size
        except Image.DecompressionBombError as exc:
            pil_limit = 2 * int(Image.MAX_IMAGE_PIXELS or 0)
            if pil_limit and limit <= pil_limit:
                raise ImageReadError(
                    f"{_subject(name)} is too large (more than {pil_limit:,} pixels); "
                    f"the limit is {limit:,} pixels (set {_MAX_PIXELS_ENV} to change it)."
                ) from exc
            # Our limit is above PIL's guard: let OpenCV decode and check afterwards.
        except Exception:
            pass  # PIL may not understand every file OpenCV can decode
    if size is None:
        return None, None, mode
    _check_size(int(size[0]), int(size[1]), name, limit)
    return int(size[0]), int(size[1]), mode


# --------------------------------------------------------------------------------------
# array conversion shared by files and numpy inputs


def _to_uint8(array: np.ndarray, conversions: list, what: str = "image") -> np.ndarray:
    """Scale any numeric array to uint8 by its min..max range (uint8 passes through)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        conversions.append(f"boolean {what} mapped to 0/255")
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageReadError(f"Unsupported pixel type {array.dtype}.")
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        conversions.append("NaN/infinite values set to 0")
        values = np.where(finite, values, 0.0)
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0
    if np.issubdtype(array.dtype, np.floating):
        kind = "floating-point"
    elif array.dtype.itemsize == 2:
        kind = "16-bit"
    else:
        kind = f"{array.dtype.name}"
    if high <= low:
        conversions.append(f"{kind} {what} is constant ({low:g}); converted to zeros")
        return np.zeros(array.shape, np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    conversions.append(
        f"{kind} {what} scaled to 8 bit by its min..max range ({low:g}..{high:g})"
    )
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _alpha_fraction(alpha: np.ndarray) -> np.ndarray:
    """Alpha as float32 in 0..1 (integer alpha by its dtype maximum)."""
    if alpha.dtype == np.bool_:
        return alpha.astype(np.float32)
    if np.issubdtype(alpha.dtype, np.integer):
        return alpha.astype(np.float32) / float(np.iinfo(alpha.dtype).max)
    return np.clip(np.nan_to_num(alpha.astype(np.float32)), 0.0, 1.0)


def _squeeze_and_count_channels(
    array: np.ndarray, name: Optional[str], has_alpha: Optional[bool]
) -> tuple:
    """Validate the layout of a decoded array; returns (array, channels)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        channels = 1
    elif array.ndim == 3 and array.shape[2] <= 4:
        channels = int(array.shape[2])
    elif array.ndim == 3:
        raise ImageReadError(
            f"{_subject(name)} has shape {tuple(array.shape)}: more than 4 channels, or a 3-D "
            "volume. Only 2-D images (grey, grey+alpha, RGB, RGBA) are supported; "
            "save a single slice as PNG."
        )
    else:
        raise ImageReadError(
            f"{_subject(name)} has shape {tuple(array.shape)}: only 2-D images are supported "
            "(not volumes or stacks); save a single slice as PNG."
        )
    if channels == 2 and not has_alpha:
        raise ImageReadError(
            f"{_subject(name)} has 2 channels that are not declared grey+alpha; "
            "expected grey, grey+alpha, RGB or RGBA."
        )
    if channels == 4 and has_alpha is False:
        raise ImageReadError(
            f"{_subject(name)} has 4 channels without alpha; "
            "expected grey, grey+alpha, RGB or RGBA."
        )
    return array, channels


def _normalise_array(
    array: np.ndarray,
    *,
    name: Optional[str],
    conversions: list,
    limit: int,
    channel_order: str = "bgr",
    has_alpha: Optional[bool] = None,
) -> tuple:
    """Convert a decoded array to uint8 HxWx3 BGR; returns (bgr, original_channels)."""
    if channel_order not in ("bgr", "rgb"):
        raise ValueError("channel_order must be 'bgr' or 'rgb'")
    array, channels = _squeeze_and_count_channels(array, name, has_alpha)
    _check_size(int(array.shape[1]), int(array.shape[0]), name, limit)


    alpha = None
    if channels in (2, 4):
        alpha = array[:, :, -1]
        colour = array[:, :, :-1]
        if colour.shape[2] == 1:
            colour = colour[:, :, 0]
    else:
        colour = array

    colour = _to_uint8(colour, conversions)

    if colour.ndim == 3 and channel_order == "rgb":
        colour = colour[:, :, ::-1]
        conversions.append("RGB channel order converted to BGR")

    if alpha is not None:
        fraction = _alpha_fraction(alpha)
        if colour.ndim == 3:
            fraction = fraction[:, :, None]
        if not np.all(fraction >= 1.0):
            colour = np.clip(np.rint(colour.astype(np.float32) * fraction), 0, 255).astype(
                np.uint8
            )
        conversions.append("alpha channel dropped (composited over black)")

    if colour.ndim == 2:
        colour = np.repeat(colour[:, :, None], 3, axis=2)
        conversions.append("grey image replicated to 3 channels")

    return np.ascontiguousarray(colour), channels


# --------------------------------------------------------------------------------------
# public readers


def read_image(
    source: ImageSource,
    *,
    max_pixels: Optional[int] = None,
    channel_order: str = "bgr",
    has_alpha: Optional[bool] = None,
    name: Optional[str] = None,
) -> LoadedImage:
    """Read an image file, file bytes or numpy array into uint8 HxWx3 BGR.

    ``max_pixels`` defaults to ``MAX_IMAGE_PIXELS`` (env ``MEDCLIPSEG_MAX_PIXELS``).
    ``channel_order`` and ``has_alpha`` only apply to numpy arrays: arrays are BGR(A) unless
    ``channel_order="rgb"``; a 2-channel array is accepted only with ``has_alpha=True``
    (grey+alpha). ``name`` labels bytes/array sources in messages and ``source_name``.
    See the module docstring for every conversion and refusal.
    """
    limit = _resolve_max_pixels(max_pixels)
    source_name = name or _name_of(source)

    if isinstance(source, np.ndarray):
        array = source
        conversions: list = []
        bgr, channels = _normalise_array(
            array,
            name=source_name,
            conversions=conversions,
            limit=limit,
            channel_order=channel_order,
            has_alpha=has_alpha,
        )
        return LoadedImage(
            bgr=bgr,
            original_dtype=str(array.dtype),
            original_channels=channels,
            original_shape=tuple(int(s) for s in array.shape),
            conversions=conversions,
            metadata={},
            source_name=source_name,
        )

    data = _read_source_bytes(source, source_name)
    if is_dicom(data, source_name):
        return _dicom_from_bytes(data, source_name, window=None, max_pixels=limit)

    fmt = _sniff_format(data)
    width, height, pil_mode = _probe_header(data, fmt, source_name, limit)

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        if fmt is None and pil_mode is None:
            raise ImageReadError(
                f"{_subject(source_name)} is not a recognised image "
                "(expected PNG, JPEG, BMP, TIFF or DICOM)."
            )
        raise ImageReadError(
            f"Could not decode {_label(source_name)} as {fmt or 'an image'}: "
            "the file is truncated or corrupt."
        )

    conversions = []
    # OpenCV expands grey+alpha PNGs to BGRA; fold back to grey+alpha so the record is honest.
    grey_alpha = pil_mode in ("LA", "La", "PA")
    if grey_alpha and decoded.ndim == 3 and decoded.shape[2] == 4:
        decoded = np.ascontiguousarray(decoded[:, :, [0, 3]])
    if pil_mode == "P" and decoded.ndim == 3:
        conversions.append("palette image expanded to colour")
    original_shape = tuple(int(s) for s in decoded.shape)
    bgr, channels = _normalise_array(
        decoded,
        name=source_name,
        conversions=conversions,
        limit=limit,
        channel_order="bgr",
        has_alpha=decoded.ndim == 3 and (decoded.shape[2] == 4 or grey_alpha),
    )
    return LoadedImage(
        bgr=bgr,
        original_dtype=str(decoded.dtype),
        original_channels=channels,
        original_shape=original_shape,
        conversions=conversions,
        metadata={},
        source_name=source_name,
    )


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
    values = np.asarray(pixel_array_float, dtype=np.float64)
    lower = center - width / 2.0
    scaled = (values - lower) * (255.0 / width)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


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

    try:
        pixels = dataset.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        syntax_text = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageReadError(
            f"Could not decode the pixel data of {_label(name)}{syntax_text}: {exc}"
        ) from exc

    original_shape = tuple(int(s) for s in pixels.shape)
    original_dtype = str(pixels.dtype)
    conversions: list = []
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    frames = int(_first_number(dataset.get("NumberOfFrames")) or 1)

    expected_frame_ndim = 3 if samples > 1 else 2
    if frames > 1 and pixels.ndim == expected_frame_ndim + 1:
        middle = pixels.shape[0] // 2
        pixels = pixels[middle]
        conversions.append(
            f"multi-frame DICOM ({original_shape[0]} frames): middle frame {middle} used"
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
            values = values * np.float32(slope) + np.float32(intercept)
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


def read_mask(
    source: Union[str, os.PathLike, bytes], *, max_pixels: Optional[int] = None
) -> np.ndarray:
    """Read a label image as a boolean mask: grey value ``>= 127`` is foreground.

    The file is read as grey like ``cv2.imread(path, 0)`` in the authors' pipeline (colour
    labels are converted to grey first). Resizing (nearest neighbour) is left to the caller.
    """
    source_name = _name_of(source)
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


_WHITESPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c"}


def validate_prompt(prompt: str, max_chars: int = 1000) -> str:
    """Clean a text prompt: control characters removed (tabs/newlines become spaces), stripped.

    Raises ``PromptError`` for an empty prompt or one longer than ``max_chars`` characters
    (no silent truncation here; the tokenizer later truncates to the model's token limit).
    """
    if not isinstance(prompt, str):
        raise PromptError("Prompt must be text.")
    cleaned = "".join(
        " " if ch in _WHITESPACE_CONTROLS else ch
        for ch in prompt
        if ch in _WHITESPACE_CONTROLS or unicodedata.category(ch) != "Cc"
    ).strip()
    if not cleaned:
        raise PromptError(
            "Prompt is empty. Describe the structure to segment, e.g. "
            "'a round polyp in the lower left'."
        )
    if len(cleaned) > max_chars:
        raise PromptError(
            f"Prompt is too long ({len(cleaned)} characters); the limit is {max_chars} "
            "characters. Please shorten it."
        )
    return cleaned
