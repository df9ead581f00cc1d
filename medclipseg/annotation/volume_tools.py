"""Fast corrections of a volume mask: slice interpolation, propagation, and 3-D clean-up tools.

Every array here is a display-order volume ``[slice, row, column]`` (as
:meth:`medclipseg.io.volumes.ScanVolume.to_display` gives it): masks are boolean, probability and
entropy maps are float. ``spacing`` is ``(slice_mm, row_mm, column_mm)`` (as
:meth:`~medclipseg.io.volumes.ScanVolume.display_spacing` gives it); ``None`` means 1 mm on every
axis. Functions never change their inputs: they return new arrays.

Tools, each documented with its exact rule:

* :func:`interpolate_slices`: shape-based interpolation (signed distance maps) between drawn slices.
* :func:`propagate`: a drawn slice carried to its neighbours through the model's probability map,
  stopping where the model is uncertain, the area jumps, the structure ends or a drawn slice lies.
* :func:`remove_islands`, :func:`component_at`, :func:`delete_component`, :func:`keep_component`:
  connected components in 3-D (26-connectivity by default, 6 on request).
* :func:`fill_holes_3d`: background enclosed by the mask becomes foreground.
* :func:`grow_mm`, :func:`shrink_mm`: exact anisotropic Euclidean margins in mm.
* :func:`sphere_threshold`: re-threshold the probability map inside a ball of given radius in mm.
* :data:`DRAWN` ... :func:`merge_provenance`: where each slice's mask came from.

Pure numpy / scipy: nothing here needs the model or the app.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

# Where a slice's mask came from. A drawn slice is never overwritten by the other kinds.
DRAWN = "drawn"
INTERPOLATED = "interpolated"
PROPAGATED = "propagated"
PREDICTED = "predicted"
PROVENANCES = (DRAWN, INTERPOLATED, PROPAGATED, PREDICTED)

# Default limits of propagate (see its docstring). The band-entropy limit was chosen on the
# Colin27 structures of docs/study.md ("Correcting volumes: effort"): at 0.35 nats propagation
# stopped on the brain where a retrained model was right (k = 1: 3-D DSC 0.72); 0.40-0.65 let it
# run (0.97) and still stopped the zero-shot model, which is wrong there; 0.45 sits in that range.
DEFAULT_DILATION_MM = 3.0
DEFAULT_MAX_BAND_ENTROPY = 0.45
DEFAULT_MAX_AREA_CHANGE = 0.5
DEFAULT_BAND_WIDTH = 2

# Stop codes of propagate, with the reason text each one gives.
STOP_UNCERTAIN = "uncertain"
STOP_AREA = "area"
STOP_EMPTY = "empty"
STOP_END = "end"
STOP_DRAWN = "drawn"


# --------------------------------------------------------------------------------------------
# Checks shared by the tools


def _as_mask(mask, name: str = "mask") -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D [slice, row, column] array, got {array.ndim} dimension(s)")
    return array.astype(bool, copy=True)


def _as_map(values, shape: tuple, name: str):
    """A map as the tools read it, one slice at a time: a float array as given (no volume-sized
    copy), another array as float64, or an object with ``shape`` whose ``[s]`` gives a float slice
    (an 8-bit map read lazily, e.g. ``volume_planes.QuantisedMap``)."""
    if not isinstance(values, np.ndarray) and hasattr(values, "shape") and hasattr(values, "__getitem__"):
        array = values
    else:
        array = np.asarray(values)
        if not np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float64)
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}, the mask {shape}")
    return array


def _as_spacing(spacing, count: int = 3) -> tuple:
    if spacing is None:
        return (1.0,) * count
    values = tuple(float(value) for value in spacing)
    if len(values) != count:
        raise ValueError(f"spacing must give {count} values in mm, got {len(values)}")
    if not all(np.isfinite(value) and value > 0 for value in values):
        raise ValueError(f"spacing must be positive mm values, got {values}")
    return values


def _as_distance(mm, name: str = "mm") -> float:
    value = float(mm)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a distance of 0 mm or more, got {mm}")
    return value


def _as_index(index, shape: tuple) -> tuple:
    values = tuple(int(value) for value in index)
    if len(values) != len(shape):
        raise ValueError(f"a voxel index needs {len(shape)} values [slice, row, column], got {len(values)}")
    if not all(0 <= value < size for value, size in zip(values, shape)):
        raise ValueError(f"voxel {values} lies outside the volume of shape {shape}")
    return values


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 26:
        return np.ones((3, 3, 3), dtype=bool)
    if connectivity == 6:
        return ndimage.generate_binary_structure(3, 1)
    raise ValueError(f"connectivity must be 26 (faces, edges and corners) or 6 (faces), got {connectivity}")


# --------------------------------------------------------------------------------------------
# Shape-based interpolation


def signed_distance_2d(mask2d, spacing2d=None) -> np.ndarray:
    """Signed Euclidean distance map (mm) of one slice's mask: negative inside, positive outside.

    At a pixel outside the mask: the distance from its centre to the nearest mask pixel centre;
    inside: minus the distance to the nearest background pixel centre (scipy's exact
    ``distance_transform_edt`` with ``sampling=(row_mm, column_mm)``). So the map is at least one
    pixel spacing away from 0 on every pixel and the 0 level lies between the two sides.
    An empty slice gives +D and a full slice -D everywhere, with D the in-plane diagonal
    ``hypot(rows * row_mm, columns * column_mm)``.
    """
    mask2d = np.asarray(mask2d, dtype=bool)
    if mask2d.ndim != 2:
        raise ValueError(f"a slice mask must be 2-D, got {mask2d.ndim} dimension(s)")
    row_mm, column_mm = _as_spacing(spacing2d, 2)
    diagonal = float(np.hypot(mask2d.shape[0] * row_mm, mask2d.shape[1] * column_mm))
    if not mask2d.any():
        return np.full(mask2d.shape, diagonal)
    if mask2d.all():
        return np.full(mask2d.shape, -diagonal)
    sampling = (row_mm, column_mm)
    outside = ndimage.distance_transform_edt(~mask2d, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask2d, sampling=sampling)
    return outside - inside


def interpolate_slices(mask, drawn: Iterable[int], spacing=None) -> tuple:
    """Fill the slices between drawn slices by shape-based interpolation; returns (mask, filled).

    ``drawn`` lists the slice indices drawn by hand (any order, repeats ignored); at least two
    distinct slices are needed. For each pair of consecutive drawn slices a < b, every slice s with
    a < s < b is replaced by

        (1 - t) * sdf_a + t * sdf_b < 0,      t = (s - a) / (b - a)

    with sdf the signed distance map of :func:`signed_distance_2d` (mm, in-plane spacing
    ``spacing[1:]`` respected, negative inside). Pixels exactly on the 0 level stay background.
    When one of the two drawn slices is empty, its sdf is taken as the constant +d, with d the
    depth (largest inside distance, mm) of the other slice's mask: the structure shrinks towards
    its deepest point and is gone by the middle slice (a pixel at depth e survives while
    t < e / (e + d) on the side of the drawn shape). Two empty drawn slices give empty slices in
    between. Drawn slices and slices outside the drawn range are returned unchanged.

    ``filled`` is the sorted list of the slices written (including those that came out empty).
    """
    result = _as_mask(mask)
    depth = result.shape[0]
    try:
        indices = sorted({int(index) for index in drawn})
    except TypeError:
        raise ValueError("drawn must be a list of slice indices") from None
    if len(indices) < 2:
        raise ValueError(f"interpolation needs at least two drawn slices, got {len(indices)}")
    outside = [index for index in indices if not 0 <= index < depth]
    if outside:
        raise ValueError(f"drawn slice(s) {outside} lie outside the volume's {depth} slices")
    in_plane = _as_spacing(spacing)[1:]
    filled = []
    for a, b in zip(indices[:-1], indices[1:]):
        if b - a < 2:
            continue
        between = list(range(a + 1, b))
        filled.extend(between)
        mask_a, mask_b = result[a], result[b]
        if not mask_a.any() and not mask_b.any():
            result[a + 1:b] = False
            continue
        sdf_a = signed_distance_2d(mask_a, in_plane)
        sdf_b = signed_distance_2d(mask_b, in_plane)
        if not mask_a.any():
            sdf_a = np.full(sdf_a.shape, -float(sdf_b.min()))
        elif not mask_b.any():
            sdf_b = np.full(sdf_b.shape, -float(sdf_a.min()))
        for s in between:
            t = (s - a) / (b - a)
            result[s] = (1.0 - t) * sdf_a + t * sdf_b < 0
    return result, filled


# --------------------------------------------------------------------------------------------
# Propagation


@dataclass
class PropagationStop:
    """Where propagation in one direction stopped, and why.

    ``slice`` is the first slice not written (the one to review), None at the end of the volume.
    ``code`` is one of "uncertain", "area", "empty", "end", "drawn"; ``reason`` says it in words.
    ``band_entropy`` (nats) and ``area_change`` (fraction) are the measures of the refused
    candidate, where they were computed.
    """

    direction: int
    slice: Optional[int]
    code: str
    reason: str
    band_entropy: Optional[float] = None
    area_change: Optional[float] = None


@dataclass
class PropagationResult:
    """The propagated mask, the slices written (sorted) and one stop per direction taken."""

    mask: np.ndarray
    filled: list = field(default_factory=list)
    stops: list = field(default_factory=list)

    def stop(self, direction: int) -> Optional[PropagationStop]:
        """The stop of ``direction`` (+1 or -1), None when that direction was not taken."""
        for item in self.stops:
            if item.direction == direction:
                return item
        return None


def boundary_band_2d(mask2d, width: int) -> np.ndarray:
    """Pixels within ``width`` px of a slice mask's boundary, on either side.

    dilate(mask, disk) XOR erode(mask, disk), with the disk ``dr^2 + dc^2 <= width^2`` (pixels) and
    the outside of the image counted as background (a mask touching the edge has a band there).
    The same band as ``medclipseg.inference.uncertainty.boundary_band`` up to the kernel's
    rasterisation (that one uses OpenCV's ellipse), without needing the inference stack.
    """
    mask2d = np.asarray(mask2d, dtype=bool)
    width = int(width)
    if width < 1 or not mask2d.any():
        return np.zeros(mask2d.shape, dtype=bool)
    offsets = np.arange(-width, width + 1)
    disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= width ** 2
    dilated = ndimage.binary_dilation(mask2d, structure=disk)
    eroded = ndimage.binary_erosion(mask2d, structure=disk, border_value=0)
    return dilated & ~eroded


def _dilate_2d_mm(mask2d: np.ndarray, mm: float, in_plane: tuple) -> np.ndarray:
    if mm <= 0 or mask2d.all():
        return mask2d.copy()
    return ndimage.distance_transform_edt(~mask2d, sampling=in_plane) <= mm


_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _directions(direction) -> list:
    if isinstance(direction, str):
        if direction.lower() == "both":
            return [1, -1]
        raise ValueError(f'direction must be +1, -1 or "both", got {direction!r}')
    if direction in (1, -1):
        return [int(direction)]
    raise ValueError(f'direction must be +1, -1 or "both", got {direction!r}')


def propagate(
    mask,
    probability,
    entropy,
    start: int,
    *,
    direction: Union[int, str] = "both",
    threshold: float = 0.5,
    spacing=None,
    dilation_mm: float = DEFAULT_DILATION_MM,
    max_band_entropy: Optional[float] = DEFAULT_MAX_BAND_ENTROPY,
    max_area_change: Optional[float] = DEFAULT_MAX_AREA_CHANGE,
    band_width: int = DEFAULT_BAND_WIDTH,
    locked: Iterable[int] = (),
    max_slices: Optional[int] = None,
) -> PropagationResult:
    """Carry slice ``start`` of ``mask`` to its neighbours through the probability map.

    Going one slice at a time in ``direction`` (+1 towards higher indices, -1 lower, "both"),
    with N the last written slice (``start`` first) and s = N + direction, the candidate for s is

        C = (probability[s] > threshold) AND dilate(mask[N], dilation_mm)

    (dilation: pixels whose centre lies within ``dilation_mm`` of a mask pixel centre, in-plane
    spacing ``spacing[1:]`` respected), of which only the 2-D connected components
    (8-connectivity) that overlap mask[N] are kept. Before writing C into slice s, propagation
    stops, leaving s unchanged and reporting it, when (checked in this order):

    * s is in ``locked`` (slices drawn or saved by others): "drawn slice";
    * C is empty: "empty";
    * ``max_band_entropy`` is set and the band entropy, the mean of ``entropy[s]`` over the
      boundary band of C (:func:`boundary_band_2d` of ``band_width`` px), exceeds it:
      "uncertain: band entropy 0.51 > 0.45 nats";
    * ``max_area_change`` is set and |area(C) - area(mask[N])| / area(mask[N]) exceeds it:
      "area changed by 62 % > 50 %".

    It also stops after the last slice of the volume ("end of volume", slice None) or after
    ``max_slices`` written slices ("limit of N slices", slice = the next one). Written slices are
    replaced whole. ``max_band_entropy=None`` and ``max_area_change=None`` switch those stops off
    (``entropy`` may then be None). Raises ValueError when slice ``start`` is empty, out of range,
    or an input has the wrong shape.
    """
    result = _as_mask(mask)
    shape = result.shape
    depth = shape[0]
    probability = _as_map(probability, shape, "probability")
    if max_band_entropy is not None:
        if entropy is None:
            raise ValueError("an entropy map is needed for the uncertainty stop (or set max_band_entropy=None)")
        entropy = _as_map(entropy, shape, "entropy")
        max_band_entropy = float(max_band_entropy)
    if max_area_change is not None:
        max_area_change = float(max_area_change)
        if max_area_change < 0:
            raise ValueError(f"max_area_change must be a fraction of 0 or more, got {max_area_change}")
    start = int(start)
    if not 0 <= start < depth:
        raise ValueError(f"start slice {start} lies outside the volume's {depth} slices")
    if not result[start].any():
        raise ValueError(f"start slice {start} is empty: draw the structure there before propagating")
    dilation_mm = _as_distance(dilation_mm, "dilation_mm")
    if max_slices is not None and int(max_slices) < 1:
        raise ValueError(f"max_slices must be 1 or more, got {max_slices}")
    in_plane = _as_spacing(spacing)[1:]
    locked_set = {int(index) for index in locked}
    filled: list = []
    stops: list = []
    for step in _directions(direction):
        previous = result[start]
        written = 0
        s = start + step
        while True:
            if not 0 <= s < depth:
                stops.append(PropagationStop(step, None, STOP_END, "end of volume"))
                break
            if max_slices is not None and written >= int(max_slices):
                stops.append(PropagationStop(step, s, "limit", f"limit of {int(max_slices)} slices"))
                break
            if s in locked_set:
                stops.append(PropagationStop(step, s, STOP_DRAWN, "drawn slice"))
                break
            candidate = (probability[s] > threshold) & _dilate_2d_mm(previous, dilation_mm, in_plane)
            if candidate.any():
                labels, _ = ndimage.label(candidate, structure=_EIGHT_CONNECTED)
                touching = np.unique(labels[candidate & previous])
                candidate = np.isin(labels, touching[touching > 0])
            if not candidate.any():
                stops.append(PropagationStop(step, s, STOP_EMPTY, "empty"))
                break
            band_entropy = None
            if max_band_entropy is not None:
                band = boundary_band_2d(candidate, band_width)
                band_entropy = float(entropy[s][band].mean()) if band.any() else 0.0
                if band_entropy > max_band_entropy:
                    stops.append(PropagationStop(
                        step, s, STOP_UNCERTAIN,
                        f"uncertain: band entropy {band_entropy:.2f} > {max_band_entropy:.2f} nats",
                        band_entropy=band_entropy))
                    break
            previous_area = float(previous.sum())
            area_change = abs(float(candidate.sum()) - previous_area) / previous_area
            if max_area_change is not None and area_change > max_area_change:
                stops.append(PropagationStop(
                    step, s, STOP_AREA,
                    f"area changed by {100 * area_change:.0f} % > {100 * max_area_change:.0f} %",
                    band_entropy=band_entropy, area_change=area_change))
                break
            result[s] = candidate
            filled.append(s)
            written += 1
            previous = candidate
            s += step
    return PropagationResult(mask=result, filled=sorted(filled), stops=stops)


# --------------------------------------------------------------------------------------------
# 3-D components and holes


def _box(mask: np.ndarray, margin=(0, 0, 0)) -> Optional[tuple]:
    """The slices of the mask's bounding box widened by ``margin`` voxels per axis (clipped to the
    array); None for an empty mask. The 3-D tools work inside it: their results outside it are
    known without computing (see each tool), and a small structure in a 512 x 512 x 300 CT then
    costs what its box costs."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return None
        low = max(int(present[0]) - int(margin[axis]), 0)
        high = min(int(present[-1]) + 1 + int(margin[axis]), mask.shape[axis])
        box.append(slice(low, high))
    return tuple(box)


