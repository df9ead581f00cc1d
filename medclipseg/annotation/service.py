"""The annotation workflow shared by the app, its API and scripts: read, segment, store, review.

``AnnotationService`` owns one ``Predictor`` (loaded lazily, used by one caller at a time), one
``AnnotationStore`` and one ``ScratchSpace`` for files handed out to users (API masks and maps,
queue images, export archives). Every step validates its input before it writes anything, so a
bad upload, prompt or argument leaves the database untouched and is answered in words.

One model, one lock: every prediction (an interactive segmentation, one image of an ingest) holds
``model_lock`` for all of its Monte-Carlo samples, so requests take turns; ``MAX_SAMPLES`` bounds
how long one request can hold it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from medclipseg.annotation import volume_workflow
from medclipseg.annotation.byte_cache import ByteCache, budget_of
from medclipseg.annotation.queue import ACQUISITION_SCORES, DEFAULT_ACQUISITION
from medclipseg.annotation.scratch import ScratchSpace
from medclipseg.annotation.store import KEEP_UNCHECKED, SavedVersionExists, StorageError
from medclipseg.inference import zerogpu
from medclipseg.io.dicom import read_dicom
from medclipseg.io.images import ImageReadError, LoadedImage, read_image
from medclipseg.io.masks import read_mask
from medclipseg.io.png import encode_png
from medclipseg.io.prompts import validate_prompt

__all__ = [
    "AnnotationService",
    "CaseView",
    "ConfirmationNeeded",
    "MAX_SAMPLES",
    "MIN_SAMPLES",
    "REVIEW_STATUSES",
    "RequestError",
    "SegmentResult",
]

MIN_SAMPLES = 1
MAX_SAMPLES = 64          # the app's slider maximum: about 2 s of model time on a CPU per request
REVIEW_STATUSES = ("corrected", "accepted", "skipped")
RESCORE_NAMED = 3         # failed cases that rescore_error names before "and N more"


class RequestError(ValueError):
    """A request the service refuses; the message is written for the person who sent it."""


class ConfirmationNeeded(RequestError):
    """A request that would throw saved work away (skipping a case with a saved version): refused
    until the caller confirms by sending it again with ``discard_saved=True``. The UI catches it to
    ask the person; the message names the version, who saved it and what skipping does."""

    def __init__(self, message: str, *, case_id: int, version: int, annotator: str, status: str):
        super().__init__(message)
        self.case_id, self.version, self.annotator, self.status = case_id, version, annotator, status


@dataclass
class SegmentResult:
    case: Optional[object]          # store.Case; None when the image was not added to the queue
    prediction_id: Optional[int]
    prediction: object              # inference.predictor.Prediction
    image_bgr: np.ndarray


@dataclass
class CaseView:
    """A stored case with its latest prediction, ready to show."""

    case: object
    prediction_id: Optional[int]
    prediction: Optional[object]
    image_bgr: np.ndarray


# ------------------------------------------------------------------------------------ validation


def check_samples(value) -> int:
    """A Monte-Carlo sample count in MIN_SAMPLES..MAX_SAMPLES (one request must not hold the model for long)."""
    number = whole_number(value, "The number of samples")
    if not MIN_SAMPLES <= number <= MAX_SAMPLES:
        raise RequestError(f"The number of samples must lie between {MIN_SAMPLES} and {MAX_SAMPLES} "
                           f"(got {number:,}); the model is shared, one request at a time.")
    return number


def check_threshold(value) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"The mask threshold must be a number between 0 and 1, not {value!r}.") from None
    if not 0.0 < threshold < 1.0:
        raise RequestError(f"The mask threshold must lie strictly between 0 and 1 (got {threshold:g}).")
    return threshold


def check_case_id(value) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RequestError("No case given: send the case_id that /segment or /next_case returned "
                           "(/next_case answers null when the queue is empty).")
    return whole_number(value, "The case_id")


def check_annotator(value) -> str:
    name = (value or "").strip() if isinstance(value, str) or value is None else str(value).strip()
    if not name:
        raise RequestError("An annotator name is required: type it in the 'Annotator' box (API: the "
                           "annotator argument); every save records who made it.")
    return name


def check_acquisition(value) -> str:
    key = (value or DEFAULT_ACQUISITION) if isinstance(value, str) or value is None else str(value)
    if key not in ACQUISITION_SCORES:
        raise RequestError(f"Unknown case order {key!r}; use one of {', '.join(ACQUISITION_SCORES)}.")
    return key


def whole_number(value, what: str) -> int:
    """``value`` as an int, or a RequestError naming ``what``."""
    if isinstance(value, bool):
        raise RequestError(f"{what} must be a whole number, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{what} must be a whole number, not {value!r}.") from None
    if not np.isfinite(number) or number != int(number):
        raise RequestError(f"{what} must be a whole number, not {value!r}.")
    return int(number)


def _upload_name(path, name: Optional[str]) -> str:
    """The name to show for an upload: the one given, else the file's own name (never its folder)."""
    return (name or "").strip() or Path(path).name


