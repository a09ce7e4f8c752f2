"""Fixtures: settings on tmp_path, the databases to run against, a live server.

Tests that need PostgreSQL (127.0.0.1:5432, trust auth, database ``test``)
skip with a loud reason when it is absent, and fail instead under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from filesvc.config import Settings
from tests.servers import LiveServer

# moto's S3 server and per-test buckets: the `moto_server` and `s3_bucket` fixtures.
pytest_plugins = ["tests.s3server"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
POSTGRES_ADMIN_URL = os.environ.get(
    "FILESVC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def require(condition: bool, reason: str) -> None:
    """Skip loudly when a needed service is missing; in CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(f"SKIPPED LOUDLY: {reason}")


async def _admin(sql: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated, dropped at the end."""
    name = f"filesvc_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, Exception) as exc:  # asyncpg raises OSError or its own errors
        require(False, f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {exc}")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"

    from sqlalchemy.ext.asyncio import create_async_engine

    from filesvc.db import migrate

    async def setup() -> None:
        engine = create_async_engine(url)
        await migrate(engine)
        await engine.dispose()

    asyncio.run(setup())
    yield url
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _truncate(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as connection:
            await connection.execute(text("TRUNCATE files"))
        await engine.dispose()

    asyncio.run(run())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """'' (the embedded SQLite default) or a clean PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("postgres_url")
    _truncate(url)
    return url


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage_backend(request: pytest.FixtureRequest) -> str:
    """'local' (disk under tmp_path) or 's3' (a fresh bucket on moto's server)."""
    return str(request.param)


@pytest.fixture
def storage_settings(storage_backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings values that select the storage backend of this test."""
    if storage_backend == "s3":
        from tests.s3server import S3Bucket

        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        return bucket.settings()
    return {"storage": "local"}


def _runs_elsewhere(item: pytest.Item) -> bool:
    """Whether ``item`` is a combination of database and storage not worth running.

    S3 runs with SQLite only: PostgreSQL × S3 would double the slowest runs for
    no new path. Tests marked ``embedded`` run on SQLite and local disk only,
    tests marked ``sqlite_only`` on SQLite with each storage.
    """
    params = getattr(getattr(item, "callspec", None), "params", {})
    database, storage = params.get("database_url"), params.get("storage_backend")
    if item.get_closest_marker("embedded") is not None:
        return database not in (None, "sqlite") or storage not in (None, "local")
    if item.get_closest_marker("sqlite_only") is not None:
        return database not in (None, "sqlite")
    return database == "postgres" and storage == "s3"


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio, as the service does."""
    return "asyncio"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    dropped = [item for item in items if _runs_elsewhere(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = {id(item) for item in dropped}
        items[:] = [item for item in items if id(item) not in gone]


def embedded_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings on the embedded defaults (SQLite, local disk) under ``tmp_path``."""
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "auto_migrate": True}
    values.update(overrides)
    return Settings(_env_file=None, **values)


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(
    tmp_path: Path, database_url: str, storage_settings: dict[str, Any]
) -> SettingsFactory:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "auto_migrate": True,
            **storage_settings,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def make_server(make_settings: SettingsFactory) -> Iterator[ServerFactory]:
    """Start a live server with settings overrides; stopped at the end of the test."""
    started: list[LiveServer] = []

    def make(**overrides: Any) -> LiveServer:
        server = LiveServer(make_settings(**overrides))
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> LiveServer:
    return make_server()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
