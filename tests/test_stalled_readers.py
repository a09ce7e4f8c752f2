"""Clients that ask for a big response and never read it are cut off (FILESVC_SEND_TIMEOUT).

Each stalled reader is a raw socket with a small receive buffer that sends
its request, reads at most the status line, and then reads nothing: the
server's ``send`` blocks once the socket buffers are full, and must give up
after the send timeout, closing the connection and freeing whatever the
response held (an export slot, a storage reader). Waits are on events (a
log record, an answer); their deadlines are liveness bounds, not latencies.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, SettingsFactory
from tests.servers import LiveServer
from tests.tables import create_big

#: Short, so each test waits about this long for the aborts.
SEND_TIMEOUT = 1.0
#: Bigger than any socket buffering between the server and a stalled client.
BIG_FILE = 24 * 1024 * 1024
#: Rows of the exported table: a CSV of about 25 MB.
BIG_ROWS = 200_000


@pytest.fixture
def database_url() -> str:
    return ""


@pytest.fixture
def storage_settings() -> dict[str, Any]:
    return {"storage": "local"}


def _eventually(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stalled_reader(server: LiveServer, path: str) -> tuple[socket.socket, bytes]:
    """A connection that asked for ``path``, read the first bytes of the answer, and stopped."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    sock.settimeout(30)
    first = sock.recv(64)  # the status line has come: the response (and its slot) is held
    return sock, first


def drain(sock: socket.socket) -> int:
    """Bytes the server still delivers before it closes the connection."""
    sock.settimeout(30)
    total = 0
    while chunk := sock.recv(1024 * 1024):
        total += len(chunk)
    return total


def aborted(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "filesvc.access" and getattr(r, "error_code", None) == "send_timeout"
    ]


def test_a_stalled_download_is_aborted(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = make_server(send_timeout=SEND_TIMEOUT, allowed_types=["application/pdf"])
    with httpx.Client(base_url=server.url, timeout=60) as client:
        body = b"%PDF-1.7\n" + bytes(BIG_FILE - 9)
        stored = client.post("/api/v1/files?filename=big.pdf", content=body)
        assert stored.status_code == 201, stored.text
        path = "/files/" + stored.json()["id"]
        sock, first = stalled_reader(server, path)
        with sock:
            assert first.startswith(b"HTTP/1.1 200")
            _eventually(lambda: bool(aborted(caplog)), "the download to be aborted")
            # The connection is closed, short of the whole file.
            assert len(first) + drain(sock) < BIG_FILE
        [record] = aborted(caplog)
        assert record.__dict__["incomplete"] is True
        assert record.__dict__["status"] == 200
        # uvicorn's "returned without completing response" error is not logged on top.
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
        # A reader that does read gets the whole file, however long it takes.
        with client.stream("GET", path) as response:
            assert sum(len(c) for c in response.iter_bytes()) == BIG_FILE


def test_stalled_exports_free_their_slots(
    make_settings: SettingsFactory, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    create_big(make_settings(), BIG_ROWS)
    server = make_server(send_timeout=SEND_TIMEOUT, export_tables=["big"])
    path = "/api/v1/exports/big.csv"
    with ExitStack() as stack, httpx.Client(base_url=server.url, timeout=60) as client:
        # Stall readers until every export slot is held: the next export is refused.
        held: list[socket.socket] = []
        while True:
            assert len(held) <= 64, "no export cap was reached"
            sock, first = stalled_reader(server, path)
            stack.enter_context(sock)
            if first.startswith(b"HTTP/1.1 503"):
                break
            assert first.startswith(b"HTTP/1.1 200"), first
            held.append(sock)
        assert held
        # After the send timeout each stalled export is aborted and its slot freed.
        _eventually(lambda: len(aborted(caplog)) >= len(held), "the stalled exports to end")
        response = client.get(path, params={"limit": 10})
        assert response.status_code == 200, response.text
        assert len(response.text.splitlines()) == 11
        for sock in held:
            drain(sock)  # closed by the server
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