# ------------------------------------------------------------------------------------ the service


class AnnotationService:
    def __init__(self, store=None, predictor=None, *, weights: Optional[str] = None,
                 device: Optional[str] = None, num_samples: int = 30, cache_bytes: Optional[int] = None,
                 scratch: Optional[ScratchSpace] = None, volume_samples: Optional[int] = None,
                 precision: str = "fp32"):
        from medclipseg import settings
        from medclipseg.annotation.store import AnnotationStore

        self.num_samples = check_samples(num_samples)
        self.volume_samples = check_samples(settings.volume_samples() if volume_samples is None else volume_samples)  # before the store, so a refusal creates nothing
        self.store = store if store is not None else AnnotationStore()
        self._predictor = predictor
        self._weights = weights
        self._device = device
        self._precision = precision
        self.scratch = scratch if scratch is not None else ScratchSpace()
        self._load_lock = threading.Lock()
        # One model call at a time: torch already uses every core, and sampling state stays private.
        self.model_lock = threading.Lock()
        # Bounded in bytes (the predictions' share of MEDCLIPSEG_CACHE_MB unless given): one 100 MP
        # prediction holds 1.3 GB, so a count bound says nothing about memory.
        self._cache = ByteCache(budget_of("predictions") if cache_bytes is None else int(cache_bytes))
        self._unloadable: set = set()
        self.model_warning: Optional[str] = None
        self.rescore_error: Optional[str] = None
        # Re-scoring: per model id, the cases that failed ({case id: reason}), kept for the life of the
        # process so that a failing case is not retried every pass.
        self._rescore_failures: dict = {}
        self._rescorer: Optional[threading.Thread] = None
        self._stop_rescoring = threading.Event()
        if predictor is not None:
            self.use_injected_predictor()

    def close(self) -> None:
        """Stop background re-scoring and remove the scratch files; the store stays open (it may be shared)."""
        self._stop_rescoring.set()
        if self._rescorer is not None:
            self._rescorer.join(timeout=30)
        self.scratch.close()

    # -- model -----------------------------------------------------------------------------
    @property
    def predictor(self):
        """The model the database's current version names (loaded on first use; swapped, without a
        restart, when another version is promoted, by this process or another)."""
        if self._predictor is None:
            with self._load_lock:
                if self._predictor is None:
                    self._predictor = self._first_predictor()
        else:
            self._follow_current_version()
        return self._predictor

    @property
    def model_id(self) -> str:
        return str(getattr(self.predictor, "model_id", "unknown"))

    def _load(self, source):
        from medclipseg.inference.predictor import Predictor

        return Predictor.from_pretrained(source, device=self._device, precision=self._precision)

    def _first_predictor(self):
        """The database's current version; a database without one records the configured model
        (MEDCLIPSEG_WEIGHTS, else the demo) as its base version."""
        current = self.store.current_model_id()
        if current is not None:
            try:
                predictor = self._load(self.store.model_source(current))
                if predictor.model_id == current:
                    return predictor
                self.model_warning = (f"Model version {current} loads as {predictor.model_id}; serving the "
                                      "configured model instead.")
            except Exception as exc:  # a lost or unreadable version must not keep the app from starting
                self.model_warning = f"Model version {current} could not be loaded ({exc}); serving the configured model."
        predictor = self._load(self._weights)
        self._record_base(predictor)
        return predictor

    def _record_base(self, predictor) -> None:
        source = getattr(predictor, "source", None) or self._weights or "demo"
        model_id = str(getattr(predictor, "model_id", "") or "unknown")
        self.store.ensure_base_version(model_id, source=str(source), name=model_id.split("@")[0])

    def _follow_current_version(self) -> None:
        current = self.store.current_model_id()
        serving = getattr(self._predictor, "model_id", None)
        if current is None or current == serving or current in self._unloadable:
            return
        with self._load_lock:
            if current == getattr(self._predictor, "model_id", None):
                return
            try:
                predictor = self._load(self.store.model_source(current))
            except Exception as exc:
                self._unloadable.add(current)
                self.model_warning = f"Model version {current} could not be loaded ({exc}); still serving {self._predictor.model_id}."
                return
            if predictor.model_id != current:
                # Its files changed since it was recorded (another content hash): those are not the
                # weights the version names, and predictions under another id would never rank the
                # queue. Tried once in this process, like a version that does not load at all.
                self._unloadable.add(current)
                self.model_warning = (f"Model version {current} now loads as {predictor.model_id}: its files "
                                      f"changed after it was recorded, so it is not served; still serving "
                                      f"{self._predictor.model_id}.")
                return
            with self.model_lock:  # no prediction is half-way through the old model
                self._predictor = predictor
            self.model_warning = None

    def use_injected_predictor(self) -> None:
        """Record an injected predictor (tests, scripts) as the database's base version."""
        if self._predictor is not None:
            self._record_base(self._predictor)

    # -- background re-scoring -------------------------------------------------------------
    def rescore_pending(self, *, limit: Optional[int] = None, num_samples: Optional[int] = None,
                        stop: Optional[threading.Event] = None) -> int:
        """Predict unreviewed cases again with the current model until none is left unranked by it
        (or `limit` cases); returns how many were re-scored. Each case holds the model lock for one
        prediction only, so interactive requests interleave.

        A case that fails (its image file lost, the model raising, e.g. out of memory) is recorded
        and passed over: the pass goes on with the next cases, ``rescore_error`` names it, and the
        same model does not try it again in this process (another version, or a restart, does)."""
        samples = self.num_samples if num_samples is None else check_samples(num_samples)
        done = 0
        tried: dict = {}  # model id -> cases predicted (or failed) in this call
        model_id = None
        while limit is None or done < limit:
            predictor = self.predictor
            model_id = predictor.model_id
            if model_id != self.store.current_model_id():
                break  # not the current version (it could not be loaded): its predictions would rank nothing
            failed = self._rescore_failures.setdefault(model_id, {})
            # Cases this model failed on, and those it predicted in this call, are not asked for again:
            # so the call ends even if a prediction did not rank its case (a promotion in between).
            done_here = tried.setdefault(model_id, set())
            pending = self.store.cases_to_rescore(model_id, limit=8, exclude=set(failed) | done_here)
            if not pending:
                break
            for case_id in pending:
                if (stop is not None and stop.is_set()) or (limit is not None and done >= limit):
                    return done
                done_here.add(case_id)
                try:
                    case = self.store.get_case(case_id)
                    if case.is_volume:
                        with self.model_lock:
                            moved_on = predictor is not self._predictor
                        if moved_on:
                            done_here.discard(case_id)
                            break
                        volume_workflow.rescore_volume(self, predictor, case,
                                                       num_samples=min(samples, self.volume_samples))
                        done += 1
                        continue
                    image = self.store.load_image(case_id)
                    with self.model_lock:
                        if predictor is not self._predictor:
                            done_here.discard(case_id)
                            break  # another version was promoted meanwhile: fetch its backlog
                        prediction = zerogpu.predict(predictor, image, case.prompt, num_samples=samples, seed=0,
                                                     channel_order="bgr")  # stored images are BGR
                    prediction_id = self.store.add_prediction(case_id, prediction)
                except Exception as exc:  # one case must not stop the others
                    failed[case_id] = f"{type(exc).__name__}: {exc}"
                    self.rescore_error = self._rescore_failure_text(model_id, failed)
                    continue
                self._remember(prediction_id, prediction)
                done += 1
        # A finished pass says where things stand: this model's failed cases, or nothing (an earlier
        # error, or another version's failures, no longer apply).
        failed = self._rescore_failures.get(model_id)
        self.rescore_error = self._rescore_failure_text(model_id, failed) if failed else None
        return done

    @staticmethod
    def _rescore_failure_text(model_id: str, failed: dict) -> str:
        """What the Model tab shows: the cases `model_id` could not re-score and why (the first few)."""
        named = "; ".join(f"case {case_id} ({reason})" for case_id, reason in list(failed.items())[:RESCORE_NAMED])
        more = f"; and {len(failed) - RESCORE_NAMED} more" if len(failed) > RESCORE_NAMED else ""
        cases = "1 case" if len(failed) == 1 else f"{len(failed)} cases"
        return (f"{cases} could not be re-scored by {model_id}: {named}{more}. They stay in the queue unranked "
                "and are tried again after another version is promoted or the app restarts.")

    def start_background_rescoring(self, *, interval: float = 2.0) -> threading.Thread:
        """A daemon thread that keeps the queue ranked by the current model (see rescore_pending)."""
        if self._rescorer is not None and self._rescorer.is_alive():
            return self._rescorer

        def loop():
            while not self._stop_rescoring.is_set():
                try:
                    # Fingerprints of cases made before schema version 4 (diverse orders compare them).
                    while self.store.fill_descriptors() and not self._stop_rescoring.is_set():
                        pass
                    self.rescore_pending(stop=self._stop_rescoring)
                except Exception as exc:  # keep serving; the status shows what went wrong
                    self.rescore_error = f"{type(exc).__name__}: {exc}"
                self._stop_rescoring.wait(interval)

        self._rescorer = threading.Thread(target=loop, daemon=True, name="medclipseg-rescoring")
        self._rescorer.start()
        return self._rescorer

    def rescore_backlog(self) -> int:
        """Unreviewed cases the current model has not ranked yet."""
        current = self.store.current_model_id()
        return 0 if current is None else self.store.rescore_backlog(current)

    # -- images ----------------------------------------------------------------------------
    @staticmethod
    def read(source, *, name: Optional[str] = None, window: Optional[Sequence[float]] = None) -> LoadedImage:
        """Any supported file (path or bytes) as 8-bit BGR; ``window`` applies to grey DICOM."""
        if source is None or (isinstance(source, str) and not source.strip()):
            raise RequestError("No image given: upload an image (PNG, JPEG, BMP, TIFF or DICOM) first.")
        if isinstance(source, (str, os.PathLike)):
            name = _upload_name(source, name)
        # read_image recognises DICOM itself (header window); only an explicit window needs read_dicom.
        if window is not None:
            return read_dicom(source, window=window, name=name)
        return read_image(source, name=name)

    @staticmethod
    def read_mask_file(path, *, name: Optional[str] = None) -> np.ndarray:
        """A 0/255 (white = foreground) mask upload; messages name the file, never the server's folders."""
        if path is None or (isinstance(path, str) and not path.strip()):
            raise RequestError("No mask given: send the corrected mask as a PNG (white = foreground).")
        shown = _upload_name(path, name)
        try:
            data = Path(path).read_bytes()
        except OSError:
            raise RequestError(f"The mask '{shown}' could not be read.") from None
        try:
            return read_mask(data)
        except ImageReadError as exc:
            message = str(exc)
            for size in ("too large", "too small"):
                if size in message:
                    raise RequestError(f"The mask '{shown}' is {message.split(' is ', 1)[-1]}") from None
            raise RequestError(f"The mask '{shown}' is not a readable image (empty, truncated or another kind "
                               f"of file); send a PNG, white = foreground.") from None

    # -- predictions -----------------------------------------------------------------------
    def _remember(self, prediction_id: int, prediction) -> None:
        self._cache.put(prediction_id, prediction)  # not kept when larger than the whole budget

    def prediction(self, prediction_id: int):
        """A stored prediction (cached in memory; the maps are re-read from disk when evicted)."""
        cached = self._cache.get(prediction_id)
        if cached is not None:
            return cached
        prediction = self.store.load_prediction(prediction_id)
        self._remember(prediction_id, prediction)
        return prediction

    def segment(self, source, prompt: str, *, name: Optional[str] = None,
                window: Optional[Sequence[float]] = None, num_samples: Optional[int] = None,
                threshold: float = 0.5, seed: Optional[int] = 0, origin: str = "upload",
                annotator: Optional[str] = None, add_to_queue: bool = True,
                progress: Optional[Callable[[float, str], None]] = None) -> SegmentResult:
        """Validate, read, predict, then (``add_to_queue``) store the case and its prediction.

        Without ``add_to_queue`` nothing is stored: the image is only looked at, so a held-out
        image never reaches the review queue or an export. ``annotator`` claims a stored case
        for that person, so that the queue does not hand it to someone else meanwhile.
        """
        prompt = validate_prompt(prompt)
        samples = self.num_samples if num_samples is None else check_samples(num_samples)
        threshold = check_threshold(threshold)
        loaded = source if isinstance(source, LoadedImage) else self.read(source, name=name, window=window)
        if progress:
            progress(0.2, "Sampling uncertainty maps")
        predictor = self.predictor
        with self.model_lock:
            prediction = zerogpu.predict(predictor, loaded, prompt, num_samples=samples, threshold=threshold, seed=seed)
        if not add_to_queue:
            return SegmentResult(case=None, prediction_id=None, prediction=prediction, image_bgr=loaded.bgr)
        if progress:
            progress(0.8, "Saving the case")
        metadata = dict(loaded.metadata)
        metadata["conversions"] = list(loaded.conversions)
        # Case and prediction in one transaction: nobody (background re-scoring included) sees the case
        # without its prediction.
        case, prediction_id = self.store.add_case_with_prediction(
            loaded.bgr, prediction, prompt=prompt, original_name=name or loaded.source_name or "image", source=origin,
            metadata=metadata)
        self._remember(prediction_id, prediction)
        if annotator:
            self.store.claim(case.id, annotator=annotator)
        return SegmentResult(case=case, prediction_id=prediction_id, prediction=prediction, image_bgr=loaded.bgr)

    # -- files handed out ------------------------------------------------------------------
    def prediction_files(self, prediction) -> tuple:
        """(mask.png, maps.npz) of a prediction in a scratch folder: 0/255 mask; probability,
        entropy and mutual_information maps (float32, nats)."""
        with self.scratch.folder() as out:
            mask_path, maps_path = out / "mask.png", out / "maps.npz"
            mask_path.write_bytes(encode_png(prediction.mask.astype(np.uint8) * 255))
            np.savez_compressed(maps_path, probability=prediction.probability, entropy=prediction.entropy,
                                mutual_information=prediction.mutual_information)
        return mask_path, maps_path

    def take_next_case(self, annotator: str, *, acquisition: str = DEFAULT_ACQUISITION):
        """Lease the next case to `annotator` and return the store's Case, without reading its pixels or
        maps (a script's /next_case needs its file only); None when the queue has none for them."""
        annotator, acquisition = check_annotator(annotator), check_acquisition(acquisition)
        return self.store.next_case(annotator, acquisition=acquisition)

    def stored_image_copy(self, case_id: int) -> Path:
        """A scratch copy of a 2-D case's stored PNG, named ``case<id>.png`` (no decoding, no encoding)."""
        import shutil

        with self.scratch.folder() as out:
            path = out / f"case{int(case_id):06d}.png"
            shutil.copyfile(self.store.image_file(case_id), path)
        return path

    def case_image_file(self, view: CaseView) -> Path:
        """The case's pixels as ``case<id>.png`` in a scratch folder."""
        with self.scratch.folder() as out:
            path = out / f"case{view.case.id:06d}.png"
            path.write_bytes(encode_png(view.image_bgr))
        return path

    def export_archive(self, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                       statuses: Sequence[str] = ("corrected", "accepted"), volume_format: str = "authors",
                       consensus: str = "staple"):
        """Export the reviewed cases into a scratch folder and zip them, for download. ``volume_format``:
        authors (reviewed slices only), nifti or dicom-seg (export_dataset's choice for volume cases);
        ``consensus``: staple or majority, the label of a case with several raters."""
        from medclipseg.annotation.export import CONSENSUS_LABELS, VOLUME_FORMATS

        volume_format = (volume_format or "authors").strip().lower() if isinstance(volume_format, str) else volume_format
        if volume_format not in VOLUME_FORMATS:
            raise RequestError(f"The volume format must be one of {', '.join(VOLUME_FORMATS)}, not {volume_format!r}.")
        consensus = (consensus or "staple").strip().lower() if isinstance(consensus, str) else consensus
        if consensus not in CONSENSUS_LABELS:
            raise RequestError(f"The consensus must be one of {', '.join(CONSENSUS_LABELS)}, not {consensus!r}.")
        if not statuses:
            raise RequestError("Choose which cases to export: corrected, accepted or both.")
        try:
            val, test = float(val_fraction), float(test_fraction)
        except (TypeError, ValueError):
            raise RequestError("The validation and test fractions must be numbers between 0 and 0.5.") from None
        seed = 0 if seed is None or seed == "" else whole_number(seed, "The split seed")
        with self.scratch.folder() as out:
            target = out / f"medclipseg-export-{time.strftime('%Y%m%d-%H%M%S')}"
            return self.export(target, val_fraction=val, test_fraction=test, seed=seed,
                               statuses=tuple(statuses), make_zip=True, volume_format=volume_format,
                               consensus=consensus)

    # -- review queue ----------------------------------------------------------------------
    def queue_summary(self):
        """The store's ``QueueSummary``: cases per review status, saved versions, cases in review."""
        return self.store.queue_summary()

    def open_case(self, case_id: int) -> CaseView:
        case = self.store.get_case(case_id)
        prediction_id = self.store.latest_prediction_id(case_id)
        if case.is_volume:  # served slice by slice (volume_slice); no whole-volume maps in memory
            return CaseView(case=case, prediction_id=prediction_id, prediction=None, image_bgr=None)
        prediction = self.prediction(prediction_id) if prediction_id is not None else None
        return CaseView(case=case, prediction_id=prediction_id, prediction=prediction,
                        image_bgr=self.store.load_image(case_id))

    def next_case(self, annotator: str, *, acquisition: str = DEFAULT_ACQUISITION,
                  batch: Optional[str] = None, skip_case_id: Optional[int] = None) -> Optional[CaseView]:
        """The next case for `annotator`; ``skip_case_id`` (the case on their screen) is not served."""
        annotator, acquisition = check_annotator(annotator), check_acquisition(acquisition)
        case = self.store.next_case(annotator, acquisition=acquisition, batch=batch, skip_case_id=skip_case_id)
        return None if case is None else self.open_case(case.id)

    def save(self, case_id: int, mask: Optional[np.ndarray] = None, *, annotator: str,
             status: str = "corrected", prediction_id: Optional[int] = None,
             threshold: Optional[float] = None, base_version=KEEP_UNCHECKED, reviewed_slices=None,
             slice_provenance=None, others_allowed: bool = True):
        """Record a review. The status chooses the mask: 'corrected' saves ``mask`` (required),
        'accepted' the prediction's own mask at ``threshold`` (no mask may be sent), 'skipped'
        none (the case leaves the queue; returns None). Otherwise returns the store's Correction.
        ``others_allowed`` False (an annotator's role): only their own work is saved or skipped
        (AnnotationStore.save_correction, AnnotationStore.skip)."""
        case_id, annotator = check_case_id(case_id), check_annotator(annotator)
        if status not in REVIEW_STATUSES:
            raise RequestError(f"The status must be one of {', '.join(REVIEW_STATUSES)}, not {status!r}.")
        if prediction_id is not None and prediction_id != "":
            prediction_id = whole_number(prediction_id, "The prediction_id")
        else:
            prediction_id = None
        if threshold is not None:
            threshold = check_threshold(threshold)
        if status == "skipped":
            self.skip(case_id, annotator=annotator, others_allowed=others_allowed)
            return None
        if status == "corrected" and mask is None:
            raise RequestError("Send the corrected mask as a PNG (white = foreground), or use the "
                               "status 'accepted' to keep the prediction as it is.")
        if status == "accepted":
            if mask is not None:
                raise RequestError("An accepted case keeps the predicted mask: send no mask with the status "
                                   "'accepted', or use the status 'corrected'.")
            if prediction_id is None and self.store.latest_prediction_id(case_id) is None:
                raise RequestError(f"Case {case_id} has no prediction to accept; segment it first.")
        # For 'accepted' (mask None) the store saves the very mask it compares with.
        return self.store.save_correction(case_id, mask, annotator=annotator, prediction_id=prediction_id,
                                          status=status, threshold=threshold, base_version=base_version,
                                          reviewed_slices=reviewed_slices, slice_provenance=slice_provenance,
                                          others_allowed=bool(others_allowed))

    def skip(self, case_id: int, *, annotator: str, discard_saved: bool = False, others_allowed: bool = True) -> str:
        """Take a case out of the queue without a mask (status 'skipped'; it is never exported or trained on).

        Refused while another annotator holds a live lease on the case. A case with a saved version
        (corrected or accepted) raises ConfirmationNeeded unless ``discard_saved``: skipping takes
        that version out of export and retraining (``unskip`` puts it back). ``others_allowed``
        False (an annotator's role): a case someone else saved is refused (medclipseg.team.access)."""
        case_id, annotator = check_case_id(case_id), check_annotator(annotator)
        if not isinstance(discard_saved, (bool, np.bool_)):
            raise RequestError(f"discard_saved must be true or false, not {discard_saved!r}.")
        try:
            return self.store.skip(case_id, annotator=annotator, discard_saved=bool(discard_saved),
                                   others_allowed=bool(others_allowed))
        except SavedVersionExists as saved:
            raise ConfirmationNeeded(
                f"Case #{saved.case_id} has a saved version: v{saved.version} ({saved.status}), saved by "
                f"{saved.annotator}. Skipping the case takes it out of export and retraining (unskip puts it "
                "back). Confirm to skip it anyway (API: /skip with discard_saved=true).",
                case_id=saved.case_id, version=saved.version, annotator=saved.annotator,
                status=saved.status) from None
        except StorageError as exc:  # another's lease, an unknown case: a refused request, in the store's words
            raise RequestError(str(exc)) from None

    def unskip(self, case_id: int, *, annotator: str, others_allowed: bool = True) -> str:
        """Undo a skip: the case gets the status of its latest saved version (corrected or accepted),
        or goes back to the queue ('unreviewed') when it has none. Returns that status."""
        case_id, annotator = check_case_id(case_id), check_annotator(annotator)
        try:
            return self.store.unskip(case_id, annotator=annotator, others_allowed=bool(others_allowed))
        except StorageError as exc:  # not skipped, an unknown case
            raise RequestError(str(exc)) from None

    # -- volumes ----------------------------------------------------------------------------
    def read_scan(self, source, *, name: Optional[str] = None):
        """A NIfTI file or a DICOM series (folder, zip, files) as a ScanVolume; refusals in words."""
        return volume_workflow.read_scan(source, name=name)

    def segment_volume(self, source, prompt: str, **kwargs):
        """A scan predicted slice by slice and (add_to_queue) stored as one volume case
        (medclipseg.annotation.volume_workflow.segment_volume)."""
        return volume_workflow.segment_volume(self, source, prompt, **kwargs)

    def volume_slice(self, case_id: int, index: Optional[int] = None, **kwargs):
        """One slice of a volume case as the editor shows it (volume_workflow.slice_view)."""
        return volume_workflow.slice_view(self, check_case_id(case_id), index, **kwargs)

    def ingest(self, source, **kwargs):
        from medclipseg.annotation.ingest import ingest

        if "num_samples" in kwargs:
            kwargs["num_samples"] = check_samples(kwargs["num_samples"])
        # The lock is taken per image (per volume), so that interactive segmentations interleave with a
        # long ingest.
        predictor = self.predictor

        def predict_volume(volume, prompt, **options):
            from medclipseg.inference.volume import predict_volume as predict

            options["num_samples"] = min(int(options.get("num_samples") or self.volume_samples), self.volume_samples)
            with self.model_lock:
                return predict(predictor, volume, prompt, **options)

        return ingest(self.store, _LockedPredictor(predictor, self.model_lock), source, predict_volume=predict_volume,
                      **kwargs)

    def ingest_uploads(self, paths: Sequence, *, prompt: Optional[str] = None, prompts_csv=None,
                       batch: Optional[str] = None, num_samples: Optional[int] = None,
                       progress: Optional[Callable[[int, int, str], None]] = None):
        """Ingest uploaded files: one .zip as it is, else the images copied into one scratch folder
        (uploads sit in separate folders of the web server's cache)."""
        paths = [Path(p) for p in (paths or []) if p]
        if not paths:
            raise RequestError("Choose images or one .zip to ingest.")
        prompt = (prompt or "").strip() or None
        if prompts_csv:
            prompt = None  # the CSV wins over the one-prompt box
        if prompt is None and not prompts_csv:
            raise RequestError("Give one prompt for every image, or a CSV with columns image, prompt.")
        options = dict(prompt=prompt, prompts_csv=prompts_csv or None, batch=(batch or "").strip() or None,
                       num_samples=self.num_samples if num_samples is None else num_samples, progress=progress)
        if len(paths) == 1 and paths[0].suffix.lower() == ".zip":
            return self.ingest(paths[0], **options)
        with self.scratch.folder() as staging:
            for path in paths:
                shutil.copy(path, staging / path.name)
            try:
                return self.ingest(staging, **options)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def export(self, out_dir, **kwargs):
        from medclipseg.annotation.export import export_dataset

        return export_dataset(self.store, out_dir, **kwargs)

    # -- drafts and history (the store's, as they are) ----------------------------------------
    def save_draft(self, case_id: int, annotator: str, mask, **kwargs):
        return self.store.save_draft(case_id, annotator, mask, **kwargs)

    def draft(self, case_id: int, annotator: str):
        return self.store.draft(case_id, annotator)

    def discard_draft(self, case_id: int, annotator: str) -> bool:
        return self.store.discard_draft(case_id, annotator)

    def case_history(self, case_id: int) -> list:
        return self.store.case_history(case_id)

    def latest_correction(self, case_id: int, annotator: Optional[str] = None):
        """The newest saved version (of `annotator`'s own chain when a case has several raters)."""
        return self.store.latest_correction(case_id, annotator)

    # -- several raters and review (medclipseg.annotation.review) ---------------------------------
    def project_settings(self):
        return self.store.project_settings()

    def set_project_settings(self, *, review_required=None, raters_per_case=None):
        """Change the review step or the raters per case; None leaves a setting as it is."""
        if review_required is not None and not isinstance(review_required, (bool, np.bool_)):
            raise RequestError(f"review_required must be true or false, not {review_required!r}.")
        if raters_per_case is not None:
            raters_per_case = whole_number(raters_per_case, "The number of raters per case")
        try:
            return self.store.set_project_settings(
                review_required=None if review_required is None else bool(review_required),
                raters_per_case=raters_per_case)
        except StorageError as exc:
            raise RequestError(str(exc)) from None

    def submit_for_review(self, case_id, *, annotator: str, version=None, may_submit_others: bool = False) -> int:
        case_id, annotator = check_case_id(case_id), check_annotator(annotator)
        if version is not None and version != "":
            version = whole_number(version, "The version")
        else:
            version = None
        try:
            return self.store.submit_for_review(case_id, by=annotator, version=version,
                                                may_submit_others=may_submit_others)
        except StorageError as exc:
            raise RequestError(str(exc)) from None

    def review_queue(self, order: str = "uncertainty", limit: int = 50) -> list:
        try:
            return self.store.review_queue(order=order or "uncertainty", limit=limit)
        except StorageError as exc:
            raise RequestError(str(exc)) from None

    def next_review(self, reviewer: str, *, order: str = "uncertainty") -> Optional[CaseView]:
        """The next submitted case for `reviewer` (leased to them), opened; None when none waits."""
        reviewer = check_annotator(reviewer)
        try:
            case = self.store.next_review(reviewer, order=order or "uncertainty")
        except StorageError as exc:
            raise RequestError(str(exc)) from None
        return None if case is None else self.open_case(case.id)

    def decide_review(self, case_id, *, reviewer: str, version, decision: str, comment: str = "", mask=None,
                      own_allowed: bool = True) -> dict:
        """Approve or reject the version the reviewer saw ("approve" / "reject"); an edited mask is saved
        as the next version and approved. A version saved since is a VersionConflict, nothing written.
        ``own_allowed`` False: a version the reviewer saved is refused (AnnotationStore.decide_review)."""
        case_id, reviewer = check_case_id(case_id), check_annotator(reviewer)
        version = whole_number(version, "The version")
        if decision not in ("approve", "reject"):
            raise RequestError(f"The decision must be 'approve' or 'reject', not {decision!r}.")
        if comment is not None and not isinstance(comment, str):
            raise RequestError("The comment must be text.")
        return self.store.decide_review(case_id, reviewer=reviewer, version=version, approve=decision == "approve",
                                        comment=comment or "", mask=mask, own_allowed=own_allowed)

    def case_agreement(self, case_id, method: str = "staple"):
        """The case's agreement between raters (medclipseg.team.agreement), None before any save."""
        case_id = check_case_id(case_id)
        try:
            return self.store.case_agreement(case_id, method=method)
        except ValueError as exc:
            raise RequestError(str(exc)) from None

    def uncertainty_vs_disagreement(self, case_id) -> Optional[dict]:
        """How well the model's entropy map (the case's newest prediction) predicts where its raters
        disagree: medclipseg.team.agreement.uncertainty_vs_disagreement with the prediction's id and
        model; None with fewer than two raters or no prediction."""
        from medclipseg.annotation import volume_files
        from medclipseg.team.agreement import uncertainty_vs_disagreement

        case_id = check_case_id(case_id)
        case = self.store.get_case(case_id)
        masks = self.store.rater_masks(case_id)
        prediction_id = self.store.latest_prediction_id(case_id)
        if len(masks) < 2 or prediction_id is None:
            return None
        if case.is_volume:  # display order, stacked like the masks
            entropy = volume_files.mosaic(self.store.prediction_maps_volume(prediction_id, "entropy"))
            model_id = self.store.prediction_model_id(prediction_id)
        else:
            prediction = self.store.load_prediction(prediction_id)
            entropy, model_id = prediction.entropy, prediction.model_id
        return {"prediction_id": prediction_id, "model_id": model_id,
                **uncertainty_vs_disagreement(entropy, list(masks.values()))}

    def uncertainty_vs_disagreement_report(self) -> dict:
        """The figure over every case with several raters: each case's pixel AUROC and Spearman
        (uncertainty_vs_disagreement), their medians, and the Spearman between the queue's score (band
        entropy) and the raters' disagreement (1 - mean pairwise Dice) across cases."""
        from medclipseg.evaluation.metrics import spearman

        cases = []
        for row in self.store.multi_rater_cases():
            found = self.uncertainty_vs_disagreement(row["id"])
            if found is not None:
                cases.append({"case_id": row["id"], "band_entropy": row["rank_band_entropy"],
                              "disagreement": row["disagreement"], **found})

        def median(key):
            values = [case[key] for case in cases if case[key] is not None]
            return float(np.median(values)) if values else None

        ranked = [(case["band_entropy"], case["disagreement"]) for case in cases
                  if case["band_entropy"] is not None and case["disagreement"] is not None]
        level = spearman(*map(list, zip(*ranked))) if len(ranked) >= 3 else float("nan")
        return {"cases": cases, "median_pixel_auroc": median("pixel_auroc"),
                "median_pixel_spearman": median("pixel_spearman"),
                "case_spearman_band_entropy_vs_disagreement": level if np.isfinite(level) else None}


class _LockedPredictor:
    """A predictor whose ``predict`` holds the service's model lock (all that ``ingest`` calls)."""

    def __init__(self, predictor, lock):
        self._predictor = predictor
        self._lock = lock

    @property
    def model_id(self) -> str:
        return str(getattr(self._predictor, "model_id", "") or "")

    def predict(self, *args, **kwargs):
        with self._lock:
            return self._predictor.predict(*args, **kwargs)

    def predict_batch(self, items, **kwargs):
        """Holds the lock for one forward pass's worth of images at a time, so that interactive
        requests interleave with a bulk ingest as they do with single predictions."""
        from medclipseg.inference.batching import inputs_per_pass

        items, seed = list(items), kwargs.pop("seed", None)
        samples = min(self._predictor.chunk_size, int(kwargs.get("num_samples", 30)))
        per_pass = inputs_per_pass(self._predictor.rows_per_pass, samples)
        results = []
        for first in range(0, len(items), per_pass):
            seeds = seed[first:first + per_pass] if isinstance(seed, (list, tuple)) else seed
            with self._lock:
                results += self._predictor.predict_batch(items[first:first + per_pass], seed=seeds, **kwargs)
        return results
