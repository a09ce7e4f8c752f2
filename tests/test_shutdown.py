"""SIGTERM while a request is in flight: what the client gets and what the log says.

`filesvc serve` runs as a real subprocess (tests/processes.py). uvicorn waits
``--graceful-timeout`` seconds for requests in flight, then cancels them;
such a request gets the SPEC's JSON 503 (never uvicorn's plain-text 500)
and leaves one log line (never a traceback).
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from tests.images import make_image
from tests.processes import ServeProcess
from tests.test_hostile import read_response


def _uploads_in_progress(server: ServeProcess) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("filesvc_uploads_in_progress"):
            return float(line.split()[-1])
    return 0.0


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            lines.append({"message": raw, "not_json": True})
    return lines


def test_a_request_cut_at_the_graceful_timeout_gets_the_json_503(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", args=["--graceful-timeout", "1"]).start()
    try:
        image = make_image("image/png", (100, 100), noise=True)
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            # Half the body, then nothing: the upload waits for the rest (body timeout 60 s).
            sock.sendall(
                b"POST /api/v1/files?filename=a.png HTTP/1.1\r\nHost: test\r\n"
                b"X-Request-ID: cut-at-shutdown\r\n"
                b"Content-Length: %d\r\n\r\n" % len(image) + image[: len(image) // 2]
            )
            deadline = time.monotonic() + 30
            while _uploads_in_progress(server) < 1:
                assert time.monotonic() < deadline, "the upload never started"
                time.sleep(0.02)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            answer = read_response(sock, timeout=30)
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
        assert status_line == "HTTP/1.1 503 Service Unavailable", answer[:300]
        assert headers["content-type"] == "application/json"
        assert headers["retry-after"]
        assert headers["x-request-id"] == "cut-at-shutdown"
        error = json.loads(body)["error"]
        assert error["code"] == "shutting_down" and error["message"]
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    lines = _log_lines(server.log)
    assert not [line for line in lines if line.get("not_json")], lines
    assert not [line for line in lines if "Traceback" in json.dumps(line)], lines
    about_it = [line for line in lines if line.get("request_id") == "cut-at-shutdown"]
    assert len(about_it) == 1, about_it
    assert about_it[0]["status"] == 503
    assert about_it[0]["error_code"] == "shutting_down"
