"""What the mask editor and the server say to each other (plain dicts, JSON on the wire).

Server to editor, when a case opens (``case_payload``): the image as PNG, the probability map as
float32 and the entropy map as float16 (little-endian, base64: the editor thresholds exactly as
numpy does on the stored maps), the mask to start from as row-major runs, the thresholds, the
saved version the edit starts from and the colour map of the heat map. After a save the server
sends only ``saved_value`` (the new version number), so the editor keeps everything it holds.

Editor to server, after every edit (``read_edit``): the mask as runs, the thresholds, the
version it started from, and a revision counter.

Volumes (CT/MR scans) use the same values, one display slice at a time: the case value is the
start slice's (its image, maps and start mask, exactly as for an image) plus a ``volume`` block
(``volume_block``: depth, the slice shown, plane, spacing, modality, the per-slice uncertainty strip,
the slices reviewed and edited, the window presets and the window in use, and the payloads of the
neighbouring slices). The editor's value then also names the slice it shows, the slices reviewed and
the edits of slices it has left that the server has not confirmed yet (``read_volume_edit``). Other
slices travel through ``slice_payload`` answers to the editor's slice requests (``read_slice_request``):
one slice per payload, never a whole volume of maps.

Three planes: the ``volume`` block also describes the axial, coronal and sagittal views of the
volume (``plane_block``: each plane's shape, spacing and axes, so that the editor moves the crosshair
between planes without asking). A slice of a plane other than the acquisition plane travels through
``plane_slice_payload`` answers to plane requests (``read_plane_request``), and the editor's value
carries the active plane and its unconfirmed edits of such slices (``plane_edits``), which the
server writes into the same 3-D mask. The acquisition plane keeps the slice protocol above.
"""
from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from medclipseg.inference.uncertainty import MAX_BINARY_ENTROPY
from medclipseg.io.masks import MaskRunsError, mask_from_runs, mask_to_runs, runs_text
from medclipseg.io.png import encode_png

HEATMAP_COLOURMAP = "magma"


class EditorError(ValueError):
    """The editor's value is missing or does not belong to the open case."""


@lru_cache(maxsize=4)
def colormap_table(name: str = HEATMAP_COLOURMAP) -> tuple:
    """256 RGB entries (flat, 0..255) of a matplotlib colour map, for the editor's heat map."""
    from matplotlib import colormaps

    colours = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return tuple(int(v) for v in np.round(colours * 255).astype(np.uint8).ravel())


def _base64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype)).tobytes()).decode("ascii")


def case_payload(*, case_id: int, prediction_id: int, image_rgb: np.ndarray, probability: np.ndarray,
                 entropy: np.ndarray, start_mask: np.ndarray, start: str, start_note: str,
                 base_version: Optional[int], threshold: float, uncertainty_threshold: float, opacity: float,
                 title: str, volume: Optional[dict] = None) -> dict:
    """The value that opens a case in the editor. ``start`` is 'draft', 'version' or 'prediction'.
    A volume case passes its ``volume_block``; the maps and mask are then those of the slice it names."""
    height, width = probability.shape
    if image_rgb.shape[:2] != (height, width) or entropy.shape != (height, width) or \
            start_mask.shape != (height, width):
        raise EditorError("The image, maps and start mask of a case must have the same size.")
    if start not in ("draft", "version", "prediction"):
        raise EditorError(f"Unknown start {start!r}.")
    png = encode_png(np.ascontiguousarray(image_rgb[..., ::-1]), compression=1)
    value = {
        "kind": "case", "session": uuid.uuid4().hex, "case_id": int(case_id), "prediction_id": int(prediction_id),
        "width": int(width), "height": int(height), "title": title,
        "image": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        "probability": _base64(probability, "<f4"), "entropy": _base64(entropy, "<f2"),
        "start_runs": runs_text(mask_to_runs(start_mask)), "start": start, "start_note": start_note,
        "base_version": None if base_version is None else int(base_version),
        "threshold": float(threshold), "uncertainty_threshold": float(uncertainty_threshold),
        "opacity": float(opacity), "max_entropy": float(MAX_BINARY_ENTROPY), "colormap": list(colormap_table()),
    }
    if volume is not None:
        value["volume"] = volume
    return value


def saved_value(case_id: int, version: Optional[int], revision: int, message: str) -> dict:
    """Tells the editor a save went through: it is now based on ``version``, clean up to ``revision``."""
    return {"kind": "saved", "case_id": int(case_id), "base_version": None if version is None else int(version),
            "revision": int(revision), "message": message}


