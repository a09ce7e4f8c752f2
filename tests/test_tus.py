"""Resumable uploads over real HTTP: the tus 1.0.0 protocol header by header, status by status,
and the guarantees of a one-shot upload (every database, every storage backend)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.images import make_image
from tests.servers import LiveServer
from tests.tus import (
    OCTETS,
    TUS,
    UPLOADS,
    MiB,
    RawPatch,
    checksum,
    create,
    created,
    expire,
    metadata,
    offset_of,
    patch,
    pdf,
    upload_id,
    wait_until,
)

DOCUMENTS = ["application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp"]


@pytest.fixture
def database_url(request: pytest.FixtureRequest, database_url: str) -> str:
    """conftest's database, with the resumable uploads of earlier tests gone too."""
    if database_url:
        execute_url(database_url, "DELETE FROM resumable_uploads")
    return database_url


def execute_url(url: str, sql: str) -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            await connection.execute(text(sql))
        await engine.dispose()

    asyncio.run(run())


@pytest.fixture
def docs(make_server: ServerFactory) -> LiveServer:
    return make_server(allowed_types=DOCUMENTS)


@pytest.fixture
def http(docs: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=docs.url, timeout=60) as client:
        yield client


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def assert_nothing_left(server: LiveServer) -> None:
    assert server.row_count() == 0
    assert server.query("SELECT count(*) FROM resumable_uploads") == [(0,)]
    assert server.stored_objects() == []
    if server.settings.storage == "local":
        uploads = server.data_dir / "uploads"
        assert not uploads.exists() or list(uploads.iterdir()) == []


# -- discovery and versions -----------------------------------------------------------


def leased(server: LiveServer, url: str) -> bool:
    """Whether a request holds the upload's lease now."""
    sql = "SELECT lease_token FROM resumable_uploads WHERE id = :id"
    rows = server.query(sql, id=upload_id(url))
    return rows[0][0] is not None


def test_options_announces_the_protocol(server: LiveServer, client: httpx.Client) -> None:
    for path in (UPLOADS, f"{UPLOADS}/anything"):
        response = client.options(path)
        assert response.status_code == 204
        assert response.headers["tus-resumable"] == "1.0.0"
        assert response.headers["tus-version"] == "1.0.0"
        assert response.headers["tus-extension"] == (
            "creation,creation-with-upload,termination,checksum,expiration"
        )
        assert response.headers["tus-max-size"] == str(server.settings.max_upload_bytes)
        assert response.headers["tus-checksum-algorithm"] == "sha1,sha256"


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", ""])
def test_an_unsupported_version_is_412(client: httpx.Client, version: str | None) -> None:
    headers = {} if version is None else {"Tus-Resumable": version}
    url = created(client, 10)
    for response in (
        client.post(UPLOADS, headers={**headers, "Upload-Length": "10"}),
        client.patch(
            url, headers={**headers, "Upload-Offset": "0", "Content-Type": OCTETS}, content=b"x"
        ),
        client.delete(url, headers=headers),
    ):
        assert response.status_code == 412, response.text
        assert error_code(response) == "unsupported_tus_version"
        assert response.headers["tus-version"] == "1.0.0"
        assert response.headers["tus-resumable"] == "1.0.0"
    head = client.head(url, headers=headers)
    assert head.status_code == 412
    assert offset_of(client, url) == 0  # nothing happened to the upload


# -- the whole path -------------------------------------------------------------------


def test_an_upload_in_three_patches_becomes_the_file(
    server: LiveServer, client: httpx.Client
) -> None:
    data = make_image("image/png", size=(400, 300), noise=True)
    meta = metadata(filename="../holiday.png", visibility="private")
    response = client.post(
        UPLOADS, headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta}
    )
    assert response.status_code == 201, response.text
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["upload-expires"].endswith(" GMT")
    url = response.headers["location"]
    assert url.startswith(f"{UPLOADS}/")
    head = client.head(url, headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["upload-metadata"] == meta
    assert head.headers["cache-control"] == "no-store"
    assert head.headers["tus-resumable"] == "1.0.0"
    assert head.headers["upload-expires"] == response.headers["upload-expires"]

    cuts = [0, 1000, len(data) // 2, len(data)]
    for start, end in zip(cuts, cuts[1:], strict=False):
        answer = patch(client, url, start, data[start:end])
        assert answer.status_code == 204, answer.text
        assert answer.headers["upload-offset"] == str(end)
        assert answer.headers["tus-resumable"] == "1.0.0"
        assert answer.headers["upload-expires"]
        assert answer.content == b""

    file_id = upload_id(url)
    body = client.get(f"/api/v1/files/{file_id}").json()
    assert body["id"] == file_id
    assert body["filename"] == "holiday.png"
    assert body["visibility"] == "private"
    assert body["content_type"] == "image/png"
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["width"], body["height"]) == (400, 300)
    [stored] = server.stored_objects()
    assert server.read_stored(stored) == data
    # A client whose last answer was lost learns from HEAD that it is done.
    done = client.head(url, headers=TUS)
    assert done.status_code == 200
    assert done.headers["upload-offset"] == done.headers["upload-length"] == str(len(data))
    assert server.query("SELECT count(*) FROM resumable_uploads") == [(0,)]


def test_nothing_is_visible_until_the_last_byte(docs: LiveServer, http: httpx.Client) -> None:
    data = pdf(3 * MiB)
    url = created(http, len(data), filename="report.pdf")
    assert patch(http, url, 0, data[: 2 * MiB]).status_code == 204
    file_id = upload_id(url)
    assert http.get("/api/v1/files").json()["items"] == []
    assert http.get(f"/api/v1/files/{file_id}").status_code == 404
    assert http.get(f"/files/{file_id}").status_code == 404
    export = http.get("/api/v1/exports/files.csv")
    assert export.status_code == 200
    assert file_id not in export.text
    assert patch(http, url, 2 * MiB, data[2 * MiB :]).status_code == 204
    listed = http.get("/api/v1/files").json()["items"]
    assert [item["id"] for item in listed] == [file_id]
    assert http.get(f"/files/{file_id}").content == data


def test_creation_with_upload(docs: LiveServer, http: httpx.Client) -> None:
    data = pdf(100_000)
    headers = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS}
    partial = http.post(UPLOADS, headers=headers, content=data[:40_000])
    assert partial.status_code == 201, partial.text
    assert partial.headers["upload-offset"] == "40000"
    url = partial.headers["location"]
    assert patch(http, url, 40_000, data[40_000:]).status_code == 204
    whole = http.post(UPLOADS, headers=headers, content=data)
    assert whole.status_code == 201
    assert whole.headers["upload-offset"] == str(len(data))
    file_id = upload_id(whole.headers["location"])
    assert http.get(f"/api/v1/files/{file_id}").json()["size"] == len(data)


# -- refusals at creation -------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Upload-Length": "-1"},
        {"Upload-Length": "ten"},
        {"Upload-Length": "1e3"},
        {"Upload-Length": "99999999999999999999999"},
        {"Upload-Defer-Length": "1"},
        {"Upload-Length": "10", "Upload-Metadata": "filename !!notbase64"},
        {"Upload-Length": "10", "Upload-Metadata": "filename YS5wbmc"},  # unpadded
        {"Upload-Length": "10", "Upload-Metadata": "filename YQ==,filename YQ=="},
        {"Upload-Length": "10", "Upload-Metadata": "file name YQ=="},
        {"Upload-Length": "10", "Upload-Metadata": "filename /w=="},  # not UTF-8
        {"Upload-Length": "10", "Upload-Metadata": metadata(visibility="secret")},
        {"Upload-Length": "10", "Upload-Metadata": metadata(sha256="abc")},
    ],
)
def test_malformed_creation_is_400(
    server: LiveServer, client: httpx.Client, headers: dict[str, str]
) -> None:
    response = client.post(UPLOADS, headers={**TUS, **headers})
    assert response.status_code == 400, response.text
    assert error_code(response) == "invalid_request"
    assert response.headers["tus-resumable"] == "1.0.0"
    assert_nothing_left(server)


def test_metadata_without_value_is_accepted(client: httpx.Client) -> None:
    response = client.post(
        UPLOADS, headers={**TUS, "Upload-Length": "10", "Upload-Metadata": "is_confidential"}
    )
    assert response.status_code == 201


def test_upload_length_over_the_limit_is_413_at_creation(make_server: ServerFactory) -> None:
    server = make_server(max_upload_bytes=MiB)
    with httpx.Client(base_url=server.url) as client:
        assert create(client, MiB).status_code == 201
        response = create(client, MiB + 1)
        assert response.status_code == 413
        assert error_code(response) == "payload_too_large"
        assert server.query("SELECT count(*) FROM resumable_uploads") == [(1,)]


def test_an_empty_upload_is_415(server: LiveServer, client: httpx.Client) -> None:
    response = create(client, 0)
    assert response.status_code == 415
    assert_nothing_left(server)


# -- refusals of a PATCH --------------------------------------------------------------


