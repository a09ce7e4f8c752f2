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


async def bare_upload_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an upload server can do for filesvc's guarantees, as bare ASGI.

    It does the same work as a filesvc raw upload (receive, SHA-256, write to a
    temporary file, fsync, rename) with nothing else: no parsing, limits,
    sniffing, database row or overlap. filesvc is measured as a ratio to it.
    """
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/healthz":
        body = b'{"status": "ok"}'
    else:
        store = Path(os.environ["BENCH_STORE_DIR"])
        temp = store / f".{secrets.token_hex(8)}.part"
        digest = hashlib.sha256()
        size = 0
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            more = True
            while more:
                message = await receive()
                chunk = message.get("body", b"")
                digest.update(chunk)
                os.write(fd, chunk)
                size += len(chunk)
                more = message.get("more_body", False)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = temp.with_name(temp.name[1:-5])
        os.replace(temp, final)
        body = (f'{{"size": {size}, "sha256": "{digest.hexdigest()}", "path": "{final}"}}').encode()
    await send(
        {
            "type": "http.response.start",
            "status": 201 if scope["path"] != "/healthz" else 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
