"""One annotator's corrections of one volume mask: every tool as one undoable step, with provenance.

:class:`VolumeMaskEdits` holds the 3-D mask (display order of the stored plane, ``[slice, row,
column]``), where each stored slice's mask came from (drawn, interpolated, propagated, predicted:
:mod:`medclipseg.annotation.volume_tools`) and a bounded undo / redo history. Each method applies
one tool of ``volume_tools`` and returns an :class:`EditOutcome` (which slices changed, a message in
words, where propagation stopped); a refused step raises :class:`EditRefused` with the reason in
words and changes nothing.

Provenance rules (per stored slice):

* painting (in any plane) marks the stored slices whose pixels it changed as DRAWN, and the slice
  painted in the stored plane as DRAWN even when it came out unchanged (the annotator looked at it
  and decided);
* interpolation fills the slices between two DRAWN slices and marks them INTERPOLATED;
* propagation marks the slices it wrote PROPAGATED; DRAWN slices (and slices the caller locks,
  e.g. saved by someone else since) stop it;
* the threshold brush (a sphere) marks the slices it changed DRAWN: the annotator chose them;
* 3-D clean-up (islands, holes, grow, shrink) keeps provenance: it refines what is there.

The history stores, per step, the changed slices before and after as packed bits, so undo and redo
restore exact masks; it keeps the newest steps within ``history_bytes``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from medclipseg.annotation import volume_tools
from medclipseg.annotation.volume_tools import DRAWN, INTERPOLATED, PREDICTED, PROPAGATED

HISTORY_BYTES = 96 * 2 ** 20    # undo memory per annotator and volume (a whole 512 x 512 x 300 step: 20 MB)


class EditRefused(ValueError):
    """A tool could not run; the message says why in words. Nothing was changed."""


@dataclass
class EditOutcome:
    """What one step did: ``changed`` stored slices (sorted), a message for the annotator, and for
    propagation its stops (``volume_tools.PropagationStop``), ``review`` the slices to look at."""

    label: str
    changed: list
    message: str
    stops: list = field(default_factory=list)
    review: list = field(default_factory=list)
    can_undo: bool = False
    can_redo: bool = False


@dataclass
class _Step:
    label: str
    slices: np.ndarray          # stored slice indices, sorted
    before: np.ndarray          # packed bits of those slices
    after: np.ndarray
    provenance_before: list
    provenance_after: list

    @property
    def nbytes(self) -> int:
        return int(self.before.nbytes + self.after.nbytes + self.slices.nbytes)


def _slice_words(index: int) -> str:
    return f"slice {int(index) + 1}"


def _slices_words(indices: Sequence[int]) -> str:
    indices = sorted(int(i) for i in indices)
    if not indices:
        return "no slice"
    if len(indices) == 1:
        return _slice_words(indices[0])
    runs, start, previous = [], indices[0], indices[0]
    for index in indices[1:] + [None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        runs.append(f"{start + 1}" if start == previous else f"{start + 1}-{previous + 1}")
        if index is not None:
            start = previous = index
    return "slices " + ", ".join(runs)


class VolumeMaskEdits:
    """The mask, provenance and history of one annotator's work on one volume.

    ``mask`` is taken as the working array (changed in place by every step; pass a copy to keep
    the original). ``spacing`` is (slice_mm, row_mm, column_mm) of the stored display order."""

    def __init__(self, mask: np.ndarray, *, spacing, provenance: Optional[Sequence[Optional[str]]] = None,
                 history_bytes: int = HISTORY_BYTES):
        mask = np.asarray(mask)
        if mask.ndim != 3 or mask.dtype != bool:
            raise ValueError("the mask must be a boolean [slice, row, column] array")
        self.mask = mask
        self.spacing = tuple(float(v) for v in spacing)
        depth = mask.shape[0]
        self.provenance = [PREDICTED] * depth if provenance is None else \
            [PREDICTED if value is None else str(value) for value in provenance]
        if len(self.provenance) != depth:
            raise ValueError(f"the provenance lists {len(self.provenance)} slices; the volume has {depth}")
        self.history_bytes = int(history_bytes)
        self._undo: list = []
        self._redo: list = []

    # ------------------------------------------------------------------ history
    @property
    def depth(self) -> int:
        return int(self.mask.shape[0])

    @property
    def history_nbytes(self) -> int:
        """Bytes the undo and redo steps hold now (at most about ``history_bytes`` for undo)."""
        return int(sum(step.nbytes for step in self._undo) + sum(step.nbytes for step in self._redo))

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def drawn(self) -> list:
        return [i for i, value in enumerate(self.provenance) if value == DRAWN]

    def counts(self) -> dict:
        """Slices per provenance, e.g. {"drawn": 3, "interpolated": 10, "propagated": 0, "predicted": 287}."""
        return {name: sum(1 for value in self.provenance if value == name) for name in volume_tools.PROVENANCES}

    def record(self) -> dict:
        """The provenance as stored and exported (``volume_tools.provenance_record``)."""
        return volume_tools.provenance_record(self.provenance)

    def _commit(self, label: str, new_mask: np.ndarray, new_provenance: list, message: str, **extra) -> EditOutcome:
        """Make ``new_mask`` / ``new_provenance`` current as one undoable step."""
        differs = np.any(new_mask != self.mask, axis=(1, 2))
        differs |= np.array([a != b for a, b in zip(new_provenance, self.provenance)], dtype=bool)
        slices = np.flatnonzero(differs)
        if slices.size:
            step = _Step(label=label, slices=slices, before=np.packbits(self.mask[slices]),
                         after=np.packbits(new_mask[slices]),
                         provenance_before=[self.provenance[i] for i in slices],
                         provenance_after=[new_provenance[i] for i in slices])
            self.mask[slices] = new_mask[slices]
            self.provenance = list(new_provenance)
            self._undo.append(step)
            self._redo.clear()
            self._trim()
        return EditOutcome(label=label, changed=[int(i) for i in slices], message=message,
                           can_undo=self.can_undo, can_redo=self.can_redo, **extra)

    def _trim(self) -> None:
        total = sum(step.nbytes for step in self._undo)
        while len(self._undo) > 1 and total > self.history_bytes:
            total -= self._undo.pop(0).nbytes

    def _restore(self, step: _Step, packed: np.ndarray, provenance: list) -> None:
        shape = (step.slices.size,) + self.mask.shape[1:]
        self.mask[step.slices] = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).astype(bool)
        for index, value in zip(step.slices, provenance):
            self.provenance[int(index)] = value

    def undo(self) -> EditOutcome:
        if not self._undo:
            raise EditRefused("Nothing to undo.")
        step = self._undo.pop()
        self._restore(step, step.before, step.provenance_before)
        self._redo.append(step)
        return EditOutcome(label="undo", changed=[int(i) for i in step.slices],
                           message=f"Undid {step.label} ({_slices_words(step.slices)}).",
                           can_undo=self.can_undo, can_redo=self.can_redo)

    def redo(self) -> EditOutcome:
        if not self._redo:
            raise EditRefused("Nothing to redo.")
        step = self._redo.pop()
        self._restore(step, step.after, step.provenance_after)
        self._undo.append(step)
        return EditOutcome(label="redo", changed=[int(i) for i in step.slices],
                           message=f"Redid {step.label} ({_slices_words(step.slices)}).",
                           can_undo=self.can_undo, can_redo=self.can_redo)

    # ------------------------------------------------------------------ painting
    def paint(self, slice_mask: np.ndarray, *, index: int, plane_geometry=None, plane: Optional[str] = None) -> EditOutcome:
        """The annotator's mask of one slice: of the stored plane (``plane`` None), or of ``plane``'s view
        through ``plane_geometry`` (a :class:`~medclipseg.annotation.volume_planes.PlaneGeometry`)."""
        new_mask = self.mask.copy()
        in_stored_plane = plane is None or plane_geometry is None or plane == plane_geometry.stored_plane
        target = new_mask if plane is None or plane_geometry is None else plane_geometry.view(new_mask, plane)
        index = int(index)
        if not 0 <= index < target.shape[0]:
            raise EditRefused(f"The {plane or 'volume'} view has slices 1 to {target.shape[0]}; "
                              f"{_slice_words(index)} does not exist.")
        slice_mask = np.asarray(slice_mask, dtype=bool)
        if slice_mask.shape != target.shape[1:]:
            raise EditRefused(f"A {plane or 'stored'} slice is {target.shape[1]} x {target.shape[2]} pixels; "
                              f"the mask sent is {' x '.join(map(str, slice_mask.shape))}.")
        target[index] = slice_mask
        provenance = list(self.provenance)
        for stored in np.flatnonzero(np.any(new_mask != self.mask, axis=(1, 2))):
            provenance[int(stored)] = DRAWN
        if in_stored_plane:  # looked at and decided, even when unchanged
            stored_index = index if plane is None or plane_geometry is None else \
                plane_geometry.stored_slices(plane, index)[0]
            provenance[stored_index] = DRAWN
        where = "the slice" if in_stored_plane else f"the {plane} view"
        return self._commit("painting", new_mask, provenance, f"Painted {where}.")

    def set_slices(self, indices: Sequence[int], masks: np.ndarray, *, label: str = "painting",
                   message: Optional[str] = None) -> EditOutcome:
        """Stored slices ``indices`` replaced by the annotator's ``masks`` ([n, row, column]) as one
        step, each marked DRAWN: ``paint`` for slices already cut out (the editor's slice edits, the
        slices a plane edit changed), without copying the volume."""
        indices = np.asarray([int(i) for i in indices], dtype=np.int64)
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (indices.size,) + self.mask.shape[1:]:
            raise EditRefused(f"{indices.size} slice masks of {self.mask.shape[1]} x {self.mask.shape[2]} pixels "
                              f"were expected; got {' x '.join(map(str, masks.shape))}.")
        if indices.size and (indices.min() < 0 or indices.max() >= self.depth or np.unique(indices).size != indices.size):
            raise EditRefused(f"The slices to set must be distinct slices of 1 to {self.depth}.")
        order = np.argsort(indices)
        indices, masks = indices[order], masks[order]
        differs = np.array([not np.array_equal(self.mask[i], m) or self.provenance[i] != DRAWN
                            for i, m in zip(indices, masks)], dtype=bool)
        slices, masks = indices[differs], masks[differs]
        if slices.size:
            step = _Step(label=label, slices=slices, before=np.packbits(self.mask[slices]), after=np.packbits(masks),
                         provenance_before=[self.provenance[i] for i in slices],
                         provenance_after=[DRAWN] * int(slices.size))
            self.mask[slices] = masks
            for index in slices:
                self.provenance[int(index)] = DRAWN
            self._undo.append(step)
            self._redo.clear()
            self._trim()
        return EditOutcome(label=label, changed=[int(i) for i in slices],
                           message=message or f"Painted {_slices_words(slices)}.",
                           can_undo=self.can_undo, can_redo=self.can_redo)

    # ------------------------------------------------------------------ interpolation
    def interpolate(self, around: Optional[int] = None) -> EditOutcome:
        """Fill the slices between drawn slices (all gaps; ``around``: only the gap holding that slice)."""
        drawn = self.drawn()
        if len(drawn) < 2:
            have = "no slice is drawn" if not drawn else f"only {_slice_words(drawn[0])} is drawn"
            raise EditRefused(f"Interpolation needs two drawn slices with slices between them; {have}. "
                              "Draw the structure on another slice first.")
        anchors = drawn
        if around is not None:
            around = int(around)
            below = [d for d in drawn if d <= around]
            above = [d for d in drawn if d >= around]
            if not below or not above or below[-1] == above[0]:
                raise EditRefused(f"{_slice_words(around).capitalize()} does not lie between two drawn slices "
                                  f"(drawn: {_slices_words(drawn)}).")
            anchors = [below[-1], above[0]]
        if all(b - a < 2 for a, b in zip(anchors[:-1], anchors[1:])):
            raise EditRefused(f"The drawn slices ({_slices_words(drawn)}) have no slices between them to fill.")
        try:
            result, filled = volume_tools.interpolate_slices(self.mask, anchors, self.spacing)
        except ValueError as exc:
            raise EditRefused(f"Interpolation could not run: {exc}.") from None
        provenance = list(self.provenance)
        for index in filled:
            provenance[index] = INTERPOLATED
        return self._commit("interpolation", result, provenance,
                            f"Interpolated {_slices_words(filled)} between {_slices_words(anchors)}.")

    # ------------------------------------------------------------------ propagation
    def propagate(self, start: int, probability, entropy, *, direction="both", threshold: float = 0.5,
                  dilation_mm: float = volume_tools.DEFAULT_DILATION_MM,
                  max_band_entropy: Optional[float] = volume_tools.DEFAULT_MAX_BAND_ENTROPY,
                  max_area_change: Optional[float] = volume_tools.DEFAULT_MAX_AREA_CHANGE,
                  locked: Iterable[int] = (), max_slices: Optional[int] = None) -> EditOutcome:
        """Carry slice ``start`` up and/or down through the model's maps (``volume_tools.propagate``),
        stopping at drawn or ``locked`` slices, where the model is unsure or the area jumps."""
        start = int(start)
        if not 0 <= start < self.depth:
            raise EditRefused(f"The volume has slices 1 to {self.depth}; {_slice_words(start)} does not exist.")
        if not self.mask[start].any():
            raise EditRefused(f"{_slice_words(start).capitalize()} is empty: draw the structure there before "
                              "propagating from it.")
        locked = sorted(({int(i) for i in locked} | set(self.drawn())) - {start})
        try:
            result = volume_tools.propagate(
                self.mask, probability, entropy, start, direction=direction, threshold=threshold,
                spacing=self.spacing, dilation_mm=dilation_mm, max_band_entropy=max_band_entropy,
                max_area_change=max_area_change, locked=locked, max_slices=max_slices)
        except ValueError as exc:
            raise EditRefused(f"Propagation could not run: {exc}.") from None
        provenance = list(self.provenance)
        for index in result.filled:
            provenance[index] = PROPAGATED
        parts = []
        for stop in result.stops:
            way = "up" if stop.direction > 0 else "down"
            if stop.slice is None:
                parts.append(f"{way}: reached the end of the volume")
            else:
                parts.append(f"{way}: stopped at {_slice_words(stop.slice)} ({stop.reason})")
        review = sorted({stop.slice for stop in result.stops
                         if stop.slice is not None and stop.code not in (volume_tools.STOP_DRAWN,)})
        message = (f"Propagated {_slices_words(result.filled)} from {_slice_words(start)}; " + "; ".join(parts) + "."
                   + (f" Review {_slices_words(review)}." if review else ""))
        return self._commit("propagation", result.mask, provenance, message, stops=list(result.stops),
                            review=review)

    # ------------------------------------------------------------------ 3-D tools
    def _tool(self, label: str, result: np.ndarray, message: str, *, mark_drawn: bool = False) -> EditOutcome:
        provenance = list(self.provenance)
        if mark_drawn:
            for index in np.flatnonzero(np.any(result != self.mask, axis=(1, 2))):
                provenance[int(index)] = DRAWN
        return self._commit(label, result, provenance, message)

    def _count_change(self, result: np.ndarray) -> str:
        added = int(np.count_nonzero(result & ~self.mask))
        removed = int(np.count_nonzero(self.mask & ~result))
        return f"{added} voxels added, {removed} removed"

    def remove_islands(self, min_voxels: Optional[int] = None) -> EditOutcome:
        """Keep the largest 3-D component (``min_voxels`` None), or drop components under ``min_voxels``."""
        if not self.mask.any():
            raise EditRefused("The mask is empty: there are no islands to remove.")
        try:
            result = volume_tools.remove_islands(self.mask, min_voxels=min_voxels)
        except ValueError as exc:
            raise EditRefused(f"Islands could not be removed: {exc}.") from None
        what = "kept the largest 3-D component" if min_voxels is None else \
            f"removed 3-D components under {int(min_voxels)} voxels"
        return self._tool("island removal", result, f"Islands: {what} ({self._count_change(result)}).")

    def _component(self, point, keep: bool) -> EditOutcome:
        try:
            point = tuple(int(v) for v in point)
            if not self.mask[point]:
                raise EditRefused("No mask under that point: click inside the component.")
            result = (volume_tools.keep_component if keep else volume_tools.delete_component)(self.mask, point)
        except (ValueError, IndexError, TypeError) as exc:
            raise EditRefused(f"No component there: {exc}.") from None
        verb = "Kept the component under the point" if keep else "Deleted the component under the point"
        return self._tool("keeping a component" if keep else "deleting a component", result,
                          f"{verb} ({self._count_change(result)}).")

    def delete_component(self, point) -> EditOutcome:
        return self._component(point, keep=False)

    def keep_component(self, point) -> EditOutcome:
        return self._component(point, keep=True)

    def fill_holes(self) -> EditOutcome:
        result = volume_tools.fill_holes_3d(self.mask)
        return self._tool("hole filling", result, f"Filled 3-D holes ({self._count_change(result)}).")

    def grow(self, mm: float) -> EditOutcome:
        mm = _millimetres(mm, "grow")
        result = volume_tools.grow_mm(self.mask, mm, self.spacing)
        return self._tool("growing", result, f"Grew the mask by {mm:g} mm ({self._count_change(result)}).")

    def shrink(self, mm: float) -> EditOutcome:
        mm = _millimetres(mm, "shrink")
        result = volume_tools.shrink_mm(self.mask, mm, self.spacing)
        return self._tool("shrinking", result, f"Shrank the mask by {mm:g} mm ({self._count_change(result)}).")

    def sphere(self, center, radius_mm: float, probability, *, threshold: float = 0.5) -> EditOutcome:
        """The threshold brush in 3-D: inside the ball, the mask becomes ``probability > threshold``."""
        radius_mm = _millimetres(radius_mm, "brush radius")
        try:
            result = volume_tools.sphere_threshold(self.mask, probability, center, radius_mm, self.spacing,
                                                   threshold=threshold)
        except ValueError as exc:
            raise EditRefused(f"The 3-D threshold brush could not run: {exc}.") from None
        return self._tool("3-D threshold brush", result,
                          f"Threshold brush of {radius_mm:g} mm at {threshold:.2f} ({self._count_change(result)}).",
                          mark_drawn=True)


MAX_MILLIMETRES = 100.0     # grow / shrink / brush radius beyond this is a typo, not a correction


def _millimetres(value, what: str) -> float:
    try:
        mm = float(value)
    except (TypeError, ValueError):
        raise EditRefused(f"The {what} distance must be a number of millimetres, not {value!r}.") from None
    if not np.isfinite(mm) or mm <= 0 or mm > MAX_MILLIMETRES:
        raise EditRefused(f"The {what} distance must lie between 0 and {MAX_MILLIMETRES:g} mm; got {value}.")
    return mm


# ---------------------------------------------------------------------- requests from the editor and the API
TOOLS = ("undo", "redo", "interpolate", "propagate", "remove_islands", "delete_component", "keep_component",
         "fill_holes", "grow", "shrink", "sphere")
DIRECTIONS = {"up": 1, "down": -1, "both": "both", 1: 1, -1: -1}


def _point(value, shape: tuple, what: str = "point") -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise EditRefused(f"The {what} must be three voxel numbers (slice, row, column).")
    try:
        point = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise EditRefused(f"The {what} must be three whole voxel numbers (slice, row, column).") from None
    if not all(0 <= v < n for v, n in zip(point, shape)):
        raise EditRefused(f"The {what} {point} lies outside the volume ({' x '.join(map(str, shape))} voxels).")
    return point


def _limit(value, what: str, low: float, high: float) -> Optional[float]:
    """An optional stop limit: None or "" switches the stop off."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EditRefused(f"The {what} must be a number, not {value!r}.") from None
    if not np.isfinite(number) or not low <= number <= high:
        raise EditRefused(f"The {what} must lie between {low:g} and {high:g}; got {value}.")
    return number


