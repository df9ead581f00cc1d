"""Annotation store: cases, model predictions and human corrections in a database plus files.

``AnnotationStore`` is the one entry point; the work is split by concern:

* :mod:`medclipseg.annotation.sql`: SQLite or PostgreSQL through SQLAlchemy Core; per-thread
  connections, one writer at a time, queue claims with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
* :mod:`medclipseg.annotation.schema`: schema version and migrations (Alembic, and the steps before it);
* :mod:`medclipseg.annotation.files`: the atomic file store beside the database (images, maps, masks);
* :mod:`medclipseg.annotation.queue`: acquisition order and leases (``next_case``, ``claim``, ``release``);
* :mod:`medclipseg.annotation.drafts`: in-progress masks, one per case and annotator.

``annotations.db`` (SQLite, WAL mode; the default) or a PostgreSQL database (``postgresql://`` URL)
holds the rows; pixels live in a files folder: ``<db stem>_files/`` beside an SQLite file, the
folder the settings name for PostgreSQL.
Files are written before the row that references them commits.

Versions are never overwritten: each correction names the version it replaces, and a save that
passes ``base_version`` (the version the annotator opened) is refused with ``VersionConflict``
when someone saved another version meanwhile.

Privacy: only the technical metadata keys in ``ALLOWED_METADATA_KEYS`` are stored. DICOM patient,
study and institution fields never reach the database, and images are stored as decoded pixels
(no DICOM header travels with them).

Concurrency: safe to share between threads (Gradio workers) and between processes.
"""
from __future__ import annotations

import enum
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from medclipseg import settings
from medclipseg.annotation import accounts, diversity, drafts, gold, jobs, queue, review, versions, volume_files
from medclipseg.annotation.sql import Connections, RowNotFound, parse_location
from medclipseg.annotation.drafts import Draft
from medclipseg.annotation.errors import SavedVersionExists, StorageError, VersionConflict
from medclipseg.annotation.files import MAP_NAMES, FileStore, new_stem
from medclipseg.annotation.schema import (
    CORRECTION_STATUSES,
    SCHEMA_VERSION,
    SCORE_COLUMNS,
    SOURCES,
    STATUSES,
    migrate,
    read_version,
)
from medclipseg.io.prompts import PromptError, validate_prompt

# The names other modules import from here; the constants live in the modules that own them.
__all__ = [
    "ALLOWED_METADATA_KEYS",
    "CORRECTION_STATUSES",
    "KEEP_UNCHECKED",
    "SCHEMA_VERSION",
    "STATUSES",
    "AnnotationStore",
    "Case",
    "Correction",
    "Draft",
    "QueueSummary",
    "SavedVersionExists",
    "StorageError",
    "VersionConflict",
    "default_db_path",
]

ALLOWED_METADATA_KEYS = ("modality", "pixel_spacing", "window_center", "window_width",
                         "photometric_interpretation", "conversions")
MAX_ANNOTATOR_CHARS = 100
MAX_NAME_CHARS = 255


@dataclass
class Case:
    id: int
    content_hash: str
    prompt: str
    original_name: str
    width: int
    height: int
    source: str
    batch: Optional[str]
    status: str
    metadata: dict
    created_at: str
    assigned_to: Optional[str]
    kind: str = "image"                 # "image" or "volume"
    start_slice: Optional[int] = None   # a volume case opens on this display slice (its most uncertain)

    @property
    def is_volume(self) -> bool:
        return self.kind == "volume"


@dataclass
class Correction:
    id: int
    case_id: int
    version: int
    annotator: str
    status: str
    pixels_added: int
    pixels_erased: int
    pixels_changed: int
    created_at: str
    replaces_version: Optional[int] = None


class Unchecked(enum.Enum):
    """save_correction's default base_version: save without comparing versions (as before drafts)."""
    KEEP_UNCHECKED = "unchecked"


KEEP_UNCHECKED = Unchecked.KEEP_UNCHECKED

# The columns case_history returns, in its order.
HISTORY_COLUMNS = ("version", "status", "annotator", "created_at", "pixels_added", "pixels_erased", "pixels_changed",
                   "model_id", "threshold", "replaces_version", "prediction_id")


@dataclass(frozen=True)
class QueueSummary:
    """Cases per review status, saved correction versions, and cases leased to an annotator now."""
    unreviewed: int
    corrected: int
    accepted: int
    skipped: int
    saved_versions: int
    in_review: int

    def text(self) -> str:
        """One line for the app, e.g. '3 unreviewed · 1 corrected · 0 accepted · 0 skipped · 2 saved versions'."""
        return (f"{self.unreviewed} unreviewed · {self.corrected} corrected · {self.accepted} accepted · "
                f"{self.skipped} skipped · {self.saved_versions} saved versions")


def default_db_path() -> Path:
    """Where the store lives unless told otherwise: medclipseg.settings.db_path()."""
    return settings.db_path()