def test_patch_refusals(docs: LiveServer, http: httpx.Client) -> None:
    data = pdf(1000)
    url = created(http, len(data))
    assert patch(http, url, 0, data[:100]).status_code == 204

    wrong_type = http.patch(
        url,
        headers={**TUS, "Upload-Offset": "100", "Content-Type": "application/octet-stream"},
        content=data[100:],
    )
    assert wrong_type.status_code == 415
    assert error_code(wrong_type) == "invalid_content_type"
    for bad in ("", "-5", "abc"):
        response = patch(http, url, 0, data[100:], {"Upload-Offset": bad})
        assert response.status_code == 400, bad
    missing = http.patch(url, headers={**TUS, "Content-Type": OCTETS}, content=data[100:])
    assert missing.status_code == 400
    conflict = patch(http, url, 50, data[50:])
    assert conflict.status_code == 409
    assert error_code(conflict) == "offset_mismatch"
    assert conflict.json()["error"]["details"] == {"offset": 100}
    too_long = patch(http, url, 100, data[100:] + b"more")
    assert too_long.status_code == 413
    assert offset_of(http, url) == 100  # refused bytes are not kept
    for unknown in (f"{UPLOADS}/nosuchupload", f"{UPLOADS}/{'x' * 40}", f"{UPLOADS}/a.b"):
        assert patch(http, unknown, 0, b"x").status_code == 404
        assert http.head(unknown, headers=TUS).status_code == 404
    assert patch(http, url, 100, data[100:]).status_code == 204


def test_type_is_judged_from_the_first_bytes_as_they_arrive(
    server: LiveServer, client: httpx.Client
) -> None:
    data = pdf(10 * MiB)  # PDFs are not allowed by default
    url = created(client, len(data))
    # Fewer bytes than the sniffer needs: not judged yet.
    assert patch(client, url, 0, data[:10]).status_code == 204
    response = patch(client, url, 10, data[10:MiB])
    assert response.status_code == 415
    assert error_code(response) == "unsupported_media_type"
    assert "application/pdf" in response.json()["error"]["message"]
    assert client.head(url, headers=TUS).status_code == 404
    assert_nothing_left(server)


def test_a_refused_type_stops_at_once_in_a_big_patch(
    server: LiveServer, client: httpx.Client
) -> None:
    data = pdf(20 * MiB)
    url = created(client, len(data))
    response = patch(client, url, 0, data)
    assert response.status_code == 415
    assert_nothing_left(server)


