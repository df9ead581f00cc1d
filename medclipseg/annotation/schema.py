"""Tables, indexes and schema version of the annotation database, and the migrations between versions.

Tables (``SCHEMA_VERSION`` 1): ``meta`` (key/value; ``schema_version``), ``cases`` (one per
distinct image pixels + prompt, with review status and the annotator lease), ``predictions`` (one
per model run, with the image-level uncertainty scores that order the review queue) and
``corrections`` (every saved version, numbered 1, 2, ... per case; nothing is overwritten).

Migrations are our own short list, ``MIGRATIONS[i]`` upgrading version i to i + 1, rather than
sqlite-utils' ``Migrations`` (the former sqlite-migrate): that one records migrations by name in
a log table, while the deciding fact here is one integer, ``meta.schema_version``. Released
copies of MedCLIPSeg read that integer to refuse a database newer than they understand, and every
existing database already carries it, so a name log would have to be kept in step with it as a
second source of truth. The list runs inside the store's ``BEGIN IMMEDIATE`` transaction, so two
processes opening a new database at once cannot both create the tables.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from medclipseg.annotation.errors import StorageError

SCHEMA_VERSION = 1

STATUSES = ("unreviewed", "corrected", "accepted", "skipped")
CORRECTION_STATUSES = ("corrected", "accepted")
SOURCES = ("upload", "ingest", "api")
# predictions column -> the Prediction.scores key stored in it (indexed: the queue sorts on them).
SCORE_COLUMNS = {
    "score_foreground_entropy": "mean_entropy_foreground",
    "score_boundary_entropy": "mean_entropy_boundary",
    "score_mutual_information": "mean_mutual_information",
    "score_image_entropy": "mean_entropy",
}


def read_version(db) -> int:
    """The database's schema version; 0 for a database without one (new, or made before versions)."""
    from sqlite_utils.db import NotFoundError

    if not db["meta"].exists():
        return 0
    try:
        value = db["meta"].get("schema_version")["value"]
    except NotFoundError:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StorageError("The annotation database has an unreadable schema version; "
                           "it was not written by MedCLIPSeg.") from None


def _create_tables(db) -> None:
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
MIGRATIONS = [_create_tables]
assert len(MIGRATIONS) == SCHEMA_VERSION


def migrate(connections, path: Path) -> None:
    """Bring the database to SCHEMA_VERSION in one write transaction; refuse a newer one."""
    try:
        with connections.write() as db:
            version = read_version(db)
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"The annotation database {path} has schema version {version}, newer than this "
                    f"version of MedCLIPSeg supports ({SCHEMA_VERSION}). Upgrade medclipseg to open it.")
            if not db["meta"].exists():
                db["meta"].create({"key": str, "value": str}, pk="key")
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](db)
            if version < SCHEMA_VERSION:
                db["meta"].insert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, replace=True)
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"Could not prepare the annotation database {path}: {exc}. "
                           "It may not be a MedCLIPSeg annotation database.") from exc
