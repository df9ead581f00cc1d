"""What each user action in the app does, as plain functions: no server, no Gradio objects.

Every handler takes the ``AnnotationService`` and typed values (file paths, numbers, text, the
``EditorSession``) and returns a ``Screen``: the parts of the page it changes, by name; parts
left at ``KEEP`` stay as they are. ``medclipseg.app.layout`` turns a ``Screen`` into the
``{component: value}`` update Gradio expects, so these functions can be tested directly.
Sliders re-render from the maps cached in the service; only ``segment`` and ``ingest`` run the model.

Volumes (CT/MR scans) open in the same editor, one display slice at a time (see "volumes" below):
the editor asks for slices through ``volume_slices`` (a server function of the editor component,
answered without Gradio's queue) and every handler that keeps or saves a mask also takes the slice
edits the editor sends. The editor also shows the coronal and sagittal (or axial) planes, reformatted
on the voxel grid (``volume_plane``); a slice painted in one of those is written into the same 3-D
mask, and the acquisition slices whose voxels it changed count as edited and reviewed. What counts as a *reviewed* slice, precisely: a slice the annotator edited
(any change of its mask, the mask threshold slider included), a slice that stayed on screen for at
least ``REVIEW_DWELL_MS`` (long enough to look at it; scrolling past with the wheel does not count),
and the slice on screen when the volume is saved or accepted. Reviewed slices keep the mask they had
when the annotator left them. A slice nobody reviewed keeps its start: the saved version's slice, or,
when the work starts from the model, the model's mask at the volume's current mask threshold.
The volume tools (``volume_tool``: interpolation, propagation, 3-D clean-up, undo/redo) run on the
whole work as steps of one history, slice edits included; each slice records its provenance (drawn,
interpolated, propagated, predicted), kept in the draft and the saved version.
"""

from __future__ import annotations

import html
import json
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from medclipseg.annotation.byte_cache import ByteCache, budget_of, size_of
from medclipseg.annotation.queue import ACQUISITION_LABELS
from medclipseg.annotation.service import AnnotationService, ConfirmationNeeded, RequestError
from medclipseg.annotation.store import StorageError, VersionConflict
from medclipseg.annotation import volume_files, volume_tools
from medclipseg.annotation.volume_editing import EditRefused, VolumeMaskEdits, apply_tool
from medclipseg.annotation.volume_editing import progress as volume_progress
from medclipseg.annotation.volume_planes import PLANES, PlaneGeometry, loaded_volume, plane_slice, plane_strip
from medclipseg.annotation.volume_workflow import is_volume_name, slices_saved_since
from medclipseg.app.editor import (
    EditorEdit,
    EditorError,
    PlaneSliceEdit,
    SliceEdit,
    VolumeEdit,
    case_payload,
    closed_value,
    plane_block,
    plane_slice_payload,
    read_edit,
    read_plane_request,
    read_slice_request,
    read_volume_edit,
    read_window,
    saved_value,
    scaled_strip,
    slice_payload,
    volume_block,
)
from medclipseg.app.render import enlarged, image_numbers, numbers_markdown, to_display
from medclipseg.inference.uncertainty import MAX_BINARY_ENTROPY
from medclipseg.io.dicom import CT_WINDOW_PRESETS
from medclipseg.io.images import ImageReadError
from medclipseg.io.prompts import PromptError
from medclipseg.team.access import AccessDenied
from medclipseg.weights.sources import assets_dir

USER_ERRORS = (ImageReadError, PromptError, StorageError, RequestError, EditorError, ValueError, AccessDenied)
HEADER_WINDOW = "From the file"   # window preset: the DICOM header's own window
PREVIEW_SIDE = 512
# The checkout's assets/examples, or the copy shipped inside an installed wheel.
EXAMPLES_DIR = assets_dir() / "examples"


