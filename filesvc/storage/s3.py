"""S3 storage (AWS or any S3-compatible store: MinIO, Ceph, R2).

Writes stream as multipart uploads (:mod:`filesvc.storage.multipart`). Every
failure path aborts the multipart upload, so no part stays billed; an abort
that cannot reach S3 is retried in the background, and whatever a crash
leaves is swept at start-up (:meth:`S3Storage.sweep_incomplete`).

boto3 is synchronous: every call runs in a worker thread drawn from this
storage's own :class:`anyio.CapacityLimiter`, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError, ValidationError

from filesvc import __version__
from filesvc.config import Settings
from filesvc.errors import StorageUnavailable
from filesvc.serving import content_disposition
from filesvc.storage.base import ObjectNotFound, Storage, StorageWriter, StoredObject
from filesvc.storage.multipart import MultipartWriter, Pieces, joined

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

logger = logging.getLogger("filesvc")

T = TypeVar("T")

#: S3's limit on the number of parts of one multipart upload.
MAX_PARTS = 10_000
_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchUpload", "NotFound", "404"}
# Answers that say "not now" or "not with this configuration": the service
# answers 503 and /readyz names the cause, rather than a 500.
_UNAVAILABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}


class _RangeNotSatisfiable(Exception):
    """S3's 416: the object exists, but the range starts at or past its end."""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _translate(exc: Exception, key: str) -> Exception:
    """The domain error for a boto3 failure; unknown client errors stay as they are (500)."""
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(key)
        if code == "InvalidRange":
            return _RangeNotSatisfiable(key)
        if code in _UNAVAILABLE_CODES or status >= 500 or status in (403, 429):
            logger.warning("S3 unavailable: %s", exc)
            return StorageUnavailable(f"The file storage is unavailable (S3 answered {code}).")
        return exc
    if isinstance(exc, ParamValidationError | ValidationError):
        return exc  # a bug of ours, not an outage
    # Connection refused or reset, timeouts, no credentials, truncated bodies.
    logger.warning("S3 unavailable: %s", exc)
    return StorageUnavailable(f"The file storage is unavailable ({type(exc).__name__}).")


