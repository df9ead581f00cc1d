"""Tables, indexes and schema version of the annotation database, and the migrations between versions.

Tables (``SCHEMA_VERSION`` 8): ``meta`` (key/value: ``schema_version``, ``current_model_id``,
``gold_seed``, ``gold_fraction``), ``cases`` (one per distinct image pixels + prompt, with review
status, the annotator lease, the gold flag and the queue ranks of the current model),
``predictions`` (one per model run, with its image-level uncertainty scores), ``corrections``
(every saved version, numbered 1, 2, ... per case; nothing is overwritten; each names the version
it replaces), ``drafts`` (the in-progress mask of one annotator on one case, with the saved
version it started from), ``model_versions`` (every model the database has served or trained:
content-hash id, parent, training cases, recipe, gold-split scores), ``promotions`` (who made
which version current, when) and ``jobs`` (background retraining runs, at most one active).

Drafts and lineage (version 3): a draft is overwritten in place (``revision`` counts its saves)
so a browser reload can restore it; saving a version deletes the saver's draft of that case.
``corrections.replaces_version`` is the highest version of the case before the row (None for the
first), so every version names the one it replaces.

Diversity (version 4): each case's image fingerprint, source and slice index, which the diverse
queue orders compare (medclipseg.annotation.diversity), and who last changed its status.

Volumes (version 5): ``cases.kind`` ('image' or 'volume') and ``start_slice`` (the slice a
volume case opens on: its most uncertain one); ``volumes`` (one row per volume case: display
shape, plane and where its geometry is kept); ``reviewed_slices`` on corrections and drafts (the
slices of a volume the annotator looked at, a JSON list). A volume's masks are its slices stacked
into one image (medclipseg.annotation.volume_files), so versions, drafts and conflicts work as for
images.

Slice provenance (version 6): ``slice_provenance`` on corrections and drafts of volumes, where each
slice's mask came from, as JSON ``{"drawn": [...], "interpolated": [...], "propagated": [...]}``
(display indices; a slice in none of the lists shows the model's prediction); see
medclipseg.annotation.volume_tools.

Promotion kinds and job grace (version 7): ``promotions.kind`` says whether a row promoted a
version (``promote``) or rolled one back (``rollback``), so a rollback walks back through the
history instead of toggling between the last two versions (medclipseg.annotation.versions);
``jobs.grace_until`` is the time until which the worker has promised its next heartbeat (it
renews it with each one) and ``jobs.host`` the machine it runs on, so that only a job whose worker
is known to be gone, or whose promise has lapsed, is reaped (medclipseg.annotation.jobs).

Raters and review (version 8): ``corrections.rater`` names the rater whose chain of versions a
version belongs to when a case has several raters (NULL: the case's one chain, as before);
``cases.rater_count`` counts the raters who saved a version, and a case stays in the queue until
it reaches the project's ``meta.raters_per_case`` (1 by default); ``cases.disagreement`` is
1 - the mean pairwise Dice of its raters' newest masks and ``cases.consensus_path`` their STAPLE
consensus mask (medclipseg.team.agreement), what trains and exports for a case with several raters. ``cases.review_state``
('submitted', 'approved', 'rejected' or NULL) and ``review_version`` follow the review step, and
``reviews`` logs every submission and decision (who, which version, the comment); ``declines``
holds the cases a rater skipped while other raters still label them. Project
settings in ``meta``: ``review_required`` and ``raters_per_case``. See medclipseg.annotation.review.

Queue ranks (version 2): each case carries ``rank_<acquisition>`` columns copied from the scores
of its latest prediction *by the current model* (``ranked_model_id``), with one partial index per
acquisition over unreviewed cases, so the top of the queue is an index lookup rather than a join
over every prediction. Promoting another model clears the ranks that model did not make; the
app re-scores those cases in the background.

Migrations are our own short list, ``MIGRATIONS[i]`` upgrading version i to i + 1, rather than
sqlite-utils' ``Migrations`` (the former sqlite-migrate): that one records migrations by name in
a log table, while the deciding fact here is one integer, ``meta.schema_version``. Released
copies of MedCLIPSeg read that integer to refuse a database newer than they understand, and every
existing database already carries it, so a name log would have to be kept in step with it as a
second source of truth. The list runs inside the store's ``BEGIN IMMEDIATE`` transaction, so two
processes opening a new database at once cannot both create the tables.
"""
from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Optional

from medclipseg.annotation.errors import StorageError

# 8: the last version made by our own steps (MIGRATIONS); later ones are Alembic revisions.
LEGACY_SCHEMA_VERSION = 8
SCHEMA_VERSION = 10

