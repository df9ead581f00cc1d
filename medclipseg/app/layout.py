"""MedCLIPSeg Annotator: text-prompted segmentation with uncertainty, corrections and review.

Run ``python app.py`` (or ``bash scripts/run.sh``). Settings come from the environment:

- ``MEDCLIPSEG_WEIGHTS``  model source (default: the shipped demo-tiny weights, offline)
- ``MEDCLIPSEG_DB``       SQLite file for cases and corrections (default feedback_db/annotations.db)
- ``MEDCLIPSEG_AUTH``     optional logins, ``user:password`` pairs separated by commas; the
                          annotator's name is then the login name
- ``MEDCLIPSEG_SAMPLES``  Monte-Carlo samples per segmentation (default 30)

This file only wires the user interface and the API to the library (``medclipseg.annotation.service``,
``medclipseg.app.render``, ``medclipseg.annotation.correction``); it holds no model, storage or export logic.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import cv2
import gradio as gr
import numpy as np

from medclipseg.annotation.correction import (
    ADD_COLOUR_HEX,
    ERASE_COLOUR_HEX,
    EditHistory,
    changed_pixels,
    masks_from_layer_images,
)
from medclipseg.io.images import CT_WINDOW_PRESETS, ImageReadError, PromptError, read_mask
from medclipseg.app.render import (
    entropy_heatmap,
    image_numbers,
    numbers_markdown,
    overlay_mask,
    to_display,
    uncertain_region,
)
from medclipseg.annotation.service import AnnotationService
from medclipseg.annotation.store import ACQUISITION_SCORES, StorageError
from medclipseg.inference.uncertainty import MAX_BINARY_ENTROPY

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "assets" / "examples"
UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"]
USER_ERRORS = (ImageReadError, PromptError, StorageError, ValueError)
HEADER_WINDOW = "From the file"


# --------------------------------------------------------------------------------------
# settings


def parse_auth(text: Optional[str]) -> Optional[list]:
    """``"ann:pw1, rev:pw2"`` -> [("ann", "pw1"), ("rev", "pw2")]; None when unset."""
    if not text or not text.strip():
        return None
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError("MEDCLIPSEG_AUTH must be user:password pairs separated by commas.")
        pairs.append((user.strip(), password))
    return pairs or None


def load_examples() -> list:
    listing = EXAMPLES_DIR / "examples.json"
    if not listing.exists():
        return []
    entries = json.loads(listing.read_text())
    return [[str(EXAMPLES_DIR / entry["image"]), entry["prompt"]] for entry in entries
            if (EXAMPLES_DIR / entry["image"]).exists()]


# --------------------------------------------------------------------------------------
# the app


def build_app(service: AnnotationService, *, auth_enabled: bool = False) -> gr.Blocks:
    acquisition_choices = _acquisition_choices()

    def optional_annotator(typed_name: str, request: Optional[gr.Request]) -> Optional[str]:
        """The login name when logins are on, else the name typed in the box (None if empty)."""
        if request is not None and getattr(request, "username", None):
            return str(request.username)
        return (typed_name or "").strip() or None

    def who(typed_name: str, request: Optional[gr.Request]) -> str:
        """Like optional_annotator, but a name is required (for saves and the review queue)."""
        name = optional_annotator(typed_name, request)
        if not name:
            raise StorageError("Type your name in the 'Annotator' box first; every save records who made it.")
        return name

    def error_text(exc: Exception) -> str:
        return f"**Error:** {exc}"

    # -- rendering from a session ----------------------------------------------------------
    def current(session):
        """The session's prediction at its threshold and the corrected mask derived from it."""
        prediction = service.prediction(session["prediction_id"]).with_threshold(session["threshold"])
        return prediction, session["edits"].corrected(prediction.mask)

    def overlay_picture(session, prediction, corrected, opacity, uncertainty_threshold):
        uncertain = uncertain_region(prediction.entropy, uncertainty_threshold)
        return overlay_mask(session["image"], corrected, opacity=opacity, uncertain=uncertain)

    def session_view(session, opacity, uncertainty_threshold, with_editor=True):
        prediction, corrected = current(session)
        image_rgb = session["image"]
        overlay = overlay_picture(session, prediction, corrected, opacity, uncertainty_threshold)
        heat = entropy_heatmap(prediction.entropy, image_rgb=image_rgb, threshold_nats=uncertainty_threshold)
        numbers = image_numbers(prediction, uncertainty_threshold=uncertainty_threshold, mask=corrected,
                                pixel_spacing=session.get("pixel_spacing"))
        changes = changed_pixels(prediction.mask, corrected)
        text = numbers_markdown(numbers, model_id=prediction.model_id, seconds=prediction.seconds)
        text += (f"\n\n**Case #{session['case_id']}** · {session['name']} · "
                 f"{len(session['edits'])} correction step(s), {changes['pixels_changed']:,} px changed "
                 f"(+{changes['pixels_added']:,} / −{changes['pixels_erased']:,})")
        editor = gr.skip()
        if with_editor:
            background = overlay_mask(image_rgb, corrected, opacity=0.25)
            editor = {"background": background, "layers": [], "composite": background}
        return overlay, heat, text, editor

    def new_session(case, prediction_id, prediction, image_bgr, threshold):
        return {
            "case_id": int(case.id),
            "prediction_id": int(prediction_id),
            "name": case.original_name,
            "threshold": float(threshold),
            "edits": EditHistory(shape=tuple(prediction.mask.shape)),
            "pixel_spacing": (case.metadata or {}).get("pixel_spacing"),
            "image": np.ascontiguousarray(image_bgr[..., ::-1]),  # RGB, for display
        }

    def no_session_error():
        return StorageError("Segment an image or take a case from the review queue first.")

    # -- handlers: image tab ---------------------------------------------------------------
    def on_upload(file_path):
        """Preview an upload; a file that cannot be read is cleared from the box, its message stays."""
        hide = gr.update(visible=False)
        if not file_path:
            return gr.skip(), None, "", hide, False, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        name = Path(file_path).name
        try:
            loaded = service.read(file_path, name=name)
        except USER_ERRORS as exc:
            return None, None, "", hide, False, gr.skip(), gr.skip(), gr.skip(), error_text(exc)
        notes = f"**{name}**: {loaded.width} × {loaded.height}, stored as {loaded.original_dtype}"
        if loaded.conversions:
            notes += "; " + "; ".join(loaded.conversions)
        preview = to_display(loaded.rgb, 512)
        if "window_center" in loaded.metadata:
            center, width = loaded.metadata["window_center"], loaded.metadata["window_width"]
            return (gr.skip(), preview, notes, gr.update(visible=True), True, HEADER_WINDOW, center, width,
                    f"Loaded **{name}**.")
        return gr.skip(), preview, notes, hide, False, gr.skip(), gr.skip(), gr.skip(), f"Loaded **{name}**."

    def on_window(file_path, windowed, center, width):
        if not file_path or not windowed:
            return gr.skip(), ""
        try:
            loaded = service.read(file_path, window=(float(center), float(width)))
        except (TypeError,) + USER_ERRORS as exc:
            return gr.skip(), error_text(exc)
        return to_display(loaded.rgb, 512), ""

    examples = load_examples()

    def on_example(event: gr.SelectData):
        path, text = examples[event.index]
        return path, text

    def on_preset(preset):
        if preset in CT_WINDOW_PRESETS:
            center, width = CT_WINDOW_PRESETS[preset]
            return center, width
        return gr.skip(), gr.skip()

    def on_segment(file_path, prompt, is_dicom_shown, center, width, samples, threshold, opacity,
                   uncertainty_threshold, typed_name, session, request: gr.Request,
                   progress=gr.Progress()):
        unchanged = (session, gr.skip(), gr.skip(), gr.skip(), gr.skip())
        if not file_path:
            return unchanged + (error_text("Upload an image (or pick an example) first."),)
        name = Path(file_path).name
        window = (float(center), float(width)) if is_dicom_shown and center is not None and width else None
        try:
            annotator = optional_annotator(typed_name, request)
            progress(0.05, desc="Reading the image")
            result = service.segment(file_path, prompt, name=name, window=window, num_samples=int(samples),
                                     threshold=float(threshold), annotator=annotator,
                                     progress=lambda value, desc: progress(value, desc=desc))
        except USER_ERRORS as exc:
            return unchanged + (error_text(exc),)
        session = new_session(result.case, result.prediction_id, result.prediction, result.image_bgr, threshold)
        progress(0.9, desc="Rendering")
        view = session_view(session, opacity, uncertainty_threshold)
        note = "" if not result.prediction.prompt_truncated else " (prompt truncated to the model's token limit)"
        status = (f"Segmented **{name}** in {result.prediction.seconds:.2f} s with "
                  f"{result.prediction.num_samples} samples{note}. Correct it below, then save.")
        return (session,) + view + (status,)

    # -- handlers: display -----------------------------------------------------------------
    def on_threshold(session, threshold, opacity, uncertainty_threshold):
        if not session:
            return session, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        session["threshold"] = float(threshold)
        return (session,) + session_view(session, opacity, uncertainty_threshold)

    def on_uncertainty(session, opacity, uncertainty_threshold):
        if not session:
            return gr.skip(), gr.skip(), gr.skip()
        overlay, heat, text, _ = session_view(session, opacity, uncertainty_threshold, with_editor=False)
        return overlay, heat, text

    def on_opacity(session, opacity, uncertainty_threshold):
        """Opacity changes only the overlay: the heat map and numbers stay as they are."""
        if not session:
            return gr.skip()
        prediction, corrected = current(session)
        return overlay_picture(session, prediction, corrected, opacity, uncertainty_threshold)

    # -- handlers: correction --------------------------------------------------------------
    def apply_pending(session, editor_value) -> bool:
        layers = (editor_value or {}).get("layers") or []
        add, erase = masks_from_layer_images(layers, session["edits"].shape)
        return session["edits"].apply(add, erase)

    def on_apply(session, editor_value, opacity, uncertainty_threshold):
        if not session:
            return (session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), error_text(no_session_error()))
        try:
            applied = apply_pending(session, editor_value)
        except USER_ERRORS as exc:
            return (session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), error_text(exc))
        status = "Strokes applied." if applied else "No strokes to apply: paint green to add, magenta to erase."
        return (session,) + session_view(session, opacity, uncertainty_threshold) + (status,)

    def on_undo(session, opacity, uncertainty_threshold):
        if not session:
            return (session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), error_text(no_session_error()))
        status = "Last correction step undone." if session["edits"].undo() else "Nothing to undo."
        return (session,) + session_view(session, opacity, uncertainty_threshold) + (status,)

    def save(session, editor_value, typed_name, request, status_value):
        if not session:
            raise no_session_error()
        annotator = who(typed_name, request)
        if status_value == "corrected":
            apply_pending(session, editor_value)
        prediction, corrected = current(session)
        mask = corrected if status_value == "corrected" else prediction.mask
        return service.save(session["case_id"], mask, annotator=annotator,
                            prediction_id=session["prediction_id"], threshold=session["threshold"],
                            status=status_value)

    def on_save(session, editor_value, typed_name, opacity, uncertainty_threshold, request: gr.Request):
        try:
            correction = save(session, editor_value, typed_name, request, "corrected")
        except USER_ERRORS as exc:
            return (session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), error_text(exc), gr.skip())
        view = session_view(session, opacity, uncertainty_threshold)
        status = (f"Saved correction v{correction.version} of case #{correction.case_id} by "
                  f"**{correction.annotator}**: {correction.pixels_changed:,} px changed "
                  f"(+{correction.pixels_added:,} / −{correction.pixels_erased:,}).")
        return (session,) + view + (status, queue_summary())

    def on_accept(session, typed_name, request: gr.Request):
        try:
            correction = save(session, None, typed_name, request, "accepted")
        except USER_ERRORS as exc:
            return error_text(exc), gr.skip()
        return (f"Case #{correction.case_id} accepted as predicted by **{correction.annotator}**.",
                queue_summary())

    # -- handlers: review queue ------------------------------------------------------------
    def queue_summary() -> str:
        counts = service.store.counts()
        return (f"**Queue**: {counts.get('unreviewed', 0)} unreviewed · {counts.get('corrected', 0)} corrected · "
                f"{counts.get('accepted', 0)} accepted · {counts.get('skipped', 0)} skipped · "
                f"{counts.get('corrections', 0)} saved versions")

    def on_next(acquisition, typed_name, threshold, opacity, uncertainty_threshold, session,
                request: gr.Request):
        unchanged = (session, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        try:
            annotator = who(typed_name, request)
            view = service.next_case(annotator, acquisition=acquisition)
        except USER_ERRORS as exc:
            return unchanged + (error_text(exc), gr.skip())
        if view is None:
            return unchanged + ("No unreviewed cases left in the queue.", queue_summary())
        session = new_session(view.case, view.prediction_id, view.prediction, view.image_bgr,
                              view.prediction.threshold)
        shown = session_view(session, opacity, uncertainty_threshold)
        status = (f"Case #{view.case.id} (**{view.case.original_name}**), ranked by {_label_of(acquisition)}; "
                  f"prompt: “{view.case.prompt}”")
        return (session,) + shown + (view.case.prompt, status, queue_summary())

    def on_skip(session, typed_name, request: gr.Request):
        if not session:
            return session, error_text(no_session_error()), gr.skip()
        try:
            service.store.set_status(session["case_id"], "skipped", annotator=who(typed_name, request))
        except USER_ERRORS as exc:
            return session, error_text(exc), gr.skip()
        return None, f"Case #{session['case_id']} skipped.", queue_summary()

    # -- handlers: ingest and export -------------------------------------------------------
    def on_ingest(files, prompt, csv_file, batch_name, samples, progress=gr.Progress()):
        if not files:
            return error_text("Choose images or a .zip to ingest."), gr.skip()
        staging = Path(tempfile.mkdtemp(prefix="medclipseg-ingest-"))
        try:
            paths = [Path(f) for f in (files if isinstance(files, list) else [files])]
            if len(paths) == 1 and paths[0].suffix.lower() == ".zip":
                source = paths[0]
            else:
                for path in paths:
                    shutil.copy(path, staging / path.name)
                source = staging
            report = service.ingest(
                source, prompt=(prompt or None) if not csv_file else None, prompts_csv=csv_file or None,
                batch=(batch_name or "").strip() or None, num_samples=int(samples),
                progress=lambda done, total, message: progress((done, total), desc=message))
        except USER_ERRORS as exc:
            return error_text(exc), gr.skip()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return "" + report.summary(), queue_summary()

    def export_zip(val_fraction, test_fraction, seed, statuses):
        """Export into a fresh temporary folder (served for download) and zip it."""
        target = Path(tempfile.mkdtemp(prefix="medclipseg-export-")) / f"medclipseg-export-{time.strftime('%Y%m%d-%H%M%S')}"
        return service.export(target, val_fraction=float(val_fraction), test_fraction=float(test_fraction),
                              seed=int(seed or 0), statuses=tuple(statuses or ()), make_zip=True)

    def on_export(val_fraction, test_fraction, seed, statuses):
        try:
            result = export_zip(val_fraction, test_fraction, seed, statuses)
        except USER_ERRORS as exc:
            return None, error_text(exc)
        counts = ", ".join(f"{split} {count}" for split, count in result.counts.items())
        return str(result.zip_path), f"Exported {sum(result.counts.values())} cases ({counts}) in the authors' layout."

    # -- API endpoints (gradio_client) ------------------------------------------------------
    def api_segment(image_file, prompt, samples, threshold, typed_name, request: gr.Request):
        try:
            annotator = optional_annotator(typed_name, request)
            result = service.segment(image_file, prompt, name=Path(image_file).name if image_file else None,
                                     num_samples=int(samples or service.num_samples),
                                     threshold=float(threshold or 0.5), annotator=annotator)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from exc
        out = Path(tempfile.mkdtemp(prefix="medclipseg-api-"))
        prediction = result.prediction
        cv2.imwrite(str(out / "mask.png"), prediction.mask.astype(np.uint8) * 255)
        np.savez_compressed(out / "maps.npz", probability=prediction.probability, entropy=prediction.entropy,
                            mutual_information=prediction.mutual_information)
        summary = {"case_id": result.case.id, "prediction_id": result.prediction_id,
                   "model_id": prediction.model_id, "prompt": prediction.prompt,
                   "num_samples": prediction.num_samples, "threshold": prediction.threshold,
                   "seconds": prediction.seconds, "scores": prediction.scores}
        return summary, str(out / "mask.png"), str(out / "maps.npz")

    def api_save(case_id, mask_file, typed_name, status_value, prediction_id, request: gr.Request):
        try:
            annotator = who(typed_name, request)
            if mask_file is None:
                raise StorageError("Send the corrected mask as a PNG (white = foreground).")
            mask = read_mask(mask_file)
            correction = service.save(int(case_id), mask, annotator=annotator,
                                      prediction_id=int(prediction_id) if prediction_id else None,
                                      status=status_value or "corrected")
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from exc
        return {"correction_id": correction.id, "case_id": correction.case_id, "version": correction.version,
                "annotator": correction.annotator, "status": correction.status,
                "pixels_added": correction.pixels_added, "pixels_erased": correction.pixels_erased,
                "pixels_changed": correction.pixels_changed, "created_at": correction.created_at}

    def api_next(typed_name, acquisition, request: gr.Request):
        try:
            annotator = who(typed_name, request)
            view = service.next_case(annotator, acquisition=acquisition or "foreground_entropy")
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from exc
        if view is None:
            return {"case_id": None, "message": "No unreviewed cases left."}, None
        out = Path(tempfile.mkdtemp(prefix="medclipseg-api-"))
        cv2.imwrite(str(out / f"case{view.case.id:06d}.png"), view.image_bgr)
        return ({"case_id": view.case.id, "prediction_id": view.prediction_id, "prompt": view.case.prompt,
                 "original_name": view.case.original_name, "width": view.case.width, "height": view.case.height,
                 "assigned_to": annotator, "acquisition": acquisition,
                 "scores": view.prediction.scores if view.prediction is not None else {}},
                str(out / f"case{view.case.id:06d}.png"))

    def api_export(val_fraction, test_fraction, seed):
        try:
            result = export_zip(val_fraction, test_fraction, seed, ("corrected", "accepted"))
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from exc
        return str(result.zip_path), json.dumps({"counts": result.counts, "manifest": "manifest.json"})

    # -- layout ----------------------------------------------------------------------------
    # Uploaded originals (a DICOM still carries its header there) are purged from Gradio's cache
    # after an hour; the database only ever keeps decoded pixels.
    with gr.Blocks(title="MedCLIPSeg Annotator", delete_cache=(3600, 3600)) as demo:
        session = gr.State(None)
        windowed = gr.State(False)  # the upload is a grey DICOM with a window/level control
        gr.Markdown(
            "## MedCLIPSeg Annotator\n"
            "Type what to segment, check where the model is unsure (cyan outline, heat map), fix it with "
            "the brush and save. Model: `" + service.model_id + "`. "
            "Research and annotation tool, **not for clinical use**.")
        with gr.Row(equal_height=False):
            annotator_box = gr.Textbox(label="Annotator", placeholder="your name (recorded with every save)",
                                       visible=not auth_enabled, elem_id="annotator", scale=1)
            status = gr.Markdown(elem_id="status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=340):
                with gr.Tabs():
                    with gr.Tab("Image"):
                        upload = gr.File(label="Image: PNG, JPEG, BMP, TIFF (8/16-bit), DICOM",
                                         file_types=UPLOAD_TYPES, type="filepath", elem_id="upload")
                        preview = gr.Image(label="Loaded image", interactive=False, height=200,
                                           buttons=[], elem_id="preview")
                        image_info = gr.Markdown()
                        with gr.Group(visible=False) as dicom_group:
                            preset = gr.Dropdown([HEADER_WINDOW] + list(CT_WINDOW_PRESETS), value=HEADER_WINDOW,
                                                 label="Window preset (CT)")
                            with gr.Row():
                                window_center = gr.Number(label="Window center", value=40)
                                window_width = gr.Number(label="Window width", value=400, minimum=1)
                        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                            placeholder="e.g. One small round polyp on the left in the colonoscopy image.")
                        examples = load_examples()
                        example_gallery = gr.Gallery(
                            [(path, Path(path).stem.replace("_", " ")) for path, _ in examples],
                            label="Examples (synthetic phantoms): click one", columns=5, height=130,
                            allow_preview=False, visible=bool(examples), elem_id="examples",
                            buttons=[])
                        samples = gr.Slider(4, 64, value=service.num_samples, step=2, label="Monte-Carlo samples")
                        segment_button = gr.Button("Segment", variant="primary", elem_id="segment")
                    with gr.Tab("Review queue"):
                        acquisition = gr.Dropdown(acquisition_choices, value="foreground_entropy",
                                                  label="Rank unreviewed cases by")
                        next_button = gr.Button("Next most uncertain case", variant="primary", elem_id="next-case")
                        skip_button = gr.Button("Skip this case")
                        queue_box = gr.Markdown(queue_summary(), elem_id="queue")
                    with gr.Tab("Ingest"):
                        ingest_files = gr.File(label="Images or one .zip", file_count="multiple",
                                               file_types=UPLOAD_TYPES + [".zip"], type="filepath",
                                               elem_id="ingest-files")
                        ingest_prompt = gr.Textbox(label="One prompt for every image")
                        ingest_csv = gr.File(label="...or a CSV with columns image, prompt", file_types=[".csv"],
                                             type="filepath")
                        ingest_batch = gr.Textbox(label="Batch name (optional)")
                        ingest_button = gr.Button("Ingest and rank by uncertainty", elem_id="ingest")
                        ingest_report = gr.Markdown(elem_id="ingest-report")
                    with gr.Tab("Export"):
                        val_fraction = gr.Slider(0, 0.5, value=0.1, step=0.05, label="Validation fraction")
                        test_fraction = gr.Slider(0, 0.5, value=0.2, step=0.05, label="Test fraction")
                        split_seed = gr.Number(value=0, precision=0, label="Split seed")
                        export_statuses = gr.CheckboxGroup(["corrected", "accepted"], value=["corrected", "accepted"],
                                                           label="Export cases that are")
                        export_button = gr.Button("Export for retraining (zip)", elem_id="export")
                        export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
                        export_report = gr.Markdown(elem_id="export-report", value=
                            "Authors' layout (Train/Val/Test folders, 0/255 masks at original size, "
                            "prompt tables as .xlsx and .csv) plus manifest.json; "
                            "train on it with `medclipseg train --data <folder>`.")
            with gr.Column(scale=2):
                with gr.Row():
                    overlay = gr.Image(label="Mask (amber) and uncertain area (cyan)", interactive=False,
                                       elem_id="overlay", format="png")
                    heatmap = gr.Image(label="Uncertainty: predictive entropy", interactive=False,
                                       elem_id="heatmap", format="png")
                with gr.Row():
                    mask_threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.01, label="Mask threshold (probability)",
                                               elem_id="mask-threshold")
                    uncertainty_threshold = gr.Slider(0.0, round(MAX_BINARY_ENTROPY, 3), value=0.35, step=0.01,
                                                      label="Uncertainty threshold (nats)",
                                                      elem_id="uncertainty-threshold")
                    opacity = gr.Slider(0.0, 1.0, value=0.4, step=0.05, label="Mask opacity", elem_id="opacity")
                numbers = gr.Markdown(elem_id="numbers")
                gr.Markdown("### Correct the mask\nPaint with **green to add** and **magenta to erase**, "
                            "then *Apply strokes* (or save directly). The editor's own undo removes strokes "
                            "not yet applied; *Undo last step* takes back the last applied one.")
                editor = gr.ImageEditor(
                    label="Correction (image + current mask)", type="numpy", image_mode="RGBA", format="png",
                    brush=gr.Brush(colors=[ADD_COLOUR_HEX, ERASE_COLOUR_HEX], default_color=ADD_COLOUR_HEX,
                                   color_mode="fixed"),
                    eraser=gr.Eraser(), layers=False, transforms=(), sources=(), elem_id="editor", height=560)
                with gr.Row():
                    apply_button = gr.Button("Apply strokes", elem_id="apply")
                    undo_button = gr.Button("Undo last step", elem_id="undo")
                    accept_button = gr.Button("Accept as is", elem_id="accept")
                    save_button = gr.Button("Save correction", variant="primary", elem_id="save")

        # hidden components of the API endpoints
        with gr.Group(visible=False):
            api_image = gr.File(type="filepath")
            api_mask = gr.File(type="filepath")
            api_prompt = gr.Textbox()
            api_annotator = gr.Textbox()
            api_samples = gr.Number(value=service.num_samples, precision=0)
            api_threshold = gr.Number(value=0.5)
            api_case = gr.Number(precision=0)
            api_prediction = gr.Number(precision=0)
            api_status = gr.Textbox(value="corrected")
            api_acquisition = gr.Textbox(value="foreground_entropy")
            api_val = gr.Number(value=0.1)
            api_test = gr.Number(value=0.2)
            api_seed = gr.Number(value=0, precision=0)
            api_json = gr.JSON()
            api_file = gr.File()
            api_file2 = gr.File()
            api_text = gr.Textbox()
            api_buttons = [gr.Button() for _ in range(4)]

        private = dict(api_visibility="private")
        view_outputs = [overlay, heatmap, numbers, editor]
        upload.change(on_upload, [upload], [upload, preview, image_info, dicom_group, windowed, preset, window_center,
                                            window_width, status], **private)
        for control in (window_center, window_width):
            control.change(on_window, [upload, windowed, window_center, window_width], [preview, status], **private)
        example_gallery.select(on_example, None, [upload, prompt], **private)
        preset.change(on_preset, [preset], [window_center, window_width], **private)
        segment_button.click(
            on_segment,
            [upload, prompt, windowed, window_center, window_width, samples, mask_threshold, opacity,
             uncertainty_threshold, annotator_box, session],
            [session] + view_outputs + [status], concurrency_id="model", concurrency_limit=1, **private)
        mask_threshold.change(on_threshold, [session, mask_threshold, opacity, uncertainty_threshold],
                              [session] + view_outputs, trigger_mode="always_last", **private)
        uncertainty_threshold.change(on_uncertainty, [session, opacity, uncertainty_threshold],
                                     [overlay, heatmap, numbers], trigger_mode="always_last", **private)
        opacity.change(on_opacity, [session, opacity, uncertainty_threshold], [overlay], trigger_mode="always_last",
                       **private)
        apply_button.click(on_apply, [session, editor, opacity, uncertainty_threshold],
                           [session] + view_outputs + [status], **private)
        undo_button.click(on_undo, [session, opacity, uncertainty_threshold], [session] + view_outputs + [status],
                          **private)
        save_button.click(on_save, [session, editor, annotator_box, opacity, uncertainty_threshold],
                          [session] + view_outputs + [status, queue_box], **private)
        accept_button.click(on_accept, [session, annotator_box], [status, queue_box], **private)
        next_button.click(on_next, [acquisition, annotator_box, mask_threshold, opacity, uncertainty_threshold,
                                    session],
                          [session] + view_outputs + [prompt, status, queue_box], **private)
        skip_button.click(on_skip, [session, annotator_box], [session, status, queue_box], **private)
        ingest_button.click(on_ingest, [ingest_files, ingest_prompt, ingest_csv, ingest_batch, samples],
                            [ingest_report, queue_box], concurrency_id="ingest", concurrency_limit=1, **private)
        export_button.click(on_export, [val_fraction, test_fraction, split_seed, export_statuses],
                            [export_file, export_report], **private)

        api_buttons[0].click(api_segment, [api_image, api_prompt, api_samples, api_threshold, api_annotator],
                             [api_json, api_file, api_file2], api_name="segment", concurrency_id="model",
                             concurrency_limit=1)
        api_buttons[1].click(api_save, [api_case, api_mask, api_annotator, api_status, api_prediction], [api_json],
                             api_name="save_correction")
        api_buttons[2].click(api_next, [api_annotator, api_acquisition], [api_json, api_file], api_name="next_case")
        api_buttons[3].click(api_export, [api_val, api_test, api_seed], [api_file, api_text], api_name="export")
    return demo


