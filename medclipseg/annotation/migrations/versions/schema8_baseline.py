"""The baseline: the annotation database as schema version 8 left it (the release before Alembic).

Frozen on purpose: it never reads today's code (the queue's acquisition list, say), so a database
made by it is the same whatever comes later. SQLite databases older than this are first brought to
version 8 by medclipseg.annotation.schema's own list of steps, then stamped with this revision.
"""
import random

import sqlalchemy as sa
from alembic import op

revision = "schema8"
down_revision = None
branch_labels = None
depends_on = None

RANK_COLUMNS = ("rank_band_entropy", "rank_expected_dice_miss", "rank_top_entropy", "rank_band_mutual_information",
                "rank_foreground_entropy", "rank_boundary_entropy", "rank_mutual_information", "rank_image_entropy")


def _id():
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


def _text(name, nullable=True, default=None):
    return sa.Column(name, sa.Text, nullable=nullable,
                     server_default=None if default is None else sa.text(f"'{default}'"))


def _int(name, nullable=True, default=None):
    return sa.Column(name, sa.Integer, nullable=nullable,
                     server_default=None if default is None else sa.text(str(default)))


def _float(name, nullable=True, default=None):
    return sa.Column(name, sa.Float, nullable=nullable,
                     server_default=None if default is None else sa.text(str(default)))


