"""DICOM series (a folder, a zip, a list of files, or one enhanced multi-frame file) -> ScanVolume.

Reading happens in two passes, so that nothing is decoded before the geometry is known to be sound
and the size is known to be within the limits:

1. **Headers** (``stop_before_pixels``): every file is sniffed (``DICM`` at byte 128, or a ``.dcm``
   name); non-DICOM files (README, thumbnails, nested archives) are ignored, and so are DICOM files
   without pixel data (DICOMDIR, structure sets, reports) and segmentations. Images are grouped
   into *stacks*: SeriesInstanceUID (a multi-frame file is a series of its own), then
   ImageOrientationPatient (within 2 degrees), then Rows x Columns. A localizer or a second series
   is never merged into another series. A stack is sorted along its slice normal
   (``cross(row, column)`` cosines) by ``dot(ImagePositionPatient, normal)``, never by
   InstanceNumber, SliceLocation or file name, and is refused, in words, for: mixed orientations,
   duplicate positions (echoes, time points), missing slices (a doubled gap: the positions are
   named), otherwise non-uniform spacing, gantry tilt (positions not stacked along the normal),
   missing or varying PixelSpacing, colour images, a transfer syntax no installed decoder reads,
   and sizes over :func:`medclipseg.io.volumes.check_volume_size`'s limits. A stack of one image is
   a 2-D image, not a volume.
2. **Pixels**, for the chosen stack only: decoded file by file with pydicom (compressed transfer
   syntaxes through the pylibjpeg / openjpeg / libjpeg / pyjpegls plugins; RLE natively), the
   modality LUT applied (``apply_modality_lut``: Hounsfield units for CT; per-frame Pixel Value
   Transformation for enhanced files; DoseGridScaling for RT Dose), kept as float32.
   MONOCHROME1 values are kept as they are (they are modality values; only display inverts them).

Why pydicom per file and not ``highdicom.get_volume_from_series``: highdicom needs every dataset
with its pixel data in memory before it checks anything, sorts and refuses with its own messages,
and handles neither per-slice decoder errors nor zip members read one at a time; here the headers
decide (and refuse) before any pixel is decoded, one file at a time is in memory, and the geometry
checks name the slice positions involved. The tests check the geometry against highdicom's Volume.

Geometry: ``array[i, j, k]`` has i = column, j = row, k = sorted slice, at the LPS point
``IPP_0 + i * PixelSpacing[1] * row_cosines + j * PixelSpacing[0] * column_cosines + k * step``
(``step`` = (IPP_last - IPP_0) / (n - 1), along the normal once tilt is refused); the affine is
that mapping with x and y negated (LPS -> RAS+, done once, here).

Enhanced multi-frame files: frames are placed by their Plane Position / Plane Orientation
functional groups (per-frame, else shared), sorted by position; ``frame_numbers`` gives the
1-based frame of each k slice. Multi-frame RT Dose files are placed by GridFrameOffsetVector
(frame f at IPP + (offset_f - offset_0) * normal, which covers both the relative and the absolute
form). Multi-frame files without per-frame positions (ultrasound or secondary-capture cine loops)
are refused: their frames are usually time points, and no spacing between them is stated.

Privacy: ``dicom_headers`` holds, per k slice, :func:`deidentified_header`: only the UIDs,
geometry and pixel-format attributes a DICOM-SEG needs to reference and overlay the source, plus
the Type 2 patient and study attributes present but empty. Names, IDs, dates, accession numbers,
institutions, physicians, descriptions and private elements are never copied.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from medclipseg import settings
from medclipseg.io.volumes import ScanVolume, VolumeReadError, check_volume_size

__all__ = [
    "DicomSeriesInfo",
    "deidentified_header",
    "headers_from_json",
    "headers_to_json",
    "list_dicom_series",
    "read_dicom_volume",
    "read_dicom_volumes",
]

# Orientations whose row and column directions are within this angle belong to one stack (a
# localizer or a second stack of the same series differs by far more); within a stack the
# cosines must then agree to _ORIENTATION_TOLERANCE (scanners write them to 6 or more decimals).
_SAME_STACK_DEGREES = 2.0
_ORIENTATION_TOLERANCE = 1e-4
# Positions closer than this along the normal are the same position (mm).
_POSITION_TOLERANCE_MM = 0.01
# A gap may differ from the median gap by this fraction (IPP is written with limited decimals).
_SPACING_RELATIVE_TOLERANCE = 0.02
# Gantry tilt: largest sideways offset of a slice from the line along the normal, in pixels.
_TILT_TOLERANCE_PIXELS = 0.1
# More files than this in one upload is not a scan (and reading their headers would take long).
_MAX_FILES = 100_000

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
# Objects that carry pixel data but are not scans to segment.
_NOT_SCAN_MODALITIES = {"SEG", "PR", "KO", "SR", "RTSTRUCT", "RTPLAN", "REG"}
# The pixel-data tags pydicom stops before, as they appear in a little- or big-endian file.
_PIXEL_TAG_BYTES = {bytes.fromhex(h) for h in (
    "e07f1000", "e07f0800", "e07f0900", "7fe00010", "7fe00008", "7fe00009")}

# Copied as they are by deidentified_header: UIDs, geometry and pixel format.
_KEPT_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "SeriesNumber", "InstanceNumber", "ImageType", "NumberOfFrames",
    "Rows", "Columns", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "ImagePositionPatient", "ImageOrientationPatient",
    "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "GridFrameOffsetVector", "FrameIncrementPointer", "DoseGridScaling", "DoseUnits",
)
# Type 2 attributes a DICOM-SEG writer copies from its source: present, always empty here.
_EMPTY_TYPE2_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDate", "StudyTime", "PositionReferenceIndicator",
)
# Functional-group macros kept in an enhanced file's header: geometry and value scaling only.
_KEPT_FUNCTIONAL_GROUPS = (
    "PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence",
    "PixelValueTransformationSequence",
)


# -- public types ---------------------------------------------------------------------------------
@dataclass
class DicomSeriesInfo:
    """One stack found in a DICOM source: what :func:`read_dicom_volume`'s ``series_index`` picks.

    ``problem`` says, in words, why the stack cannot be read as a volume (None when it can)."""

    index: int
    label: str
    modality: str
    rows: int
    columns: int
    slices: int
    orientation: str
    multi_frame: bool
    problem: Optional[str] = None


# -- internal records -----------------------------------------------------------------------------
@dataclass
class _Member:
    """One file of a source: a label for messages, its size and how to open it."""

    label: str
    size: int
    open: Callable[[], "io.BufferedIOBase"]
    bounded: bool = False  # a zip member: read at most ``size`` bytes (its header may lie)


@dataclass
class _Image:
    """One 2-D image: a single-frame file, or one frame of a multi-frame file."""

    member: _Member
    header: object  # pydicom Dataset without pixel data
    frame: Optional[int]  # 1-based frame in a multi-frame file, None for a single-frame file
    position: Optional[np.ndarray]  # ImagePositionPatient, LPS mm
    orientation: Optional[np.ndarray]  # ImageOrientationPatient: row then column cosines
    pixel_spacing: Optional[tuple]  # (between rows, between columns), mm
    rescale: Optional[tuple] = None  # (slope, intercept) from a Pixel Value Transformation group


@dataclass
class _Stack:
    images: list
    series_key: tuple
    multi_frame: bool
    info: Optional[DicomSeriesInfo] = None
    affine: Optional[np.ndarray] = None  # voxel -> RAS+
    problem: Optional[str] = None

    @property
    def rows(self) -> int:
        return int(self.images[0].header.Rows)

    @property
    def columns(self) -> int:
        return int(self.images[0].header.Columns)


@dataclass
class _Survey:
    label: str
    stacks: list
    non_dicom: int = 0
    no_pixels: int = 0
    not_scans: int = 0
    unreadable: int = 0
    no_position: int = 0
    single_images: int = 0
    multi_frame_without_positions: list = field(default_factory=list)
    scattered_series: list = field(default_factory=list)  # (label, images, orientations)


# -- public API -----------------------------------------------------------------------------------
def list_dicom_series(source) -> list:
    """The stacks (series x orientation x size) in ``source``, as :class:`DicomSeriesInfo`, in the
    order ``series_index`` counts them. Reads headers only."""
    with _members_of(source) as (members, label):
        survey = _survey(members, label)
    return [stack.info for stack in survey.stacks]


def read_dicom_volumes(source, name: Optional[str] = None) -> list:
    """Every stack of ``source`` that reads as a volume, as ScanVolumes (in :func:`list_dicom_series`
    order). Stacks that cannot be read are noted in each volume's ``conversions``; when none can,
    the refusal says why for each."""
    with _members_of(source) as (members, label):
        survey = _survey(members, label)
        readable = [stack for stack in survey.stacks if stack.problem is None]
        if not readable:
            raise VolumeReadError(_nothing_readable_message(survey))
        unreadable = [stack for stack in survey.stacks if stack.problem is not None]
        notes = [f"series {stack.info.index} ({stack.info.label}) not read: {stack.problem}"
                 for stack in unreadable]
        volumes = []
        for stack in readable:
            volume = _read_stack(stack, survey, name if len(readable) == 1 else None)
            volume.conversions.extend(notes)
            volumes.append(volume)
        return volumes


def read_dicom_volume(source, name: Optional[str] = None, series_index: Optional[int] = None) -> ScanVolume:
    """The one volume of ``source``: a DICOM folder (searched recursively), a zip (path or bytes),
    a list of DICOM files, or one enhanced multi-frame file.

    Several stacks (another series, a localizer, a second orientation) are refused with their list
    unless ``series_index`` (0-based, as listed) picks one; they are never merged."""
    with _members_of(source) as (members, label):
        survey = _survey(members, label)
        if not survey.stacks:
            raise VolumeReadError(_nothing_readable_message(survey))
        if series_index is None:
            if len(survey.stacks) > 1:
                raise VolumeReadError(
                    f"{_capitalised(label)} holds {len(survey.stacks)} series (or stacks of one series in "
                    "different orientations or sizes), which are never merged into one volume:\n"
                    + "\n".join(_listing_line(stack) for stack in survey.stacks)
                    + "\nPick one with series_index, or upload one series at a time.")
            stack = survey.stacks[0]
        else:
            if not 0 <= int(series_index) < len(survey.stacks):
                raise VolumeReadError(
                    f"{_capitalised(label)} holds series 0 to {len(survey.stacks) - 1}; series {series_index} "
                    "does not exist:\n" + "\n".join(_listing_line(stack) for stack in survey.stacks))
            stack = survey.stacks[int(series_index)]
        if stack.problem is not None:
            raise VolumeReadError(f"The {stack.info.label} series in {label} cannot be read as a volume: "
                                  f"{stack.problem}")
        volume = _read_stack(stack, survey, name)
        others = len(survey.stacks) - 1
        if others:
            volume.conversions.append(
                f"series {stack.info.index} picked (series_index); {others} other series ignored")
        return volume


def deidentified_header(ds) -> "object":
    """A copy of ``ds`` (a pydicom Dataset) with only what a DICOM-SEG needs to reference and
    overlay it: UIDs, geometry, pixel format (and, for an enhanced file, its plane position,
    orientation, pixel measures and value transformation functional groups), plus the Type 2
    patient and study attributes present and empty. No pixel data, no identifier, no date, no
    free text, no private element."""
    from pydicom.dataset import Dataset

    kept = Dataset()
    for keyword in _KEPT_KEYWORDS:
        if keyword in ds:
            kept[keyword] = _copy_element(ds[keyword])
    for keyword in _EMPTY_TYPE2_KEYWORDS:
        setattr(kept, keyword, "")
    for sequence_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if sequence_keyword not in ds:
            continue
        groups = []
        for item in ds[sequence_keyword].value:
            group = Dataset()
            for macro in _KEPT_FUNCTIONAL_GROUPS:
                if macro in item:
                    group[macro] = _copy_element(item[macro])
            groups.append(group)
        setattr(kept, sequence_keyword, groups)
    return kept


def headers_to_json(headers: Sequence) -> str:
    """De-identified headers (pydicom Datasets) as one JSON text (DICOM JSON model, one object per
    header), for storing next to a volume."""
    return json.dumps([header.to_json_dict() for header in headers])


def headers_from_json(text: str) -> list:
    """The headers written by :func:`headers_to_json`, as pydicom Datasets."""
    from pydicom.dataset import Dataset

    try:
        items = json.loads(text)
    except (TypeError, ValueError) as error:
        raise ValueError(f"The stored DICOM headers are not valid JSON ({error}).") from None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError("The stored DICOM headers are not a list of DICOM JSON objects.")
    return [Dataset.from_json(item) for item in items]


def _copy_element(element):
    import copy

    return copy.deepcopy(element)


# -- sources --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _members_of(source) -> Iterator[tuple]:
    """The files of ``source`` as _Members, with a label for messages; zips stay open meanwhile."""
    max_bytes = settings.max_volume_file_bytes()
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        if not raw:
            raise VolumeReadError("The upload is empty.")
        if raw[:4] == b"PK\x03\x04" or raw[:4] == b"PK\x05\x06":
            with _open_zip(io.BytesIO(raw), "the zip") as members:
                yield members, "the zip"
            return
        if len(raw) > max_bytes:
            raise VolumeReadError(_too_large("The upload is", len(raw), max_bytes))
        yield [_Member("the file", len(raw), lambda: io.BytesIO(raw))], "the file"
        return
    if isinstance(source, (list, tuple)):
        paths = [Path(item) for item in source]
        if not paths:
            raise VolumeReadError("No files were given.")
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise VolumeReadError(f"These are not readable files: {', '.join(missing[:5])}"
                                  f"{' and more' if len(missing) > 5 else ''}.")
        yield _file_members(paths, max_bytes, "the files"), "the files"
        return
    path = Path(source)
    label = path.name or str(path)
    if path.is_dir():
        yield _file_members(list(_walk(path, label)), max_bytes, label, root=path), label
        return
    if not path.is_file():
        raise VolumeReadError(f"{label}: no such file or folder.")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic in (b"PK\x03\x04", b"PK\x05\x06"):
        with open(path, "rb") as handle, _open_zip(handle, label) as members:
            yield members, label
        return
    yield _file_members([path], max_bytes, label), label


def _walk(folder: Path, label: str) -> Iterator[Path]:
    count = 0
    for root, directories, files in os.walk(folder, followlinks=False):
        directories.sort()
        for file_name in sorted(files):
            count += 1
            if count > _MAX_FILES:
                raise VolumeReadError(f"{_capitalised(label)} holds more than {_MAX_FILES:,} files; "
                                      "upload one series at a time.")
            yield Path(root) / file_name


def _file_members(paths: list, max_bytes: int, label: str, root: Optional[Path] = None) -> list:
    members, total = [], 0
    for path in paths:
        size = path.stat().st_size
        total += size
        if total > max_bytes:
            raise VolumeReadError(_too_large(f"The upload ({label}) is more than", total, max_bytes))
        shown = path.relative_to(root).as_posix() if root is not None else path.name
        members.append(_Member(shown, size, lambda path=path: open(path, "rb")))
    return members


@contextlib.contextmanager
def _open_zip(handle, label: str) -> Iterator[list]:
    """A zip's files as members, after refusing archives that escape their folder, hold too many
    members or expand past the upload limit (checked on the declared sizes before anything is
    read; each member is then read no further than its declared size)."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError) as error:
        raise VolumeReadError(f"{_capitalised(label)} is not a readable zip archive ({error}).") from None
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        if len(infos) > _MAX_FILES:
            raise VolumeReadError(f"{_capitalised(label)} holds {len(infos):,} files; the limit is "
                                  f"{_MAX_FILES:,}. Upload one series at a time.")
        max_bytes = settings.max_volume_file_bytes()
        total = sum(int(info.file_size) for info in infos)
        if total > max_bytes:
            raise VolumeReadError(_too_large(f"{_capitalised(label)} expands to", total, max_bytes))
        for info in infos:
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise VolumeReadError(
                    f"{_capitalised(label)} contains a member named {info.filename!r} that points outside the "
                    "archive; such archives are refused. Zip the series folder itself.")
            if info.flag_bits & 0x1:
                raise VolumeReadError(f"{_capitalised(label)} is encrypted ({info.filename!r}); upload an "
                                      "archive without a password.")
        yield [_Member(info.filename, int(info.file_size), lambda info=info: archive.open(info), bounded=True)
               for info in infos]