STATUSES = ("unreviewed", "corrected", "accepted", "skipped")
CORRECTION_STATUSES = ("corrected", "accepted")
SOURCES = ("upload", "ingest", "api")
JOB_STATUSES = ("running", "succeeded", "failed", "cancelled")
ACTIVE_JOB_STATUSES = ("running",)
# predictions column -> the Prediction.scores key stored in it (version 1's queue sorted on them).
SCORE_COLUMNS = {
    "score_foreground_entropy": "mean_entropy_foreground",
    "score_boundary_entropy": "mean_entropy_boundary",
    "score_mutual_information": "mean_mutual_information",
    "score_image_entropy": "mean_entropy",
}


def read_version(db) -> int:
    """The database's schema version; 0 for a database without one (new, or made before versions)."""
    if not db["meta"].exists():
        return 0
    rows = db.query("SELECT value FROM meta WHERE key = 'schema_version'")
    if not rows:
        return 0
    value = rows[0]["value"]
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


# The rank columns version 2 created, frozen here: a migration must never read today's acquisition
# list (queue.ACQUISITIONS), or adding an acquisition would change what an old migration does.
# Columns of acquisitions added later come from queue.ensure_rank_columns, run after the migrations.
V2_RANK_SCORES = {
    "rank_band_entropy": "band_entropy",
    "rank_expected_dice_miss": "expected_dice_miss",
    "rank_top_entropy": "top_entropy",
    "rank_band_mutual_information": "band_mutual_information",
    "rank_foreground_entropy": "mean_entropy_foreground",
    "rank_boundary_entropy": "mean_entropy_boundary",
    "rank_mutual_information": "mean_mutual_information",
    "rank_image_entropy": "mean_entropy",
}


def _v2_random_foreground(prompt: str, random_key: float) -> float:
    """Version 2's foreground-aware random key (the rule as it was then: absence prompts last)."""
    from medclipseg.io.prompts import states_absence

    return float(random_key) + (0.0 if states_absence(prompt) else 1.0)


def _add_versions_jobs_and_ranks(db) -> None:
    """Version 2: model versions, promotions, jobs, the gold flag and per-case queue ranks."""
    cases = db["cases"]
    cases.add_column("gold", int)
    cases.add_column("ranked_model_id", str)
    cases.add_column("ranked_prediction_id", int)
    for column in V2_RANK_SCORES:
        cases.add_column(column, float)
    cases.add_column("rank_random_foreground", float)
    for column in (*V2_RANK_SCORES, "rank_random_foreground", "random_key"):
        # Partial index over the queue only, in serving order: the top of the queue is its first entry.
        db.execute(f'CREATE INDEX "idx_queue_{column}" ON cases ("{column}" DESC, id) '
                   "WHERE status = 'unreviewed'")
    db.execute('CREATE INDEX "idx_cases_ranked_model" ON cases (ranked_model_id) WHERE status = \'unreviewed\'')
    # Leases are looked up by holder on every next_case; few cases hold one at a time.
    db.execute('CREATE INDEX "idx_cases_assigned" ON cases (assigned_to) WHERE assigned_to IS NOT NULL')
    for column in SCORE_COLUMNS:  # ranks now live on cases; these only slowed every insert
        db.execute(f'DROP INDEX IF EXISTS "idx_predictions_{column}"')

    # Existing cases: foreground-aware random key, and ranks from their latest prediction.
    for row in list(db.query("SELECT id, prompt, random_key FROM cases")):
        cases.update(row["id"], {"rank_random_foreground": _v2_random_foreground(row["prompt"], row["random_key"])})
    db.execute("UPDATE cases SET ranked_prediction_id = (SELECT max(id) FROM predictions WHERE case_id = cases.id)")
    db.execute("UPDATE cases SET ranked_model_id = (SELECT model_id FROM predictions "
               "WHERE id = cases.ranked_prediction_id)")
    for column, key in V2_RANK_SCORES.items():
        db.execute(f'UPDATE cases SET "{column}" = (SELECT json_extract(scores, \'$.{key}\') FROM predictions '
                   "WHERE id = cases.ranked_prediction_id)")

    db["model_versions"].create(
        {"id": str, "name": str, "parent_id": str, "kind": str, "path": str, "recipe": str, "correction_ids": str,
         "train_cases": int, "gold_cases": int, "gold_dsc": float, "gold_nsd": float,
         "gold_uncertainty_spearman": float, "parent_gold_dsc": float, "job_id": int, "seconds": float,
         "created_at": str, "created_by": str},
        pk="id", not_null=["name", "kind", "path", "created_at", "created_by"])
    db["promotions"].create(
        {"id": int, "version_id": str, "previous_id": str, "promoted_by": str, "reason": str, "created_at": str},
        pk="id", not_null=["version_id", "promoted_by", "reason", "created_at"])
    db["jobs"].create(
        {"id": int, "kind": str, "status": str, "created_by": str, "created_at": str, "started_at": str,
         "finished_at": str, "pid": int, "heartbeat": float, "progress": float, "eta_seconds": float,
         "message": str, "log_path": str, "params": str, "parent_id": str, "version_id": str,
         "cancel_requested": int},
        pk="id", not_null=["kind", "status", "created_by", "created_at", "params"],
        defaults={"progress": 0.0, "cancel_requested": 0, "message": ""})
    # The database itself keeps a second retraining from starting while one is active.
    db.execute("CREATE UNIQUE INDEX idx_jobs_one_active ON jobs (kind) WHERE status = 'running'")
    for key, value in (("gold_seed", str(random.SystemRandom().randrange(2**31))), ("gold_fraction", "0.2")):
        if not list(db["meta"].rows_where("key = ?", [key])):
            db["meta"].insert({"key": key, "value": value})


