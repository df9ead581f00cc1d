"""The app's API for scripts (``gradio_client``): segment, save_correction, skip, unskip, next_case, ingest,
export, the model endpoints retrain, job, cancel_job, models, promote, rollback, and the team's
submit_review, review_queue, next_review, review, agreement and project.

Each endpoint is a typed function registered with ``gr.api``, which derives the API's
parameters from the type hints; files travel as ``gradio.FileData`` (``handle_file(path)`` on
the client side). Every endpoint checks its inputs before doing anything and answers a bad
request with a ``gr.Error`` in words; files it returns are copied by Gradio into its cache
and removed from the service's scratch space soon after.

With logins on (``MEDCLIPSEG_AUTH``) the login name is the annotator, whatever is sent, and every
endpoint checks the login's role first (``API_ACTIONS``, medclipseg.team.access): a refusal says
which role may do it and writes nothing.
"""

import functools
import json
from pathlib import Path
from typing import Optional

import gradio as gr
import nibabel as nib
import numpy as np
from gradio.data_classes import FileData

from medclipseg import settings
from medclipseg.annotation.service import AnnotationService, RequestError, check_case_id, whole_number
from medclipseg.annotation import volume_workflow
from medclipseg.app import model_tab
from medclipseg.app.handlers import USER_ERRORS
from medclipseg.team.access import Actor, Team

API_NAMES = ("segment", "save_correction", "skip", "unskip", "next_case", "ingest", "export", "retrain", "job",
             "cancel_job", "models", "promote", "rollback", "submit_review", "review_queue", "next_review", "review",
             "agreement", "project")


# endpoint -> the action it takes (medclipseg.team.access.ACTIONS); a save with status 'skipped'
# and a skip of someone else's case are checked further inside.
API_ACTIONS = {"segment": "segment", "save_correction": "save", "skip": "skip_own", "unskip": "skip_own",
               "next_case": "take_case", "ingest": "ingest", "export": "export", "retrain": "retrain",
               "job": "see_models", "cancel_job": "cancel_job", "models": "see_models", "promote": "promote",
               "rollback": "rollback", "submit_review": "save", "review_queue": "review", "next_review": "review",
               "review": "review", "agreement": "review", "project": "project_settings"}
assert set(API_ACTIONS) == set(API_NAMES)


