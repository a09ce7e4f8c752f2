"""Uploads to S3 through the live service: multipart on the wire, faults, refusals mid-upload.

Every test here asserts the spec's promise with S3 underneath: a file is
either complete and listed, or absent — no row, no object, and no multipart
upload left billing its parts.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.s3server import MotoS3, S3Bucket, S3CallLog
from tests.servers import LiveServer
from tests.waiting import wait_until

MiB = 1024 * 1024
PART = 5 * MiB

# S3 only, on SQLite: the PostgreSQL paths do not change with the storage.
pytestmark = [
    pytest.mark.s3,
    pytest.mark.sqlite_only,
    pytest.mark.parametrize("storage_backend", ["s3"]),
]


def pdf(size: int, seed: int = 0) -> Iterator[bytes]:
    """A body of ``size`` bytes starting with ``%PDF-``, in 1 MiB chunks."""
    first = True
    for start in range(0, size, MiB):
        chunk = bytes([(seed + start // MiB) % 251]) * min(MiB, size - start)
        if first:
            chunk = b"%PDF-1.7\n" + chunk[9:]
            first = False
        yield chunk


def parts_sent(bucket: S3Bucket) -> int:
    """Parts stored so far by the multipart uploads in progress."""
    total = 0
    for upload in bucket.client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []):
        parts = bucket.client.list_parts(
            Bucket=bucket.name, Key=upload.get("Key", ""), UploadId=upload.get("UploadId", "")
        )
        total += len(parts.get("Parts", []))
    return total


def body_pausing_once(
    size: int, after: int, pause: Callable[[], None], seed: int = 0
) -> Iterator[bytes]:
    """The PDF body, calling ``pause()`` once ``after`` bytes have been handed to the client."""
    sent = 0
    paused = False
    for chunk in pdf(size, seed):
        yield chunk
        sent += len(chunk)
        if not paused and sent >= after:
            paused = True
            pause()


def make_pdf_server(make_server: ServerFactory, **overrides: Any) -> LiveServer:
    values: dict[str, Any] = {
        "allowed_types": ["application/pdf"],
        "s3_part_size": PART,
        "max_upload_bytes": 64 * MiB,
    }
    values.update(overrides)
    return make_server(**values)


def assert_nothing_left(server: LiveServer, bucket: S3Bucket) -> None:
    assert server.row_count() == 0
    assert wait_until(lambda: server.stored_objects() == []), server.stored_objects()
    assert bucket.incomplete_uploads() == []


@pytest.fixture
def server(make_server: ServerFactory) -> LiveServer:
    """This module's usual server: PDFs only, 5 MiB parts."""
    return make_pdf_server(make_server)