# What reading a damaged file or zip member raises (a bad CRC, a truncated deflate stream).
_DAMAGED_MEMBER_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _member_bytes(member: _Member) -> bytes:
    with member.open() as handle:
        if not member.bounded:
            return handle.read()
        data = handle.read(member.size + 1)
    if len(data) > member.size:
        raise VolumeReadError(f"{member.label} in the zip expands past the size its header states; the "
                              "archive is damaged or crafted and was not read.")
    return data


def _too_large(subject: str, size: int, limit: int) -> str:
    """``subject`` ends with its verb, e.g. "The zip expands to"."""
    return (f"{subject} {_size_text(size)}; the limit for one upload is {_size_text(limit)} "
            "(MEDCLIPSEG_MAX_VOLUME_BYTES). Upload one series at a time.")


def _size_text(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:] if text.startswith("the ") else text


# -- pass 1: headers ------------------------------------------------------------------------------
def _survey(members: list, label: str) -> _Survey:
    survey = _Survey(label=label, stacks=[])
    images_by_series: dict = defaultdict(list)
    for member in members:
        header = _read_header(member, survey)
        if header is None:
            continue
        modality = str(header.get("Modality", "") or "").upper()
        if modality in _NOT_SCAN_MODALITIES:
            survey.not_scans += 1
            continue
        frames = _frame_count(header)
        if frames > 1:
            images = _frames_of(member, header, frames)
            if images is None:
                survey.multi_frame_without_positions.append((member.label, frames, modality))
                continue
            images_by_series[("file", str(header.get("SOPInstanceUID", member.label)))].extend(images)
            continue
        image = _single_image(member, header)
        if image.position is None or image.orientation is None:
            survey.no_position += 1
            continue
        images_by_series[("series", str(header.get("SeriesInstanceUID", "")))].append(image)
    stacks = []
    for series_key, images in images_by_series.items():
        series_stacks = _split_series(series_key, images)
        singles = [stack for stack in series_stacks if len(stack.images) < 2]
        survey.single_images += len(singles)
        if len(singles) > 1:
            first = singles[0].images[0].header
            survey.scattered_series.append((
                f"{_modality_of(first)}, {int(first.Rows)} x {int(first.Columns)} pixels",
                sum(len(stack.images) for stack in series_stacks), len(series_stacks)))
        stacks.extend(stack for stack in series_stacks if len(stack.images) >= 2)
    stacks.sort(key=_stack_order)
    for index, stack in enumerate(stacks):
        _plan_stack(stack, index)
    survey.stacks = stacks
    return survey


