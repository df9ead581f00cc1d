"""What each user action in the app does, as plain functions: no server, no Gradio objects.

Every handler takes the ``AnnotationService`` and typed values (file paths, numbers, text, the
``EditorSession``) and returns a ``Screen``: the parts of the page it changes, by name; parts
left at ``KEEP`` stay as they are. ``medclipseg.app.layout`` turns a ``Screen`` into the
``{component: value}`` update Gradio expects, so these functions can be tested directly.
Sliders re-render from the maps cached in the service; only ``segment`` and ``ingest`` run the model.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from medclipseg.annotation.queue import ACQUISITION_LABELS
from medclipseg.annotation.service import AnnotationService, ConfirmationNeeded, RequestError
from medclipseg.annotation.store import StorageError, VersionConflict
from medclipseg.app.editor import EditorEdit, EditorError, case_payload, closed_value, read_edit, saved_value
from medclipseg.app.render import enlarged, image_numbers, numbers_markdown, to_display
from medclipseg.inference.uncertainty import MAX_BINARY_ENTROPY
from medclipseg.io.dicom import CT_WINDOW_PRESETS
from medclipseg.io.images import ImageReadError
from medclipseg.io.prompts import PromptError
from medclipseg.weights.sources import assets_dir

USER_ERRORS = (ImageReadError, PromptError, StorageError, RequestError, EditorError, ValueError)
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
    shape: tuple                              # (height, width) of the image and mask
    pixel_spacing: Optional[tuple] = None     # (row, column) mm, when the file said


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
    return "\n".join(lines)


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
              opacity: float = DEFAULT_VIEW["opacity"], use_stale_draft: bool = False) -> Screen:
    """Show a case in the editor, starting from (in this order) the annotator's draft, the latest
    saved version, or the model's mask. The save that follows must name the version shown.

    A draft begun before the latest version was saved (someone else saved meanwhile) is not
    shown over it unasked: the latest version opens, the draft is kept, and ``use_stale_draft``
    (the *Use my draft* button) puts it back on top of that version."""
    case = service.store.get_case(case_id)
    if case.width * case.height > EDITOR_MAX_PIXELS:
        # The page holds the maps of the whole image (6 bytes a pixel and a few masks).
        message = (f"Case #{case.id} ({case.width} x {case.height}) is larger than the editor holds "
                   f"({EDITOR_MAX_PIXELS:,} pixels, e.g. 4096 x 4096): correct it through the API "
                   "(save_correction with a mask PNG) or store a smaller copy of the image.")
        return Screen(session=None, editor=closed_value(message), status=error_text(message), history="",
                      numbers="", queue=queue_text(service))
    prediction = service.prediction(prediction_id)
    latest = service.latest_correction(case_id)
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


VOLUME_SUFFIXES = (".nii", ".nii.gz")
VOLUMES_NOT_YET = ("NIfTI volumes (.nii, .nii.gz) are not supported yet: export a 2-D slice as PNG or DICOM "
                   "and upload that.")


def upload(service: AnnotationService, file_path: Optional[str]) -> Screen:
    """Preview an upload; a file that cannot be read is cleared from the box, its message stays."""
    if not file_path:
        return Screen(preview=None, image_info="", dicom_controls=False, windowed=False)
    name = Path(file_path).name
    # The upload box takes any file (its own type check only says "Invalid file type"), so the
    # refusals are here, in words.
    if name.lower().endswith(VOLUME_SUFFIXES):
        return Screen(upload=None, preview=None, image_info="", dicom_controls=False, windowed=False,
                      status=error_text(f"{name}: {VOLUMES_NOT_YET}"))
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


# ------------------------------------------------------------------------------ the editor's events


def editor_changed(service: AnnotationService, session: Optional[EditorSession], editor_value,
                   annotator: Optional[str]) -> Screen:
    """After an edit (debounced in the browser): keep the mask as the annotator's draft, update the numbers."""
    if session is None or not isinstance(editor_value, dict) or editor_value.get("kind") != "edit" \
            or editor_value.get("case_id") != session.case_id:
        return Screen()
    try:
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


def _start_mask(service: AnnotationService, session: EditorSession, edit: EditorEdit) -> tuple:
    """(mask, label) the edit started from: the saved version it names when that is still the
    latest (otherwise the save is refused as a conflict anyway), else the model's mask."""
    if edit.base_version is not None:
        latest = service.latest_correction(session.case_id)
        if latest is not None and latest["version"] == edit.base_version:
            return service.store.load_mask(latest["mask_path"]), f"v{edit.base_version}"
    return _prediction_at(service, edit.prediction_id, edit.threshold).mask, "the model's mask"


def _differs_from_model(service: AnnotationService, edit: EditorEdit) -> bool:
    """Whether the mask the page sent differs from the model's own mask at its threshold, compared here
    pixel by pixel: the page's ``edited`` flag is only its claim and decides nothing (a page that lied
    would save the model's mask over real edits, or record an untouched mask as a correction)."""
    return not np.array_equal(edit.mask, _prediction_at(service, edit.prediction_id, edit.threshold).mask)


def _after_conflict(service: AnnotationService, session: EditorSession, edit: EditorEdit, annotator: Optional[str],
                    conflict: VersionConflict) -> Screen:
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
    started = "no saved version" if conflict.base_version is None else f"v{conflict.base_version}"
    screen.status = error_text(
        f"Not saved. Case #{session.case_id} was saved as v{conflict.latest_version} by {conflict.latest_annotator} "
        f"at {_when(conflict.latest_created_at)} after you opened it (you started from {started}). The editor now "
        f"shows v{conflict.latest_version}; your edits are kept as your draft: *Use my draft* puts them back over it.")
    return screen


def save(service: AnnotationService, session: Optional[EditorSession], editor_value, annotator: Optional[str]) -> Screen:
    """Save the editor's mask as a new version of the case (the version it started from must still be the latest)."""
    if session is None:
        return _no_session()
    if not (annotator or "").strip():
        return Screen(status=error_text("Not saved. " + NAME_NEEDED))
    try:
        edit = read_edit(editor_value, case_id=session.case_id, shape=session.shape)
        start_mask, start_label = _start_mask(service, session, edit)
        if np.array_equal(start_mask, edit.mask) and edit.base_version is not None:
            return Screen(status=f"Nothing saved: the mask is the same as {start_label}, the latest version.")
        edited = _differs_from_model(service, edit)
        status = "corrected" if edited else "accepted"
        correction = service.save(session.case_id, edit.mask if edited else None, annotator=annotator,
                                  status=status, prediction_id=edit.prediction_id, threshold=edit.threshold,
                                  base_version=edit.base_version)
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
           annotator: Optional[str]) -> Screen:
    """The mask shown is right. With edits in it, it is saved as a correction (and the message says so)."""
    if session is None:
        return _no_session()
    if not (annotator or "").strip():
        return Screen(status=error_text("Not saved. " + NAME_NEEDED))
    try:
        edit = read_edit(editor_value, case_id=session.case_id, shape=session.shape)
        edited = _differs_from_model(service, edit)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    if edited:
        screen = save(service, session, editor_value, annotator)
        if isinstance(screen.status, str) and not screen.status.startswith("**Error"):
            screen.status = ("The mask shown differs from the model's, so *Accept* saved it as a correction, not "
                             "as “accepted as predicted”. " + screen.status)
        return screen
    try:
        correction = service.save(session.case_id, annotator=annotator, status="accepted",
                                  prediction_id=edit.prediction_id, threshold=edit.threshold,
                                  base_version=edit.base_version)
    except VersionConflict as conflict:
        return _after_conflict(service, session, edit, annotator, conflict)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    message = (f"Case #{correction.case_id} accepted as predicted (threshold {edit.threshold:.2f}) by "
               f"**{correction.annotator}**: v{correction.version}.")
    return _after_save(service, session, edit, correction, message)


def skip(service: AnnotationService, session: Optional[EditorSession], annotator: Optional[str], *,
         discard_saved: bool = False, editor_value=None) -> Screen:
    """Take the open case out of the queue without saving a mask; the editor closes it (a draft stays).

    A case with a saved version is skipped only with ``discard_saved`` (the *Skip anyway* button):
    skipping takes that version out of export and retraining, so the first press asks."""
    if session is None:
        return _no_session()
    try:
        _keep_draft(service, session, editor_value, annotator)
        service.skip(session.case_id, annotator=annotator, discard_saved=bool(discard_saved))
    except ConfirmationNeeded as asked:
        saved = f"v{asked.version} ({asked.status}, saved by {asked.annotator})"
        return Screen(skip_confirm=True, status=error_text(
            f"Not skipped: case #{session.case_id} has {saved}. Skipping it takes that version out of export and "
            "retraining (it stays in the case's history). Press **Skip anyway** to skip it, or keep it and "
            "take the next case."))
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    message = f"Case #{session.case_id} skipped."
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
    screen.status = (f"Case #{view.case.id} (**{view.case.original_name}**), ranked by "
                     f"{acquisition_label(acquisition)}; predicted by `{view.prediction.model_id}`"
                     f"{prediction_age(service, view.prediction.model_id)}; prompt: “{view.case.prompt}”. "
                     f"{screen.editor['start_note']}")
    return screen


def reopen(service: AnnotationService, case_id, annotator: Optional[str]) -> Screen:
    """Open a stored case again (after a browser reload): its latest prediction, the annotator's draft first."""
    try:
        case_id = int(case_id)
        prediction_id = service.store.latest_prediction_id(case_id)
        if prediction_id is None:
            return Screen()
        screen = open_case(service, case_id, prediction_id, annotator)
    except (TypeError, ValueError, *USER_ERRORS):
        return Screen()
    if screen.session is not None:
        screen.status = screen.editor["start_note"]
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


def export(service: AnnotationService, val_fraction: float, test_fraction: float, seed: Optional[int],
           statuses: Sequence[str]) -> Screen:
    try:
        result = service.export_archive(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                        statuses=tuple(statuses or ()))
    except USER_ERRORS as exc:
        return Screen(export_file=None, export_report=error_text(exc))
    counts = ", ".join(f"{split} {count}" for split, count in result.counts.items())
    return Screen(export_file=str(result.zip_path),
                  export_report=f"Exported {sum(result.counts.values())} cases ({counts}) in the authors' layout.")