def test_large_upload_is_a_multipart_upload_on_the_wire(
    server: LiveServer, s3_bucket: S3Bucket
) -> None:
    log = S3CallLog(server.app.state.resources.storage)
    data = b"".join(pdf(3 * PART + 4321))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(
            "/api/v1/files?filename=big.pdf",
            content=iter([data[i : i + MiB] for i in range(0, len(data), MiB)]),
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["size"], body["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert log.operations == (
        ["CreateMultipartUpload"] + ["UploadPart"] * 4 + ["CompleteMultipartUpload"]
    )
    [name] = server.stored_objects()
    assert server.read_stored(name) == data
    assert s3_bucket.incomplete_uploads() == []


def test_endpoint_lost_mid_upload_is_503_and_leaves_nothing_once_back(
    make_server: ServerFactory, s3_bucket: S3Bucket
) -> None:
    endpoint = MotoS3().start()  # shares moto's state with the session's server
    server = make_pdf_server(make_server, s3_endpoint_url=endpoint.endpoint_url, s3_timeout=1.0)

    def lose_the_endpoint() -> None:
        # The first part has reached S3 before the endpoint goes.
        assert wait_until(lambda: parts_sent(s3_bucket) >= 1), "no part was ever sent"
        endpoint.stop()

    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            response = client.post(
                "/api/v1/files?filename=lost.pdf",
                content=body_pausing_once(4 * PART, PART + 2 * MiB, lose_the_endpoint),
            )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert int(response.headers["retry-after"]) > 0
        assert server.row_count() == 0
        # The abort could not reach S3 either: the upload is still there...
        assert len(s3_bucket.incomplete_uploads()) == 1
        endpoint.start()  # ... until the endpoint is back on its port.
        assert wait_until(lambda: s3_bucket.incomplete_uploads() == [])
        assert_nothing_left(server, s3_bucket)
    finally:
        endpoint.stop()


def test_413_after_parts_were_sent_leaves_no_parts(
    make_server: ServerFactory, s3_bucket: S3Bucket
) -> None:
    limit = PART + 2 * MiB
    server = make_pdf_server(make_server, max_upload_bytes=limit)

    def first_part_sent() -> None:
        assert wait_until(lambda: parts_sent(s3_bucket) >= 1), "no part was ever sent"

    # The body ends one byte over the limit, so the client is done sending
    # when the 413 comes: nothing races the answer.
    body = body_pausing_once(limit + 1, PART + MiB, first_part_sent)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/api/v1/files?filename=big.pdf", content=body)
    assert response.status_code == 413, response.text
    assert_nothing_left(server, s3_bucket)


def test_checksum_mismatch_after_parts_were_sent_leaves_nothing(
    server: LiveServer, s3_bucket: S3Bucket
) -> None:
    log = S3CallLog(server.app.state.resources.storage)
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(
            "/api/v1/files?filename=x.pdf",
            content=pdf(2 * PART + 1),
            headers={"Repr-Digest": f"sha-256=:{wrong}:"},
        )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "checksum_mismatch"
    assert log.operations.count("UploadPart") == 2  # sent while the body streamed...
    assert log.operations[-1] == "AbortMultipartUpload"  # ... and given back
    assert_nothing_left(server, s3_bucket)


def test_batch_refused_after_a_multipart_file_keeps_nothing(
    server: LiveServer, s3_bucket: S3Bucket
) -> None:
    big = b"".join(pdf(2 * PART + 1))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(
            "/api/v1/files/batch",
            files=[
                ("file", ("big.pdf", big, "application/pdf")),
                ("file", ("notes.txt", b"just text, not allowed", "application/pdf")),
            ],
        )
    assert response.status_code == 415, response.text
    assert response.json()["error"]["details"]["index"] == 1
    assert_nothing_left(server, s3_bucket)


def test_client_disconnect_mid_upload_aborts_the_multipart_upload(
    server: LiveServer, s3_bucket: S3Bucket
) -> None:
    log = S3CallLog(server.app.state.resources.storage)
    total = 4 * PART
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(
            f"POST /api/v1/files?filename=gone.pdf HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/pdf\r\nContent-Length: {total}\r\n\r\n".encode()
        )
        sent = 0
        for chunk in pdf(total):
            sock.sendall(chunk)
            sent += len(chunk)
            if sent >= 2 * PART + MiB:
                break
        assert wait_until(lambda: parts_sent(s3_bucket) >= 1), "no part was ever sent"
    finally:
        sock.close()
    assert wait_until(lambda: "AbortMultipartUpload" in log.operations)
    assert_nothing_left(server, s3_bucket)


def test_service_starts_without_s3_and_answers_503(make_server: ServerFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = make_pdf_server(make_server, s3_endpoint_url=f"http://127.0.0.1:{port}")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["checks"]["storage"].startswith("unavailable")
        assert ready.json()["error"]["details"]["checks"]["database"] == "ok"
        response = client.post("/api/v1/files?filename=a.pdf", content=b"%PDF-1.7\n" * 100)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert response.headers["retry-after"]
    assert server.row_count() == 0


def test_readyz_names_a_missing_bucket(make_server: ServerFactory) -> None:
    server = make_pdf_server(make_server, s3_bucket="filesvc-no-such-bucket")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "does not exist" in ready.json()["error"]["details"]["checks"]["storage"]


@pytest.mark.postgres
def test_postgres_and_s3_together(
    make_server: ServerFactory, s3_bucket: S3Bucket, request: pytest.FixtureRequest
) -> None:
    """The at-scale set-up end to end: rows in PostgreSQL, bytes in S3."""
    postgres_url: str = request.getfixturevalue("postgres_url")
    server = make_pdf_server(make_server, database_url=postgres_url)
    data = b"".join(pdf(PART + 3 * MiB, seed=7))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/api/v1/files?filename=scale.pdf", content=data)
        assert response.status_code == 201, response.text
        file_id = response.json()["id"]
        assert server.query("SELECT size FROM files WHERE id = :id", id=file_id) == [(len(data),)]
        served = client.get(f"/files/{file_id}")
        assert served.status_code == 200 and served.content == data
        ranged = client.get(f"/files/{file_id}", headers={"Range": f"bytes={PART - 2}-{PART + 1}"})
        assert ranged.status_code == 206 and ranged.content == data[PART - 2 : PART + 2]
        assert client.delete(f"/api/v1/files/{file_id}").status_code == 204
    # The session's PostgreSQL database is shared: look at this file's row only.
    assert server.query("SELECT count(*) FROM files WHERE id = :id", id=file_id) == [(0,)]
    assert server.stored_objects() == []
