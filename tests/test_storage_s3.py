"""What only the S3 backend does: multipart behaviour, bounded concurrency, errors, config."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import ClientError

from filesvc.config import Settings
from filesvc.errors import StorageUnavailable
from filesvc.serving import content_disposition
from filesvc.storage import ObjectNotFound, new_key, open_writer
from filesvc.storage.s3 import MAX_PARTS, S3Storage
from tests.s3server import MotoS3, S3Bucket, S3CallLog
from tests.waiting import HANG_SECONDS

MiB = 1024 * 1024
PART = 5 * MiB

pytestmark = [pytest.mark.anyio, pytest.mark.s3]


def make_storage(bucket: S3Bucket, **overrides: Any) -> S3Storage:
    values = bucket.settings(s3_part_size=PART, **overrides)
    return S3Storage.from_settings(Settings(_env_file=None, **values))


@pytest.fixture
async def storage(s3_bucket: S3Bucket) -> AsyncIterator[S3Storage]:
    backend = make_storage(s3_bucket)
    yield backend
    await backend.aclose()


def chunks(size: int, chunk: int = MiB) -> Iterator[bytes]:
    for start in range(0, size, chunk):
        yield bytes([start // chunk % 251]) * min(chunk, size - start)


async def test_small_objects_are_one_put(storage: S3Storage) -> None:
    log = S3CallLog(storage)
    for size in (0, 10, PART):  # exactly one part is still a single PutObject
        async with open_writer(storage, new_key("small")) as writer:
            for data in chunks(size):
                await writer.write(data)
            await writer.commit()
    assert log.operations == ["PutObject"] * 3


async def test_multipart_upload_is_created_lazily_and_completed(
    storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    log = S3CallLog(storage)
    key = new_key("big")
    written = 0
    async with open_writer(storage, key) as writer:
        for data in chunks(3 * PART + 12345):
            await writer.write(data)
            written += len(data)
            created = "CreateMultipartUpload" in log.operations
            assert created == (written > PART), (written, log.operations)
        await writer.commit()
    assert log.operations == (
        ["CreateMultipartUpload"] + ["UploadPart"] * 4 + ["CompleteMultipartUpload"]
    )
    params = dict(log.calls)
    parts = params["CompleteMultipartUpload"]["MultipartUpload"]["Parts"]
    assert [p["PartNumber"] for p in parts] == [1, 2, 3, 4]
    # As boto3's managed transfers do: CRC32 per part, handed back on completion.
    assert params["CreateMultipartUpload"]["ChecksumAlgorithm"] == "CRC32"
    assert all(p.get("ChecksumCRC32") for p in parts)
    assert s3_bucket.keys() == [key]
    assert s3_bucket.incomplete_uploads() == []


async def test_checksums_follow_botocores_setting(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    storage = make_storage(s3_bucket)
    log = S3CallLog(storage)
    async with open_writer(storage, new_key("plain")) as writer:
        for data in chunks(PART + 1):
            await writer.write(data)
        await writer.commit()
    assert all("ChecksumAlgorithm" not in params for _, params in log.calls)
    await storage.aclose()


async def test_parts_go_out_while_writing_with_bounded_concurrency(
    s3_bucket: S3Bucket,
) -> None:
    storage = make_storage(s3_bucket, s3_max_concurrency=2)
    log = S3CallLog(storage)

    writes_returned = 0
    sent_after_writes: list[int] = []  # for each part: how many writes had returned
    wire = threading.Condition()
    arrived = 0
    writes_done = False

    def slow_part(**_: Any) -> None:
        # A slow link: each odd part stays on the wire until the next part is sent
        # beside it (or the writes are over), so parts pile up unless bounded.
        nonlocal arrived
        with wire:
            sent_after_writes.append(writes_returned)
            arrived += 1
            wire.notify_all()
            if arrived % 2:
                partner = arrived + 1
                wire.wait_for(lambda: arrived >= partner or writes_done, HANG_SECONDS)

    storage.client.meta.events.register("before-send.s3.UploadPart", slow_part)
    writes = list(chunks(6 * PART + 1))
    async with open_writer(storage, new_key("bounded")) as writer:
        for data in writes:
            await writer.write(data)
            writes_returned += 1
        with wire:
            writes_done = True
            wire.notify_all()
        await writer.commit()
    assert log.operations.count("UploadPart") == 7
    assert log.peak["UploadPart"] == 2  # in flight together, never more
    # Streaming, not buffering: with two slots, a write cannot return until a
    # slot is free, so at least four parts went out while writes still came in.
    assert sum(1 for n in sent_after_writes if n < len(writes)) >= 4, sent_after_writes
    await storage.aclose()


async def test_ranged_reads_ask_s3_for_the_range_only(storage: S3Storage) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB
    key = new_key("ranged")
    async with open_writer(storage, key) as writer:
        await writer.write(data)
        await writer.commit()
    log = S3CallLog(storage)
    got = [chunk async for chunk in await storage.open_reader(key, 1000, 600_000)]
    assert b"".join(got) == data[1000:601_000]
    assert log.calls[-1][1]["Range"] == "bytes=1000-600999"
    whole = [chunk async for chunk in await storage.open_reader(key)]
    assert "Range" not in log.calls[-1][1]
    assert b"".join(whole) == data
    assert {len(c) for c in whole[:-1]} == {storage.read_chunk_size}
    assert storage.read_chunk_size >= 256 * 1024


async def test_prefix_scopes_keys_listing_and_sweep(s3_bucket: S3Bucket) -> None:
    storage = make_storage(s3_bucket, s3_prefix="/tenant/a/")
    key = new_key("scoped")
    async with open_writer(storage, key) as writer:
        await writer.write(b"x")
        await writer.commit()
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="elsewhere/ab/cd/x", Body=b"y")
    s3_bucket.client.create_multipart_upload(Bucket=s3_bucket.name, Key="elsewhere/ab/cd/y")
    assert sorted(s3_bucket.keys()) == ["elsewhere/ab/cd/x", f"tenant/a/{key}"]
    assert [k async for k in storage.iter_keys()] == [key]
    assert await storage.sweep_incomplete(older_than=0) == 0
    assert s3_bucket.incomplete_uploads() == ["elsewhere/ab/cd/y"]
    await storage.aclose()


async def test_sweep_keeps_uploads_younger_than_the_grace(
    storage: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    aborted: list[str] = []

    async def young() -> AsyncIterator[tuple[str, str, float]]:
        yield "ab/cd/young", "upload-1", time.time() - 10
        yield "ab/cd/old", "upload-2", time.time() - 7200

    async def abort(key: str, upload_id: str) -> None:
        aborted.append(upload_id)

    monkeypatch.setattr(storage, "incomplete_uploads", young)
    monkeypatch.setattr(storage.objects, "abort_once", abort)
    assert await storage.sweep_incomplete(older_than=3600) == 1
    assert aborted == ["upload-2"]


def test_client_config_is_explicit(s3_bucket: S3Bucket) -> None:
    storage = make_storage(
        s3_bucket, s3_timeout=3.5, s3_max_concurrency=8, s3_addressing_style="virtual"
    )
    config: Any = storage.client.meta.config  # botocore's stubs leave its options out
    assert (config.connect_timeout, config.read_timeout) == (3.5, 3.5)
    assert config.retries == {"total_max_attempts": 3, "mode": "standard"}
    assert config.max_pool_connections >= 8
    assert config.s3 == {"addressing_style": "virtual"}
    assert storage.max_concurrency == 8
    # CompleteMultipartUpload alone may take minutes on large objects.
    slow: Any = storage.complete_client.meta.config
    assert (slow.connect_timeout, slow.read_timeout) == (3.5, S3Storage.complete_timeout)
    assert slow.retries == config.retries
    assert storage.part_size == PART


def test_parts_grow_to_fit_the_upload_limit_in_10000_parts(s3_bucket: S3Bucket) -> None:
    limit = 200 * 1024 * MiB
    storage = make_storage(s3_bucket, max_upload_bytes=limit)
    assert storage.part_size * MAX_PARTS >= limit > PART * MAX_PARTS


async def test_credentials_come_only_from_botocores_chain(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = make_storage(s3_bucket)
    with pytest.raises(StorageUnavailable, match="NoCredentialsError"):
        await storage.check()
    await storage.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def black_hole() -> Iterator[socket.socket]:
    """A listening socket that takes connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock


