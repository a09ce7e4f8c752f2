"""The request head is bounded in size and time by `filesvc serve` itself (httptools)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import make_image
from tests.processes import ServeProcess
from tests.waiting import HANG_SECONDS, eventually

LIMIT = 8192


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data: Path = tmp_path_factory.mktemp("httpprotocol") / "data"
    process = ServeProcess(
        data, env={"FILESVC_MAX_HEADER_BYTES": str(LIMIT), "FILESVC_HEADER_TIMEOUT": "1"}
    )
    process.start()
    yield process
    assert process.stop() == 0, process.log.read_text()


def _exchange(serve: ServeProcess, *pieces: bytes) -> bytes:
    """Send the pieces, then read the answer until the server closes or answers in full."""
    with socket.create_connection(("127.0.0.1", serve.port), timeout=HANG_SECONDS) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused and closed mid-send: the answer is what matters
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < _expected_length(answer):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return answer


def _expected_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(answer) + 1


def _status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]["code"]


def test_a_head_over_the_limit_is_431_and_never_parsed(serve: ServeProcess) -> None:
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nRange: bytes=" + b"0-0," * 1_000_000 + b"\r\n\r\n"
    status, code = _status_and_error(_exchange(serve, huge))
    assert (status, code) == (431, "header_too_large")
    with httpx.Client(base_url=serve.url, timeout=HANG_SECONDS) as client:
        assert client.get("/healthz").status_code == 200


def test_a_head_that_never_ends_is_408(serve: ServeProcess) -> None:
    # No sleep: the server answers on its own once its 1-second head timeout passes.
    status, code = _status_and_error(_exchange(serve, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"))
    assert (status, code) == (408, "request_timeout")


def test_a_head_within_the_limit_followed_by_a_big_body_in_one_write_is_served(
    serve: ServeProcess,
) -> None:
    image = make_image(size=(600, 400), noise=True)
    assert len(image) > 4 * LIMIT
    head = (
        b"POST /api/v1/files?filename=a.png HTTP/1.1\r\nHost: x\r\nX-Pad: "
        + b"p" * (LIMIT - 200)
        + b"\r\nContent-Type: image/png\r\n"
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(image)
    )
    assert len(head) < LIMIT
    answer = _exchange(serve, head + image)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["size"] == len(image)


def test_over_the_concurrency_limit_the_answer_is_the_specs_503(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path / "data", args=["--limit-concurrency", "2"]).start()
    try:
        # An idle connection takes one of the two places; the request's own, the other.
        with socket.create_connection(("127.0.0.1", serve.port), timeout=HANG_SECONDS):
            busy = httpx.get(f"{serve.url}/healthz", timeout=HANG_SECONDS)
        assert busy.status_code == 503
        assert busy.headers["content-type"] == "application/json"
        assert busy.headers["retry-after"].isdigit()
        assert busy.json()["error"]["code"] == "service_unavailable"

        def served() -> bool:  # once the server has seen the idle connection go
            return httpx.get(f"{serve.url}/healthz", timeout=HANG_SECONDS).status_code == 200

        eventually(served, "a request within the limit is served again")
    finally:
        assert serve.stop() == 0, serve.log.read_text()
