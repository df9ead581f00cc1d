"""What each user action in the app does, as plain functions: no server, no Gradio objects.

Every handler takes the ``AnnotationService`` and typed values (file paths, numbers, text, the
``EditorSession``) and returns a ``Screen``: the parts of the page it changes, by name; parts
left at ``KEEP`` stay as they are. ``medclipseg.app.layout`` turns a ``Screen`` into the
``{component: value}`` update Gradio expects, so these functions can be tested directly.
Sliders re-render from the maps cached in the service; only ``segment`` and ``ingest`` run the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from medclipseg.annotation.correction import EditHistory, changed_pixels, masks_from_layer_images
from medclipseg.annotation.queue import ACQUISITION_LABELS
from medclipseg.annotation.service import AnnotationService, RequestError
from medclipseg.annotation.store import StorageError
from medclipseg.app.render import (
    entropy_heatmap,
    image_numbers,
    numbers_markdown,
    overlay_mask,
    to_display,
    uncertain_region,
)
from medclipseg.io.dicom import CT_WINDOW_PRESETS
from medclipseg.io.images import ImageReadError
from medclipseg.io.prompts import PromptError
from medclipseg.weights.sources import assets_dir

USER_ERRORS = (ImageReadError, PromptError, StorageError, RequestError, ValueError)
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
    """One case open in the editor: which prediction, at which threshold, with which strokes."""

    case_id: int
    prediction_id: int
    name: str
    threshold: float
    edits: EditHistory
    image_rgb: np.ndarray                     # display order
    pixel_spacing: Optional[tuple] = None     # (row, column) mm, when the file said

    @classmethod
    def open(cls, case, prediction_id: int, prediction, image_bgr: np.ndarray,
             threshold: float) -> "EditorSession":
        spacing = (case.metadata or {}).get("pixel_spacing")
        return cls(case_id=int(case.id), prediction_id=int(prediction_id), name=case.original_name,
                   threshold=float(threshold), edits=EditHistory(shape=tuple(prediction.mask.shape)),
                   image_rgb=np.ascontiguousarray(image_bgr[..., ::-1]),
                   pixel_spacing=tuple(spacing) if spacing else None)


@dataclass
class Screen:
    """The parts of the page one action changes (names match ``layout``'s components)."""

    session: Union[EditorSession, None, _Keep] = KEEP
    upload: Union[str, None, _Keep] = KEEP
    preview: Union[np.ndarray, None, _Keep] = KEEP
    image_info: Union[str, _Keep] = KEEP
    dicom_controls: Union[bool, _Keep] = KEEP      # visibility of the window/level controls
    windowed: Union[bool, _Keep] = KEEP            # the upload is a grey DICOM with a window
    window_preset: Union[str, _Keep] = KEEP
    window_center: Union[float, _Keep] = KEEP
    window_width: Union[float, _Keep] = KEEP
    prompt: Union[str, _Keep] = KEEP
    overlay: Union[np.ndarray, _Keep] = KEEP
    heatmap: Union[np.ndarray, _Keep] = KEEP
    numbers: Union[str, _Keep] = KEEP
    editor: Union[dict, _Keep] = KEEP
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


# ------------------------------------------------------------------------------ rendering a session


def current(service: AnnotationService, session: EditorSession) -> tuple:
    """The session's prediction at its threshold and the corrected mask derived from it."""
    prediction = service.prediction(session.prediction_id)
    if float(session.threshold) != float(prediction.threshold):
        prediction = prediction.with_threshold(session.threshold)
    return prediction, session.edits.corrected(prediction.mask)


def _overlay(session: EditorSession, prediction, corrected: np.ndarray, opacity: float,
             uncertainty_threshold: float) -> np.ndarray:
    uncertain = uncertain_region(prediction.entropy, uncertainty_threshold)
    return overlay_mask(session.image_rgb, corrected, opacity=float(opacity), uncertain=uncertain)


def session_screen(service: AnnotationService, session: EditorSession, opacity: float,
                   uncertainty_threshold: float, *, with_editor: bool = True) -> Screen:
    """Overlay, heat map, numbers (and the editor's background) of a session."""
    prediction, corrected = current(service, session)
    numbers = image_numbers(prediction, uncertainty_threshold=float(uncertainty_threshold), mask=corrected,
                            pixel_spacing=session.pixel_spacing)
    changes = changed_pixels(prediction.mask, corrected)
    text = numbers_markdown(numbers, model_id=prediction.model_id, seconds=prediction.seconds)
    text += (f"\n\n**Case #{session.case_id}** · {session.name} · "
             f"{len(session.edits)} correction step(s), {changes['pixels_changed']:,} px changed "
             f"(+{changes['pixels_added']:,} / −{changes['pixels_erased']:,})")
    screen = Screen(overlay=_overlay(session, prediction, corrected, opacity, uncertainty_threshold),
                    heatmap=entropy_heatmap(prediction.entropy, image_rgb=session.image_rgb,
                                            threshold_nats=float(uncertainty_threshold)),
                    numbers=text)
    if with_editor:
        background = overlay_mask(session.image_rgb, corrected, opacity=0.25)
        screen.editor = {"background": background, "layers": [], "composite": background}
    return screen


def _no_session() -> Screen:
    return Screen(status=error_text("Segment an image or take a case from the review queue first."))


# ------------------------------------------------------------------------------ image tab


def upload(service: AnnotationService, file_path: Optional[str]) -> Screen:
    """Preview an upload; a file that cannot be read is cleared from the box, its message stays."""
    if not file_path:
        return Screen(preview=None, image_info="", dicom_controls=False, windowed=False)
    name = Path(file_path).name
    try:
        loaded = service.read(file_path, name=name)
    except USER_ERRORS as exc:
        return Screen(upload=None, preview=None, image_info="", dicom_controls=False, windowed=False,
                      status=error_text(exc))
    notes = f"**{name}**: {loaded.width} × {loaded.height}, stored as {loaded.original_dtype}"
    if loaded.conversions:
        notes += "; " + "; ".join(loaded.conversions)
    screen = Screen(preview=to_display(loaded.rgb, PREVIEW_SIDE), image_info=notes, dicom_controls=False,
                    windowed=False, status=f"Loaded **{name}**.")
    if "window_center" in loaded.metadata:
        screen.dicom_controls = screen.windowed = True
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
    return Screen(preview=to_display(loaded.rgb, PREVIEW_SIDE), status="")


def choose_preset(preset: str) -> Screen:
    if preset in CT_WINDOW_PRESETS:
        center, width = CT_WINDOW_PRESETS[preset]
        return Screen(window_center=center, window_width=width)
    return Screen()


def choose_example(examples: Sequence, index: int) -> Screen:
    path, prompt = examples[index]
    return Screen(upload=path, prompt=prompt)


def segment(service: AnnotationService, file_path: Optional[str], prompt: str, *,
            window: Optional[tuple] = None, samples: int, threshold: float, opacity: float,
            uncertainty_threshold: float, annotator: Optional[str] = None,
            progress: Optional[Callable[[float, str], None]] = None) -> Screen:
    """Run the model on the upload, store it as a case in the queue (claimed by ``annotator``), show it."""
    if not file_path:
        return Screen(status=error_text("Upload an image (or pick an example) first."))
    name = Path(file_path).name
    try:
        if progress:
            progress(0.05, "Reading the image")
        result = service.segment(file_path, prompt, name=name, window=window, num_samples=samples,
                                 threshold=threshold, annotator=annotator, add_to_queue=True, progress=progress)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    session = EditorSession.open(result.case, result.prediction_id, result.prediction, result.image_bgr, threshold)
    if progress:
        progress(0.9, "Rendering")
    screen = session_screen(service, session, opacity, uncertainty_threshold)
    note = " (prompt truncated to the model's token limit)" if result.prediction.prompt_truncated else ""
    screen.session = session
    screen.status = (f"Segmented **{name}** in {result.prediction.seconds:.2f} s with "
                     f"{result.prediction.num_samples} samples by `{result.prediction.model_id}`{note}. "
                     "Correct it below, then save.")
    return screen


# ------------------------------------------------------------------------------ display sliders


def change_threshold(service: AnnotationService, session: Optional[EditorSession], threshold: float,
                     opacity: float, uncertainty_threshold: float) -> Screen:
    """A new mask threshold: re-rendered from the cached maps, the strokes kept."""
    if session is None:
        return Screen()
    session.threshold = float(threshold)
    screen = session_screen(service, session, opacity, uncertainty_threshold)
    screen.session = session
    return screen


def change_uncertainty(service: AnnotationService, session: Optional[EditorSession], opacity: float,
                       uncertainty_threshold: float) -> Screen:
    if session is None:
        return Screen()
    return session_screen(service, session, opacity, uncertainty_threshold, with_editor=False)


def change_opacity(service: AnnotationService, session: Optional[EditorSession], opacity: float,
                   uncertainty_threshold: float) -> Screen:
    """Opacity changes only the overlay: the heat map and numbers stay as they are."""
    if session is None:
        return Screen()
    prediction, corrected = current(service, session)
    return Screen(overlay=_overlay(session, prediction, corrected, opacity, uncertainty_threshold))


# ------------------------------------------------------------------------------ correction


def _apply_pending(session: EditorSession, editor_value: Optional[dict]) -> bool:
    layers = (editor_value or {}).get("layers") or []
    add, erase = masks_from_layer_images(layers, session.edits.shape)
    return session.edits.apply(add, erase)


def apply_strokes(service: AnnotationService, session: Optional[EditorSession], editor_value: Optional[dict],
                  opacity: float, uncertainty_threshold: float) -> Screen:
    if session is None:
        return _no_session()
    try:
        applied = _apply_pending(session, editor_value)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    screen = session_screen(service, session, opacity, uncertainty_threshold)
    screen.session = session
    screen.status = "Strokes applied." if applied else "No strokes to apply: paint green to add, magenta to erase."
    return screen


def undo(service: AnnotationService, session: Optional[EditorSession], opacity: float,
         uncertainty_threshold: float) -> Screen:
    if session is None:
        return _no_session()
    undone = session.edits.undo()
    screen = session_screen(service, session, opacity, uncertainty_threshold)
    screen.session = session
    screen.status = "Last correction step undone." if undone else "Nothing to undo."
    return screen


def save(service: AnnotationService, session: Optional[EditorSession], editor_value: Optional[dict],
         annotator: Optional[str], opacity: float, uncertainty_threshold: float) -> Screen:
    """Save the corrected mask (strokes still in the editor included) as a new version."""
    if session is None:
        return _no_session()
    try:
        _apply_pending(session, editor_value)
        _, corrected = current(service, session)
        correction = service.save(session.case_id, corrected, annotator=annotator, status="corrected",
                                  prediction_id=session.prediction_id, threshold=session.threshold)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    screen = session_screen(service, session, opacity, uncertainty_threshold)
    screen.session = session
    screen.status = (f"Saved correction v{correction.version} of case #{correction.case_id} by "
                     f"**{correction.annotator}**: {correction.pixels_changed:,} px changed "
                     f"(+{correction.pixels_added:,} / −{correction.pixels_erased:,}).")
    screen.queue = queue_text(service)
    return screen


def accept(service: AnnotationService, session: Optional[EditorSession], annotator: Optional[str]) -> Screen:
    """Save the model's mask at the session's threshold as it is."""
    if session is None:
        return _no_session()
    try:
        correction = service.save(session.case_id, annotator=annotator, status="accepted",
                                  prediction_id=session.prediction_id, threshold=session.threshold)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    return Screen(status=f"Case #{correction.case_id} accepted as predicted by **{correction.annotator}**.",
                  queue=queue_text(service))


def skip(service: AnnotationService, session: Optional[EditorSession], annotator: Optional[str]) -> Screen:
    """Take the open case out of the queue without saving a mask; the editor closes it."""
    if session is None:
        return _no_session()
    try:
        service.save(session.case_id, annotator=annotator, status="skipped")
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    return Screen(session=None, status=f"Case #{session.case_id} skipped.", queue=queue_text(service))


# ------------------------------------------------------------------------------ review queue


def prediction_age(service: AnnotationService, model_id: str) -> str:
    """A note when the prediction shown is not the current version's (it waits to be re-scored)."""
    current = service.store.current_model_id()
    if current is None or model_id == current:
        return ""
    return f" (an earlier version; the current `{current}` has not re-scored it yet)"


def next_case(service: AnnotationService, acquisition: str, annotator: Optional[str], opacity: float,
              uncertainty_threshold: float) -> Screen:
    """Open the unreviewed case ranked first by ``acquisition`` and lease it to ``annotator``."""
    try:
        view = service.next_case(annotator, acquisition=acquisition)
    except USER_ERRORS as exc:
        return Screen(status=error_text(exc))
    if view is None:
        return Screen(status="No unreviewed cases left in the queue.", queue=queue_text(service))
    session = EditorSession.open(view.case, view.prediction_id, view.prediction, view.image_bgr,
                                 view.prediction.threshold)
    screen = session_screen(service, session, opacity, uncertainty_threshold)
    screen.session = session
    screen.prompt = view.case.prompt
    screen.status = (f"Case #{view.case.id} (**{view.case.original_name}**), ranked by "
                     f"{acquisition_label(acquisition)}; predicted by `{view.prediction.model_id}`"
                     f"{prediction_age(service, view.prediction.model_id)}; prompt: “{view.case.prompt}”")
    screen.queue = queue_text(service)
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

