"""Reading and writing file records."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from filesvc.errors import FileNotFound, InvalidRequest
from filesvc.models import FILE_ID, StoredFile


async def add_files(session: AsyncSession, rows: Sequence[StoredFile]) -> list[StoredFile]:
    """Record committed files in one transaction: all rows or none.

    Raises :class:`CommitOutcomeUnknown` when the failure (or a cancellation)
    struck during the commit itself, whose answer may have been lost after it
    took effect.
    """
    session.add_all(rows)
    await session.flush()
    try:
        await session.commit()
    except BaseException as exc:
        raise CommitOutcomeUnknown() from exc
    return list(rows)


class CommitOutcomeUnknown(Exception):
    """A commit failed in flight: its rows may or may not exist."""


async def existing_ids(session: AsyncSession, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` have a row."""
    rows = await session.scalars(select(StoredFile.id).where(StoredFile.id.in_(ids)))
    return set(rows)


async def get_file(session: AsyncSession, file_id: str) -> StoredFile:
    if not FILE_ID.fullmatch(file_id):  # never a query for what cannot be an id
        raise FileNotFound()
    row = await session.get(StoredFile, file_id)
    if row is None:
        raise FileNotFound()
    return row


async def delete_file(session: AsyncSession, row: StoredFile) -> None:
    await session.execute(delete(StoredFile).where(StoredFile.id == row.id))
    await session.commit()


def encode_cursor(row: StoredFile) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, file_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None or not isinstance(file_id, str):
            raise ValueError(cursor)
        moment = moment.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        raise InvalidRequest("The cursor is not one this service issued.") from exc
    return moment, file_id


async def list_files(
    session: AsyncSession,
    *,
    limit: int,
    cursor: str | None = None,
    content_type: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> tuple[list[StoredFile], str | None]:
    """One page, newest first, and the cursor of the next page (keyset pagination)."""
    query = select(StoredFile).order_by(StoredFile.created_at.desc(), StoredFile.id.desc())
    if cursor:
        moment, file_id = decode_cursor(cursor)
        query = query.where(
            or_(
                StoredFile.created_at < moment,
                and_(StoredFile.created_at == moment, StoredFile.id < file_id),
            )
        )
    if content_type:
        query = query.where(StoredFile.content_type == content_type)
    if created_after:
        query = query.where(StoredFile.created_at > created_after)
    if created_before:
        query = query.where(StoredFile.created_at < created_before)
    rows = list((await session.scalars(query.limit(limit + 1))).all())
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor
