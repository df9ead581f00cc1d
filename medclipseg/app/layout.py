"""The annotation app's page: the Blocks layout and the wiring of its events to ``handlers``.

Nothing here decides anything: each event reads its components, calls one function of
``medclipseg.app.handlers`` (plain, tested without a server) and shows the ``Screen`` it returns
as a ``{component: value}`` update. The *Model* tab's events and its timer call
``medclipseg.app.model_tab`` the same way. The API-only endpoints live in ``medclipseg.app.api``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue as queue_module
import threading
from pathlib import Path
from typing import Optional

import gradio as gr

from medclipseg import settings
from medclipseg.annotation.export import VOLUME_FORMATS
from medclipseg.annotation.queue import ACQUISITION_SCORES
from medclipseg.annotation.service import MAX_SAMPLES, AnnotationService
from medclipseg.app import api, handlers, model_tab
from medclipseg.app import review as review_page
from medclipseg.app.api import acting
from medclipseg.app.editor import mask_editor
from medclipseg.app.handlers import HEADER_WINDOW, KEEP, Screen
from medclipseg.io.dicom import CT_WINDOW_PRESETS
from medclipseg.io.images import IMAGE_SUFFIXES
from medclipseg.team.access import AccessDenied, Team

__all__ = ["PAGE_CSS", "build_app"]

QUEUE_POLL_SECONDS = 3.0
# Said in the page's title line (the header keeps its two lines) and, in full, in the server's log.
OPEN_WARNING = ("⚠ **Open: no login.** Anyone who reaches this server may export and retrain "
                "(set `MEDCLIPSEG_AUTH`).")
# A compact header, so that the case's buttons, the whole image and the last action's status fit on
# one 1440 x 900 screen. One column under 900 px: the editor first (after its case bar), then the
# side panel, both full width.
PAGE_CSS = """
#page-header { align-items: center; }
#page-title h3 { margin: 0 0 2px 0; }
#page-title p, #model-line p { margin: 0; }
@media (max-width: 900px) {
  #annotate-row { flex-direction: column !important; }
  #annotate-row > * { width: 100% !important; min-width: 0 !important; flex: 1 1 auto !important; }
  #editor-column { order: -1; }
}
#case-actions { gap: 6px; flex-wrap: wrap; }
#case-actions button { white-space: nowrap; min-width: max-content !important; }
#status { min-height: 1.5em; }
#status p { margin: 0; }
/* The retraining bar before the first training step: moving, without a percentage. */
@keyframes mcs-job-moving { from { margin-left: -30%; } to { margin-left: 100%; } }
.mcs-job-moving { animation: mcs-job-moving 1.4s linear infinite; }
@media (max-width: 900px) { #preview { display: none !important; } }
"""


def build_app(service: AnnotationService, *, team: Optional[Team] = None) -> gr.Blocks:
    """The app around ``service``: the page for annotators and the API for scripts. ``team``: the
    logins and roles (medclipseg.team.access); without one the app is open (everyone an admin)."""
    team = Team.open() if team is None else team
    auth_enabled = team.logins_required
    acquisition_choices = [(handlers.acquisition_label(key), key) for key in ACQUISITION_SCORES]
    examples = handlers.load_examples()

    def editing_request(request_value, http_request) -> "tuple[Optional[str], bool, Optional[dict]]":
        """(annotator, may work on others' cases, None) for an editor server function's request whose
        sender may edit, else (None, False, the editor's error answer): the login name with logins on,
        else the typed name."""
        typed = request_value.get("annotator") if isinstance(request_value, dict) else None
        try:
            actor = acting(team, http_request, typed, "save")
        except AccessDenied as exc:
            return None, False, {"kind": "error", "message": str(exc)}
        return actor.name, actor.may("save_others"), None

    def volume_slices(slice_request, request: gr.Request):
        """The editor's slice requests for a volume case (its server function, outside the queue)."""
        name, others, refused = editing_request(slice_request, request)
        return refused or handlers.volume_slices(service, slice_request, name, others_allowed=others)

    def volume_plane(plane_request, request: gr.Request):
        """The editor's requests for slices of the three planes (a server function, like volume_slices)."""
        name, others, refused = editing_request(plane_request, request)
        return refused or handlers.volume_plane(service, plane_request, name, others_allowed=others)

    def volume_tool(tool_request, request: gr.Request):
        """The editor's volume tools (interpolate, propagate, 3-D tools, undo/redo): a server function."""
        name, others, refused = editing_request(tool_request, request)
        return refused or handlers.volume_tool(service, tool_request, name, others_allowed=others)

    # Uploaded originals (a DICOM still carries its header there) are purged from Gradio's cache
    # after an hour; the database only ever keeps decoded pixels.
    with gr.Blocks(title="MedCLIPSeg Annotator", delete_cache=(3600, 3600)) as demo:
        session = gr.State(None)
        windowed = gr.State(False)  # the upload is a grey DICOM with a window/level control
        # Kept in the browser (localStorage): who annotates and which case is open, so a reload
        # reopens it with the draft.
        remembered = gr.BrowserState({"annotator": "", "case_id": None}, storage_key="medclipseg-annotator")
        leave_ok = gr.Checkbox(True, visible=False)  # set by the page's "leave unsaved edits?" question
        with gr.Row(equal_height=False, elem_id="page-header"):
            with gr.Column(scale=3, min_width=300):
                # How to use it is said in the editor while no case is open; the header stays two lines.
                gr.Markdown("### MedCLIPSeg Annotator\nResearch and annotation tool, **not for clinical use**."
                            + ("" if auth_enabled else f" <span id='open-warning'>{OPEN_WARNING}</span>"),
                            elem_id="page-title")
                # The model at build time (the page is served only after a sign-in where logins are on);
                # the Model tab's refresh (at page load, then on its timer, for a signed-in sender) keeps
                # it current: the serving model changes when another version is promoted.
                model_line = gr.Markdown(model_tab.header_text(service), elem_id="model-line")
            annotator_box = gr.Textbox(label="Annotator", placeholder="your name",
                                       visible=not auth_enabled, elem_id="annotator", scale=1, min_width=200)
            if auth_enabled:
                signed_in = gr.Markdown(elem_id="signed-in")
        with gr.Tabs(elem_id="screens"):
            with gr.Tab("Annotate", id="annotate", elem_id="annotate-tab"):
                with gr.Row(equal_height=False, elem_id="annotate-row"):
                    with gr.Column(scale=1, min_width=300, elem_id="side-column"):
                        with gr.Tabs():
                            with gr.Tab("Image"):
                                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                                    placeholder="e.g. One small round polyp on the left in the colonoscopy image.")
                                segment_button = gr.Button("Segment", variant="primary", elem_id="segment")
                                # Any file is taken and checked by the handler: Gradio's own type check
                                # only says "Invalid file type". A NIfTI file or a zip of one DICOM
                                # series is a volume, segmented slice by slice and opened as one case.
                                upload = gr.File(label="Image (PNG, JPEG, BMP, TIFF, DICOM) or scan "
                                                       "(NIfTI .nii/.nii.gz, zip of a DICOM series)",
                                                 type="filepath", elem_id="upload", height=110)
                                preview = gr.Image(label="Loaded image", interactive=False, height=180,
                                                   buttons=[], elem_id="preview")
                                image_info = gr.Markdown()
                                with gr.Group(visible=False) as dicom_group:
                                    window_note = gr.Markdown(elem_id="window-note")
                                    preset = gr.Dropdown([HEADER_WINDOW] + list(CT_WINDOW_PRESETS), value=HEADER_WINDOW,
                                                         label="CT window preset", elem_id="window-preset")
                                    with gr.Row():
                                        window_center = gr.Number(label="Window center", value=40)
                                        window_width = gr.Number(label="Window width", value=400, minimum=1)
                                example_gallery = gr.Gallery(
                                    [(path, Path(path).stem.replace("_", " ")) for path, _ in examples],
                                    label="Examples (synthetic phantoms): click one", columns=5, height=130,
                                    allow_preview=False, visible=bool(examples), elem_id="examples",
                                    buttons=[])
                                samples = gr.Slider(4, MAX_SAMPLES, value=service.num_samples, step=2, label="Monte-Carlo samples")
                            with gr.Tab("Queue"):
                                acquisition = gr.Dropdown(acquisition_choices, value=settings.queue_order(),
                                                          label="Rank unreviewed cases by", elem_id="acquisition")
                                gr.Markdown("*Next case* (below the editor, key <kbd>N</kbd>) opens the unreviewed "
                                            "case ranked first by this order and reserves it for you.")
                            # Hidden until the page's load says the login is an admin's (with logins on).
                            with gr.Tab("Ingest", elem_id="ingest-tab", visible=not auth_enabled) as ingest_tab:
                                # No type filter: DICOM files often have no suffix; the ingest says
                                # in words which files it could not read.
                                ingest_files = gr.File(label="Images, scans (NIfTI .nii/.nii.gz, DICOM files "
                                                             "or series) or one .zip", file_count="multiple",
                                                       type="filepath", elem_id="ingest-files")
                                gr.Markdown(f"Images: {', '.join(IMAGE_SUFFIXES)}. Each NIfTI file and each DICOM "
                                            "series becomes one volume case, reviewed slice by slice.",
                                            elem_id="ingest-note")
                                ingest_prompt = gr.Textbox(label="One prompt for every image or scan")
                                ingest_csv = gr.File(label="...or a CSV with columns image, prompt", file_types=[".csv"],
                                                     type="filepath")
                                ingest_batch = gr.Textbox(label="Batch name (optional)")
                                ingest_button = gr.Button("Ingest and rank by uncertainty", elem_id="ingest")
                                ingest_progress = gr.HTML(elem_id="ingest-progress")
                                ingest_report = gr.Markdown(elem_id="ingest-report")
                            with gr.Tab("Export", elem_id="export-tab", visible=not auth_enabled) as export_tab:
                                val_fraction = gr.Slider(0, 0.5, value=0.1, step=0.05, label="Validation fraction")
                                test_fraction = gr.Slider(0, 0.5, value=0.2, step=0.05, label="Test fraction")
                                split_seed = gr.Number(value=0, precision=0, label="Split seed")
                                export_statuses = gr.CheckboxGroup(["corrected", "accepted"], value=["corrected", "accepted"],
                                                                   label="Export cases that are")
                                export_volumes = gr.Dropdown(
                                    [("Reviewed slices as images (authors' layout)", "authors"),
                                     ("NIfTI masks (.nii.gz)", "nifti"), ("DICOM-SEG", "dicom-seg")],
                                    value=VOLUME_FORMATS[0], label="Volume cases as", elem_id="export-volumes")
                                export_consensus = gr.Dropdown(
                                    [("STAPLE consensus", "staple"), ("Majority vote", "majority")],
                                    value="staple", label="Label of a case with several raters",
                                    info="Retraining uses STAPLE; each rater's mask is exported too.",
                                    elem_id="export-consensus")
                                export_button = gr.Button("Export for retraining (zip)", elem_id="export")
                                export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
                                export_report = gr.Markdown(elem_id="export-report", value=
                                    "Authors' layout (Train/Val/Test folders, 0/255 masks at original size, "
                                    "prompt tables as .xlsx and .csv) plus manifest.json; "
                                    "train on it with `medclipseg train --data <folder>`.")
                    with gr.Column(scale=3, min_width=300, elem_id="editor-column"):
                        with gr.Row(elem_id="case-actions"):
                            accept_button = gr.Button("Accept as is (A)", elem_id="accept", min_width=120, size="md")
                            save_button = gr.Button("Save correction (S)", variant="primary", elem_id="save",
                                                    min_width=120, size="md")
                            skip_button = gr.Button("Skip case (K)", elem_id="skip", min_width=110, size="md")
                            # Shown when a skip would drop a saved version: the second, confirmed press.
                            skip_confirm_button = gr.Button("Skip anyway", variant="stop", elem_id="skip-confirm",
                                                            visible=False, min_width=110, size="md")
                            next_button = gr.Button("Next case (N)", elem_id="next-case", min_width=110, size="md")
                            use_draft_button = gr.Button("Use my draft", elem_id="use-draft", visible=False,
                                                         min_width=110, size="md")
                            # Shown when the project's review step is on (the page's load says).
                            submit_button = gr.Button("Submit for review", elem_id="submit-review", min_width=110,
                                                      size="md", visible=False)
                        # Reviewers only (medclipseg.team.access): decide on the version the editor shows.
                        with gr.Row(elem_id="review-actions", visible=False) as review_row:
                            review_next_button = gr.Button("Review next", elem_id="review-next", min_width=110,
                                                           size="md", scale=1)
                            review_comment = gr.Textbox(label="Review comment (needed to reject)", lines=1, scale=4,
                                                        elem_id="review-comment", min_width=200)
                            approve_button = gr.Button("Approve", variant="primary", elem_id="approve", min_width=100,
                                                       size="md", scale=1)
                            reject_button = gr.Button("Reject", variant="stop", elem_id="reject", min_width=100,
                                                      size="md", scale=1)
                        # The last action's outcome, right under its buttons (a refused save says why here).
                        status = gr.Markdown(elem_id="status")
                        editor = mask_editor(elem_id="editor", server_functions=[volume_slices, volume_plane, volume_tool])
                        queue_box = gr.Markdown(handlers.queue_text(service), elem_id="queue")
                        history = gr.Markdown(elem_id="history")
                        numbers = gr.Markdown(elem_id="numbers")
            with gr.Tab("Review", id="review", elem_id="review-tab", visible=False) as review_tab:
                review_order = gr.Dropdown([(label, key) for key, label in review_page.ORDER_LABELS.items()],
                                           value="uncertainty", label="Order", elem_id="review-order")
                gr.Markdown("*Review next* (on the Annotate screen, beside *Approve* and *Reject*) opens the first "
                            "case of this order that no other reviewer holds.")
                review_queue_box = gr.Markdown(elem_id="review-queue")
            with gr.Tab("Model", elem_id="model-tab"):
                model_view = _model_tab(service)

        parts = {
            "session": session, "upload": upload, "preview": preview, "image_info": image_info,
            "dicom_controls": dicom_group, "window_presets": preset, "window_note": window_note,
            "windowed": windowed, "window_preset": preset,
            "window_center": window_center, "window_width": window_width, "prompt": prompt,
            "editor": editor, "stale_draft": use_draft_button, "skip_confirm": skip_confirm_button,
            "numbers": numbers, "history": history, "status": status,
            "queue": queue_box, "ingest_report": ingest_report, "export_file": export_file,
            "export_report": export_report,
        }
        if set(parts) != set(handlers.PART_NAMES):
            raise RuntimeError(f"Screen parts without a component: {set(handlers.PART_NAMES) ^ set(parts)}")

        def shown(screen: Screen, remember: bool = False, annotator: str = "") -> dict:
            """A handler's Screen as Gradio's {component: value} update (parts it leaves are kept);
            with ``remember``, the browser's note of the open case follows the session."""
            update = {}
            changed = screen.changed()
            for name, value in changed.items():
                if name in ("dicom_controls", "stale_draft", "skip_confirm"):
                    update[parts[name]] = gr.update(visible=value)
                elif name == "window_presets":  # the CT presets: shown, and set, for CT only
                    update[parts[name]] = gr.update(visible=value, value=screen.window_preset or HEADER_WINDOW)
                elif name == "window_preset" and "window_presets" in changed:
                    continue  # set together with its visibility above
                else:
                    update[parts[name]] = value
            if remember and screen.session is not KEEP:
                update[remembered] = {"annotator": annotator or "",
                                      "case_id": screen.session.case_id if screen.session else None}
            return update

        def outputs(*names: str) -> list:
            return [parts[name] for name in names]

        opened = ("session", "editor", "stale_draft", "skip_confirm", "numbers", "history", "status", "queue")
        # Asked in the page before a case is replaced: the editor knows whether it holds unsaved edits.
        def ask_before(action: str) -> str:
            return ("(...values) => [window.medclipsegEditor ? window.medclipsegEditor.confirmLeave("
                    f"{action!r}) : true, ...values.slice(1)]")

        def progress_reporter(progress: gr.Progress):
            return lambda value, desc: progress(value, desc=desc)

        def requires(action: str, refusal=None):
            """Run the event only when the sender's role allows `action` (medclipseg.team.access);
            otherwise answer with the refusal in words (``refusal(exc)``, by default in the status line)."""
            def decorate(event):
                signature = inspect.signature(event)

                @functools.wraps(event)  # Gradio reads the wrapped signature (gr.Request, gr.Progress)
                def checked(*args, **kwargs):
                    arguments = signature.bind_partial(*args, **kwargs).arguments
                    try:
                        acting(team, arguments.get("request"), arguments.get("typed_name"), action)
                    except AccessDenied as exc:
                        return refusal(exc) if refusal else shown(Screen(status=handlers.error_text(exc)))
                    return event(*args, **kwargs)
                return checked
            return decorate

        def name_of(typed_name, request) -> Optional[str]:
            return team.actor(api.login_name(request), typed_name).name

        def may(typed_name, request, action: str) -> bool:
            return team.actor(api.login_name(request), typed_name).may(action)

        # -- image tab: loading an image and its window is the first step of segmenting it
        @requires("segment")
        def on_upload(file_path, request: gr.Request):
            return shown(handlers.upload(service, file_path))

        @requires("segment")
        def on_window(file_path, is_windowed, center, width, request: gr.Request):
            return shown(handlers.change_window(service, file_path, is_windowed, center, width))

        @requires("segment", lambda exc: {})  # its outputs have no status line: nothing changes
        def on_example(event: gr.SelectData, request: gr.Request):
            return shown(handlers.choose_example(examples, event.index))

        @requires("segment", lambda exc: {})
        def on_preset(choice, request: gr.Request):
            return shown(handlers.choose_preset(choice))

        @requires("segment")
        def on_segment(ok, file_path, prompt_text, is_windowed, center, width, sample_count, typed_name, current,
                       editor_value, request: gr.Request, progress=gr.Progress()):
            if not ok:
                return shown(handlers.stayed(current))
            name = name_of(typed_name, request)
            return shown(handlers.segment(
                service, file_path, prompt_text, window=handlers.window_of(is_windowed, center, width),
                samples=sample_count, annotator=name, editor_value=editor_value,
                progress=progress_reporter(progress), session=current), remember=True, annotator=name)

        # -- the editor
        @requires("save")
        def on_editor_change(current, editor_value, typed_name, request: gr.Request):
            return shown(handlers.editor_changed(service, current, editor_value, name_of(typed_name, request)))

        @requires("save")
        def on_save(current, editor_value, typed_name, request: gr.Request):
            return shown(handlers.save(service, current, editor_value, name_of(typed_name, request),
                                       others_allowed=may(typed_name, request, "save_others")))

        @requires("save")
        def on_accept(current, editor_value, typed_name, request: gr.Request):
            return shown(handlers.accept(service, current, editor_value, name_of(typed_name, request),
                                         others_allowed=may(typed_name, request, "save_others")))

        def skipped(current, typed_name, editor_value, request: gr.Request, discard_saved: bool):
            name = name_of(typed_name, request)
            return shown(handlers.skip(service, current, name, discard_saved=discard_saved, editor_value=editor_value,
                                       others_allowed=may(typed_name, request, "skip_others")),
                         remember=True, annotator=name)

        @requires("skip_own")
        def on_skip(ok, current, typed_name, editor_value, request: gr.Request):
            if not ok:
                return shown(handlers.stayed(current))
            return skipped(current, typed_name, editor_value, request, False)

        @requires("skip_own")
        def on_skip_confirmed(current, typed_name, editor_value, request: gr.Request):
            # The second press, after the status line said what skipping a saved case does.
            return skipped(current, typed_name, editor_value, request, True)

        @requires("take_case")
        def on_next(ok, order, typed_name, current, editor_value, request: gr.Request):
            if not ok:
                return shown(handlers.stayed(current))
            name = name_of(typed_name, request)
            return shown(handlers.next_case(service, order, name, editor_value, session=current), remember=True,
                         annotator=name)

        @requires("save")
        def on_submit(current, typed_name, request: gr.Request):
            return shown(review_page.submit(service, current, name_of(typed_name, request),
                                            may_submit_others=may(typed_name, request, "review")))

        @requires("review")
        def on_review_next(order, typed_name, current, editor_value, request: gr.Request):
            name = name_of(typed_name, request)
            update = shown(review_page.next_case_to_review(service, order, name, editor_value, session=current),
                           remember=True, annotator=name)
            update[review_queue_box] = review_page.queue_markdown(service, order)
            return update

        @requires("review")
        def on_approve(current, editor_value, comment, typed_name, request: gr.Request):
            return shown(review_page.decide(service, current, editor_value, name_of(typed_name, request),
                                            approve=True, comment=comment,
                                            own_allowed=may(typed_name, request, "review_own")))

        @requires("review")
        def on_reject(current, editor_value, comment, typed_name, request: gr.Request):
            return shown(review_page.decide(service, current, editor_value, name_of(typed_name, request),
                                            approve=False, comment=comment,
                                            own_allowed=may(typed_name, request, "review_own")))

        @requires("review", lambda exc: handlers.error_text(exc))
        def on_review_queue(order, request: gr.Request):
            return review_page.queue_markdown(service, order)

        @requires("save")
        def on_use_draft(current, typed_name, request: gr.Request):
            return shown(handlers.use_draft(service, current, name_of(typed_name, request)))

        def on_load(saved, typed_name, request: gr.Request):
            """A (re)loaded page: the annotator's name back in its box, the open case back in the editor,
            and only the parts the sender's role may use (medclipseg.team.access)."""
            saved = saved if isinstance(saved, dict) else {}
            try:
                actor = team.actor(api.login_name(request), typed_name or saved.get("annotator") or "")
            except AccessDenied as exc:  # logins on, but no known login: Gradio's own page normally stops it
                return {parts["status"]: handlers.error_text(exc)}
            name = actor.name
            # An empty name is not sent back: it would wipe a name typed while the page was loading.
            update = {annotator_box: name} if name and not auth_enabled else {}
            if auth_enabled:
                update[signed_in] = f"Signed in as **{name}** ({actor.role})"
            update[ingest_tab] = gr.update(visible=actor.may("ingest"))
            update[export_tab] = gr.update(visible=actor.may("export"))
            project = service.project_settings()
            # One person's open app shows the review parts only once the project's review step is on.
            reviewing = actor.may("review") and (auth_enabled or project.review_required)
            update[review_tab] = gr.update(visible=reviewing)
            update[review_row] = gr.update(visible=reviewing)
            update[submit_button] = gr.update(visible=project.review_required)
            if reviewing:
                update[review_queue_box] = review_page.queue_markdown(service)
            if saved.get("case_id") is not None and name:
                update.update(shown(handlers.reopen(service, saved["case_id"], name, saved.get("slice"),
                                                    others_allowed=actor.may("save_others"))))
            update[queue_box] = handlers.queue_text(service)
            return update

        @requires("take_case", lambda exc: (gr.skip(), gr.skip()))
        def on_queue_tick(last, request: gr.Request):
            text = handlers.queue_text(service)
            return (gr.skip(), gr.skip()) if text == last else (text, text)

        # -- ingest, export
        def on_ingest(files, prompt_text, csv_file, batch_name, sample_count, request: gr.Request):
            # The ingest runs in a worker thread; this generator shows its progress as it goes.
            try:
                acting(team, request, None, "ingest")
            except AccessDenied as exc:
                yield {ingest_progress: "", ingest_report: handlers.error_text(exc)}
                return
            updates: "queue_module.Queue" = queue_module.Queue()
            outcome = {}

            def work():
                try:
                    outcome["screen"] = handlers.ingest(
                        service, files, prompt_text, csv_file, batch_name, sample_count,
                        progress=lambda done, total, message: updates.put((done, total, message)))
                except BaseException as exc:  # reported below; the page must not hang on a crash
                    outcome["error"] = exc
                finally:
                    updates.put(None)

            worker = threading.Thread(target=work, name="ingest", daemon=True)
            worker.start()
            yield {ingest_progress: handlers.ingest_progress_html(0, 0, "Reading the files"), ingest_report: ""}
            while True:
                item = updates.get()
                if item is None:
                    break
                while not updates.empty():  # only the newest state is worth drawing
                    newer = updates.get()
                    if newer is None:
                        updates.put(None)
                        break
                    item = newer
                yield {ingest_progress: handlers.ingest_progress_html(*item)}
            worker.join()
            if "error" in outcome:
                yield {ingest_progress: "", ingest_report: handlers.error_text(outcome["error"])}
                return
            screen = outcome["screen"]
            yield {ingest_progress: handlers.ingest_progress_html(None, None, "Done"), **shown(screen)}

        @requires("export", lambda exc: {export_file: None, export_report: handlers.error_text(exc)})
        def on_export(val, test, seed, statuses, volume_format, consensus, request: gr.Request):
            return shown(handlers.export(service, val, test, seed, statuses, volume_format=volume_format,
                                         consensus=consensus))

        private = dict(api_visibility="private")
        upload.change(on_upload, [upload], outputs("upload", "preview", "image_info", "dicom_controls", "windowed",
                                                   "window_preset", "window_note", "window_center", "window_width",
                                                   "status"),
                      **private)
        for control in (window_center, window_width):
            # One at a time, in order: setting both numbers fires two events, and the picture must be
            # the one for the last pair.
            control.change(on_window, [upload, windowed, window_center, window_width], outputs("preview", "status"),
                           concurrency_id="window", concurrency_limit=1, trigger_mode="always_last", **private)
        example_gallery.select(on_example, None, outputs("upload", "prompt"), **private)
        preset.change(on_preset, [preset], outputs("window_center", "window_width"), **private)
        gr.on([segment_button.click, prompt.submit], on_segment,
              [leave_ok, upload, prompt, windowed, window_center, window_width, samples, annotator_box, session,
               editor], outputs(*opened) + [remembered], js=ask_before("Open another case"),
              concurrency_id="model", concurrency_limit=1, **private)
        editor.input(on_editor_change, [session, editor, annotator_box], outputs("numbers", "status"),
                      trigger_mode="always_last", show_progress="hidden", **private)
        # A volume's slice on screen is noted in the browser too, so that a reload reopens it there.
        editor.input(None, [editor, remembered], [remembered], show_progress="hidden",
                     js="(value, saved) => (value && value.volume && saved && saved.case_id === value.case_id"
                        " && saved.slice !== value.slice_index) ? {...saved, slice: value.slice_index} : saved",
                     **private)
        # A refused save (another version was saved) reopens the case, so both answer with the whole case.
        save_button.click(on_save, [session, editor, annotator_box], outputs(*opened), **private)
        accept_button.click(on_accept, [session, editor, annotator_box], outputs(*opened), **private)
        skip_button.click(on_skip, [leave_ok, session, annotator_box, editor], outputs(*opened) + [remembered],
                          js=ask_before("Skip it"), **private)
        skip_confirm_button.click(on_skip_confirmed, [session, annotator_box, editor],
                                  outputs(*opened) + [remembered], **private)
        next_button.click(on_next, [leave_ok, acquisition, annotator_box, session, editor],
                          outputs(*opened, "prompt") + [remembered], js=ask_before("Open the next case"), **private)
        use_draft_button.click(on_use_draft, [session, annotator_box], outputs(*opened), **private)
        # In the page, not on the server: a round trip could answer after the next case's own note of
        # the open case and put back the old one (a reload then reopened nothing).
        annotator_box.change(None, [annotator_box, remembered], [remembered], show_progress="hidden",
                             js="(name, saved) => ({...(saved || {}), annotator: (name || '').trim()})", **private)
        demo.load(on_load, [remembered, annotator_box],
                  [annotator_box, ingest_tab, export_tab, review_tab, review_row, review_queue_box, submit_button,
                   *([signed_in] if auth_enabled else []), *outputs(*opened)], **private)
        submit_button.click(on_submit, [session, annotator_box], outputs("status", "history"), **private)
        review_next_button.click(on_review_next, [review_order, annotator_box, session, editor],
                                 outputs(*opened, "prompt") + [remembered, review_queue_box], **private)
        approve_button.click(on_approve, [session, editor, review_comment, annotator_box], outputs(*opened),
                             **private)
        reject_button.click(on_reject, [session, editor, review_comment, annotator_box], outputs(*opened), **private)
        review_order.change(on_review_queue, [review_order], [review_queue_box], **private)
        review_tab.select(on_review_queue, [review_order], [review_queue_box], **private)
        queue_timer = gr.Timer(QUEUE_POLL_SECONDS)
        queue_seen = gr.State(None)
        queue_timer.tick(on_queue_tick, [queue_seen], [queue_box, queue_seen], show_progress="hidden", **private)
        ingest_button.click(on_ingest, [ingest_files, ingest_prompt, ingest_csv, ingest_batch, samples],
                            [ingest_progress, *outputs("ingest_report", "queue")], concurrency_id="ingest",
                            concurrency_limit=1, **private)
        export_button.click(on_export, [val_fraction, test_fraction, split_seed, export_statuses, export_volumes,
                                        export_consensus],
                            outputs("export_file", "export_report"), **private)

        _wire_model_tab(demo, service, model_view, model_line, annotator_box, team)
        api.register(service, team)
    return demo


def _model_tab(service: AnnotationService) -> dict:
    """The Model tab's components, by name (inside the tab being built)."""
    view = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=320):
            view["current"] = gr.Markdown(elem_id="model-current")
            view["data"] = gr.Markdown(elem_id="model-data")
            view["rescoring"] = gr.Markdown(elem_id="rescoring")
            view["stop"] = gr.Markdown(elem_id="stop-signal")
        with gr.Column(scale=2, min_width=300):
            gr.Markdown("### Retrain on the reviewed cases\nFine-tunes the current model on the corrected and "
                        "accepted cases in a background process; gold cases are held out and score the result.")
            # Admins only (medclipseg.team.access): hidden for other roles, and refused on the server.
            with gr.Column(elem_id="retrain-controls") as view["admin_retrain"]:
                with gr.Row():
                    view["epochs"] = gr.Number(model_tab.recipe_epochs(), label="Epochs", precision=0, minimum=1,
                                               maximum=500, elem_id="retrain-epochs", min_width=100)
                    view["promote_choice"] = gr.Radio(
                        [("auto: if it beats the current version on gold", "auto"), ("yes", "yes"), ("no", "no")],
                        value="auto", label="Promote the new version", elem_id="retrain-promote", min_width=200)
                with gr.Row():
                    view["start_button"] = gr.Button("Start retraining", variant="primary", elem_id="retrain")
                    view["cancel_button"] = gr.Button("Cancel", elem_id="cancel-retrain")
            view["progress"] = gr.HTML(model_tab.progress_html(None), elem_id="job-progress")
            view["status"] = gr.Markdown(elem_id="model-status")
            view["log"] = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, autoscroll=True,
                                     elem_id="job-log")
    view["versions"] = gr.Dataframe(headers=list(model_tab.VERSION_COLUMNS),
                                    label="Model versions (train / gold: cases; unc. ρ: Spearman of uncertainty "
                                          "and 1 − DSC on the gold split)",
                                    interactive=False, max_height=320, elem_id="model-versions", buttons=[])
    with gr.Row(equal_height=False, elem_id="version-controls") as view["admin_versions"]:
        view["version_menu"] = gr.Dropdown([], label="Version to promote", elem_id="version-menu", scale=3,
                                           min_width=240)
        with gr.Column(scale=1, min_width=140):
            view["promote_button"] = gr.Button("Promote", elem_id="promote")
            view["rollback_button"] = gr.Button("Roll back", elem_id="rollback")
    view["signature"] = gr.State(None)
    return view


