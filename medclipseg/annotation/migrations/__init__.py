"""Alembic migrations of the annotation database (see medclipseg.annotation.schema)."""