def test_a_broken_image_is_422_at_the_last_byte(server: LiveServer, client: httpx.Client) -> None:
    good = make_image("image/png", size=(200, 200), noise=True)
    data = good[: len(good) // 2] + bytes(len(good) // 2)
    url = created(client, len(data))
    assert patch(client, url, 0, data[:1000]).status_code == 204
    response = patch(client, url, 1000, data[1000:])
    assert response.status_code == 422
    assert error_code(response) == "invalid_content"
    assert client.head(url, headers=TUS).status_code == 404
    assert_nothing_left(server)


def test_the_stated_sha256_is_checked(server: LiveServer, client: httpx.Client) -> None:
    data = make_image("image/png")
    right = hashlib.sha256(data).hexdigest()
    url = created(client, len(data), sha256=right.upper())
    assert patch(client, url, 0, data).status_code == 204
    assert client.get(f"/api/v1/files/{upload_id(url)}").json()["sha256"] == right

    url = created(client, len(data), sha256="0" * 64)
    response = patch(client, url, 0, data)
    assert response.status_code == 422
    assert error_code(response) == "checksum_mismatch"
    assert response.json()["error"]["details"] == {"expected": "0" * 64, "received": right}
    assert client.head(url, headers=TUS).status_code == 404
    assert server.row_count() == 1
    assert len(server.stored_objects()) == 1


# -- the checksum extension -----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_upload_checksum(docs: LiveServer, http: httpx.Client, algorithm: str) -> None:
    data = pdf(3 * MiB)
    url = created(http, len(data))
    first, rest = data[: 2 * MiB], data[2 * MiB :]
    good = patch(http, url, 0, first, {"Upload-Checksum": checksum(algorithm, first)})
    assert good.status_code == 204
    wrong = patch(http, url, 2 * MiB, rest, {"Upload-Checksum": checksum(algorithm, b"other")})
    assert wrong.status_code == 460
    assert error_code(wrong) == "checksum_failed"
    assert wrong.headers["tus-resumable"] == "1.0.0"
    assert offset_of(http, url) == 2 * MiB  # the mismatched body was dropped
    done = patch(http, url, 2 * MiB, rest, {"Upload-Checksum": checksum(algorithm, rest)})
    assert done.status_code == 204
    assert http.get(f"/files/{upload_id(url)}").content == data


@pytest.mark.parametrize(
    "header",
    [
        "md5 " + "A" * 24,
        "sha1",
        "sha1 not-base64!",
        "sha1 AAAA",  # decodes, but is not 20 bytes
        "sha256 " + "A" * 28,  # 20 bytes: a sha1 digest under the sha256 name
        "sha1  AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "",
    ],
)
def test_malformed_upload_checksum_is_400(
    docs: LiveServer, http: httpx.Client, header: str
) -> None:
    url = created(http, 100)
    response = patch(http, url, 0, pdf(100), {"Upload-Checksum": header})
    assert response.status_code == 400, response.text
    assert error_code(response) == "invalid_request"
    assert offset_of(http, url) == 0


# -- termination and expiration -------------------------------------------------------


def test_termination(server: LiveServer, client: httpx.Client) -> None:
    data = make_image("image/png", size=(300, 300), noise=True)
    url = created(client, len(data))
    assert patch(client, url, 0, data[:5000]).status_code == 204
    response = client.delete(url, headers=TUS)
    assert response.status_code == 204
    assert response.headers["tus-resumable"] == "1.0.0"
    assert client.head(url, headers=TUS).status_code == 404
    assert patch(client, url, 5000, data[5000:]).status_code == 404
    assert client.delete(url, headers=TUS).status_code == 404
    assert_nothing_left(server)


def test_expired_uploads_answer_410_and_are_swept(server: LiveServer, client: httpx.Client) -> None:
    data = make_image("image/png", size=(300, 300), noise=True)
    first, second = created(client, len(data)), created(client, len(data))
    for url in (first, second):
        assert patch(client, url, 0, data[:5000]).status_code == 204
    expire(server, upload_id(first))
    response = client.head(first, headers=TUS)
    assert response.status_code == 410
    assert response.headers["tus-resumable"] == "1.0.0"
    # Swept with its bytes on that access: now it is simply unknown.
    assert client.head(first, headers=TUS).status_code == 404
    assert patch(client, first, 5000, data[5000:]).status_code == 404

    # An expired upload nobody asks about is swept by the next creation, in any process.
    expire(server, upload_id(second))
    gone = [(upload_id(second),)]
    assert server.query("SELECT id FROM resumable_uploads") == gone
    third = created(client, len(data))
    assert server.query("SELECT id FROM resumable_uploads") == [(upload_id(third),)]
    assert client.delete(third, headers=TUS).status_code == 204
    assert_nothing_left(server)


def test_an_expired_upload_refuses_a_patch_with_410(
    server: LiveServer, client: httpx.Client
) -> None:
    data = make_image("image/png")
    url = created(client, len(data))
    expire(server, upload_id(url))
    response = patch(client, url, 0, data)
    assert response.status_code == 410
    assert error_code(response) == "upload_expired"
    assert_nothing_left(server)


def test_upload_expires_is_a_setting(make_server: ServerFactory) -> None:
    server = make_server(upload_expires=60)
    with httpx.Client(base_url=server.url) as client:
        response = create(client, 10)
        [(created_at, expires_at)] = server.query(
            "SELECT created_at, expires_at FROM resumable_uploads"
        )
        assert response.status_code == 201
        from datetime import datetime

        def moment(value: object) -> datetime:
            return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))

        assert (moment(expires_at) - moment(created_at)).total_seconds() == 60


# -- one writer at a time, interrupted bodies -----------------------------------------


def test_a_second_writer_gets_423(docs: LiveServer, http: httpx.Client) -> None:
    data = pdf(2 * MiB)
    url = created(http, len(data))
    holder = RawPatch(docs.url, url, 0, len(data), {})
    try:
        holder.send(data[:MiB])
        # The first request holds the lease once the service has taken it: wait for that.
        wait_until(lambda: leased(docs, url))
        second = patch(http, url, 0, data)
        assert second.status_code == 423
        assert error_code(second) == "upload_locked"
        assert http.delete(url, headers=TUS).status_code == 423
        holder.send(data[MiB:])
        status, _ = holder.response()
        assert status == 204
    finally:
        holder.close()
    assert http.get(f"/files/{upload_id(url)}").content == data


