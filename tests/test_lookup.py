"""filesvc.lookup: the static URLs' primary-key read, on every database."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from filesvc import crud
from filesvc.config import Settings
from filesvc.db import create_engine, create_session_factory, migrate
from filesvc.errors import DatabaseUnavailable
from filesvc.lookup import EngineLookup, FileLookup, SQLiteLookup, create_lookup
from filesvc.models import StoredFile

pytestmark = pytest.mark.anyio

CREATED_AT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
FILE_ID = "lookuplookuplookuplookup01"


@pytest.fixture
async def engine(tmp_path: Path, database_url: str) -> AsyncIterator[AsyncEngine]:
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=database_url)
    engine = create_engine(settings)
    await migrate(engine)
    row = StoredFile(
        id=FILE_ID,
        storage_key=f"aa/bbbb/{FILE_ID}",
        filename="ünï.png",
        content_type="image/png",
        size=12345,
        sha256="ab" * 32,
        width=3,
        height=4,
        visibility="private",
        created_at=CREATED_AT,
    )
    async with create_session_factory(engine)() as session:
        await crud.add_files(session, [row])
    yield engine
    await engine.dispose()


@pytest.fixture
async def lookup(
    engine: AsyncEngine, tmp_path: Path, database_url: str
) -> AsyncIterator[FileLookup]:
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=database_url)
    lookup = create_lookup(settings, engine)
    assert isinstance(lookup, SQLiteLookup if not database_url else EngineLookup)
    yield lookup
    await lookup.aclose()


async def test_a_record_by_id(lookup: FileLookup) -> None:
    record = await lookup.get(FILE_ID)
    assert record is not None
    assert (record.id, record.storage_key, record.filename) == (
        FILE_ID,
        f"aa/bbbb/{FILE_ID}",
        "ünï.png",
    )
    assert (record.content_type, record.size, record.sha256, record.visibility) == (
        "image/png",
        12345,
        "ab" * 32,
        "private",
    )
    assert record.created_at == CREATED_AT  # in UTC, whatever the database keeps
    assert await lookup.get("nosuchid") is None
    assert await lookup.get(FILE_ID) == record  # connections are reused


async def test_a_deleted_record_is_gone_at_once(lookup: FileLookup, engine: AsyncEngine) -> None:
    assert await lookup.get(FILE_ID) is not None
    async with create_session_factory(engine)() as session:
        await crud.delete_file(session, await crud.get_file(session, FILE_ID))
    assert await lookup.get(FILE_ID) is None


def plain_sqlite(path: Path) -> Path:
    """A files table as SQLite keeps it, without the service's WAL set-up."""
    with sqlite3.connect(path) as setup:
        setup.execute(
            "CREATE TABLE files (id, storage_key, filename, content_type, size, "
            "sha256, visibility, created_at)"
        )
        setup.execute(
            "INSERT INTO files VALUES (?, 'k', 'n', 't', 1, 's', 'public', "
            "'2026-01-02 03:04:05.000006')",
            (FILE_ID,),
        )
    setup.close()
    return path


async def test_a_locked_database_is_waited_for_in_a_thread_not_on_the_loop(
    tmp_path: Path,
) -> None:
    # WAL readers are never locked out; a rollback-journal database shows the fallback.
    path = plain_sqlite(tmp_path / "journal.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    lookup = SQLiteLookup(str(path))
    ticks = 0
    released = False

    async def tick() -> None:
        # The lock goes only once the loop has ticked ten times while the lookup
        # waits: a lookup that blocked the loop would never see it go.
        nonlocal ticks, released
        while True:
            ticks += 1
            if ticks == 10:
                holder.execute("COMMIT")
                released = True
            await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(tick)
            record = await lookup.get(FILE_ID)
            answered_after_the_release = released
            group.cancel_scope.cancel()
    finally:
        holder.close()
        await lookup.aclose()
    assert record is not None
    assert record.created_at == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert answered_after_the_release  # it waited for the lock, neither failing nor blocking


async def test_a_database_without_the_table_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    lookup = SQLiteLookup(str(path))
    try:
        with pytest.raises(DatabaseUnavailable):
            await lookup.get(FILE_ID)
        with pytest.raises(DatabaseUnavailable):  # and again, on a fresh connection
            await lookup.get(FILE_ID)
    finally:
        await lookup.aclose()


async def test_reads_go_to_threads_when_told_or_closed(tmp_path: Path) -> None:
    lookup = SQLiteLookup(str(plain_sqlite(tmp_path / "plain.db")))
    lookup.read_on_loop = False
    assert await lookup.get(FILE_ID) is not None
    await lookup.aclose()
    assert await lookup.get(FILE_ID) is not None  # still answers; keeps nothing open


async def test_in_memory_sqlite_uses_the_engine(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, database_url="sqlite+aiosqlite:///:memory:"
    )
    engine = create_engine(settings)
    assert isinstance(create_lookup(settings, engine), EngineLookup)
    await engine.dispose()