class _Keep:
    """The value of a Screen part that does not change."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "KEEP"

    def __bool__(self) -> bool:
        return False


KEEP = _Keep()


@dataclass
class EditorSession:
    """The case open in the editor. The mask itself lives in the editor (its value)."""

    case_id: int
    prediction_id: int
    name: str
    shape: tuple                              # (height, width) of the image and mask; of one slice for a volume
    pixel_spacing: Optional[tuple] = None     # (row, column) mm, when the file said
    kind: str = "image"                       # "image" or "volume"
    depth: Optional[int] = None               # a volume's slice count
    slice_index: Optional[int] = None         # the slice a volume opened on (0-based, display order)

    @property
    def is_volume(self) -> bool:
        return self.kind == "volume"


@dataclass
class Screen:
    """The parts of the page one action changes (names match ``layout``'s components)."""

    session: Union[EditorSession, None, _Keep] = KEEP
    upload: Union[str, None, _Keep] = KEEP
    preview: Union[np.ndarray, None, _Keep] = KEEP
    image_info: Union[str, _Keep] = KEEP
    dicom_controls: Union[bool, _Keep] = KEEP      # visibility of the window/level controls
    window_presets: Union[bool, _Keep] = KEEP      # visibility of the CT presets (CT only)
    window_note: Union[str, _Keep] = KEEP
    windowed: Union[bool, _Keep] = KEEP            # the upload is a grey DICOM with a window
    window_preset: Union[str, _Keep] = KEEP
    window_center: Union[float, _Keep] = KEEP
    window_width: Union[float, _Keep] = KEEP
    prompt: Union[str, _Keep] = KEEP
    editor: Union[dict, None, _Keep] = KEEP
    stale_draft: Union[bool, _Keep] = KEEP         # visibility of "Use my draft" (a draft older than the latest version)
    skip_confirm: Union[bool, _Keep] = KEEP        # visibility of "Skip anyway" (a skip that drops a saved version)
    numbers: Union[str, _Keep] = KEEP
    history: Union[str, _Keep] = KEEP
    status: Union[str, _Keep] = KEEP
    queue: Union[str, _Keep] = KEEP
    ingest_report: Union[str, _Keep] = KEEP
    export_file: Union[str, None, _Keep] = KEEP
    export_report: Union[str, _Keep] = KEEP

    def changed(self) -> dict:
        """{part name: new value} of the parts this screen changes."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not KEEP}


PART_NAMES = tuple(f.name for f in fields(Screen))


def error_text(exc: Union[Exception, str]) -> str:
    return f"**Error:** {exc}"


def queue_text(service: AnnotationService) -> str:
    return f"**Queue**: {service.queue_summary().text()}"


def acquisition_label(key: str) -> str:
    return ACQUISITION_LABELS.get(key, key)


def load_examples(folder: Path = EXAMPLES_DIR) -> list:
    """[[image path, prompt], ...] from ``examples.json`` (entries whose image exists)."""
    listing = Path(folder) / "examples.json"
    if not listing.exists():
        return []
    entries = json.loads(listing.read_text())
    return [[str(Path(folder) / entry["image"]), entry["prompt"]] for entry in entries
            if (Path(folder) / entry["image"]).exists()]


def window_of(windowed: bool, center: Optional[float], width: Optional[float]) -> Optional[tuple]:
    """The (center, width) window to apply, when the upload is a windowed DICOM and both are set."""
    if not windowed or center is None or not width:
        return None
    return float(center), float(width)


# ------------------------------------------------------------------------------ a case in the editor

DEFAULT_VIEW = {"threshold": 0.5, "uncertainty_threshold": 0.35, "opacity": 0.4}
EDITOR_MAX_PIXELS = 4096 * 4096


def _when(iso: str) -> str:
    return (iso or "")[:16].replace("T", " ") + " UTC" if iso else "?"


def version_label(row: dict, *, bold: bool = True) -> str:
    who = f"**{row['annotator']}**" if bold else row["annotator"]
    return f"v{row['version']} ({row['status']}) by {who}, {_when(row['created_at'])}"


def history_markdown(service: AnnotationService, case_id: int) -> str:
    """The case's saved versions: who, when, what changed, which model it corrected."""
    rows = service.case_history(case_id)
    if not rows:
        return f"**History of case #{case_id}**: no saved version yet."
    lines = [f"**History of case #{case_id}** (newest first)", "",
             "| Version | Status | By | When | Pixels changed (+ / −) | Model | Replaces |", "|---|---|---|---|---|---|---|"]
    for row in reversed(rows):
        replaces = "—" if row.get("replaces_version") is None else f"v{row['replaces_version']}"
        lines.append(f"| v{row['version']} | {row['status']} | {row['annotator']} | {_when(row['created_at'])} | "
                     f"{row['pixels_changed']:,} (+{row['pixels_added']:,} / −{row['pixels_erased']:,}) | "
                     f"`{row.get('model_id') or '?'}` | {replaces} |")
    case = service.store.get_case(case_id)
    if case.is_volume:  # pixels above are voxels; which slices the latest version was reviewed on
        latest = service.latest_correction(case_id)
        depth = service.store.volume_geometry(case_id).depth
        reviewed = sorted(_version_reviewed(latest))
        lines += ["", f"v{latest['version']} was reviewed on {len(reviewed)} of {depth} slices"
                      + (f": {slice_list(reviewed)}." if reviewed else ".")]
    reviews = service.store.review_history(case_id)
    if reviews:  # who submitted, approved or rejected which version, and why
        lines += ["", "| Review | Version | By | When | Comment |", "|---|---|---|---|---|"]
        for row in reversed(reviews):
            version = f"v{row['version']}" + (f" → v{row['new_version']} (edited)" if row["new_version"] else "")
            comment = html.escape(row["comment"] or "").replace("|", "\\|") or "—"
            lines.append(f"| {row['action']} | {version} | {row['by']} | {_when(row['created_at'])} | {comment} |")
    return "\n".join(lines)


def slice_list(indices) -> str:
    """Display indices as 1-based slice numbers with ranges, e.g. "3–5, 9"."""
    numbers = sorted({int(i) + 1 for i in indices})
    parts, start = [], None
    for position, number in enumerate(numbers):
        if start is None:
            start = number
        if position + 1 == len(numbers) or numbers[position + 1] != number + 1:
            parts.append(str(start) if start == number else f"{start}–{number}")
            start = None
    return ", ".join(parts)


def _prediction_at(service: AnnotationService, prediction_id: int, threshold: float):
    prediction = service.prediction(prediction_id)
    if float(threshold) != float(prediction.threshold):
        prediction = prediction.with_threshold(float(threshold))
    return prediction


def numbers_text(service: AnnotationService, session: EditorSession, mask: np.ndarray, threshold: float,
                 uncertainty_threshold: float) -> str:
    prediction = _prediction_at(service, session.prediction_id, threshold)
    numbers = image_numbers(prediction, uncertainty_threshold=float(uncertainty_threshold), mask=mask,
                            pixel_spacing=session.pixel_spacing)
    added = int(np.count_nonzero(mask & ~prediction.mask))
    erased = int(np.count_nonzero(prediction.mask & ~mask))
    text = numbers_markdown(numbers, model_id=prediction.model_id, seconds=prediction.seconds)
    return text + (f"\n\n**Case #{session.case_id}** · {session.name} · {added + erased:,} px differ from the model "
                   f"(+{added:,} / −{erased:,})")


def open_case(service: AnnotationService, case_id: int, prediction_id: int, annotator: Optional[str], *,
              threshold: Optional[float] = None, uncertainty_threshold: float = DEFAULT_VIEW["uncertainty_threshold"],
              opacity: float = DEFAULT_VIEW["opacity"], use_stale_draft: bool = False,
              slice_index: Optional[int] = None) -> Screen:
    """Show a case in the editor, starting from (in this order) the annotator's draft, the latest
    saved version, or the model's mask. The save that follows must name the version shown.

    A draft begun before the latest version was saved (someone else saved meanwhile) is not
    shown over it unasked: the latest version opens, the draft is kept, and ``use_stale_draft``
    (the *Use my draft* button) puts it back on top of that version. A volume opens on
    ``slice_index`` (default: its start slice; see ``open_volume_case``)."""
    case = service.store.get_case(case_id)
    if case.is_volume:
        return open_volume_case(service, case, prediction_id, annotator, threshold=threshold,
                                uncertainty_threshold=uncertainty_threshold, opacity=opacity,
                                use_stale_draft=use_stale_draft, slice_index=slice_index)
    if case.width * case.height > EDITOR_MAX_PIXELS:
        # The page holds the maps of the whole image (6 bytes a pixel and a few masks).
        message = (f"Case #{case.id} ({case.width} x {case.height}) is larger than the editor holds "
                   f"({EDITOR_MAX_PIXELS:,} pixels, e.g. 4096 x 4096): correct it through the API "
                   "(save_correction with a mask PNG) or store a smaller copy of the image.")
        return Screen(session=None, editor=closed_value(message), status=error_text(message), history="",
                      numbers="", queue=queue_text(service))
    prediction = service.prediction(prediction_id)
    latest = service.latest_correction(case_id, annotator)
    draft = service.draft(case_id, annotator) if annotator else None
    base_version = None if latest is None else int(latest["version"])
    stale = draft is not None and latest is not None and draft.base_version != latest["version"]
    if draft is not None and (not stale or use_stale_draft):
        start, start_mask = "draft", draft.mask
        threshold = draft.threshold if draft.threshold is not None else prediction.threshold
        note = f"Restored your unsaved edits of case #{case_id} ({_when(draft.updated_at)})."
        if stale:
            # Rebased on purpose: the save that follows replaces the newer version, and says so.
            note += (f" They began before {version_label(latest, bold=False)}; a save makes "
                     f"v{latest['version'] + 1}, replacing it.")
        else:
            base_version = draft.base_version
    elif latest is not None:
        start, start_mask = "version", service.store.load_mask(latest["mask_path"])
        threshold = latest["threshold"] if latest.get("threshold") is not None else prediction.threshold
        note = f"Showing the latest saved version, {version_label(latest, bold=False)}; a save makes v{latest['version'] + 1}."
        if stale:
            note += (f" Your unsaved edits of {_when(draft.updated_at)} began before it and are kept: *Use my draft* "
                     "puts them back over this version (editing here first replaces that draft).")
    else:
        threshold = prediction.threshold if threshold is None else float(threshold)
        start, start_mask = "prediction", _prediction_at(service, prediction_id, threshold).mask
        note = "Showing the model's mask; nothing saved for this case yet."
    found_nothing = nothing_found_note(prediction, threshold, case.prompt)
    if found_nothing:
        note = f"{found_nothing} {note}"
    image_rgb = np.ascontiguousarray(service.store.load_image(case_id)[..., ::-1])
    spacing = (case.metadata or {}).get("pixel_spacing")
    session = EditorSession(case_id=int(case.id), prediction_id=int(prediction_id), name=case.original_name,
                            shape=(case.height, case.width), pixel_spacing=tuple(spacing) if spacing else None)
    payload = case_payload(
        case_id=case.id, prediction_id=prediction_id, image_rgb=image_rgb, probability=prediction.probability,
        entropy=prediction.entropy, start_mask=np.asarray(start_mask, bool), start=start, start_note=note,
        base_version=base_version, threshold=threshold, uncertainty_threshold=uncertainty_threshold,
        opacity=opacity, title=f"Case #{case.id} · {case.original_name} · “{case.prompt}”")
    return Screen(session=session, editor=payload, history=history_markdown(service, case_id),
                  numbers=numbers_text(service, session, np.asarray(start_mask, bool), threshold, uncertainty_threshold),
                  queue=queue_text(service), stale_draft=stale and not use_stale_draft, skip_confirm=False)


def nothing_found_note(prediction, threshold: float, prompt: str) -> str:
    """A sentence when the model's mask at ``threshold`` is empty (else ""): what it means, what to do."""
    if np.any(np.asarray(prediction.probability) > np.float32(threshold)):
        return ""
    highest = float(np.max(prediction.probability)) if prediction.probability.size else 0.0
    return (f"The model found nothing for “{prompt}” (no pixel above the threshold {float(threshold):.2f}; the "
            f"highest probability is {highest:.2f}). Draw the structure with the brush (B) and save: your "
            "corrections teach the model when it is retrained in the Model tab.")


def use_draft(service: AnnotationService, session: Optional[EditorSession], annotator: Optional[str]) -> Screen:
    """Put the annotator's older draft back over the latest version of the open case."""
    if session is None:
        return _no_session()
    try:
        screen = open_case(service, session.case_id, session.prediction_id, annotator, use_stale_draft=True)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    if screen.session is not None:
        screen.status = screen.editor["start_note"]
    return screen


def _no_session() -> Screen:
    return Screen(status=error_text("Segment an image or take a case from the review queue first."))


NAME_NEEDED = "Type your name in the Annotator box first: drafts and saved versions are kept under it."
EDIT_NEEDS_NAME = "Type your name in Annotator to edit this case (drafts and versions are kept under your name)."


def _keep_draft(service: AnnotationService, session: Optional[EditorSession], editor_value,
                annotator: Optional[str]) -> Optional[EditorEdit]:
    """Store the editor's unsaved edits of the open case as the annotator's draft; returns the edit read.

    Called by every action that leaves the case (next case, skip, segment) with the mask the page
    holds at that moment, so an edit still waiting for the editor's debounced event is not lost."""
    if session is None or not isinstance(editor_value, dict) or editor_value.get("kind") != "edit" \
            or editor_value.get("case_id") != session.case_id:
        return None
    if session.is_volume:
        state = _read_volume_value(service, session, editor_value)
        _keep_volume_work(service, session, state, annotator)
        return state.edit
    edit = read_edit(editor_value, case_id=session.case_id, shape=session.shape)
    if edit.dirty and annotator:
        service.save_draft(session.case_id, annotator, edit.mask, prediction_id=edit.prediction_id,
                           base_version=edit.base_version, threshold=edit.threshold)
    return edit


def _view_of(editor_value) -> dict:
    """The thresholds the editor uses now (so the next case opens with the same uncertainty view)."""
    view = dict(DEFAULT_VIEW)
    try:
        shown = float(editor_value["uncertainty_threshold"])
    except (TypeError, ValueError, KeyError):
        return view
    view["uncertainty_threshold"] = min(max(shown, 0.0), MAX_BINARY_ENTROPY)
    return view


# ------------------------------------------------------------------------------ image tab


VOLUME_READ_FAILED = (USER_ERRORS + (ImportError,))   # reading a DICOM series needs an optional module


def _preview_window(values: np.ndarray, modality: str) -> tuple:
    """A window for the upload's preview only (the model's own window is chosen when it segments):
    CT's soft-tissue window, else the 1st to 99th percentile of the voxels."""
    if str(modality or "").upper() == "CT":
        return CT_WINDOW_PRESETS.get("Soft tissue", (40.0, 400.0))
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    return (low + high) / 2.0, max(high - low, 1e-3)


def _upload_volume(service: AnnotationService, file_path: str, name: str) -> Screen:
    """Preview a scan (NIfTI, or a zip of one DICOM series): its middle slice and its geometry."""
    from medclipseg.io.volumes import window_to_uint8

    try:
        volume = service.read_scan(file_path, name=name)
    except VOLUME_READ_FAILED as exc:
        text = (f"DICOM series cannot be read by this installation ({exc})." if isinstance(exc, ImportError)
                else str(exc))
        return Screen(upload=None, preview=None, image_info="", dicom_controls=False, windowed=False,
                      status=error_text(text if name in text else f"{name}: {text}"))
    plane = volume.slice_plane
    display = volume.to_display(plane=plane)
    depth, rows, columns = display.shape
    middle = display[depth // 2]
    grey = window_to_uint8(middle, _preview_window(display, volume.modality))
    spacing = " × ".join(f"{float(v):.2f}" for v in volume.spacing)
    notes = (f"**{name}**: a volume of {' × '.join(map(str, volume.shape))} voxels ({spacing} mm, "
             f"{volume.orientation_codes()}), {volume.modality or 'modality not recorded'}; segmented as {depth} "
             f"{plane} slices of {columns} × {rows} (preview: slice {depth // 2 + 1})")
    if volume.conversions:
        notes += "; " + "; ".join(volume.conversions)
    return Screen(preview=enlarged(to_display(np.repeat(grey[..., None], 3, axis=2), PREVIEW_SIDE)),
                  image_info=notes, dicom_controls=False, windowed=False,
                  status=f"Loaded **{name}**, a volume of {depth} {plane} slices: type what to segment and press "
                         "**Segment** to segment it slice by slice.")


def upload(service: AnnotationService, file_path: Optional[str]) -> Screen:
    """Preview an upload; a file that cannot be read is cleared from the box, its message stays.
    A NIfTI file or a zip (a DICOM series) is a volume."""
    if not file_path:
        return Screen(preview=None, image_info="", dicom_controls=False, windowed=False)
    name = Path(file_path).name
    # The upload box takes any file (its own type check only says "Invalid file type"), so the
    # refusals are here, in words.
    if is_volume_name(name):
        return _upload_volume(service, file_path, name)
    try:
        loaded = service.read(file_path, name=name)
    except USER_ERRORS as exc:
        return Screen(upload=None, preview=None, image_info="", dicom_controls=False, windowed=False,
                      status=error_text(exc))
    notes = f"**{name}**: {loaded.width} × {loaded.height}, stored as {loaded.original_dtype}"
    if loaded.conversions:
        notes += "; " + "; ".join(loaded.conversions)
    screen = Screen(preview=enlarged(to_display(loaded.rgb, PREVIEW_SIDE)), image_info=notes, dicom_controls=False,
                    windowed=False, status=f"Loaded **{name}**.")
    if "window_center" in loaded.metadata:
        modality = str(loaded.metadata.get("modality") or "").upper()
        screen.dicom_controls = screen.windowed = True
        screen.window_presets = modality == "CT"
        screen.window_note = ("**CT window** in Hounsfield units: a preset or your own center and width."
                              if modality == "CT" else
                              f"**{modality or 'DICOM'} window** in the scanner's own signal units (no standard "
                              "presets): the header's window, or your own center and width.")
        screen.window_preset = HEADER_WINDOW
        screen.window_center = loaded.metadata["window_center"]
        screen.window_width = loaded.metadata["window_width"]
    return screen


def change_window(service: AnnotationService, file_path: Optional[str], windowed: bool,
                  center: Optional[float], width: Optional[float]) -> Screen:
    if not file_path or not windowed:
        return Screen(status="")
    window = window_of(windowed, center, width)
    if window is None:
        return Screen(status=error_text("Window center and width must be numbers, the width above 0."))
    try:
        loaded = service.read(file_path, window=window)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    return Screen(preview=enlarged(to_display(loaded.rgb, PREVIEW_SIDE)), status="")


def choose_preset(preset: str) -> Screen:
    if preset in CT_WINDOW_PRESETS:
        center, width = CT_WINDOW_PRESETS[preset]
        return Screen(window_center=center, window_width=width)
    return Screen()


def choose_example(examples: Sequence, index: int) -> Screen:
    path, prompt = examples[index]
    return Screen(upload=path, prompt=prompt)


def segment(service: AnnotationService, file_path: Optional[str], prompt: str, *,
            window: Optional[tuple] = None, samples: int, annotator: Optional[str] = None,
            editor_value=None, progress: Optional[Callable[[float, str], None]] = None,
            session: Optional[EditorSession] = None) -> Screen:
    """Run the model on the upload, store it as a case in the queue (claimed by ``annotator``), show it.

    An image already stored with this prompt is the same case: the editor shows its latest saved
    version (or the annotator's draft) over the new prediction, never the raw prediction alone."""
    if not file_path:
        return Screen(status=error_text("Upload an image (or pick an example) first."))
    name = Path(file_path).name
    if is_volume_name(name):
        return segment_volume(service, file_path, prompt, samples=samples, annotator=annotator,
                              editor_value=editor_value, progress=progress, session=session)
    try:
        _keep_draft(service, session, editor_value, annotator)
        if progress:
            progress(0.05, "Reading the image")
        result = service.segment(file_path, prompt, name=name, window=window, num_samples=samples,
                                 threshold=DEFAULT_VIEW["threshold"], annotator=annotator, add_to_queue=True,
                                 progress=progress)
        if progress:
            progress(0.9, "Sending the case to the editor")
        screen = open_case(service, result.case.id, result.prediction_id, annotator, **_view_of(editor_value))
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    if screen.session is None:  # stored, but too large for the editor: the screen says why
        return screen
    note = " (prompt truncated to the model's token limit)" if result.prediction.prompt_truncated else ""
    screen.status = (f"Segmented **{name}** in {result.prediction.seconds:.2f} s with "
                     f"{result.prediction.num_samples} samples by `{result.prediction.model_id}`{note}. "
                     f"{screen.editor['start_note']}" + ("" if annotator else f" **{EDIT_NEEDS_NAME}**"))
    return screen


def segment_volume(service: AnnotationService, file_path: str, prompt: str, *, samples: int,
                   annotator: Optional[str] = None, editor_value=None,
                   progress: Optional[Callable[[float, str], None]] = None,
                   session: Optional[EditorSession] = None) -> Screen:
    """Segment a scan slice by slice, store it as one volume case (claimed by ``annotator``) and open it
    on its start slice, the model's most uncertain. Samples per slice: the slider's, at most the
    service's volume setting (a volume multiplies the model's time by its slice count)."""
    name = Path(file_path).name
    samples = min(int(samples), int(service.volume_samples))
    try:
        _keep_draft(service, session, editor_value, annotator)
        if progress:
            progress(0.05, "Reading the scan")
        result = service.segment_volume(file_path, prompt, name=name, num_samples=samples, annotator=annotator,
                                        add_to_queue=True, progress=progress)
        if progress:
            progress(0.97, "Sending the start slice to the editor")
        screen = open_case(service, result.case.id, result.prediction_id, annotator, **_view_of(editor_value))
    except VOLUME_READ_FAILED as exc:
        return Screen(status=error_text(exc))
    if screen.session is None:
        return screen
    prediction = result.prediction
    seconds = float(getattr(prediction, "seconds", 0.0) or 0.0)
    note = " (prompt truncated to the model's token limit)" if getattr(prediction, "prompt_truncated", False) else ""
    screen.status = (f"Segmented **{name}** ({screen.session.depth} slices) in {seconds:.1f} s with "
                     f"{getattr(prediction, 'num_samples', samples)} samples per slice by "
                     f"`{getattr(prediction, 'model_id', '?')}`{note}; opened on slice {screen.session.slice_index + 1}, "
                     f"the most uncertain. {screen.editor['start_note']}"
                     + ("" if annotator else f" **{EDIT_NEEDS_NAME}**"))
    return screen


# ------------------------------------------------------------------------------ the editor's events


def editor_changed(service: AnnotationService, session: Optional[EditorSession], editor_value,
                   annotator: Optional[str]) -> Screen:
    """After an edit (debounced in the browser): keep the mask as the annotator's draft, update the numbers."""
    if session is None or not isinstance(editor_value, dict) or editor_value.get("kind") != "edit" \
            or editor_value.get("case_id") != session.case_id:
        return Screen()
    try:
        if session.is_volume:
            state = _read_volume_value(service, session, editor_value)
            work = _keep_volume_work(service, session, state, annotator)
            edit = state.edit
            numbers = volume_numbers_text(service, session, state.index, edit.mask, edit.threshold,
                                          edit.uncertainty_threshold,
                                          reviewed=len(work.reviewed) if work else len(state.reviewed))
        else:
            edit = _keep_draft(service, session, editor_value, annotator)
            numbers = numbers_text(service, session, edit.mask, edit.threshold, edit.uncertainty_threshold)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    screen = Screen(numbers=numbers)
    if edit.dirty and not annotator:
        # The editor locks itself without a name; this is the server's word for any other client.
        screen.status = error_text("These edits are not kept: " + NAME_NEEDED)
    return screen


def _after_save(service: AnnotationService, session: EditorSession, edit: EditorEdit, correction, message: str) -> Screen:
    return Screen(editor=saved_value(session.case_id, correction.version, edit.revision, message.replace("**", "")),
                  status=message, skip_confirm=False,
                  history=history_markdown(service, session.case_id), queue=queue_text(service))


def _start_mask(service: AnnotationService, session: EditorSession, edit: EditorEdit,
                annotator: Optional[str] = None) -> tuple:
    """(mask, label) the edit started from: the saved version it names when that is still the
    latest (otherwise the save is refused as a conflict anyway), else the model's mask."""
    if edit.base_version is not None:
        latest = service.latest_correction(session.case_id, annotator)
        if latest is not None and latest["version"] == edit.base_version:
            return service.store.load_mask(latest["mask_path"]), f"v{edit.base_version}"
    return _prediction_at(service, edit.prediction_id, edit.threshold).mask, "the model's mask"


def _differs_from_model(service: AnnotationService, edit: EditorEdit) -> bool:
    """Whether the mask the page sent differs from the model's own mask at its threshold, compared here
    pixel by pixel: the page's ``edited`` flag is only its claim and decides nothing (a page that lied
    would save the model's mask over real edits, or record an untouched mask as a correction)."""
    return not np.array_equal(edit.mask, _prediction_at(service, edit.prediction_id, edit.threshold).mask)


def _after_conflict(service: AnnotationService, session: EditorSession, edit: EditorEdit, annotator: Optional[str],
                    conflict: VersionConflict, refused: str = "Not saved.") -> Screen:
    """Someone saved a newer version: keep the editor's mask as the draft, show that version, offer the draft."""
    if conflict.latest_version is None or not annotator:
        return Screen(status=error_text(conflict))
    try:
        service.save_draft(session.case_id, annotator, edit.mask, prediction_id=edit.prediction_id,
                           base_version=edit.base_version, threshold=edit.threshold)
        screen = open_case(service, session.case_id, edit.prediction_id, annotator,
                           uncertainty_threshold=edit.uncertainty_threshold)
    except USER_ERRORS as exc:
        return Screen(status=error_text(f"{conflict} ({exc})"))
    screen.status = _conflict_status(session.case_id, conflict, "your edits are kept as your draft: *Use my draft* "
                                     "puts them back over it", refused)
    return screen


def _conflict_status(case_id: int, conflict, kept: str, refused: str = "Not saved.") -> str:
    """What a refused save says: who saved which version when, what the editor shows, what was kept."""
    started = "no saved version" if conflict.base_version is None else f"v{conflict.base_version}"
    return error_text(
        f"{refused} Case #{case_id} was saved as v{conflict.latest_version} by {conflict.latest_annotator} "
        f"at {_when(conflict.latest_created_at)} after you opened it (you started from {started}). The editor now "
        f"shows v{conflict.latest_version}; {kept}.")


def save(service: AnnotationService, session: Optional[EditorSession], editor_value, annotator: Optional[str], *,
         others_allowed: bool = True) -> Screen:
    """Save the editor's mask as a new version of the case (the version it started from must still be the latest).
    ``others_allowed`` False (an annotator's role): only their own work is saved (AnnotationStore.save_correction)."""
    if session is None:
        return _no_session()
    if not (annotator or "").strip():
        return Screen(status=error_text("Not saved. " + NAME_NEEDED))
    if session.is_volume:
        return _save_volume(service, session, editor_value, annotator, accepting=False,
                            others_allowed=others_allowed)
    try:
        edit = read_edit(editor_value, case_id=session.case_id, shape=session.shape)
        start_mask, start_label = _start_mask(service, session, edit, annotator)
        if np.array_equal(start_mask, edit.mask) and edit.base_version is not None:
            return Screen(status=f"Nothing saved: the mask is the same as {start_label}, the latest version.")
        edited = _differs_from_model(service, edit)
        status = "corrected" if edited else "accepted"
        correction = service.save(session.case_id, edit.mask if edited else None, annotator=annotator,
                                  status=status, prediction_id=edit.prediction_id, threshold=edit.threshold,
                                  base_version=edit.base_version, others_allowed=others_allowed)
    except VersionConflict as conflict:
        return _after_conflict(service, session, edit, annotator, conflict)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    if status == "accepted":
        message = (f"The mask is the model's own at threshold {edit.threshold:.2f} (no pixel changed): saved as "
                   f"v{correction.version}, **accepted as predicted**, by **{correction.annotator}**.")
    else:
        message = (f"Saved correction v{correction.version} of case #{correction.case_id} by "
                   f"**{correction.annotator}**: {correction.pixels_changed:,} px differ from the model "
                   f"(+{correction.pixels_added:,} / −{correction.pixels_erased:,})"
                   + (f"; replaces v{correction.replaces_version}." if correction.replaces_version else "."))
    return _after_save(service, session, edit, correction, message)


def accept(service: AnnotationService, session: Optional[EditorSession], editor_value,
           annotator: Optional[str], *, others_allowed: bool = True) -> Screen:
    """The mask shown is right. With edits in it, it is saved as a correction (and the message says so)."""
    if session is None:
        return _no_session()
    if not (annotator or "").strip():
        return Screen(status=error_text("Not saved. " + NAME_NEEDED))
    if session.is_volume:
        return _save_volume(service, session, editor_value, annotator, accepting=True,
                            others_allowed=others_allowed)
    try:
        edit = read_edit(editor_value, case_id=session.case_id, shape=session.shape)
        edited = _differs_from_model(service, edit)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    if edited:
        screen = save(service, session, editor_value, annotator, others_allowed=others_allowed)
        if isinstance(screen.status, str) and not screen.status.startswith("**Error"):
            screen.status = ("The mask shown differs from the model's, so *Accept* saved it as a correction, not "
                             "as “accepted as predicted”. " + screen.status)
        return screen
    try:
        correction = service.save(session.case_id, annotator=annotator, status="accepted",
                                  prediction_id=edit.prediction_id, threshold=edit.threshold,
                                  base_version=edit.base_version, others_allowed=others_allowed)
    except VersionConflict as conflict:
        return _after_conflict(service, session, edit, annotator, conflict)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    message = (f"Case #{correction.case_id} accepted as predicted (threshold {edit.threshold:.2f}) by "
               f"**{correction.annotator}**: v{correction.version}.")
    return _after_save(service, session, edit, correction, message)


def skip(service: AnnotationService, session: Optional[EditorSession], annotator: Optional[str], *,
         discard_saved: bool = False, editor_value=None, others_allowed: bool = True) -> Screen:
    """Take the open case out of the queue without saving a mask; the editor closes it (a draft stays).

    A case with a saved version is skipped only with ``discard_saved`` (the *Skip anyway* button):
    skipping takes that version out of export and retraining, so the first press asks."""
    if session is None:
        return _no_session()
    try:
        _keep_draft(service, session, editor_value, annotator)
        outcome = service.skip(session.case_id, annotator=annotator, discard_saved=bool(discard_saved),
                               others_allowed=others_allowed)
    except ConfirmationNeeded as asked:
        saved = f"v{asked.version} ({asked.status}, saved by {asked.annotator})"
        return Screen(skip_confirm=True, status=error_text(
            f"Not skipped: case #{session.case_id} has {saved}. Skipping it takes that version out of export and "
            "retraining (it stays in the case's history). Press **Skip anyway** to skip it, or keep it and "
            "take the next case."))
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    message = (f"Case #{session.case_id} passed on: the other raters still label it." if outcome == "declined"
               else f"Case #{session.case_id} skipped.")
    return Screen(session=None, editor=closed_value(message + " Take the next case or segment an image."),
                  status=message, queue=queue_text(service), history="", numbers="", skip_confirm=False)


def stayed(session: Optional[EditorSession]) -> Screen:
    """The annotator chose to stay on a case with unsaved edits."""
    where = f"case #{session.case_id}" if session else "the open case"
    return Screen(status=f"Stayed on {where}: save, accept or undo your edits first.")


# ------------------------------------------------------------------------------ review queue


def prediction_age(service: AnnotationService, model_id: str) -> str:
    """A note when the prediction shown is not the current version's (it waits to be re-scored)."""
    current = service.store.current_model_id()
    if current is None or model_id == current:
        return ""
    return f" (an earlier version; the current `{current}` has not re-scored it yet)"


def next_case(service: AnnotationService, acquisition: str, annotator: Optional[str], editor_value=None,
              session: Optional[EditorSession] = None) -> Screen:
    """Open the unreviewed case ranked first by ``acquisition`` and lease it to ``annotator``.

    With a case open (``session``), its unsaved edits are kept as the annotator's draft first and the
    next case is another one: that case may still rank first, but *Next* means moving on."""
    try:
        _keep_draft(service, session, editor_value, annotator)
        view = service.next_case(annotator, acquisition=acquisition,
                                 skip_case_id=None if session is None else session.case_id)
        if view is None:
            if session is None:
                return Screen(status="No unreviewed cases left in the queue.", queue=queue_text(service))
            # Asking cleared the lease on the open case; it stays open, so it stays reserved.
            if service.store.get_case(session.case_id).status == "unreviewed":
                service.store.claim(session.case_id, annotator=annotator)
            return Screen(status=f"No other unreviewed case in the queue: case #{session.case_id} stays open.",
                          queue=queue_text(service))
        screen = open_case(service, view.case.id, view.prediction_id, annotator, **_view_of(editor_value))
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    if screen.session is None:
        return screen
    screen.prompt = view.case.prompt
    model_id = _prediction_facts(service, view.prediction_id)["model_id"] if view.case.is_volume \
        else view.prediction.model_id
    where = (f", opened on slice {screen.session.slice_index + 1} of {screen.session.depth} (the model's most "
             "uncertain)") if view.case.is_volume else ""
    screen.status = (f"Case #{view.case.id} (**{view.case.original_name}**), ranked by "
                     f"{acquisition_label(acquisition)}; predicted by `{model_id}`"
                     f"{prediction_age(service, model_id)}; prompt: “{view.case.prompt}”{where}. "
                     f"{screen.editor['start_note']}")
    return screen


def held_by_other(service: AnnotationService, case_id: int, annotator: Optional[str]) -> Optional[str]:
    """Who else holds the case now (a live lease), None when nobody or `annotator` does."""
    holder = service.store.lease_holder(case_id)
    return holder if holder not in (None, annotator) else None


def reopen(service: AnnotationService, case_id, annotator: Optional[str], slice_index=None, *,
           others_allowed: bool = True) -> Screen:
    """Open a stored case again (after a browser reload): its latest prediction, the annotator's draft
    first; a volume on the slice the annotator was on (``slice_index``, kept in the browser).
    ``others_allowed`` False (an annotator's role): a case another person holds now is not reopened."""
    try:
        case_id = int(case_id)
        holder = held_by_other(service, case_id, annotator)
        if holder is not None and not others_allowed:
            return Screen(status=f"Case #{case_id}, open in this browser before, is now held by {holder}. "
                                 "Take the next case.")
        prediction_id = service.store.latest_prediction_id(case_id)
        if prediction_id is None:
            return Screen()
        screen = open_case(service, case_id, prediction_id, annotator, slice_index=slice_index)
    except (TypeError, ValueError, *USER_ERRORS):
        return Screen()
    if screen.session is not None:
        screen.status = screen.editor["start_note"]
    return screen


# ------------------------------------------------------------------------------ volumes


REVIEW_DWELL_MS = 700        # on screen this long, a slice counts as reviewed (mask_editor.js; module docstring)
# Annotators' volume work and predicted volume masks (decoding one is the slow part of serving a slice)
# are held between requests within their shares of MEDCLIPSEG_CACHE_MB (settings.CACHE_SHARES).


@dataclass
class VolumeWork:
    """One annotator's work on one volume case, held by the server between the editor's requests and
    kept in the store as their draft.

    ``mosaic`` is the volume mask as the store keeps it (slices stacked). It is the annotator's on the
    reviewed slices; the others show the start: the slices of the version the work builds on, or, when
    it ``follows_model``, the model's mask at ``threshold`` (computed when needed, so moving the mask
    threshold moves every slice nobody reviewed). ``revisions`` holds, per slice, the editor revision
    stored from the page ``session``, so that a request arriving late cannot put an older mask back."""

    case_id: int
    annotator: str
    prediction_id: int
    mosaic: np.ndarray
    reviewed: set
    base_version: Optional[int]
    follows_model: bool
    threshold: float
    latest_version: Optional[int]      # the case's latest version when this was read (a newer save: read again)
    keep_older_draft: bool = False     # an older draft waits for *Use my draft*: looking around does not replace it
    session: str = ""
    revisions: dict = field(default_factory=dict)
    provenance: Optional[list] = None  # per slice: drawn / interpolated / propagated / predicted
    edits: Optional[VolumeMaskEdits] = None   # the history of steps (made at the first edit)


def _work_bytes(work: VolumeWork) -> int:
    """What one annotator's volume work holds: its mask (the edits' mask is a view of it) and the steps
    of its undo history."""
    return size_of(work.mosaic) + (0 if work.edits is None else work.edits.history_nbytes)


class _VolumeMemory:
    """What the server holds of volumes between requests, per store: the annotators' work (with a lock
    each, so that the editor's slice requests and Gradio's events never write a draft at the same time)
    and the predicted volume masks."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict = {}
        self._work = ByteCache(budget_of("volume_work"), sizer=_work_bytes)
        self._predicted = ByteCache(budget_of("volume_masks"))

    def lock(self, key: tuple) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    def work(self, key: tuple) -> Optional[VolumeWork]:
        return self._work.get(key)

    def keep(self, key: tuple, work: VolumeWork) -> None:
        self._work.put(key, work)  # work over the budget is still the annotator's draft in the store

    def forget(self, key: tuple) -> None:
        self._work.pop(key)

    def predicted(self, service: AnnotationService, prediction_id: int) -> np.ndarray:
        """The prediction's own volume mask (read-only; predictions never change once stored)."""
        key = (service.store.location.label, int(prediction_id))
        mask = self._predicted.get(key)
        if mask is not None:
            return mask
        mask = np.asarray(service.store.load_mask(service.store.prediction_row(prediction_id)["mask_path"]), bool)
        mask.setflags(write=False)
        self._predicted.put(key, mask)
        return mask


VOLUMES = _VolumeMemory()


def _work_key(service: AnnotationService, case_id: int, annotator: Optional[str]) -> tuple:
    return service.store.location.label, int(case_id), annotator or ""


def _rows(geometry, index: int) -> slice:
    """The rows of slice ``index`` in a volume mask (slices stacked top to bottom)."""
    return slice(int(index) * geometry.rows, (int(index) + 1) * geometry.rows)


@dataclass
class SliceMaps:
    """One slice of a volume prediction: the stored (8-bit) maps and the model's own mask."""

    probability: np.ndarray      # float32
    entropy: np.ndarray          # float32, nats
    predicted: np.ndarray        # the model's mask at its own threshold
    threshold: float             # the prediction's threshold

    def model(self, threshold: float) -> np.ndarray:
        """The model's mask at ``threshold`` as the store compares a save with it: its own mask at its
        own threshold, else the stored probability above the threshold (in float32, as numpy compares)."""
        if float(threshold) == self.threshold:
            return self.predicted
        return self.probability > np.float32(threshold)

    def editor_probability(self) -> np.ndarray:
        """The stored probability, moved to the threshold's edge where it disagrees with the model's own
        mask (never by more than the 8-bit step, 1/255), so that the editor, thresholding it, draws the
        model's own mask at the prediction's threshold and the stored probability's mask at the slider's
        other steps (0.01 apart): ``model`` in both cases."""
        limit = np.float32(self.threshold)
        out = self.probability.copy()
        out[self.predicted & ~(out > limit)] = np.nextafter(limit, np.float32(1))
        out[~self.predicted & (out > limit)] = limit
        return out


def slice_maps(service: AnnotationService, geometry, prediction_id: int, index: int) -> SliceMaps:
    """Slice ``index`` of a volume prediction, read member by member (never the whole volume of maps)."""
    row = service.store.prediction_row(prediction_id)
    maps_path = Path(service.store.files_dir) / row["maps_path"]
    predicted = volume_files.mosaic_slice(VOLUMES.predicted(service, prediction_id), geometry, index)
    return SliceMaps(probability=volume_files.read_map_slice(maps_path, "probability", index),
                     entropy=volume_files.read_map_slice(maps_path, "entropy", index),
                     predicted=np.asarray(predicted, bool), threshold=float(row["threshold"]))


def model_mosaic(service: AnnotationService, prediction_id: int, threshold: float) -> np.ndarray:
    """The model's volume mask at ``threshold``: what the store compares a volume save with."""
    row = service.store.prediction_row(prediction_id)
    if float(threshold) == float(row["threshold"]):
        return VOLUMES.predicted(service, prediction_id)
    return volume_files.mosaic(service.store.prediction_maps_volume(prediction_id) > np.float32(threshold))


def composed_mask(service: AnnotationService, work: VolumeWork) -> np.ndarray:
    """The whole volume mask of ``work``: its reviewed slices, and the start on the others."""
    if not work.follows_model:
        return np.array(work.mosaic, bool)
    out = np.array(model_mosaic(service, work.prediction_id, work.threshold), bool)
    geometry = service.store.volume_geometry(work.case_id)
    for index in work.reviewed:
        out[_rows(geometry, index)] = work.mosaic[_rows(geometry, index)]
    return out


def _version_reviewed(row: dict) -> set:
    return {int(i) for i in json.loads(row.get("reviewed_slices") or "[]")}


def _open_work(service: AnnotationService, case, prediction_id: int, annotator: Optional[str], *,
               threshold: Optional[float] = None, use_stale_draft: bool = False, base_version=KEEP) -> tuple:
    """(work, start, draft, latest version row, stale) for an annotator opening a volume case: their
    draft, else the latest saved version, else the model's mask (as ``open_case`` chooses for an image).

    ``base_version`` (the version the editor names; given when the server rebuilds work it no longer
    holds) takes the draft only when it builds on that version."""
    store = service.store
    own_threshold = float(store.prediction_row(prediction_id)["threshold"])
    latest = service.latest_correction(case.id, annotator)
    latest_version = None if latest is None else int(latest["version"])
    draft = service.draft(case.id, annotator) if annotator else None
    stale = draft is not None and latest is not None and draft.base_version != latest_version
    if base_version is KEEP:
        take_draft = draft is not None and (not stale or use_stale_draft)
    else:
        take_draft = draft is not None and draft.base_version == base_version
    common = dict(case_id=int(case.id), annotator=annotator or "", prediction_id=int(prediction_id),
                  latest_version=latest_version)
    depth = store.volume_geometry(case.id).depth
    if take_draft:
        reviewed = {int(i) for i in draft.reviewed_slices}
        draft_threshold = own_threshold if draft.threshold is None else float(draft.threshold)
        work = VolumeWork(mosaic=np.array(draft.mask, bool), reviewed=reviewed,
                          base_version=latest_version if stale else draft.base_version,
                          follows_model=draft.base_version is None and _unreviewed_are_the_models(
                              service, draft.mask, reviewed, prediction_id, draft_threshold,
                              store.volume_geometry(case.id).rows),
                          threshold=own_threshold if draft.threshold is None else float(draft.threshold),
                          provenance=_provenance_of(draft.slice_provenance, depth), **common)
        start = "draft"
    elif latest is not None:
        work = VolumeWork(mosaic=np.array(store.load_mask(latest["mask_path"]), bool),
                          reviewed=_version_reviewed(latest), base_version=latest_version, follows_model=False,
                          threshold=own_threshold if latest.get("threshold") is None else float(latest["threshold"]),
                          keep_older_draft=draft is not None,
                          provenance=_provenance_of(latest.get("slice_provenance"), depth), **common)
        start = "version"
    else:
        work = VolumeWork(mosaic=np.array(VOLUMES.predicted(service, prediction_id), bool), reviewed=set(),
                          base_version=None, follows_model=True,
                          threshold=own_threshold if threshold is None else float(threshold),
                          provenance=volume_tools.empty_provenance(depth), **common)
        start = "prediction"
    if base_version is not KEEP:
        work.base_version = base_version  # a save must still be checked against the version the editor showed
    return work, start, draft, latest, stale


def _unreviewed_are_the_models(service: AnnotationService, mosaic: np.ndarray, reviewed: set, prediction_id: int,
                               threshold: float, rows_per_slice: int) -> bool:
    """True when every slice of ``mosaic`` nobody reviewed is the model's at ``threshold``: a draft
    that may follow the model (a volume tool writes unreviewed slices: that draft no longer does)."""
    model = model_mosaic(service, prediction_id, threshold)
    differs = np.asarray(mosaic, bool) != np.asarray(model, bool)
    if not differs.any():
        return True
    rows = np.flatnonzero(differs.any(axis=1))
    return all(int(row) // rows_per_slice in reviewed for row in rows)


def _provenance_of(record, depth: int) -> list:
    """The per-slice provenance of a draft's or version's record (JSON text or a dict; none: predicted)."""
    if isinstance(record, str):
        record = json.loads(record or "null")
    try:
        return volume_tools.provenance_from_record(record, depth)
    except ValueError:
        return volume_tools.empty_provenance(depth)


def slice_provenance(work: VolumeWork) -> list:
    """The work's provenance per slice (the history's once it has one)."""
    return list(work.edits.provenance if work.edits is not None else work.provenance)


def _edits_of(work: VolumeWork, geometry) -> VolumeMaskEdits:
    """The work's step history, over a view of its mosaic: every step writes into the work."""
    if work.edits is None:
        work.edits = VolumeMaskEdits(_volume_of(work, geometry), spacing=geometry.display_spacing,
                                     provenance=work.provenance)
    return work.edits


def _work_for(service: AnnotationService, case_id: int, annotator: Optional[str], edit: EditorEdit) -> VolumeWork:
    """The annotator's work on the volume the editor shows (held, or read again from the store when the
    server no longer holds it or a save happened since). Call with the work's lock held."""
    key = _work_key(service, case_id, annotator)
    latest = service.latest_correction(case_id, annotator)
    latest_version = None if latest is None else int(latest["version"])
    work = VOLUMES.work(key)
    if work is not None and work.latest_version == latest_version and work.prediction_id == edit.prediction_id \
            and work.base_version == edit.base_version:
        return work
    work = _open_work(service, service.store.get_case(case_id), edit.prediction_id, annotator,
                      threshold=edit.threshold, base_version=edit.base_version)[0]
    VOLUMES.keep(key, work)
    return work


def _take_editor_state(work: VolumeWork, geometry, state: VolumeEdit, *, on_screen_reviewed: bool = False,
                       service: Optional[AnnotationService] = None, edited: Optional[set] = None) -> bool:
    """Put the editor's slices into ``work``: the edits of slices it left (``pending``), the slice on
    screen once it counts as reviewed, and the slices painted in other planes (``plane_edits``, which
    need ``service``), all in the order of their revisions. True when the draft must be written again.
    ``edited`` collects the acquisition slices that plane edits changed."""
    edit = state.edit
    if state.session != work.session:  # another page (a reload): its revisions count from zero
        work.session, work.revisions = state.session, {}
    reviewed = set(state.reviewed)
    on_acquisition = not state.plane or state.plane == geometry.plane
    if on_screen_reviewed and on_acquisition:
        reviewed.add(state.index)
    masks = [(item.revision, 0, item) for item in state.pending]
    if state.index in reviewed and on_acquisition:
        masks.append((edit.revision, 0, SliceEdit(index=state.index, revision=edit.revision, mask=edit.mask)))
    masks += [(item.revision, 1, item) for item in state.plane_edits]
    # The threshold first: slices that follow the model, filled in by a plane edit, take the one in use.
    moved = float(edit.threshold) != work.threshold
    work.threshold = float(edit.threshold)
    changed = False
    for _, _, item in sorted(masks, key=lambda entry: entry[:2]):
        if isinstance(item, PlaneSliceEdit):
            if service is None:
                raise EditorError("Edits of other planes need the store.")
            hit = _apply_plane_edit(service, work, geometry, item)
            changed = changed or bool(hit)
            if edited is not None:
                edited |= hit
            continue
        index, revision, mask = item.index, item.revision, item.mask
        if work.revisions.get(index, -1) > revision:
            continue  # a newer mask of this slice is stored already: this request was overtaken
        work.revisions[index] = revision
        rows = _rows(geometry, index)
        if work.follows_model and index not in work.reviewed and service is not None:
            # The slice showed the model at the threshold in use: that is what an undo goes back to.
            loaded = loaded_volume(service.store, work.case_id, work.prediction_id)
            work.mosaic[rows] = _model_slices(service, work, loaded, [index])[0]
        reviewed.add(index)
        differs = not np.array_equal(work.mosaic[rows], mask)
        if differs or (item.drawn and slice_provenance(work)[index] != volume_tools.DRAWN):
            # A slice the annotator changed is a drawn one, and a step of the same history as the tools.
            _edits_of(work, geometry).set_slices([index], mask[None])
            changed = True
    grew = not reviewed <= work.reviewed
    work.reviewed |= reviewed
    if work.keep_older_draft and not changed:
        return False
    return changed or grew or (moved and work.follows_model)


def _write_draft(service: AnnotationService, work: VolumeWork) -> None:
    service.save_draft(work.case_id, work.annotator, work.mosaic, prediction_id=work.prediction_id,
                       base_version=work.base_version, threshold=work.threshold,
                       reviewed_slices=sorted(work.reviewed),
                       slice_provenance=volume_tools.provenance_record(slice_provenance(work)))
    work.keep_older_draft = False


def _keep_volume_work(service: AnnotationService, session: EditorSession, state: VolumeEdit,
                      annotator: Optional[str]) -> Optional[VolumeWork]:
    """Store the editor's volume state as the annotator's draft (nothing without a name)."""
    if not annotator:
        return None
    geometry = service.store.volume_geometry(session.case_id)
    with VOLUMES.lock(_work_key(service, session.case_id, annotator)):
        work = _work_for(service, session.case_id, annotator, state.edit)
        if _take_editor_state(work, geometry, state, service=service):
            _write_draft(service, work)
        return work


def _read_volume_value(service: AnnotationService, session: EditorSession, editor_value) -> VolumeEdit:
    geometry = service.store.volume_geometry(session.case_id)
    return read_volume_edit(editor_value, case_id=session.case_id, shape=session.shape, depth=session.depth,
                            plane_shapes=plane_shapes(geometry))


def window_presets(geometry) -> list:
    """(name, center, width) windows the editor offers: the one the model saw, then CT's standard
    windows in Hounsfield units, or for other scans (no standard units) a wider and a narrower one."""
    center, width = (float(v) for v in geometry.window)
    presets = [("As segmented", center, width)]
    if str(geometry.modality or "").upper() == "CT":
        presets += [(name, float(c), float(w)) for name, (c, w) in CT_WINDOW_PRESETS.items()]
    else:
        presets += [("Wider", center, width * 2.0), ("Narrower", center, width / 2.0)]
    return presets


def _slice_value(service: AnnotationService, geometry, work: VolumeWork, index: int, threshold: float,
                 window: tuple) -> dict:
    from medclipseg.io.volumes import window_to_uint8

    grey = window_to_uint8(service.store.volume_slice(work.case_id, index), window)
    maps = slice_maps(service, geometry, work.prediction_id, index)
    follows = work.follows_model and index not in work.reviewed
    start = maps.model(threshold) if follows else work.mosaic[_rows(geometry, index)]
    return slice_payload(index=index, image_rgb=np.repeat(grey[..., None], 3, axis=2),
                         probability=maps.editor_probability(), entropy=maps.entropy, start_mask=np.asarray(start),
                         follows_model=follows, window=window)


def _requested_volume_case(service: AnnotationService, request, what: str, image_note: str,
                           annotator: Optional[str] = None, others_allowed: bool = True):
    """The volume case an editor's ``what`` request ("slice", "plane", "tool") names; refused in words
    (``image_note`` ends the refusal for an image case, and, ``others_allowed`` False, for a case another
    person than `annotator` holds)."""
    if not isinstance(request, dict):
        raise EditorError(f"The editor's {what} request is not one.")
    try:
        case_id = int(request.get("case_id"))
    except (TypeError, ValueError):
        raise EditorError(f"The editor's {what} request names no case.") from None
    case = service.store.get_case(case_id)
    if not case.is_volume:
        raise EditorError(f"Case #{case.id} is an image, not a volume{image_note}")
    holder = held_by_other(service, case.id, annotator)
    if holder is not None and not others_allowed:
        raise EditorError(f"Case #{case.id} is held by {holder} now; only they, a reviewer or an admin may work on "
                          "it. Take the next case.")
    return case


def volume_slices(service: AnnotationService, request, annotator: Optional[str], *,
                  others_allowed: bool = True) -> dict:
    """The editor's slice request (its state, the slices it wants, the window): the slice edits it
    carries are put into the annotator's draft, then the slices it asked for are answered.

    Answer: ``{"kind": "slices", "case_id", "session", "slices": [slice_payload, ...], "stored":
    [[slice, revision], ...] (the edits now kept), "reviewed": [...]}``, or ``{"kind": "error",
    "message"}`` in words. Called by the editor without Gradio's queue (a server function), so a slice
    is on screen in a few tens of milliseconds; the work's lock orders it with the queued events."""
    try:
        case = _requested_volume_case(service, request, "slice", "; it has no slices.", annotator, others_allowed)
        geometry = service.store.volume_geometry(case.id)
        asked = read_slice_request(request, case_id=case.id, shape=(geometry.rows, geometry.columns),
                                   depth=geometry.depth, plane_shapes=plane_shapes(geometry))
        state = asked.state
        window = asked.window or tuple(geometry.window)
        stored = []
        with VOLUMES.lock(_work_key(service, case.id, annotator)):
            work = _work_for(service, case.id, annotator, state.edit)
            if annotator:
                if _take_editor_state(work, geometry, state, service=service):
                    _write_draft(service, work)
                stored = [[item.index, item.revision] for item in state.pending]
            slices = [_slice_value(service, geometry, work, index, state.edit.threshold, window)
                      for index in asked.wanted]
            reviewed = sorted(work.reviewed)
            provenance = volume_tools.provenance_record(slice_provenance(work))
            progress = volume_progress_of(work)
    except USER_ERRORS as exc:
        return {"kind": "error", "message": str(exc)}
    return {"kind": "slices", "case_id": case.id, "session": state.session, "slices": slices, "stored": stored,
            "reviewed": reviewed, "provenance": provenance, "progress": progress}


# Three planes. The work's mosaic reshaped to [slice, row, column] is a view of it, and
# PlaneGeometry.view of that is a view again: a plane slice painted in the editor is assigned into it.


def plane_shapes(geometry) -> dict:
    """(slices, rows, columns) of each plane's view of a volume."""
    views = PlaneGeometry.of(geometry)
    return {name: views.shape(name) for name in PLANES}


def plane_axes(views: PlaneGeometry, plane: str) -> list:
    """For each axis of ``plane``'s view (slice, row, column): (stored axis, runs the other way), read
    from where ``PlaneGeometry.point`` sends the first voxel and its stored neighbours."""
    shape = views.stored_shape
    origin = views.point((0, 0, 0), views.stored_plane, plane)
    out = [None, None, None]
    for axis in range(3):
        if shape[axis] < 2:
            continue
        step = [0, 0, 0]
        step[axis] = 1
        moved = views.point(tuple(step), views.stored_plane, plane)
        target = next(k for k in range(3) if moved[k] != origin[k])
        out[target] = (axis, moved[target] < origin[target])
    # Axes one voxel long map to whichever view axes are left (their direction does not matter).
    spare = [axis for axis in range(3) if shape[axis] < 2]
    return [item if item is not None else (spare.pop(0), False) for item in out]


def _volume_of(work: VolumeWork, geometry) -> np.ndarray:
    """The work's mask as [slice, row, column]: a view of its mosaic, so writes go into the work."""
    return work.mosaic.reshape(geometry.depth, geometry.rows, geometry.columns)


def _model_slices(service: AnnotationService, work: VolumeWork, loaded, indices) -> np.ndarray:
    """The model's mask on acquisition slices ``indices`` at the work's threshold, as ``slice_maps``
    gives it (its own mask at its own threshold, else the stored probability above the threshold)."""
    geometry = loaded.geometry
    own = float(service.store.prediction_row(work.prediction_id)["threshold"])
    indices = np.asarray(list(indices), dtype=np.int64)
    if work.threshold == own:
        predicted = volume_files.unmosaic(VOLUMES.predicted(service, work.prediction_id), geometry)
        return np.asarray(predicted[indices], bool)
    probability = volume_files.dequantise("probability", loaded.probability_map().values[indices])
    return probability > np.float32(work.threshold)


def _along(views: PlaneGeometry, plane: str, index: int, per_slice: np.ndarray) -> np.ndarray:
    """A value per acquisition slice spread over slice ``index`` of ``plane``: for each of its pixels,
    the value of the acquisition slice the pixel lies in."""
    spread = np.broadcast_to(np.asarray(per_slice)[:, None, None], views.stored_shape)
    return np.ascontiguousarray(views.view(spread, plane)[index])


def _plane_maps(service: AnnotationService, work: VolumeWork, loaded, plane: str, index: int, window) -> tuple:
    """(PlaneSlice, SliceMaps, start mask, follows the model) of slice ``index`` of ``plane``: the work's
    mask there, with the model's at the threshold on acquisition slices nobody reviewed (when it follows
    the model)."""
    geometry, views = loaded.geometry, loaded.planes
    volume = _volume_of(work, geometry)
    shown = plane_slice(loaded, plane, index, volume, window)
    predicted = volume_files.unmosaic(VOLUMES.predicted(service, work.prediction_id), geometry)
    own = float(service.store.prediction_row(work.prediction_id)["threshold"])
    maps = SliceMaps(probability=shown.probability, entropy=shown.entropy,
                     predicted=np.ascontiguousarray(views.view(predicted, plane)[index]), threshold=own)
    if not work.follows_model:
        return shown, maps, shown.mask, False
    reviewed = np.zeros(geometry.depth, bool)
    reviewed[sorted(work.reviewed)] = True
    from_work = _along(views, plane, index, reviewed)
    start = np.where(from_work, shown.mask, maps.model(work.threshold))
    return shown, maps, start, not from_work.any()


def _apply_plane_edit(service: AnnotationService, work: VolumeWork, geometry, item: PlaneSliceEdit) -> set:
    """Write a slice painted in another plane into the work's 3-D mask. Only the acquisition slices
    whose voxels it changes take it (each unless a newer edit of that slice is stored: the last write
    wins per slice, by revision); they become reviewed, keeping the rest of their mask (the model's
    when they followed it). Returns those slices."""
    loaded = loaded_volume(service.store, work.case_id, work.prediction_id)
    views = loaded.planes
    if item.mask.shape != views.shape(item.plane)[1:]:
        raise EditorError(f"The editor's {item.plane} mask does not have that plane's size.")
    _, _, start, _ = _plane_maps(service, work, loaded, item.plane, item.index, geometry.window)
    crossing = _along(views, item.plane, item.index, np.arange(geometry.depth))
    differs = item.mask != start
    touched = [int(s) for s in np.unique(crossing[differs]) if work.revisions.get(int(s), -1) <= item.revision]
    if not touched:
        return set()
    volume = _volume_of(work, geometry)
    filled = [s for s in touched if work.follows_model and s not in work.reviewed]
    if filled:
        volume[filled] = _model_slices(service, work, loaded, filled)
    before = volume[touched].copy()
    write = differs & np.isin(crossing, touched)
    target = views.view(volume, item.plane)[item.index]
    target[write] = item.mask[write]
    # Written through the plane's view, then made one step of the history (those slices become drawn).
    after = volume[touched].copy()
    volume[touched] = before
    _edits_of(work, geometry).set_slices(touched, after, message=f"Painted {item.plane} slice {item.index + 1}.")
    for s in touched:
        work.revisions[s] = item.revision
    work.reviewed.update(touched)
    return set(touched)


def _plane_value(service: AnnotationService, geometry, work: VolumeWork, plane: str, index: int, window) -> dict:
    """Slice ``index`` of ``plane`` for the editor (the acquisition plane's as ``volume_slices`` sends it)."""
    views = PlaneGeometry.of(geometry)
    if plane == geometry.plane:
        value = _slice_value(service, geometry, work, index, work.threshold, window)
        value.update(plane=plane, spacing=[float(v) for v in views.spacing(plane)[1:]])
        return value
    loaded = loaded_volume(service.store, work.case_id, work.prediction_id)
    shown, maps, start, follows = _plane_maps(service, work, loaded, plane, index, window)
    return plane_slice_payload(plane=plane, spacing=shown.spacing, index=index, image_rgb=shown.image_rgb,
                               probability=maps.editor_probability(), entropy=maps.entropy, start_mask=start,
                               follows_model=follows, window=window)


def plane_strip_values(service: AnnotationService, work: VolumeWork, geometry, plane: str) -> list:
    """The per-slice uncertainty strip of ``plane``: the prediction's band entropy along the acquisition
    plane (as the slice bar shows it), the mean entropy of each slice in the other planes."""
    if plane == geometry.plane:
        return list(service.store.slice_scores(work.prediction_id).get("band_entropy", np.zeros(geometry.depth)))
    return plane_strip(loaded_volume(service.store, work.case_id, work.prediction_id), plane)


def volume_plane(service: AnnotationService, request, annotator: Optional[str], *,
                 others_allowed: bool = True) -> dict:
    """The editor's plane request: its state (the edits it carries, of any plane, are put into the
    annotator's draft first, as ``volume_slices`` does), the (plane, slice) pairs it wants, the window,
    and the planes whose strip it needs.

    Answer: ``{"kind": "planes", "case_id", "session", "slices": [plane_slice_payload, ...], "strips":
    {plane: {"strip", "strip_nats"}}, "stored": [[slice, revision], ...], "stored_planes": [[plane, slice,
    revision], ...], "reviewed": [...], "edited": [...]}`` (``edited``: acquisition slices the plane edits
    changed), or ``{"kind": "error", "message"}``."""
    try:
        case = _requested_volume_case(service, request, "plane", "; it has no planes.", annotator, others_allowed)
        geometry = service.store.volume_geometry(case.id)
        asked = read_plane_request(request, case_id=case.id, shape=(geometry.rows, geometry.columns),
                                   depth=geometry.depth, plane_shapes=plane_shapes(geometry))
        state = asked.state
        window = asked.window or tuple(geometry.window)
        stored, stored_planes, edited = [], [], set()
        with VOLUMES.lock(_work_key(service, case.id, annotator)):
            work = _work_for(service, case.id, annotator, state.edit)
            if annotator:
                if _take_editor_state(work, geometry, state, service=service, edited=edited):
                    _write_draft(service, work)
                stored = [[item.index, item.revision] for item in state.pending]
                stored_planes = [[item.plane, item.index, item.revision] for item in state.plane_edits]
            slices = [_plane_value(service, geometry, work, plane, index, window) for plane, index in asked.wanted]
            strips = {}
            for plane in asked.strips:
                scaled, nats = scaled_strip(plane_strip_values(service, work, geometry, plane))
                strips[plane] = {"strip": scaled, "strip_nats": nats}
            reviewed = sorted(work.reviewed)
            provenance = volume_tools.provenance_record(slice_provenance(work))
    except USER_ERRORS as exc:
        return {"kind": "error", "message": str(exc)}
    return {"kind": "planes", "case_id": case.id, "session": state.session, "slices": slices, "strips": strips,
            "stored": stored, "stored_planes": stored_planes, "reviewed": reviewed, "edited": sorted(edited),
            "provenance": provenance}


# Volume tools (interpolation, propagation, 3-D clean-up, the 3-D threshold brush, undo/redo). The
# work holds one history (``VolumeMaskEdits`` over its mosaic) for every step the server makes: the
# slice edits the editor sends (one step per slice, that slice drawn) and the tools. The editor keeps
# its own undo only for the strokes on the slice on screen since it was shown or since the last step:
# before a tool it hands that slice over (a step here) and forgets its strokes, so its Undo undoes
# its own strokes first and then asks the server to undo its latest step: always the latest thing done.

TOOL_NAME_NEEDED = "Type your name in Annotator to use the volume tools: they change your draft."


def _tool_locked_slices(service: AnnotationService, work: VolumeWork) -> list:
    """Slices other annotators saved after the version the work corrects: propagation leaves them."""
    return slices_saved_since(service, work.case_id, work.base_version, work.annotator)


def volume_progress_of(work: VolumeWork) -> dict:
    """The progress bar's numbers: slices drawn / interpolated / propagated / predicted, and reviewed."""
    return volume_progress(slice_provenance(work), work.reviewed)


def _stop_words(stop) -> dict:
    return {"slice": None if stop.slice is None else int(stop.slice), "direction": "up" if stop.direction > 0 else "down",
            "code": stop.code, "reason": stop.reason}


def volume_tool(service: AnnotationService, request, annotator: Optional[str], *,
                others_allowed: bool = True) -> dict:
    """The editor's tool request: its state (the slice edits it carries are put into the work first,
    as ``volume_slices`` does), ``tool`` and ``params`` (``volume_editing.apply_tool``), and ``wanted``:
    slices it shows, sent back when the step changed them.

    Before the first tool a work that follows the model takes the model's mask at the threshold in use
    on every slice nobody reviewed (the slices stop following the threshold slider). Answer:
    ``{"kind": "tool", "tool", "message", "changed", "stops": [{"slice", "direction", "code", "reason"}],
    "review", "locked", "provenance" (record), "progress", "can_undo", "can_redo", "slices", "stored",
    "stored_planes", "reviewed"}``; a refused step ``{"kind": "refused", "message", ...}`` with the mask
    unchanged; ``{"kind": "error", "message"}`` for a request that is not one."""
    try:
        case = _requested_volume_case(service, request, "tool", ": its tools are in the editor.", annotator, others_allowed)
        if not annotator:
            raise EditorError(TOOL_NAME_NEEDED)
        geometry = service.store.volume_geometry(case.id)
        shapes = plane_shapes(geometry)
        state = read_volume_edit(dict(request, kind="edit"), case_id=case.id, shape=(geometry.rows, geometry.columns),
                                 depth=geometry.depth, plane_shapes=shapes)
        tool = request.get("tool")
        params = request.get("params") or {}
        if not isinstance(params, dict):
            raise EditorError("The tool's settings are not a mapping of names to values.")
        wanted = request.get("wanted") or []
        if not isinstance(wanted, (list, tuple)) or len(wanted) > MAX_SLICES_PER_TOOL_ANSWER:
            raise EditorError("The editor sent no usable list of slices it shows.")
        wanted = [int(i) for i in wanted if isinstance(i, int) and 0 <= i < geometry.depth]
        window = read_window(request.get("window")) or tuple(geometry.window)
        with VOLUMES.lock(_work_key(service, case.id, annotator)):
            work = _work_for(service, case.id, annotator, state.edit)
            edited = set()
            took = _take_editor_state(work, geometry, state, service=service, edited=edited)
            stored = [[item.index, item.revision] for item in state.pending]
            stored_planes = [[item.plane, item.index, item.revision] for item in state.plane_edits]
            if work.follows_model and tool not in ("undo", "redo"):
                work.mosaic[...] = composed_mask(service, work)
                work.follows_model = False
            edits = _edits_of(work, geometry)
            locked = _tool_locked_slices(service, work)
            loaded = loaded_volume(service.store, work.case_id, work.prediction_id)
            try:
                outcome = apply_tool(edits, tool, params, probability=loaded.probability_map(),
                                     entropy=loaded.entropy_map(), threshold=work.threshold, locked=locked)
            except EditRefused as refused:
                if took:
                    _write_draft(service, work)
                return {"kind": "refused", "case_id": case.id, "session": state.session, "tool": tool,
                        "message": str(refused), "stored": stored, "stored_planes": stored_planes,
                        "reviewed": sorted(work.reviewed), "progress": volume_progress_of(work),
                        "provenance": volume_tools.provenance_record(slice_provenance(work)),
                        "can_undo": edits.can_undo, "can_redo": edits.can_redo, "changed": sorted(edited)}
            drawn = {i for i, value in enumerate(edits.provenance) if value == volume_tools.DRAWN}
            work.reviewed |= drawn & set(outcome.changed)
            # The step's result is the newest revision of the slices it changed (the editor counts on
            # from it): a request sent before it cannot put an older mask back.
            for index in outcome.changed:
                work.revisions[index] = max(work.revisions.get(index, -1), state.edit.revision + 1)
            _write_draft(service, work)
            changed = sorted(set(outcome.changed) | edited)
            slices = [_slice_value(service, geometry, work, index, work.threshold, window)
                      for index in wanted if index in changed]
            message = outcome.message
            if tool == "propagate" and locked:
                message += (f" Left {_slice_range_words(locked)}: saved by another annotator since the version you "
                            "correct.")
            answer = {"kind": "tool", "case_id": case.id, "session": state.session, "tool": tool, "message": message,
                      "changed": changed, "stops": [_stop_words(stop) for stop in outcome.stops],
                      "review": [int(i) for i in outcome.review], "locked": locked,
                      "provenance": volume_tools.provenance_record(edits.provenance),
                      "progress": volume_progress_of(work), "can_undo": outcome.can_undo,
                      "can_redo": outcome.can_redo, "slices": slices, "stored": stored,
                      "stored_planes": stored_planes, "reviewed": sorted(work.reviewed)}
    except USER_ERRORS as exc:
        return {"kind": "error", "message": str(exc)}
    return answer


MAX_SLICES_PER_TOOL_ANSWER = 5


def _slice_range_words(indices) -> str:
    indices = sorted(indices)
    return "no slice" if not indices else ("slice " if len(indices) == 1 else "slices ") + slice_list(indices)


def _edited_slices(service: AnnotationService, work: VolumeWork, latest: Optional[dict], geometry) -> list:
    """Reviewed slices whose mask differs from the start the work builds on (the model's mask at the
    threshold, or the latest version)."""
    if not work.reviewed:
        return []
    if work.follows_model:
        base = model_mosaic(service, work.prediction_id, work.threshold)
    elif latest is not None:
        base = service.store.load_mask(latest["mask_path"])
    else:
        return []
    return [index for index in sorted(work.reviewed)
            if not np.array_equal(work.mosaic[_rows(geometry, index)], base[_rows(geometry, index)])]


def _prediction_facts(service: AnnotationService, prediction_id: int) -> dict:
    row = service.store.prediction_row(prediction_id)
    return {"model_id": row["model_id"], "seconds": row["seconds"], "num_samples": row["num_samples"],
            "threshold": float(row["threshold"]),
            "scores": row["scores"] if isinstance(row["scores"], dict) else json.loads(row["scores"] or "{}")}


def _volume_nothing_found(service: AnnotationService, work: VolumeWork, prompt: str) -> str:
    """A sentence when the model's volume mask at the threshold is empty (else "")."""
    if model_mosaic(service, work.prediction_id, work.threshold).any():
        return ""
    highest = float(service.store.prediction_maps_volume(work.prediction_id).max())
    return (f"The model found nothing for “{prompt}” in this volume (no voxel above the threshold "
            f"{work.threshold:.2f}; the highest probability is {highest:.2f}). Draw the structure with the brush "
            "(B) on the slices where it is and save: your corrections teach the model when it is retrained in "
            "the Model tab.")


def open_volume_case(service: AnnotationService, case, prediction_id: int, annotator: Optional[str], *,
                     threshold: Optional[float] = None,
                     uncertainty_threshold: float = DEFAULT_VIEW["uncertainty_threshold"],
                     opacity: float = DEFAULT_VIEW["opacity"], use_stale_draft: bool = False,
                     slice_index: Optional[int] = None) -> Screen:
    """Show a volume case in the editor on ``slice_index`` (default: its start slice, the model's most
    uncertain), starting from the annotator's draft, the latest saved version or the model's mask
    exactly as ``open_case`` does for an image."""
    geometry = service.store.volume_geometry(case.id)
    if geometry.rows * geometry.columns > EDITOR_MAX_PIXELS:
        message = (f"Case #{case.id} has slices of {geometry.columns} x {geometry.rows}, larger than the editor "
                   f"holds ({EDITOR_MAX_PIXELS:,} pixels): correct it through the API (save_correction with a "
                   "NIfTI mask).")
        return Screen(session=None, editor=closed_value(message), status=error_text(message), history="",
                      numbers="", queue=queue_text(service))
    key = _work_key(service, case.id, annotator)
    with VOLUMES.lock(key):  # a step still running (a propagation) ends before the work is read again
        work, start, draft, latest, stale = _open_work(service, case, prediction_id, annotator, threshold=threshold,
                                                       use_stale_draft=use_stale_draft)
        held = VOLUMES.work(key)
        if start == "draft" and held is not None and held.edits is not None \
                and (held.prediction_id, held.base_version, held.latest_version) == \
                (work.prediction_id, work.base_version, work.latest_version) \
                and held.threshold == work.threshold and np.array_equal(held.mosaic, work.mosaic):
            work = held   # the same work as the draft (a reload): its steps stay undoable
        VOLUMES.keep(key, work)
    depth = geometry.depth
    if start == "draft":
        note = (f"Restored your unsaved work on case #{case.id} ({_when(draft.updated_at)}): "
                f"{len(work.reviewed)} of {depth} slices reviewed.")
        if stale:
            note += (f" It began before {version_label(latest, bold=False)}; a save makes v{latest['version'] + 1}, "
                     "replacing it.")
    elif start == "version":
        note = (f"Showing the latest saved version, {version_label(latest, bold=False)} ({len(work.reviewed)} of "
                f"{depth} slices reviewed); a save makes v{latest['version'] + 1}.")
        if stale:
            note += (f" Your unsaved work of {_when(draft.updated_at)} began before it and is kept: *Use my draft* "
                     "puts it back over this version (editing here first replaces that draft).")
    else:
        note = "Showing the model's mask; nothing saved for this case yet."
    found_nothing = _volume_nothing_found(service, work, case.prompt)
    if found_nothing:
        note = f"{found_nothing} {note}"
    index = case.start_slice or 0
    if slice_index is not None:
        try:
            index = min(max(int(slice_index), 0), depth - 1)
        except (TypeError, ValueError):
            pass
    from medclipseg.io.volumes import window_to_uint8

    window = tuple(float(v) for v in geometry.window)
    maps = slice_maps(service, geometry, prediction_id, index)
    follows = work.follows_model and index not in work.reviewed
    start_mask = np.asarray(maps.model(work.threshold) if follows else work.mosaic[_rows(geometry, index)], bool)
    grey = window_to_uint8(service.store.volume_slice(case.id, index), window)
    strip = service.store.slice_scores(prediction_id).get("band_entropy", np.zeros(depth))
    neighbours = [_slice_value(service, geometry, work, other, work.threshold, window)
                  for other in (index - 1, index + 1) if 0 <= other < depth]
    views = PlaneGeometry.of(geometry)
    volume = volume_block(depth=depth, index=index, plane=geometry.plane, spacing=geometry.display_spacing,
                          modality=geometry.modality, strip=strip, reviewed=work.reviewed,
                          edited=_edited_slices(service, work, latest, geometry), windows=window_presets(geometry),
                          window=window, neighbours=neighbours, planes=plane_block(
                              {name: (views.shape(name), views.spacing(name), plane_axes(views, name))
                               for name in PLANES}))
    payload = case_payload(
        case_id=case.id, prediction_id=prediction_id, image_rgb=np.repeat(grey[..., None], 3, axis=2),
        probability=maps.editor_probability(), entropy=maps.entropy, start_mask=start_mask, start=start,
        start_note=note, base_version=work.base_version, threshold=work.threshold,
        uncertainty_threshold=uncertainty_threshold, opacity=opacity,
        title=f"Case #{case.id} · {case.original_name} · “{case.prompt}” · {depth} {geometry.plane} slices",
        volume=volume)
    payload["follows_model"] = follows
    payload["volume"].update(provenance=volume_tools.provenance_record(slice_provenance(work)),
                             progress=volume_progress_of(work),
                             can_undo=work.edits is not None and work.edits.can_undo,
                             can_redo=work.edits is not None and work.edits.can_redo)
    spacing = tuple(float(v) for v in geometry.display_spacing[1:])
    session = EditorSession(case_id=int(case.id), prediction_id=int(prediction_id), name=case.original_name,
                            shape=(geometry.rows, geometry.columns), pixel_spacing=spacing, kind="volume",
                            depth=depth, slice_index=index)
    return Screen(session=session, editor=payload, history=history_markdown(service, case.id),
                  numbers=volume_numbers_text(service, session, index, start_mask, work.threshold,
                                              uncertainty_threshold, reviewed=len(work.reviewed)),
                  queue=queue_text(service), stale_draft=stale and not use_stale_draft, skip_confirm=False)


def volume_numbers_text(service: AnnotationService, session: EditorSession, index: int, mask: np.ndarray,
                        threshold: float, uncertainty_threshold: float, *, reviewed: Optional[int] = None) -> str:
    """The numbers panel of a volume case: the slice on screen, then the volume as the model saw it."""
    geometry = service.store.volume_geometry(session.case_id)
    facts = _prediction_facts(service, session.prediction_id)
    maps = slice_maps(service, geometry, session.prediction_id, index)
    model = maps.model(threshold)
    mask = np.asarray(mask, bool)
    uncertain = maps.entropy >= float(uncertainty_threshold)
    row_mm, column_mm = (float(v) for v in geometry.display_spacing[1:])
    pixel_area = row_mm * column_mm

    def area(count: int) -> str:
        return f"{count:,} px ({100 * count / mask.size:.1f} %), {count * pixel_area:.1f} mm²"

    strip = service.store.slice_scores(session.prediction_id).get("band_entropy")
    scores = facts["scores"]
    case = service.store.get_case(session.case_id)
    rows = [("Slice", f"{index + 1} of {geometry.depth} ({geometry.plane}); the model's most uncertain is "
                      f"{(case.start_slice or 0) + 1}"),
            ("Mask area, this slice", area(int(mask.sum()))),
            (f"Uncertain area, this slice (≥ {float(uncertainty_threshold):.2f} nats)", area(int(uncertain.sum())))]
    if strip is not None and len(strip) == geometry.depth:
        rows.append(("Band entropy, this slice", f"{float(strip[index]):.3f} nats"))
    for key, label in (("band_entropy", "Band entropy, volume"), ("mean_entropy", "Mean entropy, volume")):
        if isinstance(scores.get(key), (int, float)):
            rows.append((label, f"{float(scores[key]):.3f} nats"))
    if reviewed is not None:
        rows.append(("Slices reviewed", f"{reviewed} of {geometry.depth}"))
    spacing = " × ".join(f"{float(v):.2f}" for v in geometry.display_spacing)
    rows.append(("Voxel size (slice × row × column)", f"{spacing} mm, {geometry.modality or 'modality unknown'}"))
    rows.append(("Mask threshold / samples", f"{float(threshold):.2f} / {facts['num_samples']}"))
    seconds = facts["seconds"]
    rows.append(("Model", f"`{facts['model_id']}`" + (f" ({seconds:.1f} s)" if seconds else "")))
    added = int(np.count_nonzero(mask & ~model))
    erased = int(np.count_nonzero(model & ~mask))
    lines = ["| Measure | Value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + (f"\n\n**Case #{session.case_id}** · {session.name} · slice {index + 1}: "
                               f"{added + erased:,} px differ from the model (+{added:,} / −{erased:,})")


def volume_edit_of(service: AnnotationService, session: EditorSession, editor_value,
                   annotator: Optional[str]) -> "tuple[Optional[int], np.ndarray, VolumeWork]":
    """(the version the editor shows, the whole volume mask with the editor's unsaved slices in it, the
    work holding them): what a reviewer approves, edited or not, without saving it first as a version."""
    state = _read_volume_value(service, session, editor_value)
    with VOLUMES.lock(_work_key(service, session.case_id, annotator)):
        geometry = service.store.volume_geometry(session.case_id)
        work = _work_for(service, session.case_id, annotator, state.edit)
        _take_editor_state(work, geometry, state, on_screen_reviewed=True, service=service)
        return state.edit.base_version, composed_mask(service, work), work


def forget_volume_edit(service: AnnotationService, case_id: int, annotator: Optional[str]) -> None:
    """Drop the server's copy of an annotator's volume work (after it was saved or approved)."""
    VOLUMES.forget(_work_key(service, case_id, annotator))


def keep_edit_after_conflict(service: AnnotationService, session: EditorSession, edit, annotator: Optional[str],
                             conflict: VersionConflict, refused: str) -> Screen:
    """A refused decision or save keeps the edit as the person's draft and shows the newer version:
    ``edit`` an EditorEdit of an image, or the VolumeWork of a volume."""
    if isinstance(edit, VolumeWork):
        return _after_volume_conflict(service, session, edit, annotator, conflict, refused)
    return _after_conflict(service, session, edit, annotator, conflict, refused)


def _save_volume(service: AnnotationService, session: EditorSession, editor_value, annotator: str, *,
                 accepting: bool, others_allowed: bool = True) -> Screen:
    """Save (or accept) the whole volume: the annotator's work with the editor's slices in it, the slice
    on screen counted as reviewed. A mask equal to the model's at the threshold is 'accepted'."""
    try:
        state = _read_volume_value(service, session, editor_value)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    edit = state.edit
    key = _work_key(service, session.case_id, annotator)
    with VOLUMES.lock(key):
        try:
            geometry = service.store.volume_geometry(session.case_id)
            work = _work_for(service, session.case_id, annotator, edit)
            _take_editor_state(work, geometry, state, on_screen_reviewed=True, service=service)
            mask = composed_mask(service, work)
            provenance = slice_provenance(work)
            reviewed = sorted(work.reviewed | {i for i, value in enumerate(provenance) if value == volume_tools.DRAWN})
            latest = service.latest_correction(session.case_id, annotator)
            if edit.base_version is not None and latest is not None and int(latest["version"]) == edit.base_version \
                    and set(reviewed) <= _version_reviewed(latest) \
                    and np.array_equal(service.store.load_mask(latest["mask_path"]), mask):
                return Screen(status=f"Nothing saved: the mask and the reviewed slices are those of "
                                     f"v{edit.base_version}, the latest version.")
            edited = not np.array_equal(mask, model_mosaic(service, work.prediction_id, work.threshold))
            correction = service.save(session.case_id, mask if edited else None, annotator=annotator,
                                      status="corrected" if edited else "accepted", prediction_id=work.prediction_id,
                                      threshold=work.threshold, base_version=edit.base_version,
                                      reviewed_slices=reviewed, others_allowed=others_allowed,
                                      slice_provenance=volume_tools.provenance_record(provenance))
        except VersionConflict as conflict:
            return _after_volume_conflict(service, session, work, annotator, conflict)
        except USER_ERRORS as exc:
            return Screen(status=error_text(exc))
        VOLUMES.forget(key)
    depth = geometry.depth
    slices = f"{len(reviewed)} of {depth} slices reviewed" + (f" ({slice_list(reviewed)})" if reviewed else "")
    if not edited:
        message = (f"The volume mask is the model's own at threshold {work.threshold:.2f} (no voxel changed): saved "
                   f"as v{correction.version}, **accepted as predicted**, by **{correction.annotator}**; {slices}.")
        if accepting:
            message = (f"Case #{correction.case_id} accepted as predicted (threshold {work.threshold:.2f}) by "
                       f"**{correction.annotator}**: v{correction.version}; {slices}.")
    else:
        message = (f"Saved correction v{correction.version} of case #{correction.case_id} by "
                   f"**{correction.annotator}**: {correction.pixels_changed:,} voxels differ from the model "
                   f"(+{correction.pixels_added:,} / −{correction.pixels_erased:,}); {slices}"
                   + (f"; replaces v{correction.replaces_version}." if correction.replaces_version else "."))
        if accepting:
            message = ("The mask shown differs from the model's, so *Accept* saved it as a correction, not as "
                       "“accepted as predicted”. " + message)
    return _after_save(service, session, edit, correction, message)


def _after_volume_conflict(service: AnnotationService, session: EditorSession, work: VolumeWork,
                           annotator: Optional[str], conflict: VersionConflict, refused: str = "Not saved.") -> Screen:
    """Someone saved a newer version of the volume: keep the work as the draft, show that version, offer the draft."""
    if conflict.latest_version is None or not annotator:
        return Screen(status=error_text(conflict))
    try:
        _write_draft(service, work)
        VOLUMES.forget(_work_key(service, session.case_id, annotator))
        screen = open_case(service, session.case_id, work.prediction_id, annotator)
    except USER_ERRORS as exc:
        return Screen(status=error_text(f"{conflict} ({exc})"))
    screen.status = _conflict_status(session.case_id, conflict, "your work is kept as your draft: *Use my draft* "
                                     "puts it back over it", refused)
    return screen


# ------------------------------------------------------------------------------ ingest and export


def ingest(service: AnnotationService, files: Union[Sequence[str], str, None], prompt: Optional[str],
           csv_file: Optional[str], batch: Optional[str], samples: int,
           progress: Optional[Callable[[int, int, str], None]] = None) -> Screen:
    paths = [files] if isinstance(files, str) else list(files or [])
    try:
        report = service.ingest_uploads(paths, prompt=prompt, prompts_csv=csv_file, batch=batch,
                                        num_samples=samples, progress=progress)
    except USER_ERRORS as exc:
        return Screen(ingest_report=error_text(exc))
    return Screen(ingest_report=report.summary(), queue=queue_text(service))


def ingest_progress_html(done: Optional[int], total: Optional[int], message: str) -> str:
    """A progress bar with counts for a running ingest (``done`` None: finished)."""
    finished = done is None
    fraction = 1.0 if finished else (done / total if total else 0.0)
    caption = message if finished or not total else f"{done:,} / {total:,} images · {message}"
    return (f'<div id="ingest-bar" data-done="{"" if finished else done}" data-total="{"" if finished else total}">'
            '<div style="height:12px;border-radius:6px;background:rgba(128,128,128,0.25);overflow:hidden">'
            f'<div style="height:100%;width:{100 * fraction:.1f}%;background:#3b82f6;transition:width 0.2s"></div>'
            f'</div><div style="margin-top:4px;font-size:13px">{html.escape(caption)}</div></div>')


VOLUME_EXPORT_WORDS = {"authors": "their reviewed slices as images", "nifti": "NIfTI masks",
                       "dicom-seg": "DICOM-SEG files"}


def export(service: AnnotationService, val_fraction: float, test_fraction: float, seed: Optional[int],
           statuses: Sequence[str], *, volume_format: str = "authors", consensus: str = "staple") -> Screen:
    """The reviewed cases as a zip in the authors' layout; volume cases as ``volume_format``
    (authors: their reviewed slices as images; nifti or dicom-seg: one mask file per volume); a case
    with several raters labelled by their ``consensus`` (staple or majority)."""
    try:
        result = service.export_archive(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                        statuses=tuple(statuses or ()), volume_format=volume_format or "authors",
                                        consensus=consensus or "staple")
    except USER_ERRORS as exc:
        return Screen(export_file=None, export_report=error_text(exc))
    counts = ", ".join(f"{split} {count}" for split, count in result.counts.items())
    report = f"Exported {sum(result.counts.values())} cases ({counts}) in the authors' layout."
    if volume_format and volume_format != "authors":
        report += f" Volume cases as {VOLUME_EXPORT_WORDS.get(volume_format, volume_format)}."
    if result.multi_rater_cases:
        method = "a majority vote" if consensus == "majority" else "their STAPLE consensus"
        report += (f" {result.multi_rater_cases} case(s) with several raters are labelled by {method}; each "
                   "rater's mask is under raters/.")
    return Screen(export_file=str(result.zip_path), export_report=report)

