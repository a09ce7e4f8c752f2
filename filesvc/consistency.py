"""Finding (and repairing) disagreement between the file records and the stored bytes.

Two kinds of damage can exist after crashes or manual meddling:

- a **row without bytes** (listed, but its URL would fail): with ``fix`` the
  row is deleted;
- **bytes without a row** (stored but unreachable, still billed): with ``fix``
  the object is deleted — but only once it is older than the grace period,
  because an upload in progress commits its bytes a moment before its row;
- **unfinished writes** (an S3 multipart upload, a local temp file) that a
  crashed process left: with ``fix`` they are aborted, again only once older
  than the grace period (an upload in progress is one too). The start-up
  sweep does the same, but only when a process starts.

Resumable (tus) uploads in progress are counted; those past their expiry are
reported and, with ``fix``, swept with their bytes (S3: the multipart upload
and the staged bytes), as the service itself sweeps them when it meets them.
Their multipart uploads are not unfinished writes: they outlive the grace.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from filesvc.models import ResumableUpload, StoredFile
from filesvc.storage import ObjectNotFound, Storage, UnfinishedWrite
from filesvc.storage.resumable import ResumableStore
from filesvc.variants import original_key_of

#: Rows read from the database per batch while scanning.
BATCH_ROWS = 5000


@dataclass(slots=True)
class Report:
    rows_checked: int = 0
    objects_checked: int = 0
    rows_without_bytes: list[str] = field(default_factory=list)  # file ids
    bytes_without_row: list[str] = field(default_factory=list)  # storage keys
    young_unrecorded: int = 0  # bytes without a row, but maybe an upload in progress
    unfinished_uploads: int = 0  # resumable uploads in progress, expired ones included
    expired_uploads: list[str] = field(default_factory=list)  # their ids
    unfinished_writes: list[UnfinishedWrite] = field(default_factory=list)  # past the grace
    young_unfinished: int = 0  # unfinished writes within the grace: maybe in progress
    fixed: int = 0

    @property
    def clean(self) -> bool:
        damage = (
            self.rows_without_bytes
            or self.bytes_without_row
            or self.expired_uploads
            or self.unfinished_writes
        )
        return not damage


async def _recorded_keys(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[tuple[str, str]]:
    async with sessions() as session:
        result = await session.stream(
            select(StoredFile.id, StoredFile.storage_key).execution_options(yield_per=BATCH_ROWS)
        )
        async for file_id, key in result:
            yield file_id, key


async def _exists(storage: Storage, key: str) -> bool:
    try:
        await storage.stat(key)
    except ObjectNotFound:
        return False
    return True


async def check(
    sessions: async_sessionmaker[AsyncSession],
    storage: Storage,
    *,
    grace_seconds: float,
    fix: bool = False,
    resumable: ResumableStore | None = None,
) -> Report:
    """Compare every row with every stored object; repair when ``fix``."""
    report = Report()
    stored: set[str] = set()
    async for key in storage.iter_keys():
        stored.add(key)
    report.objects_checked = len(stored)

    recorded: set[str] = set()
    uploads = await _resumable_uploads(sessions)
    report.unfinished_uploads = len(uploads)
    now = datetime.now(UTC)
    for upload in uploads:
        if resumable is not None:
            recorded.update(resumable.staging_keys(upload.id))
        if upload.expires_at <= now:
            report.expired_uploads.append(upload.id)
    async for file_id, key in _recorded_keys(sessions):
        report.rows_checked += 1
        recorded.add(key)
        # Re-check: an upload may have committed after the listing above.
        if key not in stored and not await _exists(storage, key):
            report.rows_without_bytes.append(file_id)

    # A variant belongs to its original's row; one whose original is gone is an orphan.
    unrecorded = {key for key in stored - recorded if original_key_of(key) not in recorded}
    cutoff = time.time() - grace_seconds
    for key in sorted(unrecorded):
        try:
            info = await storage.stat(key)
        except ObjectNotFound:
            continue  # deleted meanwhile
        if info.modified is not None and info.modified > cutoff:
            report.young_unrecorded += 1
            continue
        report.bytes_without_row.append(key)

    async for write in storage.iter_unfinished():
        if write.started > cutoff:
            report.young_unfinished += 1
        else:
            report.unfinished_writes.append(write)

    if fix:
        report.fixed = await _repair(sessions, storage, report)
        if resumable is not None:
            expired = [u for u in uploads if u.id in set(report.expired_uploads)]
            report.fixed += await _sweep_uploads(sessions, resumable, expired)
    return report


async def _resumable_uploads(
    sessions: async_sessionmaker[AsyncSession],
) -> list[ResumableUpload]:
    async with sessions() as session:
        return list((await session.scalars(select(ResumableUpload))).all())


async def _sweep_uploads(
    sessions: async_sessionmaker[AsyncSession],
    resumable: ResumableStore,
    uploads: list[ResumableUpload],
) -> int:
    """Expired uploads: bytes first, then the row (a failure leaves a row to retry)."""
    for upload in uploads:
        await resumable.discard(upload.id, upload.storage_key, json.loads(upload.backend_state))
        async with sessions() as session:
            await session.execute(delete(ResumableUpload).where(ResumableUpload.id == upload.id))
            await session.commit()
    return len(uploads)


async def _repair(
    sessions: async_sessionmaker[AsyncSession], storage: Storage, report: Report
) -> int:
    fixed = 0
    if report.rows_without_bytes:
        async with sessions() as session:
            for start in range(0, len(report.rows_without_bytes), BATCH_ROWS):
                ids = report.rows_without_bytes[start : start + BATCH_ROWS]
                await session.execute(delete(StoredFile).where(StoredFile.id.in_(ids)))
            await session.commit()
        fixed += len(report.rows_without_bytes)
    for key in report.bytes_without_row:
        await storage.delete(key)
        fixed += 1
    for write in report.unfinished_writes:
        await storage.discard_unfinished(write)
        fixed += 1
    return fixed