def test_a_disconnected_patch_keeps_what_arrived(docs: LiveServer, http: httpx.Client) -> None:
    data = pdf(3 * MiB)
    url = created(http, len(data))
    holder = RawPatch(docs.url, url, 0, len(data), {})
    holder.send(data[: 2 * MiB])
    wait_until(lambda: leased(docs, url))
    holder.close()
    # The service keeps the bytes it received, then lets go of the upload.
    wait_until(lambda: not leased(docs, url))
    kept = offset_of(http, url)
    assert 0 < kept <= 2 * MiB
    assert patch(http, url, kept, data[kept:]).status_code == 204
    assert http.get(f"/files/{upload_id(url)}").content == data


def test_a_stalled_patch_is_408_and_keeps_what_arrived(make_server: ServerFactory) -> None:
    server = make_server(allowed_types=DOCUMENTS, body_timeout=1.0, min_body_rate=0)
    data = pdf(2 * MiB)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        url = created(http, len(data))
        holder = RawPatch(server.url, url, 0, len(data), {})
        try:
            holder.send(data[:MiB])
            status, raw = holder.response()  # the client stalls; the service cuts it off
            assert status == 408, raw
        finally:
            holder.close()
        kept = offset_of(http, url)
        assert 0 < kept <= MiB
        assert patch(http, url, kept, data[kept:]).status_code == 204


def test_a_stalled_patch_with_a_checksum_keeps_nothing(make_server: ServerFactory) -> None:
    server = make_server(allowed_types=DOCUMENTS, body_timeout=1.0, min_body_rate=0)
    data = pdf(2 * MiB)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        url = created(http, len(data))
        holder = RawPatch(
            server.url, url, 0, len(data), {"Upload-Checksum": checksum("sha1", data)}
        )
        try:
            holder.send(data[:MiB])
            status, _ = holder.response()
            assert status == 408
        finally:
            holder.close()
        assert offset_of(http, url) == 0


# -- auth, CORS, metrics --------------------------------------------------------------


def test_scopes_as_the_file_api(make_server: ServerFactory) -> None:
    server = make_server(api_keys={"w": ["files:write"], "r": ["files:read"]})
    with httpx.Client(base_url=server.url) as client:
        missing = create(client, 10)
        assert missing.status_code == 401
        assert missing.headers["tus-resumable"] == "1.0.0"
        assert create(client, 10, {"X-API-Key": "r"}).status_code == 403
        response = create(client, 10, {"Authorization": "Bearer w"})
        assert response.status_code == 201
        url = response.headers["location"]
        assert client.head(url, headers=TUS).status_code == 401
        assert patch(client, url, 0, b"x", {"X-API-Key": "r"}).status_code == 403
        assert client.delete(url, headers={**TUS, "X-API-Key": "w"}).status_code == 204


def test_metrics_show_uploads_in_progress(docs: LiveServer, http: httpx.Client) -> None:
    url = created(http, 100)
    created(http, 100)
    text = http.get("/metrics").text
    assert "filesvc_resumable_uploads 2.0" in text
    assert http.delete(url, headers=TUS).status_code == 204
    assert "filesvc_resumable_uploads 1.0" in http.get("/metrics").text


# -- filesvc check ----------------------------------------------------------------------


def test_check_reports_unfinished_and_expired_uploads_and_fix_sweeps(
    server: LiveServer, client: httpx.Client
) -> None:
    from tests.test_consistency import run_check

    data = make_image("image/png", size=(400, 400), noise=True)
    kept, old = created(client, len(data)), created(client, len(data))
    for url in (kept, old):
        assert patch(client, url, 0, data[:5000]).status_code == 204
    clean = run_check(server)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "2 resumable uploads unfinished, 0 expired" in clean.stdout

    expire(server, upload_id(old))
    found = run_check(server)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"expired upload: {upload_id(old)}" in found.stdout
    fixed = run_check(server, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert server.query("SELECT id FROM resumable_uploads") == [(upload_id(kept),)]
    after = run_check(server)
    assert after.returncode == 0
    assert "1 resumable uploads unfinished, 0 expired" in after.stdout
    assert patch(client, kept, 5000, data[5000:]).status_code == 204
    assert run_check(server).returncode == 0


def test_cors_lets_tus_clients_through(make_server: ServerFactory) -> None:
    origin = "https://app.example.com"
    server = make_server(cors_origins=[origin])
    with httpx.Client(base_url=server.url) as client:
        preflight = client.options(
            f"{UPLOADS}/someid",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "tus-resumable,upload-offset,upload-checksum,"
                "content-type,x-requested-with",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert "PATCH" in preflight.headers["access-control-allow-methods"]
        response = create(client, 10, {"Origin": origin})
        exposed = response.headers["access-control-expose-headers"].lower()
        for header in ("location", "upload-offset", "tus-resumable", "upload-expires"):
            assert header in exposed