def _labels(mask: np.ndarray, connectivity: int) -> tuple:
    return ndimage.label(mask, structure=_structure(connectivity))


def remove_islands(mask, *, min_voxels: Optional[int] = None, connectivity: int = 26) -> np.ndarray:
    """Drop small connected components of a 3-D mask.

    ``min_voxels=None``: keep only the largest component (on a tie, the one whose first voxel in
    C order comes first). ``min_voxels=N``: keep every component of at least N voxels.
    Components use ``connectivity`` 26 (voxels sharing a face, edge or corner) or 6 (a face).
    """
    result = _as_mask(mask)
    box = _box(result)
    if box is None:
        return result
    labels, count = _labels(result[box], connectivity)  # every component lies in the box
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    if min_voxels is None:
        keep = np.zeros(count + 1, dtype=bool)
        keep[int(np.argmax(sizes))] = True
    else:
        if int(min_voxels) < 0:
            raise ValueError(f"min_voxels must be 0 or more, got {min_voxels}")
        keep = sizes >= int(min_voxels)
        keep[0] = False
    result[box] = keep[labels]
    return result


def component_at(mask, index, *, connectivity: int = 26) -> np.ndarray:
    """The connected component of the mask holding voxel ``index`` = (slice, row, column).

    Empty when that voxel is background. ``connectivity`` 26 or 6 as in :func:`remove_islands`.
    Raises ValueError for an index outside the volume.
    """
    array = _as_mask(mask)
    voxel = _as_index(index, array.shape)
    out = np.zeros(array.shape, dtype=bool)
    if not array[voxel]:
        return out
    box = _box(array)
    labels, _ = _labels(array[box], connectivity)
    local = tuple(v - b.start for v, b in zip(voxel, box))
    out[box] = labels == labels[local]
    return out