def apply_tool(edits: VolumeMaskEdits, tool: str, params: Optional[dict] = None, *, probability=None, entropy=None,
               threshold: float = 0.5, locked: Iterable[int] = ()) -> EditOutcome:
    """Run the editor's (or an API client's) tool request on ``edits``: ``tool`` one of :data:`TOOLS`,
    ``params`` its values as JSON gives them (checked here, refused in words):

    * propagate: ``start`` (stored slice), ``direction`` "up" / "down" / "both", ``max_band_entropy``
      (nats) and ``max_area_change`` (fraction), each None to switch that stop off, ``dilation_mm``;
    * interpolate: ``around`` (optional: only the gap holding that slice);
    * remove_islands: ``min_voxels`` (optional; none: keep the largest component);
    * delete_component / keep_component: ``point`` (stored [slice, row, column]);
    * grow / shrink: ``mm``; sphere: ``center``, ``radius_mm``, ``threshold`` (default: ``threshold``).

    ``probability`` and ``entropy`` are the prediction's maps in stored order (arrays or
    ``volume_planes.QuantisedMap``); ``locked`` slices are never written by propagation."""
    params = dict(params or {})
    if tool not in TOOLS:
        raise EditRefused(f"Unknown tool {tool!r}; the tools are {', '.join(TOOLS)}.")
    if tool == "undo":
        return edits.undo()
    if tool == "redo":
        return edits.redo()
    if tool == "interpolate":
        around = params.get("around")
        return edits.interpolate(None if around is None else _point([around, 0, 0], (edits.depth, 1, 1), "slice")[0])
    if tool in ("propagate", "sphere") and probability is None:
        raise EditRefused("This case has no prediction to follow: segment it first.")
    if tool == "propagate":
        start = _point([params.get("start"), 0, 0], (edits.depth, 1, 1), "start slice")[0]
        direction = params.get("direction", "both")
        if direction not in DIRECTIONS:
            raise EditRefused(f"The direction must be up, down or both, not {direction!r}.")
        band = _limit(params.get("max_band_entropy", DEFAULT_STOP["max_band_entropy"]),
                      "uncertainty limit (band entropy, nats)", 0.0, 1.0)
        area = _limit(params.get("max_area_change", DEFAULT_STOP["max_area_change"]),
                      "area change limit (a fraction)", 0.0, 100.0)
        dilation = _limit(params.get("dilation_mm", volume_tools.DEFAULT_DILATION_MM), "search margin (mm)",
                          0.0, MAX_MILLIMETRES)
        if band is not None and entropy is None:
            raise EditRefused("This case has no uncertainty map for the uncertainty stop: switch it off or "
                              "segment the case again.")
        return edits.propagate(start, probability, entropy, direction=DIRECTIONS[direction], threshold=threshold,
                               dilation_mm=volume_tools.DEFAULT_DILATION_MM if dilation is None else dilation,
                               max_band_entropy=band, max_area_change=area, locked=locked)
    if tool == "remove_islands":
        minimum = params.get("min_voxels")
        if minimum not in (None, ""):
            minimum = _limit(minimum, "smallest island kept (voxels)", 1, 1e9)
            minimum = int(minimum)
        else:
            minimum = None
        return edits.remove_islands(minimum)
    if tool in ("delete_component", "keep_component"):
        point = _point(params.get("point"), edits.mask.shape)
        return edits.delete_component(point) if tool == "delete_component" else edits.keep_component(point)
    if tool == "fill_holes":
        return edits.fill_holes()
    if tool == "grow":
        return edits.grow(params.get("mm"))
    if tool == "shrink":
        return edits.shrink(params.get("mm"))
    center = _point(params.get("center"), edits.mask.shape, "brush centre")
    brush_threshold = _limit(params.get("threshold", threshold), "brush threshold", 0.0, 1.0)
    return edits.sphere(center, params.get("radius_mm"), probability,
                        threshold=threshold if brush_threshold is None else brush_threshold)


