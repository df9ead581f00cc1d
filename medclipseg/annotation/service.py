"""The annotation workflow shared by the app, its API and scripts: read, segment, store, review.

``AnnotationService`` owns one ``Predictor`` (loaded lazily, used by one caller at a time) and
one ``AnnotationStore``. Every step validates its input before it writes anything, so a bad
upload or prompt leaves the database untouched.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medclipseg.io.images import LoadedImage, read_dicom, read_image, validate_prompt


@dataclass
class SegmentResult:
    case: object            # storage.Case
    prediction_id: int
    prediction: object      # predictor.Prediction
    image_bgr: np.ndarray


@dataclass
class CaseView:
    """A stored case with its latest prediction, ready to show."""

    case: object
    prediction_id: Optional[int]
    prediction: Optional[object]
    image_bgr: np.ndarray


class AnnotationService:
    def __init__(self, store=None, predictor=None, *, weights: Optional[str] = None,
                 device: Optional[str] = None, num_samples: int = 30, cache_size: int = 16):
        from medclipseg.annotation.store import AnnotationStore

        self.store = store if store is not None else AnnotationStore()
        self._predictor = predictor
        self._weights = weights
        self._device = device
        self.num_samples = int(num_samples)
        self._load_lock = threading.Lock()
        # One model call at a time: torch already uses every core, and sampling state stays private.
        self.model_lock = threading.Lock()
        self._cache: "OrderedDict[int, object]" = OrderedDict()
        self._cache_size = int(cache_size)
        self._cache_lock = threading.Lock()

    # -- model -----------------------------------------------------------------------------
    @property
    def predictor(self):
        if self._predictor is None:
            with self._load_lock:
                if self._predictor is None:
                    from medclipseg.inference.predictor import Predictor

                    self._predictor = Predictor.from_pretrained(self._weights, device=self._device)
        return self._predictor

    @property
    def model_id(self) -> str:
        return str(getattr(self.predictor, "model_id", "unknown"))

    # -- images ----------------------------------------------------------------------------
    @staticmethod
    def read(source, *, name: Optional[str] = None, window: Optional[Sequence[float]] = None) -> LoadedImage:
        """Any supported file (path or bytes) as 8-bit BGR; ``window`` applies to grey DICOM."""
        if isinstance(source, (str, os.PathLike)):
            name = name or Path(source).name
        # read_image recognises DICOM itself (header window); only an explicit window needs read_dicom.
        if window is not None:
            return read_dicom(source, window=window, name=name)
        return read_image(source, name=name)

    # -- predictions -----------------------------------------------------------------------
    def _remember(self, prediction_id: int, prediction) -> None:
        with self._cache_lock:
            self._cache[prediction_id] = prediction
            self._cache.move_to_end(prediction_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def prediction(self, prediction_id: int):
        """A stored prediction (cached in memory; the maps are re-read from disk when evicted)."""
        with self._cache_lock:
            cached = self._cache.get(prediction_id)
            if cached is not None:
                self._cache.move_to_end(prediction_id)
                return cached
        prediction = self.store.load_prediction(prediction_id)
        self._remember(prediction_id, prediction)
        return prediction

    def segment(self, source, prompt: str, *, name: Optional[str] = None,
                window: Optional[Sequence[float]] = None, num_samples: Optional[int] = None,
                threshold: float = 0.5, seed: Optional[int] = 0, origin: str = "upload",
                annotator: Optional[str] = None, progress=None) -> SegmentResult:
        """Validate, read, predict, then store the case and its prediction (in that order).

        ``annotator`` claims the new case for that person, so that the review queue does not
        hand it to someone else while it is being corrected.
        """
        prompt = validate_prompt(prompt)
        loaded = source if isinstance(source, LoadedImage) else self.read(source, name=name, window=window)
        if progress:
            progress(0.2, "Sampling uncertainty maps")
        samples = int(num_samples or self.num_samples)
        predictor = self.predictor
        with self.model_lock:
            prediction = predictor.predict(loaded, prompt, num_samples=samples, threshold=threshold, seed=seed)
        if progress:
            progress(0.8, "Saving the case")
        metadata = dict(loaded.metadata)
        metadata["conversions"] = list(loaded.conversions)
        case = self.store.add_case(loaded.bgr, prompt=prompt, original_name=name or loaded.source_name or "image",
                                   source=origin, metadata=metadata)
        prediction_id = self.store.add_prediction(case.id, prediction)
        self._remember(prediction_id, prediction)
        if annotator:
            self.store.claim(case.id, annotator=annotator)
        return SegmentResult(case=case, prediction_id=prediction_id, prediction=prediction, image_bgr=loaded.bgr)

    # -- review queue ----------------------------------------------------------------------
    def open_case(self, case_id: int) -> CaseView:
        case = self.store.get_case(case_id)
        prediction_id = self.store.latest_prediction_id(case_id)
        prediction = self.prediction(prediction_id) if prediction_id is not None else None
        return CaseView(case=case, prediction_id=prediction_id, prediction=prediction,
                        image_bgr=self.store.load_image(case_id))

    def next_case(self, annotator: str, *, acquisition: str = "foreground_entropy",
                  batch: Optional[str] = None) -> Optional[CaseView]:
        case = self.store.next_case(annotator, acquisition=acquisition, batch=batch)
        return None if case is None else self.open_case(case.id)

    def save(self, case_id: int, corrected_mask: np.ndarray, *, annotator: str,
             prediction_id: Optional[int] = None, threshold: Optional[float] = None,
             status: str = "corrected"):
        return self.store.save_correction(case_id, corrected_mask, annotator=annotator,
                                          prediction_id=prediction_id, status=status, threshold=threshold)

    def ingest(self, source, **kwargs):
        from medclipseg.annotation.ingest import ingest

        # The lock is taken per image, so that interactive segmentations interleave with a long ingest.
        return ingest(self.store, _LockedPredictor(self.predictor, self.model_lock), source, **kwargs)

    def export(self, out_dir, **kwargs):
        from medclipseg.annotation.export import export_dataset

        return export_dataset(self.store, out_dir, **kwargs)


class _LockedPredictor:
    """A predictor whose ``predict`` holds the service's model lock."""

    def __init__(self, predictor, lock):
        self._predictor = predictor
        self._lock = lock

    def predict(self, *args, **kwargs):
        with self._lock:
            return self._predictor.predict(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._predictor, name)
