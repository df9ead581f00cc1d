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
* DICOM files are handed to :mod:`medclipseg.io.dicom` (rescale, window, MONOCHROME1, the
  middle frame of a multi-frame file; see there).

Refused inputs (``ImageReadError``, a ``ValueError`` with a user-facing message)
-------------------------------------------------------------------------------
Empty files, files that are not images, truncated/corrupt files, images smaller than
``MIN_IMAGE_SIDE`` on a side, images with more than ``max_pixels`` pixels (checked from the
file header before decoding, so a huge image is refused without allocating its pixels),
2-channel arrays that are not declared grey+alpha, more than 4 channels, 3-D volumes (other
than multi-frame DICOM), and DICOM files without pixel data.

Label masks are read by :mod:`medclipseg.io.masks`, prompts checked by
:mod:`medclipseg.io.prompts`; their names stay importable from this module.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import cv2
import numpy as np

from medclipseg import settings

__all__ = [
    "DEFAULT_CHANNEL_ORDER",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "ImageReadError",
    "LoadedImage",
    "read_image",
]

# How numpy arrays are read unless a caller says otherwise: BGR(A), as OpenCV returns them.
DEFAULT_CHANNEL_ORDER = "bgr"

# File names an upload or an ingest folder may have: what read_image reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")

# The default largest accepted image, in pixels (width * height); MEDCLIPSEG_MAX_PIXELS
# overrides it at call time (medclipseg.settings.max_image_pixels).
MAX_IMAGE_PIXELS = settings.DEFAULT_MAX_PIXELS
# Smallest accepted side length, in pixels.
MIN_IMAGE_SIDE = 8

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]


class ImageReadError(ValueError):
    """An image could not be read; the message is meant to be shown to the user."""


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
    # Read at every call, so that a value set after import still counts.
    return settings.max_image_pixels()


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
            f"the limit is {max_pixels:,} pixels (set {settings.MAX_PIXELS_ENV} to change it)."
        )


def _check_file_bytes(size: int, name: Optional[str]) -> None:
    """Refuse a file over MEDCLIPSEG_MAX_VOLUME_BYTES before it is read into memory."""
    limit = settings.max_volume_file_bytes()
    if size > limit:
        raise ImageReadError(
            f"{_subject(name) if name else 'The file'} is too large ({size:,} bytes); the limit for a file "
            f"is {limit:,} bytes (set {settings.MAX_VOLUME_BYTES_ENV} to change it)."
        )


def _read_source_bytes(source: Any, name: Optional[str]) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        _check_file_bytes(memoryview(source).nbytes, name)
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageReadError(f"File not found: '{path}'.")
        if path.is_dir():
            raise ImageReadError(f"'{path}' is a folder, not an image file.")
        try:
            _check_file_bytes(path.stat().st_size, name or os.fspath(path))
            data = path.read_bytes()
        except OSError as exc:
            raise ImageReadError(f"Could not read '{path}': {exc.strerror or exc}.") from exc
    if len(data) == 0:
        raise ImageReadError(f"{_subject(name) if name else 'The file'} is empty (0 bytes).")
    return data




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
                    f"the limit is {limit:,} pixels (set {settings.MAX_PIXELS_ENV} to change it)."
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


# Values converted at a time: float64 arithmetic on a block of rows of at most this many values
# (32 MB), so that a 100 MP 16-bit colour image never has a whole-image float64 copy (2.4 GB) and
# the results stay those of float64 arithmetic, bit for bit.
CHUNK_VALUES = 1 << 22


def _row_blocks(array: np.ndarray):
    """Slices of rows holding at most CHUNK_VALUES values each (at least one row)."""
    per_row = max(1, int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, CHUNK_VALUES // per_row)
    for start in range(0, int(array.shape[0]), step):
        yield slice(start, min(int(array.shape[0]), start + step))


def _finite_range(array: np.ndarray) -> tuple:
    """(low, high, all finite) of the values with NaN/inf counted as 0, block by block."""
    if not np.issubdtype(array.dtype, np.floating):
        return float(array.min()), float(array.max()), True
    low, high, all_finite = np.inf, -np.inf, True
    for rows in _row_blocks(array):
        values = array[rows].astype(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            all_finite = False
            values = np.where(finite, values, 0.0)
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high, all_finite


def _to_uint8(array: np.ndarray, conversions: list, what: str = "image") -> np.ndarray:
    """Scale any numeric array to uint8 by its min..max range (uint8 passes through)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        conversions.append(f"boolean {what} mapped to 0/255")
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageReadError(f"Unsupported pixel type {array.dtype}.")
    if array.size == 0 or array.ndim == 0:
        low = high = 0.0
        all_finite = True
    else:
        low, high, all_finite = _finite_range(array)
    if not all_finite:
        conversions.append("NaN/infinite values set to 0")
    if np.issubdtype(array.dtype, np.floating):
        kind = "floating-point"
    elif array.dtype.itemsize == 2:
        kind = "16-bit"
    else:
        kind = f"{array.dtype.name}"
    if high <= low:
        conversions.append(f"{kind} {what} is constant ({low:g}); converted to zeros")
        return np.zeros(array.shape, np.uint8)
    conversions.append(
        f"{kind} {what} scaled to 8 bit by its min..max range ({low:g}..{high:g})"
    )
    factor = 255.0 / (high - low)
    out = np.empty(array.shape, np.uint8)
    for rows in _row_blocks(array):
        values = array[rows].astype(np.float64)
        if not all_finite:
            values = np.where(np.isfinite(values), values, 0.0)
        out[rows] = np.clip(np.rint((values - low) * factor), 0, 255)
    return out


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
    channel_order: str = DEFAULT_CHANNEL_ORDER,
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
        # Block by block: whole-image float32 copies of the colour and the alpha would be 16 bytes
        # a pixel. An opaque image comes out unchanged (x * 1.0 rounds to x).
        composited = np.empty(colour.shape, np.uint8)
        for rows in _row_blocks(colour):
            fraction = _alpha_fraction(alpha[rows])
            if colour.ndim == 3:
                fraction = fraction[:, :, None]
            composited[rows] = np.clip(np.rint(colour[rows].astype(np.float32) * fraction), 0, 255)
        colour = composited
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
    channel_order: str = DEFAULT_CHANNEL_ORDER,
    has_alpha: Optional[bool] = None,
    name: Optional[str] = None,
) -> LoadedImage:
    """Read an image file, file bytes or numpy array into uint8 HxWx3 BGR.

    ``max_pixels`` defaults to ``MEDCLIPSEG_MAX_PIXELS``, else ``MAX_IMAGE_PIXELS``.
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
    from medclipseg.io.dicom import _dicom_from_bytes, is_dicom  # at call time: dicom imports this module

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






