"""Resumable uploads with stock clients and several processes.

tuspy (the tus project's Python client) end to end, resuming an interrupted
upload from a new client; and two ``filesvc serve`` processes sharing
PostgreSQL and moto's S3 with PATCHes alternating between them, so that no
request finds the state of the previous one in its own process's memory.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client

from tests.conftest import ServerFactory
from tests.processes import ServeProcess
from tests.s3server import S3Bucket
from tests.servers import LiveServer
from tests.tus import TUS, MiB, checksum, created, offset_of, patch, pdf, upload_id

DOCUMENTS = "application/pdf,image/png,image/jpeg"


@pytest.fixture
def docs(make_server: ServerFactory) -> LiveServer:
    return make_server(allowed_types=DOCUMENTS.split(","))


def test_tuspy_uploads_in_chunks_with_checksums(docs: LiveServer) -> None:
    data = pdf(5 * MiB + 123)
    client = tus_client.TusClient(f"{docs.url}/api/v1/uploads")
    uploader = client.uploader(
        file_stream=io.BytesIO(data),
        chunk_size=MiB,
        metadata={"filename": "tuspy.pdf", "visibility": "private"},
        upload_checksum=True,
    )
    uploader.upload()
    assert uploader.url is not None
    file_id = upload_id(uploader.url)
    with httpx.Client(base_url=docs.url) as http:
        body = http.get(f"/api/v1/files/{file_id}").json()
    assert body["filename"] == "tuspy.pdf"
    assert body["visibility"] == "private"
    assert body["sha256"] == hashlib.sha256(data).hexdigest()


def test_tuspy_resumes_where_another_client_stopped(docs: LiveServer) -> None:
    data = pdf(3 * MiB)
    first = tus_client.TusClient(f"{docs.url}/api/v1/uploads")
    uploader = first.uploader(file_stream=io.BytesIO(data), chunk_size=MiB)
    uploader.upload(stop_at=2 * MiB)  # the first client gives up part way
    assert uploader.offset == 2 * MiB
    url = uploader.url
    assert url is not None

    second = tus_client.TusClient(f"{docs.url}/api/v1/uploads")
    resumed = second.uploader(file_stream=io.BytesIO(data), url=url, chunk_size=MiB)
    assert resumed.offset == 2 * MiB  # learnt from HEAD
    resumed.upload()
    with httpx.Client(base_url=docs.url) as http:
        assert http.get(f"/files/{upload_id(url)}").content == data


# -- two processes, one database, one bucket ------------------------------------------


@pytest.fixture
def two_processes(
    tmp_path: Path, postgres_url: str, s3_bucket: S3Bucket
) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    env = {
        "FILESVC_DATABASE_URL": postgres_url,
        "FILESVC_STORAGE": "s3",
        "FILESVC_S3_BUCKET": s3_bucket.name,
        "FILESVC_S3_ENDPOINT_URL": s3_bucket.endpoint_url,
        "FILESVC_S3_REGION": "us-east-1",
        "FILESVC_S3_ADDRESSING_STYLE": "path",
        "FILESVC_S3_PART_SIZE": str(5 * MiB),
        "FILESVC_ALLOWED_TYPES": DOCUMENTS,
        "FILESVC_SIGNING_KEY": "two-processes-test-key",
    }
    processes = (
        ServeProcess(tmp_path / "a" / "data", env).start(),
        ServeProcess(tmp_path / "b" / "data", env).start(),
    )
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.mark.postgres
@pytest.mark.s3
def test_patches_alternate_between_two_processes(
    two_processes: tuple[ServeProcess, ServeProcess], s3_bucket: S3Bucket
) -> None:
    a, b = two_processes
    data = pdf(17 * MiB + 5)
    with (
        httpx.Client(base_url=a.url, timeout=60) as first,
        httpx.Client(base_url=b.url, timeout=60) as second,
    ):
        url = created(first, len(data), filename="shared.pdf")
        # 3 MiB PATCHes, so parts (5 MiB) are cut across requests from both processes:
        # each process must find the staged bytes and the running SHA-256 in storage
        # and the database, never in its own memory.
        cuts = list(range(0, len(data), 3 * MiB)) + [len(data)]
        clients = [first, second]
        for number, (start, end) in enumerate(zip(cuts, cuts[1:], strict=False)):
            http = clients[number % 2]
            assert offset_of(http, url) == start
            chunk = data[start:end]
            digest = {"Upload-Checksum": checksum("sha256", chunk)}
            response = patch(http, url, start, chunk, digest)
            assert response.status_code == 204, response.text
            assert response.headers["upload-offset"] == str(end)
        file_id = upload_id(url)
        for http in clients:
            body = http.get(f"/api/v1/files/{file_id}").json()
            assert body["sha256"] == hashlib.sha256(data).hexdigest()
            assert body["size"] == len(data)
            assert http.get(f"/files/{file_id}").content == data
            done = http.head(url, headers=TUS)
            assert done.headers["upload-offset"] == str(len(data))
    assert s3_bucket.incomplete_uploads() == []
    assert [key for key in s3_bucket.keys() if "/staging/" in key] == []