DEFAULT_STOP = {"max_band_entropy": volume_tools.DEFAULT_MAX_BAND_ENTROPY,
                "max_area_change": volume_tools.DEFAULT_MAX_AREA_CHANGE}


def next_uncertain_slice(strip: Sequence[float], provenance: Sequence[Optional[str]], current: int, *,
                         limit: float, direction: int = 1) -> Optional[int]:
    """The next stored slice after ``current`` (in ``direction``, wrapping round once) whose
    uncertainty ``strip[s]`` (band entropy, nats) is above ``limit`` and that nobody drew; None
    when there is none."""
    depth = len(provenance)
    if len(strip) != depth or depth == 0:
        return None
    step = 1 if direction >= 0 else -1
    for offset in range(1, depth + 1):
        index = (int(current) + step * offset) % depth
        if provenance[index] != DRAWN and float(strip[index]) > float(limit):
            return index
    return None


def progress(provenance: Sequence[Optional[str]], reviewed: Iterable[int]) -> dict:
    """What the volume's progress bar shows: slices drawn, interpolated, propagated, predicted, and
    how many of all slices the annotator has reviewed (looked at or drew)."""
    counts = {name: 0 for name in volume_tools.PROVENANCES}
    for value in provenance:
        counts[value if value in counts else PREDICTED] += 1
    reviewed = {int(i) for i in reviewed} | {i for i, value in enumerate(provenance) if value == DRAWN}
    return dict(counts, reviewed=len(reviewed), depth=len(provenance))