def login_name(request) -> "str | None":
    """The login name of a request: the username Gradio set on it, else (a component's server
    function, handed the request as it came) the one its session cookie belongs to; None without."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return str(request.username)
    app = getattr(request, "app", None)
    tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
    cookies = getattr(request, "cookies", None) or {}
    if not isinstance(tokens, dict) or cookie_id is None:
        return None
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    user = tokens.get(token) if token else None
    return str(user) if user else None


def acting(team: Team, request, typed_name: Optional[str], action: str) -> Actor:
    """Who asks (the login, or the typed name without logins), once their role allows `action`;
    AccessDenied in words otherwise."""
    return team.actor(login_name(request), typed_name).require(action)


def uploaded(value, what: str) -> Optional[tuple]:
    """(server path, original name) of a file sent with ``handle_file``; None when nothing was sent.

    Only file objects are accepted: Gradio has checked that their path is an upload, whereas a
    plain text path would point anywhere on the server.
    """
    if value is None:
        return None
    if isinstance(value, FileData):
        value = value.model_dump()
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        path = value["path"]
        return path, (value.get("orig_name") or Path(path).name)
    raise RequestError(f"Send the {what} as a file (gradio_client.handle_file(path)), not as {type(value).__name__}.")


def _file(path) -> FileData:
    return FileData(path=str(path), orig_name=Path(path).name)


def _in_words(endpoint):
    """Refusals become a gr.Error with the message only (no server paths, no traceback)."""
    @functools.wraps(endpoint)
    def wrapper(*args, **kwargs):
        try:
            return endpoint(*args, **kwargs)
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None
    return wrapper


def register(service: AnnotationService, team: Optional[Team] = None) -> None:
    """Add the endpoints to the gr.Blocks being built (call inside its ``with`` block)."""
    team = Team.open() if team is None else team

    @_in_words
    def segment(image: Optional[FileData], prompt: str, samples: int = service.num_samples,
                threshold: float = 0.5, annotator: str = "", add_to_queue: bool = False,
                request: gr.Request = None) -> tuple[dict, FileData, FileData]:
        """Segment one image: a summary, the 0/255 mask (PNG) and the maps (npz: probability, entropy,
        mutual_information). Nothing is stored unless add_to_queue is true; then the image becomes a
        case in the review queue, claimed by the annotator, and case_id / prediction_id are set.
        A volume (.nii / .nii.gz, or a .zip of one DICOM series) answers with the mask as .nii.gz (0/1)
        and the probability as .nii.gz, both on the scan's own grid with its affine; the summary has
        kind "volume", shape, start_slice and the volume's scores."""
        who = acting(team, request, annotator, "segment").name
        sent = uploaded(image, "image")
        if sent is None:
            raise RequestError("No image given: send one with handle_file(path) (PNG, JPEG, BMP, TIFF or DICOM).")
        path, name = sent
        if not isinstance(add_to_queue, bool):
            raise RequestError("add_to_queue must be true or false.")
        if volume_workflow.is_volume_name(name):
            return _segment_volume(path, name, prompt, samples, threshold, who, add_to_queue)
        result = service.segment(path, prompt, name=name, num_samples=samples, threshold=threshold,
                                 annotator=who, add_to_queue=add_to_queue,
                                 origin="api")
        prediction = result.prediction
        mask_path, maps_path = service.prediction_files(prediction)
        summary = {"case_id": result.case.id if result.case is not None else None,
                   "prediction_id": result.prediction_id, "added_to_queue": result.case is not None,
                   "model_id": prediction.model_id, "prompt": prediction.prompt,
                   "num_samples": prediction.num_samples, "threshold": prediction.threshold,
                   "seconds": prediction.seconds, "scores": prediction.scores}
        return summary, _file(mask_path), _file(maps_path)

    def _segment_volume(path, name, prompt, samples, threshold, annotator, add_to_queue):
        result = service.segment_volume(path, prompt, name=name, num_samples=samples, threshold=threshold,
                                        annotator=annotator, add_to_queue=add_to_queue, origin="api")
        prediction, volume = result.prediction, result.volume
        with service.scratch.folder() as out:
            stem = Path(name).name.split(".")[0] or "volume"
            mask_path, probability_path = out / f"{stem}_mask.nii.gz", out / f"{stem}_probability.nii.gz"
            nib.save(volume.nifti_image(prediction.mask, dtype=np.uint8), str(mask_path))
            nib.save(volume.nifti_image(prediction.probability, dtype=np.float32), str(probability_path))
        summary = {"kind": "volume", "case_id": result.case.id if result.case is not None else None,
                   "prediction_id": result.prediction_id, "added_to_queue": result.case is not None,
                   "shape": list(volume.shape), "affine": np.asarray(volume.affine).tolist(),
                   "plane": volume.slice_plane, "start_slice": int(prediction.start_slice),
                   "model_id": prediction.model_id, "prompt": prediction.prompt,
                   "num_samples": prediction.num_samples, "threshold": prediction.threshold,
                   "seconds": prediction.seconds, "scores": prediction.scores}
        return summary, _file(mask_path), _file(probability_path)

    @_in_words
    def save_correction(case_id: Optional[int], mask: Optional[FileData] = None, annotator: str = "",
                        status: str = "corrected", prediction_id: Optional[int] = None,
                        base_version: Optional[int] = None, reviewed_slices: Optional[list[int]] = None,
                        request: gr.Request = None) -> dict:
        """Record a review of a case: 'corrected' with the mask (PNG, white = foreground), 'accepted'
        (the predicted mask, no file) or 'skipped' (no mask; the case leaves the queue).
        `base_version`: the version the mask was made from (0: none existed); when given, the save is
        refused if another version was saved since (`next_case` reports `latest_version`).
        A volume case takes its mask as .nii.gz (0/1) on the grid /next_case served (same shape and
        affine; anything else is refused, nothing written) and optionally `reviewed_slices` (slice
        numbers as /next_case counts them, along its `plane`)."""
        status = (status or "corrected").strip() if isinstance(status, str) else status
        actor = acting(team, request, annotator, "skip_own" if status == "skipped" else "save")
        name = actor.name
        sent = uploaded(mask, "mask")
        case = service.store.get_case(check_case_id(case_id))
        if sent is not None and case.is_volume:
            if not volume_workflow.is_volume_name(sent[1]) or sent[1].lower().endswith(".zip"):
                raise RequestError(f"Case #{case.id} is a volume: send its mask as .nii.gz on the grid /next_case "
                                   "served (same shape and affine).")
            corrected = volume_workflow.read_mask_nifti(service, case.id, sent[0], name=sent[1])
        elif sent is not None and volume_workflow.is_volume_name(sent[1]):
            raise RequestError(f"Case #{case.id} is a 2-D image: send its mask as a PNG (white = foreground).")
        else:
            corrected = service.read_mask_file(sent[0], name=sent[1]) if sent is not None else None
        if reviewed_slices is not None and not isinstance(reviewed_slices, (list, tuple)):
            raise RequestError("reviewed_slices must be a list of slice numbers.")
        reviewed = None if reviewed_slices is None else [whole_number(v, "A reviewed slice") for v in reviewed_slices]
        checked = {}
        if base_version is not None and base_version != "":
            number = whole_number(base_version, "The base_version")
            if number < 0:
                raise RequestError(f"The base_version must be 0 (no saved version) or a version number, not {number}.")
            checked["base_version"] = None if number == 0 else number
        correction = service.save(case_id, corrected, annotator=name, status=status, prediction_id=prediction_id,
                                  reviewed_slices=reviewed, **checked,
                                  others_allowed=actor.may("skip_others" if status == "skipped" else "save_others"))
        if correction is None:
            return {"correction_id": None, "case_id": check_case_id(case_id), "version": None, "annotator": name,
                    "status": "skipped"}
        return {"correction_id": correction.id, "case_id": correction.case_id, "version": correction.version,
                "annotator": correction.annotator, "status": correction.status,
                "pixels_added": correction.pixels_added, "pixels_erased": correction.pixels_erased,
                "pixels_changed": correction.pixels_changed, "created_at": correction.created_at}

    def _latest_version(case_id: int, annotator: Optional[str] = None) -> int:
        latest = service.latest_correction(case_id, annotator)
        return 0 if latest is None else int(latest["version"])

    @_in_words
    def skip(case_id: Optional[int], annotator: str = "", discard_saved: bool = False,
             request: gr.Request = None) -> dict:
        """Take a case out of the review queue without a mask (it is never exported or trained on).
        Refused while another annotator holds the case. A case with a saved version (corrected or
        accepted) is refused, naming that version, unless discard_saved is true: skipping takes the
        version out of export and retraining. /unskip undoes a skip."""
        actor = acting(team, request, annotator, "skip_own")
        name = actor.name
        if not isinstance(discard_saved, bool):
            raise RequestError("discard_saved must be true or false.")
        outcome = service.skip(case_id, annotator=name, discard_saved=discard_saved,
                               others_allowed=actor.may("skip_others"))
        # "declined": one of several raters passed on the case; the others still label it.
        return {"case_id": check_case_id(case_id), "status": outcome, "annotator": name}

    @_in_words
    def unskip(case_id: Optional[int], annotator: str = "", request: gr.Request = None) -> dict:
        """Undo a skip: the case gets the status of its latest saved version (corrected or accepted),
        or goes back to the review queue (unreviewed) when it has none."""
        actor = acting(team, request, annotator, "skip_own")
        name = actor.name
        status = service.unskip(case_id, annotator=name, others_allowed=actor.may("skip_others"))
        return {"case_id": check_case_id(case_id), "status": status, "annotator": name}

    @_in_words
    def next_case(annotator: str = "", acquisition: str = "",
                  request: gr.Request = None) -> tuple[dict, Optional[FileData]]:
        """Lease the unreviewed case ranked first by `acquisition` to the annotator: its summary and
        image (PNG); case_id null and no image when the queue is empty. A volume case has kind
        "volume", shape, affine, plane, slices and start_slice (its most uncertain slice, counted along
        `plane` as the app shows it) and its image as .nii.gz in modality units on its own grid."""
        name = acting(team, request, annotator, "take_case").name
        acquisition = acquisition or settings.queue_order()
        case = service.take_next_case(name, acquisition=acquisition)
        if case is None:
            return {"case_id": None, "message": "No unreviewed cases left."}, None
        if case.is_volume:
            return _next_volume_case(service.open_case(case.id), name, acquisition)
        prediction_id = service.store.latest_prediction_id(case.id)
        prediction = service.store.prediction_row(prediction_id) if prediction_id is not None else None
        summary = {"case_id": case.id, "prediction_id": prediction_id, "prompt": case.prompt,
                   "original_name": case.original_name, "width": case.width,
                   "height": case.height, "assigned_to": name, "acquisition": acquisition,
                   "latest_version": _latest_version(case.id, name),
                   "model_id": prediction["model_id"] if prediction else None,
                   "scores": prediction["scores"] if prediction else {}}
        return summary, _file(service.stored_image_copy(case.id))

    def _next_volume_case(view, name, acquisition):
        case = view.case
        geometry = service.store.volume_geometry(case.id)
        with service.scratch.folder() as out:
            image = volume_workflow.scan_nifti_file(service, case.id, out)
        prediction = service.store.prediction_row(view.prediction_id) if view.prediction_id is not None else None
        start = int(case.start_slice or 0)
        summary = {"kind": "volume", "case_id": case.id, "prediction_id": view.prediction_id, "prompt": case.prompt,
                   "original_name": case.original_name, "shape": list(geometry.file_shape),
                   "affine": [list(row) for row in geometry.affine], "plane": geometry.plane,
                   "slices": geometry.depth, "start_slice": start, "modality": geometry.modality,
                   "assigned_to": name, "acquisition": acquisition, "latest_version": _latest_version(case.id, name),
                   "model_id": prediction["model_id"] if prediction else None,
                   "scores": prediction["scores"] if prediction else {}}
        return summary, _file(image)

    @_in_words
    def ingest(files: list[FileData], prompt: str = "", prompts_csv: Optional[FileData] = None,
               batch: str = "", samples: int = service.num_samples, request: gr.Request = None) -> dict:
        """Add images (or one .zip) to the review queue, each predicted and ranked by uncertainty.
        Give one prompt for all, or a CSV with columns image, prompt. Admins only."""
        acting(team, request, None, "ingest")
        if files is not None and not isinstance(files, (list, tuple)):
            files = [files]
        sent = [uploaded(item, "image") for item in files or []]
        paths = [item[0] for item in sent if item is not None]
        csv = uploaded(prompts_csv, "prompt table")
        report = service.ingest_uploads(paths, prompt=prompt, prompts_csv=csv[0] if csv else None,
                                        batch=batch, num_samples=samples)
        return {"added": list(report.added), "duplicates": list(report.duplicates),
                "failed": [{"name": name, "message": message} for name, message in report.failed],
                "seconds": report.seconds, "summary": report.summary()}

    @_in_words
    def export(val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
               volume_format: str = "authors", consensus: str = "staple",
               request: gr.Request = None) -> tuple[FileData, str]:
        """Zip the corrected and accepted cases in the authors' layout (Train/Val/Test folders).
        `volume_format`: "authors" (volumes as their reviewed slices), "nifti" (also each volume's
        image, mask, probability and entropy as .nii.gz on its own grid) or "dicom-seg" (also a
        DICOM-SEG for volumes read from DICOM). `consensus`: the label of a case with several raters,
        "staple" or "majority" (each rater's mask is under raters/ either way). Admins only."""
        acting(team, request, None, "export")
        result = service.export_archive(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                        volume_format=volume_format, consensus=consensus)
        return _file(result.zip_path), json.dumps({"counts": result.counts, "manifest": "manifest.json"})

    @_in_words
    def retrain(epochs: Optional[int] = None, promote: str = "auto", annotator: str = "",
                request: gr.Request = None) -> dict:
        """Start retraining the current model on the corrected and accepted cases (gold cases held out)
        in a background process; answers at once with the job id and the estimate (null before the
        first round). promote: auto (when it beats the current version on the gold split), yes or no.
        Refused while a job runs or with nothing to train on. Follow it with /job."""
        who = acting(team, request, annotator, "retrain").name
        started = model_tab.start_retrain(service, who, epochs, promote)
        return {"job_id": started.job_id, "estimate_seconds": started.estimate_seconds, "epochs": started.epochs,
                "promote": started.promote, "train_cases": started.train_cases, "gold_cases": started.gold_cases,
                "message": started.message()}

    @_in_words
    def job(job_id: Optional[int] = None, request: gr.Request = None) -> dict:
        """A retraining job: status (running, succeeded, failed, cancelled), progress 0-1, message,
        eta_seconds, version_id (once recorded) and the log's tail; without job_id the running job,
        else the latest (job_id null when none has run)."""
        acting(team, request, None, "see_models")
        return model_tab.job_summary(service, job_id)

    @_in_words
    def cancel_job(job_id: Optional[int] = None, annotator: str = "", request: gr.Request = None) -> dict:
        """Ask the running retraining (or job_id) to stop at its next step; it records no version."""
        who = acting(team, request, annotator, "cancel_job").name
        message = model_tab.cancel_retrain(service, who, job_id)
        return {"message": message, **model_tab.job_summary(service, job_id)}

    @_in_words
    def models(request: gr.Request = None) -> list[dict]:
        """Every model version, oldest first: id, current (the promoted one), kind, parent_id,
        created_at/by, train_cases, gold_cases, gold_dsc, gold_nsd, gold_uncertainty_spearman."""
        acting(team, request, None, "see_models")
        service.model_id  # a new database records its base version first
        return [model_tab.version_summary(version) for version in service.store.model_versions()]

    @_in_words
    def promote(version_id: str, annotator: str = "", request: gr.Request = None) -> dict:
        """Make a version current: predictions carry its id from now on and the unreviewed cases are
        re-scored by it in the background."""
        who = acting(team, request, annotator, "promote").name
        message = model_tab.promote_version(service, version_id, who)
        return {"current": service.store.current_model_id(), "serving": service.model_id, "message": message}

    @_in_words
    def rollback(annotator: str = "", request: gr.Request = None) -> dict:
        """Make the version promoted before the current one current again; each further rollback goes
        one promotion further back."""
        who = acting(team, request, annotator, "rollback").name
        message = model_tab.roll_back(service, who)
        return {"current": service.store.current_model_id(), "serving": service.model_id, "message": message}

    @_in_words
    def submit_review(case_id: Optional[int], version: Optional[int] = None, annotator: str = "",
                      request: gr.Request = None) -> dict:
        """Put a saved version up for review (default: the newest one you saved). Your own versions;
        a reviewer or an admin may submit anyone's."""
        actor = acting(team, request, annotator, "save")
        submitted = service.submit_for_review(case_id, annotator=actor.name, version=version,
                                              may_submit_others=actor.may("review"))
        return {"case_id": check_case_id(case_id), "version": submitted, "review_state": "submitted"}

    @_in_words
    def review_queue(order: str = "uncertainty", request: gr.Request = None) -> list[dict]:
        """The submitted cases, most uncertain first (order "uncertainty", the current model's band
        entropy) or most disputed first ("disagreement": 1 - mean pairwise Dice of the raters)."""
        acting(team, request, None, "review")
        return [{"case_id": row["id"], "prompt": row["prompt"], "original_name": row["original_name"],
                 "kind": row["kind"], "version": row["review_version"], "raters": row["rater_count"],
                 "disagreement": row["disagreement"], "uncertainty": row["rank_band_entropy"],
                 "in_review_by": row["assigned_to"]} for row in service.review_queue(order)]

    @_in_words
    def next_review(order: str = "uncertainty", annotator: str = "",
                    request: gr.Request = None) -> tuple[dict, Optional[FileData]]:
        """Reserve the first submitted case no other reviewer holds: its summary (the version to review,
        each rater's newest version, the agreement) and image; case_id null when none waits."""
        name = acting(team, request, annotator, "review").name
        view = service.next_review(name, order=order)
        if view is None:
            return {"case_id": None, "message": "No case waits for review."}, None
        case = view.case
        found = service.case_agreement(case.id)
        summary = {"case_id": case.id, "kind": case.kind, "prompt": case.prompt, "original_name": case.original_name,
                   "version": service.store.review_status(case.id)["review_version"],
                   "history": service.case_history(case.id), "reviews": service.store.review_history(case.id),
                   "agreement": None if found is None else found.summary(), "assigned_to": name}
        if case.is_volume:
            with service.scratch.folder() as out:
                image = volume_workflow.scan_nifti_file(service, case.id, out)
        else:
            image = service.case_image_file(view)
        return summary, _file(image)

    @_in_words
    def review(case_id: Optional[int], version: Optional[int], decision: str, comment: str = "",
               mask: Optional[FileData] = None, annotator: str = "", request: gr.Request = None) -> dict:
        """Approve or reject the version you reviewed (decision "approve" or "reject"; a rejection needs a
        comment). With a mask (PNG, or .nii.gz for a volume) your edit is saved as the next version and
        approved. A version saved since you opened the case is refused, nothing written."""
        actor = acting(team, request, annotator, "review")
        name = actor.name
        sent = uploaded(mask, "mask")
        edited = None
        if sent is not None:
            case = service.store.get_case(check_case_id(case_id))
            edited = volume_workflow.read_mask_nifti(service, case.id, sent[0], name=sent[1]) if case.is_volume \
                else service.read_mask_file(sent[0], name=sent[1])
        return service.decide_review(case_id, reviewer=name, version=version, decision=(decision or "").strip(),
                                     comment=comment, mask=edited, own_allowed=actor.may("review_own"))

    @_in_words
    def agreement(case_id: Optional[int] = None, method: str = "staple", request: gr.Request = None) -> dict:
        """How far the case's raters agree: pairwise Dice, each rater against the consensus (STAPLE or
        majority), STAPLE's sensitivity and specificity per rater, and how well the model's entropy
        map predicts where they disagree (`uncertainty_vs_disagreement`: pixel AUROC and Spearman).
        Without a case: that last figure for every case with several raters, with its medians."""
        acting(team, request, None, "review")
        if case_id is None:
            return service.uncertainty_vs_disagreement_report()
        found = service.case_agreement(case_id, method=(method or "staple").strip())
        return {"case_id": check_case_id(case_id), **({"raters": []} if found is None else found.summary()),
                "uncertainty_vs_disagreement": service.uncertainty_vs_disagreement(case_id)}

    @_in_words
    def project(review_required: Optional[bool] = None, raters_per_case: Optional[int] = None,
                request: gr.Request = None) -> dict:
        """The project's settings: whether only reviewed (approved) labels train and export, and how many
        raters label each case. Everyone may read them; only an admin changes them."""
        changing = review_required is not None or raters_per_case is not None
        acting(team, request, None, "project_settings" if changing else "see_models")
        found = service.set_project_settings(review_required=review_required, raters_per_case=raters_per_case) \
            if changing else service.project_settings()
        return {"review_required": found.review_required, "raters_per_case": found.raters_per_case}

    # The short calls of a team's loop answer directly, outside Gradio's queue (its round trip, join
    # then event stream, costs more than the work; benchmarks/team_load.py). The database keeps
    # concurrent calls apart. Model runs, ingests, exports and retrainings stay queued.
    direct = dict(queue=False)
    gr.api(segment, api_name="segment", concurrency_id="model", concurrency_limit=1)
    gr.api(save_correction, api_name="save_correction", **direct)
    gr.api(skip, api_name="skip", **direct)
    gr.api(unskip, api_name="unskip", **direct)
    gr.api(next_case, api_name="next_case", **direct)
    gr.api(ingest, api_name="ingest", concurrency_id="ingest", concurrency_limit=1)
    gr.api(export, api_name="export")
    gr.api(retrain, api_name="retrain", concurrency_id="model-actions", concurrency_limit=1)
    gr.api(job, api_name="job", **direct)
    gr.api(cancel_job, api_name="cancel_job")
    gr.api(models, api_name="models", **direct)
    gr.api(promote, api_name="promote", concurrency_id="model-actions", concurrency_limit=1)
    gr.api(rollback, api_name="rollback", concurrency_id="model-actions", concurrency_limit=1)
    for endpoint in (submit_review, review_queue, next_review, review, agreement, project):
        gr.api(endpoint, api_name=endpoint.__name__, **direct)