def _add_drafts_and_lineage(db) -> None:
    """Version 3: in-progress masks (one per case and annotator) and the version each correction replaces."""
    db["drafts"].create(
        {"id": int, "case_id": int, "annotator": str, "prediction_id": int, "base_version": int,
         "threshold": float, "mask_path": str, "pixels": int, "revision": int, "updated_at": str},
        pk="id",
        foreign_keys=[("case_id", "cases", "id"), ("prediction_id", "predictions", "id")],
        not_null=["case_id", "annotator", "mask_path", "pixels", "revision", "updated_at"],
    )
    db["drafts"].create_index(["case_id", "annotator"], index_name="idx_drafts_case_annotator", unique=True)
    db["corrections"].add_column("replaces_version", int)
    # Existing versions replaced the highest earlier version of their case, as new saves record it.
    db.execute("UPDATE corrections SET replaces_version = (SELECT max(p.version) FROM corrections p "
               "WHERE p.case_id = corrections.case_id AND p.version < corrections.version)")


def _add_queue_diversity(db) -> None:
    """Version 4: what the diverse queue orders compare (annotation.diversity): each case's image
    fingerprint (filled later from its image file, by the store's fill_descriptors), and the source
    and slice index read from its file name (filled here)."""
    from medclipseg.annotation.diversity import source_and_slice

    cases = db["cases"]
    cases.add_column("descriptor", bytes)
    cases.add_column("source_key", str)
    cases.add_column("slice_index", int)
    # Who last changed the status (a save, a skip, an unskip): a skip leaves no version to name them.
    cases.add_column("status_by", str)
    for row in list(db.query("SELECT id, original_name FROM cases")):
        source_key, slice_index = source_and_slice(row["original_name"])
        cases.update(row["id"], {"source_key": source_key, "slice_index": slice_index})
    # Cases still without a fingerprint, found without a scan.
    db.execute("CREATE INDEX idx_cases_no_descriptor ON cases (id) WHERE descriptor IS NULL")


def _add_volumes(db) -> None:
    """Version 5: volume cases (see the module docstring)."""
    cases = db["cases"]
    cases.add_column("kind", str, not_null_default="image")
    cases.add_column("start_slice", int)
    db["volumes"].create(
        {"case_id": int, "depth": int, "rows": int, "columns": int, "plane": str, "modality": str,
         "geometry_path": str, "source_format": str},
        pk="case_id", foreign_keys=[("case_id", "cases", "id")],
        not_null=["depth", "rows", "columns", "plane", "geometry_path", "source_format"])
    db["corrections"].add_column("reviewed_slices", str)
    db["drafts"].add_column("reviewed_slices", str)


def _add_slice_provenance(db) -> None:
    """Version 6: ``slice_provenance`` on corrections and drafts (see the module docstring)."""
    db["corrections"].add_column("slice_provenance", str)
    db["drafts"].add_column("slice_provenance", str)


def _add_promotion_kinds_and_job_grace(db) -> None:
    """Version 7: ``promotions.kind`` and ``jobs.grace_until`` / ``jobs.host`` (see the module docstring)."""
    db["promotions"].add_column("kind", str, not_null_default="promote")
    # Until now a rollback was the promotion whose reason is exactly "rollback".
    db.execute("UPDATE promotions SET kind = 'rollback' WHERE reason = 'rollback'")
    db["jobs"].add_column("grace_until", float)
    db["jobs"].add_column("host", str)


