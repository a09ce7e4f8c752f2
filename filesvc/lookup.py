"""One file's record by id: the database read of every static URL request.

Static URLs are the hottest path of the service, and its one query is a
primary-key read. Through the ORM session and aiosqlite it costs ten times the
query itself (a thread round trip per cursor call, then a rollback when the
pooled connection goes back), so the embedded SQLite database is read here
through plain ``sqlite3`` (see :class:`SQLiteLookup`). Other databases go
through SQLAlchemy Core on the shared engine.

Nothing is cached between requests: every lookup asks the database, so a file
deleted through any process is gone from every process at once.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import bindparam, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from filesvc.config import Settings
from filesvc.db import SCHEMA_MISSING, SQLITE_BUSY_TIMEOUT_MS
from filesvc.errors import DatabaseUnavailable
from filesvc.models import StoredFile


@dataclass(frozen=True, slots=True)
class FileRecord:
    """What serving a file needs of its row."""

    id: str
    storage_key: str
    filename: str
    content_type: str
    size: int
    sha256: str
    visibility: str
    created_at: datetime


_COLUMNS = (
    StoredFile.id,
    StoredFile.storage_key,
    StoredFile.filename,
    StoredFile.content_type,
    StoredFile.size,
    StoredFile.sha256,
    StoredFile.visibility,
    StoredFile.created_at,
)


class FileLookup(ABC):
    @abstractmethod
    async def get(self, file_id: str) -> FileRecord | None:
        """The record of ``file_id``, or None when no file has this id."""

    async def aclose(self) -> None:
        return None


class EngineLookup(FileLookup):
    """SQLAlchemy Core on the service's engine (PostgreSQL and anything else)."""

    query = select(*_COLUMNS).where(StoredFile.id == bindparam("file_id"))

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def get(self, file_id: str) -> FileRecord | None:
        async with self.engine.connect() as connection:
            row = (await connection.execute(self.query, {"file_id": file_id})).first()
        return None if row is None else FileRecord(*row)


class SQLiteLookup(FileLookup):
    """Plain ``sqlite3`` connections in query-only mode, read on the event loop first.

    A primary-key read of a hot SQLite file takes microseconds: less than
    handing it to a worker thread costs, and far less than the GIL hand-offs
    of such hops under load. So it runs on the event loop on a connection
    whose busy timeout is zero: when another connection holds a lock that a
    reader must wait for (rare in WAL mode), it fails at once and the read is
    retried in a worker thread that may wait. Thread connections come from an
    idle list, one thread at a time each. SQLite sees every commit of other
    connections and processes, so reuse returns nothing stale.
    """

    #: Try the read on the event loop before a worker thread (see the class doc).
    read_on_loop = True
    sql = (
        f"SELECT {', '.join(c.key for c in _COLUMNS)} FROM {StoredFile.__tablename__} WHERE id = ?"
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self._loop_connection: sqlite3.Connection | None = None
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        connection = sqlite3.connect(
            f"file:{urllib.parse.quote(self.path)}",
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,  # one thread at a time, not always the same one
        )
        try:
            connection.execute("PRAGMA query_only = ON")
        except BaseException:
            connection.close()
            raise
        return connection

    def _query(self, connection: sqlite3.Connection, file_id: str) -> tuple[Any, ...] | None:
        try:
            row: tuple[Any, ...] | None = connection.execute(self.sql, (file_id,)).fetchone()
        except BaseException:
            connection.close()
            raise
        return row

    def _query_on_loop(self, file_id: str) -> tuple[Any, ...] | None:
        if self._loop_connection is None:
            self._loop_connection = self._connect(busy_timeout=0)
        try:
            return self._query(self._loop_connection, file_id)
        except BaseException:
            self._loop_connection = None  # closed by _query
            raise

    def _query_in_thread(
        self, connection: sqlite3.Connection | None, file_id: str
    ) -> tuple[sqlite3.Connection, tuple[Any, ...] | None]:
        connection = connection or self._connect(busy_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        return connection, self._query(connection, file_id)

    async def _read_in_thread(self, file_id: str) -> tuple[Any, ...] | None:
        idle = self._idle.pop() if self._idle else None
        connection, row = await anyio.to_thread.run_sync(self._query_in_thread, idle, file_id)
        if self._closed:
            connection.close()
        else:
            self._idle.append(connection)
        return row

    async def get(self, file_id: str) -> FileRecord | None:
        try:
            if self.read_on_loop and not self._closed:
                try:
                    row = self._query_on_loop(file_id)
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode not in _BUSY_CODES:
                        raise
                    row = await self._read_in_thread(file_id)  # it may wait for the lock
            else:
                row = await self._read_in_thread(file_id)
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                raise DatabaseUnavailable(SCHEMA_MISSING) from exc
            raise DatabaseUnavailable(f"The database failed: {exc}.") from exc
        if row is None:
            return None
        id_, key, filename, content_type, size, sha256, visibility, created_at = row
        moment = datetime.fromisoformat(created_at)  # stored naive, in UTC (models.UTCDateTime)
        return FileRecord(
            id_, key, filename, content_type, size, sha256, visibility, moment.replace(tzinfo=UTC)
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._loop_connection is not None:
            self._loop_connection.close()
            self._loop_connection = None
        while self._idle:
            self._idle.pop().close()


_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def create_lookup(settings: Settings, engine: AsyncEngine) -> FileLookup:
    """The cheapest lookup for the configured database."""
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return SQLiteLookup(url.database)
    return EngineLookup(engine)
