"""The uvicorn target: ``uvicorn filesvc.main:app``."""

from __future__ import annotations

from filesvc.app import create_app

app = create_app()