def _acquisition_choices() -> list:
    return [(_label_of(key), key) for key in ACQUISITION_SCORES]


def _label_of(key: str) -> str:
    from medclipseg.annotation.ingest import ACQUISITION_LABELS

    return ACQUISITION_LABELS.get(key, key)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="MedCLIPSeg Annotator (Gradio app)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--db", default=None, help="SQLite file (default: MEDCLIPSEG_DB or feedback_db/annotations.db)")
    parser.add_argument("--weights", default=None, help="model source (default: MEDCLIPSEG_WEIGHTS or the demo)")
    parser.add_argument("--samples", type=int, default=int(os.environ.get("MEDCLIPSEG_SAMPLES", "30")))
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    from medclipseg.annotation.store import AnnotationStore

    try:
        auth = parse_auth(os.environ.get("MEDCLIPSEG_AUTH"))
        store = AnnotationStore(args.db)
    except (ValueError, StorageError) as exc:
        raise SystemExit(f"app.py: error: {exc}") from None
    service = AnnotationService(store, weights=args.weights, device=args.device, num_samples=args.samples)
    service.predictor  # load now, so that the first request does not wait for it
    demo = build_app(service, auth_enabled=auth is not None)
    demo.queue(default_concurrency_limit=8, max_size=256)
    print(f"MedCLIPSeg Annotator: model {service.model_id}, database {store.path}", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, max_file_size="512mb",
                allowed_paths=[str(EXAMPLES_DIR)], show_error=True)


if __name__ == "__main__":
    main()
