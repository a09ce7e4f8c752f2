"""Resumable uploads on S3: parts gathered across small PATCHes, and nothing left behind."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.s3server import S3Bucket
from tests.servers import LiveServer
from tests.tus import TUS, MiB, created, expire, offset_of, patch, pdf, upload_id
from tests.waiting import eventually

PART = 5 * MiB

# S3 only, on SQLite: the PostgreSQL paths do not change with the storage.
pytestmark = [
    pytest.mark.s3,
    pytest.mark.sqlite_only,
    pytest.mark.parametrize("storage_backend", ["s3"]),
]


@pytest.fixture
def docs(make_server: ServerFactory) -> LiveServer:
    return make_server(allowed_types=["application/pdf"], s3_part_size=PART)


def parts_of(bucket: S3Bucket) -> list[int]:
    """Sizes of the parts of the one multipart upload in progress."""
    [upload] = bucket.client.list_multipart_uploads(Bucket=bucket.name)["Uploads"]
    parts = bucket.client.list_parts(
        Bucket=bucket.name, Key=upload.get("Key", ""), UploadId=upload.get("UploadId", "")
    )
    return [part.get("Size", 0) for part in parts.get("Parts", [])]


def staged(bucket: S3Bucket, file_id: str) -> int | None:
    try:
        head = bucket.client.head_object(Bucket=bucket.name, Key=f"tus/staging/{file_id}")
    except bucket.client.exceptions.ClientError:
        return None
    return head["ContentLength"]


def test_small_patches_are_gathered_into_parts_in_storage(
    docs: LiveServer, s3_bucket: S3Bucket
) -> None:
    data = pdf(12 * MiB + 7)
    step = 700 * 1024  # far below S3's 5 MiB minimum part
    with httpx.Client(base_url=docs.url, timeout=60) as http:
        url = created(http, len(data))
        file_id = upload_id(url)
        offset = 0
        while offset + step < len(data):
            assert patch(http, url, offset, data[offset : offset + step]).status_code == 204
            offset += step
            # Every full part went to S3; the rest waits in a staging object, not in memory.
            assert parts_of(s3_bucket) == [PART] * (offset // PART)
            assert staged(s3_bucket, file_id) == offset % PART or offset % PART == 0
        assert patch(http, url, offset, data[offset:]).status_code == 204
        assert http.get(f"/files/{file_id}").content == data
        body = http.get(f"/api/v1/files/{file_id}").json()
        assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert s3_bucket.incomplete_uploads() == []
    assert staged(s3_bucket, file_id) is None
    assert docs.stored_objects() == [body_key(docs, file_id)]


def body_key(server: LiveServer, file_id: str) -> str:
    [(key,)] = server.query("SELECT storage_key FROM files WHERE id = :id", id=file_id)
    return str(key)


def test_a_small_file_completes_as_one_part(docs: LiveServer, s3_bucket: S3Bucket) -> None:
    data = pdf(1000)
    with httpx.Client(base_url=docs.url, timeout=60) as http:
        url = created(http, len(data))
        assert patch(http, url, 0, data[:10]).status_code == 204
        assert patch(http, url, 10, data[10:]).status_code == 204
        assert http.get(f"/files/{upload_id(url)}").content == data
    assert s3_bucket.incomplete_uploads() == []


def test_termination_and_expiry_abort_the_multipart_upload(
    docs: LiveServer, s3_bucket: S3Bucket
) -> None:
    data = pdf(7 * MiB)
    with httpx.Client(base_url=docs.url, timeout=60) as http:
        for end in ("delete", "expire"):
            url = created(http, len(data))
            assert patch(http, url, 0, data[: 6 * MiB]).status_code == 204
            assert len(s3_bucket.incomplete_uploads()) == 1
            assert staged(s3_bucket, upload_id(url)) == MiB
            if end == "delete":
                assert http.delete(url, headers=TUS).status_code == 204
            else:
                expire(docs, upload_id(url))
                assert http.head(url, headers=TUS).status_code == 410
            assert s3_bucket.incomplete_uploads() == []
            assert s3_bucket.keys() == []
    assert docs.query("SELECT count(*) FROM resumable_uploads") == [(0,)]


def test_the_start_up_sweep_leaves_resumable_uploads_alone(
    make_server: ServerFactory, s3_bucket: S3Bucket
) -> None:
    data = pdf(6 * MiB)
    first = make_server(allowed_types=["application/pdf"], s3_part_size=PART)
    with httpx.Client(base_url=first.url, timeout=60) as http:
        url = created(http, len(data))
        assert patch(http, url, 0, data[: 5 * MiB + 1]).status_code == 204
    # A restart whose sweep would take every unfinished one-shot upload older than a
    # second (the shortest grace a one-second body deadline allows): this one is older.
    started = time.time()
    eventually(lambda: time.time() > started + 2, "the upload to be older than the grace")
    second = make_server(
        allowed_types=["application/pdf"],
        s3_part_size=PART,
        body_timeout=1,
        body_deadline=1,
        incomplete_upload_grace=1,
    )
    assert len(s3_bucket.incomplete_uploads()) == 1
    with httpx.Client(base_url=second.url, timeout=60) as http:
        assert offset_of(http, url) == 5 * MiB + 1
        assert patch(http, url, 5 * MiB + 1, data[5 * MiB + 1 :]).status_code == 204
        assert http.get(f"/files/{upload_id(url)}").content == data
