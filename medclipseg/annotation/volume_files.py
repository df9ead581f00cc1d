"""The files of a volume case: its scan as display slices, its geometry, and compact prediction maps.

A volume case is stored in the display orientation of :class:`medclipseg.io.volumes.ScanVolume`
(``[slice, row, column]``, an exact re-ordering of the file's voxels), so that one slice is one
read, with what is needed to map it back to the file's own grid:

* ``volumes/<content hash>.npz``: one member per slice, ``scan_00012``, in modality units (int16
  when every value is a whole number that fits, else float32), zip-compressed member by member so
  that a slice is read without decompressing the volume;
* ``volumes/<content hash>.json``: the geometry (file shape, affine, plane, spacing, modality,
  orientation codes, the default window) and, for a DICOM-sourced scan, its de-identified headers
  (UIDs and geometry only: see :mod:`medclipseg.io.dicom_series`), which a DICOM-SEG references.

Masks of a volume case (predicted, drafts, corrections) are the slices stacked vertically into one
``(slices x rows) x columns`` image: every 2-D mask mechanism of the store (PNG files, versions,
conflicts, drafts, pixel counts) applies to them unchanged. :func:`mosaic` and :func:`unmosaic`
convert.

Prediction maps of a volume are quantised to 8 bit per voxel (probability x 255; entropy and
mutual information as a fraction of ln 2), one member per slice and map: at most 1/510 off in
probability and ln2/510 nats in entropy, a quarter of a float32 volume before compression.
"""
from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

from medclipseg.annotation.errors import StorageError

MAP_NAMES = ("probability", "entropy", "mutual_information")
LN2 = math.log(2.0)
# The largest error quantisation makes, per map (documented in the module docstring).
QUANTISATION_STEP = {"probability": 1.0 / 255.0, "entropy": LN2 / 255.0, "mutual_information": LN2 / 255.0}


@dataclass(frozen=True)
class VolumeGeometry:
    """What the store keeps of a volume besides its voxels."""

    file_shape: tuple            # the file's own grid (i, j, k)
    affine: tuple                # 4x4, voxel -> RAS+ mm, exactly as read
    plane: str                   # the display/inference plane
    display_shape: tuple         # (slices, rows, columns)
    display_spacing: tuple       # mm between slices, rows, columns
    modality: str
    orientation: str             # the file's axis codes, e.g. "RAS"
    source_format: str           # "nifti" or "dicom"
    window: tuple                # default (center, width) in modality units
    frame_numbers: Optional[tuple] = None

    @property
    def depth(self) -> int:
        return int(self.display_shape[0])

    @property
    def rows(self) -> int:
        return int(self.display_shape[1])

    @property
    def columns(self) -> int:
        return int(self.display_shape[2])

    def as_dict(self) -> dict:
        return {"file_shape": list(self.file_shape), "affine": [list(r) for r in self.affine], "plane": self.plane,
                "display_shape": list(self.display_shape), "display_spacing": list(self.display_spacing),
                "modality": self.modality, "orientation": self.orientation, "source_format": self.source_format,
                "window": list(self.window), "frame_numbers": None if self.frame_numbers is None else
                list(self.frame_numbers)}

    @classmethod
    def from_dict(cls, data: dict) -> "VolumeGeometry":
        return cls(file_shape=tuple(int(n) for n in data["file_shape"]),
                   affine=tuple(tuple(float(v) for v in row) for row in data["affine"]), plane=data["plane"],
                   display_shape=tuple(int(n) for n in data["display_shape"]),
                   display_spacing=tuple(float(v) for v in data["display_spacing"]), modality=data["modality"],
                   orientation=data["orientation"], source_format=data["source_format"],
                   window=tuple(float(v) for v in data["window"]),
                   frame_numbers=None if data.get("frame_numbers") is None else tuple(data["frame_numbers"]))


def geometry_of(volume, window: tuple) -> VolumeGeometry:
    """The geometry record of a ScanVolume, with the window its prediction used."""
    plane = volume.slice_plane
    return VolumeGeometry(file_shape=volume.shape, affine=tuple(tuple(float(v) for v in row) for row in volume.affine),
                          plane=plane, display_shape=volume.display_shape(plane),
                          display_spacing=volume.display_spacing(plane), modality=volume.modality or "",
                          orientation=volume.orientation_codes(), source_format=volume.source_format,
                          window=tuple(float(v) for v in window),
                          frame_numbers=None if volume.frame_numbers is None else
                          tuple(int(n) for n in volume.frame_numbers))


def content_hash(volume) -> str:
    """The identity of a scan: its voxels, in display order, and its affine."""
    import hashlib

    digest = hashlib.sha256()
    display = np.ascontiguousarray(volume.to_display(), dtype=np.float32)
    digest.update(str(display.shape).encode())
    digest.update(np.round(np.asarray(volume.affine, dtype=np.float64), 6).tobytes())
    digest.update(display.tobytes())
    return "v" + digest.hexdigest()