def hung_up(listener: socket.socket) -> bool:
    """Whether the first client of ``listener`` has closed its connection already."""
    listener.setblocking(False)
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return False  # not even connected yet
    with connection:
        connection.setblocking(False)
        try:
            while connection.recv(65536):
                pass  # the request, never answered
        except BlockingIOError:
            return False  # still there, waiting for an answer
        return True


def bounded_attempts(log: S3CallLog) -> None:
    """Every call was tried at most once plus the configured retries."""
    assert log.calls
    assert len(log.attempts) <= len(log.calls) * (1 + S3Storage.retries), log.attempts


async def test_unreachable_endpoint_is_storage_unavailable(s3_bucket: S3Bucket) -> None:
    storage = make_storage(
        s3_bucket, s3_endpoint_url=f"http://127.0.0.1:{closed_port()}", s3_timeout=1.0
    )
    log = S3CallLog(storage)
    with pytest.raises(StorageUnavailable, match="EndpointConnectionError"):
        await storage.stat(new_key("x"))
    with pytest.raises(StorageUnavailable):
        await storage.open_reader(new_key("x"))
    with pytest.raises(StorageUnavailable):
        await storage.check()
    with pytest.raises(StorageUnavailable):
        async with open_writer(storage, new_key("x")) as writer:
            await writer.write(b"data")
            await writer.commit()
    bounded_attempts(log)
    await storage.aclose()


