"""Resumable uploads (tus 1.0.0): their state in the database, their bytes in storage.

Nothing about an upload in progress lives in one process's memory, so any
process may take any request: the offset, the lease that makes one request at
a time the writer, the running SHA-256 (serialised with ``rehashes``, since
hashlib objects cannot be), the first bytes that decide the type and the
storage backend's own state are columns of ``resumable_uploads``.

The guarantees of a one-shot upload hold: ``Upload-Length`` over the limit is
413 at creation; the type is judged from the first bytes as soon as they have
arrived (415, and the upload is gone); when the last byte arrives the image is
checked (422, gone), the whole file's SHA-256 is checked against a stated one
(422, gone) and the upload becomes a file with the same id, in one transaction
that writes the file's row and deletes the upload's. Until then nothing is
visible to the file API or to exports.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import ClientDisconnect

from filesvc import crud
from filesvc.config import Settings
from filesvc.decoding import DecodeBudget
from filesvc.errors import (
    ChecksumFailed,
    ChecksumMismatch,
    OffsetMismatch,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    UploadExpired,
    UploadLocked,
    UploadNotFound,
)
from filesvc.hashstate import ResumableSha256
from filesvc.imaging import ImageProbe
from filesvc.metadata import MetadataStripper
from filesvc.models import FILE_ID, ResumableUpload, StoredFile
from filesvc.pipeline import (
    FileReceiver,
    allowed_type,
    file_row,
    new_file_id,
    parse_sha256_hex,
    parse_visibility,
    recorded_ids,
    sanitize_filename,
)
from filesvc.sniffing import RASTER_IMAGE_TYPES, SNIFF_BYTES
from filesvc.storage import Storage, new_key
from filesvc.storage.resumable import KEY_PREFIX, Appender, ResumableStore, UploadLost
from filesvc.tusheaders import Checksum

logger = logging.getLogger("filesvc")


def resumable_key(upload_id: str) -> str:
    """The storage key of an upload's file, under :data:`KEY_PREFIX`.

    The prefix keeps S3's start-up sweep of crashed one-shot uploads (six hours)
    away from multipart uploads that tus clients may resume for a day.
    """
    return KEY_PREFIX + new_key(upload_id)


@dataclass(slots=True)
class Progress:
    """What a PATCH (or a creation with data) answers."""

    offset: int
    expires_at: datetime
    #: The upload became a file (the file's row, when this request wrote it).
    complete: bool = False
    file: StoredFile | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class Uploads:
    """Every operation on resumable uploads; built per request from long-lived parts."""

    #: Bytes gathered before one hand-over to a worker thread (hashing) and to storage.
    flush_bytes = 1024 * 1024

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        store: ResumableStore,
        decode_budget: DecodeBudget,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.store = store
        #: Shared with one-shot uploads and variant renders (see filesvc.decoding).
        self.decode_budget = decode_budget

    @property
    def lease_seconds(self) -> float:
        """How long a writer holds an upload without renewing: longer than any stall it survives."""
        return max(2 * self.settings.body_timeout, 30.0)

    # -- creation ---------------------------------------------------------------

    async def create(
        self, length: int, metadata: dict[str, str | None], raw_metadata: str
    ) -> ResumableUpload:
        limit = self.settings.max_upload_bytes
        if length > limit:
            raise PayloadTooLarge(f"The file is larger than the limit of {limit} bytes.")
        if length == 0:
            allowed_type(b"", self.settings)  # 415: the file is empty
        visibility = parse_visibility(metadata.get("visibility"))
        stated = metadata.get("sha256")
        expected = parse_sha256_hex(stated) if stated is not None else None
        await self.sweep_expired(limit=16)
        upload_id = new_file_id()
        key = resumable_key(upload_id)
        now = _now()
        state = await self.store.create(upload_id, key)
        row = ResumableUpload(
            id=upload_id,
            storage_key=key,
            length=length,
            offset=0,
            filename=sanitize_filename(metadata.get("filename") or metadata.get("name")),
            visibility=visibility,
            expected_sha256=expected,
            upload_metadata=raw_metadata,
            content_type=None,
            head=b"",
            hash_state=ResumableSha256().state(),
            backend_state=json.dumps(state),
            lease_token=None,
            lease_until=None,
            created_at=now,
            expires_at=now + timedelta(seconds=self.settings.upload_expires),
        )
        try:
            async with self.sessions() as session:
                session.add(row)
                await session.commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.discard(upload_id, key, state)
            raise
        return row

    # -- reading ----------------------------------------------------------------

    async def get(self, upload_id: str) -> ResumableUpload:
        """The upload, or 404; an expired one is swept here and answers 410."""
        if not FILE_ID.fullmatch(upload_id):
            raise UploadNotFound()
        async with self.sessions() as session:
            row = await session.get(ResumableUpload, upload_id)
        if row is None:
            raise UploadNotFound()
        if row.expires_at <= _now():
            await self._sweep_one(row)
            raise UploadExpired()
        return row

    async def completed(self, upload_id: str) -> StoredFile | None:
        """The file an upload became, so that a client that lost the last answer sees it done."""
        if not FILE_ID.fullmatch(upload_id):
            return None
        async with self.sessions() as session:
            file = await session.get(StoredFile, upload_id)
        if file is None or not file.storage_key.startswith(KEY_PREFIX):
            return None
        return file

    async def count(self) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(ResumableUpload)) or 0)

    # -- the lease --------------------------------------------------------------

    async def _lease(self, upload_id: str) -> tuple[str, ResumableUpload]:
        """Take the upload's lease by a conditional UPDATE: 423 when another writer holds it."""
        if not FILE_ID.fullmatch(upload_id):
            raise UploadNotFound()
        token = secrets.token_hex(16)
        now = _now()
        async with self.sessions() as session:
            result = await session.execute(
                update(ResumableUpload)
                .where(ResumableUpload.id == upload_id)
                .where(
                    (ResumableUpload.lease_token.is_(None)) | (ResumableUpload.lease_until < now)
                )
                .values(lease_token=token, lease_until=now + timedelta(seconds=self.lease_seconds))
                .execution_options(synchronize_session=False)
            )
            taken = getattr(result, "rowcount", 0) == 1
            row = await session.get(ResumableUpload, upload_id) if taken else None
            await session.commit()
        if row is None:
            await self.get(upload_id)  # 404 or 410 when that is why
            raise UploadLocked()
        if row.expires_at <= now:
            await self._sweep_one(row)
            raise UploadExpired()
        return token, row

    async def _renew(self, upload_id: str, token: str, seconds: float) -> None:
        async with self.sessions() as session:
            result = await session.execute(
                update(ResumableUpload)
                .where(ResumableUpload.id == upload_id, ResumableUpload.lease_token == token)
                .values(lease_until=_now() + timedelta(seconds=seconds))
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        if getattr(result, "rowcount", 0) != 1:
            raise UploadLocked("This request lost its hold on the upload; retry.")

    async def _release(self, upload_id: str, token: str) -> None:
        with anyio.CancelScope(shield=True):
            try:
                async with self.sessions() as session:
                    await session.execute(
                        update(ResumableUpload)
                        .where(
                            ResumableUpload.id == upload_id, ResumableUpload.lease_token == token
                        )
                        .values(lease_token=None, lease_until=None)
                        .execution_options(synchronize_session=False)
                    )
                    await session.commit()
            except Exception as exc:  # the lease runs out by itself
                logger.warning("could not release the lease of upload %s: %s", upload_id, exc)

    # -- appending --------------------------------------------------------------

    async def append(
        self,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        *,
        checksum: Checksum | None = None,
        content_length: int | None = None,
    ) -> Progress:
        """One PATCH (or the body of a creation): the new offset, and the file once complete."""
        token, row = await self._lease(upload_id)
        released = False  # the row is gone, or the lease went with the last update
        try:
            if offset != row.offset:
                raise OffsetMismatch(
                    f"Upload-Offset is {offset}, the upload is at {row.offset}.",
                    details={"offset": row.offset},
                )
            if content_length is not None and row.offset + content_length > row.length:
                raise PayloadTooLarge(
                    f"The body would take the upload past its Upload-Length of {row.length}."
                )
            try:
                appender = await self.store.open_append(
                    row.id, row.storage_key, row.offset, json.loads(row.backend_state)
                )
            except UploadLost as exc:
                logger.warning("the bytes of upload %s are gone: discarding it", row.id)
                await self._discard(row)
                raise UploadNotFound("The stored bytes are gone; start a new upload.") from exc
            request = _Append(self, row, token, appender, checksum)
            try:
                return await request.run(body)
            finally:
                with anyio.CancelScope(shield=True):
                    await appender.close()
                released = request.released
        finally:
            if not released:
                await self._release(upload_id, token)

    # -- termination and expiry -------------------------------------------------

    async def terminate(self, upload_id: str) -> None:
        token, row = await self._lease(upload_id)
        try:
            await self._discard(row)
        except BaseException:
            await self._release(upload_id, token)
            raise

    async def _discard(self, row: ResumableUpload) -> None:
        """Bytes first, then the row: a failure in between leaves a row the sweep retries."""
        with anyio.CancelScope(shield=True):
            await self.store.discard(row.id, row.storage_key, json.loads(row.backend_state))
            async with self.sessions() as session:
                await session.execute(delete(ResumableUpload).where(ResumableUpload.id == row.id))
                await session.commit()

    async def _sweep_one(self, row: ResumableUpload) -> None:
        try:
            await self._discard(row)
        except Exception as exc:  # the next access or `filesvc check --fix` tries again
            logger.warning("could not sweep expired upload %s: %s", row.id, exc)

    async def expired(self, limit: int | None = None) -> list[ResumableUpload]:
        query = select(ResumableUpload).where(ResumableUpload.expires_at <= _now())
        query = query.order_by(ResumableUpload.expires_at)
        if limit is not None:
            query = query.limit(limit)
        async with self.sessions() as session:
            return list((await session.scalars(query)).all())

    async def sweep_expired(self, limit: int | None = None) -> int:
        """Remove expired uploads with their bytes (a batch of ``limit``, or all)."""
        rows = await self.expired(limit)
        for row in rows:
            await self._sweep_one(row)
        return len(rows)


class _Append:
    """One request's bytes: type judged, hashed, stored, recorded; the file made when whole."""

    def __init__(
        self,
        uploads: Uploads,
        row: ResumableUpload,
        token: str,
        appender: Appender,
        checksum: Checksum | None,
    ) -> None:
        self.uploads = uploads
        self.settings = uploads.settings
        self.row = row
        self.token = token
        self.appender = appender
        self.checksum = checksum
        self.request_hash = hashlib.new(checksum.algorithm) if checksum else None
        self.hasher = ResumableSha256(row.hash_state)
        self.head = bytearray(row.head)
        self.content_type = row.content_type
        self.received = 0
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._inflight: asyncio.Task[None] | None = None
        self._renewed = time.monotonic()
        self.released = False

    @property
    def offset(self) -> int:
        return self.row.offset + self.received

    async def run(self, body: AsyncIterator[bytes]) -> Progress:
        try:
            async for chunk in body:
                await self._feed(chunk)
            await self._flush()
            await self._settle()
        except (ClientDisconnect, RequestTimeout):
            # tus keeps what arrived of an interrupted request, so the client can
            # resume from there; not when a checksum covers the whole body.
            with anyio.CancelScope(shield=True):
                await self._keep_partial()
            raise
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._settle_quietly()
            raise
        if self.request_hash is not None and self.checksum is not None:
            if not hmac.compare_digest(self.request_hash.digest(), self.checksum.digest):
                raise ChecksumFailed()
        if self.offset == self.row.length:
            return await self._complete()
        await self._judge_type(final=False)
        await self._record()
        return Progress(self.offset, self.row.expires_at)

    async def _feed(self, chunk: bytes) -> None:
        if self.offset + len(chunk) > self.row.length:
            raise PayloadTooLarge(
                f"The body would take the upload past its Upload-Length of {self.row.length}."
            )
        if self.content_type is None and len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
        self.received += len(chunk)
        await self._judge_type(final=False)
        self._pieces.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self.uploads.flush_bytes:
            await self._flush()

    async def _judge_type(self, *, final: bool) -> None:
        """415 as soon as the first bytes are here (or the whole file, if shorter)."""
        if self.content_type is not None:
            return
        if len(self.head) < SNIFF_BYTES and not (final or self.offset == self.row.length):
            return
        try:
            # Judged as a one-shot upload's first bytes are (pipeline.allowed_type).
            self.content_type = await anyio.to_thread.run_sync(
                allowed_type, bytes(self.head), self.settings
            )
        except UnsupportedMediaType:
            with anyio.CancelScope(shield=True):
                await self._settle_quietly()
                await self.uploads._discard(self.row)
            raise

    async def _flush(self) -> None:
        await self._settle()
        if not self._buffered:
            return
        chunk = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces = []
        self._buffered = 0
        # Hashing and storage overlap with receiving the next chunk.
        self._inflight = asyncio.create_task(self._store(chunk))
        if time.monotonic() - self._renewed > self.uploads.lease_seconds / 3:
            self._renewed = time.monotonic()
            await self.uploads._renew(self.row.id, self.token, self.uploads.lease_seconds)

    async def _store(self, chunk: bytes) -> None:
        appender = self.appender
        if appender.writes_in_thread:
            # One worker-thread call for the hashes and the write (as the pipeline does).
            await anyio.to_thread.run_sync(self._digest_and_write, appender, chunk)
        else:
            await anyio.to_thread.run_sync(self._digest, chunk)
            await appender.write(chunk)

    def _digest_and_write(self, appender: Appender, chunk: bytes) -> None:
        self._digest(chunk)
        appender.write_blocking(chunk)

    def _digest(self, chunk: bytes) -> None:
        if self.request_hash is not None:
            self.request_hash.update(chunk)
        self.hasher.update(chunk)

    async def _settle(self) -> None:
        if self._inflight is not None:
            task, self._inflight = self._inflight, None
            await task

    async def _settle_quietly(self) -> None:
        if self._inflight is not None:
            task, self._inflight = self._inflight, None
            await asyncio.wait({task})

    async def _keep_partial(self) -> None:
        try:
            await self._settle()
            if self.checksum is not None or not self.received:
                return
            await self._flush()
            await self._settle()
            if self.offset == self.row.length:
                return  # whole, but the client left: it will see offset < length and resend
            await self._judge_type(final=False)
            await self._record()
        except Exception as exc:
            logger.info("kept nothing of an interrupted request to upload %s: %s", self.row.id, exc)

    async def _record(self) -> None:
        state = await self.appender.persist()
        async with self.uploads.sessions() as session:
            result = await session.execute(
                update(ResumableUpload)
                .where(ResumableUpload.id == self.row.id, ResumableUpload.lease_token == self.token)
                .values(
                    offset=self.offset,
                    hash_state=self.hasher.state(),
                    head=bytes(self.head),
                    content_type=self.content_type,
                    backend_state=json.dumps(state),
                    lease_token=None,  # released with the new offset: one statement
                    lease_until=None,
                )
                .execution_options(synchronize_session=False)
            )
            await session.commit()
        if getattr(result, "rowcount", 0) != 1:
            raise UploadLocked("This request lost its hold on the upload; retry.")
        self.released = True

    async def _complete(self) -> Progress:
        """The last byte is here: checks, the object in place, the file's row instead of ours."""
        await self._judge_type(final=True)
        assert self.content_type is not None
        # Completing on S3 may read for minutes; the image check decodes the whole file.
        await self.uploads._renew(self.row.id, self.token, 3600)
        sha256 = self.hasher.hexdigest()
        expected = self.row.expected_sha256
        if expected is not None and expected != sha256:
            await self.uploads._discard(self.row)
            raise ChecksumMismatch(details={"expected": expected, "received": sha256})
        storage = self.uploads.storage
        try:
            await self.appender.finish()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.uploads._discard(self.row)
                await storage.delete(self.row.storage_key)
            raise
        keys = [self.row.storage_key]  # what goes unless the file is recorded
        try:
            file = await self._swap_rows(await self._stored_file(sha256, keys))
        except crud.CommitOutcomeUnknown as exc:
            # As the pipeline's record(): the commit may have landed before its
            # answer was lost; bytes go only when the file's row is known absent.
            with anyio.CancelScope(shield=True):
                recorded = await self._recorded()
                if recorded is False:
                    for key in keys:
                        await storage.delete(key)
                    await self.uploads._discard(self.row)
            if recorded:
                await self._drop_assembled(keys)
                return Progress(self.offset, self.row.expires_at, complete=True)  # it landed
            raise (exc.__cause__ or exc) from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                for key in keys:
                    await storage.delete(key)
                await self.uploads._discard(self.row)
            raise
        await self._drop_assembled(keys)
        return Progress(self.offset, self.row.expires_at, complete=True, file=file)

    async def _stored_file(self, sha256: str, keys: list[str]) -> StoredFile:
        """The file's row: the assembled bytes, image-checked; or their stripped copy.

        With FILESVC_STRIP_METADATA the assembled bytes pass once more through
        the one-shot pipeline's receiver (its stripper keeps state that cannot
        move between the requests and processes of an upload), into the file's
        own key; the stored ``sha256`` and ``size`` are then the copy's.
        """
        row = self.row
        assert self.content_type is not None
        storage = self.uploads.storage
        if self.settings.strip_metadata and MetadataStripper.for_type(self.content_type):
            receiver = FileReceiver(
                self.settings,
                storage,
                filename=row.filename,
                file_id=row.id,
                decode_budget=self.uploads.decode_budget,
            )
            async with receiver:
                async for chunk in await storage.open_reader(row.storage_key):
                    await receiver.feed(chunk)
                keys.append(receiver.key)  # committed by finish(): it goes on a failure after
                file = await receiver.finish()
        else:
            dimensions = None
            if self.content_type in RASTER_IMAGE_TYPES:
                budget = self.uploads.decode_budget
                dimensions = await check_image(
                    storage, row.storage_key, self.content_type, self.settings, budget
                )
            file = file_row(
                row.id,
                row.storage_key,
                row.filename,
                self.content_type,
                size=row.length,
                sha256=sha256,
                dimensions=dimensions,
            )
        file.visibility = row.visibility
        file.created_at = _now()
        return file

    async def _drop_assembled(self, keys: list[str]) -> None:
        """The assembled bytes, once a stripped copy of them is the file."""
        if len(keys) > 1:
            with anyio.CancelScope(shield=True):
                await self.uploads.storage.delete(keys[0])

    async def _recorded(self) -> bool | None:
        """Whether the file's row exists; None when the database cannot say."""
        present = await recorded_ids(self.uploads.sessions, [self.row.id])
        return None if present is None else bool(present)

    async def _swap_rows(self, file: StoredFile) -> StoredFile:
        row = self.row
        async with self.uploads.sessions() as session:
            result = await session.execute(
                delete(ResumableUpload).where(
                    ResumableUpload.id == row.id, ResumableUpload.lease_token == self.token
                )
            )
            if getattr(result, "rowcount", 0) != 1:
                raise UploadLocked("This request lost its hold on the upload; retry.")
            # The upload's row goes in the same transaction as the file's comes.
            [recorded] = await crud.add_files(session, [file])
        self.released = True
        return recorded


async def check_image(
    storage: Storage, key: str, content_type: str, settings: Settings, budget: DecodeBudget
) -> tuple[int, int]:
    """Decode a stored image as one-shot uploads do (422 when it is not valid).

    The bytes are read back from storage: an image decoder's state cannot move
    between processes, and images are bounded by the pixel limit.
    """
    probe = ImageProbe(content_type, settings.max_image_pixels, budget)
    finishing = False
    try:
        async for chunk in await storage.open_reader(key):
            await anyio.to_thread.run_sync(probe.feed, chunk)
            if probe.error is not None:
                break
        finishing = True
        return await anyio.to_thread.run_sync(probe.finish)
    finally:
        if not finishing:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(probe.abandon)


def open_uploads(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    storage: Storage,
    decode_budget: DecodeBudget,
) -> Uploads:
    """The resumable uploads over the app's long-lived parts (built by the lifespan)."""
    from filesvc.storage.resumable_stores import create_resumable_store

    store = create_resumable_store(settings, storage)
    return Uploads(settings, sessions, storage, store, decode_budget)
