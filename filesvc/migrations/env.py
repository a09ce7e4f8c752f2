"""Alembic environment: runs on the connection handed over by :func:`filesvc.db.migrate`."""

from __future__ import annotations

from alembic import context

from filesvc.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `filesvc migrate`, which provides the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
