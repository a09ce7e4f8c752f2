"""The PostgreSQL half of the export scenario alone: filesvc's COPY path against psql \\copy."""

from __future__ import annotations

from tests.perf.exports import run_postgres as run

__all__ = ["run"]