def _read_header(member: _Member, survey: _Survey):
    """The member's header without pixel data, or None (counted in ``survey``) when it is not a
    DICOM image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # A zip member is read whole (no further than its declared size): zip streams seek slowly.
        data = _member_bytes(member) if member.bounded else None
        handle = io.BytesIO(data) if data is not None else member.open()
    except _DAMAGED_MEMBER_ERRORS:
        survey.unreadable += 1
        return None
    with handle:
        start = handle.read(132)
        has_magic = len(start) >= 132 and start[128:132] == b"DICM"
        if not has_magic and not member.label.lower().endswith((".dcm", ".dicom")):
            survey.non_dicom += 1
            return None
        handle.seek(0)
        try:
            header = pydicom.dcmread(handle, stop_before_pixels=True, force=not has_magic)
            next_tag = handle.read(4)
        except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OverflowError, OSError):
            if has_magic:
                survey.unreadable += 1
            else:
                survey.non_dicom += 1
            return None
    if not has_magic and "SOPClassUID" not in header and "Rows" not in header:
        survey.non_dicom += 1  # forced parsing of something that is not DICOM
        return None
    # A deflated file is inflated into another stream, so the handle's position says nothing there.
    deflated = str(_transfer_syntax(header) or "") == _DEFLATED_SYNTAX
    if str(header.get("SOPClassUID", "")) == _DICOMDIR_CLASS or (next_tag not in _PIXEL_TAG_BYTES and not deflated):
        survey.no_pixels += 1
        return None
    if "Rows" not in header or "Columns" not in header:
        survey.no_pixels += 1
        return None
    return header


def _frame_count(header) -> int:
    try:
        return max(1, int(header.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _floats(value, count: int) -> Optional[np.ndarray]:
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.all(np.isfinite(numbers)) else None


def _group_item(header, frame_index: int, macro: str):
    """Functional group ``macro`` of frame ``frame_index`` (0-based): per-frame, else shared."""
    for sequence_keyword, index in (("PerFrameFunctionalGroupsSequence", frame_index),
                                    ("SharedFunctionalGroupsSequence", 0)):
        groups = header.get(sequence_keyword)
        if groups is None or len(groups) <= index:
            continue
        item = groups[index]
        if macro in item and len(item[macro].value):
            return item[macro].value[0]
    return None


def _single_image(member: _Member, header) -> _Image:
    if "PerFrameFunctionalGroupsSequence" in header or "SharedFunctionalGroupsSequence" in header:
        image = _frame_image(member, header, 0)
        image.frame = None
        return image
    spacing = _floats(header.get("PixelSpacing"), 2)
    return _Image(member=member, header=header, frame=None,
                  position=_floats(header.get("ImagePositionPatient"), 3),
                  orientation=_orientation_of(header.get("ImageOrientationPatient")),
                  pixel_spacing=None if spacing is None else tuple(spacing))


def _frame_image(member: _Member, header, frame_index: int) -> _Image:
    position_item = _group_item(header, frame_index, "PlanePositionSequence")
    orientation_item = _group_item(header, frame_index, "PlaneOrientationSequence")
    measures_item = _group_item(header, frame_index, "PixelMeasuresSequence")
    transform_item = _group_item(header, frame_index, "PixelValueTransformationSequence")
    spacing = None if measures_item is None else _floats(measures_item.get("PixelSpacing"), 2)
    rescale = None
    if transform_item is not None and "RescaleSlope" in transform_item and "RescaleIntercept" in transform_item:
        rescale = (float(transform_item.RescaleSlope), float(transform_item.RescaleIntercept))
    return _Image(
        member=member, header=header, frame=frame_index + 1,
        position=None if position_item is None else _floats(position_item.get("ImagePositionPatient"), 3),
        orientation=None if orientation_item is None else _orientation_of(
            orientation_item.get("ImageOrientationPatient")),
        pixel_spacing=None if spacing is None else tuple(spacing), rescale=rescale)


def _frames_of(member: _Member, header, frames: int) -> Optional[list]:
    """The frames of a multi-frame file as images with positions, or None when it states none."""
    if "PerFrameFunctionalGroupsSequence" in header:
        images = [_frame_image(member, header, index) for index in range(frames)]
        if all(image.position is not None and image.orientation is not None for image in images):
            return images
        return None
    position = _floats(header.get("ImagePositionPatient"), 3)
    orientation = _orientation_of(header.get("ImageOrientationPatient"))
    offsets = _floats(header.get("GridFrameOffsetVector"), frames) if "GridFrameOffsetVector" in header else None
    if position is None or orientation is None or offsets is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    spacing = _floats(header.get("PixelSpacing"), 2)
    return [_Image(member=member, header=header, frame=index + 1,
                   position=position + (offsets[index] - offsets[0]) * normal, orientation=orientation,
                   pixel_spacing=None if spacing is None else tuple(spacing))
            for index in range(frames)]


def _orientation_of(value) -> Optional[np.ndarray]:
    """ImageOrientationPatient as two unit vectors, or None when it does not hold two directions."""
    cosines = _floats(value, 6)
    if cosines is None:
        return None
    row, column = cosines[:3], cosines[3:]
    if min(np.linalg.norm(row), np.linalg.norm(column)) < 0.5:
        return None
    return np.concatenate([row / np.linalg.norm(row), column / np.linalg.norm(column)])


def _angle_degrees(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))))


def _split_series(series_key: tuple, images: list) -> list:
    """One series' images as stacks: orientation clusters (within _SAME_STACK_DEGREES), then size."""
    clusters: list = []  # [reference orientation, images]
    for image in images:
        for cluster in clusters:
            reference = cluster[0]
            if (_angle_degrees(reference[:3], image.orientation[:3]) <= _SAME_STACK_DEGREES
                    and _angle_degrees(reference[3:], image.orientation[3:]) <= _SAME_STACK_DEGREES):
                cluster[1].append(image)
                break
        else:
            clusters.append([image.orientation, [image]])
    stacks = []
    for _, members in clusters:
        by_size: dict = defaultdict(list)
        for image in members:
            by_size[(int(image.header.Rows), int(image.header.Columns))].append(image)
        for size_images in by_size.values():
            stacks.append(_Stack(images=size_images, series_key=series_key, multi_frame=series_key[0] == "file"))
    return stacks