def closed_value(message: str) -> dict:
    return {"kind": "closed", "message": message}


@dataclass(frozen=True)
class EditorEdit:
    """The editor's state as the server reads it."""

    case_id: int
    prediction_id: int
    base_version: Optional[int]
    threshold: float
    uncertainty_threshold: float
    mask: np.ndarray
    revision: int
    dirty: bool          # edits since the case opened or was last saved
    edited: bool         # the mask differs from the model's at the threshold


def _number(value, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EditorError(f"The editor sent no usable {name}.") from None
    if not low <= number <= high:
        raise EditorError(f"The editor's {name} {number:g} is outside {low:g}..{high:g}.")
    return number


def _whole(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EditorError(f"The editor sent no usable {name}.") from None


def read_edit(value, *, case_id: int, shape: tuple) -> EditorEdit:
    """The editor's value for the open case ``case_id`` (of ``shape``), checked."""
    if not isinstance(value, dict) or value.get("kind") != "edit":
        raise EditorError("The editor holds no mask yet: wait until the case is shown, then try again.")
    if value.get("case_id") != case_id:
        raise EditorError(f"The editor shows case #{value.get('case_id')}, not case #{case_id}; "
                          "reopen the case you mean to save.")
    if (value.get("height"), value.get("width")) != tuple(int(n) for n in shape):
        raise EditorError("The editor's mask does not have the image's size.")
    try:
        mask = mask_from_runs(value.get("runs") or [], shape)
    except MaskRunsError as exc:
        raise EditorError(str(exc)) from None
    base = value.get("base_version")
    return EditorEdit(
        case_id=int(case_id), prediction_id=_whole(value.get("prediction_id"), "prediction id"),
        base_version=None if base is None else _whole(base, "base version"),
        threshold=_number(value.get("threshold"), "mask threshold", 0.0, 1.0),
        uncertainty_threshold=_number(value.get("uncertainty_threshold"), "uncertainty threshold", 0.0,
                                      MAX_BINARY_ENTROPY + 1e-6),
        mask=mask, revision=_whole(value.get("revision") or 0, "revision"), dirty=bool(value.get("dirty")),
        edited=bool(value.get("edited")))


# ------------------------------------------------------------------------------ volumes, one slice at a time

MAX_EXACT_FRACTION = 0.05   # more pixels off the 8-bit steps than this: the map goes as float32/float16


def _eight_bit(name: str, values: np.ndarray) -> tuple:
    """(uint8 steps, pixels whose value is not its step's) of a map, as the store quantises it."""
    from medclipseg.annotation.volume_files import dequantise, quantise

    values = np.asarray(values, dtype=np.float32)
    steps = quantise(name, values)
    off = np.flatnonzero(dequantise(name, steps).view(np.uint32) != values.view(np.uint32))
    return steps, off


def volume_maps_fields(probability: np.ndarray, entropy: np.ndarray) -> dict:
    """A volume slice's maps for the editor. The store keeps them 8-bit, so they go as 8-bit steps
    (a quarter of float32: what makes a plane slice quick to fetch); the few probabilities moved to
    the threshold's edge (``SliceMaps.editor_probability``) go as their exact float32 values with
    their pixel numbers, so the editor's threshold still draws the model's own mask. A map with many
    values off the steps goes whole (float32 probability, float16 entropy)."""
    out = {}
    steps, off = _eight_bit("probability", probability)
    if off.size <= MAX_EXACT_FRACTION * steps.size:
        out.update(probability_u8=_base64(steps, "u1"), probability_fix_at=_base64(off, "<i4"),
                   probability_fix=_base64(np.asarray(probability, np.float32).ravel()[off], "<f4"))
    else:
        out["probability"] = _base64(probability, "<f4")
    steps, off = _eight_bit("entropy", entropy)
    if off.size == 0:
        out["entropy_u8"] = _base64(steps, "u1")
    else:
        out["entropy"] = _base64(entropy, "<f2")
    return out


def decoded_maps(value: dict) -> tuple:
    """(probability float32, entropy float32) of a slice payload, read as the editor reads them."""
    from medclipseg.annotation.volume_files import dequantise

    shape = (int(value["height"]), int(value["width"]))

    def raw(key, dtype):
        return np.frombuffer(base64.b64decode(value[key]), dtype)

    if "probability_u8" in value:
        probability = dequantise("probability", raw("probability_u8", "u1")).copy()
        probability[raw("probability_fix_at", "<i4")] = raw("probability_fix", "<f4")
    else:
        probability = raw("probability", "<f4").copy()
    if "entropy_u8" in value:
        entropy = dequantise("entropy", raw("entropy_u8", "u1"))
    else:
        entropy = raw("entropy", "<f2").astype(np.float32)
    return probability.reshape(shape), entropy.reshape(shape)

MAX_SLICES_PER_ANSWER = 5     # the slice asked for and its neighbours: a request never pulls a volume


def slice_payload(*, index: int, image_rgb: np.ndarray, probability: np.ndarray, entropy: np.ndarray,
                  start_mask: np.ndarray, follows_model: bool, window: tuple) -> dict:
    """One display slice of a volume for the editor: the same encodings as ``case_payload``.

    ``follows_model``: the slice has not been reviewed and its mask is the model's, so the editor
    draws it at whatever mask threshold it uses when it shows the slice (``start_runs`` is the
    model's mask at the threshold of the request)."""
    height, width = probability.shape
    if image_rgb.shape[:2] != (height, width) or entropy.shape != (height, width) or \
            start_mask.shape != (height, width):
        raise EditorError("The image, maps and start mask of a slice must have the same size.")
    png = encode_png(np.ascontiguousarray(image_rgb[..., ::-1]), compression=1)
    return {"index": int(index), "width": int(width), "height": int(height),
            "image": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
            **volume_maps_fields(probability, entropy),
            "start_runs": runs_text(mask_to_runs(start_mask)), "follows_model": bool(follows_model),
            "window": [float(window[0]), float(window[1])]}


def volume_block(*, depth: int, index: int, plane: str, spacing, modality: str, strip, reviewed, edited,
                 windows: list, window: tuple, neighbours: list, planes: Optional[dict] = None) -> dict:
    """What the editor needs besides the slice on screen: ``strip`` is the band entropy of every slice
    (nats, display order), sent as given and scaled to 0..1 by its largest value for the heat bar;
    ``windows`` are (name, center, width) presets in modality units; ``neighbours`` are
    ``slice_payload`` values of the slices next to ``index``; ``planes`` is a ``plane_block``."""
    scaled, values = scaled_strip(strip)
    if values and len(values) != int(depth):
        raise EditorError(f"The uncertainty strip has {len(values)} values for a volume of {depth} slices.")
    return {"depth": int(depth), "index": int(index), "plane": str(plane),
            "spacing": [float(v) for v in spacing], "modality": str(modality or ""),
            "strip": scaled, "strip_nats": values,
            "reviewed": sorted({int(i) for i in reviewed}), "edited": sorted({int(i) for i in edited}),
            "windows": [{"name": str(name), "center": float(center), "width": float(width)}
                        for name, center, width in windows],
            "window": [float(window[0]), float(window[1])], "neighbours": list(neighbours),
            **({"planes": planes} if planes is not None else {})}


def scaled_strip(strip) -> tuple:
    """(values scaled to 0..1 by the largest, values in nats) of a per-slice uncertainty strip."""
    values = np.nan_to_num(np.asarray(list(strip), dtype=np.float64), nan=0.0)
    top = float(values.max()) if values.size else 0.0
    scaled = values / top if top > 0 else np.zeros_like(values)
    return [round(float(v), 4) for v in scaled], [round(float(v), 4) for v in values]


def plane_block(planes: dict) -> dict:
    """The three views for the editor: ``planes`` maps each plane to (shape, spacing, axes) of its
    view, ``axes`` giving for each of its axes (slice, row, column) the stored axis and whether it runs
    the other way, so that the editor maps a voxel between planes as the server does."""
    return {name: {"depth": int(shape[0]), "shape": [int(n) for n in shape],
                   "spacing": [float(v) for v in spacing],
                   "axes": [[int(axis), bool(flipped)] for axis, flipped in axes]}
            for name, (shape, spacing, axes) in planes.items()}


def plane_slice_payload(*, plane: str, spacing, **fields) -> dict:
    """A slice of one plane: a ``slice_payload`` that also names its plane and the size of its pixels
    (row mm, column mm), which the editor draws at their aspect ratio."""
    value = slice_payload(**fields)
    value["plane"] = str(plane)
    value["spacing"] = [float(v) for v in spacing]
    return value


@dataclass(frozen=True)
class SliceEdit:
    """The mask of a slice the editor has left, with the editor's revision when it left it."""

    index: int
    revision: int
    mask: np.ndarray
    drawn: bool = False    # the annotator changed it on screen (a drawn slice even when it ends as it began)


@dataclass(frozen=True)
class PlaneSliceEdit:
    """The mask of a slice of a plane other than the acquisition plane, at the editor's revision."""

    plane: str
    index: int
    revision: int
    mask: np.ndarray


@dataclass(frozen=True)
class VolumeEdit:
    """The editor's value for a volume case: the slice on screen (``edit``, as for an image), which
    slice that is, the slices reviewed, and edits of other slices not yet confirmed as stored.

    ``plane`` is the plane being edited ("" for the acquisition plane). In another plane ``edit`` and
    ``index`` are the acquisition slice at the crosshair as the editor last had it (shown, not an
    edit), and that plane's edits are in ``plane_edits``."""

    edit: EditorEdit
    index: int
    reviewed: tuple
    pending: tuple       # SliceEdit, oldest first
    session: str
    plane: str = ""
    plane_edits: tuple = ()   # PlaneSliceEdit, oldest first


def _slice_index(value, depth: int, what: str) -> int:
    index = _whole(value, what)
    if not 0 <= index < depth:
        raise EditorError(f"The editor asked for slice {index + 1}, but the volume has slices 1 to {depth}.")
    return index


def _plane_edits(value, plane_shapes: Optional[dict]) -> tuple:
    items = value.get("plane_edits") or []
    if not items:
        return ()
    if not plane_shapes or not isinstance(items, (list, tuple)) or len(items) > sum(s[0] for s in plane_shapes.values()):
        raise EditorError("The editor sent no usable list of plane edits.")
    out = []
    for item in items:
        plane = item.get("plane") if isinstance(item, dict) else None
        if plane not in plane_shapes:
            raise EditorError(f"The editor sent an edit of an unknown plane {plane!r}.")
        depth, rows, columns = plane_shapes[plane]
        index = _whole(item.get("index"), "slice number")
        if not 0 <= index < depth:
            raise EditorError(f"The editor sent an edit of {plane} slice {index + 1}, but that plane has slices "
                              f"1 to {depth}.")
        try:
            mask = mask_from_runs(item.get("runs") or [], (rows, columns))
        except MaskRunsError as exc:
            raise EditorError(str(exc)) from None
        out.append(PlaneSliceEdit(plane=plane, index=index, revision=_whole(item.get("revision") or 0, "revision"),
                                  mask=mask))
    return tuple(out)


def read_volume_edit(value, *, case_id: int, shape: tuple, depth: int,
                     plane_shapes: Optional[dict] = None) -> VolumeEdit:
    """The editor's value for the open volume case ``case_id`` (slices of ``shape``, ``depth`` of them), checked.
    ``plane_shapes``: (slices, rows, columns) of each plane's view, to read edits made in other planes."""
    edit = read_edit(value, case_id=case_id, shape=shape)
    index = _slice_index(value.get("slice_index"), depth, "slice number")
    reviewed = value.get("reviewed") or []
    if not isinstance(reviewed, (list, tuple)) or len(reviewed) > depth:
        raise EditorError("The editor sent no usable list of reviewed slices.")
    reviewed = tuple(sorted({_slice_index(i, depth, "reviewed slice") for i in reviewed}))
    pending = value.get("pending") or []
    if not isinstance(pending, (list, tuple)) or len(pending) > depth:
        raise EditorError("The editor sent no usable list of slice edits.")
    slices = []
    for item in pending:
        if not isinstance(item, dict):
            raise EditorError("The editor sent no usable list of slice edits.")
        try:
            mask = mask_from_runs(item.get("runs") or [], shape)
        except MaskRunsError as exc:
            raise EditorError(str(exc)) from None
        slices.append(SliceEdit(index=_slice_index(item.get("index"), depth, "edited slice"),
                                revision=_whole(item.get("revision") or 0, "revision"), mask=mask,
                                drawn=bool(item.get("drawn"))))
    plane = value.get("plane") or ""
    if plane and plane_shapes is not None and plane not in plane_shapes:
        raise EditorError(f"The editor shows an unknown plane {plane!r}.")
    return VolumeEdit(edit=edit, index=index, reviewed=reviewed, pending=tuple(slices),
                      session=str(value.get("session") or ""), plane=str(plane),
                      plane_edits=_plane_edits(value, plane_shapes))


@dataclass(frozen=True)
class SliceRequest:
    """The editor asks for slices: its state (a ``VolumeEdit``), which slices, in which window."""

    state: VolumeEdit
    wanted: tuple
    window: Optional[tuple]


def read_window(value) -> Optional[tuple]:
    """A (center, width) window sent by the editor; None when it sent none."""
    if value is None:
        return None
    try:
        center, width = (float(v) for v in value)
    except (TypeError, ValueError):
        raise EditorError("The editor sent no usable window (center and width).") from None
    if not (np.isfinite(center) and np.isfinite(width) and 0 < width <= 1e7 and abs(center) <= 1e7):
        raise EditorError(f"The window width must be above 0 (center {center:g}, width {width:g}).")
    return center, width


def read_slice_request(value, *, case_id: int, shape: tuple, depth: int,
                       plane_shapes: Optional[dict] = None) -> SliceRequest:
    """An editor's slice request (``kind`` "slice_request": its edit value plus ``wanted`` and ``window``)."""
    if not isinstance(value, dict) or value.get("kind") != "slice_request":
        raise EditorError("The editor's slice request is not one.")
    state = read_volume_edit(dict(value, kind="edit"), case_id=case_id, shape=shape, depth=depth,
                             plane_shapes=plane_shapes)
    wanted = value.get("wanted") or []
    if not isinstance(wanted, (list, tuple)):
        raise EditorError("The editor sent no usable list of slices to show.")
    indices = []
    for item in wanted:
        index = _slice_index(item, depth, "slice number")
        if index not in indices:
            indices.append(index)
    if len(indices) > MAX_SLICES_PER_ANSWER:
        raise EditorError(f"The editor asked for {len(indices)} slices at once; {MAX_SLICES_PER_ANSWER} is the most.")
    return SliceRequest(state=state, wanted=tuple(indices), window=read_window(value.get("window")))


MAX_PLANE_SLICES_PER_ANSWER = 6   # two slices of each plane: the crosshair's, or one and a neighbour


@dataclass(frozen=True)
class PlaneRequest:
    """The editor asks for slices of the three planes: its state, (plane, slice) pairs, the window, and
    the planes whose uncertainty strip it still needs."""

    state: VolumeEdit
    wanted: tuple        # (plane, index)
    window: Optional[tuple]
    strips: tuple


def read_plane_request(value, *, case_id: int, shape: tuple, depth: int, plane_shapes: dict) -> PlaneRequest:
    """An editor's plane request (``kind`` "plane_request": its edit value plus ``wanted`` as
    ``[[plane, slice], ...]``, ``window`` and ``strips``)."""
    if not isinstance(value, dict) or value.get("kind") != "plane_request":
        raise EditorError("The editor's plane request is not one.")
    state = read_volume_edit(dict(value, kind="edit"), case_id=case_id, shape=shape, depth=depth,
                             plane_shapes=plane_shapes)
    wanted = value.get("wanted") or []
    if not isinstance(wanted, (list, tuple)):
        raise EditorError("The editor sent no usable list of slices to show.")
    pairs = []
    for item in wanted:
        if not isinstance(item, (list, tuple)) or len(item) != 2 or item[0] not in plane_shapes:
            raise EditorError("The editor asked for a slice of no known plane.")
        plane, index = item[0], _whole(item[1], "slice number")
        if not 0 <= index < plane_shapes[plane][0]:
            raise EditorError(f"The editor asked for {plane} slice {index + 1}, but that plane has slices 1 to "
                              f"{plane_shapes[plane][0]}.")
        if (plane, index) not in pairs:
            pairs.append((plane, index))
    if len(pairs) > MAX_PLANE_SLICES_PER_ANSWER:
        raise EditorError(f"The editor asked for {len(pairs)} slices at once; {MAX_PLANE_SLICES_PER_ANSWER} is the most.")
    strips = value.get("strips") or []
    if not isinstance(strips, (list, tuple)) or any(name not in plane_shapes for name in strips):
        raise EditorError("The editor asked for the strip of no known plane.")
    return PlaneRequest(state=state, wanted=tuple(pairs), window=read_window(value.get("window")),
                        strips=tuple(dict.fromkeys(strips)))
