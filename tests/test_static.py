"""Static URLs over HTTP: a live server, a known file, and what clients and caches see.

Everything goes through the fixtures (``make_server``, ``client``), so the
suite runs against every database and storage backend they offer.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from filesvc.config import Settings
from filesvc.db import create_engine, create_session_factory
from filesvc.serving import MAX_RANGES
from filesvc.signing import signature
from filesvc.storage import create_storage, open_writer
from tests.conftest import ServerFactory
from tests.images import make_image
from tests.processes import ServeProcess
from tests.servers import LiveServer

MiB = 1024 * 1024
ALLOWED = ["image/png", "image/jpeg", "application/pdf"]
SIGNING_KEY = "static-url-test-key"
#: A non-image file of known bytes: every byte value, in a pattern no range can fake.
BODY = b"%PDF-1.7\n" + bytes((i * 7 + i // 256) % 256 for i in range(1991))
SIZE = len(BODY)  # 2000
SHA256 = hashlib.sha256(BODY).hexdigest()
ETAG = f'"{SHA256}"'
DIGEST = "sha-256=:" + base64.b64encode(hashlib.sha256(BODY).digest()).decode() + ":"


def upload(
    client: httpx.Client, data: bytes, name: str = "doc.pdf", visibility: str = "public"
) -> dict[str, Any]:
    response = client.post(
        "/api/v1/files", params={"filename": name, "visibility": visibility}, content=data
    )
    assert response.status_code == 201, response.text
    out: dict[str, Any] = response.json()
    return out


@pytest.fixture
def server(make_server: ServerFactory) -> LiveServer:
    return make_server(allowed_types=ALLOWED, signing_key=SIGNING_KEY)


@pytest.fixture
def stored(client: httpx.Client) -> dict[str, Any]:
    return upload(client, BODY)


def signed_query(file_id: str, expires: int) -> dict[str, str]:
    return {
        "expires": str(expires),
        "signature": signature(SIGNING_KEY.encode(), file_id, expires),
    }


# --- the table: request headers → status, Content-Range, Content-Length, bytes ---------


@dataclass(frozen=True)
class Case:
    name: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200
    #: Served byte ranges [start, stop) for 206; None means the whole file (200).
    ranges: list[tuple[int, int]] | None = None
    error: str | None = None
    method: str = "GET"


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def cases(last_modified: str) -> list[Case]:
    moment = email.utils.parsedate_to_datetime(last_modified).timestamp()
    earlier, later = http_date(moment - 1), http_date(moment + 1)
    many = ",".join(f"{i}-{i}" for i in range(MAX_RANGES + 1))
    return [
        Case("plain GET"),
        Case("first byte", [("Range", "bytes=0-0")], 206, [(0, 1)]),
        Case("first hundred", [("Range", "bytes=0-99")], 206, [(0, 100)]),
        Case("from 100 to the end", [("Range", "bytes=100-")], 206, [(100, SIZE)]),
        Case("last hundred", [("Range", "bytes=-100")], 206, [(SIZE - 100, SIZE)]),
        Case("suffix longer than the file", [("Range", "bytes=-5000")], 206, [(0, SIZE)]),
        Case("end clipped", [("Range", "bytes=1990-5000")], 206, [(1990, SIZE)]),
        Case("last byte", [("Range", f"bytes={SIZE - 1}-")], 206, [(SIZE - 1, SIZE)]),
        Case("unit case-insensitive", [("Range", "BYTES=5-9")], 206, [(5, 10)]),
        Case("at the end", [("Range", f"bytes={SIZE}-")], 416, error="range_not_satisfiable"),
        Case("past the end", [("Range", "bytes=5000-6000")], 416, error="range_not_satisfiable"),
        Case("empty suffix", [("Range", "bytes=-0")], 416, error="range_not_satisfiable"),
        Case("reversed: invalid, ignored", [("Range", "bytes=5-2")]),
        Case("garbage: ignored", [("Range", "bytes=abc")]),
        Case("other unit: ignored", [("Range", "items=0-1")]),
        Case("empty set: ignored", [("Range", "bytes=")]),
        Case("spaces inside: ignored", [("Range", "bytes=0 - 1")]),
        Case("two Range lines: ignored", [("Range", "bytes=0-1"), ("Range", "bytes=2-3")]),
        Case("two ranges", [("Range", "bytes=0-1,10-11")], 206, [(0, 2), (10, 12)]),
        Case("two ranges, order kept", [("Range", "bytes=10-11,0-1")], 206, [(10, 12), (0, 2)]),
        Case("empty members", [("Range", "bytes=0-1,,-3")], 206, [(0, 2), (SIZE - 3, SIZE)]),
        Case("one of two satisfiable", [("Range", "bytes=0-1,5000-6000")], 206, [(0, 2)]),
        Case("overlaps larger than the file", [("Range", "bytes=0-,0-")]),
        Case(f"more than {MAX_RANGES} ranges", [("Range", f"bytes={many}")]),
        Case("If-None-Match equal", [("If-None-Match", ETAG)], 304),
        Case("If-None-Match weak", [("If-None-Match", f"W/{ETAG}")], 304),
        Case("If-None-Match in a list", [("If-None-Match", f'"a", {ETAG}')], 304),
        Case("If-None-Match star", [("If-None-Match", "*")], 304),
        Case("If-None-Match other", [("If-None-Match", '"other"')]),
        Case("If-Modified-Since equal", [("If-Modified-Since", last_modified)], 304),
        Case("If-Modified-Since later", [("If-Modified-Since", later)], 304),
        Case("If-Modified-Since earlier", [("If-Modified-Since", earlier)]),
        Case("If-Modified-Since garbage", [("If-Modified-Since", "yesterday")]),
        Case(
            "If-None-Match wins over If-Modified-Since",
            [("If-None-Match", '"other"'), ("If-Modified-Since", later)],
        ),
        Case("If-Match equal", [("If-Match", ETAG)]),
        Case("If-Match star", [("If-Match", "*")]),
        Case("If-Match other", [("If-Match", '"other"')], 412, error="precondition_failed"),
        Case("If-Match weak", [("If-Match", f"W/{ETAG}")], 412, error="precondition_failed"),
        Case("If-Unmodified-Since equal", [("If-Unmodified-Since", last_modified)]),
        Case(
            "If-Unmodified-Since earlier",
            [("If-Unmodified-Since", earlier)],
            412,
            error="precondition_failed",
        ),
        Case(
            "412 before 304",
            [("If-Match", '"other"'), ("If-None-Match", ETAG)],
            412,
            error="precondition_failed",
        ),
        Case("If-Range ETag", [("Range", "bytes=0-9"), ("If-Range", ETAG)], 206, [(0, 10)]),
        Case("If-Range other ETag", [("Range", "bytes=0-9"), ("If-Range", '"other"')]),
        Case("If-Range weak ETag", [("Range", "bytes=0-9"), ("If-Range", f"W/{ETAG}")]),
        Case(
            "If-Range date",
            [("Range", "bytes=0-9"), ("If-Range", last_modified)],
            206,
            [(0, 10)],
        ),
        Case("If-Range other date", [("Range", "bytes=0-9"), ("If-Range", earlier)]),
        Case("If-Range false skips 416", [("Range", "bytes=5000-"), ("If-Range", '"other"')]),
        Case("Range under a 304", [("Range", "bytes=0-9"), ("If-None-Match", ETAG)], 304),
        Case(
            "Range under a 412",
            [("Range", "bytes=0-9"), ("If-Match", '"other"')],
            412,
            error="precondition_failed",
        ),
        Case("HEAD ignores Range", [("Range", "bytes=0-9")], method="HEAD"),
        Case("HEAD 304", [("If-None-Match", ETAG)], 304, method="HEAD"),
    ]


def expected_multipart(boundary: str, ranges: list[tuple[int, int]]) -> bytes:
    parts = [
        f"\r\n--{boundary}\r\nContent-Type: application/pdf\r\n"
        f"Content-Range: bytes {start}-{stop - 1}/{SIZE}\r\n\r\n".encode()
        + BODY[start:stop]
        for start, stop in ranges
    ]
    return b"".join(parts) + f"\r\n--{boundary}--\r\n".encode()


def check(case: Case, response: httpx.Response) -> None:
    headers = response.headers
    assert response.status_code == case.status, response.text
    head = case.method == "HEAD"
    if case.error:
        assert response.json()["error"]["code"] == case.error
        assert "etag" not in headers
        if case.status == 416:
            assert headers["content-range"] == f"bytes */{SIZE}"
        return
    assert headers["etag"] == ETAG
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "last-modified" in headers
    if case.status == 304:
        assert response.content == b""
        assert "content-length" not in headers and "content-range" not in headers
        return
    assert headers["accept-ranges"] == "bytes"
    assert headers["repr-digest"] == DIGEST  # the whole file's, on 206 too
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "sandbox"
    assert headers["content-disposition"] == 'attachment; filename="doc.pdf"'
    if case.ranges is None:
        assert "content-range" not in headers
        assert headers["content-type"] == "application/pdf"
        assert headers["content-length"] == str(SIZE)
        assert response.content == (b"" if head else BODY)
    elif len(case.ranges) == 1:
        [(start, stop)] = case.ranges
        assert headers["content-range"] == f"bytes {start}-{stop - 1}/{SIZE}"
        assert headers["content-type"] == "application/pdf"
        assert headers["content-length"] == str(stop - start)
        assert response.content == BODY[start:stop]
    else:
        assert "content-range" not in headers
        match = re.fullmatch(r"multipart/byteranges; boundary=(\w+)", headers["content-type"])
        assert match is not None, headers["content-type"]
        body = expected_multipart(match.group(1), case.ranges)
        assert headers["content-length"] == str(len(body))
        assert response.content == body


def test_request_header_table(
    client: httpx.Client, stored: dict[str, Any], subtests: pytest.Subtests
) -> None:
    last_modified = client.head(stored["url"]).headers["last-modified"]
    table = cases(last_modified)
    assert len(table) >= 30
    for case in table:
        with subtests.test(msg=case.name):
            check(case, client.request(case.method, stored["url"], headers=case.headers))


def test_every_static_url_form_serves_the_file(
    client: httpx.Client, stored: dict[str, Any]
) -> None:
    file_id = stored["id"]
    assert stored["url"] == f"/files/{file_id}/doc.pdf"
    for path in (f"/files/{file_id}", f"/files/{file_id}/", f"/files/{file_id}/any/other.name"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.content == BODY


def without_volatile(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in {"date", "x-request-id"}}


def test_head_equals_get_without_body(client: httpx.Client, stored: dict[str, Any]) -> None:
    private = upload(client, BODY, "secret.pdf", visibility="private")
    signed = signed_query(private["id"], int(time.time()) + 60)
    for url, params, headers in [
        (stored["url"], {}, {}),
        (stored["url"], {}, {"If-None-Match": ETAG}),
        (stored["url"], {}, {"If-Match": '"x"'}),
        (private["url"], signed, {}),
        (private["url"], {}, {}),
        ("/files/unknownunknownunknown", {}, {}),
    ]:
        get = client.get(url, params=params, headers=headers)
        head = client.head(url, params=params, headers=headers)
        assert head.status_code == get.status_code
        assert head.content == b""
        assert without_volatile(head.headers) == without_volatile(get.headers)


# --- private files and signed URLs -----------------------------------------------


def test_private_file_needs_a_signature(client: httpx.Client) -> None:
    private = upload(client, BODY, "secret.pdf", visibility="private")
    for method in ("GET", "HEAD"):
        response = client.request(method, private["url"])
        assert response.status_code == 403
        if method == "GET":
            assert response.json()["error"]["code"] == "signature_required"
        assert "etag" not in response.headers


def test_signed_url_serves_a_private_file_privately(client: httpx.Client) -> None:
    private = upload(client, BODY, "secret.pdf", visibility="private")
    before = time.time()
    answer = client.post(f"/api/v1/files/{private['id']}/signed-url", params={"expires_in": 120})
    assert answer.status_code == 200, answer.text
    signed = answer.json()
    expires_at = datetime.fromisoformat(signed["expires_at"])
    assert before + 119 <= expires_at.timestamp() <= time.time() + 121
    assert signed["url"].startswith(private["url"] + "?expires=")
    response = client.get(signed["url"])
    assert response.status_code == 200
    assert response.content == BODY
    assert response.headers["cache-control"] == "private, no-store"
    ranged = client.get(signed["url"], headers={"Range": "bytes=0-4"})
    assert (ranged.status_code, ranged.content) == (206, b"%PDF-")
    # The name in the path is not signed: any name works.
    query = signed["url"].split("?", 1)[1]
    assert client.get(f"/files/{private['id']}?{query}").status_code == 200


def test_signed_url_works_for_a_public_file(client: httpx.Client, stored: dict[str, Any]) -> None:
    signed = client.post(f"/api/v1/files/{stored['id']}/signed-url").json()
    response = client.get(signed["url"])
    assert response.status_code == 200 and response.content == BODY
    # A signed URL expires, so no shared cache may keep it a year.
    assert response.headers["cache-control"] == "private, no-store"


def test_bad_signatures_are_refused(client: httpx.Client, stored: dict[str, Any]) -> None:
    private = upload(client, BODY, "secret.pdf", visibility="private")
    file_id = private["id"]
    future = int(time.time()) + 600
    good = signed_query(file_id, future)
    last = "0" if good["signature"][-1] != "0" else "1"
    tampered_sig = {**good, "signature": good["signature"][:-1] + last}
    bad = {
        "tampered signature": tampered_sig,
        "tampered expiry": {**good, "expires": str(future + 1)},
        "another file's signature": {
            **good,
            "signature": signed_query(stored["id"], future)["signature"],
        },
        "expired": signed_query(file_id, int(time.time()) - 1),
        "no signature": {"expires": str(future)},
        "no expiry": {"signature": good["signature"]},
        "not a number": {**good, "expires": "soon"},
        "wrong key": {
            "expires": str(future),
            "signature": signature(b"another key", file_id, future),
        },
        "non-ASCII signature": {**good, "signature": "é" * 64},
    }
    assert client.get(private["url"], params=good).status_code == 200
    for name, params in bad.items():
        response = client.get(private["url"], params=params)
        assert response.status_code == 403, name
        assert response.json()["error"]["code"] == "invalid_signature", name
    # A bad signature on a public file's URL is refused too: it claims to be signed.
    assert client.get(stored["url"], params=tampered_sig).status_code == 403


def test_expired_signed_url_says_so(client: httpx.Client) -> None:
    private = upload(client, BODY, "secret.pdf", visibility="private")
    response = client.get(private["url"], params=signed_query(private["id"], int(time.time()) - 5))
    assert response.status_code == 403
    assert "expired" in response.json()["error"]["message"]


@pytest.mark.parametrize("expires_in", ["0", "604801", "-5", "soon", "1.5"])
def test_signed_url_lifetime_bounds(
    client: httpx.Client, stored: dict[str, Any], expires_in: str
) -> None:
    response = client.post(
        f"/api/v1/files/{stored['id']}/signed-url", params={"expires_in": expires_in}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_signed_url_lifetime_default_and_maximum(
    client: httpx.Client, stored: dict[str, Any]
) -> None:
    url = f"/api/v1/files/{stored['id']}/signed-url"
    default = int(client.post(url).json()["url"].split("expires=")[1].split("&")[0])
    assert time.time() + 3599 <= default <= time.time() + 3601
    longest = client.post(url, params={"expires_in": 604800})
    assert longest.status_code == 200


def test_signed_url_of_an_unknown_file_is_404(client: httpx.Client) -> None:
    response = client.post("/api/v1/files/nosuchfilenosuchfilenosuch/signed-url")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_not_found"


def test_signed_url_is_absolute_with_a_public_base_url(make_server: ServerFactory) -> None:
    server = make_server(
        allowed_types=ALLOWED, public_base_url="https://files.example.com/", signing_key="k"
    )
    with httpx.Client(base_url=server.url) as client:
        stored = upload(client, BODY)
        signed = client.post(f"/api/v1/files/{stored['id']}/signed-url").json()
        assert signed["url"].startswith(f"https://files.example.com/files/{stored['id']}/doc.pdf?")
        path = signed["url"].removeprefix("https://files.example.com")
        assert client.get(path).content == BODY


# --- names, types, unknown ids ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "disposition"),
    [
        (
            "résumé 写真.pdf",
            'attachment; filename="resume __.pdf"; '
            "filename*=UTF-8''r%C3%A9sum%C3%A9%20%E5%86%99%E7%9C%9F.pdf",
        ),
        (
            'say "hi"; 100%.pdf',
            'attachment; filename="say _hi_; 100_.pdf"; '
            "filename*=UTF-8''say%20%22hi%22%3B%20100%25.pdf",
        ),
        ("plain name.pdf", 'attachment; filename="plain name.pdf"'),
    ],
)
def test_content_disposition_of_stored_names(
    client: httpx.Client, name: str, disposition: str
) -> None:
    stored = upload(client, BODY, name)
    assert stored["url"] == f"/files/{stored['id']}/{quote(name, safe='')}"
    response = client.get(stored["url"])
    assert response.headers["content-disposition"] == disposition


def test_control_characters_never_reach_a_header(client: httpx.Client) -> None:
    stored = upload(client, BODY, "a\r\nSet-Cookie: x=1\x00.pdf")
    response = client.get(stored["url"])
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert "\r" not in response.headers["content-disposition"]


def test_raster_images_are_inline(client: httpx.Client) -> None:
    for content_type, name in (("image/png", "a.png"), ("image/jpeg", "b.jpg")):
        data = make_image(content_type)
        stored = upload(client, data, name)
        response = client.get(stored["url"])
        assert response.headers["content-type"] == content_type
        assert response.headers["content-disposition"] == f'inline; filename="{name}"'
        assert response.content == data


@pytest.mark.parametrize(
    "path",
    [
        "/files/nosuchfilenosuchfilenosuch",
        "/files/nosuchfilenosuchfilenosuch/name.png",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/%2e%2e/%2e%2e/signing.key",
        "/files/" + "a" * 300,
        "/files/filesvc.db",
        "/files/ab%00cd",
    ],
)
def test_unknown_ids_are_404(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] in {"file_not_found", "not_found"}


def test_other_methods_are_405(client: httpx.Client, stored: dict[str, Any]) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = client.request(method, stored["url"])
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"


def test_a_deleted_file_is_gone_at_once(client: httpx.Client, stored: dict[str, Any]) -> None:
    assert client.get(stored["url"]).status_code == 200
    assert client.delete(f"/api/v1/files/{stored['id']}").status_code == 204
    assert client.get(stored["url"]).status_code == 404


@pytest.mark.parametrize(
    "database",
    [
        pytest.param("postgresql+asyncpg://postgres@127.0.0.1:1/down", id="postgres-down"),
        pytest.param("sqlite-unmigrated", id="sqlite-unmigrated"),
    ],
)
def test_a_database_that_cannot_answer_is_503(
    make_server: ServerFactory, tmp_path: Path, database: str
) -> None:
    if database == "sqlite-unmigrated":
        database = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    server = make_server(database_url=database, auto_migrate=False)
    with httpx.Client(base_url=server.url) as client:
        for method in ("GET", "HEAD"):
            response = client.request(method, "/files/abcdefghijklmnopqrstuvwxyz/a.png")
            assert response.status_code == 503
            assert response.headers["retry-after"]
        got = client.get("/files/abcdefghijklmnopqrstuvwxyz")
        assert got.json()["error"]["code"] == "database_unavailable"


# --- storage edge cases, through the service's own storage and database code -------


def put_object(settings: Settings, key: str, data: bytes) -> None:
    async def run() -> None:
        storage = create_storage(settings)
        try:
            async with open_writer(storage, key) as writer:
                if data:
                    await writer.write(data)
                await writer.commit()
        finally:
            await storage.aclose()

    asyncio.run(run())


def insert_row(settings: Settings, **values: Any) -> None:
    from filesvc import crud
    from filesvc.models import StoredFile

    async def run() -> None:
        engine = create_engine(settings)
        try:
            async with create_session_factory(engine)() as session:
                await crud.add_files(session, [StoredFile(**values)])
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_zero_length_file(server: LiveServer, client: httpx.Client) -> None:
    file_id = "emptyemptyemptyemptyempty1"
    key = f"00/0000/{file_id}"
    put_object(server.settings, key, b"")
    insert_row(
        server.settings,
        id=file_id,
        storage_key=key,
        filename="empty.pdf",
        content_type="application/pdf",
        size=0,
        sha256=hashlib.sha256(b"").hexdigest(),
        width=None,
        height=None,
        visibility="public",
        created_at=datetime.now(UTC),
    )
    url = f"/files/{file_id}/empty.pdf"
    whole = client.get(url)
    assert (whole.status_code, whole.content, whole.headers["content-length"]) == (200, b"", "0")
    assert whole.headers["repr-digest"] == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    first = client.get(url, headers={"Range": "bytes=0-"})
    assert first.status_code == 416 and first.headers["content-range"] == "bytes */0"
    suffix = client.get(url, headers={"Range": "bytes=-5"})
    assert (suffix.status_code, suffix.content) == (200, b"")
    assert client.head(url).headers["content-length"] == "0"


def test_a_stored_object_shorter_than_its_record_never_looks_complete(
    server: LiveServer, client: httpx.Client
) -> None:
    stored = upload(client, BODY)
    [(key,)] = server.query("SELECT storage_key FROM files WHERE id = :id", id=stored["id"])
    put_object(server.settings, key, BODY[:1000])  # the object changed behind the service
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(stored["url"])
    assert client.get("/healthz").status_code == 200  # and the server carries on


def test_bytes_deleted_behind_the_row_are_404(server: LiveServer, client: httpx.Client) -> None:
    stored = upload(client, BODY)
    [(key,)] = server.query("SELECT storage_key FROM files WHERE id = :id", id=stored["id"])

    async def delete() -> None:
        storage = create_storage(server.settings)
        try:
            await storage.delete(key)
        finally:
            await storage.aclose()

    asyncio.run(delete())
    response = client.get(stored["url"])
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_not_found"


# --- larger files: chunked streaming, concurrency, disconnects -------------------------


def big_body(size: int, seed: int = 7) -> bytes:
    return b"%PDF-1.7\n" + random.Random(seed).randbytes(size - 9)


def test_concurrent_range_reads_are_byte_exact(client: httpx.Client, server: LiveServer) -> None:
    data = big_body(3 * MiB + 12345)
    stored = upload(client, data, "big.pdf")
    url = server.url + stored["url"]
    failures: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=60) as http:
            for _ in range(12):
                start = rng.randrange(len(data))
                stop = min(len(data), start + rng.choice([1, 100, 70_000, 300_000, 2 * MiB]))
                response = http.get(url, headers={"Range": f"bytes={start}-{stop - 1}"})
                if response.status_code != 206 or response.content != data[start:stop]:
                    failures.append(f"{start}-{stop}: {response.status_code}")
                second = rng.randrange(len(data) - 10)
                response = http.get(
                    url, headers={"Range": f"bytes={start}-{stop - 1},{second}-{second + 9}"}
                )
                boundary = response.headers["content-type"].partition("boundary=")[2]
                pieces = [(start, stop), (second, second + 10)]
                expected = (
                    b"".join(
                        f"\r\n--{boundary}\r\nContent-Type: application/pdf\r\n"
                        f"Content-Range: bytes {a}-{b - 1}/{len(data)}\r\n\r\n".encode()
                        + data[a:b]
                        for a, b in pieces
                    )
                    + f"\r\n--{boundary}--\r\n".encode()
                )
                if response.status_code == 206 and response.content != expected:
                    failures.append(f"multipart {pieces}")

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    whole = client.get(stored["url"])
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    assert whole.content == data


def test_a_client_leaving_mid_download_leaves_the_server_well(
    client: httpx.Client, server: LiveServer
) -> None:
    data = big_body(8 * MiB)
    stored = upload(client, data, "big.pdf")
    for _ in range(5):
        with client.stream("GET", stored["url"]) as response:
            assert response.status_code == 200
            next(response.iter_raw(65536))
        # leaving the block closes the connection with most of the body unread
    assert client.get(stored["url"], headers={"Range": "bytes=-10"}).content == data[-10:]


def test_s3_redirect_after_the_signature_checks(make_server: ServerFactory) -> None:
    server = make_server(allowed_types=ALLOWED, signing_key=SIGNING_KEY, s3_redirect=True)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        public = upload(client, BODY)
        private = upload(client, BODY, "secret.pdf", visibility="private")
        assert client.get(private["url"]).status_code == 403
        bad = {"expires": str(int(time.time()) + 60), "signature": "0" * 64}
        assert client.get(private["url"], params=bad).status_code == 403
        assert client.get(public["url"], headers={"If-None-Match": ETAG}).status_code == 304
        signed = signed_query(private["id"], int(time.time()) + 60)
        for url, params, cache in (
            (public["url"], {}, "public, max-age=300"),
            (private["url"], signed, "private, no-store"),
        ):
            response = client.get(url, params=params)
            if server.settings.storage == "s3":
                assert response.status_code == 307
                assert response.headers["cache-control"] == cache
                location = response.headers["location"]
                assert location.startswith(server.settings.s3_endpoint_url or "")
                assert httpx.get(location).content == BODY
            else:  # local storage has no presigned URLs: it streams
                assert (response.status_code, response.content) == (200, BODY)


def test_head_in_s3_redirect_mode_is_answered_by_the_service(make_server: ServerFactory) -> None:
    """A URL presigned for GET answers 403 to a HEAD: HEAD never ends up there."""
    server = make_server(allowed_types=ALLOWED, signing_key=SIGNING_KEY, s3_redirect=True)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        public = upload(client, BODY)
        private = upload(client, BODY, "secret.pdf", visibility="private")
        signed = signed_query(private["id"], int(time.time()) + 60)
        for url, params in ((public["url"], {}), (private["url"], signed)):
            response = client.head(url, params=params)
            assert response.status_code == 200, response.headers
            assert response.headers["content-length"] == str(SIZE)
            assert response.headers["etag"] == ETAG
            assert response.content == b""


# --- memory: a 200 MiB file through a real `filesvc serve` --------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """The FILESVC_* variables that give a subprocess the settings the fixtures built."""
    env: dict[str, str] = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | dict):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"FILESVC_{name.upper()}"] = text
    return env


def status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name}")


@pytest.fixture
def serve_settings(make_settings: Any) -> tuple[Path, dict[str, str]]:
    """Data directory and environment of a `filesvc serve` with this test's settings."""
    settings = make_settings(allowed_types=ALLOWED, max_upload_bytes=256 * MiB)
    return settings.data_dir, {**settings_env(settings), "FILESVC_LOG_LEVEL": "warning"}