def _stack_order(stack: _Stack) -> tuple:
    header = stack.images[0].header
    try:
        number = int(header.get("SeriesNumber"))
    except (TypeError, ValueError):
        number = 1 << 30
    return (number, stack.series_key, -len(stack.images), stack.rows, stack.columns)


def _modality_of(header) -> str:
    return str(header.get("Modality", "") or "").upper() or "unknown modality"


def _orientation_name(orientation: np.ndarray) -> str:
    normal = np.cross(orientation[:3], orientation[3:])
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < np.cos(np.radians(20.0)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _listing_line(stack: _Stack) -> str:
    line = f"  series_index={stack.info.index}: {stack.info.label}"
    return line + (f" (cannot be read: {stack.problem})" if stack.problem else "")


def _mm(value: float) -> str:
    return f"{value:.2f} mm"


def _plan_stack(stack: _Stack, index: int) -> None:
    """Sort the stack by position and compute its affine, or set ``problem`` (in words)."""
    header = stack.images[0].header
    reference = stack.images[0].orientation
    orientation = _orientation_name(reference)
    count = len(stack.images)
    kind = "frames" if stack.multi_frame else "slices"
    stack.info = DicomSeriesInfo(
        index=index, label=f"{_modality_of(header)}, {stack.rows} x {stack.columns} pixels, {count} {kind}, "
                           f"{orientation}",
        modality=str(header.get("Modality", "") or "").upper(), rows=stack.rows, columns=stack.columns,
        slices=count, orientation=orientation, multi_frame=stack.multi_frame)
    stack.problem = _stack_problem(stack)
    stack.info.problem = stack.problem


def _stack_problem(stack: _Stack) -> Optional[str]:
    header = stack.images[0].header
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        return (f"its images are colour ({samples} samples per pixel, "
                f"{header.get('PhotometricInterpretation', '')}); only greyscale scans are read as volumes.")
    orientations = np.array([image.orientation for image in stack.images])
    deviation = float(np.max(np.abs(orientations - orientations[0])))
    if deviation > _ORIENTATION_TOLERANCE:
        worst = int(np.argmax(np.max(np.abs(orientations - orientations[0]), axis=1)))
        angle = max(_angle_degrees(orientations[0][:3], orientations[worst][:3]),
                    _angle_degrees(orientations[0][3:], orientations[worst][3:]))
        return (f"its slices have mixed orientations (ImageOrientationPatient differs by up to {angle:.2f} "
                "degrees), so they are not parallel slices of one volume.")
    spacings = [image.pixel_spacing for image in stack.images]
    if any(spacing is None for spacing in spacings):
        return "its images have no PixelSpacing, so their size in millimetres is unknown."
    spacings = np.array(spacings)
    if np.max(np.abs(spacings - spacings[0])) > 1e-4 * max(1.0, float(np.max(spacings))):
        return (f"its PixelSpacing varies between slices (from {_spacing_text(spacings.min(axis=0))} to "
                f"{_spacing_text(spacings.max(axis=0))}).")
    if np.any(spacings[0] <= 0):
        return f"its PixelSpacing ({_spacing_text(spacings[0])}) is not positive."
    transfer_problem = _decoder_problem(stack)
    if transfer_problem:
        return transfer_problem

    row_cosines, column_cosines = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_cosines, column_cosines)
    if np.linalg.norm(normal) < 0.99:  # unit vectors more than ~8 degrees from perpendicular
        return "its ImageOrientationPatient does not hold two perpendicular directions."
    normal = normal / np.linalg.norm(normal)
    positions = np.array([image.position for image in stack.images])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    stack.images = [stack.images[int(k)] for k in order]
    positions, along = positions[order], along[order]
    gaps = np.diff(along)
    what = "frames" if stack.multi_frame else "slices"

    duplicates = np.flatnonzero(gaps <= _POSITION_TOLERANCE_MM)
    if duplicates.size:
        first = int(duplicates[0])
        same = int(np.sum(np.abs(along - along[first]) <= _POSITION_TOLERANCE_MM))
        return (f"{duplicates.size + 1 if duplicates.size == 1 else 'several'} {what} share a position "
                f"({same} at {_mm(along[first])} along the slice normal); a series with several echoes, time "
                "points or b-values is several volumes. Export one of them as its own series.")
    median = float(np.median(gaps))
    tolerance = max(_POSITION_TOLERANCE_MM, _SPACING_RELATIVE_TOLERANCE * median)
    irregular = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if irregular.size:
        at = int(irregular[np.argmax(np.abs(gaps[irregular] - median))])
        low, high, gap = along[at], along[at + 1], gaps[at]
        ratio = gap / median
        if ratio > 1.5 and abs(ratio - round(ratio)) <= 0.1:
            missing = int(round(ratio)) - 1
            return (f"{'a slice is' if missing == 1 else f'{missing} slices are'} missing between positions "
                    f"{_mm(low)} and {_mm(high)} along the slice normal (a gap of {_mm(gap)} where the other "
                    f"{what} are {_mm(median)} apart).")
        return (f"its {what} are not evenly spaced: {_mm(gap)} between positions {_mm(low)} and {_mm(high)} "
                f"along the slice normal, where the others are {_mm(median)} apart"
                f"{f' ({irregular.size} irregular gaps)' if irregular.size > 1 else ''}.")

    sideways = (positions - positions[0]) - np.outer(along - along[0], normal)
    drift = np.linalg.norm(sideways, axis=1)
    allowed = max(_POSITION_TOLERANCE_MM, _TILT_TOLERANCE_PIXELS * float(np.min(spacings[0])))
    if float(np.max(drift)) > allowed:
        tilt = float(np.degrees(np.arctan2(drift[-1], along[-1] - along[0])))
        return (f"its {what} are stacked at {tilt:.1f} degrees to their normal (gantry tilt: each one is "
                f"shifted sideways, {_mm(float(drift[-1]))} over the stack); resample it to an orthogonal "
                "grid (e.g. with dcm2niix) first.")

    count = len(stack.images)
    try:
        check_volume_size((stack.columns, stack.rows, count), what="it")
    except VolumeReadError as error:
        return str(error)

    row_spacing, column_spacing = float(spacings[0][0]), float(spacings[0][1])
    lps = np.eye(4)
    lps[:3, 0] = row_cosines * column_spacing  # i: next column, along the row direction
    lps[:3, 1] = column_cosines * row_spacing  # j: next row, along the column direction
    lps[:3, 2] = (positions[-1] - positions[0]) / (count - 1)
    lps[:3, 3] = positions[0]
    stack.affine = _LPS_TO_RAS @ lps
    return None


