"""A stored volume seen in the three anatomical planes: exact reformatting on the voxel grid.

A volume case is stored in the display order of its acquisition plane (``[slice, row, column]``,
see :mod:`medclipseg.io.volumes` for the conventions). Each display convention fixes the world
direction of all three array axes (axial ``S, P, L``; coronal ``A, I, L``; sagittal ``L, I, P``),
so the same voxels in another plane's convention are a flip and a transpose of the stored array,
whatever the file's own voxel order: no resampling, no interpolation, and a numpy *view*, so a
mask painted in the coronal view writes the stored mask's voxels.

* :class:`PlaneGeometry`: shapes, spacings, views and crosshair points between the planes.
* :class:`LoadedVolume` and :func:`loaded_volume`: a case's scan and 8-bit prediction maps held in
  memory (a small cache), since a coronal or sagittal slice crosses every stored slice.
* :func:`plane_slice`, :func:`plane_strip`: what the editor shows of one plane.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from medclipseg.annotation import volume_files
from medclipseg.annotation.byte_cache import ByteCache, budget_of
from medclipseg.annotation.errors import StorageError

PLANES = ("axial", "coronal", "sagittal")
# Volumes are held whole (a 512 x 512 x 300 CT: about 310 MB each) within their share of
# MEDCLIPSEG_CACHE_MB (settings.CACHE_SHARES); a larger one is read for each request.


def _display_codes(plane: str) -> tuple:
    from medclipseg.io.volumes import DISPLAY_AXCODES

    if plane not in DISPLAY_AXCODES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    return DISPLAY_AXCODES[plane]


def _transform(from_plane: str, to_plane: str) -> np.ndarray:
    """nibabel orientation transform from one display convention to another (rows: input axes)."""
    import nibabel as nib

    return nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(_display_codes(from_plane)),
                                           nib.orientations.axcodes2ornt(_display_codes(to_plane)))


@dataclass(frozen=True)
class PlaneGeometry:
    """The three plane views of a display-order volume stored in ``stored_plane``'s convention."""

    stored_plane: str
    stored_shape: tuple          # (slices, rows, columns) as stored
    stored_spacing: tuple        # mm between slices, rows, columns as stored

    @classmethod
    def of(cls, geometry) -> "PlaneGeometry":
        """From the store's :class:`~medclipseg.annotation.volume_files.VolumeGeometry`."""
        return cls(stored_plane=geometry.plane, stored_shape=tuple(int(n) for n in geometry.display_shape),
                   stored_spacing=tuple(float(v) for v in geometry.display_spacing))

    def axes(self, plane: str) -> list:
        """For each axis (slice, row, column) of ``plane``'s view: (the stored axis it runs along,
        whether it runs the other way). What a client needs to map points without asking."""
        return [(int(axis), bool(flipped)) for axis, flipped in self._axes(plane)]

    def _axes(self, plane: str) -> list:
        """For each axis of ``plane``'s view: (stored axis, flipped)."""
        transform = _transform(self.stored_plane, plane)
        out = [None, None, None]
        for stored_axis, (axis, flip) in enumerate(transform):
            out[int(axis)] = (stored_axis, flip < 0)
        return out

    def shape(self, plane: str) -> tuple:
        return tuple(self.stored_shape[axis] for axis, _ in self._axes(plane))

    def spacing(self, plane: str) -> tuple:
        """mm between slices, rows and columns of ``plane``'s view."""
        return tuple(self.stored_spacing[axis] for axis, _ in self._axes(plane))

    def view(self, stored: np.ndarray, plane: str) -> np.ndarray:
        """``stored`` (``[slice, row, column]`` as stored) in ``plane``'s convention: a view, so
        assigning into it changes ``stored``."""
        import nibabel as nib

        stored = np.asarray(stored)
        if tuple(stored.shape[:3]) != self.stored_shape:
            raise ValueError(f"an array of shape {stored.shape} is not this volume's {self.stored_shape}")
        return nib.orientations.apply_orientation(stored, _transform(self.stored_plane, plane))

    def point(self, point, from_plane: str, to_plane: str) -> tuple:
        """(slice, row, column) in ``to_plane``'s view of the voxel at ``point`` of ``from_plane``'s view."""
        values = tuple(int(v) for v in point)
        source_shape = self.shape(from_plane)
        if len(values) != 3 or not all(0 <= v < n for v, n in zip(values, source_shape)):
            raise ValueError(f"voxel {values} lies outside the {from_plane} view of shape {source_shape}")
        stored = [0, 0, 0]
        for value, (axis, flipped) in zip(values, self._axes(from_plane)):
            stored[axis] = self.stored_shape[axis] - 1 - value if flipped else value
        return tuple(self.stored_shape[axis] - 1 - stored[axis] if flipped else stored[axis]
                     for axis, flipped in self._axes(to_plane))

    def stored_slices(self, plane: str, index: int) -> Optional[list]:
        """The stored (acquisition) slices that ``plane``'s slice ``index`` crosses: all of them for
        another plane, ``[index]`` (mapped) for the stored plane's own axis."""
        axis, flipped = self._axes(plane)[0]
        if axis != 0:
            return list(range(self.stored_shape[0]))
        return [self.stored_shape[0] - 1 - int(index) if flipped else int(index)]


