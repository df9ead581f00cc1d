"""The annotation app's page: the Blocks layout and the wiring of its events to ``handlers``.

Nothing here decides anything: each event reads its components, calls one function of
``medclipseg.app.handlers`` (plain, tested without a server) and shows the ``Screen`` it returns
as a ``{component: value}`` update. The API-only endpoints live in ``medclipseg.app.api``.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from medclipseg.annotation.correction import ADD_COLOUR_HEX, ERASE_COLOUR_HEX
from medclipseg.annotation.queue import ACQUISITION_SCORES, DEFAULT_ACQUISITION
from medclipseg.annotation.service import MAX_SAMPLES, AnnotationService
from medclipseg.app import api, handlers
from medclipseg.app.api import annotator_of
from medclipseg.app.handlers import HEADER_WINDOW, Screen
from medclipseg.inference.uncertainty import MAX_BINARY_ENTROPY
from medclipseg.io.dicom import CT_WINDOW_PRESETS
from medclipseg.io.images import IMAGE_SUFFIXES

__all__ = ["build_app"]


def build_app(service: AnnotationService, *, auth_enabled: bool = False) -> gr.Blocks:
    """The app around ``service``: the page for annotators and the API for scripts."""
    acquisition_choices = [(handlers.acquisition_label(key), key) for key in ACQUISITION_SCORES]
    examples = handlers.load_examples()

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
                                         file_types=list(IMAGE_SUFFIXES), type="filepath", elem_id="upload")
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
                        example_gallery = gr.Gallery(
                            [(path, Path(path).stem.replace("_", " ")) for path, _ in examples],
                            label="Examples (synthetic phantoms): click one", columns=5, height=130,
                            allow_preview=False, visible=bool(examples), elem_id="examples",
                            buttons=[])
                        samples = gr.Slider(4, MAX_SAMPLES, value=service.num_samples, step=2, label="Monte-Carlo samples")
                        segment_button = gr.Button("Segment", variant="primary", elem_id="segment")
                    with gr.Tab("Review queue"):
                        acquisition = gr.Dropdown(acquisition_choices, value=DEFAULT_ACQUISITION,
                                                  label="Rank unreviewed cases by")
                        next_button = gr.Button("Next most uncertain case", variant="primary", elem_id="next-case")
                        skip_button = gr.Button("Skip this case", elem_id="skip")
                        queue_box = gr.Markdown(handlers.queue_text(service), elem_id="queue")
                    with gr.Tab("Ingest"):
                        ingest_files = gr.File(label="Images or one .zip", file_count="multiple",
                                               file_types=list(IMAGE_SUFFIXES) + [".zip"], type="filepath",
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


        parts = {
            "session": session, "upload": upload, "preview": preview, "image_info": image_info,
            "dicom_controls": dicom_group, "windowed": windowed, "window_preset": preset,
            "window_center": window_center, "window_width": window_width, "prompt": prompt,
            "overlay": overlay, "heatmap": heatmap, "numbers": numbers, "editor": editor, "status": status,
            "queue": queue_box, "ingest_report": ingest_report, "export_file": export_file,
            "export_report": export_report,
        }
        if set(parts) != set(handlers.PART_NAMES):
            raise RuntimeError(f"Screen parts without a component: {set(handlers.PART_NAMES) ^ set(parts)}")

        def shown(screen: Screen) -> dict:
            """A handler's Screen as Gradio's {component: value} update (parts it leaves are kept)."""
            update = {}
            for name, value in screen.changed().items():
                update[parts[name]] = gr.update(visible=value) if name == "dicom_controls" else value
            return update

        def outputs(*names: str) -> list:
            return [parts[name] for name in names]

        view = ("overlay", "heatmap", "numbers", "editor")

        def progress_reporter(progress: gr.Progress):
            return lambda value, desc: progress(value, desc=desc)

        # -- image tab
        def on_upload(file_path):
            return shown(handlers.upload(service, file_path))

        def on_window(file_path, is_windowed, center, width):
            return shown(handlers.change_window(service, file_path, is_windowed, center, width))

        def on_example(event: gr.SelectData):
            return shown(handlers.choose_example(examples, event.index))

        def on_preset(choice):
            return shown(handlers.choose_preset(choice))

        def on_segment(file_path, prompt_text, is_windowed, center, width, sample_count, threshold, opacity_value,
                       uncertainty, typed_name, request: gr.Request, progress=gr.Progress()):
            return shown(handlers.segment(
                service, file_path, prompt_text, window=handlers.window_of(is_windowed, center, width),
                samples=sample_count, threshold=threshold, opacity=opacity_value, uncertainty_threshold=uncertainty,
                annotator=annotator_of(typed_name, request), progress=progress_reporter(progress)))

        # -- display sliders
        def on_threshold(current, threshold, opacity_value, uncertainty):
            return shown(handlers.change_threshold(service, current, threshold, opacity_value, uncertainty))

        def on_uncertainty(current, opacity_value, uncertainty):
            return shown(handlers.change_uncertainty(service, current, opacity_value, uncertainty))

        def on_opacity(current, opacity_value, uncertainty):
            return shown(handlers.change_opacity(service, current, opacity_value, uncertainty))

        # -- correction
        def on_apply(current, editor_value, opacity_value, uncertainty):
            return shown(handlers.apply_strokes(service, current, editor_value, opacity_value, uncertainty))

        def on_undo(current, opacity_value, uncertainty):
            return shown(handlers.undo(service, current, opacity_value, uncertainty))

        def on_save(current, editor_value, typed_name, opacity_value, uncertainty, request: gr.Request):
            return shown(handlers.save(service, current, editor_value, annotator_of(typed_name, request),
                                       opacity_value, uncertainty))

        def on_accept(current, typed_name, request: gr.Request):
            return shown(handlers.accept(service, current, annotator_of(typed_name, request)))

        def on_skip(current, typed_name, request: gr.Request):
            return shown(handlers.skip(service, current, annotator_of(typed_name, request)))

        # -- review queue, ingest, export
        def on_next(order, typed_name, opacity_value, uncertainty, request: gr.Request):
            return shown(handlers.next_case(service, order, annotator_of(typed_name, request), opacity_value,
                                            uncertainty))

        def on_ingest(files, prompt_text, csv_file, batch_name, sample_count, progress=gr.Progress()):
            return shown(handlers.ingest(
                service, files, prompt_text, csv_file, batch_name, sample_count,
                progress=lambda done, total, message: progress((done, total), desc=message)))

        def on_export(val, test, seed, statuses):
            return shown(handlers.export(service, val, test, seed, statuses))

        private = dict(api_visibility="private")
        upload.change(on_upload, [upload], outputs("upload", "preview", "image_info", "dicom_controls", "windowed",
                                                   "window_preset", "window_center", "window_width", "status"),
                      **private)
        for control in (window_center, window_width):
            control.change(on_window, [upload, windowed, window_center, window_width], outputs("preview", "status"),
                           **private)
        example_gallery.select(on_example, None, outputs("upload", "prompt"), **private)
        preset.change(on_preset, [preset], outputs("window_center", "window_width"), **private)
        segment_button.click(
            on_segment,
            [upload, prompt, windowed, window_center, window_width, samples, mask_threshold, opacity,
             uncertainty_threshold, annotator_box],
            outputs("session", *view, "status"), concurrency_id="model", concurrency_limit=1, **private)
        mask_threshold.change(on_threshold, [session, mask_threshold, opacity, uncertainty_threshold],
                              outputs("session", *view), trigger_mode="always_last", **private)
        uncertainty_threshold.change(on_uncertainty, [session, opacity, uncertainty_threshold],
                                     outputs("overlay", "heatmap", "numbers"), trigger_mode="always_last", **private)
        opacity.change(on_opacity, [session, opacity, uncertainty_threshold], outputs("overlay"),
                       trigger_mode="always_last", **private)
        apply_button.click(on_apply, [session, editor, opacity, uncertainty_threshold],
                           outputs("session", *view, "status"), **private)
        undo_button.click(on_undo, [session, opacity, uncertainty_threshold], outputs("session", *view, "status"),
                          **private)
        save_button.click(on_save, [session, editor, annotator_box, opacity, uncertainty_threshold],
                          outputs("session", *view, "status", "queue"), **private)
        accept_button.click(on_accept, [session, annotator_box], outputs("status", "queue"), **private)
        next_button.click(on_next, [acquisition, annotator_box, opacity, uncertainty_threshold],
                          outputs("session", *view, "prompt", "status", "queue"), **private)
        skip_button.click(on_skip, [session, annotator_box], outputs("session", "status", "queue"), **private)
        ingest_button.click(on_ingest, [ingest_files, ingest_prompt, ingest_csv, ingest_batch, samples],
                            outputs("ingest_report", "queue"), concurrency_id="ingest", concurrency_limit=1,
                            **private)
        export_button.click(on_export, [val_fraction, test_fraction, split_seed, export_statuses],
                            outputs("export_file", "export_report"), **private)

        api.register(service)
    return demo