def _member(prefix: str, index: int) -> str:
    return f"{prefix}_{int(index):05d}"


def _store_dtype(display: np.ndarray) -> np.dtype:
    """int16 when every value is whole and fits (CT in HU, most MR), else float32: exact either way."""
    if display.size and np.all(np.isfinite(display)):
        low, high = float(display.min()), float(display.max())
        if low >= -32768 and high <= 32767 and np.array_equal(display, np.round(display)):
            return np.dtype(np.int16)
    return np.dtype(np.float32)


def _write_members(handle, members) -> None:
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in members:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(f"{name}.npy", buffer.getvalue())


def scan_writer(display: np.ndarray):
    """A writer (for FileStore.write) of the scan's display slices."""
    dtype = _store_dtype(display)

    def write(handle):
        _write_members(handle, ((_member("scan", s), display[s].astype(dtype)) for s in range(display.shape[0])))
    return write


def quantise(name: str, values: np.ndarray) -> np.ndarray:
    scale = 1.0 if name == "probability" else LN2
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) / scale * 255.0), 0, 255).astype(np.uint8)


def dequantise(name: str, values: np.ndarray) -> np.ndarray:
    scale = 1.0 if name == "probability" else LN2
    return values.astype(np.float32) * np.float32(scale / 255.0)


def maps_writer(display_maps: dict, slice_scores: dict):
    """A writer of a volume prediction's quantised maps (display order) and per-slice scores."""
    def write(handle):
        def members():
            depth = display_maps["probability"].shape[0]
            for name in MAP_NAMES:
                for s in range(depth):
                    yield _member(name, s), quantise(name, display_maps[name][s])
            for key, values in slice_scores.items():
                yield f"slice_{key}", np.asarray(values, dtype=np.float32)
        _write_members(handle, members())
    return write


def read_member(path, name: str) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open(f"{name}.npy") as member:
                return np.load(io.BytesIO(member.read()), allow_pickle=False)
    except KeyError:
        raise StorageError(f"{path} has no entry {name}; the slice does not exist.") from None
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise StorageError(f"The volume file {path} is damaged and could not be read ({exc}).") from None


def read_scan_slice(path, index: int) -> np.ndarray:
    return read_member(path, _member("scan", index)).astype(np.float32)


def read_scan(path, depth: int) -> np.ndarray:
    """The whole scan in display order, float32."""
    try:
        with zipfile.ZipFile(path) as archive:
            first = np.load(io.BytesIO(archive.read(f"{_member('scan', 0)}.npy")))
            out = np.empty((depth,) + first.shape, np.float32)
            out[0] = first
            for s in range(1, depth):
                out[s] = np.load(io.BytesIO(archive.read(f"{_member('scan', s)}.npy")))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise StorageError(f"The volume file {path} is damaged and could not be read ({exc}).") from None
    return out


def read_map_slice(path, name: str, index: int) -> np.ndarray:
    return dequantise(name, read_member(path, _member(name, index)))


def read_slice_scores(path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            return {name[len("slice_"):-len(".npy")]: np.load(io.BytesIO(archive.read(name)))
                    for name in archive.namelist() if name.startswith("slice_")}
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise StorageError(f"The map file {path} is damaged and could not be read ({exc}).") from None


def read_map_volume(path, name: str, depth: int) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as archive:
            slices = [np.load(io.BytesIO(archive.read(f"{_member(name, s)}.npy"))) for s in range(depth)]
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise StorageError(f"The map file {path} is damaged and could not be read ({exc}).") from None
    return dequantise(name, np.stack(slices))


def mosaic(display_mask: np.ndarray) -> np.ndarray:
    """[slices, rows, columns] -> (slices x rows) x columns, slices stacked top to bottom."""
    depth, rows, columns = display_mask.shape
    return np.ascontiguousarray(display_mask).reshape(depth * rows, columns)


def unmosaic(mask: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    return np.asarray(mask).reshape(geometry.depth, geometry.rows, geometry.columns)


def mosaic_slice(mask: np.ndarray, geometry: VolumeGeometry, index: int) -> np.ndarray:
    return np.asarray(mask)[index * geometry.rows:(index + 1) * geometry.rows]


def geometry_document(geometry: VolumeGeometry, headers_json: Optional[str]) -> bytes:
    return json.dumps({"geometry": geometry.as_dict(), "dicom_headers": headers_json}).encode("utf-8")


def read_geometry_document(path) -> tuple:
    try:
        data = json.loads(open(path, "rb").read().decode("utf-8"))
        return VolumeGeometry.from_dict(data["geometry"]), data.get("dicom_headers")
    except (OSError, ValueError, KeyError) as exc:
        raise StorageError(f"The volume geometry file {path} is damaged ({exc}).") from None