class S3Storage(Storage):
    name = "s3"
    #: Bytes read from S3 per worker-thread call when streaming an object out.
    read_chunk_size = 256 * 1024
    #: Retries of a failed call after the first attempt (botocore "standard" mode).
    retries = 2
    #: Worker threads (and pooled connections) per part in flight, and at least this many.
    threads_per_part = 4
    min_threads = 16
    #: How long an abort that could not reach S3 keeps being retried in the background.
    abort_retry_seconds = 600.0
    abort_retry_max_delay = 10.0
    #: Read timeout of CompleteMultipartUpload, which S3 documents as taking up
    #: to minutes for large objects (AWS keeps the connection alive meanwhile;
    #: other stores may stay silent).
    complete_timeout = 300.0

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        prefix: str = "",
        part_size: int = 8 * 1024 * 1024,
        max_concurrency: int = 4,
        threads: int | None = None,
        redirect: bool = False,
        complete_client: S3Client | None = None,
    ) -> None:
        self.client = client
        self.complete_client = complete_client or client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.redirect = redirect
        threads = threads or max(self.min_threads, max_concurrency * self.threads_per_part)
        self._limiter = anyio.CapacityLimiter(threads)
        # Mirror boto3's managed transfers: with checksums on (botocore's
        # default), ask for CRC32 per part and hand the part checksums back on
        # completion; `AWS_REQUEST_CHECKSUM_CALCULATION=when_required` turns
        # them off for stores that refuse them.
        calculation = getattr(client.meta.config, "request_checksum_calculation", None)
        self._checksums = calculation != "when_required"
        self._cleanups: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        threads = max(cls.min_threads, settings.s3_max_concurrency * cls.threads_per_part)
        config = Config(
            connect_timeout=settings.s3_timeout,
            read_timeout=settings.s3_timeout,
            retries={"max_attempts": cls.retries, "mode": "standard"},
            max_pool_connections=threads,
            s3={"addressing_style": settings.s3_addressing_style},
            # Presigned URLs would otherwise fall back to SigV2 in us-east-1.
            signature_version="s3v4",
            user_agent_extra=f"filesvc/{__version__}",
        )
        # Credentials come from boto3's standard chain only: environment,
        # shared profiles, container and instance roles.
        session = boto3.session.Session()

        def client(config: Config) -> S3Client:
            return session.client(
                "s3",
                endpoint_url=settings.s3_endpoint_url,
                region_name=settings.s3_region,
                config=config,
            )

        read_timeout = max(settings.s3_timeout, cls.complete_timeout)
        slow = config.merge(Config(read_timeout=read_timeout, max_pool_connections=threads))
        # Parts must be large enough for the largest allowed file in 10,000 parts.
        part_size = max(settings.s3_part_size, math.ceil(settings.max_upload_bytes / MAX_PARTS))
        return cls(
            client(config),
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            part_size=part_size,
            max_concurrency=settings.s3_max_concurrency,
            threads=threads,
            redirect=settings.s3_redirect,
            complete_client=client(slow),
        )

    def object_key(self, key: str) -> str:
        """The S3 key of a storage key; the one place that builds them."""
        if not _KEY.match(key):
            raise ObjectNotFound(key)
        return self.prefix + key

    async def _call(self, key: str, call: Callable[[], T], *, abandon: bool = False) -> T:
        """Run one boto3 call in this storage's worker threads, errors translated."""
        try:
            return await anyio.to_thread.run_sync(
                call, limiter=self._limiter, abandon_on_cancel=abandon
            )
        except (BotoCoreError, ClientError) as exc:
            translated = _translate(exc, key)
            if translated is exc:
                raise
            raise translated from exc

    # -- writes ---------------------------------------------------------------

    async def create_writer(self, key: str) -> StorageWriter:
        self.object_key(key)
        return MultipartWriter(self, key)

    def _checksum_args(self) -> dict[str, Any]:
        return {"ChecksumAlgorithm": "CRC32"} if self._checksums else {}

    async def create_upload(self, key: str) -> str:
        name = self.object_key(key)
        response = await self._call(
            key,
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket, Key=name, **self._checksum_args()
            ),
        )
        return response["UploadId"]

    async def upload_part(
        self, key: str, upload_id: str, number: int, pieces: Pieces
    ) -> CompletedPartTypeDef:
        name = self.object_key(key)
        extra = self._checksum_args()

        def send() -> CompletedPartTypeDef:
            response = self.client.upload_part(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                PartNumber=number,
                Body=joined(pieces),
                **extra,
            )
            part: CompletedPartTypeDef = {"ETag": response["ETag"], "PartNumber": number}
            if extra and "ChecksumCRC32" in response:
                part["ChecksumCRC32"] = response["ChecksumCRC32"]
            return part

        try:
            return await self._call(key, send)
        except ObjectNotFound as exc:  # NoSuchUpload: aborted under way (a sweep, an operator)
            raise StorageUnavailable("The upload to S3 was aborted under way.") from exc

    async def complete_upload(
        self, key: str, upload_id: str, parts: list[CompletedPartTypeDef]
    ) -> None:
        name = self.object_key(key)
        try:
            await self._call(
                key,
                lambda: self.complete_client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except ObjectNotFound as exc:
            raise StorageUnavailable("The upload to S3 was aborted under way.") from exc

    async def put_object(self, key: str, pieces: Pieces) -> None:
        name = self.object_key(key)
        extra = self._checksum_args()
        await self._call(
            key,
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=name, Body=joined(pieces), **extra
            ),
        )

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload; when S3 cannot be reached, keep trying in the background."""
        try:
            await self._abort_once(key, upload_id)
        except StorageUnavailable:
            task = asyncio.create_task(self._abort_until_done(key, upload_id))
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)
        except Exception as exc:
            logger.warning("could not abort the upload of %s: %s", key, exc)

    async def _abort_once(self, key: str, upload_id: str) -> None:
        name = self.prefix + key
        try:
            await self._call(
                key,
                lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id
                ),
            )
        except ObjectNotFound:
            pass  # already gone

    async def _abort_until_done(self, key: str, upload_id: str) -> None:
        deadline = time.monotonic() + self.abort_retry_seconds
        delay = 0.5
        while time.monotonic() < deadline:
            await anyio.sleep(delay)
            try:
                await self._abort_once(key, upload_id)
                logger.info("aborted the unfinished upload of %s once S3 was back", key)
                return
            except StorageUnavailable:
                delay = min(delay * 2, self.abort_retry_max_delay)
            except Exception as exc:
                logger.warning("could not abort the upload of %s: %s", key, exc)
                return
        logger.warning("gave up aborting the upload of %s; the start-up sweep will", key)

    # -- reads and the rest ---------------------------------------------------

    async def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        name = self.object_key(key)
        if length == 0:
            await self.stat(key)
            return _no_chunks()
        extra: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            extra["Range"] = f"bytes={offset}-{end}"
        try:
            response = await self._call(
                key, lambda: self.client.get_object(Bucket=self.bucket, Key=name, **extra)
            )
        except _RangeNotSatisfiable:
            return _no_chunks()  # like reading a file past its end
        return self._chunks(key, response["Body"])

    async def _chunks(self, key: str, body: StreamingBody) -> AsyncIterator[bytes]:
        try:
            while True:
                chunk = await self._call(key, lambda: body.read(self.read_chunk_size))
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()  # a socket close: does not block

    async def stat(self, key: str) -> StoredObject:
        name = self.object_key(key)
        response = await self._call(
            key, lambda: self.client.head_object(Bucket=self.bucket, Key=name)
        )
        modified = response.get("LastModified")
        return StoredObject(
            key=key,
            size=response["ContentLength"],
            modified=modified.timestamp() if modified else None,
        )

    async def delete(self, key: str) -> None:
        try:
            name = self.object_key(key)
        except ObjectNotFound:
            return
        try:
            await self._call(key, lambda: self.client.delete_object(Bucket=self.bucket, Key=name))
        except ObjectNotFound:
            pass

    async def check(self) -> None:
        try:
            # Abandoned on cancellation: /readyz's own deadline must win over
            # botocore's timeouts and retries.
            await self._call("", lambda: self.client.head_bucket(Bucket=self.bucket), abandon=True)
        except StorageUnavailable:
            raise
        except ObjectNotFound as exc:
            raise StorageUnavailable(f"The S3 bucket {self.bucket!r} does not exist.") from exc
        except ClientError as exc:
            raise StorageUnavailable(
                f"The S3 bucket {self.bucket!r} is unusable ({_error_code(exc)})."
            ) from exc

    async def iter_keys(self) -> AsyncIterator[str]:
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = await self._call("", lambda: self.client.list_objects_v2(**request))
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :]
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    async def incomplete_uploads(self) -> AsyncIterator[tuple[str, str, float]]:
        """``(key, upload_id, initiated)`` of each multipart upload in progress under the prefix."""
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = await self._call("", lambda: self.client.list_multipart_uploads(**request))
            for upload in page.get("Uploads", []):
                initiated = upload.get("Initiated")
                yield (
                    upload.get("Key", "")[len(self.prefix) :],
                    upload.get("UploadId", ""),
                    initiated.timestamp() if initiated else 0.0,
                )
            if not page.get("IsTruncated"):
                return
            request["KeyMarker"] = page.get("NextKeyMarker", "")
            request["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    async def sweep_incomplete(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        stale = [
            (key, upload_id)
            async for key, upload_id, initiated in self.incomplete_uploads()
            if initiated < cutoff
        ]
        for key, upload_id in stale:
            await self._abort_once(key, upload_id)
        return len(stale)

    async def presigned_url(
        self, key: str, expires_in: int, *, filename: str, content_type: str
    ) -> str | None:
        """A presigned GET when ``FILESVC_S3_REDIRECT`` is on, else ``None`` (stream through)."""
        if not self.redirect:
            return None
        name = self.object_key(key)
        params = {
            "Bucket": self.bucket,
            "Key": name,
            "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition(filename, content_type),
        }
        # Signing may fetch or refresh credentials (instance roles): a thread, too.
        return await self._call(
            key,
            lambda: self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in
            ),
        )

    async def aclose(self) -> None:
        if self._cleanups:
            logger.warning(
                "%d unfinished uploads could not be aborted yet; the start-up sweep will",
                len(self._cleanups),
            )
            for task in list(self._cleanups):
                task.cancel()
            await asyncio.wait(set(self._cleanups), timeout=5)
        for client in {self.client, self.complete_client}:
            await anyio.to_thread.run_sync(client.close, limiter=self._limiter)


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
