"""Readiness: is the database answering with its schema, is the storage usable?

Both are asked at once, each within :data:`READY_TIMEOUT`, and a failure is
described in one line that never carries a password (:func:`describe_failure`).
``routes/health.py`` only turns the outcome into HTTP.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import anyio
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from filesvc.config import Settings
from filesvc.db import SCHEMA_MISSING, is_schema_missing
from filesvc.errors import DatabaseUnavailable, FilesvcError
from filesvc.logs import redact
from filesvc.storage import Storage

#: Seconds each readiness probe may take.
READY_TIMEOUT = 2.0
#: What the database probe runs: cheap, and fails when the schema is missing.
PROBE_QUERY = text("SELECT 1 FROM files LIMIT 1")
#: Longest failure description in a readiness answer.
MAX_MESSAGE_CHARS = 300
# Probes that overran their deadline, kept referenced until they end on their own.
_abandoned: set[asyncio.Task[None]] = set()


async def readiness(
    engine: AsyncEngine, storage: Storage, settings: Settings
) -> tuple[dict[str, str], list[str]]:
    """Each dependency's state ("ok" or "unavailable: why"), and the names of those that failed."""
    names = ("database", "storage")
    outcomes = await asyncio.gather(
        probe(lambda: check_database(engine), READY_TIMEOUT),
        probe(storage.check, READY_TIMEOUT),
    )
    secrets = secrets_of(settings)
    checks = {
        name: "ok" if failure is None else f"unavailable: {describe_failure(failure, secrets)}"
        for name, failure in zip(names, outcomes, strict=True)
    }
    failed = [name for name, failure in zip(names, outcomes, strict=True) if failure is not None]
    return checks, failed


async def check_database(engine: AsyncEngine) -> None:
    """Query the files table: the database answers and holds the schema."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        await _check_sqlite_file(url)
        return
    await _query_files(engine)


async def _check_sqlite_file(url: URL) -> None:
    # Pooled SQLite connections keep using the file they opened even after it was
    # deleted, replaced or overwritten (an open inode, pages in cache): only a new
    # connection sees what is at the path now, which is what a restart would get.
    assert url.database is not None
    if not await anyio.to_thread.run_sync(os.path.isfile, url.database):
        raise FileNotFoundError(f"no database file at {url.database}")
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        await _query_files(engine)
    finally:
        await engine.dispose()


async def _query_files(engine: AsyncEngine) -> None:
    """Run :data:`PROBE_QUERY`; a missing schema is :class:`DatabaseUnavailable`."""
    try:
        async with engine.connect() as connection:
            await connection.execute(PROBE_QUERY)
    except DBAPIError as exc:
        if is_schema_missing(exc):
            raise DatabaseUnavailable(SCHEMA_MISSING) from exc
        raise


async def probe(check: Callable[[], Awaitable[None]], timeout: float) -> BaseException | None:
    """Run ``check``; its exception, a :class:`TimeoutError` past ``timeout``, or None.

    The deadline holds even when the check sits in a worker thread that cannot
    be cancelled (a hung disk): the check is then left to finish on its own.
    """

    async def run() -> None:
        await check()

    task = asyncio.ensure_future(run())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        return TimeoutError(f"no answer within {timeout:g} s")
    return task.exception()


def _forget(task: asyncio.Task[None]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold, to be masked wherever it might be echoed."""
    found = [
        value.get_secret_value()
        for name in type(settings).model_fields
        if isinstance(value := getattr(settings, name), SecretStr)
    ]
    found.extend(settings.api_keys)
    try:
        password = make_url(settings.effective_database_url).password
    except ArgumentError:
        password = None
    if password:
        found.append(str(password))
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def describe_failure(failure: BaseException, secrets: list[str]) -> str:
    """One line on what went wrong, with URL passwords and known secrets masked."""
    if isinstance(failure, FilesvcError):
        message = failure.message
    elif isinstance(failure, TimeoutError) and str(failure):
        message = f"timed out: {failure}"
    else:
        detail = str(failure).split("\n(Background on this error", 1)[0]
        message = f"{type(failure).__name__}: {detail}" if detail else type(failure).__name__
    message = redact(" ".join(message.split()))
    for secret in secrets:
        message = message.replace(secret, "***")
    return message[:MAX_MESSAGE_CHARS]
