"""Uploads over real HTTP: formats, refusals, limits, batches, and what stays on disk."""

from __future__ import annotations

import base64
import hashlib
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.images import EXTENSIONS, FORMATS, make_image, png_of_size
from tests.servers import LiveServer, read_response_head
from tests.waiting import eventually

MiB = 1024 * 1024


def upload(client: httpx.Client, data: bytes, name: str = "f.bin", **fields: str) -> httpx.Response:
    return client.post(
        "/api/v1/files", files={"file": (name, data, "application/octet-stream")}, data=fields
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


def assert_nothing_stored(server: LiveServer) -> None:
    assert server.row_count() == 0
    assert server.stored_objects() == []


@pytest.mark.parametrize("content_type", sorted(FORMATS))
def test_every_allowed_format_uploads_with_its_facts(
    server: LiveServer, client: httpx.Client, content_type: str
) -> None:
    data = make_image(content_type, size=(123, 45))
    name = f"photo.{EXTENSIONS[content_type]}"
    # The client's header lies; the bytes decide.
    response = client.post("/api/v1/files", files={"file": (name, data, "text/plain")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["content_type"] == content_type
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)
    assert (body["width"], body["height"]) == (123, 45)
    assert body["filename"] == name
    assert body["visibility"] == "public"
    assert body["created_at"].endswith("Z")
    assert body["url"] == f"/files/{body['id']}/{name}"
    assert body["id"][0] not in "-=+@"
    assert response.headers["location"] == f"/api/v1/files/{body['id']}"
    assert client.get(f"/api/v1/files/{body['id']}").json() == body
    assert client.get("/api/v1/files").json()["items"] == [body]
    [stored] = server.stored_objects()
    assert server.read_stored(stored) == data
    assert name not in stored


def test_large_image_streams_through_several_chunks(
    server: LiveServer, client: httpx.Client
) -> None:
    data = make_image("image/png", size=(1200, 1000), noise=True)
    assert len(data) > 3 * MiB
    response = upload(client, data, "noise.png")
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert response.json()["width"] == 1200


def test_raw_upload_with_name_visibility_and_digest(
    server: LiveServer, client: httpx.Client
) -> None:
    data = make_image("image/jpeg", size=(40, 30))
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    response = client.post(
        "/api/v1/files",
        params={"filename": "raw photo.jpg", "visibility": "private"},
        content=data,
        headers={"Content-Type": "image/jpeg", "Repr-Digest": f"sha-256=:{digest}:"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["filename"], body["visibility"], body["content_type"]) == (
        "raw photo.jpg",
        "private",
        "image/jpeg",
    )
    assert body["url"].endswith("/raw%20photo.jpg")


def test_raw_upload_checksum_mismatch_keeps_nothing(
    server: LiveServer, client: httpx.Client
) -> None:
    data = make_image("image/png")
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    response = client.post(
        "/api/v1/files", content=data, headers={"Repr-Digest": f"sha-256=:{wrong}:"}
    )
    body = assert_error(response, 422, "checksum_mismatch")
    assert body["error"]["details"]["received"] == hashlib.sha256(data).hexdigest()
    assert_nothing_stored(server)


def test_form_checksum_match_and_mismatch(server: LiveServer, client: httpx.Client) -> None:
    data = make_image("image/gif")
    good = upload(client, data, "a.gif", sha256=hashlib.sha256(data).hexdigest().upper())
    assert good.status_code == 201, good.text
    bad = upload(client, data, "a.gif", sha256="0" * 64)
    assert_error(bad, 422, "checksum_mismatch")
    assert server.row_count() == 1
    assert len(server.stored_objects()) == 1


def test_malformed_checksum_field_is_400(server: LiveServer, client: httpx.Client) -> None:
    assert_error(upload(client, make_image(), "a.png", sha256="xyz"), 400, "invalid_request")
    assert_nothing_stored(server)


def test_private_visibility_from_form(client: httpx.Client) -> None:
    response = upload(client, make_image(), "p.png", visibility="private")
    assert response.json()["visibility"] == "private"


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"just some text, no magic at all", "notes.png"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", "x.svg"),
        (b"%PDF-1.7\n" + b"0" * 100, "doc.pdf"),
        (b"", "empty.png"),
        (b"\x89PNG", "short.png"),
    ],
    ids=["text", "svg", "pdf-not-allowed-by-default", "empty", "shorter-than-magic"],
)
def test_type_not_allowed_is_415_and_keeps_nothing(
    server: LiveServer, client: httpx.Client, data: bytes, name: str
) -> None:
    assert_error(upload(client, data, name), 415, "unsupported_media_type")
    assert_nothing_stored(server)


def test_operator_may_allow_pdf(make_server: ServerFactory) -> None:
    server = make_server(allowed_types="image/png,application/pdf")
    data = b"%PDF-1.7\n" + bytes(range(256)) * 8192
    with httpx.Client(base_url=server.url) as client:
        response = upload(client, data, "doc.pdf")
    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == "application/pdf"
    assert response.json()["width"] is None


@pytest.mark.parametrize("content_type", sorted(FORMATS))
def test_truncated_image_is_422(
    server: LiveServer, client: httpx.Client, content_type: str
) -> None:
    data = make_image(content_type, size=(300, 200), noise=True)
    truncated = data[: len(data) * 2 // 3]
    assert_error(upload(client, truncated, "cut"), 422, "invalid_content")
    assert_nothing_stored(server)


def test_corrupt_image_is_422(server: LiveServer, client: httpx.Client) -> None:
    data = bytearray(make_image("image/png", size=(200, 200), noise=True))
    data[200:400] = b"\x00" * 200  # breaks the compressed stream and its CRC
    assert_error(upload(client, bytes(data), "bad.png"), 422, "invalid_content")
    assert_nothing_stored(server)


def test_pixel_limit_is_422(make_server: ServerFactory) -> None:
    server = make_server(max_image_pixels=100 * 100)
    with httpx.Client(base_url=server.url) as client:
        ok = upload(client, make_image(size=(100, 100)), "ok.png")
        assert ok.status_code == 201
        body = assert_error(
            upload(client, make_image(size=(101, 100)), "big.png"), 422, "invalid_content"
        )
    assert "pixels" in body["error"]["message"]
    assert server.row_count() == 1


def test_over_limit_is_413_multipart_and_raw(make_server: ServerFactory) -> None:
    server = make_server(max_upload_bytes=MiB)
    data = make_image("image/png", size=(1000, 1000), noise=True)
    assert len(data) > MiB
    with httpx.Client(base_url=server.url) as client:
        assert_error(upload(client, data, "big.png"), 413, "payload_too_large")
        assert_error(client.post("/api/v1/files", content=data), 413, "payload_too_large")
    assert_nothing_stored(server)
    # Exactly at the limit is fine: the limit counts file bytes, not multipart framing.
    at_limit = png_of_size(MiB)
    with httpx.Client(base_url=server.url) as client:
        multipart = upload(client, at_limit, "at-limit.png")
        assert multipart.status_code == 201, multipart.text
        raw = client.post("/api/v1/files?filename=at-limit.png", content=at_limit)
        assert raw.status_code == 201, raw.text
        assert_error(upload(client, png_of_size(MiB + 1), "over.png"), 413, "payload_too_large")
    assert multipart.json()["size"] == raw.json()["size"] == MiB
    assert server.row_count() == 2


def test_file_exactly_at_the_limit_is_accepted(make_server: ServerFactory) -> None:
    data = b"%PDF-1.4\n" + b"x" * (64 * 1024 - 9)
    server = make_server(max_upload_bytes=len(data), allowed_types="application/pdf")
    with httpx.Client(base_url=server.url) as client:
        assert upload(client, data, "a.pdf").status_code == 201
        assert_error(upload(client, data + b"x", "b.pdf"), 413, "payload_too_large")


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "raw"])
def test_413_arrives_while_the_client_is_still_sending(
    make_server: ServerFactory, multipart: bool
) -> None:
    """A 50 MiB body against a 1 MiB limit: the answer comes long before the body ends."""
    server = make_server(max_upload_bytes=MiB)
    total = 50 * MiB
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.pdf"\r\n'
        "Content-Type: application/pdf\r\n\r\n"
    ).encode()
    content_type = f"multipart/form-data; boundary={boundary}" if multipart else "image/png"
    png = make_image("image/png")
    sock = socket.create_connection(("127.0.0.1", server.port))
    # Chunked, so that Content-Length cannot give the size away: the count must.
    sock.sendall(
        (
            f"POST /api/v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
    )
    sent = 0
    body_start = (head if multipart else b"") + png
    chunk = b"\0" * 64 * 1024
    response = b""
    try:
        first = body_start
        sock.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        sent += len(first)
        sock.setblocking(False)
        while sent < total:
            try:
                response += sock.recv(65536)
            except BlockingIOError:
                pass
            if response:
                break
            try:
                sock.setblocking(True)
                sock.settimeout(5)
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.setblocking(True)
        if b"\r\n\r\n" not in response:
            response += read_response_head(sock, timeout=10)
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < 8 * MiB, f"the server let the client send {sent} bytes first"
    eventually(lambda: not server.stored_objects(), "the refused upload's bytes are removed")
    assert_nothing_stored(server)


def test_content_length_over_limit_is_refused_up_front(make_server: ServerFactory) -> None:
    server = make_server(max_upload_bytes=MiB)
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(
            b"POST /api/v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        response = read_response_head(sock, timeout=10)
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc', "b"),
        (b"garbage without any boundary", "b"),
        (b"--b--\r\n", ""),
        (b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n', "b"),
    ],
    ids=["no-final-boundary", "garbage", "no-boundary-param", "no-file-part"],
)
def test_broken_multipart_is_400(
    server: LiveServer, client: httpx.Client, body: bytes, content_type: str
) -> None:
    header = "multipart/form-data" + (f"; boundary={content_type}" if content_type else "")
    response = client.post("/api/v1/files", content=body, headers={"Content-Type": header})
    assert_error(response, 400, "invalid_request")
    assert_nothing_stored(server)


def test_second_file_part_is_refused_and_first_removed(
    server: LiveServer, client: httpx.Client
) -> None:
    files = [
        ("file", ("a.png", make_image(), "image/png")),
        ("file", ("b.png", make_image(), "image/png")),
    ]
    assert_error(client.post("/api/v1/files", files=files), 400, "invalid_request")
    assert_nothing_stored(server)


def test_bad_visibility_is_400(server: LiveServer, client: httpx.Client) -> None:
    assert_error(upload(client, make_image(), "a.png", visibility="secret"), 400, "invalid_request")
    raw = client.post("/api/v1/files", params={"visibility": "secret"}, content=make_image())
    assert_error(raw, 400, "invalid_request")
    assert_nothing_stored(server)


def test_batch_stores_all(server: LiveServer, client: httpx.Client) -> None:
    images = [make_image(t) for t in sorted(FORMATS)]
    files = [("file", (f"{i}.img", data, "image/png")) for i, data in enumerate(images)]
    response = client.post("/api/v1/files/batch", files=files, data={"visibility": "private"})
    assert response.status_code == 201, response.text
    stored = response.json()["files"]
    assert [f["sha256"] for f in stored] == [hashlib.sha256(d).hexdigest() for d in images]
    assert {f["visibility"] for f in stored} == {"private"}
    assert server.row_count() == len(images)
    assert len(server.stored_objects()) == len(images)


def test_batch_is_all_or_nothing(server: LiveServer, client: httpx.Client) -> None:
    files = [
        ("file", ("one.png", make_image(), "image/png")),
        ("file", ("two.jpg", make_image("image/jpeg"), "image/jpeg")),
        ("file", ("evil.png", b"MZ\x90\x00 not an image", "image/png")),
        ("file", ("four.png", make_image(), "image/png")),
    ]
    response = client.post("/api/v1/files/batch", files=files)
    body = assert_error(response, 415, "unsupported_media_type")
    assert body["error"]["details"] == {"index": 2, "filename": "evil.png"}
    assert_nothing_stored(server)


def test_batch_file_limit(make_server: ServerFactory) -> None:
    server = make_server(max_batch_files=2)
    files = [("file", (f"{i}.png", make_image(), "image/png")) for i in range(3)]
    with httpx.Client(base_url=server.url) as client:
        assert_error(client.post("/api/v1/files/batch", files=files), 400, "invalid_request")
    assert_nothing_stored(server)


def test_pagination_returns_each_file_once_newest_first(client: httpx.Client) -> None:
    ids = []
    for i in range(7):
        kind = "image/png" if i % 2 else "image/gif"
        ids.append(upload(client, make_image(kind, size=(10 + i, 10)), f"{i}.img").json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/files", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    pngs = client.get("/api/v1/files", params={"content_type": "image/png"}).json()["items"]
    assert [p["id"] for p in pngs] == [ids[5], ids[3], ids[1]]


def test_created_filters(client: httpx.Client) -> None:
    first = upload(client, make_image(), "a.png").json()
    # The second upload must be stamped later than the first, whatever the clock's step.
    stamp = datetime.fromisoformat(first["created_at"])
    eventually(lambda: datetime.now(UTC) > stamp, "the clock passes the first upload's time")
    second = upload(client, make_image(), "b.png").json()
    after = client.get("/api/v1/files", params={"created_after": first["created_at"]}).json()
    assert [i["id"] for i in after["items"]] == [second["id"]]
    before = client.get("/api/v1/files", params={"created_before": second["created_at"]}).json()
    assert [i["id"] for i in before["items"]] == [first["id"]]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"created_after": "yesterday"},
        {"created_after": "2026-01-01T00:00:00"},
        # Valid, but before year 1 or after 9999 once in UTC.
        {"created_after": "0001-01-01T00:00:00+14:00"},
        {"created_before": "9999-12-31T23:59:59-14:00"},
        {"cursor": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzE0OjAwIiwgImEiXQ"},
    ],
)
def test_bad_list_query_is_400(client: httpx.Client, params: dict[str, str]) -> None:
    assert_error(client.get("/api/v1/files", params=params), 400, "invalid_request")


