"""filesvc: file uploads to local disk or S3, stable static URLs, streamed CSV exports."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "create_app"]


def __getattr__(name: str) -> object:
    # Lazy, so that `filesvc --help` does not import FastAPI and SQLAlchemy.
    if name == "create_app":
        from filesvc.app import create_app

        return create_app
    raise AttributeError(name)