def _spacing_text(spacing) -> str:
    return f"{float(spacing[0]):g} x {float(spacing[1]):g} mm"


def _transfer_syntax(header):
    meta = getattr(header, "file_meta", None)
    return None if meta is None else meta.get("TransferSyntaxUID")


def _decoder_problem(stack: _Stack) -> Optional[str]:
    """Why the stack's transfer syntax cannot be decoded here (before any pixel is), or None."""
    from pydicom.pixels import get_decoder

    for syntax in {_transfer_syntax(image.header) for image in stack.images}:
        if syntax is None:
            continue
        described = f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else str(syntax)
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            return (f"its pixel data is stored as {described}, a transfer syntax no installed decoder reads. "
                    "Convert the series to an uncompressed or JPEG 2000 transfer syntax first.")
        if not decoder.is_available:
            needed = "; ".join(str(item) for item in decoder.missing_dependencies) or "a decoder plugin"
            return (f"its pixel data is stored as {described}, and no decoder for it is installed "
                    f"(needs one of: {needed}).")
    return None


# -- pass 2: pixels -------------------------------------------------------------------------------
def _read_pixels(member: _Member):
    """The member's full dataset (pixel data included): the only place pixel data is read."""
    import pydicom

    if member.bounded:
        return pydicom.dcmread(io.BytesIO(_member_bytes(member)))
    with member.open() as handle:  # pydicom reads every value into memory, so closing is safe
        return pydicom.dcmread(handle)