# ----------------------------------------------------------------------------------- helpers


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json_value(value):
    """Metadata/scores values as plain JSON types (numpy scalars, tuples and arrays included)."""
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        # JSON has no NaN or infinity (PostgreSQL refuses them): a non-finite score is no score.
        return float(value) if math.isfinite(float(value)) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _finite_or_none(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _clean_annotator(annotator) -> str:
    if not isinstance(annotator, str) or not annotator.strip():
        raise StorageError("Please enter your name (annotator) before saving or requesting cases.")
    annotator = annotator.strip()
    if len(annotator) > MAX_ANNOTATOR_CHARS:
        raise StorageError(f"The annotator name is too long ({len(annotator)} characters); "
                           f"use at most {MAX_ANNOTATOR_CHARS}.")
    return annotator


def _check_threshold(threshold) -> float:
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise StorageError("The threshold must lie strictly between 0 and 1.")
    return threshold


def _check_base_version(value) -> Optional[int]:
    """A saved version number (1, 2, ...) or None ('no version was saved when I opened the case')."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise StorageError(f"The base version must be a saved version number (1, 2, ...) or None, not {value!r}.")
    return int(value)


def _latest_version_row(db, case_id: int) -> Optional[dict]:
    """version, annotator and created_at of the case's highest version; None before the first."""
    rows = list(db["corrections"].rows_where("case_id = ?", [int(case_id)], select="version, annotator, created_at",
                                             order_by="version DESC", limit=1))
    return rows[0] if rows else None


def _refuse_conflict(db, case_id: int, annotator: str, base_version: Optional[int],
                     latest: Optional[dict]) -> None:
    """VersionConflict unless the case's highest version is the one the annotator started from."""
    latest_version = None if latest is None else int(latest["version"])
    if latest_version == base_version:
        return
    raise VersionConflict(case_id=int(case_id), latest_version=latest_version,
                          latest_annotator=None if latest is None else latest["annotator"],
                          latest_created_at=None if latest is None else latest["created_at"],
                          base_version=base_version,
                          draft_kept=drafts.get_row(db, case_id, annotator) is not None)


def _case_fields(prompt: str, source: str, original_name: str, batch: Optional[str]) -> tuple:
    """(prompt, name, batch) of a new case, checked and trimmed; StorageError in words otherwise."""
    try:
        prompt = validate_prompt(prompt)
    except PromptError as exc:
        raise StorageError(str(exc)) from None
    if source not in SOURCES:
        raise StorageError(f"Unknown case source {source!r}; use one of {', '.join(SOURCES)}.")
    batch = None if batch is None or not str(batch).strip() else str(batch).strip()[:MAX_NAME_CHARS]
    return prompt, str(original_name)[:MAX_NAME_CHARS], batch


def _prediction_row(prediction, prompt: str, maps_path: str, mask_path: str, scores: dict,
                    foreground: int) -> dict:
    """A predictions row (without its case id) for files already written, image or volume alike."""
    row = {"model_id": str(prediction.model_id or ""), "prompt": str(prediction.prompt or prompt),
           "threshold": float(prediction.threshold), "num_samples": int(prediction.num_samples),
           "seconds": float(prediction.seconds or 0.0), "created_at": _now_iso(), "maps_path": maps_path,
           "mask_path": mask_path, "scores": json.dumps(scores), "foreground_pixels": int(foreground)}
    row.update({column: _finite_or_none(scores.get(key)) for column, key in SCORE_COLUMNS.items()})
    return row


def content_hash(image: np.ndarray) -> str:
    """A case's identity with its prompt: sha256 over the size and the pixels of the H x W x 3 image."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{int(image.shape[0])}x{int(image.shape[1])}x3:".encode("ascii"))
    digest.update(image.tobytes())
    return digest.hexdigest()


def _refuse_others_lease(row: dict, annotator: str, *, now: float) -> None:
    """StorageError while someone other than `annotator` holds a live lease on the case `row`."""
    holder, expires = row["assigned_to"], row["lease_expires"]
    if holder in (None, annotator) or expires is None or expires <= now:
        return
    until = datetime.fromtimestamp(expires, timezone.utc).strftime("%H:%M UTC")
    raise StorageError(f"Case #{row['id']} is being reviewed by {holder} (their lease runs until {until}); "
                       "only they can skip it until then.")


def _refuse_others_work(case_row: dict, latest: Optional[dict], annotator: str, *, now: float) -> None:
    """StorageError, in words, when `annotator` (an annotator's role: medclipseg.team.access) would save
    over work that is not theirs: a case another person holds (a live lease), a chain whose newest
    version someone else saved, or a label that is submitted for review or approved."""
    holder, expires = case_row["assigned_to"], case_row["lease_expires"]
    if holder not in (None, annotator) and expires is not None and expires > now:
        until = datetime.fromtimestamp(expires, timezone.utc).strftime("%H:%M UTC")
        raise StorageError(f"Case #{case_row['id']} is open by {holder} (their lease runs until {until}); until then only "
                           "they, a reviewer or an admin may save it. Nothing was saved.")
    if latest is not None and latest["annotator"] != annotator:
        raise StorageError(f"Case #{case_row['id']}'s newest version, v{latest['version']}, was saved by "
                           f"{latest['annotator']}; only a reviewer or an admin may save over someone else's "
                           "version. Nothing was saved.")
    state = case_row.get("review_state")
    if state in ("submitted", "approved"):
        words = "is submitted for review" if state == "submitted" else "was approved by a reviewer"
        raise StorageError(f"Case #{case_row['id']} {words}; only a reviewer or an admin may save a new version "
                           "of it now. Nothing was saved.")


def _save_target(db, case_id: int, annotator: str, project, *, for_rater: Optional[str], others_allowed: bool,
                 base_version) -> tuple:
    """(the chain a save continues, its newest version row or None), or the save's refusal in words:
    a k+1-th rater, others' work for an annotator's role, a conflict with ``base_version`` (unless
    KEEP_UNCHECKED). Run before any file is written and again inside the write transaction."""
    case_row = _get(db, "cases", case_id, "Case")
    chain = review.save_chain(db, case_row, annotator, project.raters_per_case, for_rater=for_rater,
                              others_allowed=others_allowed)
    latest = review.latest_in_chain(db, case_id, chain)
    if not others_allowed:
        _refuse_others_work(case_row, latest, annotator, now=time.time())
    if base_version is not KEEP_UNCHECKED:
        _refuse_conflict(db, case_id, annotator, base_version, latest)
    return chain, latest


def _refuse_skip_of_others(db, row: dict, annotator: str, *, now: float) -> None:
    """StorageError when `annotator` (an annotator's role) may not skip the case `row`: someone else saved
    a version of it, or they neither hold it (a live lease) nor saved it (take it from the queue first)."""
    savers = [saved["annotator"] for saved in db["corrections"].rows_where(
        "case_id = ?", [row["id"]], select="annotator, version", order_by="version DESC")]
    others = [name for name in savers if name != annotator]
    if others:
        raise StorageError(f"Case #{row['id']} has a version saved by {others[0]}; only a reviewer or an admin may "
                           "skip a case someone else saved. Nothing was changed.")
    holds = row["assigned_to"] == annotator and (row["lease_expires"] or 0) > now
    if not holds and not savers:
        raise StorageError(f"Case #{row['id']} is not open for you: take it from the queue (or open it) before "
                           "skipping it; only a reviewer or an admin may skip a case they do not hold. "
                           "Nothing was changed.")


def _binary_mask(mask, shape: tuple, what: str) -> np.ndarray:
    """bool, 0/1 or 0..255 HxW -> bool (>= 0.5 when the maximum is at most 1, else >= 127)."""
    array = np.asarray(mask)
    if array.ndim != 2 or tuple(array.shape) != tuple(shape):
        raise StorageError(f"The {what} has shape {tuple(array.shape)} but the image is "
                           f"{shape[0]}x{shape[1]} pixels; masks must match the image exactly.")
    if array.dtype == bool:
        return array.copy()
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise StorageError(f"The {what} must hold numbers or booleans, not {array.dtype}.")
    if array.size and (not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255):
        raise StorageError(f"The {what} must hold values between 0 and 255.")
    # 0/1 masks and 0/255 masks alike; 127 is the threshold read_mask uses for label images.
    return array >= (0.5 if array.size and array.max() <= 1 else 127)


def _case_from_row(row: dict) -> Case:
    return Case(id=row["id"], content_hash=row["content_hash"], prompt=row["prompt"],
                original_name=row["original_name"], width=row["width"], height=row["height"],
                source=row["source"], batch=row["batch"], status=row["status"],
                metadata=json.loads(row["metadata"] or "{}"), created_at=row["created_at"],
                assigned_to=row["assigned_to"], kind=row.get("kind") or "image", start_slice=row.get("start_slice"))


def _meta(db, key: str) -> Optional[str]:
    rows = list(db["meta"].rows_where("key = ?", [key], select="value"))
    return rows[0]["value"] if rows else None


def _get(db, table: str, row_id, what: str) -> dict:
    """The row with primary key `row_id`; StorageError in words when there is none."""
    try:
        return db[table].get(int(row_id))
    except RowNotFound:
        raise StorageError(f"{what} {row_id} does not exist in the annotation database.") from None


# ------------------------------------------------------------------------------------- store


class AnnotationStore:
    """Cases, predictions and corrections of one annotation database (see the module docstring).

    Safe to share between threads (each thread gets its own connection) and between processes.
    """

    def __init__(self, path=None, *, lease_seconds: float = 900.0, files_dir=None):
        """`path`: an SQLite file or a ``postgresql://`` URL (default: medclipseg.settings.db_location());
        `files_dir`: the folder of its images, maps and masks (default: ``<file stem>_files`` beside an
        SQLite file; for PostgreSQL medclipseg.settings.files_dir())."""
        self.location = parse_location(path if path is not None else settings.db_location())
        # The SQLite file (None for PostgreSQL): snapshots and tools that read the file use it.
        self.path = self.location.path
        if files_dir is not None:
            self.files_dir = Path(files_dir).expanduser()
        elif self.path is not None:
            self.files_dir = self.path.parent / f"{self.path.stem}_files"
        else:
            self.files_dir = settings.files_dir(self.location.name)
        self.lease_seconds = float(lease_seconds)
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"Could not create the annotation folder {self.path.parent}: {exc}.") from exc
        self._connections = Connections(self.location)
        try:
            migrate(self._connections, self.location.label)
        except BaseException:
            self._connections.close()
            raise
        self._files = FileStore(self.files_dir)
        self._files.create()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.location.dialect

    @property
    def url(self) -> str:
        """Where the database is, as MEDCLIPSEG_DB or ``--db`` would name it (the SQLite file's path,
        or the PostgreSQL URL with its password)."""
        return str(self.path) if self.path is not None else self._connections.location.url.replace(
            "postgresql+psycopg://", "postgresql://", 1)

    def _db(self):
        return self._connections.db()

    @property
    def schema_version(self) -> int:
        return read_version(self._db())

    # -- cases ----------------------------------------------------------------------------------
    def add_case(self, image_bgr: np.ndarray, *, prompt: str, original_name: str, source: str = "upload",
                 batch: Optional[str] = None, metadata: Optional[dict] = None, _within=None) -> Case:
        """Store an image with its prompt as a case (the existing case when these pixels and prompt are
        stored already). ``_within(db, case_id)`` runs inside the same write transaction (see
        add_case_with_prediction)."""
        image = np.asarray(image_bgr)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise StorageError(f"Case images must be 8-bit colour arrays (H x W x 3, uint8); got "
                               f"{image.dtype} with shape {tuple(image.shape)}.")
        prompt, original_name, batch = _case_fields(prompt, source, original_name or "image", batch)
        # Privacy rule: only whitelisted technical keys are kept (no patient/study identifiers).
        kept = {key: _json_value(value) for key, value in (metadata or {}).items() if key in ALLOWED_METADATA_KEYS}
        image = np.ascontiguousarray(image)
        height, width = int(image.shape[0]), int(image.shape[1])
        image_hash = content_hash(image)

        same = "content_hash = ? AND prompt = ?"
        existing = list(self._db()["cases"].rows_where(same, [image_hash, prompt], limit=1))
        if existing and _within is None:
            return _case_from_row(existing[0])
        image_path = f"images/{image_hash}.png"
        if not self._files.exists(image_path):  # content-addressed: an existing file is the same
            self._files.write_png(image_path, image)
        now = _now_iso()
        with self._connections.write() as db:
            # Checked again inside the write lock: another thread/process may have added it meanwhile.
            existing = list(db["cases"].rows_where(same, [image_hash, prompt], select="id", limit=1))
            if existing:
                case_id = existing[0]["id"]
            else:
                random_key = random.random()
                source_key, slice_index = diversity.source_and_slice(original_name)
                case_id = db["cases"].insert({
                    "content_hash": image_hash, "prompt": prompt, "original_name": original_name,
                    "width": width, "height": height, "source": source, "batch": batch, "image_path": image_path,
                    "metadata": json.dumps(kept), "status": "unreviewed", "created_at": now, "updated_at": now,
                    "random_key": random_key,
                    "rank_random_foreground": queue.rank_random_foreground(prompt, random_key),
                    "descriptor": diversity.image_descriptor(image), "source_key": source_key,
                    "slice_index": slice_index}).last_rowid
            if _within is not None:
                _within(db, case_id)
        return self.get_case(case_id)

    def fill_descriptors(self, *, limit: int = 256) -> int:
        """Compute the diversity fingerprint of up to `limit` cases that have none (cases made before
        schema version 4); returns how many were filled."""
        db = self._db()
        rows = list(db.query(f"SELECT id, image_path FROM cases {db.indexed_by('idx_cases_no_descriptor')} "
                                     "WHERE descriptor IS NULL ORDER BY id LIMIT ?", [int(limit)]))
        filled = 0
        for row in rows:
            try:
                descriptor = diversity.image_descriptor(self._files.read_image(row["image_path"]))
            except Exception:  # a lost image file: an all-zero fingerprint, so it is not tried again
                descriptor = bytes(diversity.DESCRIPTOR_BYTES)
            with self._connections.write() as db:
                db["cases"].update(row["id"], {"descriptor": descriptor})
            filled += 1
        return filled

    def find_case(self, image_bgr: Optional[np.ndarray] = None, *, prompt: str,
                  image_hash: Optional[str] = None) -> Optional[Case]:
        """The case holding these pixels (or pixels with this ``content_hash``) with this prompt, None
        when there is none (nothing is written)."""
        try:
            prompt = validate_prompt(prompt)
        except PromptError as exc:
            raise StorageError(str(exc)) from None
        if image_hash is None:
            image_hash = content_hash(np.asarray(image_bgr))
        rows = list(self._db()["cases"].rows_where("content_hash = ? AND prompt = ?", [image_hash, prompt], limit=1))
        return _case_from_row(rows[0]) if rows else None

    def get_case(self, case_id: int) -> Case:
        return _case_from_row(_get(self._db(), "cases", case_id, "Case"))

    def load_image(self, case_id: int) -> np.ndarray:
        return self._files.read_image(_get(self._db(), "cases", case_id, "Case")["image_path"])

    def image_file(self, case_id: int) -> Path:
        """The stored PNG of a 2-D case's pixels (as decoded at upload; lossless)."""
        return self._files.resolve(_get(self._db(), "cases", case_id, "Case")["image_path"], "images")

    # -- predictions ----------------------------------------------------------------------------
    def add_prediction(self, case_id: int, prediction) -> int:
        case = self.get_case(case_id)
        row = self._write_prediction_files(case.id, (case.height, case.width), prediction, case.prompt)
        try:
            with self._connections.write() as db:
                return self._insert_prediction(db, case.id, row)
        except BaseException:
            self._files.discard(row["maps_path"], row["mask_path"])
            raise

    def add_case_with_prediction(self, image_bgr: np.ndarray, prediction, *, prompt: str, original_name: str,
                                 source: str = "upload", batch: Optional[str] = None,
                                 metadata: Optional[dict] = None) -> tuple:
        """Store an image as a case (or find it, see add_case) together with its prediction, in one write
        transaction: no reader ever sees the case without a prediction, and a refused prediction adds no
        case. Returns (Case, prediction id)."""
        image = np.asarray(image_bgr)
        shape = tuple(int(n) for n in image.shape[:2])
        # The case id is not known before the transaction that creates it: the files carry 0 (their
        # names only need to be unique, which the random part of the stem makes them).
        row = self._write_prediction_files(0, shape, prediction, prompt)
        inserted = []
        try:
            case = self.add_case(image, prompt=prompt, original_name=original_name, source=source, batch=batch,
                                 metadata=metadata,
                                 _within=lambda db, case_id: inserted.append(self._insert_prediction(db, case_id, row)))
        except BaseException:
            self._files.discard(row["maps_path"], row["mask_path"])
            raise
        return case, inserted[0]

    def _write_prediction_files(self, case_id: int, shape: tuple, prediction, prompt: str) -> dict:
        """Check a prediction against the image size, write its maps and mask, and return its row
        (without case_id); nothing is written when it is refused."""
        maps = {}
        for name in MAP_NAMES:
            values = np.asarray(getattr(prediction, name))
            if values.shape != shape:
                raise StorageError(f"The prediction's {name} map has shape {values.shape} but the case's image "
                                   f"is {shape[0]}x{shape[1]} pixels.")
            # Probability stays float32 so that masks at any threshold match the model's own exactly;
            # the entropy maps are for display and ranking, where float16 is plenty.
            maps[name] = values.astype(np.float32 if name == "probability" else np.float16)
        mask = _binary_mask(prediction.mask, shape, "predicted mask")
        scores = _json_value(dict(prediction.scores or {}))
        stem = new_stem(case_id)
        maps_path, mask_path = f"maps/{stem}.npz", f"masks/{stem}-predicted.png"
        self._files.write_maps(maps_path, maps)
        try:
            self._files.write_mask(mask_path, mask)
        except BaseException:
            self._files.discard(maps_path)
            raise
        return _prediction_row(prediction, prompt, maps_path, mask_path, scores, int(mask.sum()))

    @staticmethod
    def _insert_prediction(db, case_id: int, row: dict) -> int:
        """The prediction row of a case, inside an open write transaction; ranks the case when the
        prediction is the current model's."""
        prediction_id = int(db["predictions"].insert({**row, "case_id": int(case_id)}).last_rowid)
        current = _meta(db, "current_model_id")
        # The queue ranks by the current model only; other models' predictions are kept, not ranked.
        if current is None or row["model_id"] == current:
            db["cases"].update(int(case_id), {"ranked_model_id": row["model_id"], "ranked_prediction_id": prediction_id,
                                              **queue.rank_values(json.loads(row["scores"]))})
        return prediction_id

    def prediction_row(self, prediction_id: int) -> dict:
        """A prediction's row (model_id, threshold, num_samples, scores decoded, ...), without its maps."""
        row = dict(_get(self._db(), "predictions", prediction_id, "Prediction"))
        row["scores"] = json.loads(row["scores"] or "{}")
        return row

    def latest_prediction_id(self, case_id: int) -> Optional[int]:
        rows = list(self._db()["predictions"].rows_where("case_id = ?", [int(case_id)], select="id",
                                                         order_by="id DESC", limit=1))
        return int(rows[0]["id"]) if rows else None

    def has_prediction_by(self, case_id: int, model_id: str) -> bool:
        return bool(self._db()["predictions"].count_where("case_id = ? AND model_id = ?", [int(case_id), str(model_id)]))

    def load_prediction(self, prediction_id: int):
        """The stored prediction as a medclipseg.inference.predictor.Prediction (maps as float32; mask =
        probability > threshold). prompt_truncated is not stored and comes back False."""
        # Imported here: the store itself needs neither torch nor the model code.
        from medclipseg.inference.predictor import Prediction

        row = _get(self._db(), "predictions", prediction_id, "Prediction")
        case = self.get_case(row["case_id"])
        maps = self._files.read_maps(row["maps_path"])
        return Prediction(probability=maps["probability"], mask=maps["probability"] > row["threshold"],
                          entropy=maps["entropy"], mutual_information=maps["mutual_information"],
                          scores=json.loads(row["scores"]), num_samples=row["num_samples"],
                          threshold=row["threshold"], prompt=row["prompt"], model_id=row["model_id"],
                          seconds=row["seconds"] or 0.0, image_shape=(case.height, case.width),
                          conversions=list(case.metadata.get("conversions", [])))

    # -- volumes --------------------------------------------------------------------------------
    def add_volume_case_with_prediction(self, volume, prediction, *, prompt: str, original_name: str,
                                        source: str = "upload", batch: Optional[str] = None) -> tuple:
        """Store a scan (medclipseg.io.volumes.ScanVolume) as one volume case with its prediction
        (medclipseg.inference.volume.VolumePrediction), in one write transaction, or find the case
        when this scan and prompt are stored already (the prediction is then added to it). The scan is
        kept in its display orientation with its geometry (volume_files); masks are stacked slices.
        Returns (Case, prediction id)."""
        prompt, original_name, batch = _case_fields(prompt, source, original_name or "volume", batch)
        geometry = volume_files.geometry_of(volume, prediction.window)
        content_hash = volume_files.content_hash(volume)
        same = "content_hash = ? AND prompt = ?"
        existing = list(self._db()["cases"].rows_where(same, [content_hash, prompt], select="id", limit=1))
        if existing:
            case = self.get_case(existing[0]["id"])
            return case, self.add_volume_prediction(case.id, prediction, volume=volume)
        scan_path, geometry_path = f"volumes/{content_hash}.npz", f"volumes/{content_hash}.json"
        display = volume.to_display()
        if not self._files.exists(scan_path):
            self._files.write(scan_path, volume_files.scan_writer(display))
        headers_json = None
        if volume.dicom_headers:
            from medclipseg.io.dicom_series import headers_to_json

            headers_json = headers_to_json(volume.dicom_headers)
        self._files.write(geometry_path, lambda handle: handle.write(
            volume_files.geometry_document(geometry, headers_json)))
        row = self._write_volume_prediction_files(0, volume, geometry, prediction, prompt)
        start = int(prediction.start_slice)
        from medclipseg.io.volumes import window_to_uint8

        start_image = window_to_uint8(display[start], geometry.window)
        kept = {"modality": geometry.modality, "conversions": list(volume.conversions),
                "pixel_spacing": list(geometry.display_spacing)}
        now = _now_iso()
        try:
            with self._connections.write() as db:
                again = list(db["cases"].rows_where(same, [content_hash, prompt], select="id", limit=1))
                if again:
                    case_id = again[0]["id"]
                else:
                    random_key = random.random()
                    case_id = db["cases"].insert({
                        "content_hash": content_hash, "prompt": prompt, "original_name": original_name,
                        "width": geometry.columns, "height": geometry.depth * geometry.rows, "source": source,
                        "batch": batch, "image_path": scan_path, "metadata": json.dumps(_json_value(kept)),
                        "status": "unreviewed", "created_at": now, "updated_at": now, "random_key": random_key,
                        "rank_random_foreground": queue.rank_random_foreground(prompt, random_key),
                        "descriptor": diversity.image_descriptor(start_image),
                        "source_key": f"volume:{content_hash[:17]}", "slice_index": start, "kind": "volume",
                        "start_slice": start}).last_rowid
                    db["volumes"].insert({"case_id": case_id, "depth": geometry.depth, "rows": geometry.rows,
                                          "columns": geometry.columns, "plane": geometry.plane,
                                          "modality": geometry.modality, "geometry_path": geometry_path,
                                          "source_format": geometry.source_format})
                prediction_id = self._insert_prediction(db, case_id, row)
                db["cases"].update(case_id, {"start_slice": start})
        except BaseException:
            self._files.discard(row["maps_path"], row["mask_path"])
            raise
        return self.get_case(case_id), prediction_id

    def find_volume_case(self, volume, *, prompt: str) -> Optional[Case]:
        """The volume case holding this scan with this prompt, None when there is none."""
        try:
            prompt = validate_prompt(prompt)
        except PromptError as exc:
            raise StorageError(str(exc)) from None
        rows = list(self._db()["cases"].rows_where("content_hash = ? AND prompt = ?",
                                                   [volume_files.content_hash(volume), prompt], limit=1))
        return _case_from_row(rows[0]) if rows else None

    def add_volume_prediction(self, case_id: int, prediction, *, volume=None) -> int:
        """Another prediction of a stored volume case (a re-score by a new model)."""
        case = self.get_case(case_id)
        if not case.is_volume:
            raise StorageError(f"Case {case.id} is an image, not a volume.")
        volume = volume if volume is not None else self.load_volume(case.id)
        geometry = self.volume_geometry(case.id)
        row = self._write_volume_prediction_files(case.id, volume, geometry, prediction, case.prompt)
        from medclipseg.io.volumes import window_to_uint8

        # The diverse orders compare a volume by its start slice: a new start slice, a new fingerprint.
        start = int(prediction.start_slice)
        start_image = window_to_uint8(volume.to_display(plane=geometry.plane)[start], geometry.window)
        try:
            with self._connections.write() as db:
                prediction_id = self._insert_prediction(db, case.id, row)
                db["cases"].update(case.id, {"start_slice": start, "slice_index": start,
                                             "descriptor": diversity.image_descriptor(start_image)})
                return prediction_id
        except BaseException:
            self._files.discard(row["maps_path"], row["mask_path"])
            raise

    def _write_volume_prediction_files(self, case_id: int, volume, geometry, prediction, prompt: str) -> dict:
        display_maps = {}
        for name in volume_files.MAP_NAMES:
            values = np.asarray(getattr(prediction, name))
            if values.shape != tuple(geometry.file_shape):
                raise StorageError(f"The prediction's {name} volume has shape {values.shape} but the scan is "
                                   f"{' x '.join(map(str, geometry.file_shape))} voxels.")
            display_maps[name] = volume.to_display(values)
        mask = volume.to_display(np.asarray(prediction.mask, dtype=bool))
        scores = _json_value(dict(prediction.scores or {}))
        scores["start_slice"] = int(prediction.start_slice)
        stem = new_stem(case_id)
        maps_path, mask_path = f"maps/{stem}.npz", f"masks/{stem}-predicted.png"
        self._files.write(maps_path, volume_files.maps_writer(display_maps, dict(prediction.slice_scores)))
        try:
            self._files.write_mask(mask_path, volume_files.mosaic(mask))
        except BaseException:
            self._files.discard(maps_path)
            raise
        return _prediction_row(prediction, prompt, maps_path, mask_path, scores, int(mask.sum()))

    def _volume_row(self, case_id: int) -> dict:
        rows = list(self._db()["volumes"].rows_where("case_id = ?", [int(case_id)], limit=1))
        if not rows:
            raise StorageError(f"Case {case_id} is not a volume case.")
        return rows[0]

    def volume_geometry(self, case_id: int) -> "volume_files.VolumeGeometry":
        row = self._volume_row(case_id)
        return volume_files.read_geometry_document(self._files.resolve(row["geometry_path"], "volumes"))[0]

    def load_volume(self, case_id: int):
        """The case's scan as a ScanVolume on its file's own grid with its affine (and, for a DICOM
        source, its de-identified headers)."""
        from medclipseg.io.volumes import ScanVolume

        case = self.get_case(case_id)
        row = self._volume_row(case.id)
        geometry, headers_json = volume_files.read_geometry_document(
            self._files.resolve(row["geometry_path"], "volumes"))
        display = volume_files.read_scan(self._files.resolve(self._image_path(case.id), "volumes"), geometry.depth)
        headers = None
        if headers_json:
            from medclipseg.io.dicom_series import headers_from_json

            headers = headers_from_json(headers_json)
        shell = ScanVolume(array=np.zeros(geometry.file_shape, np.float32), affine=np.array(geometry.affine))
        array = np.ascontiguousarray(shell.from_display(display, plane=geometry.plane), dtype=np.float32)
        return ScanVolume(array=array, affine=np.array(geometry.affine), modality=geometry.modality,
                          name=case.original_name, source_format=geometry.source_format, dicom_headers=headers,
                          frame_numbers=None if geometry.frame_numbers is None else list(geometry.frame_numbers),
                          conversions=list(case.metadata.get("conversions", [])))

    def _image_path(self, case_id: int) -> str:
        return _get(self._db(), "cases", case_id, "Case")["image_path"]

    def volume_scan_path(self, case_id: int) -> Path:
        """The file of a volume case's scan (one member per display slice; see ``volume_files``)."""
        return self._files.resolve(self._image_path(case_id), "volumes")

    def prediction_maps_path(self, prediction_id: int) -> Path:
        """The file of a prediction's maps (a volume's: 8-bit, one member per slice and map)."""
        return self._files.resolve(_get(self._db(), "predictions", prediction_id, "Prediction")["maps_path"], "maps")

    def volume_slice(self, case_id: int, index: int) -> np.ndarray:
        """One display slice of a volume case's scan, float32 in modality units."""
        geometry = self.volume_geometry(case_id)
        index = int(index)
        if not 0 <= index < geometry.depth:
            raise StorageError(f"Slice {index} does not exist; the volume has slices 0 to {geometry.depth - 1}.")
        return volume_files.read_scan_slice(self._files.resolve(self._image_path(case_id), "volumes"), index)

    def prediction_slice(self, prediction_id: int, index: int) -> dict:
        """One display slice of a volume prediction: probability, entropy and mutual_information
        (float32, from the 8-bit maps) and the predicted mask at the prediction's threshold."""
        row = _get(self._db(), "predictions", prediction_id, "Prediction")
        geometry = self.volume_geometry(row["case_id"])
        path = self._files.resolve(row["maps_path"], "maps")
        out = {name: volume_files.read_map_slice(path, name, int(index)) for name in volume_files.MAP_NAMES}
        out["mask"] = volume_files.mosaic_slice(self._files.read_mask(row["mask_path"]), geometry, int(index))
        out["threshold"] = float(row["threshold"])
        return out

    def slice_scores(self, prediction_id: int) -> dict:
        """Per-slice scores of a volume prediction (display order), e.g. {"band_entropy": array}."""
        row = _get(self._db(), "predictions", prediction_id, "Prediction")
        return volume_files.read_slice_scores(self._files.resolve(row["maps_path"], "maps"))

    def volume_slice_examples(self, case_id: int, mask, slices=None) -> list:
        """[(display index, uint8 BGR slice in the case's window, bool mask slice)] of a volume case's
        mask (a stored mask's path, or the stacked slices themselves, e.g. a consensus): ``slices`` (e.g.
        the reviewed ones), else every slice. What retraining and the authors' export layout take from
        a volume: 2-D slices with their masks."""
        from medclipseg.io.volumes import window_to_uint8

        geometry = self.volume_geometry(case_id)
        mask = self.load_mask(mask) if isinstance(mask, str) else np.asarray(mask)
        scan_path = self._files.resolve(self._image_path(case_id), "volumes")
        indices = range(geometry.depth) if not slices else sorted({int(i) for i in slices})
        examples = []
        for index in indices:
            if not 0 <= index < geometry.depth:
                continue
            grey = window_to_uint8(volume_files.read_scan_slice(scan_path, index), geometry.window)
            examples.append((index, np.repeat(grey[..., None], 3, axis=2),
                             volume_files.mosaic_slice(mask, geometry, index).copy()))
        return examples

    def prediction_maps_volume(self, prediction_id: int, name: str = "probability") -> np.ndarray:
        """One map of a volume prediction, whole, in display order (float32 from the 8-bit map)."""
        row = _get(self._db(), "predictions", prediction_id, "Prediction")
        geometry = self.volume_geometry(row["case_id"])
        return volume_files.read_map_volume(self._files.resolve(row["maps_path"], "maps"), name, geometry.depth)

    # -- corrections ----------------------------------------------------------------------------
    def _compared_mask(self, case: Case, prediction_id: Optional[int], threshold: Optional[float]):
        """(predicted mask, prediction row or None, threshold, scores) that a correction is compared with."""
        if prediction_id is None:
            prediction_id = self.latest_prediction_id(case.id)
        if prediction_id is None:
            if threshold is not None:
                _check_threshold(threshold)
            return np.zeros((case.height, case.width), bool), None, threshold, None
        row = _get(self._db(), "predictions", prediction_id, "Prediction")
        if row["case_id"] != case.id:
            raise StorageError(f"Prediction {prediction_id} belongs to case {row['case_id']}, not case {case.id}.")
        if threshold is None or float(threshold) == row["threshold"]:
            # The stored PNG is the model's own mask at this threshold.
            return self._files.read_mask(row["mask_path"]), row, row["threshold"], json.loads(row["scores"])
        threshold = _check_threshold(threshold)
        if case.is_volume:  # re-thresholded from the stored 8-bit probability, slice by slice
            probability = self.prediction_maps_volume(prediction_id)
            return volume_files.mosaic(probability > threshold), row, threshold, json.loads(row["scores"])
        prediction = self.load_prediction(prediction_id)
        if "boundary_band_px" not in prediction.scores:
            raise StorageError(f"Prediction {prediction_id} was stored without its boundary band, so it cannot be "
                               f"re-thresholded; save at its own threshold ({row['threshold']}).")
        prediction = prediction.with_threshold(threshold)
        return prediction.mask, row, threshold, prediction.scores

    def save_correction(self, case_id: int, corrected_mask: Optional[np.ndarray], *, annotator: str,
                        prediction_id: Optional[int] = None, status: str = "corrected",
                        threshold: Optional[float] = None, base_version=KEEP_UNCHECKED,
                        reviewed_slices=None, slice_provenance=None, for_rater: Optional[str] = None,
                        others_allowed: bool = True) -> Correction:
        """Save a new version; ``corrected_mask`` None (status 'accepted' only) saves the compared
        prediction's own mask at ``threshold``.

        ``base_version``: the version the annotator opened (None: the case had none then). When given,
        the save is refused with VersionConflict, writing nothing, if the case's highest version is
        another one. The default saves without that check. A successful save deletes the annotator's
        draft of the case.

        Several raters per case (medclipseg.annotation.review): the version continues the saver's own
        chain (``for_rater``: a reviewer's edit continues that rater's chain), the check compares with
        that chain's newest version, and the case stays in the queue until enough raters saved.

        ``others_allowed`` False (an annotator's role, medclipseg.team.access): only their own work is
        saved; a case another person holds, a chain someone else saved last, or a label submitted for
        review or approved is refused in words, writing nothing."""
        # Everything is validated before any file is written, so a refused save leaves no trace.
        annotator = _clean_annotator(annotator)
        if status not in CORRECTION_STATUSES:
            raise StorageError(f"A correction's status must be 'corrected' or 'accepted', not {status!r}.")
        if corrected_mask is None and status != "accepted":
            raise StorageError("A corrected case needs its corrected mask.")
        checked = base_version is not KEEP_UNCHECKED
        if checked:
            base_version = _check_base_version(base_version)
        case = self.get_case(case_id)
        if checked or not others_allowed:  # refused before any work when visible already; again under the lock
            _save_target(self._db(), case.id, annotator, review.project_settings(self._db()), for_rater=for_rater,
                         others_allowed=others_allowed, base_version=base_version)
        reviewed = self._reviewed_slices(case, reviewed_slices)
        provenance = self._slice_provenance(case, slice_provenance)
        if case.is_volume and corrected_mask is not None and np.ndim(corrected_mask) == 3:
            corrected_mask = volume_files.mosaic(np.asarray(corrected_mask))
        corrected = None if corrected_mask is None else _binary_mask(corrected_mask, (case.height, case.width),
                                                                     "corrected mask")
        predicted, prediction, threshold, scores = self._compared_mask(case, prediction_id, threshold)
        if corrected is None:
            if prediction is None:
                raise StorageError(f"Case {case.id} has no prediction to accept; segment it first.")
            corrected = predicted
        added = int(np.count_nonzero(corrected & ~predicted))
        erased = int(np.count_nonzero(predicted & ~corrected))
        stem = new_stem(case.id)
        mask_path, predicted_path = f"masks/{stem}-corrected.png", f"masks/{stem}-compared.png"
        self._files.write_mask(mask_path, corrected)
        try:
            self._files.write_mask(predicted_path, predicted)
            now = _now_iso()
            with self._connections.write() as db:
                # Inside BEGIN IMMEDIATE: no other writer can take the same version number or save in between.
                project = review.project_settings(db)
                chain, latest = _save_target(db, case.id, annotator, project, for_rater=for_rater,
                                             others_allowed=others_allowed, base_version=base_version)
                replaces = None if latest is None else int(latest["version"])
                highest = _latest_version_row(db, case.id)  # numbers run across the chains of a case
                version = (0 if highest is None else int(highest["version"])) + 1
                correction_id = db["corrections"].insert({
                    "rater": chain,
                    "case_id": case.id, "prediction_id": prediction["id"] if prediction else None,
                    "version": version, "annotator": annotator, "prompt": case.prompt, "status": status,
                    "mask_path": mask_path, "predicted_mask_path": predicted_path, "pixels_added": added,
                    "pixels_erased": erased, "pixels_changed": added + erased,
                    "threshold": None if threshold is None else float(threshold),
                    "model_id": prediction["model_id"] if prediction else None,
                    "scores": None if scores is None else json.dumps(_json_value(scores)),
                    "created_at": now, "replaces_version": replaces,
                    "reviewed_slices": None if reviewed is None else json.dumps(reviewed),
                    "slice_provenance": provenance}).last_rowid
                draft_path = drafts.delete_row(db, case.id, annotator)
                raters = review.rater_count(db, case.id)
                row = db["cases"].get(case.id)
                # With several raters the case stays in the queue (for others) until enough have saved.
                done = raters >= project.raters_per_case or row["status"] in CORRECTION_STATUSES
                changes = {"status": status if done else "unreviewed", "status_by": annotator, "updated_at": now,
                           "rater_count": raters, **queue.NO_LEASE}
                if done and project.review_required and project.raters_per_case > 1 and row["review_state"] is None:
                    changes.update(review_state="submitted", review_version=version)  # all raters in: review
                    review.log(db, case.id, action="submitted", by=annotator, version=version, now=now)
                if db["cases"].get(case.id)["gold"] is None:  # chosen once, when first corrected
                    changes["gold"] = int(gold.is_gold(case.content_hash, seed=_meta(db, "gold_seed"),
                                                       fraction=float(_meta(db, "gold_fraction") or 0.0)))
                db["cases"].update(case.id, changes)
        except BaseException:
            self._files.discard(mask_path, predicted_path)
            raise
        if draft_path is not None:  # after the commit: a failed save keeps the draft's file
            self._files.discard(draft_path)
        if raters > 1:
            self._record_disagreement(case.id)
        return Correction(id=int(correction_id), case_id=case.id, version=int(version), annotator=annotator,
                          status=status, pixels_added=added, pixels_erased=erased, pixels_changed=added + erased,
                          created_at=now, replaces_version=replaces)

    def _reviewed_slices(self, case: Case, reviewed_slices) -> Optional[list]:
        """The reviewed slices of a volume save or draft as sorted display indices (None for images)."""
        if not case.is_volume:
            if reviewed_slices:
                raise StorageError(f"Case {case.id} is an image; it has no slices to review.")
            return None
        depth = self._volume_row(case.id)["depth"]
        values = sorted({int(v) for v in (reviewed_slices or [])})
        if values and (values[0] < 0 or values[-1] >= depth):
            raise StorageError(f"Reviewed slices must lie between 0 and {depth - 1}; got {values[0]}..{values[-1]}.")
        return values

    def _slice_provenance(self, case: Case, slice_provenance) -> Optional[str]:
        """Where each slice of a volume save or draft came from, as stored (JSON of
        ``volume_tools.provenance_record``); None when not given. ``slice_provenance``: a per-slice
        list or such a record. Images have none."""
        if slice_provenance is None:
            return None
        if not case.is_volume:
            raise StorageError(f"Case {case.id} is an image; it has no slices to record the provenance of.")
        from medclipseg.annotation import volume_tools

        depth = self._volume_row(case.id)["depth"]
        try:
            if isinstance(slice_provenance, dict):
                listed = volume_tools.provenance_from_record(slice_provenance, depth)
            else:
                listed = list(slice_provenance)
                if len(listed) != depth:
                    raise ValueError(f"the provenance lists {len(listed)} slices; the volume has {depth}")
            return json.dumps(volume_tools.provenance_record(listed))
        except (TypeError, ValueError) as exc:
            raise StorageError(f"The slice provenance of case {case.id} is not usable: {exc}.") from None

    def latest_correction(self, case_id: int, annotator: Optional[str] = None) -> Optional[dict]:
        """The case's highest-version correction row (any status; scores decoded), None before the first.

        With several raters per case and an ``annotator``, the newest version of that annotator's own
        chain (raters never see each other's masks); for someone with no chain of their own on a case
        under review (a reviewer), the version under review."""
        db = self._db()
        case = _get(db, "cases", case_id, "Case")
        case_id = int(case["id"])
        where, params = "case_id = ?", [case_id]
        if annotator is not None and review.project_settings(db).raters_per_case > 1:
            own = review.latest_in_chain(db, case_id, annotator)
            if own is not None:
                where, params = "case_id = ? AND rater = ?", [case_id, annotator]
            elif case["review_state"] is not None and case["review_version"] is not None:
                where, params = "case_id = ? AND version = ?", [case_id, int(case["review_version"])]
            else:
                return None
        rows = list(db["corrections"].rows_where(where, params, order_by="version DESC", limit=1))
        if not rows:
            return None
        row = rows[0]
        row["scores"] = None if row["scores"] is None else json.loads(row["scores"])
        return row

    def versions_after(self, case_id: int, version: Optional[int]) -> list:
        """The case's correction rows with a version above ``version`` (None: every version), oldest
        first, with their annotator and reviewed slices (JSON as stored)."""
        case_id = int(_get(self._db(), "cases", case_id, "Case")["id"])
        return list(self._db()["corrections"].rows_where(
            "case_id = ? AND version > ?", [case_id, -1 if version is None else int(version)],
            select="version, annotator, status, reviewed_slices, created_at", order_by="version"))

    def case_history(self, case_id: int) -> list:
        """Every saved version of the case, oldest first, as dicts with the keys of HISTORY_COLUMNS."""
        case_id = int(_get(self._db(), "cases", case_id, "Case")["id"])
        return list(self._db()["corrections"].rows_where("case_id = ?", [case_id], select=", ".join(HISTORY_COLUMNS),
                                                         order_by="version"))

    # -- drafts ---------------------------------------------------------------------------------
    def save_draft(self, case_id: int, annotator: str, mask, *, prediction_id: Optional[int] = None,
                   base_version: Optional[int] = None, threshold: Optional[float] = None,
                   reviewed_slices=None, slice_provenance=None) -> Draft:
        """Keep ``annotator``'s in-progress mask of the case (one per case and annotator, overwritten;
        its revision counts the saves). ``base_version`` is the saved version the editor opened."""
        annotator = _clean_annotator(annotator)
        case = self.get_case(case_id)
        if case.is_volume and np.ndim(mask) == 3:
            mask = volume_files.mosaic(np.asarray(mask))
        mask = _binary_mask(mask, (case.height, case.width), "draft mask")
        reviewed = self._reviewed_slices(case, reviewed_slices)
        provenance = self._slice_provenance(case, slice_provenance)
        base_version = _check_base_version(base_version)
        threshold = None if threshold is None else _check_threshold(threshold)
        if prediction_id is not None:
            prediction_id = int(prediction_id)
            owner = _get(self._db(), "predictions", prediction_id, "Prediction")["case_id"]
            if owner != case.id:
                raise StorageError(f"Prediction {prediction_id} belongs to case {owner}, not case {case.id}.")
        mask_path = f"masks/{new_stem(case.id)}-draft.png"
        self._files.write_mask(mask_path, mask)
        try:
            with self._connections.write() as db:
                existing = drafts.get_row(db, case.id, annotator)
                row = drafts.write_row(db, {
                    "case_id": case.id, "annotator": annotator, "prediction_id": prediction_id,
                    "base_version": base_version, "threshold": threshold, "mask_path": mask_path,
                    "pixels": int(np.count_nonzero(mask)), "updated_at": _now_iso(),
                    "reviewed_slices": None if reviewed is None else json.dumps(reviewed),
                    "slice_provenance": provenance}, existing)
                # Editing keeps the case: the annotator's lease runs again from now (queue.renew).
                queue.renew(db, case.id, annotator, now=time.time(), lease_seconds=self.lease_seconds)
        except BaseException:
            self._files.discard(mask_path)
            raise
        if existing is not None:  # after the commit, so a failed save keeps the previous draft whole
            self._files.discard(existing["mask_path"])
        return drafts.from_row(row, mask)

    def draft(self, case_id: int, annotator: str) -> Optional[Draft]:
        """``annotator``'s draft of the case with its mask, None when there is none."""
        annotator = _clean_annotator(annotator)
        row = drafts.get_row(self._db(), case_id, annotator)
        while row is not None:
            try:
                return drafts.from_row(row, self._files.read_mask(row["mask_path"]))
            except StorageError:
                # A save in another thread may have replaced the draft (and removed this file) meanwhile.
                again = drafts.get_row(self._db(), case_id, annotator)
                if again is not None and again["mask_path"] == row["mask_path"]:
                    raise
                row = again
        return None

    def discard_draft(self, case_id: int, annotator: str) -> bool:
        """Delete ``annotator``'s draft of the case and its file; True when there was one."""
        annotator = _clean_annotator(annotator)
        with self._connections.write() as db:
            mask_path = drafts.delete_row(db, case_id, annotator)
        if mask_path is None:
            return False
        self._files.discard(mask_path)
        return True

    def set_status(self, case_id: int, status: str, *, annotator: str) -> None:
        annotator = _clean_annotator(annotator)
        if status not in STATUSES:
            raise StorageError(f"Unknown case status {status!r}; use one of {', '.join(STATUSES)}.")
        with self._connections.write() as db:
            _get(db, "cases", case_id, "Case")
            db["cases"].update(int(case_id), {"status": status, "status_by": annotator, "updated_at": _now_iso(),
                                              **queue.NO_LEASE})

    def skip(self, case_id: int, *, annotator: str, discard_saved: bool = False, others_allowed: bool = True) -> str:
        """Take a case out of the queue without a mask (status 'skipped': never exported or trained on);
        returns "skipped". With several raters per case, an unreviewed case is only declined for this
        annotator (returns "declined"): the other raters still get it.

        Refused (StorageError) while another annotator holds a live lease on the case. A case with a
        saved version (corrected or accepted) is refused with SavedVersionExists unless
        ``discard_saved``, since skipping takes that version out of export and retraining; ``unskip``
        puts it back. ``others_allowed`` False (an annotator's role): only their own case is skipped, one
        they hold or saved; a case with a version someone else saved is refused. Checks and change are
        one transaction, so a lease or a save cannot slip in between."""
        annotator = _clean_annotator(annotator)
        with self._connections.write() as db:
            row = _get(db, "cases", case_id, "Case")
            _refuse_others_lease(row, annotator, now=time.time())
            if row["status"] == "unreviewed" and review.project_settings(db).raters_per_case > 1:
                # One of several raters: the case is declined for them only; the others still label it.
                db["declines"].insert({"case_id": row["id"], "annotator": annotator, "created_at": _now_iso()},
                                      replace=True)
                queue.release(db, row["id"], annotator)
                return "declined"
            if not others_allowed:
                _refuse_skip_of_others(db, row, annotator, now=time.time())
            if row["status"] in CORRECTION_STATUSES:
                latest = next(iter(db["corrections"].rows_where(
                    "case_id = ?", [row["id"]], select="version, annotator, status, created_at",
                    order_by="version DESC", limit=1)))
            if row["status"] in CORRECTION_STATUSES and not discard_saved:
                raise SavedVersionExists(case_id=int(row["id"]), version=int(latest["version"]),
                                         annotator=latest["annotator"], status=latest["status"],
                                         created_at=latest["created_at"])
            db["cases"].update(row["id"], {"status": "skipped", "status_by": annotator, "updated_at": _now_iso(),
                                           **queue.NO_LEASE})
        return "skipped"

    def unskip(self, case_id: int, *, annotator: str, others_allowed: bool = True) -> str:
        """Undo a skip: the case takes the status of its latest saved version (corrected or accepted), or
        goes back to the queue as 'unreviewed' when it has none. Returns the status it now has.
        ``others_allowed`` False (an annotator's role): only the annotator's own skip is undone."""
        annotator = _clean_annotator(annotator)
        with self._connections.write() as db:
            row = _get(db, "cases", case_id, "Case")
            if row["status"] != "skipped" and list(db["declines"].rows_where(
                    "case_id = ? AND annotator = ?", [row["id"], annotator], select="case_id")):
                db["declines"].delete((row["id"], annotator))  # back in this rater's queue
                return str(row["status"])
            if row["status"] != "skipped":
                raise StorageError(f"Case #{row['id']} is not skipped (its status is {row['status']}); there is "
                                   "no skip to undo.")
            if not others_allowed and row.get("status_by") not in (None, annotator):
                raise StorageError(f"Case #{row['id']} was skipped by {row['status_by']}; only a reviewer or an "
                                   "admin may undo someone else's skip. Nothing was changed.")
            latest = list(db["corrections"].rows_where("case_id = ?", [row["id"]], select="status",
                                                       order_by="version DESC", limit=1))
            status = latest[0]["status"] if latest else "unreviewed"
            changes = {"status": status, "status_by": annotator, "updated_at": _now_iso(), **queue.NO_LEASE}
            if status == "unreviewed":
                # Back in the queue, ranked only by the current model (a promotion while the case was
                # skipped left its old ranks alone); without one it waits to be re-scored.
                current = _meta(db, "current_model_id")
                where, params = ("case_id = ?", [row["id"]]) if current is None else \
                    ("case_id = ? AND model_id = ?", [row["id"], current])
                ranked = list(db["predictions"].rows_where(where, params, select="id, model_id", order_by="id DESC",
                                                           limit=1))
                changes.update({"ranked_prediction_id": ranked[0]["id"] if ranked else None,
                                "ranked_model_id": ranked[0]["model_id"] if ranked else None})
            db["cases"].update(row["id"], changes)
            if status == "unreviewed":
                queue.copy_ranks(db, f"id = {int(row['id'])}")
        return status

    # -- review queue ---------------------------------------------------------------------------
    def next_case(self, annotator: str, *, acquisition: str = queue.DEFAULT_ACQUISITION,
                  batch: Optional[str] = None, skip_case_id: Optional[int] = None) -> Optional[Case]:
        """Lease the next unreviewed case to `annotator` (see medclipseg.annotation.queue); None when none is left.
        ``skip_case_id`` is never served (the case on the annotator's screen)."""
        annotator = _clean_annotator(annotator)
        queue.order_column(acquisition)  # refuse an unknown order before taking the write lock
        with self._connections.claim() as db:
            case_id = queue.next_case_id(db, annotator, acquisition=acquisition, batch=batch, now=time.time(),
                                         lease_seconds=self.lease_seconds,
                                         skip_case_id=None if skip_case_id is None else int(skip_case_id))
        return None if case_id is None else self.get_case(case_id)

    def claim(self, case_id: int, *, annotator: str) -> bool:
        """Lease one case to `annotator` (e.g. a case they just uploaded), like next_case does: their other
        leases are cleared. False, and nothing changes, while another annotator holds a live lease on it."""
        annotator = _clean_annotator(annotator)
        with self._connections.claim() as db:
            return queue.claim(db, case_id, annotator, now=time.time(), lease_seconds=self.lease_seconds)

    def lease_holder(self, case_id: int) -> Optional[str]:
        """Who holds the case now (a live lease), None when nobody does."""
        row = _get(self._db(), "cases", case_id, "Case")
        live = row["assigned_to"] is not None and (row["lease_expires"] or 0) > time.time()
        return row["assigned_to"] if live else None

    def release(self, case_id: int, *, annotator: str) -> None:
        """Give a leased case back to the queue (only the lease holder's lease is cleared)."""
        annotator = _clean_annotator(annotator)
        with self._connections.write() as db:
            queue.release(db, case_id, annotator)

    # -- several raters and review (medclipseg.annotation.review) --------------------------------
    def project_settings(self) -> review.ProjectSettings:
        return review.project_settings(self._db())

    def set_project_settings(self, *, review_required: Optional[bool] = None,
                             raters_per_case: Optional[int] = None) -> review.ProjectSettings:
        """Turn the review step on or off, and set how many raters label each case."""
        with self._connections.write() as db:
            review.set_project_settings(db, review_required=review_required, raters_per_case=raters_per_case)
        return self.project_settings()

    def multi_rater_cases(self) -> list:
        """id, rank_band_entropy and disagreement of every case two or more raters labelled, by id."""
        return list(self._db().query("SELECT id, rank_band_entropy, disagreement FROM cases WHERE rater_count >= 2 "
                                     "ORDER BY id"))

    def prediction_model_id(self, prediction_id: int) -> Optional[str]:
        return _get(self._db(), "predictions", prediction_id, "Prediction")["model_id"]

    def rater_masks(self, case_id: int) -> dict:
        """{rater: the newest mask of their chain} of a case (the one chain of k = 1 under its last saver's name);
        a volume's masks as its stacked slices (voxel for voxel what agreement needs)."""
        rows = review.latest_by_rater(self._db(), int(case_id))
        return {row["rater"] or row["annotator"]: self._files.read_mask(row["mask_path"]) for row in rows}

    def case_agreement(self, case_id: int, method: str = "staple"):
        """medclipseg.team.agreement.Agreement of the case's raters; None before anyone saved."""
        from medclipseg.team.agreement import agreement

        masks = self.rater_masks(case_id)
        return agreement(masks, method=method) if masks else None

    def _record_disagreement(self, case_id: int) -> None:
        """The case's disagreement and STAPLE consensus mask, after a save by one of several raters.

        Computed outside the write lock (STAPLE on a volume takes a while), so it is written only if
        no rater saved since: a concurrent save's own recomputation, which saw that save, wins."""
        def heads(db) -> list:
            return sorted((row["rater"] or "", int(row["version"])) for row in review.latest_by_rater(db, int(case_id)))

        seen = heads(self._db())
        found = self.case_agreement(case_id, method="staple")
        if found is None:
            return
        path = f"masks/{new_stem(int(case_id))}-consensus.png"
        self._files.write_mask(path, found.consensus)
        try:
            with self._connections.write() as db:
                old = db["cases"].get(int(case_id))["consensus_path"]
                if heads(db) != seen:
                    old = path  # stale: a newer save recomputes it
                else:
                    db["cases"].update(int(case_id), {"disagreement": found.disagreement, "consensus_path": path})
        except BaseException:
            self._files.discard(path)
            raise
        if old:
            self._files.discard(old)

    def submit_for_review(self, case_id: int, *, by: str, version: Optional[int] = None,
                          may_submit_others: bool = False) -> int:
        """Put a saved version (default: the newest one `by` saved) up for review; returns its number."""
        by = _clean_annotator(by)
        with self._connections.write() as db:
            row = _get(db, "cases", case_id, "Case")
            if version is None:
                mine = list(db["corrections"].rows_where("case_id = ? AND annotator = ?", [row["id"], by],
                                                         select="version", order_by="version DESC", limit=1))
                if not mine:
                    raise StorageError(f"Case #{row['id']} has no version saved by {by} to submit; save it first.")
                version = int(mine[0]["version"])
            review.submit(db, row["id"], by=by, version=int(version), may_submit_others=may_submit_others,
                          now=_now_iso())
        return int(version)

    def review_queue(self, order: str = "uncertainty", limit: int = 50) -> list:
        return review.queue_rows(self._db(), order=order, limit=limit)

    def next_review(self, reviewer: str, *, order: str = "uncertainty") -> Optional[Case]:
        """Lease the first submitted case no other reviewer holds to `reviewer`; None when none waits."""
        reviewer = _clean_annotator(reviewer)
        now = time.time()
        with self._connections.write() as db:
            for row in review.queue_rows(db, order=order, limit=200):
                if row["assigned_to"] in (None, reviewer) or (row["lease_expires"] or 0) <= now:
                    queue.lease(db, row["id"], reviewer, now=now, lease_seconds=self.lease_seconds)
                    return self._case(db, row["id"])
        return None

    def _case(self, db, case_id: int) -> Case:
        return _case_from_row(_get(db, "cases", case_id, "Case"))

    def decide_review(self, case_id: int, *, reviewer: str, version: int, approve: bool, comment: str = "",
                      mask=None, own_allowed: bool = True) -> dict:
        """Approve or reject `version` of a submitted case (the version the reviewer saw). With `mask` the
        reviewer's edit is saved first as the next version of the same chain and approved. A version
        saved since the reviewer opened the case is refused with VersionConflict, writing nothing.
        ``own_allowed`` False (a reviewer's role): a version the reviewer saved is refused in words,
        another reviewer or an admin decides on it."""
        reviewer = _clean_annotator(reviewer)
        version = _check_base_version(version)
        if version is None:
            raise StorageError("Name the version you reviewed (the number the case showed).")
        db = self._db()
        seen = list(db["corrections"].rows_where("case_id = ? AND version = ?", [int(case_id), version],
                                                 select="rater, annotator, version", limit=1))
        if not seen:
            raise StorageError(f"Case #{case_id} has no version v{version}.")
        chain = seen[0]["rater"]
        if not own_allowed:
            # A reviewer's own label (the version under review, or with several raters the newest
            # version of any of the case's chains) is decided by someone else.
            own = [seen[0]] if seen[0]["annotator"] == reviewer else [
                row for row in review.latest_by_rater(db, int(case_id)) if row["annotator"] == reviewer]
            if own:
                raise StorageError(f"Case #{case_id} v{own[0]['version']} was saved by you, {reviewer}; another "
                                   "reviewer or an admin decides on this case. Nothing was changed.")
        # Everything a decision can be refused for is checked before the reviewer's edit is saved,
        # so a refused decision writes nothing (and again in the deciding transaction below).
        review.checked_decision(_get(db, "cases", case_id, "Case"), approve=approve, comment=comment)
        if mask is not None and not approve:
            raise StorageError("An edited version is approved, not rejected: reject without a mask.")
        _refuse_conflict(db, int(case_id), reviewer, version, review.latest_in_chain(db, int(case_id), chain))
        new_version = None
        if mask is not None:
            new_version = self.save_correction(case_id, mask, annotator=reviewer, base_version=version,
                                               for_rater=chain).version
        with self._connections.write() as db:
            expected = new_version if new_version is not None else version
            _refuse_conflict(db, int(case_id), reviewer, expected, review.latest_in_chain(db, int(case_id), chain))
            review.decide(db, int(case_id), reviewer=reviewer, version=version, approve=approve, comment=comment,
                          new_version=new_version, now=_now_iso())
        return {"case_id": int(case_id), "decision": "approved" if approve else "rejected", "version": version,
                "new_version": new_version}

    def review_status(self, case_id: int) -> dict:
        """review_state, review_version, rater_count and disagreement of a case."""
        row = _get(self._db(), "cases", case_id, "Case")
        return {key: row[key] for key in ("review_state", "review_version", "rater_count", "disagreement")}

    def review_history(self, case_id: int) -> list:
        return review.history(self._db(), int(_get(self._db(), "cases", case_id, "Case")["id"]))

    # -- model versions -------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        """Where trained versions live, one complete folder each (see medclipseg.annotation.versions)."""
        return self.files_dir / "models"

    def current_model_id(self) -> Optional[str]:
        return versions.current_id(self._db())

    def model_versions(self) -> list:
        """Every version, oldest first; ``current`` marks the promoted one."""
        return versions.all_versions(self._db())

    def model_version(self, version_id: str):
        return versions.get(self._db(), version_id)

    def model_source(self, version) -> str:
        """What registry.load_model loads for a version: its source (base) or its folder (trained)."""
        version = version if isinstance(version, versions.ModelVersion) else self.model_version(version)
        return version.path if version.kind == "base" else str(self.files_dir / version.path)

    def ensure_base_version(self, model_id: str, *, source: str, name: str, by: str = "system"):
        """Record the model a database starts with and make it current, once; afterwards a no-op
        that returns the current version (which may be a trained one)."""
        with self._connections.write() as db:
            if versions.current_id(db) is None:
                versions.insert(db, {"id": model_id, "name": name, "parent_id": None, "kind": "base",
                                     "path": str(source), "created_at": _now_iso(), "created_by": by})
                versions.promote(db, model_id, by=by, reason="the model this database started with",
                                 now=_now_iso())
            return versions.get(db, versions.current_id(db))

    def add_base_version(self, model_id: str, *, source: str, name: str, by: str = "system"):
        """Record a model loaded from `source` (not trained here) as a version, without promoting it."""
        with self._connections.write() as db:
            versions.insert(db, {"id": model_id, "name": name, "parent_id": None, "kind": "base",
                                 "path": str(source), "created_at": _now_iso(), "created_by": by})
            return versions.get(db, model_id)

    def add_trained_version(self, folder: Path, *, model_id: str, name: str, parent_id: Optional[str],
                            created_by: str, recipe: dict, correction_ids, train_cases: int,
                            gold: Optional[dict] = None, parent_gold_dsc: Optional[float] = None,
                            job_id: Optional[int] = None, seconds: Optional[float] = None):
        """Record a trained model already written completely into ``folder`` (inside models_dir)."""
        folder = Path(folder)
        if folder.parent != self.models_dir or not (folder / "config.json").is_file():
            raise StorageError(f"A trained version must be a complete model folder inside {self.models_dir}.")
        gold = gold or {}
        with self._connections.write() as db:
            if job_id is not None:  # a reaped or cancelled job's late result is not recorded
                jobs.require_running(db, job_id)
            versions.insert(db, {
                "id": model_id, "name": name, "parent_id": parent_id, "kind": "trained",
                "path": f"models/{folder.name}", "recipe": recipe, "correction_ids": list(correction_ids),
                "train_cases": int(train_cases), "gold_cases": gold.get("cases"),
                "gold_dsc": _finite_or_none(gold.get("dsc")), "gold_nsd": _finite_or_none(gold.get("nsd")),
                "gold_uncertainty_spearman": _finite_or_none(gold.get("uncertainty_spearman")),
                "parent_gold_dsc": _finite_or_none(parent_gold_dsc), "job_id": job_id, "seconds": seconds,
                "created_at": _now_iso(), "created_by": created_by})
            return versions.get(db, model_id)

    def promote(self, version_id: str, *, by: str, reason: str = "promoted by hand"):
        """Make a version current (the queue then ranks by it); returns the version."""
        by = _clean_annotator(by)
        version = self._servable_version(version_id)
        with self._connections.write() as db:
            versions.promote(db, version.id, by=by, reason=reason, now=_now_iso())
        return self.model_version(version.id)

    def promote_if_current(self, version_id: str, *, expected_current: Optional[str], by: str, reason: str) -> bool:
        """Promote `version_id` only while `expected_current` is still the current model, checked in
        the promoting transaction: a retraining round's automatic promotion never overrides a
        promotion or rollback someone made while it trained. True when promoted."""
        by = _clean_annotator(by)
        version = self._servable_version(version_id)
        with self._connections.write() as db:
            if versions.current_id(db) != expected_current:
                return False
            versions.promote(db, version.id, by=by, reason=reason, now=_now_iso())
        return True

    def _servable_version(self, version_id: str):
        version = self.model_version(version_id)
        if version.kind == "trained" and not (self.files_dir / version.path / "config.json").is_file():
            raise StorageError(f"Model version {version_id} has lost its files ({version.path}); it cannot serve.")
        return version

    def rollback(self, *, by: str):
        """Make the version promoted before the current one current again; repeated rollbacks walk
        further back through the promotion history (versions.promotion_stack)."""
        by = _clean_annotator(by)
        with self._connections.write() as db:  # target and change in one transaction
            target = versions.rollback_target(db)
            if target is None:
                raise StorageError("There is no earlier model version to roll back to.")
            self._servable_version(target)
            versions.promote(db, target, by=by, reason="rollback", now=_now_iso(), kind="rollback")
        return self.model_version(target)

    def rollback_target(self) -> Optional[str]:
        """The version a rollback would make current now (None when there is none)."""
        return versions.rollback_target(self._db())

    def promotion_log(self) -> list:
        return versions.promotion_log(self._db())

    def cases_to_rescore(self, model_id: str, *, limit: int = 50, exclude=()) -> list:
        """Unreviewed cases not yet ranked by `model_id` (including any never predicted), oldest first,
        leaving out the case ids in `exclude` (those the caller has given up on, so that a pass moves on)."""
        rows = self._db().query(
            "SELECT id FROM cases WHERE status = 'unreviewed' AND (ranked_model_id IS NULL OR ranked_model_id != ?) "
            "AND id NOT IN ? ORDER BY id LIMIT ?",
            [model_id, sorted(int(case_id) for case_id in exclude), int(limit)])
        return [int(row["id"]) for row in rows]

    def rescore_backlog(self, model_id: str) -> int:
        """How many cases cases_to_rescore would still return; two index-served counts."""
        cases = self._db()["cases"]
        return int(cases.count_where("status = 'unreviewed'")
                   - cases.count_where("status = 'unreviewed' AND ranked_model_id = ?", [model_id]))

    def top_rank(self, acquisition: str = queue.UNCERTAINTY_ORDER) -> Optional[float]:
        """The highest rank in the queue for `acquisition` (the next case's uncertainty), None when empty."""
        column = queue.order_column(acquisition)
        rows = list(self._db().query(f'SELECT max("{column}") AS top FROM cases WHERE status = \'unreviewed\''))
        return rows[0]["top"] if rows else None

    def set_gold_fraction(self, fraction: float, *, seed: Optional[int] = None) -> None:
        """The share of images that join the gold split when first corrected, and optionally the seed
        of the draw (a new database draws its own); cases already assigned keep their side."""
        fraction = float(fraction)
        if not 0.0 <= fraction < 1.0:
            raise StorageError("The gold fraction must lie in [0, 1).")
        with self._connections.write() as db:
            db["meta"].insert({"key": "gold_fraction", "value": repr(fraction)}, replace=True)
            if seed is not None:
                db["meta"].insert({"key": "gold_seed", "value": str(int(seed))}, replace=True)

    def gold_settings(self) -> dict:
        db = self._db()
        return {"fraction": float(_meta(db, "gold_fraction") or 0.0), "seed": _meta(db, "gold_seed")}

        # -- background jobs --------------------------------------------------------------------------
    def start_job(self, kind: str, *, by: str, params: dict, parent_id: Optional[str] = None,
                  pid: Optional[int] = None) -> int:
        """Insert a running job (refused in words while another is active); returns its id."""
        by = _clean_annotator(by)
        with self._connections.write() as db:
            return jobs.start(db, kind=kind, by=by, params=_json_value(params), parent_id=parent_id,
                              now=time.time(), now_iso=_now_iso(), pid=pid)

    def job(self, job_id: int):
        return jobs.get(self._db(), job_id)

    def recent_jobs(self, limit: int = 20) -> list:
        return jobs.recent(self._db(), limit)

    def active_job(self):
        """The running job, after marking jobs whose worker is gone as failed."""
        self.reap_jobs()
        return jobs.active(self._db())

    def reap_jobs(self) -> list:
        db = self._db()
        if jobs.active(db) is None:
            return []
        with self._connections.write() as db:
            reaped = jobs.reap(db, now=time.time(), now_iso=_now_iso())
        for job_id in reaped:  # the dead worker's scratch (its log, beside the folder, stays)
            shutil.rmtree(self.job_folder(job_id), ignore_errors=True)
        return reaped

    def job_folder(self, job_id: int) -> Path:
        """A job's scratch folder; its log is the ``.log`` file beside it."""
        return self.files_dir / "jobs" / f"{int(job_id):06d}"

    def update_job(self, job_id: int, *, grace_seconds: Optional[float] = None, **fields) -> None:
        """Progress of a running job; also refreshes its heartbeat and renews its grace
        (``grace_seconds`` ahead, ``jobs.STALE_SECONDS`` by default; see medclipseg.annotation.jobs)."""
        fields.setdefault("heartbeat", time.time())
        with self._connections.write() as db:
            jobs.update(db, job_id, grace_seconds=grace_seconds, **fields)

    def finish_job(self, job_id: int, *, status: str, message: str, version_id: Optional[str] = None) -> None:
        with self._connections.write() as db:
            jobs.finish(db, job_id, status=status, message=message, now_iso=_now_iso(), version_id=version_id)

    def request_cancel(self, job_id: int, *, by: str) -> bool:
        _clean_annotator(by)
        with self._connections.write() as db:
            return jobs.request_cancel(db, job_id)

        # -- reading back ---------------------------------------------------------------------------
    def corrections(self, *, latest_only: bool = True, statuses=CORRECTION_STATUSES,
                    annotator: Optional[str] = None, approved_only: bool = False) -> list:
        """Correction rows (oldest case first, then version) with the case's original_name, width, height,
        content_hash, image_path, metadata (dict), batch, source and current status (case_status); scores
        decoded. latest_only keeps the highest version per case among the rows that match `statuses` and
        `annotator`; approved_only keeps only versions a reviewer approved. Each row also carries the
        case's raters (rater_count) and, with several, its consensus mask (consensus_path)."""
        statuses = [statuses] if isinstance(statuses, str) else list(statuses)
        if not statuses:
            return []
        conditions = [f"k.status IN ({', '.join('?' for _ in statuses)})"]
        params: list = list(statuses)
        if annotator is not None:
            conditions.append("k.annotator = ?")
            params.append(annotator.strip())
        if approved_only:
            conditions.append("EXISTS (SELECT 1 FROM reviews r WHERE r.case_id = k.case_id AND r.action = 'approved' "
                              "AND coalesce(r.new_version, r.version) = k.version)")
        where = " AND ".join(conditions)
        if latest_only:
            where = (f"{where} AND k.version = (SELECT max(l.version) FROM corrections l WHERE l.case_id = k.case_id "
                     f"AND {where.replace('k.', 'l.')})")
            params = params + params
        rows = list(self._db().query(
            "SELECT k.*, c.original_name, c.width, c.height, c.content_hash, c.image_path, c.metadata, c.batch, "
            f"c.source, c.gold, c.kind, c.source_key, c.slice_index, c.status AS case_status, c.rater_count, "
            f"c.consensus_path FROM corrections k JOIN cases c ON c.id = k.case_id WHERE {where} "
            "ORDER BY k.case_id, k.version", params))
        for row in rows:
            row["metadata"] = json.loads(row["metadata"] or "{}")
            row["scores"] = None if row["scores"] is None else json.loads(row["scores"])
        return rows

    def volume_cases(self) -> dict:
        """case id -> volume row (depth, rows, columns, plane, modality, source_format) of every volume case."""
        return {int(row["case_id"]): row for row in self._db()["volumes"].rows}

    def load_mask(self, relative_path: str) -> np.ndarray:
        return self._files.read_mask(relative_path)

    def counts(self) -> dict:
        """Cases per status, and the numbers of corrections (saved versions) and predictions."""
        db = self._db()
        counts = {status: 0 for status in STATUSES}
        for row in db.query("SELECT status, count(*) AS number FROM cases GROUP BY status"):
            counts[row["status"]] = int(row["number"])
        counts["corrections"] = int(db["corrections"].count)
        counts["predictions"] = int(db["predictions"].count)
        return counts

    def queue_summary(self) -> QueueSummary:
        """What the app shows about the queue; `in_review` counts live leases on unreviewed cases."""
        counts = self.counts()
        in_review = self._db()["cases"].count_where(
            "status = 'unreviewed' AND assigned_to IS NOT NULL AND lease_expires > ?", [time.time()])
        return QueueSummary(unreviewed=counts["unreviewed"], corrected=counts["corrected"],
                            accepted=counts["accepted"], skipped=counts["skipped"],
                            saved_versions=counts["corrections"], in_review=int(in_review))

    # -- logins (the users table; medclipseg.team.access reads it through login/has_logins) --------
    def add_user(self, name: str, password: str, *, role: str = "annotator", by: str = "cli",
                 replace: bool = False) -> str:
        """Keep a login in the database (its password only as a salted hash); returns the name."""
        from medclipseg.team.access import AuthSettingError, check_new_login, encode_password

        try:
            name, role = check_new_login(name, password, role)
        except AuthSettingError as exc:
            raise StorageError(str(exc)) from None
        encoded = encode_password(password)
        with self._connections.write() as db:
            accounts.add(db, name=name, password_hash=encoded, role=role, by=str(by), now=_now_iso(), replace=replace)
        return name

    def remove_user(self, name: str) -> bool:
        with self._connections.write() as db:
            return accounts.remove(db, str(name).strip())

    def user_list(self) -> list:
        return accounts.listing(self._db())

    def users(self) -> dict:
        """{name: role} of the logins kept in the database."""
        return {row["name"]: row["role"] for row in self.user_list()}

    def login(self, name: str):
        """(password hash, role) of a kept login; None when there is none."""
        return accounts.login(self._db(), name)

    def has_logins(self) -> bool:
        return bool(self._db()["users"].count_where())

    def integrity_check(self) -> str:
        """SQLite's own check of the file ("ok" when sound). A PostgreSQL server checks its own pages
        (and checksums where enabled): here "ok" means it answers and the tables are readable."""
        db = self._db()
        if self.dialect == "sqlite":
            return "\n".join(str(next(iter(row.values()))) for row in db.query("PRAGMA integrity_check"))
        for table in ("meta", "cases", "predictions", "corrections"):
            db[table].count_where()
        return "ok"

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        self._connections.close()

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