def delete_component(mask, index, *, connectivity: int = 26) -> np.ndarray:
    """The mask without the component holding ``index`` (unchanged when that voxel is background)."""
    array = _as_mask(mask)
    return array & ~component_at(array, index, connectivity=connectivity)


def keep_component(mask, index, *, connectivity: int = 26) -> np.ndarray:
    """Only the component holding ``index``. Raises ValueError when that voxel is background
    (keeping "nothing" would erase the whole mask by a misplaced click)."""
    array = _as_mask(mask)
    voxel = _as_index(index, array.shape)
    if not array[voxel]:
        raise ValueError(f"voxel {voxel} is not in the mask: there is no component to keep there")
    return component_at(array, voxel, connectivity=connectivity)


def fill_holes_3d(mask) -> np.ndarray:
    """The mask with its 3-D holes filled: every background component (6-connectivity, the dual
    of the mask's 26-connectivity) that does not touch the border of the volume becomes foreground.
    """
    result = _as_mask(mask)
    # Within the box widened by one voxel: background outside the mask's box is one component
    # reaching the volume's border, and the widening layer (where the box is not at the border)
    # is part of it.
    box = _box(result, (1, 1, 1))
    if box is None:
        return result
    local = result[box]
    background = ~local
    labels, count = _labels(background, 6)
    if count == 0:
        return result
    border = np.zeros(local.shape, dtype=bool)
    for axis in range(3):
        border[(slice(None),) * axis + (0,)] = True
        border[(slice(None),) * axis + (-1,)] = True
    open_labels = np.zeros(count + 1, dtype=bool)
    open_labels[np.unique(labels[border & background])] = True
    open_labels[0] = True
    result[box] = ~open_labels[labels] | local
    return result