def _add_raters_and_review(db) -> None:
    """Version 8: raters and review (see the module docstring)."""
    db["corrections"].add_column("rater", str)
    db["cases"].add_column("rater_count", int, not_null_default=0)
    db["cases"].add_column("review_state", str)
    db["cases"].add_column("review_version", int)
    db["cases"].add_column("disagreement", float)
    db["cases"].add_column("consensus_path", str)
    # Every case with a saved version had its one rater.
    db.execute("UPDATE cases SET rater_count = 1 WHERE EXISTS (SELECT 1 FROM corrections k WHERE k.case_id = cases.id)")
    db["reviews"].create(
        {"id": int, "case_id": int, "version": int, "action": str, "by": str, "comment": str,
         "new_version": int, "created_at": str},
        pk="id", foreign_keys=[("case_id", "cases", "id")],
        not_null=["case_id", "action", "by", "comment", "created_at"], defaults={"comment": ""})
    db["reviews"].create_index(["case_id"], index_name="idx_reviews_case")
    # With several raters a skip declines the case for its rater only; the others still get it.
    db["declines"].create({"case_id": int, "annotator": str, "created_at": str}, pk=("case_id", "annotator"),
                          foreign_keys=[("case_id", "cases", "id")], not_null=["created_at"])
    db.execute("CREATE INDEX idx_cases_review ON cases (review_state) WHERE review_state IS NOT NULL")
    db["corrections"].create_index(["case_id", "annotator"], index_name="idx_corrections_case_annotator")
    for key, value in (("review_required", "0"), ("raters_per_case", "1")):
        if not list(db["meta"].rows_where("key = ?", [key])):
            db["meta"].insert({"key": key, "value": value})


# Index i migrates schema version i to i + 1 (SQLite databases made before Alembic; see migrate).
MIGRATIONS = [_create_tables, _add_versions_jobs_and_ranks, _add_drafts_and_lineage, _add_queue_diversity,
              _add_volumes, _add_slice_provenance, _add_promotion_kinds_and_job_grace, _add_raters_and_review]
assert len(MIGRATIONS) == LEGACY_SCHEMA_VERSION

# Alembic revisions in order; the first is the baseline equal to LEGACY_SCHEMA_VERSION, and the
# schema version meta.schema_version records is LEGACY_SCHEMA_VERSION + its index.
REVISIONS = ("schema8", "model_version_order", "team_users")
assert LEGACY_SCHEMA_VERSION + len(REVISIONS) - 1 == SCHEMA_VERSION


def alembic_config(conn):
    """Alembic's configuration for our migrations, run on `conn` (a SQLAlchemy Connection)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = conn
    return config


def alembic_revision(db) -> Optional[str]:
    """The Alembic revision the database is stamped with; None before Alembic."""
    if not db["alembic_version"].exists():
        return None
    rows = db.query("SELECT version_num FROM alembic_version")
    return rows[0]["version_num"] if rows else None


def _legacy_steps(db, version: int) -> None:
    """Bring an SQLite database made before Alembic to LEGACY_SCHEMA_VERSION with the old steps."""
    import sqlite_utils

    legacy = sqlite_utils.Database(db.conn.connection.dbapi_connection, execute_plugins=False)
    if not legacy["meta"].exists():
        legacy["meta"].create({"key": str, "value": str}, pk="key")
    for step in range(version, LEGACY_SCHEMA_VERSION):
        MIGRATIONS[step](legacy)
    legacy["meta"].insert({"key": "schema_version", "value": str(LEGACY_SCHEMA_VERSION)}, replace=True)


def migrate(connections, label: str) -> None:
    """Bring the database to SCHEMA_VERSION in one write transaction; refuse a newer one.

    A new database (either engine) is made by the Alembic revisions. An SQLite database made
    before Alembic is brought to LEGACY_SCHEMA_VERSION by MIGRATIONS, stamped with the baseline
    revision and upgraded from there: nothing in it is lost."""
    import sqlalchemy as sa
    from alembic import command

    try:
        with connections.write() as db:
            version = read_version(db)
            revision = alembic_revision(db)
            if version > SCHEMA_VERSION or (revision is not None and revision not in REVISIONS):
                raise StorageError(
                    f"The annotation database {label} has schema version {version}, newer than this "
                    f"version of MedCLIPSeg supports ({SCHEMA_VERSION}). Upgrade medclipseg to open it.")
            config = alembic_config(db.conn)
            if revision is None and (db["meta"].exists() or db["cases"].exists()):
                if not connections.location.is_sqlite:
                    raise StorageError(f"The PostgreSQL database {label} holds tables but no MedCLIPSeg "
                                       "schema revision; use an empty database for the annotation store.")
                _legacy_steps(db, version)
                command.stamp(config, REVISIONS[0])
            if revision != REVISIONS[-1]:
                command.upgrade(config, REVISIONS[-1])
                connections.tables.forget()
            from medclipseg.annotation.queue import ensure_rank_columns  # queue imports this module

            ensure_rank_columns(db)
    except sa.exc.DBAPIError as exc:
        raise StorageError(f"Could not prepare the annotation database {label}: "
                           f"{str(getattr(exc, 'orig', exc)).strip()}. "
                           "It may not be a MedCLIPSeg annotation database.") from exc
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"Could not prepare the annotation database {label}: {exc}. "
                           "It may not be a MedCLIPSeg annotation database.") from exc
