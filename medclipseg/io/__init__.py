"""Reading and checking user input: images (8/16-bit, grey, colour), DICOM, masks and prompts.

| module | what |
|---|---|
| ``images`` | PNG/JPEG/BMP/TIFF to 8-bit BGR, size limits, ``IMAGE_SUFFIXES`` |
| ``dicom`` | DICOM reading, rescale and window/level, CT presets, safe metadata |
| ``masks`` | label images as boolean masks |
| ``prompts`` | text prompt validation |
| ``png`` | PNG bytes from arrays and back |

The main names are importable from here; they resolve on first use, so importing one
submodule does not load the others.
"""
from __future__ import annotations

from medclipseg.lazy import lazy_getattr

_PUBLIC = {
    "DEFAULT_CHANNEL_ORDER": "medclipseg.io.images",
    "IMAGE_SUFFIXES": "medclipseg.io.images",
    "ImageReadError": "medclipseg.io.images",
    "LoadedImage": "medclipseg.io.images",
    "read_image": "medclipseg.io.images",
    "CT_WINDOW_PRESETS": "medclipseg.io.dicom",
    "DicomPixels": "medclipseg.io.dicom",
    "dicom_to_8bit": "medclipseg.io.dicom",
    "is_dicom": "medclipseg.io.dicom",
    "read_dicom": "medclipseg.io.dicom",
    "read_dicom_pixels": "medclipseg.io.dicom",
    "read_mask": "medclipseg.io.masks",
    "PromptError": "medclipseg.io.prompts",
    "validate_prompt": "medclipseg.io.prompts",
}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr(globals(), _PUBLIC)