def _read_members(path, prefix: str, depth: int, dtype=None) -> np.ndarray:
    """Every ``prefix_NNNNN`` member of a volume file stacked, in the stored dtype (no float copy)."""
    try:
        with zipfile.ZipFile(path) as archive:
            first = np.load(io.BytesIO(archive.read(f"{prefix}_{0:05d}.npy")), allow_pickle=False)
            out = np.empty((depth,) + first.shape, dtype or first.dtype)
            out[0] = first
            for s in range(1, depth):
                out[s] = np.load(io.BytesIO(archive.read(f"{prefix}_{s:05d}.npy")), allow_pickle=False)
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise StorageError(f"The volume file {path} is damaged and could not be read ({exc}).") from None
    return out


class QuantisedMap:
    """An 8-bit map volume read as float32 one slice at a time (``map[s]``), with its shape: what
    :func:`medclipseg.annotation.volume_tools.propagate` takes without a float copy of the volume."""

    def __init__(self, name: str, values: np.ndarray):
        self.name = name
        self.values = values
        self.shape = values.shape

    def __getitem__(self, index):
        return volume_files.dequantise(self.name, np.asarray(self.values[index]))

    def __array__(self, dtype=None, copy=None):
        out = volume_files.dequantise(self.name, self.values)
        return out if dtype is None else out.astype(dtype)


@dataclass
class LoadedVolume:
    """A volume case held in memory: the scan (stored dtype, display order of its plane) and its
    prediction's 8-bit maps (None when the case has no prediction)."""

    case_id: int
    prediction_id: Optional[int]
    geometry: object                 # VolumeGeometry
    planes: PlaneGeometry
    scan: np.ndarray
    probability: Optional[np.ndarray] = None   # uint8, probability x 255
    entropy: Optional[np.ndarray] = None       # uint8, entropy / ln 2 x 255
    _strips: dict = field(default_factory=dict)

    def probability_map(self) -> QuantisedMap:
        return QuantisedMap("probability", self._map("probability"))

    def entropy_map(self) -> QuantisedMap:
        return QuantisedMap("entropy", self._map("entropy"))

    def _map(self, name: str) -> np.ndarray:
        values = getattr(self, name)
        if values is None:
            return np.zeros(self.scan.shape, np.uint8)
        return values

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.scan, self.probability, self.entropy) if a is not None))


LOADED = ByteCache(budget_of("volumes"))


def loaded_volume(store, case_id: int, prediction_id: Optional[int]) -> LoadedVolume:
    """Case ``case_id``'s scan and the maps of ``prediction_id`` in memory (read once, then cached;
    predictions and scans never change once stored)."""
    key = (store.location.label, int(case_id), None if prediction_id is None else int(prediction_id))

    def load() -> LoadedVolume:
        geometry = store.volume_geometry(case_id)
        scan = _read_members(store.volume_scan_path(case_id), "scan", geometry.depth)
        probability = entropy = None
        if prediction_id is not None:
            maps_path = store.prediction_maps_path(prediction_id)
            probability = _read_members(maps_path, "probability", geometry.depth, np.uint8)
            entropy = _read_members(maps_path, "entropy", geometry.depth, np.uint8)
        return LoadedVolume(case_id=int(case_id), prediction_id=prediction_id, geometry=geometry,
                            planes=PlaneGeometry.of(geometry), scan=scan, probability=probability, entropy=entropy)

    return LOADED.get_or_load(key, load)


@dataclass
class PlaneSlice:
    """One slice of one plane as the editor shows it."""

    plane: str
    index: int
    depth: int                    # slices in this plane
    image_rgb: np.ndarray         # uint8 rows x columns x 3, windowed
    probability: np.ndarray       # float32
    entropy: np.ndarray           # float32, nats
    mask: np.ndarray              # bool
    spacing: tuple                # (row_mm, column_mm): the pixel's aspect ratio


def plane_slice(loaded: LoadedVolume, plane: str, index: int, mask_display: np.ndarray, window) -> PlaneSlice:
    """Slice ``index`` of ``plane``: the scan windowed (``window`` = center, width in modality units),
    the maps and ``mask_display`` (the stored-order 3-D mask) reformatted on the grid."""
    from medclipseg.io.volumes import window_to_uint8

    planes = loaded.planes
    depth = planes.shape(plane)[0]
    index = int(index)
    if not 0 <= index < depth:
        raise ValueError(f"the {plane} view has slices 0 to {depth - 1}, not {index}")
    scan = np.ascontiguousarray(planes.view(loaded.scan, plane)[index], dtype=np.float32)
    grey = window_to_uint8(scan, (float(window[0]), float(window[1])))
    probability = volume_files.dequantise("probability", np.ascontiguousarray(
        planes.view(loaded._map("probability"), plane)[index]))
    entropy = volume_files.dequantise("entropy", np.ascontiguousarray(
        planes.view(loaded._map("entropy"), plane)[index]))
    mask = np.ascontiguousarray(planes.view(np.asarray(mask_display, bool), plane)[index])
    return PlaneSlice(plane=plane, index=index, depth=depth, image_rgb=np.repeat(grey[..., None], 3, axis=2),
                      probability=probability, entropy=entropy, mask=mask, spacing=planes.spacing(plane)[1:])


def plane_strip(loaded: LoadedVolume, plane: str) -> list:
    """Mean entropy (nats) of every slice of ``plane``, in that plane's slice order (cached)."""
    if plane not in loaded._strips:
        entropy = loaded.planes.view(loaded._map("entropy"), plane)
        means = entropy.mean(axis=(1, 2), dtype=np.float64) * (volume_files.LN2 / 255.0)
        loaded._strips[plane] = [float(v) for v in means]
    return list(loaded._strips[plane])