def _read_stack(stack: _Stack, survey: _Survey, name: Optional[str]) -> ScanVolume:
    from pydicom.pixels import apply_modality_lut

    columns, rows, count = stack.columns, stack.rows, len(stack.images)
    array = np.empty((columns, rows, count), dtype=np.float32)
    rescales: Counter = Counter()
    lut_sequence = False
    datasets: dict = {}  # one decoded dataset at a time, except for a multi-frame file's frames
    for k, image in enumerate(stack.images):
        key = id(image.member)
        if key not in datasets:
            datasets.clear()
            datasets[key] = _decoded(image.member, stack)
        ds, pixels = datasets[key]
        frame = pixels if image.frame is None else pixels[image.frame - 1]
        if frame.shape != (rows, columns):
            raise VolumeReadError(
                f"{image.member.label} decodes to {frame.shape[0]} x {frame.shape[1]} pixels where its header "
                f"says {rows} x {columns}; the file is damaged.")
        scaling = ds.get("DoseGridScaling")
        if image.rescale is not None:
            slope, intercept = image.rescale
            rescales[(slope, intercept)] += 1
            _write_rescaled(array, k, frame, slope, intercept, None if scaling is None else float(scaling))
            continue
        values = apply_modality_lut(frame, ds)
        if "ModalityLUTSequence" in ds:
            lut_sequence = True
        elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
            rescales[(float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))] += 1
        if scaling is not None:
            _write_rescaled(array, k, values, 1.0, 0.0, float(scaling))
        else:
            array[:, :, k] = np.asarray(values, dtype=np.float32).T
    datasets.clear()

    header = stack.images[0].header
    modality = str(header.get("Modality", "") or "").upper()
    what = "frames" if stack.multi_frame else "slices"
    conversions = [f"{count} {what} sorted by position along the slice normal (not by instance number, "
                   "slice location or file name)",
                   "DICOM patient coordinates (LPS) converted to RAS"]
    if lut_sequence:
        conversions.append("Modality LUT Sequence applied")
    real_rescales = {pair: n for pair, n in rescales.items() if pair != (1.0, 0.0)}
    unit = " (Hounsfield units)" if modality == "CT" else ""
    if len(real_rescales) == 1:
        (slope, intercept), = real_rescales
        conversions.append(f"modality LUT applied: RescaleSlope {slope:g}, RescaleIntercept {intercept:g}{unit}")
    elif real_rescales:
        conversions.append(f"modality LUT applied: {len(real_rescales)} different RescaleSlope/RescaleIntercept "
                           f"pairs across {what}{unit}")
    if "DoseGridScaling" in header:
        conversions.append(f"DoseGridScaling {float(header.DoseGridScaling):g} applied "
                           f"({header.get('DoseUnits', 'dose units')})")
    photometric = str(header.get("PhotometricInterpretation", "") or "")
    if photometric == "MONOCHROME1":
        conversions.append("MONOCHROME1 (higher values are shown darker by DICOM viewers): values kept as stored")
    conversions.extend(_skip_notes(survey))

    if stack.multi_frame:
        headers = [deidentified_header(header)]
        frame_numbers = [int(image.frame) for image in stack.images]
        label = name or f"{modality or 'DICOM'} multi-frame image, {count} frames"
        source_format = "dicom-multiframe"
    else:
        headers = [deidentified_header(image.header) for image in stack.images]
        frame_numbers = None
        label = name or f"{modality or 'DICOM'} series, {count} slices"
        source_format = "dicom"
    return ScanVolume(array=array, affine=stack.affine, modality=modality, name=label,
                      source_format=source_format, dicom_headers=headers, frame_numbers=frame_numbers,
                      conversions=conversions)