def _wire_model_tab(demo: gr.Blocks, service: AnnotationService, view: dict, model_line, annotator_box,
                    team: Team) -> None:
    """Events of the Model tab and the timer that keeps it (and the page's model line) current."""
    shown = [model_line, view["current"], view["versions"], view["version_menu"], view["data"], view["progress"],
             view["log"], view["stop"], view["rescoring"]]

    def redrawn(epochs, sent=None) -> tuple:
        """(values, keys): the tab's new values, and what they show; a part whose key matches the
        one sent last is skipped, so an open menu or a scrolled table is left alone."""
        panel = model_tab.panel(service, epochs)
        raw = [panel.header, panel.current, panel.versions, panel.choices, panel.data, panel.progress, panel.log,
               panel.stop, panel.rescoring]
        keys = [repr(value) for value in raw]
        values = [panel.header, panel.current, {"headers": list(model_tab.VERSION_COLUMNS), "data": panel.versions},
                  gr.update(choices=panel.choices), panel.data, panel.progress, panel.log, panel.stop, panel.rescoring]
        if sent:
            values = [gr.skip() if key == old else value for value, key, old in zip(values, keys, sent)]
        return values, keys

    def on_tick(last, epochs, request: gr.Request):
        # Cheap when nothing changed: the signature is a few small queries; nothing is sent back.
        nothing = [gr.skip()] * (len(shown) + 1)
        try:
            acting(team, request, None, "see_models")
        except AccessDenied:
            return nothing
        try:
            signature = model_tab.panel_signature(service, epochs)
            if last is not None and last["signature"] == signature:
                return nothing
            values, keys = redrawn(epochs, None if last is None else last["sent"])
        except Exception:  # a busy database: the next tick tries again instead of an error every 1.5 s
            logging.getLogger(__name__).warning("Model tab refresh failed", exc_info=True)
            return nothing
        return [{"signature": signature, "sent": keys}] + values

    def acted(action, epochs) -> list:
        """An action's message (refusals also as a warning), then the redrawn tab."""
        try:
            message = action()
        except handlers.USER_ERRORS as exc:
            gr.Warning(str(exc))
            message = handlers.error_text(exc)
        signature = model_tab.panel_signature(service, epochs)
        values, keys = redrawn(epochs)
        return [message, {"signature": signature, "sent": keys}] + values

    def by(typed_name, request, action: str) -> Optional[str]:
        """The sender's name once their role allows `action` (AccessDenied, shown by `acted`, otherwise)."""
        return acting(team, request, typed_name, action).name

    def on_start(typed_name, epochs, promote, request: gr.Request):
        return acted(lambda: model_tab.start_retrain(service, by(typed_name, request, "retrain"), epochs,
                                                     promote).message(), epochs)

    def on_cancel(typed_name, epochs, request: gr.Request):
        return acted(lambda: model_tab.cancel_retrain(service, by(typed_name, request, "cancel_job")), epochs)

    def on_promote(typed_name, version_id, epochs, request: gr.Request):
        return acted(lambda: model_tab.promote_version(service, version_id, by(typed_name, request, "promote")),
                     epochs)

    def on_rollback(typed_name, epochs, request: gr.Request):
        return acted(lambda: model_tab.roll_back(service, by(typed_name, request, "rollback")), epochs)

    def on_epochs(epochs, request: gr.Request):
        """What a retraining of that many epochs would train on (admins only: they start it)."""
        try:
            acting(team, request, None, "retrain")
        except AccessDenied:
            return gr.skip()
        return model_tab.data_text(service, epochs)

    def on_role(request: gr.Request):
        """Only an admin sees the controls that retrain, cancel, promote and roll back."""
        try:
            admin = team.actor(api.login_name(request)).may("retrain")
        except AccessDenied:
            admin = False
        return [gr.update(visible=admin)] * len(admin_controls)

    private = dict(api_visibility="private")
    ticking = [view["signature"]] + shown
    answering = [view["status"], view["signature"]] + shown
    timer = gr.Timer(model_tab.POLL_SECONDS)
    admin_controls = [view["admin_retrain"], view["admin_versions"]]
    demo.load(on_role, None, admin_controls, show_progress="hidden", **private)
    timer.tick(on_tick, [view["signature"], view["epochs"]], ticking, show_progress="hidden", **private)
    demo.load(on_tick, [view["signature"], view["epochs"]], ticking, show_progress="hidden", **private)
    view["epochs"].change(on_epochs, [view["epochs"]], [view["data"]], show_progress="hidden", **private)
    view["start_button"].click(on_start, [annotator_box, view["epochs"], view["promote_choice"]], answering,
                               concurrency_id="model-actions", concurrency_limit=1, **private)
    view["cancel_button"].click(on_cancel, [annotator_box, view["epochs"]], answering, **private)
    view["promote_button"].click(on_promote, [annotator_box, view["version_menu"], view["epochs"]], answering,
                                 concurrency_id="model-actions", concurrency_limit=1, **private)
    view["rollback_button"].click(on_rollback, [annotator_box, view["epochs"]], answering,
                                  concurrency_id="model-actions", concurrency_limit=1, **private)
