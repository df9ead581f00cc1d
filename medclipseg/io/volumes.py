"""Volumes (NIfTI files, DICOM series) as one object that carries its geometry: ScanVolume.

A :class:`ScanVolume` is an array in the file's own voxel order, indexed ``[i, j, k]`` as nibabel
indexes it, in modality units (Hounsfield units for CT), plus the 4x4 affine that maps voxel
indices to world millimetres in RAS+ (nibabel's convention; DICOM's LPS+ is converted once, when
a series is read). The affine is kept exactly as read: masks written back use it unchanged.

Display and inference orientation
---------------------------------
The model is 2-D. A volume is sliced along one *plane* (axial, coronal or sagittal) after an exact
re-ordering of its voxels (axis permutations and flips only, never a resampling) into the
radiological convention viewers use:

======== ============================== ========================= ========================
plane    slices run towards             image rows run towards    image columns run towards
======== ============================== ========================= ========================
axial    superior (feet to head)        posterior (top: anterior) left (patient's right on the viewer's left)
coronal  anterior                       inferior (top: superior)  left
sagittal left                           inferior (top: superior)  posterior (anterior on the viewer's left)
======== ============================== ========================= ========================

Which plane a volume is sliced along depends only on its voxel spacing in world directions (the
axis with the thickest voxels, ties resolved towards axial), so the same scan stored in any voxel
order (RAS, LPS, flipped, permuted) is shown and predicted slice for slice identically, and
:meth:`ScanVolume.from_display` maps a result back to the file's own grid exactly.

Reading: :func:`read_volume` dispatches NIfTI files to :func:`read_nifti` (nibabel) and DICOM
folders, zips and file lists to :mod:`medclipseg.io.dicom_series` (pydicom and highdicom).
Limits (:func:`check_volume_size`) are checked on headers, before any voxel is decoded.
"""
from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medclipseg import settings

