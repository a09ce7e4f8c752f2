"""Hostile input: each is answered with the spec's JSON error, and nothing is stored.

Every test checks the data directory (blobs and unfinished writes) and the
database before and after. The inputs are refused before any database work,
so these run on SQLite and local disk only.
"""

from __future__ import annotations

import hashlib
import io
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import ServerFactory
from tests.images import make_image
from tests.servers import LiveServer
from tests.waiting import HANG_SECONDS, eventually

BOUNDARY = b"hostile-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"
FILE_HEADERS = b'Content-Disposition: form-data; name="file"; filename="a.png"'


pytestmark = pytest.mark.embedded


def stored_state(server: LiveServer) -> tuple[list[Path], list[tuple[Any, ...]]]:
    return server.stored_paths(), server.query("SELECT id, sha256 FROM files ORDER BY id")


@contextmanager
def nothing_stored(server: LiveServer) -> Iterator[None]:
    before = stored_state(server)
    yield
    assert stored_state(server) == before


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error


def multipart(
    parts: list[tuple[bytes, bytes]], *, boundary: bytes = BOUNDARY, final: bool = True
) -> bytes:
    body = b"".join(
        b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
        for headers, content in parts
    )
    return body + (b"--" + boundary + b"--\r\n" if final else b"")


def file_part(name: bytes = b"a.png", content: bytes | None = None) -> tuple[bytes, bytes]:
    headers = b'Content-Disposition: form-data; name="file"; filename="' + name + b'"'
    return headers, make_image("image/png") if content is None else content


def post_form(
    client: httpx.Client, body: bytes, *, path: str = "/api/v1/files", content_type: str = MULTIPART
) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": content_type})


# Malformed multipart


