"""The Python baselines, each run under uvicorn with one worker.

``upload_app`` is the pattern most FastAPI upload examples show: an
``UploadFile`` parameter (Starlette spools the part to a temporary file while
parsing), then ``await file.read()`` and a write to disk, with the SHA-256 of
the bytes so that it does the same work as filesvc. ``static_app`` is
Starlette's ``StaticFiles`` on a directory.

Directories come from ``BENCH_STORE_DIR`` and ``BENCH_STATIC_DIR``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, UploadFile
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

upload_app = FastAPI()


@upload_app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@upload_app.post("/upload", status_code=201)
async def upload(file: UploadFile) -> dict[str, Any]:
    data = await file.read()
    path = Path(os.environ["BENCH_STORE_DIR"]) / secrets.token_hex(8)
    path.write_bytes(data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "path": str(path)}


static_app = Starlette(
    routes=[
        Mount(
            "/files",
            StaticFiles(directory=os.environ.get("BENCH_STATIC_DIR", "."), check_dir=False),
        )
    ]
)
