"""Schema version 10: ``users``, the team's logins kept in the database (medclipseg.annotation.accounts).

Name, role and a salted PBKDF2-SHA256 hash of the password (never the password); who added the
user and when. MEDCLIPSEG_AUTH still works beside it (its entries win on a clash).
"""
import sqlalchemy as sa
from alembic import op

revision = "team_users"
down_revision = "model_version_order"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "users", sa.Column("name", sa.Text, primary_key=True), sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False), sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False))
    op.execute("UPDATE meta SET value = '10' WHERE key = 'schema_version'")


def downgrade():
    op.drop_table("users")
    op.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
