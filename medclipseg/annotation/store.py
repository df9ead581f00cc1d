"""Annotation store: cases, model predictions and human corrections in SQLite plus files.

Layout
------
``annotations.db`` (SQLite, WAL mode) holds the rows; pixels live beside it in
``<db stem>_files/``:

* ``images/<content_hash>.png``: the case pixels as decoded (lossless PNG, uint8 BGR);
* ``maps/*.npz``: one per prediction (``probability`` float32, ``entropy`` and
  ``mutual_information`` float16);
* ``masks/*.png``: 0/255 masks: the predicted mask of each prediction, and for every correction
  version the corrected mask and the predicted mask it was compared with.

Rows store paths relative to the files folder, so the pair (db, folder) can be moved together.
Every file is written atomically (temporary file, fsync, ``os.replace``) before the row that
references it is committed: a crash can leave an unreferenced file, never a row without its file.

Tables (``SCHEMA_VERSION`` 1): ``meta`` (``schema_version``), ``cases`` (one per distinct
image pixels + prompt, with review status and the annotator lease), ``predictions`` (one per
model run, with the image-level uncertainty scores used to order the review queue) and
``corrections`` (every saved version, numbered 1, 2, ... per case; nothing is overwritten).
``MIGRATIONS[i]`` upgrades version i to i + 1 when a store is opened.

Privacy: only the technical metadata keys in ``ALLOWED_METADATA_KEYS`` are stored. DICOM patient,
study and institution fields never reach the database, and images are stored as decoded pixels
(no DICOM header travels with them).

Concurrency: one sqlite3 connection per thread, WAL, a 30 s busy timeout and ``BEGIN IMMEDIATE``
for every write transaction, so many threads (Gradio workers) and many processes can share a store.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import sqlite3
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np

SCHEMA_VERSION = 1
DB_ENV = "MEDCLIPSEG_DB"
BUSY_TIMEOUT_S = 30.0

STATUSES = ("unreviewed", "corrected", "accepted", "skipped")
CORRECTION_STATUSES = ("corrected", "accepted")
SOURCES = ("upload", "ingest", "api")
ALLOWED_METADATA_KEYS = ("modality", "pixel_spacing", "window_center", "window_width",
                         "photometric_interpretation", "conversions")
ACQUISITION_SCORES = {  # name shown in the UI -> column used to rank (descending)
    "foreground_entropy": "score_foreground_entropy",
    "boundary_entropy": "score_boundary_entropy",
    "mutual_information": "score_mutual_information",
    "image_entropy": "score_image_entropy",
    "random": "random_key",  # baseline
}
# Prediction.scores key stored in each score column.
SCORE_COLUMNS = {
    "score_foreground_entropy": "mean_entropy_foreground",
    "score_boundary_entropy": "mean_entropy_boundary",
    "score_mutual_information": "mean_mutual_information",
    "score_image_entropy": "mean_entropy",
}
MAX_ANNOTATOR_CHARS = 100
MAX_NAME_CHARS = 255
# Temporary files older than this are leftovers of a crash and are removed when a store opens.
STALE_TEMP_SECONDS = 24 * 3600.0


class StorageError(RuntimeError):
    """A storage problem; the message is shown to users as is."""


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


def default_db_path() -> Path:
    """MEDCLIPSEG_DB; else the persistent /data volume on Hugging Face Spaces; else feedback_db/."""
    configured = os.environ.get(DB_ENV)
    if configured:
        return Path(configured).expanduser()
    data = Path("/data")
    if os.environ.get("SPACE_ID") and data.is_dir() and os.access(data, os.W_OK):
        return data / "medclipseg" / "annotations.db"
    import medclipseg

    return Path(medclipseg.__file__).resolve().parent.parent / "feedback_db" / "annotations.db"


# ----------------------------------------------------------------------------------- helpers


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _atomic_write(path: Path, write: Callable) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over `path`.

    os.replace is atomic on one file system, so readers see the old file or the complete new one.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _png_bytes(array: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise StorageError("Could not encode an image as PNG.")
    return encoded.tobytes()


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
        return float(value)
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
                assigned_to=row["assigned_to"])


def _correction_from_row(row: dict) -> Correction:
    return Correction(id=row["id"], case_id=row["case_id"], version=row["version"], annotator=row["annotator"],
                      status=row["status"], pixels_added=row["pixels_added"], pixels_erased=row["pixels_erased"],
                      pixels_changed=row["pixels_changed"], created_at=row["created_at"])


# -------------------------------------------------------------------------------- migrations


def _migrate_0_to_1(db) -> None:
    db["cases"].create(
        {"id": int, "content_hash": str, "prompt": str, "original_name": str, "width": int, "height": int,
         "source": str, "batch": str, "image_path": str, "metadata": str, "status": str, "created_at": str,
         "updated_at": str, "assigned_to": str, "lease_expires": float, "random_key": float},
        pk="id",
        not_null=["content_hash", "prompt", "original_name", "width", "height", "source", "image_path",
                  "metadata", "status", "created_at", "updated_at", "random_key"],
        defaults={"status": "unreviewed", "metadata": "{}"},
    )
    db["cases"].create_index(["content_hash", "prompt"], index_name="idx_cases_content_prompt", unique=True)
    db["cases"].create_index(["status", "lease_expires"], index_name="idx_cases_status_lease")
    db["cases"].create_index(["batch"], index_name="idx_cases_batch")

    db["predictions"].create(
        {"id": int, "case_id": int, "model_id": str, "prompt": str, "threshold": float, "num_samples": int,
         "seconds": float, "created_at": str, "maps_path": str, "mask_path": str, "scores": str,
         "score_foreground_entropy": float, "score_boundary_entropy": float, "score_mutual_information": float,
         "score_image_entropy": float, "foreground_pixels": int},
        pk="id",
        foreign_keys=[("case_id", "cases", "id")],
        not_null=["case_id", "model_id", "prompt", "threshold", "num_samples", "created_at", "maps_path",
                  "mask_path", "scores"],
    )
    db["predictions"].create_index(["case_id"], index_name="idx_predictions_case")
    for column in SCORE_COLUMNS:
        db["predictions"].create_index([column], index_name=f"idx_predictions_{column}")

    db["corrections"].create(
        {"id": int, "case_id": int, "prediction_id": int, "version": int, "annotator": str, "prompt": str,
         "status": str, "mask_path": str, "predicted_mask_path": str, "pixels_added": int,
         "pixels_erased": int, "pixels_changed": int, "threshold": float, "model_id": str, "scores": str,
         "created_at": str},
        pk="id",
        foreign_keys=[("case_id", "cases", "id"), ("prediction_id", "predictions", "id")],
        not_null=["case_id", "version", "annotator", "prompt", "status", "mask_path", "predicted_mask_path",
                  "pixels_added", "pixels_erased", "pixels_changed", "created_at"],
    )
    db["corrections"].create_index(["case_id", "version"], index_name="idx_corrections_case_version", unique=True)
    db["corrections"].create_index(["case_id"], index_name="idx_corrections_case")
    db["corrections"].create_index(["annotator"], index_name="idx_corrections_annotator")


# Index i migrates schema version i to i + 1.
MIGRATIONS = [_migrate_0_to_1]
assert len(MIGRATIONS) == SCHEMA_VERSION


# ------------------------------------------------------------------------------------- store


class AnnotationStore:
    """Cases, predictions and corrections of one annotation database (see the module docstring).

    Safe to share between threads (each thread gets its own connection) and between processes.
    """

    def __init__(self, path=None, *, lease_seconds: float = 900.0):
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self.files_dir = self.path.parent / f"{self.path.stem}_files"
        self.lease_seconds = float(lease_seconds)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list = []  # (weakref to thread, Database) so close() can close them all
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for sub in ("images", "maps", "masks"):
                (self.files_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"Could not create the annotation folder {self.path.parent}: {exc}.") from exc
        self._remove_stale_temporaries()
        self._migrate()

    # -- connections --------------------------------------------------------------------------
    def _connect(self):
        try:
            import sqlite_utils
        except ImportError as exc:  # pragma: no cover - optional dependency of the app extra
            raise StorageError("The annotation store needs the 'sqlite-utils' package; "
                               "install medclipseg with the 'app' extra.") from exc
        try:
            # isolation_level=None: no implicit transactions, every write uses an explicit BEGIN IMMEDIATE.
            # check_same_thread=False only so close() may close other threads' connections; each
            # connection is otherwise used by the thread that opened it.
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"The annotation database {self.path} could not be switched to WAL mode "
                                   f"(journal mode is {mode}); put it on a local disk.")
            # WAL + NORMAL survives a process crash (commits are in the WAL before they return).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            # No sqlite-utils plugins: nothing else may change how these connections behave.
            return sqlite_utils.Database(conn, execute_plugins=False)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"Could not open the annotation database {self.path}: {exc}. "
                               "Check that it is an SQLite file and that the folder is writable.") from exc

    def _db(self):
        db = getattr(self._local, "db", None)
        if db is not None:
            return db
        if self._closed:
            raise StorageError("The annotation store has been closed; open it again.")
        db = self._connect()
        self._local.db = db
        with self._lock:
            # Close connections of threads that have ended, so long-lived apps do not pile them up.
            alive = []
            for thread_ref, other in self._connections:
                thread = thread_ref()
                if thread is None or not thread.is_alive():
                    with contextlib.suppress(Exception):
                        other.conn.close()
                else:
                    alive.append((thread_ref, other))
            alive.append((weakref.ref(threading.current_thread()), db))
            self._connections = alive
        return db

    @contextlib.contextmanager
    def _write(self):
        """One write transaction: BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy
        timeout), so read-then-write sequences such as 'next version number' cannot interleave."""
        db = self._db()
        try:
            db.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StorageError(f"The annotation database is busy ({exc}); please try again in a moment.") from exc
        try:
            yield db
        except BaseException:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            raise
        else:
            try:
                db.conn.execute("COMMIT")
            except BaseException:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, params=()) -> list:
        cursor = self._db().execute(sql, params)
        keys = [d[0] for d in cursor.description]
        return [dict(zip(keys, row)) for row in cursor.fetchall()]

    def _one(self, sql: str, params=()) -> Optional[dict]:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # -- schema ---------------------------------------------------------------------------------
    @staticmethod
    def _read_version(db) -> int:
        if not db["meta"].exists():
            return 0
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            return int(row[0]) if row else 0
        except (TypeError, ValueError):
            raise StorageError("The annotation database has an unreadable schema version; "
                               "it was not written by MedCLIPSeg.") from None

    def _migrate(self) -> None:
        try:
            with self._write() as db:
                version = self._read_version(db)
                if version > SCHEMA_VERSION:
                    raise StorageError(
                        f"The annotation database {self.path} has schema version {version}, newer than this "
                        f"version of MedCLIPSeg supports ({SCHEMA_VERSION}). Upgrade medclipseg to open it.")
                if not db["meta"].exists():
                    db["meta"].create({"key": str, "value": str}, pk="key")
                for step in range(version, SCHEMA_VERSION):
                    MIGRATIONS[step](db)
                if version < SCHEMA_VERSION or self._read_version(db) != SCHEMA_VERSION:
                    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                               [str(SCHEMA_VERSION)])
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"Could not prepare the annotation database {self.path}: {exc}. "
                               "It may not be a MedCLIPSeg annotation database.") from exc

    @property
    def schema_version(self) -> int:
        return self._read_version(self._db())

    def _remove_stale_temporaries(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        for sub in ("images", "maps", "masks"):
            for temporary in (self.files_dir / sub).glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    if temporary.stat().st_mtime < cutoff:
                        temporary.unlink()

    # -- files ----------------------------------------------------------------------------------
    def _write_file(self, relative: str, write: Callable) -> None:
        try:
            _atomic_write(self.files_dir / relative, write)
        except OSError as exc:
            raise StorageError(f"Could not write {relative} in {self.files_dir}: {exc}. "
                               "Check free disk space and permissions.") from exc

    def _write_mask(self, relative: str, mask: np.ndarray) -> None:
        data = _png_bytes(mask.astype(np.uint8) * 255)
        self._write_file(relative, lambda handle: handle.write(data))

    def _discard(self, *relatives: str) -> None:
        for relative in relatives:
            with contextlib.suppress(OSError):
                (self.files_dir / relative).unlink()

    def _file_path(self, relative: str, folder: str) -> Path:
        """A stored relative path, refused if it points outside `folder` (paths come from callers)."""
        base = (self.files_dir / folder).resolve()
        path = (self.files_dir / relative).resolve()
        if base not in path.parents:
            raise StorageError(f"{relative!r} is not a file of the annotation store's {folder} folder.")
        if not path.is_file():
            raise StorageError(f"The file {relative} is missing from {self.files_dir}.")
        return path

    def _read_png(self, relative: str, folder: str, flags: int) -> np.ndarray:
        import cv2

        path = self._file_path(relative, folder)
        # imdecode of the bytes works for non-ASCII folder names, unlike cv2.imread on Windows.
        image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), flags)
        if image is None:
            raise StorageError(f"The file {relative} in {self.files_dir} is damaged and could not be read.")
        return image

    # -- cases ----------------------------------------------------------------------------------
    def add_case(self, image_bgr: np.ndarray, *, prompt: str, original_name: str, source: str = "upload",
                 batch: Optional[str] = None, metadata: Optional[dict] = None) -> Case:
        from medclipseg.io.images import PromptError, validate_prompt

        image = np.asarray(image_bgr)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise StorageError(f"Case images must be 8-bit colour arrays (H x W x 3, uint8); got "
                               f"{image.dtype} with shape {tuple(image.shape)}.")
        try:
            prompt = validate_prompt(prompt)
        except PromptError as exc:
            raise StorageError(str(exc)) from None
        if source not in SOURCES:
            raise StorageError(f"Unknown case source {source!r}; use one of {', '.join(SOURCES)}.")
        original_name = str(original_name or "image")[:MAX_NAME_CHARS]
        batch = None if batch is None or not str(batch).strip() else str(batch).strip()[:MAX_NAME_CHARS]
        # Privacy rule: only whitelisted technical keys are kept (no patient/study identifiers).
        kept = {key: _json_value(value) for key, value in (metadata or {}).items() if key in ALLOWED_METADATA_KEYS}
        image = np.ascontiguousarray(image)
        height, width = int(image.shape[0]), int(image.shape[1])
        digest = hashlib.sha256(f"{height}x{width}x3:".encode("ascii"))
        digest.update(image.tobytes())
        content_hash = digest.hexdigest()

        existing = self._one("SELECT * FROM cases WHERE content_hash = ? AND prompt = ?", [content_hash, prompt])
        if existing is not None:
            return _case_from_row(existing)
        image_path = f"images/{content_hash}.png"
        if not (self.files_dir / image_path).is_file():  # content-addressed: an existing file is the same
            data = _png_bytes(image)
            self._write_file(image_path, lambda handle: handle.write(data))
        now = _now_iso()
        with self._write() as db:
            # Checked again inside the write lock: another thread/process may have added it meanwhile.
            row = db.execute("SELECT id FROM cases WHERE content_hash = ? AND prompt = ?",
                             [content_hash, prompt]).fetchone()
            if row is None:
                cursor = db.execute(
                    "INSERT INTO cases (content_hash, prompt, original_name, width, height, source, batch, "
                    "image_path, metadata, status, created_at, updated_at, random_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'unreviewed', ?, ?, ?)",
                    [content_hash, prompt, original_name, width, height, source, batch, image_path,
                     json.dumps(kept), now, now, random.random()])
                case_id = cursor.lastrowid
            else:
                case_id = row[0]
        return self.get_case(case_id)

    def get_case(self, case_id: int) -> Case:
        row = self._one("SELECT * FROM cases WHERE id = ?", [int(case_id)])
        if row is None:
            raise StorageError(f"Case {case_id} does not exist in the annotation database.")
        return _case_from_row(row)

    def load_image(self, case_id: int) -> np.ndarray:
        import cv2

        row = self._one("SELECT image_path FROM cases WHERE id = ?", [int(case_id)])
        if row is None:
            raise StorageError(f"Case {case_id} does not exist in the annotation database.")
        return self._read_png(row["image_path"], "images", cv2.IMREAD_COLOR)

    # -- predictions ----------------------------------------------------------------------------
    def add_prediction(self, case_id: int, prediction) -> int:
        case = self.get_case(case_id)
        shape = (case.height, case.width)
        maps = {}
        for name in ("probability", "entropy", "mutual_information"):
            values = np.asarray(getattr(prediction, name))
            if values.shape != shape:
                raise StorageError(f"The prediction's {name} map has shape {values.shape} but case {case_id} "
                                   f"is {case.height}x{case.width} pixels.")
            # Probability stays float32 so that masks at any threshold match the model's own exactly;
            # the entropy maps are for display and ranking, where float16 is plenty.
            maps[name] = values.astype(np.float32 if name == "probability" else np.float16)
        mask = _binary_mask(prediction.mask, shape, "predicted mask")
        scores = _json_value(dict(prediction.scores or {}))
        stem = f"{case.id:08d}-{uuid.uuid4().hex}"
        maps_path, mask_path = f"maps/{stem}.npz", f"masks/{stem}-predicted.png"
        self._write_file(maps_path, lambda handle: np.savez_compressed(handle, **maps))
        try:
            self._write_mask(mask_path, mask)
            with self._write() as db:
                cursor = db.execute(
                    "INSERT INTO predictions (case_id, model_id, prompt, threshold, num_samples, seconds, created_at, "
                    "maps_path, mask_path, scores, score_foreground_entropy, score_boundary_entropy, "
                    "score_mutual_information, score_image_entropy, foreground_pixels) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [case.id, str(prediction.model_id or ""), str(prediction.prompt or case.prompt),
                     float(prediction.threshold), int(prediction.num_samples), float(prediction.seconds or 0.0),
                     _now_iso(), maps_path, mask_path, json.dumps(scores),
                     *[_finite_or_none(scores.get(key)) for key in SCORE_COLUMNS.values()], int(mask.sum())])
                return int(cursor.lastrowid)
        except BaseException:
            self._discard(maps_path, mask_path)
            raise

    def latest_prediction_id(self, case_id: int) -> Optional[int]:
        row = self._db().execute("SELECT max(id) FROM predictions WHERE case_id = ?", [int(case_id)]).fetchone()
        return None if row[0] is None else int(row[0])

    def _prediction_row(self, prediction_id: int) -> dict:
        row = self._one("SELECT * FROM predictions WHERE id = ?", [int(prediction_id)])
        if row is None:
            raise StorageError(f"Prediction {prediction_id} does not exist in the annotation database.")
        return row

    def _load_maps(self, relative: str) -> dict:
        path = self._file_path(relative, "maps")
        try:
            with np.load(path) as data:
                return {name: data[name].astype(np.float32)
                        for name in ("probability", "entropy", "mutual_information")}
        except (OSError, ValueError, KeyError) as exc:
            raise StorageError(f"The map file {relative} is damaged and could not be read ({exc}).") from exc

    def load_prediction(self, prediction_id: int):
        """The stored prediction as a medclipseg.inference.predictor.Prediction (maps as float32; mask =
        probability > threshold). prompt_truncated is not stored and comes back False."""
        from medclipseg.inference.predictor import Prediction

        row = self._prediction_row(prediction_id)
        case = self.get_case(row["case_id"])
        maps = self._load_maps(row["maps_path"])
        return Prediction(probability=maps["probability"], mask=maps["probability"] > row["threshold"],
                          entropy=maps["entropy"], mutual_information=maps["mutual_information"],
                          scores=json.loads(row["scores"]), num_samples=row["num_samples"],
                          threshold=row["threshold"], prompt=row["prompt"], model_id=row["model_id"],
                          seconds=row["seconds"] or 0.0, image_shape=(case.height, case.width),
                          conversions=list(case.metadata.get("conversions", [])))

    # -- corrections ----------------------------------------------------------------------------
    def _predicted_mask(self, case: Case, prediction_id: Optional[int], threshold: Optional[float]):
        """(predicted mask, prediction row or None, threshold, scores) that a correction is compared with."""
        if prediction_id is None:
            prediction_id = self.latest_prediction_id(case.id)
        if prediction_id is None:
            if threshold is not None and not 0.0 < float(threshold) < 1.0:
                raise StorageError("The threshold must lie strictly between 0 and 1.")
            return np.zeros((case.height, case.width), bool), None, threshold, None
        row = self._prediction_row(prediction_id)
        if row["case_id"] != case.id:
            raise StorageError(f"Prediction {prediction_id} belongs to case {row['case_id']}, not case {case.id}.")
        scores = json.loads(row["scores"])
        if threshold is None or float(threshold) == row["threshold"]:
            # The stored PNG is the model's own mask at this threshold.
            import cv2

            mask = self._read_png(row["mask_path"], "masks", cv2.IMREAD_GRAYSCALE) > 127
            return mask, row, row["threshold"], scores
        threshold = float(threshold)
        if not 0.0 < threshold < 1.0:
            raise StorageError("The threshold must lie strictly between 0 and 1.")
        maps = self._load_maps(row["maps_path"])
        mask = maps["probability"] > threshold
        if "boundary_band_px" in scores:
            from medclipseg.inference.uncertainty import image_scores

            scores = image_scores(maps["entropy"], maps["mutual_information"], mask, scores["boundary_band_px"])
        return mask, row, threshold, scores

    def save_correction(self, case_id: int, corrected_mask: np.ndarray, *, annotator: str,
                        prediction_id: Optional[int] = None, status: str = "corrected",
                        threshold: Optional[float] = None) -> Correction:
        # Everything is validated before any file is written, so a refused save leaves no trace.
        annotator = _clean_annotator(annotator)
        if status not in CORRECTION_STATUSES:
            raise StorageError(f"A correction's status must be 'corrected' or 'accepted', not {status!r}.")
        case = self.get_case(case_id)
        corrected = _binary_mask(corrected_mask, (case.height, case.width), "corrected mask")
        predicted, prediction, threshold, scores = self._predicted_mask(case, prediction_id, threshold)
        added = int(np.count_nonzero(corrected & ~predicted))
        erased = int(np.count_nonzero(predicted & ~corrected))
        stem = f"{case.id:08d}-{uuid.uuid4().hex}"
        mask_path, predicted_path = f"masks/{stem}-corrected.png", f"masks/{stem}-compared.png"
        self._write_mask(mask_path, corrected)
        try:
            self._write_mask(predicted_path, predicted)
            now = _now_iso()
            with self._write() as db:
                # Inside BEGIN IMMEDIATE: no other writer can take the same version number.
                version = db.execute("SELECT coalesce(max(version), 0) + 1 FROM corrections WHERE case_id = ?",
                                     [case.id]).fetchone()[0]
                cursor = db.execute(
                    "INSERT INTO corrections (case_id, prediction_id, version, annotator, prompt, status, mask_path, "
                    "predicted_mask_path, pixels_added, pixels_erased, pixels_changed, threshold, model_id, scores, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [case.id, prediction["id"] if prediction else None, version, annotator, case.prompt, status,
                     mask_path, predicted_path, added, erased, added + erased,
                     None if threshold is None else float(threshold), prediction["model_id"] if prediction else None,
                     None if scores is None else json.dumps(_json_value(scores)), now])
                correction_id = cursor.lastrowid
                db.execute("UPDATE cases SET status = ?, updated_at = ?, assigned_to = NULL, lease_expires = NULL "
                           "WHERE id = ?", [status, now, case.id])
        except BaseException:
            self._discard(mask_path, predicted_path)
            raise
        return Correction(id=int(correction_id), case_id=case.id, version=int(version), annotator=annotator,
                          status=status, pixels_added=added, pixels_erased=erased, pixels_changed=added + erased,
                          created_at=now)

    def set_status(self, case_id: int, status: str, *, annotator: str) -> None:
        _clean_annotator(annotator)
        if status not in STATUSES:
            raise StorageError(f"Unknown case status {status!r}; use one of {', '.join(STATUSES)}.")
        with self._write() as db:
            cursor = db.execute("UPDATE cases SET status = ?, updated_at = ?, assigned_to = NULL, "
                                "lease_expires = NULL WHERE id = ?", [status, _now_iso(), int(case_id)])
            if cursor.rowcount == 0:
                raise StorageError(f"Case {case_id} does not exist in the annotation database.")

    # -- review queue ---------------------------------------------------------------------------
    def next_case(self, annotator: str, *, acquisition: str = "foreground_entropy",
                  batch: Optional[str] = None) -> Optional[Case]:
        annotator = _clean_annotator(annotator)
        if acquisition not in ACQUISITION_SCORES:
            raise StorageError(f"Unknown case order {acquisition!r}; use one of {', '.join(ACQUISITION_SCORES)}.")
        column = ACQUISITION_SCORES[acquisition]
        # Column names come from the fixed ACQUISITION_SCORES table, never from user input.
        order = "c.random_key" if column == "random_key" else f"p.{column}"
        where_batch = "AND c.batch = :batch" if batch is not None else ""
        with self._write() as db:
            now = time.time()
            params = {"annotator": annotator, "now": now, "batch": batch}
            db.execute("UPDATE cases SET assigned_to = NULL, lease_expires = NULL WHERE assigned_to = :annotator",
                       params)
            row = db.execute(
                "SELECT c.id FROM cases c JOIN predictions p "
                "ON p.id = (SELECT max(id) FROM predictions WHERE case_id = c.id) "
                "WHERE c.status = 'unreviewed' "
                "AND (c.assigned_to IS NULL OR c.lease_expires IS NULL OR c.lease_expires <= :now "
                "     OR c.assigned_to = :annotator) "
                f"{where_batch} ORDER BY {order} IS NULL, {order} DESC, c.id ASC LIMIT 1", params).fetchone()
            if row is None:
                return None
            db.execute("UPDATE cases SET assigned_to = ?, lease_expires = ? WHERE id = ?",
                       [annotator, now + self.lease_seconds, row[0]])
        return self.get_case(row[0])

    def claim(self, case_id: int, *, annotator: str) -> bool:
        """Lease one case to `annotator` (e.g. a case they just uploaded), like next_case does: their other
        leases are cleared. False, and nothing changes, while another annotator holds a live lease on it."""
        annotator = _clean_annotator(annotator)
        with self._write() as db:
            now = time.time()
            row = db.execute("SELECT assigned_to, lease_expires FROM cases WHERE id = ?", [int(case_id)]).fetchone()
            if row is None:
                raise StorageError(f"Case {case_id} does not exist in the annotation database.")
            holder, expires = row
            if holder not in (None, annotator) and expires is not None and expires > now:
                return False
            db.execute("UPDATE cases SET assigned_to = NULL, lease_expires = NULL WHERE assigned_to = ?", [annotator])
            db.execute("UPDATE cases SET assigned_to = ?, lease_expires = ? WHERE id = ?",
                       [annotator, now + self.lease_seconds, int(case_id)])
        return True

    def release(self, case_id: int, *, annotator: str) -> None:
        """Give a leased case back to the queue (only the lease holder's lease is cleared)."""
        annotator = _clean_annotator(annotator)
        with self._write() as db:
            db.execute("UPDATE cases SET assigned_to = NULL, lease_expires = NULL WHERE id = ? AND assigned_to = ?",
                       [int(case_id), annotator])

    # -- reading back ---------------------------------------------------------------------------
    def corrections(self, *, latest_only: bool = True, statuses=CORRECTION_STATUSES,
                    annotator: Optional[str] = None) -> list:
        """Correction rows (oldest case first, then version) with the case's original_name, width, height,
        content_hash, image_path, metadata (dict), batch and source; scores decoded. latest_only keeps the
        highest version per case among the rows that match `statuses` and `annotator`."""
        statuses = [statuses] if isinstance(statuses, str) else list(statuses)
        if not statuses:
            return []
        conditions = [f"k.status IN ({', '.join('?' for _ in statuses)})"]
        params: list = list(statuses)
        if annotator is not None:
            conditions.append("k.annotator = ?")
            params.append(annotator.strip())
        where = " AND ".join(conditions)
        if latest_only:
            where = (f"{where} AND k.version = (SELECT max(l.version) FROM corrections l WHERE l.case_id = k.case_id "
                     f"AND {where.replace('k.', 'l.')})")
            params = params + params
        rows = self._rows(
            "SELECT k.*, c.original_name, c.width, c.height, c.content_hash, c.image_path, c.metadata, c.batch, "
            f"c.source FROM corrections k JOIN cases c ON c.id = k.case_id WHERE {where} "
            "ORDER BY k.case_id, k.version", params)
        for row in rows:
            row["metadata"] = json.loads(row["metadata"] or "{}")
            row["scores"] = None if row["scores"] is None else json.loads(row["scores"])
        return rows

    def load_mask(self, relative_path: str) -> np.ndarray:
        import cv2

        return self._read_png(relative_path, "masks", cv2.IMREAD_GRAYSCALE) > 127

    def counts(self) -> dict:
        counts = {status: 0 for status in STATUSES}
        for status, number in self._db().execute("SELECT status, count(*) FROM cases GROUP BY status").fetchall():
            counts[status] = int(number)
        counts["corrections"] = int(self._db().execute("SELECT count(*) FROM corrections").fetchone()[0])
        counts["predictions"] = int(self._db().execute("SELECT count(*) FROM predictions").fetchone()[0])
        return counts

    def integrity_check(self) -> str:
        rows = self._db().execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(row[0]) for row in rows)

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._lock:
            self._closed = True
            for _, db in self._connections:
                with contextlib.suppress(Exception):
                    db.conn.close()
            self._connections = []
        self._local = threading.local()

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
