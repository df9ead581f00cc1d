"""Alembic's entry point: runs the migrations on the connection medclipseg.annotation.schema hands over.

The store opens the connection and its transaction itself (a write transaction of
medclipseg.annotation.sql), so Alembic joins it instead of opening its own: two processes opening a
new database at once cannot both create the tables.
"""
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
