"""The uvicorn target: ``uvicorn filesvc.main:app``."""

from __future__ import annotations

from filesvc.app import create_app
from filesvc.config import Settings
from filesvc.httpprotocol import BoundedHttpToolsProtocol

settings = Settings()
# Each worker process imports this module: the protocol's bounds are set here.
BoundedHttpToolsProtocol.configure(settings)
app = create_app(settings)
