"""The S3 calls of one bucket and prefix, each in a worker thread, errors translated.

Both the storage (:mod:`filesvc.storage.s3`) and its multipart writer
(:mod:`filesvc.storage.multipart`) use this; it uses neither.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError, ValidationError

from filesvc.errors import StorageUnavailable
from filesvc.storage.base import STORAGE_KEY, ObjectNotFound

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

logger = logging.getLogger("filesvc")

Pieces = list[bytes | memoryview]


def joined(pieces: Pieces) -> bytes:
    """One part's body: the single copy a part costs (called in a worker thread)."""
    if len(pieces) == 1 and isinstance(pieces[0], bytes):
        body = pieces[0]
    else:
        body = b"".join(pieces)
    pieces.clear()  # the chunks can go as soon as the body exists
    return body


T = TypeVar("T")

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


class S3Objects:
    """One bucket and prefix: object keys, and the calls that write objects."""

    #: How long an abort that could not reach S3 keeps being retried in the background.
    abort_retry_seconds = 600.0
    abort_retry_max_delay = 10.0

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        prefix: str,
        threads: int,
        complete_client: S3Client | None = None,
    ) -> None:
        self.client = client
        self.complete_client = complete_client or client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._limiter = anyio.CapacityLimiter(threads)
        # Mirror boto3's managed transfers: with checksums on (botocore's
        # default), ask for CRC32 per part and hand the part checksums back on
        # completion; `AWS_REQUEST_CHECKSUM_CALCULATION=when_required` turns
        # them off for stores that refuse them.
        calculation = getattr(client.meta.config, "request_checksum_calculation", None)
        self._checksums = calculation != "when_required"
        self.cleanups: set[asyncio.Task[None]] = set()

    def object_key(self, key: str) -> str:
        """The S3 key of a storage key; the one place that builds them."""
        if not STORAGE_KEY.match(key):
            raise ObjectNotFound(key)
        return self.prefix + key

    async def call(self, key: str, call: Callable[[], T], *, abandon: bool = False) -> T:
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

    def _checksum_args(self) -> dict[str, Any]:
        return {"ChecksumAlgorithm": "CRC32"} if self._checksums else {}

    async def create_upload(self, key: str) -> str:
        name = self.object_key(key)
        response = await self.call(
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
            return await self.call(key, send)
        except ObjectNotFound as exc:  # NoSuchUpload: aborted under way (a sweep, an operator)
            raise StorageUnavailable("The upload to S3 was aborted under way.") from exc

    async def complete_upload(
        self, key: str, upload_id: str, parts: list[CompletedPartTypeDef]
    ) -> None:
        name = self.object_key(key)
        try:
            await self.call(
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
        await self.call(
            key,
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=name, Body=joined(pieces), **extra
            ),
        )

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload; when S3 cannot be reached, keep trying in the background."""
        try:
            await self.abort_once(key, upload_id)
        except StorageUnavailable:
            task = asyncio.create_task(self._abort_until_done(key, upload_id))
            self.cleanups.add(task)
            task.add_done_callback(self.cleanups.discard)
        except Exception as exc:
            logger.warning("could not abort the upload of %s: %s", key, exc)

    async def abort_once(self, key: str, upload_id: str) -> None:
        name = self.prefix + key
        try:
            await self.call(
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
                await self.abort_once(key, upload_id)
                logger.info("aborted the unfinished upload of %s once S3 was back", key)
                return
            except StorageUnavailable:
                delay = min(delay * 2, self.abort_retry_max_delay)
            except Exception as exc:
                logger.warning("could not abort the upload of %s: %s", key, exc)
                return
        logger.warning("gave up aborting the upload of %s; the start-up sweep will", key)

    async def delete(self, key: str) -> None:
        """Remove the object; no error when it does not exist."""
        try:
            name = self.object_key(key)
        except ObjectNotFound:
            return
        try:
            await self.call(key, lambda: self.client.delete_object(Bucket=self.bucket, Key=name))
        except ObjectNotFound:
            pass

    async def close(self) -> None:
        if self.cleanups:
            logger.warning(
                "%d unfinished uploads could not be aborted yet; the start-up sweep will",
                len(self.cleanups),
            )
            for task in list(self.cleanups):
                task.cancel()
            await asyncio.wait(set(self.cleanups), timeout=5)
        for client in {self.client, self.complete_client}:
            await anyio.to_thread.run_sync(client.close, limiter=self._limiter)