__all__ = [
    "NIFTI_SUFFIXES",
    "PLANES",
    "DISPLAY_AXCODES",
    "ScanVolume",
    "VolumeReadError",
    "check_volume_size",
    "window_to_uint8",
    "is_nifti_name",
    "read_nifti",
    "read_volume",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PLANES = ("axial", "coronal", "sagittal")
# nibabel axis codes of the display array [slice, row, column] for each plane (module docstring).
DISPLAY_AXCODES = {
    "axial": ("S", "P", "L"),
    "coronal": ("A", "I", "L"),
    "sagittal": ("L", "I", "P"),
}
# The world axis (0 = x/R-L, 1 = y/A-P, 2 = z/S-I) slices of each plane stack along.
_PLANE_WORLD_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
# Spacings within this fraction count as equal when choosing the slicing plane.
_SPACING_TIE = 0.05


class VolumeReadError(ValueError):
    """A volume could not be read; the message is meant to be shown to the user."""


def is_nifti_name(name: str) -> bool:
    lowered = str(name).lower()
    return lowered.endswith(".nii") or lowered.endswith(".nii.gz")


@dataclass
class ScanVolume:
    """A scan's voxels (``array``, float32 ``[i, j, k]``, modality units) and where they are
    (``affine``, voxel -> RAS+ mm, exactly as read).

    ``dicom_headers``: for DICOM-sourced volumes, one de-identified pydicom Dataset per k slice
    (no pixel data, no patient identifiers; UIDs and geometry kept) in k order, which a DICOM-SEG
    references; None for NIfTI. ``frame_numbers``: for an enhanced multi-frame source, the 1-based
    frame of ``dicom_headers[0]`` each k slice came from, else None.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = ""
    name: str = ""
    source_format: str = "nifti"
    dicom_headers: Optional[list] = None
    frame_numbers: Optional[list] = None
    conversions: list = field(default_factory=list)

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise VolumeReadError(f"a volume has 3 dimensions; this one has shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise VolumeReadError("a volume's affine must be a 4x4 matrix")
        if not np.all(np.isfinite(self.affine)) or abs(np.linalg.det(self.affine[:3, :3])) < 1e-12:
            raise VolumeReadError("the volume's affine is degenerate (zero or non-finite voxel size)")

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(int(n) for n in self.array.shape)

    @property
    def spacing(self) -> tuple:
        """Voxel size in mm along i, j, k (the affine's column lengths)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def world_spacing(self) -> tuple:
        """Voxel size in mm along the world axes x, y, z (after re-ordering to the nearest axes)."""
        ornt = _orientation(self.affine)
        spacing = [0.0, 0.0, 0.0]
        for voxel_axis, (world_axis, _) in enumerate(ornt):
            spacing[int(world_axis)] = self.spacing[voxel_axis]
        return tuple(spacing)

    @property
    def slice_plane(self) -> str:
        """The plane this volume is sliced along for display and inference: the world axis with the
        thickest voxels (the acquisition's through-plane axis), axial on ties."""
        x, y, z = self.world_spacing()
        thickest = max(x, y, z)
        for plane in ("axial", "coronal", "sagittal"):
            value = (x, y, z)[_PLANE_WORLD_AXIS[plane]]
            if value >= thickest * (1 - _SPACING_TIE):
                return plane
        return "axial"  # unreachable: one axis always holds the maximum

    def orientation_codes(self) -> str:
        """nibabel's axis codes of the file's voxel axes, e.g. "RAS" or "LPS"."""
        import nibabel as nib

        return "".join(nib.orientations.aff2axcodes(self.affine))

    def _transform(self, plane: Optional[str]) -> np.ndarray:
        import nibabel as nib

        plane = plane or self.slice_plane
        if plane not in DISPLAY_AXCODES:
            raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
        target = nib.orientations.axcodes2ornt(DISPLAY_AXCODES[plane])
        return nib.orientations.ornt_transform(_orientation(self.affine), target)

    def to_display(self, values: Optional[np.ndarray] = None, plane: Optional[str] = None) -> np.ndarray:
        """``values`` on the file grid (default: the scan itself) as ``[slice, row, column]`` in
        the display convention of ``plane`` (default: :attr:`slice_plane`). A view where possible."""
        import nibabel as nib

        values = self.array if values is None else np.asarray(values)
        if values.shape[:3] != self.shape:
            raise ValueError(f"values of shape {values.shape} are not on this volume's grid {self.shape}")
        return nib.orientations.apply_orientation(values, self._transform(plane))

    def from_display(self, values: np.ndarray, plane: Optional[str] = None) -> np.ndarray:
        """The inverse of :meth:`to_display`: a ``[slice, row, column]`` array back on the file's grid."""
        import nibabel as nib

        transform = self._transform(plane)
        result = nib.orientations.apply_orientation(np.asarray(values), _invert_ornt(transform))
        if result.shape[:3] != self.shape:
            raise ValueError(f"values of shape {np.asarray(values).shape} do not come from this volume's display grid")
        return result

    def file_slice(self, index: int, plane: Optional[str] = None) -> tuple:
        """(file axis, index along it) of display slice ``index``: where that slice lies in the file."""
        axis, flip = _invert_ornt(self._transform(plane))[0]
        axis = int(axis)
        return axis, (self.shape[axis] - 1 - int(index)) if flip < 0 else int(index)

    def display_shape(self, plane: Optional[str] = None) -> tuple:
        transform = self._transform(plane)
        return tuple(self.shape[int(axis)] for axis in _invert_ornt(transform)[:, 0])

    def display_spacing(self, plane: Optional[str] = None) -> tuple:
        """mm between slices, rows and columns of the display array of ``plane``."""
        transform = self._transform(plane)
        inverse = _invert_ornt(transform)
        return tuple(self.spacing[int(axis)] for axis in inverse[:, 0])

    def display_affine(self, plane: Optional[str] = None) -> np.ndarray:
        """voxel [slice, row, column] of the display array -> RAS+ mm."""
        import nibabel as nib

        transform = self._transform(plane)
        return self.affine @ nib.orientations.inv_ornt_aff(transform, self.shape)

    def nifti_image(self, values: Optional[np.ndarray] = None, dtype=None):
        """A nibabel image of ``values`` (default: the scan) on this grid with this affine (sform
        and qform both set, code 1 = scanner), so viewers place it over the original."""
        import nibabel as nib

        values = self.array if values is None else np.asarray(values)
        if values.shape[:3] != self.shape:
            raise ValueError(f"values of shape {values.shape} are not on this volume's grid {self.shape}")
        if dtype is not None:
            values = values.astype(dtype)
        image = nib.Nifti1Image(values, self.affine)
        image.set_sform(self.affine, code=1)
        image.set_qform(self.affine, code=1)
        return image


def _orientation(affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return nib.orientations.io_orientation(affine)


def _invert_ornt(transform: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``transform`` (nibabel's [[axis, flip], ...] form):
    output axis ``transform[i, 0]`` came from input axis i, flipped by ``transform[i, 1]``."""
    inverse = np.zeros_like(transform)
    for source_axis, (target_axis, flip) in enumerate(transform):
        inverse[int(target_axis)] = (source_axis, flip)
    return inverse


def window_to_uint8(values: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Modality values -> 0..255 with a linear (center, width) window (DICOM's LINEAR rule's
    end points: center - width/2 maps to 0 and center + width/2 to 255), as the model and the
    editor see a slice."""
    center, width = float(window[0]), max(float(window[1]), 1e-6)
    low = center - width / 2.0
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# -- limits ---------------------------------------------------------------------------------------
def check_volume_size(shape: Sequence[int], what: str = "The volume") -> None:
    """Refuse, in words, a volume whose voxel count or slice count passes the settings' limits.
    Called with the header's shape before anything is decoded."""
    shape = tuple(int(n) for n in shape)
    voxels = int(np.prod(shape, dtype=np.int64))
    max_voxels = settings.max_volume_voxels()
    max_side = settings.max_volume_side()
    if any(n < 1 for n in shape):
        raise VolumeReadError(f"{what} is empty (shape {' x '.join(map(str, shape))}).")
    if max(shape) > max_side:
        raise VolumeReadError(
            f"{what} has {max(shape):,} voxels along one side (shape {' x '.join(map(str, shape))}); "
            f"the limit is {max_side:,} (MEDCLIPSEG_MAX_VOLUME_SIDE). Crop or resample it first.")
    if voxels > max_voxels:
        raise VolumeReadError(
            f"{what} has {voxels:,} voxels (shape {' x '.join(map(str, shape))}); the limit is "
            f"{max_voxels:,} (MEDCLIPSEG_MAX_VOLUME_VOXELS). Crop or resample it first.")


# -- NIfTI ----------------------------------------------------------------------------------------
def read_nifti(source, name: Optional[str] = None, volume_index: Optional[int] = None) -> ScanVolume:
    """A NIfTI-1/-2 file (``.nii`` or ``.nii.gz``; a path or its bytes) as a ScanVolume.

    The affine is nibabel's (sform when its code is set, else qform), kept exactly. Scaled data
    (``scl_slope`` / ``scl_inter``) is read in real units. NaN and infinite voxels become the
    volume's finite minimum (recorded in ``conversions``). A 4-D file is refused unless
    ``volume_index`` picks one of its volumes; 2-D files are refused (they are images).
    """
    import nibabel as nib

    label = name or (Path(source).name if isinstance(source, (str, Path)) else "the file")
    raw = _nifti_bytes(source, label)
    try:
        image = _nifti_from_bytes(raw)
    except VolumeReadError:
        raise
    except Exception as error:  # nibabel raises several types for a damaged header
        raise VolumeReadError(f"{label} is not a readable NIfTI file ({type(error).__name__}: {error}).") from None
    shape = tuple(int(n) for n in image.shape)
    conversions: list = []
    while len(shape) > 3 and shape[-1] == 1:  # trailing singleton dimensions are common and harmless
        shape = shape[:-1]
    if len(shape) < 3 or (len(shape) == 3 and min(shape) < 1):
        raise VolumeReadError(
            f"{label} is {len(shape)}-D (shape {' x '.join(map(str, shape))}); a volume needs 3 dimensions. "
            "Save a 2-D slice as PNG to segment it as an image.")
    if len(shape) == 3 and shape[2] == 1:
        raise VolumeReadError(f"{label} has a single slice (shape {' x '.join(map(str, shape))}); "
                              "save it as PNG to segment it as an image.")
    if len(shape) > 4:
        raise VolumeReadError(f"{label} has {len(shape)} dimensions (shape {' x '.join(map(str, shape))}); "
                              "only 3-D volumes (or one volume of a 4-D series) can be read.")
    if len(shape) == 4:
        if volume_index is None:
            raise VolumeReadError(
                f"{label} is a 4-D series of {shape[3]} volumes (shape {' x '.join(map(str, shape))}); "
                "pick one volume (volume_index) or split the file (e.g. fslsplit) first.")
        if not 0 <= int(volume_index) < shape[3]:
            raise VolumeReadError(f"{label} has volumes 0..{shape[3] - 1}; volume {volume_index} does not exist.")
        conversions.append(f"volume {int(volume_index)} of {shape[3]} taken from a 4-D series")
    check_volume_size(shape[:3], what=label)
    try:
        dataobj = image.dataobj
        if len(image.shape) > 3:
            index = (slice(None),) * 3 + tuple(
                [int(volume_index or 0)] + [0] * (len(image.shape) - 4))
            data = np.asarray(dataobj[index])
        else:
            data = np.asarray(dataobj)
    except Exception as error:
        raise VolumeReadError(f"{label}'s voxel data could not be read ({type(error).__name__}: {error}); "
                              "the file may be truncated.") from None
    data = data.reshape(shape[:3])
    if np.iscomplexobj(data) or data.dtype.fields is not None:
        raise VolumeReadError(f"{label} holds {data.dtype} voxels; only real-valued scans can be segmented.")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    slope, intercept = image.header.get_slope_inter()
    if slope is not None and (slope != 1 or (intercept or 0) != 0):
        conversions.append(f"stored values scaled by scl_slope={slope:g}, scl_inter={intercept or 0:g}")
    values = data.astype(np.float32, copy=False)
    values = _replace_non_finite(values, conversions, label)
    modality = _nifti_modality(image, label)
    return ScanVolume(array=values, affine=np.array(image.affine, dtype=np.float64), modality=modality,
                      name=Path(label).name, source_format="nifti", conversions=conversions)


def _replace_non_finite(values: np.ndarray, conversions: list, label: str) -> np.ndarray:
    finite = np.isfinite(values)
    if finite.all():
        return values
    if not finite.any():
        raise VolumeReadError(f"{label} holds no finite values (all NaN or infinite).")
    count = int((~finite).sum())
    values = np.array(values, dtype=np.float32, copy=True)
    values[~finite] = float(values[finite].min())
    conversions.append(f"{count:,} NaN/infinite voxels set to the volume's minimum")
    return values


def _nifti_modality(image, label: str) -> str:
    """NIfTI has no modality field; a description or intent naming CT is taken, else "MR" when the
    values cannot be Hounsfield units, else unknown ("")."""
    try:
        description = bytes(image.header.get("descrip", b"")).decode("latin-1").lower()
    except Exception:
        description = ""
    if " ct" in f" {description}" or "hounsfield" in description:
        return "CT"
    if "mr" in description.split() or "t1" in description or "t2" in description:
        return "MR"
    return ""


def _nifti_bytes(source, label: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise VolumeReadError(f"{label}: no such file.")
        max_bytes = settings.max_volume_file_bytes()
        if path.stat().st_size > max_bytes:
            raise VolumeReadError(f"{label} is {path.stat().st_size / 1e9:.1f} GB; the limit for one volume file "
                                  f"is {max_bytes / 1e9:.1f} GB (MEDCLIPSEG_MAX_VOLUME_BYTES).")
        raw = path.read_bytes()
    if not raw:
        raise VolumeReadError(f"{label} is empty.")
    return raw


def _nifti_from_bytes(raw: bytes):
    """A nibabel image held in memory. gzip is undone here, checking the header's shape against the
    limits before the voxel data is decompressed (a small .nii.gz can expand to gigabytes)."""
    import nibabel as nib

    if raw[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=io.BytesIO(raw))
        try:
            head = stream.read(540)
        except (OSError, EOFError, zlib.error) as error:
            raise VolumeReadError(f"the file is not a readable .nii.gz ({error}).") from None
        _check_header_shape(head)
        try:
            rest = stream.read()
        except (OSError, EOFError, zlib.error) as error:
            raise VolumeReadError(f"the .nii.gz file is truncated or damaged ({error}); nothing was read.") from None
        raw = head + rest
    else:
        _check_header_shape(raw[:540])
    holder = nib.FileHolder(fileobj=io.BytesIO(raw))
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            image = klass.from_file_map({"header": holder, "image": holder})
        except Exception:
            holder = nib.FileHolder(fileobj=io.BytesIO(raw))
            continue
        expected = _data_bytes(image)
        offset = int(image.header.get_data_offset())
        if expected is not None and len(raw) < offset + expected:
            raise VolumeReadError(
                f"the file is truncated: its header promises {expected:,} bytes of voxels after byte {offset}, "
                f"but the file has {max(0, len(raw) - offset):,}; nothing was read.")
        return image
    raise VolumeReadError("the file is not a NIfTI-1 or NIfTI-2 image (no valid header).")


def _data_bytes(image) -> Optional[int]:
    try:
        return int(np.prod(image.shape, dtype=np.int64)) * int(image.get_data_dtype().itemsize)
    except Exception:
        return None


def _check_header_shape(head: bytes) -> None:
    """NIfTI-1 keeps dim[0..7] as int16 at byte 40 (NIfTI-2 as int64 at byte 16); check the
    spatial shape against the limits before decoding anything."""
    if len(head) < 348:
        raise VolumeReadError("the file is too short to be a NIfTI image; nothing was read.")
    for order in ("<", ">"):
        sizeof = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if sizeof == 348:
            dims = np.frombuffer(head[40:56], dtype=f"{order}i2").astype(np.int64)
            break
        if sizeof == 540:
            dims = np.frombuffer(head[16:80], dtype=f"{order}i8")
            break
    else:
        raise VolumeReadError("the file is not a NIfTI-1 or NIfTI-2 image (no valid header).")
    ndim = int(dims[0])
    if 3 <= ndim <= 7:
        check_volume_size([int(n) for n in dims[1:4]])


# -- dispatch -------------------------------------------------------------------------------------
def read_volume(source, name: Optional[str] = None, volume_index: Optional[int] = None) -> ScanVolume:
    """One volume from a NIfTI file, a DICOM series folder, a zip of one series, a list of DICOM
    files of one series, or an enhanced multi-frame DICOM file. Several series in one source are
    refused with their list (:func:`medclipseg.io.dicom_series.read_dicom_volumes` returns them all)."""
    label = name or (Path(source).name if isinstance(source, (str, Path)) else "")
    if isinstance(source, (str, Path)) and is_nifti_name(str(source)):
        return read_nifti(source, name=name, volume_index=volume_index)
    if isinstance(source, (bytes, bytearray)) and label and is_nifti_name(label):
        return read_nifti(source, name=label, volume_index=volume_index)
    from medclipseg.io import dicom_series

    return dicom_series.read_dicom_volume(source, name=name)