# --------------------------------------------------------------------------------------------
# Margins and local re-thresholding


def grow_mm(mask, mm: float, spacing=None) -> np.ndarray:
    """Voxels whose centre lies within ``mm`` (<=, exact anisotropic Euclidean distance with
    ``spacing``) of the centre of some mask voxel. An empty mask stays empty; 0 mm changes nothing."""
    result = _as_mask(mask)
    mm = _as_distance(mm)
    sampling = _as_spacing(spacing)
    if mm == 0 or not result.any() or result.all():
        return result
    # Nothing farther than mm from the mask's box along an axis can be within mm of the mask.
    box = _box(result, tuple(int(np.floor(mm / step)) + 1 for step in sampling))
    result[box] = ndimage.distance_transform_edt(~result[box], sampling=sampling) <= mm
    return result


def shrink_mm(mask, mm: float, spacing=None) -> np.ndarray:
    """Mask voxels whose centre lies more than ``mm`` (exact anisotropic Euclidean distance with
    ``spacing``) from the centre of every background voxel of the array: the dual of
    :func:`grow_mm` (``shrink_mm(m) == ~grow_mm(~m)``). Outside the array is not background, so a
    mask filling the whole volume stays whole; 0 mm changes nothing."""
    result = _as_mask(mask)
    mm = _as_distance(mm)
    sampling = _as_spacing(spacing)
    if mm == 0 or not result.any() or result.all():
        return result
    # The nearest background voxel of a mask voxel lies in the box widened by one voxel (clamping
    # any farther one onto that layer brings it nearer), except beyond the volume's border, which
    # is not background either way.
    box = _box(result, (1, 1, 1))
    local = result[box]
    result[box] = local & (ndimage.distance_transform_edt(local, sampling=sampling) > mm)
    return result


