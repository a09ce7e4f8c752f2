"""Faults a real deployment meets: a stored file is complete and listed, or absent."""

from __future__ import annotations

import os
import resource
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.images import make_image
from tests.processes import ServeProcess
from tests.servers import LiveServer
from tests.waiting import HANG_SECONDS, wait_until

MiB = 1024 * 1024
PDF_TYPES = "image/png,application/pdf"


def pdf_bytes(size: int) -> bytes:
    return b"%PDF-1.7\n" + b"\xab" * (size - 9)


def raw_upload_head(port: int, length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /api/v1/files?filename=big.pdf HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/pdf\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    return sock


def final_paths(data_dir: Path) -> list[Path]:
    """Committed files: temporary writes start with a dot."""
    root = data_dir / "files"
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


def rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "filesvc.db") as db:
        return int(db.execute("SELECT count(*) FROM files").fetchone()[0])


@pytest.fixture
def sqlite_only(database_url: str) -> None:
    if database_url:
        pytest.skip("covers process-level faults; the database dimension adds nothing")


def test_client_disconnect_mid_upload_leaves_nothing(
    sqlite_only: None, make_server: ServerFactory
) -> None:
    server = make_server(allowed_types=PDF_TYPES)
    # More than one S3 part, so that a multipart upload is under way there too.
    sock = raw_upload_head(server.port, 12 * MiB)
    sock.sendall(pdf_bytes(9 * MiB))
    assert wait_until(lambda: server.stored_objects() != []), "the upload never reached storage"
    sock.close()
    assert wait_until(lambda: server.stored_objects() == []), server.stored_objects()
    assert server.row_count() == 0
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/healthz").status_code == 200
        assert client.post("/api/v1/files", content=make_image()).status_code == 201


def test_client_disconnect_mid_download_keeps_serving(
    sqlite_only: None, make_server: ServerFactory
) -> None:
    server = make_server(allowed_types=PDF_TYPES, max_upload_bytes=64 * MiB)
    with httpx.Client(base_url=server.url) as client:
        url = client.post("/api/v1/files", content=pdf_bytes(32 * MiB)).json()["url"]
        with client.stream("GET", url) as response:
            next(response.iter_bytes())
        # closed after the first chunk; the server must carry on
        assert client.get(url).content == pdf_bytes(32 * MiB)


def test_body_that_never_ends_times_out_and_keeps_nothing(
    sqlite_only: None, make_server: ServerFactory
) -> None:
    server = make_server(allowed_types=PDF_TYPES, body_timeout=1)
    boundary = "zz"
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        part = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n\r\n'
        ).encode() + pdf_bytes(2 * MiB)
        sock.sendall(
            f"POST /api/v1/files HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(part) + 1000}\r\n\r\n".encode()
            + part
        )
        # The rest of the body never comes: only the 1 s body timeout can answer.
        sock.settimeout(HANG_SECONDS)
        response = sock.recv(65536)
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 408"), response[:100]
    assert b"request_timeout" in response
    assert wait_until(lambda: server.stored_objects() == [])
    assert server.row_count() == 0


def _limit_file_size() -> None:
    # A real EFBIG from the kernel once a file would pass 4 MiB: the disk is "full".
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MiB, 4 * MiB))


