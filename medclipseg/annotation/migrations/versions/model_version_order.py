"""Schema version 9: ``model_versions.seq``, the order in which versions were added.

Model versions are listed in the order they were added. SQLite kept that order in its hidden
``rowid``; PostgreSQL has none, so the order becomes a column of its own, filled from the rowid on
SQLite and from the creation time on PostgreSQL.
"""
import sqlalchemy as sa
from alembic import op

revision = "model_version_order"
down_revision = "schema8"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("model_versions", sa.Column("seq", sa.Integer))
    if op.get_bind().dialect.name == "sqlite":
        op.execute("UPDATE model_versions SET seq = rowid")
    else:
        op.execute("UPDATE model_versions m SET seq = o.n FROM (SELECT id, row_number() OVER "
                   "(ORDER BY created_at, id) AS n FROM model_versions) o WHERE o.id = m.id")
    op.execute("CREATE INDEX idx_model_versions_seq ON model_versions (seq)")
    op.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")


def downgrade():
    op.execute("DROP INDEX idx_model_versions_seq")
    op.drop_column("model_versions", "seq")
    op.execute("UPDATE meta SET value = '8' WHERE key = 'schema_version'")
