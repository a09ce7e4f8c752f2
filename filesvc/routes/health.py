"""Liveness and readiness.

``/healthz`` answers from memory: the process is up and its event loop turns.
``/readyz`` asks the database and the storage, both at once and each within
:data:`READY_TIMEOUT`, and answers 503 naming what failed. Its messages never
carry a password: failures are rendered through :func:`describe_failure`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from filesvc.config import Settings
from filesvc.db import SCHEMA_MISSING, is_schema_missing
from filesvc.deps import ResourcesDep
from filesvc.errors import RETRY_AFTER_SECONDS, DatabaseUnavailable, FilesvcError, error_body
from filesvc.logs import redact

router = APIRouter(tags=["operations"])

#: Seconds each readiness probe may take.
READY_TIMEOUT = 2.0
#: What the database probe runs: cheap, and fails when the schema is missing.
PROBE_QUERY = text("SELECT 1 FROM files LIMIT 1")
#: Longest failure description in a readiness answer.
MAX_MESSAGE_CHARS = 300
_NO_STORE = {"Cache-Control": "no-store"}
# Probes that overran their deadline, kept referenced until they end on their own.
_abandoned: set[asyncio.Task[None]] = set()


@router.get("/healthz", summary="The process is alive", response_model=None)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"}, headers=_NO_STORE)


@router.get(
    "/readyz",
    summary="Database and storage are reachable",
    response_model=None,
    responses={503: {"description": "Not ready: `details.checks` names what failed."}},
)
async def readyz(resources: ResourcesDep) -> JSONResponse:
    names = ("database", "storage")
    outcomes = await asyncio.gather(
        probe(lambda: check_database(resources.engine), READY_TIMEOUT),
        probe(resources.storage.check, READY_TIMEOUT),
    )
    secrets = secrets_of(resources.settings)
    checks = {
        name: "ok" if failure is None else f"unavailable: {describe_failure(failure, secrets)}"
        for name, failure in zip(names, outcomes, strict=True)
    }
    failed = [name for name, failure in zip(names, outcomes, strict=True) if failure is not None]
    if failed:
        body = error_body(
            "not_ready", f"Unavailable: {', '.join(failed)}.", details={"checks": checks}
        )
        headers = {**_NO_STORE, "Retry-After": str(RETRY_AFTER_SECONDS)}
        return JSONResponse(body, status_code=503, headers=headers)
    return JSONResponse({"status": "ok", "checks": checks}, headers=_NO_STORE)


async def check_database(engine: AsyncEngine) -> None:
    """Query the files table: the database answers and holds the schema."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        await _check_sqlite_file(url)
        return
    try:
        async with engine.connect() as connection:
            await connection.execute(PROBE_QUERY)
    except DBAPIError as exc:
        if is_schema_missing(exc):
            raise DatabaseUnavailable(SCHEMA_MISSING) from exc
        raise


async def _check_sqlite_file(url: URL) -> None:
    # Pooled SQLite connections keep using the file they opened even after it was
    # deleted, replaced or overwritten (an open inode, pages in cache): only a new
    # connection sees what is at the path now, which is what a restart would get.
    assert url.database is not None
    if not await anyio.to_thread.run_sync(os.path.isfile, url.database):
        raise FileNotFoundError(f"no database file at {url.database}")
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.execute(PROBE_QUERY)
    except DBAPIError as exc:
        if is_schema_missing(exc):
            raise DatabaseUnavailable(SCHEMA_MISSING) from exc
        raise
    finally:
        await engine.dispose()


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
