"""S3 storage (AWS or any S3-compatible store: MinIO, Ceph, R2).

Writes stream as multipart uploads (:mod:`filesvc.storage.multipart`). Every
failure path aborts the multipart upload, so no part stays billed; an abort
that cannot reach S3 is retried in the background, and whatever a crash
leaves is swept at start-up (:meth:`S3Storage.sweep_incomplete`).

boto3 is synchronous: every call runs in a worker thread drawn from this
storage's own :class:`anyio.CapacityLimiter`, never on the event loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from filesvc import __version__
from filesvc.config import Settings
from filesvc.errors import StorageUnavailable
from filesvc.storage.base import (
    ObjectNotFound,
    Storage,
    StorageWriter,
    StoredObject,
    UnfinishedWrite,
)
from filesvc.storage.multipart import MultipartWriter
from filesvc.storage.resumable import KEY_PREFIX as RESUMABLE_KEY_PREFIX
from filesvc.storage.s3objects import S3Objects, T, _error_code, _RangeNotSatisfiable

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger("filesvc")

#: S3's limit on the number of parts of one multipart upload.
MAX_PARTS = 10_000


class S3Storage(Storage):
    name = "s3"
    #: Bytes read from S3 per worker-thread call when streaming an object out.
    read_chunk_size = 256 * 1024
    #: Retries of a failed call after the first attempt (botocore "standard" mode).
    retries = 2
    #: Worker threads (and pooled connections) per part in flight, and at least this many.
    threads_per_part = 4
    min_threads = 16
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
        threads = threads or max(self.min_threads, max_concurrency * self.threads_per_part)
        self.objects = S3Objects(
            client, bucket, prefix=prefix, threads=threads, complete_client=complete_client
        )
        self.client = client
        self.complete_client = self.objects.complete_client
        self.bucket = bucket
        self.prefix = self.objects.prefix
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.redirect = redirect

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
        return self.objects.object_key(key)

    async def _call(self, key: str, call: Callable[[], T], *, abandon: bool = False) -> T:
        return await self.objects.call(key, call, abandon=abandon)

    # -- writes ---------------------------------------------------------------

    async def create_writer(self, key: str) -> StorageWriter:
        self.object_key(key)
        return MultipartWriter(
            self.objects, key, part_size=self.part_size, max_concurrency=self.max_concurrency
        )

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
        await self.objects.delete(key)

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

    async def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
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

    async def iter_unfinished(self) -> AsyncIterator[UnfinishedWrite]:
        async for key, upload_id, initiated in self.incomplete_uploads():
            # Resumable uploads outlive the grace period; their expiry sweeps them.
            if not key.startswith(RESUMABLE_KEY_PREFIX):
                yield UnfinishedWrite(key, upload_id, initiated)

    async def discard_unfinished(self, write: UnfinishedWrite) -> None:
        await self.objects.abort_once(write.key, write.handle)

    async def sweep_incomplete(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        stale = [
            (key, upload_id)
            async for key, upload_id, initiated in self.incomplete_uploads()
            # Resumable uploads outlive the grace period; their expiry sweeps them.
            if initiated < cutoff and not key.startswith(RESUMABLE_KEY_PREFIX)
        ]
        for key, upload_id in stale:
            await self.objects.abort_once(key, upload_id)
        return len(stale)

    async def presigned_url(
        self, key: str, expires_in: int, *, content_disposition: str, content_type: str
    ) -> str | None:
        """A presigned GET when ``FILESVC_S3_REDIRECT`` is on, else ``None`` (stream through)."""
        if not self.redirect:
            return None
        name = self.object_key(key)
        params = {
            "Bucket": self.bucket,
            "Key": name,
            "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition,
        }
        # Signing may fetch or refresh credentials (instance roles): a thread, too.
        return await self._call(
            key,
            lambda: self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in
            ),
        )

    async def aclose(self) -> None:
        await self.objects.close()


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
