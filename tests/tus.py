"""Helpers of the resumable upload tests: tus headers, a raw-socket PATCH, database edits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.servers import LiveServer, read_response_head

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
UPLOADS = "/api/v1/uploads"
MiB = 1024 * 1024


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def create(
    client: httpx.Client, length: int, headers: dict[str, str] | None = None, **meta: str
) -> httpx.Response:
    sent = {**TUS, "Upload-Length": str(length), **(headers or {})}
    if meta:
        sent["Upload-Metadata"] = metadata(**meta)
    return client.post(UPLOADS, headers=sent)


def created(client: httpx.Client, length: int, **meta: str) -> str:
    """The URL of a new upload."""
    response = create(client, length, None, **meta)
    assert response.status_code == 201, response.text
    location: str = response.headers["location"]
    return location


def patch(
    client: httpx.Client,
    url: str,
    offset: int,
    data: bytes,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, **(headers or {})}
    return client.patch(url, headers=sent, content=data)


def offset_of(client: httpx.Client, url: str) -> int:
    response = client.head(url, headers=TUS)
    assert response.status_code == 200, response.status_code
    return int(response.headers["upload-offset"])


def upload_id(url: str) -> str:
    return url.rsplit("/", 1)[1]


def pdf(size: int) -> bytes:
    """``size`` bytes that sniff as a PDF (random after the signature)."""
    return (b"%PDF-1.7\n" + os.urandom(max(size - 9, 0)))[:size]


def execute(server: LiveServer, sql: str, **params: Any) -> None:
    """A write straight to the database, committed (the service does not see it coming)."""

    async def run() -> None:
        engine = create_async_engine(server.settings.effective_database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text(sql), params)
        finally:
            await engine.dispose()

    asyncio.run(run())


def expire(server: LiveServer, upload: str) -> None:
    """Back-date an upload's expiry, as if FILESVC_UPLOAD_EXPIRES had passed."""
    past: Any = datetime(2000, 1, 1, tzinfo=UTC)
    if server.settings.is_sqlite:
        past = "2000-01-01 00:00:00.000000"  # how SQLAlchemy stores them there
    execute(
        server,
        "UPDATE resumable_uploads SET expires_at = :past WHERE id = :id",
        past=past,
        id=upload,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class RawPatch:
    """A PATCH sent by hand over a socket, so a test decides when its body goes on."""

    def __init__(
        self, server_url: str, path: str, offset: int, length: int, headers: dict[str, str]
    ) -> None:
        host, port = server_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        lines = [
            f"PATCH {path} HTTP/1.1",
            f"Host: {host}",
            "Tus-Resumable: 1.0.0",
            f"Content-Type: {OCTETS}",
            f"Upload-Offset: {offset}",
            f"Content-Length: {length}",
            *(f"{k}: {v}" for k, v in headers.items()),
            "",
            "",
        ]
        self.sock.sendall("\r\n".join(lines).encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, bytes]:
        received = read_response_head(self.sock)
        status = int(received.split(b" ", 2)[1])
        return status, received

    def close(self) -> None:
        self.sock.close()