# Rows rescaled at a time: float64 arithmetic (the modality values as before, bit for bit) on a block
# of at most this many values, written into the float32 volume; no frame-sized float64 copy.
_RESCALE_BLOCK_VALUES = 1 << 20


def _write_rescaled(array: np.ndarray, k: int, frame: np.ndarray, slope: float, intercept: float,
                    scaling: Optional[float]) -> None:
    """``array[:, :, k] = (frame * slope + intercept) [* scaling]``, transposed, a block of rows at a time."""
    rows = frame.shape[0]
    step = max(1, _RESCALE_BLOCK_VALUES // max(1, frame.shape[1]))
    for start in range(0, rows, step):
        block = np.asarray(frame[start:start + step], dtype=np.float64)
        values = block * slope + intercept if (slope, intercept) != (1.0, 0.0) else block
        if scaling is not None:
            values = values * scaling
        array[:, start:start + step, k] = values.T


class _Frames:
    """A multi-frame file's frames, each decoded when it is asked for (``frames[f]``, 0-based), so the
    file's pixels are never in memory all at once."""

    def __init__(self, ds, member: _Member):
        self.ds = ds
        self.member = member

    def __getitem__(self, index: int) -> np.ndarray:
        from pydicom.pixels import pixel_array

        try:
            return pixel_array(self.ds, index=int(index))
        except Exception as error:  # decoders raise many types for damaged or unsupported data
            raise _undecodable(self.member, self.ds, error) from None


def _undecodable(member: _Member, ds, error) -> VolumeReadError:
    syntax = _transfer_syntax(ds)
    named = f" ({syntax.name})" if syntax is not None else ""
    return VolumeReadError(f"The pixel data of {member.label}{named} could not be decoded: {error}")


def _decoded(member: _Member, stack: _Stack) -> tuple:
    """(dataset, pixels) of one member, refusing in words what cannot be decoded: the pixel array, or
    for a multi-frame file its frames decoded one at a time."""
    try:
        ds = _read_pixels(member)
    except _DAMAGED_MEMBER_ERRORS as error:
        raise VolumeReadError(f"{member.label} could not be read again to decode its pixels ({error}); "
                              "the file changed or is damaged.") from None
    if stack.multi_frame:
        return ds, _Frames(ds, member)
    try:
        pixels = ds.pixel_array
    except Exception as error:  # decoders raise many types for damaged or unsupported data
        raise _undecodable(member, ds, error) from None
    return ds, pixels


# -- messages -------------------------------------------------------------------------------------
def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _skip_notes(survey: _Survey) -> list:
    notes = []
    for count, noun, why in (
            (survey.non_dicom, "non-DICOM file", "ignored"),
            (survey.no_pixels, "DICOM file", "without pixel data ignored (DICOMDIR, reports, structure sets)"),
            (survey.not_scans, "segmentation or presentation object", "ignored"),
            (survey.unreadable, "damaged DICOM file", "ignored"),
            (survey.no_position, "image", "without a patient position ignored (2-D images)"),
            (survey.single_images, "single image",
             "ignored (no other slice in the same series, orientation and size)")):
        if count:
            notes.append(f"{_counted(count, noun)} {why}")
    for file_label, frames, _ in survey.multi_frame_without_positions:
        notes.append(f"{file_label} ignored: {frames} frames without per-frame positions")
    return notes


def _nothing_readable_message(survey: _Survey) -> str:
    label = survey.label
    if survey.stacks:
        lines = "\n".join(_listing_line(stack) for stack in survey.stacks)
        if len(survey.stacks) == 1:
            stack = survey.stacks[0]
            return f"The {stack.info.label} series in {label} cannot be read as a volume: {stack.problem}"
        return f"None of the series in {label} can be read as a volume:\n{lines}"
    reasons = []
    if survey.scattered_series:
        for series_label, images, orientations in survey.scattered_series:
            reasons.append(f"the {series_label} series has {images} images in {orientations} different orientations "
                           "or sizes and no two parallel slices (a localizer or a radial acquisition), so it is "
                           "not a volume")
    singles = survey.single_images - sum(orientations for _, _, orientations in survey.scattered_series)
    if singles > 0:
        reasons.append(f"{singles} single 2-D image{'s have' if singles != 1 else ' has'} no second slice in its "
                       "series: open a single image as an image, not as a volume")
    if survey.no_position:
        reasons.append(f"{survey.no_position} image{'s carry' if survey.no_position != 1 else ' carries'} no patient "
                       "position (ImagePositionPatient / ImageOrientationPatient), as 2-D radiographs and "
                       "secondary captures do")
    for file_label, frames, modality in survey.multi_frame_without_positions:
        reasons.append(f"{file_label} has {frames} frames{f' ({modality})' if modality else ''} but no per-frame "
                       "position, so its frames may be time points (a cine loop) rather than slices, and no "
                       "spacing between them is stated")
    if survey.no_pixels:
        reasons.append(f"{survey.no_pixels} DICOM file{'s hold' if survey.no_pixels != 1 else ' holds'} no pixel "
                       "data (a DICOMDIR index, a report or a structure set)")
    if survey.not_scans:
        reasons.append(f"{survey.not_scans} file{'s are' if survey.not_scans != 1 else ' is'} a segmentation or "
                       "presentation object, not a scan")
    if survey.unreadable:
        reasons.append(f"{survey.unreadable} DICOM file{'s are' if survey.unreadable != 1 else ' is'} damaged")
    if survey.non_dicom and not reasons:
        other = f"{survey.non_dicom} other file{' was' if survey.non_dicom == 1 else 's were'} ignored"
        return f"{_capitalised(label)} holds no DICOM files ({other})."
    if not reasons:
        return f"{_capitalised(label)} holds no files."
    return f"No volume was found in {label}: " + "; ".join(reasons) + "."