@contextmanager
def serving(data_dir: Path, env: dict[str, str]) -> Iterator[ServeProcess]:
    process = ServeProcess(data_dir, env=env).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.slow
@pytest.mark.sqlite_only  # the bytes stream from storage; the database holds one row
def test_200_mib_download_keeps_memory_flat(serve_settings: tuple[Path, dict[str, str]]) -> None:
    size = 200 * MiB
    block = random.Random(1).randbytes(MiB)
    upload_digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        head = b"%PDF-1.7\n" + block[9:]
        for index in range(size // MiB):
            piece = head if index == 0 else block
            upload_digest.update(piece)
            yield piece

    with serving(*serve_settings) as uploader, httpx.Client(timeout=300) as client:
        response = client.post(
            f"{uploader.url}/api/v1/files", params={"filename": "big.pdf"}, content=body()
        )
        assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["size"] == size and stored["sha256"] == upload_digest.hexdigest()

    # A fresh process serves the download, so its peak is the download's alone.
    with serving(*serve_settings) as server, httpx.Client(timeout=300) as client:
        url = server.url + stored["url"]
        started = status_kib(server.pid, "VmRSS")
        digest = hashlib.sha256()
        received = 0
        with client.stream("GET", url) as download:
            assert download.status_code == 200
            assert download.headers["content-length"] == str(size)
            for chunk in download.iter_raw(MiB):
                digest.update(chunk)
                received += len(chunk)
        tail = client.get(url, headers={"Range": f"bytes={size - 10 * MiB}-"})
        peak = status_kib(server.pid, "VmHWM")

    assert received == size and digest.hexdigest() == stored["sha256"]
    assert tail.status_code == 206 and tail.content == block * 10
    # The file is 200 MiB: the server's whole resident memory stays well under it.
    assert peak < 150 * 1024, f"peak RSS {peak // 1024} MiB (at start {started // 1024} MiB)"
    assert peak - started < 48 * 1024, f"grew {(peak - started) // 1024} MiB while streaming"