async def test_a_silent_endpoint_times_out(s3_bucket: S3Bucket, black_hole: socket.socket) -> None:
    port = black_hole.getsockname()[1]
    storage = make_storage(s3_bucket, s3_endpoint_url=f"http://127.0.0.1:{port}", s3_timeout=0.3)
    log = S3CallLog(storage)
    with pytest.raises(StorageUnavailable, match="ReadTimeoutError"):
        await storage.stat(new_key("x"))
    bounded_attempts(log)


async def test_readiness_deadline_beats_botocores_timeouts(
    s3_bucket: S3Bucket, black_hole: socket.socket
) -> None:
    port = black_hole.getsockname()[1]
    storage = make_storage(s3_bucket, s3_endpoint_url=f"http://127.0.0.1:{port}", s3_timeout=20)
    with pytest.raises(TimeoutError), anyio.fail_after(0.5):
        await storage.check()
    # botocore is still waiting on its first connection: the deadline did not wait for it.
    assert not hung_up(black_hole)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def answer(status: int, code: str) -> Any:
    body = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()

    def handler(request: Any, **_: Any) -> AWSResponse:
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/xml"
        return AWSResponse(request.url, status, headers, _Raw(body))

    return handler


async def test_throttling_is_retried_then_storage_unavailable(storage: S3Storage) -> None:
    log = S3CallLog(storage)
    storage.client.meta.events.register("before-send.s3.PutObject", answer(503, "SlowDown"))
    with pytest.raises(StorageUnavailable, match="SlowDown") as raised:
        async with open_writer(storage, new_key("throttled")) as writer:
            await writer.write(b"x")
            await writer.commit()
    assert raised.value.status_code == 503
    assert raised.value.headers["Retry-After"]
    assert log.attempts.count("PutObject") == 3


async def test_missing_bucket_is_storage_unavailable(s3_bucket: S3Bucket) -> None:
    storage = make_storage(s3_bucket, s3_bucket="filesvc-no-such-bucket")
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        async with open_writer(storage, new_key("x")) as writer:
            await writer.write(b"x")
            await writer.commit()
    with pytest.raises(StorageUnavailable, match="does not exist"):
        await storage.check()
    await storage.aclose()


async def test_unexpected_client_errors_are_not_disguised(storage: S3Storage) -> None:
    storage.client.meta.events.register("before-send.s3.HeadObject", answer(400, "Weird"))
    with pytest.raises(ClientError):
        await storage.stat(new_key("x"))