def test_disk_full_is_507_and_nothing_half_written(sqlite_only: None, tmp_path: Path) -> None:
    server = ServeProcess(
        tmp_path / "data",
        env={"FILESVC_ALLOWED_TYPES": PDF_TYPES},
        preexec_fn=_limit_file_size,
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            response = client.post("/api/v1/files", content=pdf_bytes(6 * MiB))
            assert response.status_code == 507, response.text
            assert response.json()["error"]["code"] == "insufficient_storage"
            assert list((tmp_path / "data" / "files").rglob("*.part")) == []
            assert final_paths(tmp_path / "data") == []
            assert rows(tmp_path / "data") == 0
            # The service carries on with what fits.
            assert client.post("/api/v1/files", content=make_image()).status_code == 201
    finally:
        server.stop()


def test_database_down_at_upload_removes_the_bytes(
    sqlite_only: None, make_server: ServerFactory
) -> None:
    # Nothing listens on port 1: PostgreSQL is "down". The service still starts.
    server = make_server(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/filesvc", auto_migrate=False
    )
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/api/v1/files", files={"file": ("a.png", make_image())})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "database_unavailable"
        assert response.headers["retry-after"].isdigit()
        assert server.stored_objects() == []
        listing = client.get("/api/v1/files")
        assert listing.status_code == 503
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "database" in ready.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200


@pytest.fixture
def serve(tmp_path: Path, sqlite_only: None) -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for process in started:
        process.stop()


def test_kill_9_mid_upload_leaves_no_partial_file_and_restart_sweeps(
    serve: list[ServeProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # The grace may not be below the body deadline (a sweep would cut live uploads).
    env = {
        "FILESVC_ALLOWED_TYPES": PDF_TYPES,
        "FILESVC_INCOMPLETE_UPLOAD_GRACE": "60",
        "FILESVC_BODY_DEADLINE": "60",
    }
    first = ServeProcess(data_dir, env=env).start()
    serve.append(first)
    with httpx.Client(base_url=first.url) as client:
        assert client.post("/api/v1/files", content=make_image()).status_code == 201
    socks = [raw_upload_head(first.port, 50 * MiB) for _ in range(3)]
    for sock in socks:
        sock.sendall(pdf_bytes(5 * MiB))
    assert wait_until(lambda: len(list((data_dir / "files").rglob(".*.part"))) == 3)
    assert first.process is not None
    first.process.kill()
    first.process.wait()
    for sock in socks:
        sock.close()

    assert len(final_paths(data_dir)) == 1  # only the finished upload
    assert rows(data_dir) == 1
    assert len(list((data_dir / "files").rglob(".*.part"))) == 3
    for part in (data_dir / "files").rglob(".*.part"):  # left by a crash a while ago
        os.utime(part, (time.time() - 120, time.time() - 120))

    second = ServeProcess(data_dir, env=env).start()
    serve.append(second)
    assert list((data_dir / "files").rglob(".*.part")) == []
    assert len(final_paths(data_dir)) == 1 and rows(data_dir) == 1


def test_sigterm_finishes_in_flight_uploads_refuses_new_ones_and_exits_0(
    serve: list[ServeProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    process = ServeProcess(
        data_dir, env={"FILESVC_ALLOWED_TYPES": PDF_TYPES}, args=["--graceful-timeout", "60"]
    ).start()
    serve.append(process)
    body = pdf_bytes(4 * MiB)
    sock = raw_upload_head(process.port, len(body))
    sock.sendall(body[:MiB])
    assert wait_until(lambda: list((data_dir / "files").rglob(".*.part")) != [])

    assert process.process is not None
    process.process.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", process.port), timeout=1).close()
        except OSError:
            return True
        return False

    assert wait_until(refused), "new connections were still accepted after SIGTERM"
    response: list[bytes] = []

    def finish() -> None:
        sock.sendall(body[MiB:])
        sock.settimeout(HANG_SECONDS)
        response.append(sock.recv(65536))

    thread = threading.Thread(target=finish)
    thread.start()
    thread.join(HANG_SECONDS)
    sock.close()
    assert response and response[0].startswith(b"HTTP/1.1 201"), response
    assert process.process.wait(timeout=HANG_SECONDS) == 0
    assert rows(data_dir) == 1 and len(final_paths(data_dir)) == 1


def test_in_thread_server_reports_nothing_left_after_refusals(server: LiveServer) -> None:
    """The debris check used across the suites sees unfinished writes too."""
    if server.settings.storage != "local":
        pytest.skip("unfinished S3 uploads are covered by the storage contract suite")
    part = server.data_dir / "files" / "ab" / "cd" / ".x.1234.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"partial")
    assert server.stored_objects() == ["ab/cd/.x.1234.part"]


@pytest.mark.parametrize("landed", [False, True], ids=["before-commit", "after-commit"])
def test_a_commit_failing_in_flight_never_removes_bytes_under_a_row(
    sqlite_only: None, server: LiveServer, client: httpx.Client, landed: bool
) -> None:
    """A commit whose answer is lost may have landed: bytes go only if the row did not."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    def lose_the_answer(session: Session) -> None:
        raise RuntimeError("the commit's answer was lost")

    hook = "after_commit" if landed else "before_commit"
    event.listen(Session, hook, lose_the_answer)
    try:
        response = client.post("/api/v1/files", files={"file": ("a.png", make_image())})
    finally:
        event.remove(Session, hook, lose_the_answer)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert server.row_count() == (1 if landed else 0)
    assert len(server.stored_objects()) == (1 if landed else 0)
