"""A real uvicorn server on 127.0.0.1 running the app, for tests that speak HTTP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from filesvc.app import create_app
from filesvc.config import Settings
from tests.waiting import HANG_SECONDS


def read_response_head(sock: socket.socket, timeout: float | None = None) -> bytes:
    """What ``sock`` receives up to the end of a response's head, or until it closes."""
    if timeout is not None:
        sock.settimeout(timeout)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


class LiveServer:
    """uvicorn serving ``create_app(settings)`` in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + HANG_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)
        self._socket.close()

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def stored_paths(self) -> list[Path]:
        """Every file under the local storage root, unfinished ones included (local only)."""
        if self.settings.storage != "local":
            raise RuntimeError(
                "stored_paths() reads the local disk; use stored_objects(), which works "
                f"with every backend (this server stores in {self.settings.storage})"
            )
        root = self.settings.data_dir / "files"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def stored_objects(self) -> list[str]:
        """What the storage holds, committed or not, with any backend: ``[]`` means no debris.

        Local: every file under the root, as a path relative to it (unfinished
        writes are hidden ``.*.part`` files). S3: every key under the prefix,
        plus ``"<key> (unfinished multipart upload)"`` for each upload in progress.
        """
        if self.settings.storage == "local":
            root = self.settings.data_dir / "files"
            return [p.relative_to(root).as_posix() for p in self.stored_paths()]
        from tests.s3server import list_incomplete_uploads, list_keys, s3_client

        client = s3_client(self.settings.s3_endpoint_url or "")
        prefix = self.settings.s3_prefix.strip("/") + "/" if self.settings.s3_prefix else ""
        bucket = self.settings.s3_bucket
        keys = [key[len(prefix) :] for key in list_keys(client, bucket, prefix)]
        unfinished = list_incomplete_uploads(client, bucket, prefix)
        return sorted(keys) + [
            f"{key[len(prefix) :]} (unfinished multipart upload)" for key in sorted(unfinished)
        ]

    def read_stored(self, name: str) -> bytes:
        """The bytes of one committed object named as :meth:`stored_objects` names it."""
        if self.settings.storage == "local":
            return (self.settings.data_dir / "files" / name).read_bytes()
        from tests.s3server import s3_client

        client = s3_client(self.settings.s3_endpoint_url or "")
        prefix = self.settings.s3_prefix.strip("/") + "/" if self.settings.s3_prefix else ""
        response = client.get_object(Bucket=self.settings.s3_bucket, Key=prefix + name)
        return response["Body"].read()

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows straight from the database, bypassing the service."""

        async def run() -> list[tuple[Any, ...]]:
            engine = create_async_engine(self.settings.effective_database_url)
            try:
                async with engine.connect() as connection:
                    result = await connection.execute(text(sql), params)
                    return [tuple(row) for row in result]
            finally:
                await engine.dispose()

        return asyncio.run(run())

    def row_count(self) -> int:
        return int(self.query("SELECT count(*) FROM files")[0][0])


@contextmanager
def running(settings: Settings) -> Iterator[tuple[LiveServer, httpx.Client]]:
    server = LiveServer(settings)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield server, client
    finally:
        server.stop()
