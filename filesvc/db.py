"""Database engine, sessions and migrations.

SQLite (the embedded default) runs in WAL mode with a busy timeout so that
concurrent uploads wait for the write lock instead of failing with
"database is locked". PostgreSQL goes through asyncpg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from filesvc.config import Settings

#: What a request or a readiness probe says when the tables are not there.
SCHEMA_MISSING = "The database has no schema yet: run `filesvc migrate`."
#: PostgreSQL's undefined_table.
_UNDEFINED_TABLE = "42P01"

#: Milliseconds SQLite waits for a competing writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: The newest migration (alembic's head, which a test checks): a database already
#: there is recognised with one SELECT, without importing alembic, whose modules
#: would otherwise stay in a serving process's memory for good.
HEAD_REVISION = "0002"


def create_engine(settings: Settings) -> AsyncEngine:
    url = settings.effective_database_url
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        pool_timeout=10,
        # command_timeout bounds each fetch of a server-side cursor too: a large
        # sorted export's first fetch may legitimately take minutes.
        connect_args={"timeout": 5, "command_timeout": settings.database_command_timeout},
    )


def is_schema_missing(exc: BaseException) -> bool:
    """The database answered, but a table the service needs is not there (unmigrated)."""
    if not isinstance(exc, DBAPIError):
        return False
    if getattr(exc.orig, "sqlstate", None) == _UNDEFINED_TABLE:
        return True
    return "no such table" in str(exc.orig)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), revision)


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` over the engine's own connection."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (alembic's version table); None when unmigrated."""
    async with engine.connect() as connection:
        try:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
        except DBAPIError as exc:
            if is_schema_missing(exc):
                return None
            raise
        return result.scalar_one_or_none()


async def migrate_if_behind(engine: AsyncEngine) -> None:
    """Start-up's migration: nothing to import or run when the schema is at the head."""
    if await current_revision(engine) != HEAD_REVISION:
        await migrate(engine)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()