def upgrade():
    op.create_table("meta", sa.Column("key", sa.Text, primary_key=True), _text("value"))
    op.create_table(
        "cases", _id(), _text("content_hash", False), _text("prompt", False), _text("original_name", False),
        _int("width", False), _int("height", False), _text("source", False), _text("batch"),
        _text("image_path", False), _text("metadata", False, "{}"), _text("status", False, "unreviewed"),
        _text("created_at", False), _text("updated_at", False), _text("assigned_to"), _float("lease_expires"),
        _float("random_key", False), _int("gold"), _text("ranked_model_id"), _int("ranked_prediction_id"),
        *[_float(column) for column in RANK_COLUMNS], _float("rank_random_foreground"),
        sa.Column("descriptor", sa.LargeBinary), _text("source_key"), _int("slice_index"), _text("status_by"),
        _text("kind", False, "image"), _int("start_slice"), _int("rater_count", False, 0), _text("review_state"),
        _int("review_version"), _float("disagreement"), _text("consensus_path"))
    op.create_table(
        "predictions", _id(), sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        _text("model_id", False), _text("prompt", False), _float("threshold", False), _int("num_samples", False),
        _float("seconds"), _text("created_at", False), _text("maps_path", False), _text("mask_path", False),
        _text("scores", False), _float("score_foreground_entropy"), _float("score_boundary_entropy"),
        _float("score_mutual_information"), _float("score_image_entropy"), _int("foreground_pixels"))
    op.create_table(
        "corrections", _id(), sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("prediction_id", sa.Integer, sa.ForeignKey("predictions.id")), _int("version", False),
        _text("annotator", False), _text("prompt", False), _text("status", False), _text("mask_path", False),
        _text("predicted_mask_path", False), _int("pixels_added", False), _int("pixels_erased", False),
        _int("pixels_changed", False), _float("threshold"), _text("model_id"), _text("scores"),
        _text("created_at", False), _int("replaces_version"), _text("reviewed_slices"), _text("slice_provenance"),
        _text("rater"))
    op.create_table(
        "model_versions", sa.Column("id", sa.Text, primary_key=True), _text("name", False), _text("parent_id"),
        _text("kind", False), _text("path", False), _text("recipe"), _text("correction_ids"), _int("train_cases"),
        _int("gold_cases"), _float("gold_dsc"), _float("gold_nsd"), _float("gold_uncertainty_spearman"),
        _float("parent_gold_dsc"), _int("job_id"), _float("seconds"), _text("created_at", False),
        _text("created_by", False))
    op.create_table(
        "promotions", _id(), _text("version_id", False), _text("previous_id"), _text("promoted_by", False),
        _text("reason", False), _text("created_at", False), _text("kind", False, "promote"))
    op.create_table(
        "jobs", _id(), _text("kind", False), _text("status", False), _text("created_by", False),
        _text("created_at", False), _text("started_at"), _text("finished_at"), _int("pid"), _float("heartbeat"),
        _float("progress", True, 0.0), _float("eta_seconds"), _text("message", True, ""), _text("log_path"),
        _text("params", False), _text("parent_id"), _text("version_id"), _int("cancel_requested", True, 0),
        _float("grace_until"), _text("host"))
    op.create_table(
        "drafts", _id(), sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        _text("annotator", False), sa.Column("prediction_id", sa.Integer, sa.ForeignKey("predictions.id")),
        _int("base_version"), _float("threshold"), _text("mask_path", False), _int("pixels", False),
        _int("revision", False), _text("updated_at", False), _text("reviewed_slices"), _text("slice_provenance"))
    op.create_table(
        "volumes", sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), primary_key=True,
                             autoincrement=False),
        _int("depth", False), _int("rows", False), _int("columns", False), _text("plane", False),
        _text("modality"), _text("geometry_path", False), _text("source_format", False))
    op.create_table(
        "reviews", _id(), sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        _int("version"), _text("action", False), _text("by", False), _text("comment", False, ""),
        _int("new_version"), _text("created_at", False))
    op.create_table(
        "declines", sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), primary_key=True,
                              autoincrement=False),
        sa.Column("annotator", sa.Text, primary_key=True), _text("created_at", False))

    nulls_last = "" if op.get_bind().dialect.name == "sqlite" else " NULLS LAST"
    # Indexes as plain DDL: partial indexes (WHERE ...) read the same on SQLite and PostgreSQL.
    for statement in (
            "CREATE UNIQUE INDEX idx_cases_content_prompt ON cases (content_hash, prompt)",
            "CREATE INDEX idx_cases_status_lease ON cases (status, lease_expires)",
            "CREATE INDEX idx_cases_batch ON cases (batch)",
            # The queue is served in DESC order with NULL (not ranked) last: PostgreSQL needs that said.
            *[f'CREATE INDEX "idx_queue_{column}" ON cases ("{column}" DESC{nulls_last}, id) '
              "WHERE status = 'unreviewed'" for column in (*RANK_COLUMNS, "rank_random_foreground", "random_key")],
            "CREATE INDEX idx_cases_ranked_model ON cases (ranked_model_id) WHERE status = 'unreviewed'",
            "CREATE INDEX idx_cases_assigned ON cases (assigned_to) WHERE assigned_to IS NOT NULL",
            "CREATE INDEX idx_cases_no_descriptor ON cases (id) WHERE descriptor IS NULL",
            "CREATE INDEX idx_cases_review ON cases (review_state) WHERE review_state IS NOT NULL",
            "CREATE INDEX idx_predictions_case ON predictions (case_id)",
            "CREATE UNIQUE INDEX idx_corrections_case_version ON corrections (case_id, version)",
            "CREATE INDEX idx_corrections_case ON corrections (case_id)",
            "CREATE INDEX idx_corrections_annotator ON corrections (annotator)",
            "CREATE INDEX idx_corrections_case_annotator ON corrections (case_id, annotator)",
            "CREATE UNIQUE INDEX idx_jobs_one_active ON jobs (kind) WHERE status = 'running'",
            "CREATE UNIQUE INDEX idx_drafts_case_annotator ON drafts (case_id, annotator)",
            "CREATE INDEX idx_reviews_case ON reviews (case_id)"):
        op.execute(statement)

    meta = sa.table("meta", sa.column("key", sa.Text), sa.column("value", sa.Text))
    op.bulk_insert(meta, [
        {"key": "schema_version", "value": "8"},
        {"key": "gold_seed", "value": str(random.SystemRandom().randrange(2**31))},
        {"key": "gold_fraction", "value": "0.2"},
        {"key": "review_required", "value": "0"},
        {"key": "raters_per_case", "value": "1"}])


def downgrade():
    raise NotImplementedError("The baseline is not undone; restore a snapshot or a backup instead.")
