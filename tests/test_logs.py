"""Logs: one JSON object per line, each line of a request tagged with that request's id."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from filesvc.config import Settings
from filesvc.logs import JsonFormatter, RequestIdFilter, bind_request, unbind_request
from tests.processes import ServeProcess, free_port
from tests.servers import LiveServer

FIELDS = {"timestamp", "level", "logger", "message"}
ACCESS_FIELDS = {"request_id", "method", "route", "status", "duration_ms", "bytes"}


def _lines(serve: ServeProcess) -> list[dict[str, Any]]:
    """Every line the process wrote (stdout and stderr), each parsed as one JSON object."""
    entries = []
    for line in serve.log.read_text().splitlines():
        entry = json.loads(line)  # raises on any line that is not JSON
        assert isinstance(entry, dict) and FIELDS <= entry.keys(), line
        entries.append(entry)
    return entries


def _access(entries: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    [line] = [
        e for e in entries if e["logger"] == "filesvc.access" and e.get("request_id") == request_id
    ]
    assert ACCESS_FIELDS <= line.keys(), line
    return line


def test_serve_writes_json_lines_with_the_request_ids_it_returns(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path / "data").start()
    try:
        with httpx.Client(base_url=serve.url, timeout=10) as client:
            generated = client.get("/api/v1/files")
            given = client.get("/api/v1/files", headers={"X-Request-ID": "client-id_1.2"})
            unsafe = client.get("/nope", headers={"X-Request-ID": "bad id\twith spaces"})
            too_long = client.get("/healthz", headers={"X-Request-ID": "x" * 129})
            refused = client.post("/api/v1/files", content=b"not an image")
    finally:
        assert serve.stop() == 0
    assert given.headers["x-request-id"] == "client-id_1.2"
    assert unsafe.status_code == 404 and refused.status_code == 415
    for response in (generated, unsafe, too_long, refused):
        assert len(response.headers["x-request-id"]) == 32  # made here, not taken

    entries = _lines(serve)
    returned = {r.headers["x-request-id"] for r in (generated, given, unsafe, too_long, refused)}
    logged = {e["request_id"] for e in entries if "request_id" in e}
    assert logged <= returned  # no line carries an id of some other (or no) request
    listing = _access(entries, given.headers["x-request-id"])
    assert listing["route"] == "/api/v1/files" and listing["status"] == 200
    assert listing["bytes"] == len(given.content)
    assert _access(entries, refused.headers["x-request-id"])["error_code"] == (
        "unsupported_media_type"
    )
    assert _access(entries, unsafe.headers["x-request-id"])["route"] == "unmatched"
    uvicorn_lines = [e["message"] for e in entries if e["logger"].startswith("uvicorn")]
    assert "Application startup complete." in uvicorn_lines
    assert not [e for e in entries if e["logger"] == "uvicorn.access"]  # ours replace them


def test_an_export_cut_off_by_its_client_is_logged_once_and_marked_incomplete(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "filesvc.db") as database:  # some 40 MB of CSV
        database.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, label TEXT NOT NULL)")
        database.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 500000) "
            "INSERT INTO big SELECT x, printf('%070d', x) FROM n"
        )
    serve = ServeProcess(data, env={"FILESVC_EXPORT_TABLES": "big"}).start()
    try:
        with httpx.Client(base_url=serve.url, timeout=10) as client:
            identity = {"Accept-Encoding": "identity"}
            with client.stream("GET", "/api/v1/exports/big.csv", headers=identity) as response:
                first = next(response.iter_raw())
                request_id = response.headers["x-request-id"]
            assert first.startswith(b"id,label")
            assert client.get("/healthz").status_code == 200  # still serving
    finally:
        assert serve.stop() == 0
    entries = _lines(serve)
    mine = [e for e in entries if e.get("request_id") == request_id]
    stopped = [e for e in mine if e["logger"] == "filesvc.exports"]
    assert len(stopped) == 1 and "the client went away" in stopped[0]["message"], mine
    access = _access(entries, request_id)
    assert access["status"] == 200  # what was sent
    assert access["incomplete"] is True and access["error_code"] == "client_closed_request"
    assert len(mine) == 2, mine  # nothing else: no traceback, no uvicorn line


def test_lines_written_inside_a_request_carry_its_id_and_no_password(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://filesvc:pw-never-logged@127.0.0.1:{free_port()}/filesvc"
    serve = ServeProcess(
        tmp_path / "data",
        env={"FILESVC_DATABASE_URL": url, "FILESVC_AUTO_MIGRATE": "false"},
    ).start()
    try:
        with httpx.Client(base_url=serve.url, timeout=10) as client:
            response = client.get("/api/v1/files", headers={"X-Request-ID": "db-down-1"})
    finally:
        serve.stop()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    entries = _lines(serve)
    mine = [e for e in entries if e.get("request_id") == "db-down-1"]
    assert {e["logger"] for e in mine} >= {"filesvc", "filesvc.access"}
    warning = next(e for e in mine if e["logger"] == "filesvc")
    assert warning["level"] == "warning" and "database unavailable" in warning["message"]
    assert "pw-never-logged" not in serve.log.read_text()


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The process's log records, rendered as the service renders them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_an_unexpected_fault_is_logged_and_answered_with_its_request_id(
    tmp_path: Path, captured: io.StringIO
) -> None:
    server = LiveServer(Settings(_env_file=None, data_dir=tmp_path / "data"))

    async def boom() -> None:
        raise RuntimeError("a bug")

    async def chatty() -> dict[str, str]:
        logging.getLogger("filesvc.test").info("working on it")
        return {"ok": "yes"}

    server.app.add_api_route("/boom", boom)
    server.app.add_api_route("/chatty", chatty)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            failed = client.get("/boom", headers={"X-Request-ID": "boom-1"})
            fine = client.get("/chatty")
    finally:
        server.stop()
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "internal_error"
    assert "a bug" not in failed.text
    assert failed.headers["x-request-id"] == "boom-1"

    entries = [json.loads(line) for line in captured.getvalue().splitlines()]
    mine = [e for e in entries if e.get("request_id") == "boom-1"]
    assert {e["logger"] for e in mine} == {"filesvc", "filesvc.access", "uvicorn.error"}
    assert all(
        "RuntimeError: a bug" in e["exception"] for e in mine if e["logger"] != "filesvc.access"
    )
    access = next(e for e in mine if e["logger"] == "filesvc.access")
    assert access["status"] == 500 and access["error_code"] == "internal_error"
    inside = next(e for e in entries if e["logger"] == "filesvc.test")
    assert inside["request_id"] == fine.headers["x-request-id"]


def test_formatter_writes_one_line_with_extras_and_masked_passwords() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "filesvc",
        logging.ERROR,
        __file__,
        1,
        "cannot reach %s",
        ("postgresql://u:hunter2@db/x",),
        exc_info,
    )
    record.route = "/api/v1/files"
    token = bind_request("req-7")
    try:
        RequestIdFilter().filter(record)
    finally:
        unbind_request(token)
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "cannot reach postgresql://u:***@db/x"
    assert entry["request_id"] == "req-7"
    assert entry["route"] == "/api/v1/files"
    assert entry["level"] == "error" and entry["logger"] == "filesvc"
    assert entry["timestamp"].endswith("Z")
    assert "ValueError: first line\nsecond line" in entry["exception"]
    assert "hunter2" not in line