async def test_missing_object_is_not_found(storage: S3Storage) -> None:
    with pytest.raises(ObjectNotFound):
        await storage.stat(new_key("missing"))
    with pytest.raises(ObjectNotFound):
        await storage.open_reader(new_key("missing"), 5, 10)


async def test_abort_that_cannot_reach_s3_is_retried_once_it_is_back(
    s3_bucket: S3Bucket,
) -> None:
    endpoint = MotoS3().start()  # shares moto's state with the session's server
    storage = make_storage(s3_bucket, s3_endpoint_url=endpoint.endpoint_url, s3_timeout=1.0)
    try:
        writer = await storage.create_writer(new_key("stranded"))
        for data in chunks(2 * PART + 1):
            await writer.write(data)
        with anyio.fail_after(HANG_SECONDS):
            while not s3_bucket.incomplete_uploads():
                await anyio.sleep(0.05)
        endpoint.stop()
        # S3 comes back only after the abort returns: waiting for it would hang.
        with anyio.fail_after(HANG_SECONDS):
            await writer.abort()
        assert len(s3_bucket.incomplete_uploads()) == 1
        endpoint.start()  # the same port
        with anyio.fail_after(HANG_SECONDS):
            while s3_bucket.incomplete_uploads():
                await anyio.sleep(0.1)
    finally:
        endpoint.stop()
        await storage.aclose()


async def test_aclose_gives_up_pending_aborts_promptly(
    s3_bucket: S3Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    storage = make_storage(
        s3_bucket, s3_endpoint_url=f"http://127.0.0.1:{closed_port()}", s3_timeout=1.0
    )
    await storage.objects.abort_upload(new_key("x"), "upload-id")
    pending = set(storage.objects.cleanups)  # retrying while S3 cannot be reached
    assert pending
    await storage.aclose()
    # Given up (cancelled) and left to the start-up sweep, not waited for.
    assert all(task.cancelled() for task in pending)
    assert "the start-up sweep will" in caplog.text


async def test_presigned_url_in_redirect_mode(s3_bucket: S3Bucket) -> None:
    storage = make_storage(s3_bucket, s3_redirect=True)
    key = new_key("signed")
    async with open_writer(storage, key) as writer:
        await writer.write(b"%PDF-1.4 hello")
        await writer.commit()
    disposition = content_disposition("résumé 2026.pdf", "application/pdf")
    url = await storage.presigned_url(
        key, 300, content_disposition=disposition, content_type="application/pdf"
    )
    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"%PDF-1.4 hello"
    assert response.headers["content-type"] == "application/pdf"
    # The same header as the service's own static responses.
    assert response.headers["content-disposition"] == content_disposition(
        "résumé 2026.pdf", "application/pdf"
    )
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%202026.pdf" in response.headers["content-disposition"]
    await storage.aclose()


async def test_an_upload_aborted_under_way_is_storage_unavailable(
    storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    key = new_key("swept")
    writer = await storage.create_writer(key)
    for data in chunks(PART + 1):
        await writer.write(data)
    # Another process's sweep (or an operator) aborts the upload meanwhile.
    assert await storage.sweep_incomplete(older_than=0) == 1
    # S3 answers NoSuchUpload (404), moto a 500 (KeyError): 503 to the client either way.
    with pytest.raises(StorageUnavailable):
        await writer.commit()
    await writer.abort()
    assert s3_bucket.keys() == [] and s3_bucket.incomplete_uploads() == []


async def test_no_such_upload_says_the_upload_was_aborted(
    storage: S3Storage, s3_bucket: S3Bucket
) -> None:
    storage.client.meta.events.register("before-send.s3.UploadPart", answer(404, "NoSuchUpload"))
    with pytest.raises(StorageUnavailable, match="aborted under way"):
        async with open_writer(storage, new_key("gone")) as writer:
            for data in chunks(2 * PART + 1):
                await writer.write(data)
            await writer.commit()
    assert s3_bucket.incomplete_uploads() == []