def test_delete_removes_row_and_bytes(server: LiveServer, client: httpx.Client) -> None:
    file_id = upload(client, make_image(), "a.png").json()["id"]
    assert len(server.stored_objects()) == 1
    assert client.delete(f"/api/v1/files/{file_id}").status_code == 204
    assert_nothing_stored(server)
    assert_error(client.get(f"/api/v1/files/{file_id}"), 404, "file_not_found")
    assert_error(client.delete(f"/api/v1/files/{file_id}"), 404, "file_not_found")


@pytest.mark.parametrize(
    ("raw_name", "expected"),
    [
        ("../../x.png", "x.png"),
        ("..\\..\\windows\\x.png", "x.png"),
        ("a\x00b\x01c\x7f.png", "abc.png"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("photo 😀 ünïcødé.png", "photo 😀 ünïcødé.png"),
        ("/", "file"),
        ("....", "file"),
    ],
)
def test_hostile_file_names_are_sanitised(
    server: LiveServer, client: httpx.Client, raw_name: str, expected: str
) -> None:
    # Built by hand: httpx would percent-encode control characters itself.
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="'
        + raw_name.replace("\\", "\\\\").encode()
        + b'"\r\nContent-Type: image/png\r\n\r\n'
        + make_image()
        + b"\r\n--xyz--\r\n"
    )
    response = client.post(
        "/api/v1/files",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == expected
    [key] = server.stored_objects()
    assert expected not in key and ".." not in key and not key.startswith("/")


def test_overlong_file_name_keeps_its_extension(client: httpx.Client) -> None:
    response = upload(client, make_image(), "n" * 1000 + ".png")
    name = response.json()["filename"]
    assert len(name) == 255 and name.endswith(".png")


def test_concurrent_uploads_all_succeed(server: LiveServer) -> None:
    images = [make_image("image/png", size=(20 + i, 20)) for i in range(24)]

    def send(data: bytes) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            return upload(client, data, "c.png")

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(send, images))
    assert [r.status_code for r in responses] == [201] * len(images)
    assert {r.json()["sha256"] for r in responses} == {
        hashlib.sha256(d).hexdigest() for d in images
    }
    assert server.row_count() == len(images)


def test_unknown_route_and_wrong_method_are_json(client: httpx.Client) -> None:
    assert_error(client.get("/api/v1/nothing"), 404, "not_found")
    assert_error(client.put("/api/v1/files"), 405, "method_not_allowed")


def test_early_refusal_names_the_file_limit(make_server: ServerFactory) -> None:
    server = make_server(max_upload_bytes=200_000)
    with httpx.Client(base_url=server.url) as client:
        response = upload(client, b"\x89PNG" + b"\0" * 3_000_000, "big.png")
    body = assert_error(response, 413, "payload_too_large")
    assert "200000 bytes" in body["error"]["message"]


def test_page_assets_are_revalidated(client: httpx.Client) -> None:
    assert client.get("/").headers["cache-control"] == "no-cache"
    assert client.get("/static/app.js").headers["cache-control"] == "no-cache"