def sphere_threshold(mask, probability, center, radius_mm: float, spacing=None,
                     threshold: float = 0.5) -> np.ndarray:
    """Re-threshold the probability map inside a ball: for voxels v with

        sum_axis ((v - center) * spacing)^2 <= radius_mm^2

    (an ellipsoid in voxel indices, a ball in mm; ``center`` = (slice, row, column), may be
    fractional or outside the volume) the mask becomes ``probability > threshold``; elsewhere it
    is unchanged."""
    result = _as_mask(mask)
    probability = _as_map(probability, result.shape, "probability")
    radius_mm = _as_distance(radius_mm, "radius_mm")
    sampling = np.array(_as_spacing(spacing))
    center = np.array([float(value) for value in center])
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise ValueError(f"center must be 3 finite values (slice, row, column), got {center.tolist()}")
    reach = radius_mm / sampling
    low = np.maximum(np.ceil(center - reach).astype(int), 0)
    high = np.minimum(np.floor(center + reach).astype(int) + 1, np.array(result.shape))
    if np.any(high <= low):
        return result
    grids = np.ogrid[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    squared = sum(((grid - c) * step) ** 2 for grid, c, step in zip(grids, center, sampling))
    inside = squared <= radius_mm ** 2
    box = tuple(slice(a, b) for a, b in zip(low, high))
    region = result[box]
    region[inside] = probability[box][inside] > threshold
    return result


# --------------------------------------------------------------------------------------------
# Provenance of slices


def empty_provenance(depth: int) -> list:
    """One entry per slice, all None (nothing known yet)."""
    return [None] * int(depth)


def merge_provenance(current: Sequence[Optional[str]], updates) -> list:
    """``current`` with ``updates`` applied: a dict {slice: provenance} or a list as long as
    ``current`` (None entries = no change). A DRAWN slice only takes another DRAWN; every other
    entry takes the update. Unknown provenance names or slices raise ValueError."""
    merged = list(current)
    if isinstance(updates, dict):
        items = list(updates.items())
    else:
        updates = list(updates)
        if len(updates) != len(merged):
            raise ValueError(f"provenance update has {len(updates)} entries, the volume {len(merged)} slices")
        items = [(index, value) for index, value in enumerate(updates) if value is not None]
    for index, value in items:
        index = int(index)
        if not 0 <= index < len(merged):
            raise ValueError(f"slice {index} lies outside the volume's {len(merged)} slices")
        if value not in PROVENANCES:
            raise ValueError(f"unknown provenance {value!r}: use one of {', '.join(PROVENANCES)}")
        if merged[index] == DRAWN and value != DRAWN:
            continue
        merged[index] = value
    return merged


def provenance_record(provenance: Sequence[Optional[str]]) -> dict:
    """A per-slice provenance list as stored and exported: ``{"drawn": [...], "interpolated": [...],
    "propagated": [...]}`` (sorted display indices); slices in none of the lists (None or PREDICTED)
    show the model's prediction."""
    record = {name: [] for name in (DRAWN, INTERPOLATED, PROPAGATED)}
    for index, value in enumerate(provenance):
        if value is None or value == PREDICTED:
            continue
        if value not in record:
            raise ValueError(f"unknown provenance {value!r} on slice {index}: use one of {', '.join(PROVENANCES)}")
        record[value].append(index)
    return record


def provenance_from_record(record: Optional[dict], depth: int) -> list:
    """The per-slice list of a stored record (None or empty: every slice PREDICTED). Unknown names,
    slices outside the volume and slices listed twice raise ValueError."""
    provenance = [PREDICTED] * int(depth)
    if not record:
        return provenance
    if not isinstance(record, dict):
        raise ValueError("a slice provenance record is a mapping of provenance names to slice lists")
    seen = set()
    for name, indices in record.items():
        if name not in (DRAWN, INTERPOLATED, PROPAGATED, PREDICTED):
            raise ValueError(f"unknown provenance {name!r}: use one of {', '.join(PROVENANCES)}")
        if not isinstance(indices, (list, tuple)):
            raise ValueError(f"the {name} slices must be a list of slice indices")
        for index in indices:
            index = int(index)
            if not 0 <= index < int(depth):
                raise ValueError(f"slice {index} lies outside the volume's {int(depth)} slices")
            if index in seen:
                raise ValueError(f"slice {index} is listed under two provenances")
            seen.add(index)
            provenance[index] = name
    return provenance