MALFORMED = {
    "no boundary": (multipart([file_part()]), "multipart/form-data"),
    "empty boundary": (multipart([file_part()]), "multipart/form-data; boundary="),
    "huge boundary": (
        multipart([file_part()], boundary=b"b" * 5000),
        "multipart/form-data; boundary=" + "b" * 5000,
    ),
    "no final boundary": (multipart([file_part()], final=False), MULTIPART),
    "no boundary line at all": (make_image("image/png"), MULTIPART),
    "preamble": (b"x" * 100_000 + b"\r\n" + multipart([file_part()]), MULTIPART),
    "header line past the limit": (
        multipart([(b"X-Padding: " + b"a" * 100_000 + b"\r\n" + FILE_HEADERS, b"x")]),
        MULTIPART,
    ),
    "header that never ends": (
        b"--" + BOUNDARY + b"\r\nContent-Disposition: " + b"a" * 2_000_000,
        MULTIPART,
    ),
    "hundreds of header lines": (
        multipart([(b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + FILE_HEADERS, b"x")]),
        MULTIPART,
    ),
    "part without content-disposition": (
        multipart([(b"Content-Type: image/png", make_image("image/png"))]),
        MULTIPART,
    ),
    "file part not named file": (
        multipart([(b'Content-Disposition: form-data; name="other"; filename="a.png"', b"x")]),
        MULTIPART,
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_multipart(server: LiveServer, client: httpx.Client, case: str) -> None:
    body, content_type = MALFORMED[case]
    with nothing_stored(server):
        for path in ("/api/v1/files", "/api/v1/files/batch"):
            response = post_form(client, body, path=path, content_type=content_type)
            assert_error(response, 400, "invalid_request")


def test_thousands_of_fields(server: LiveServer, client: httpx.Client) -> None:
    fields = [(b'Content-Disposition: form-data; name="f%d"' % i, b"v") for i in range(5000)]
    with nothing_stored(server):
        error = assert_error(
            post_form(client, multipart([*fields, file_part()])), 400, "invalid_request"
        )
    assert "form fields" in error["message"]


def test_thousands_of_fields_with_one_name(server: LiveServer, client: httpx.Client) -> None:
    field = (b'Content-Disposition: form-data; name="visibility"', b"public")
    with nothing_stored(server):
        response = post_form(client, multipart([field] * 5000 + [file_part()]))
        error = assert_error(response, 400, "invalid_request")
    assert "form fields" in error["message"]


def test_thousands_of_file_parts(server: LiveServer, client: httpx.Client) -> None:
    parts = [file_part(b"%d.png" % i) for i in range(3000)]
    with nothing_stored(server):
        response = post_form(client, multipart(parts), path="/api/v1/files/batch")
        error = assert_error(response, 400, "invalid_request")
    assert error["details"]["index"] == server.settings.max_batch_files


def test_file_part_repeated(server: LiveServer, client: httpx.Client) -> None:
    with nothing_stored(server):
        response = post_form(client, multipart([file_part(b"a.png"), file_part(b"b.png")]))
        assert_error(response, 400, "invalid_request")


def test_field_value_past_the_limit(server: LiveServer, client: httpx.Client) -> None:
    big = (b'Content-Disposition: form-data; name="note"', b"v" * 200_000)
    with nothing_stored(server):
        assert_error(post_form(client, multipart([big, file_part()])), 400, "invalid_request")


def test_epilogue_is_not_read(make_server: ServerFactory) -> None:
    """Bytes after the final boundary are ignored, not awaited: a chunked body could go on."""
    # A 201 read within HANG_SECONDS (60) cannot come from a 120 s idle timeout: the server
    # answered without waiting for the body's end.
    server = make_server(body_timeout=120.0)
    body = multipart([file_part()])
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /api/v1/files HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: "
            + MULTIPART.encode()
            + b"\r\n\r\n"
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n"
            + b"10\r\n"
            + b"epilogue-bytes.."
            + b"\r\n"
        )  # and never the terminating chunk
        head = read_response(sock)
    assert head.startswith(b"HTTP/1.1 201"), head[:200]
    assert server.row_count() == 1


# File names


def test_non_utf8_file_name(server: LiveServer, client: httpx.Client) -> None:
    with nothing_stored(server):
        response = post_form(client, multipart([file_part(b"\xff\xfe\xe9.png")]))
        assert_error(response, 400, "invalid_request")
        raw = client.post("/api/v1/files?filename=%FF%FE.png", content=make_image("image/png"))
        assert_error(raw, 400, "invalid_request")


def test_extended_utf8_file_name(client: httpx.Client) -> None:
    headers = b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%E2%82%AC.png"
    response = post_form(client, multipart([(headers, make_image("image/png"))]))
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "€.png"


def test_over_long_file_names(server: LiveServer, client: httpx.Client) -> None:
    with nothing_stored(server):
        huge = post_form(client, multipart([file_part(b"a" * 20_000 + b".png")]))
        assert_error(huge, 400, "invalid_request")
        raw = client.post("/api/v1/files?filename=" + "a" * 2000, content=make_image("image/png"))
        assert_error(raw, 400, "invalid_request")
    # Within the header limit a long name is kept, cut to 255 characters with its extension.
    response = post_form(client, multipart([file_part(b"a" * 300 + b".png")]))
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "a" * 251 + ".png"


@pytest.mark.parametrize(
    "name",
    [
        b"../../../etc/passwd",
        b"..\\..\\..\\windows\\win.ini",
        b"/etc/passwd",
        b"..",
        b"a\x00b/../c",
    ],
)
def test_path_traversal_in_file_names(
    server: LiveServer, client: httpx.Client, name: bytes
) -> None:
    response = post_form(client, multipart([file_part(name)]))
    assert response.status_code == 201, response.text
    stored = response.json()
    assert "/" not in stored["filename"] and "\\" not in stored["filename"]
    assert ".." not in stored["filename"] and "\x00" not in stored["filename"]
    root = (server.data_dir / "files").resolve()
    [path] = server.stored_paths()
    assert path.resolve().is_relative_to(root)
    assert stored["filename"] not in path.relative_to(root).parts
    assert not (server.data_dir.parent / "etc").exists()


def test_path_traversal_in_raw_file_name(server: LiveServer, client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/files?filename=..%2F..%2Fetc%2Fpasswd", content=make_image("image/png")
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "passwd"
    [path] = server.stored_paths()
    assert path.resolve().is_relative_to((server.data_dir / "files").resolve())


TRAVERSAL_URLS = [
    "/files/..%2f..%2fetc%2fpasswd",
    "/files/..%252f..%252fetc%252fpasswd",
    "/files/x/..%2f..%2f..%2fetc%2fpasswd",
    "/files/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2fpyproject.toml",
    "/static/..%252fpyproject.toml",
    "/static/%2e%2e/pyproject.toml",
    "/static/..%5cpyproject.toml",
    "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/static/....//pyproject.toml",
    "/api/v1/files/..%2f..%2fetc%2fpasswd",
    "/api/v1/files/%2e%2e",
]


@pytest.mark.parametrize("path", TRAVERSAL_URLS)
def test_path_traversal_in_urls(server: LiveServer, path: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        # Sent as is: an HTTP client would normalise the dots away.
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        response = read_response(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] in (b"400", b"404"), head
    assert b"application/json" in head.lower()
    assert b"root:" not in body and b"[project]" not in body


# Content: polyglots, bombs, lies


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int, rows: bytes) -> bytes:
    """A PNG whose header says ``width``×``height`` and whose data is ``rows``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


SCRIPT = b"<html><body><script>alert(document.domain)</script></body></html>"


def test_gif_html_polyglot_is_stored_but_served_inert(client: httpx.Client) -> None:
    """It decodes as a GIF, so it is one; it is only ever served as an image that runs nothing."""
    polyglot = make_image("image/gif") + SCRIPT
    response = client.post("/api/v1/files?filename=x.html", content=polyglot)
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["content_type"] == "image/gif"
    base = stored["url"].rsplit("/", 1)[0]
    for url in (stored["url"], base, base + "/x.html", base + "/x.svg"):
        served = client.get(url, headers={"Accept": "text/html"})
        assert served.status_code == 200, url
        assert served.headers["content-type"] == "image/gif"
        assert served.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in served.headers["content-security-policy"]
        assert served.content == polyglot


def test_gif_with_script_in_a_comment(client: httpx.Client) -> None:
    gif = make_image("image/gif")
    comment = b"\x21\xfe" + bytes([len(SCRIPT)]) + SCRIPT + b"\x00"
    polyglot = gif[:-1] + comment + gif[-1:]
    response = client.post("/api/v1/files?filename=c.gif", content=polyglot)
    assert response.status_code == 201, response.text
    served = client.get(response.json()["url"])
    assert served.headers["content-type"] == "image/gif"
    assert served.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"GIF89a" + SCRIPT, 422, "invalid_content"),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            415,
            "unsupported_media_type",
        ),
        (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
            415,
            "unsupported_media_type",
        ),
        (SCRIPT, 415, "unsupported_media_type"),
        (b"\x89PNG\r\n\x1a\n" + SCRIPT, 422, "invalid_content"),
    ],
    ids=["gif-header-then-html", "svg-script", "svg-onload", "html", "png-header-then-html"],
)
def test_script_behind_an_image_header(
    server: LiveServer, client: httpx.Client, body: bytes, status: int, code: str
) -> None:
    with nothing_stored(server):
        for content_type in ("image/gif", "image/svg+xml", "text/html"):
            response = client.post(
                "/api/v1/files?filename=x.gif", content=body, headers={"Content-Type": content_type}
            )
            assert_error(response, status, code)
            form = post_form(client, multipart([file_part(b"x.svg", body)]))
            assert_error(form, status, code)


def _gif_screen(width: int, height: int) -> bytes:
    gif = bytearray(make_image("image/gif"))
    gif[6:10] = struct.pack("<HH", width, height)
    return bytes(gif)


def _jpeg_frame(width: int, height: int) -> bytes:
    jpeg = bytearray(make_image("image/jpeg"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


@pytest.mark.parametrize(
    "image",
    [
        png_declaring(30000, 30000, b"\x00" * 64),
        png_declaring(20000, 20000, b"\x00" + b"\x00" * 3 * 20000),
        _gif_screen(65535, 65535),
        _jpeg_frame(60000, 60000),
    ],
    ids=["png-30000x30000-tiny-payload", "png-20000x20000-one-row", "gif-screen", "jpeg-frame"],
)
def test_decompression_bombs(server: LiveServer, client: httpx.Client, image: bytes) -> None:
    assert len(image) < 10_000
    with nothing_stored(server):
        response = client.post("/api/v1/files?filename=bomb.png", content=image)
        error = assert_error(response, 422, "invalid_content")
        assert "pixel" in error["message"]
        assert_error(
            post_form(client, multipart([file_part(b"b.png", image)])), 422, "invalid_content"
        )


def test_real_zlib_bomb_under_the_pixel_limit_is_decoded_in_bounded_memory(
    make_server: ServerFactory,
) -> None:
    """5000×5000 black pixels: 75 MB decoded from ~75 KB. Within a 10 Mpx limit: refused."""
    server = make_server(max_image_pixels=10_000_000)
    image = png_declaring(5000, 5000, (b"\x00" + b"\x00" * 15000) * 5000)
    assert len(image) < 200_000
    with httpx.Client(base_url=server.url) as client, nothing_stored(server):
        response = client.post("/api/v1/files?filename=bomb.png", content=image)
        assert_error(response, 422, "invalid_content")


def test_header_claims_more_pixels_than_the_data_holds(
    server: LiveServer, client: httpx.Client
) -> None:
    image = png_declaring(100, 100, (b"\x00" + b"\x00" * 30) * 10)
    with nothing_stored(server):
        response = client.post("/api/v1/files?filename=lie.png", content=image)
        assert_error(response, 422, "invalid_content")


def test_header_claims_fewer_pixels_than_the_data_holds(client: httpx.Client) -> None:
    """Decoders draw what the header says and ignore the rest: it is that 1×1 image."""
    image = png_declaring(1, 1, (b"\x00" + b"\x00" * 300) * 100)
    response = client.post("/api/v1/files?filename=lie.png", content=image)
    assert response.status_code == 201, response.text
    assert (response.json()["width"], response.json()["height"]) == (1, 1)
    with Image.open(io.BytesIO(image)) as decoded:
        assert decoded.size == (1, 1)


def test_truncated_image(server: LiveServer, client: httpx.Client) -> None:
    image = make_image("image/png", (300, 300), noise=True)
    with nothing_stored(server):
        response = client.post("/api/v1/files?filename=t.png", content=image[: len(image) // 2])
        assert_error(response, 422, "invalid_content")


# Bodies that end early or crawl


def read_response(sock: socket.socket, timeout: float = HANG_SECONDS) -> bytes:
    """What the server sends until it closes, or until a whole response has arrived."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                None,
            )
            if length is not None and len(body) >= length:
                break
    return data


def _truncated(port: int, head: bytes, sent: bytes, declared: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % declared + sent)
        sock.shutdown(socket.SHUT_WR)
        return read_response(sock, timeout=5)


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_truncated_body(
    server: LiveServer, client: httpx.Client, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    image = make_image("image/png", (200, 200), noise=True)
    if kind == "raw":
        head = b"POST /api/v1/files?filename=t.png HTTP/1.1\r\nHost: test\r\n"
        sent = image[:20_000]
    else:
        head = (
            b"POST /api/v1/files HTTP/1.1\r\nHost: test\r\nContent-Type: "
            + MULTIPART.encode()
            + b"\r\n"
        )
        sent = multipart([file_part(b"t.png", image)])[:20_000]
    with nothing_stored(server):
        answer = _truncated(server.port, head, sent, declared=len(image) * 2)
        # The client is gone: whatever came back, it is no success.
        assert not answer.startswith(b"HTTP/1.1 2")
        eventually(lambda: not server.stored_paths(), "the partial upload is removed")
    assert client.get("/healthz").status_code == 200
    faults = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not faults, [r.getMessage() for r in faults]


def _trickle(port: int, head: bytes, body: bytes, interval: float) -> tuple[bytes, int]:
    """Send ``body`` a byte every ``interval`` seconds until the server answers.

    Returns the answer and how many body bytes had been sent by then: fewer than
    the whole body means the server cut the upload off mid-body.
    """
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
        sent = 0
        while sent < len(body):
            try:
                sock.sendall(body[sent : sent + 1])
            except OSError:
                break
            sent += 1
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                break
        return read_response(sock), sent


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_one_byte_a_tick_is_cut_off(make_server: ServerFactory, kind: str) -> None:
    """Never idle long enough for body_timeout, but far below min_body_rate: 408."""
    server = make_server(body_timeout=1.0, min_body_rate=1000)
    image = make_image("image/png")
    if kind == "raw":
        head = b"POST /api/v1/files?filename=s.png HTTP/1.1\r\nHost: test\r\n"
        body = image
    else:
        head = (
            b"POST /api/v1/files HTTP/1.1\r\nHost: test\r\nContent-Type: "
            + MULTIPART.encode()
            + b"\r\n"
        )
        body = multipart([file_part(b"s.png", image)])
    with nothing_stored(server):
        answer, sent = _trickle(server.port, head, body, interval=0.1)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b'"request_timeout"' in answer and b"bytes per second" in answer
    assert sent < len(body), "cut off only once the whole body had come"


def test_body_deadline(make_server: ServerFactory) -> None:
    """Fast enough for min_body_rate, but the whole body takes longer than body_deadline."""
    server = make_server(body_timeout=5.0, min_body_rate=10, body_deadline=1.5)
    head = b"POST /api/v1/files?filename=d.png HTTP/1.1\r\nHost: test\r\n"
    with nothing_stored(server):
        body = make_image("image/png") * 10
        answer, sent = _trickle(server.port, head, body, interval=0.02)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"took longer than" in answer
    assert sent < len(body), "cut off only once the whole body had come"


def test_stalled_body(make_server: ServerFactory) -> None:
    server = make_server(body_timeout=0.5)
    with nothing_stored(server), socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /api/v1/files?filename=x.png HTTP/1.1\r\nHost: test\r\n"
            b"Content-Length: 100000\r\n\r\n" + make_image("image/png")[:50]
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"stalled" in answer


# Huge query strings and filter values


def test_huge_query_values(server: LiveServer, client: httpx.Client) -> None:
    for params in (
        {"cursor": "a" * 10_000},
        {"content_type": "a" * 10_000},
        {"limit": "9" * 10_000},
        {"created_after": "2" * 10_000},
    ):
        assert_error(client.get("/api/v1/files", params=params), 400, "invalid_request")
    with nothing_stored(server):
        response = client.post("/api/v1/files?filename=x.png&" + "a=b&" * 5000, content=b"x")
        assert response.status_code in (400, 415)


def test_request_line_past_the_server_limit(server: LiveServer) -> None:
    """Refused by the HTTP server before the app sees it (so not in the JSON shape)."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"GET /api/v1/files?cursor=" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:200]


def _has_exports(server: LiveServer) -> bool:
    return any(getattr(r, "path", "") == "/api/v1/exports" for r in server.app.routes) or (
        httpx.get(server.url + "/api/v1/exports").status_code != 404
    )


@pytest.mark.parametrize(
    "query",
    [
        {"filename": "a" * 60_000},
        {"filename": "a" * 7_000},
        {"filename__in": ",".join(["1"] * 1_000)},
        {"filename__in": ",".join(str(i) for i in range(8_000))},
        {"columns": ",".join(["id"] * 600)},
        {"size__gt": "9" * 2_000},
        {"size__lt": "1e999999"},
        {"created_at__gte": "2" * 7_000},
        {"created_at__gte": "9999-99-99"},
        {"order_by": "-" * 7_000},
        {"limit": "9" * 7_000},
    ],
    ids=[
        "query-60k",
        "value-7k",
        "in-list-1000",
        "in-list-8000",
        "columns-repeated",
        "number-2000-digits",
        "number-exponent",
        "datetime-7k",
        "datetime-invalid",
        "order-by-7k",
        "limit-7k",
    ],
)
def test_huge_export_filters(
    server: LiveServer, client: httpx.Client, query: dict[str, str]
) -> None:
    if not _has_exports(server):
        pytest.skip("the exports API is not part of the app yet")
    response = client.get("/api/v1/exports/files.csv", params=query)
    assert_error(response, 400, "invalid_request")


# Found by the fuzzer (tests/test_fuzz.py)


def test_sha256_after_the_file_is_refused(server: LiveServer, client: httpx.Client) -> None:
    """Checked against nothing, a trailing sha256 would only look like an integrity check."""
    image = make_image("image/png")
    trailing = (b'Content-Disposition: form-data; name="sha256"', b"0" * 64)
    with nothing_stored(server):
        for path in ("/api/v1/files", "/api/v1/files/batch"):
            response = post_form(
                client, multipart([file_part(b"a.png", image), trailing]), path=path
            )
            assert_error(response, 400, "invalid_request")
        empty = (b'Content-Disposition: form-data; name="sha256"', b"")
        assert_error(post_form(client, multipart([empty, file_part()])), 400, "invalid_request")


def test_each_sha256_field_describes_the_next_file(client: httpx.Client) -> None:
    first, second = make_image("image/png"), make_image("image/gif")

    def digest(data: bytes) -> tuple[bytes, bytes]:
        headers = b'Content-Disposition: form-data; name="sha256"'
        return headers, hashlib.sha256(data).hexdigest().encode()

    parts = [digest(first), file_part(b"a.png", first), file_part(b"b.gif", second)]
    response = post_form(client, multipart(parts), path="/api/v1/files/batch")
    assert response.status_code == 201, response.text
    parts = [digest(first), file_part(b"a.png", first), digest(first), file_part(b"b.gif", second)]
    response = post_form(client, multipart(parts), path="/api/v1/files/batch")
    error = assert_error(response, 422, "checksum_mismatch")
    assert error["details"]["index"] == 1


@pytest.mark.parametrize("value", ["0.5", "1700000000", "tomorrow"])
def test_timestamps_are_iso_8601_text(client: httpx.Client, value: str) -> None:
    response = client.get("/api/v1/files", params={"created_before": value})
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/v1/files", "GET, HEAD, POST"),
        ("/api/v1/files/batch", "POST"),
        ("/api/v1/files/abc", "DELETE, GET, HEAD"),
        ("/healthz", "GET, HEAD"),
    ],
)
def test_allow_names_every_method_of_the_resource(
    client: httpx.Client, path: str, allowed: str
) -> None:
    response = client.request("PATCH", path)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allowed


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_nul_bytes_in_text_values(
    make_server: ServerFactory, request: pytest.FixtureRequest, backend: str
) -> None:
    """PostgreSQL refuses NUL in text: such values are the client's error, never a 500."""
    url = "" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    server = make_server(database_url=url)
    with httpx.Client(base_url=server.url) as client:
        for method, path in (
            ("GET", "/api/v1/files?content_type=image%2Fpng%00"),
            ("GET", "/api/v1/files?cursor=a%00b"),
            ("GET", "/api/v1/files/a%00b"),
            ("DELETE", "/api/v1/files/a%00b"),
            ("POST", "/api/v1/files/a%00b/signed-url"),
            ("GET", "/files/a%00b"),
            ("GET", "/api/v1/exports/files.csv?content_type=a%00b"),
            ("GET", "/api/v1/exports/files.csv?filename__in=a,%00"),
        ):
            response = client.request(method, path)
            assert response.status_code in (400, 404), (path, response.text)
            assert response.json()["error"]["code"] != "internal_error"


# Huge conditional and range headers


def _huge_header_request(path: str, etag: str, case: str) -> bytes:
    """A GET of ``path`` whose headers are a few megabytes, without the final blank line."""
    head = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
    if case == "range members":
        return head + b"Range: bytes=" + b"0-0," * 1_000_000 + b"\r\n"
    if case == "range lines":
        return head + b"Range: bytes=0-0\r\n" + b"Range: 1-1\r\n" * 100_000
    # Our own tag last, past the cap: a list that long matches nothing (200, not 304).
    assert case == "if-none-match tags"
    return head + b"If-None-Match: " + b'"x", ' * 1_000_000 + etag.encode() + b"\r\n"


@pytest.mark.parametrize("case", ["range members", "range lines", "if-none-match tags"])
def test_huge_headers_never_hold_the_event_loop(client: httpx.Client, case: str) -> None:
    """/healthz is answered from another connection while a multi-megabyte header
    arrives, and right after it is complete, while its answer is still unread.

    The header goes out in four pieces with a /healthz in between (event by
    event, no sleeps); the healthz client's timeout is a liveness bound only,
    far above what linear parsing costs and far below what the quadratic
    parsing held the loop for.
    """
    image = make_image("image/png", (64, 64), noise=True)
    stored = client.post("/api/v1/files?filename=big.png", content=image)
    assert stored.status_code == 201, stored.text
    path = "/files/" + stored.json()["id"]
    request = _huge_header_request(path, '"' + stored.json()["sha256"] + '"', case)
    assert len(request) > 1_000_000
    with (
        httpx.Client(base_url=str(client.base_url), timeout=10) as probe,
        socket.create_connection(("127.0.0.1", client.base_url.port or 80)) as sock,
    ):
        step = len(request) // 4 + 1
        for start in range(0, len(request), step):
            sock.sendall(request[start : start + step])
            assert probe.get("/healthz").status_code == 200
        sock.sendall(b"\r\n")  # the header is complete: the server parses it now
        for _ in range(3):
            assert probe.get("/healthz").status_code == 200
        answer = read_response(sock, timeout=30)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", answer[:300]
    assert rest.endswith(image)  # the whole file: past every cap, nothing partial


def test_the_trailing_slash_redirect_names_no_host(server: LiveServer) -> None:
    """Without FILESVC_TRUSTED_HOSTS any Host is accepted: it must not reach Location."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /api/v1/files/?limit=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        answer = read_response(sock)
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert head.startswith("http/1.1 307"), head
    assert "evil.example" not in head
    assert "\r\nlocation: /api/v1/files?limit=1\r\n" in head + "\r\n", head
