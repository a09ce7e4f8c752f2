"""filesvc: file uploads to local disk or S3, stable static URLs, streamed CSV exports."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
