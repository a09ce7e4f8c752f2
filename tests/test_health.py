"""/healthz and /readyz against a live server: what an orchestrator's probes see."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from pydantic import SecretStr

from filesvc.readiness import describe_failure, probe, secrets_of
from tests.conftest import embedded_settings as _settings
from tests.images import make_image
from tests.processes import free_port
from tests.servers import LiveServer, running
from tests.waiting import HANG_SECONDS


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveServer, httpx.Client]]:
    with running(_settings(tmp_path)) as pair:
        yield pair


def test_healthz_answers_without_io(live: tuple[LiveServer, httpx.Client]) -> None:
    _, client = live
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"]
    assert client.head("/healthz").status_code == 200


def test_readyz_ok_names_each_check(live: tuple[LiveServer, httpx.Client]) -> None:
    _, client = live
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "storage": "ok"}}
    assert client.head("/readyz").status_code == 200


def _assert_not_ready(response: httpx.Response, failed: str) -> dict[str, str]:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    body = response.json()["error"]
    assert body["code"] == "not_ready"
    assert failed in body["message"]
    checks: dict[str, str] = body["details"]["checks"]
    assert checks[failed].startswith("unavailable: ")
    return checks


@pytest.mark.parametrize("damage", ["directory", "garbage", "empty", "deleted"])
def test_readyz_503_when_the_sqlite_file_is_damaged(
    live: tuple[LiveServer, httpx.Client], damage: str
) -> None:
    """Runs as root in CI, so chmod proves nothing: the file itself is replaced.

    The pool's open connections would go on reading the old file (an open
    inode, cached pages); readiness must look at what is at the path now.
    """
    server, client = live
    assert client.get("/readyz").status_code == 200
    database = server.data_dir / "filesvc.db"
    for path in server.data_dir.glob("filesvc.db*"):
        path.unlink()
    if damage == "directory":
        database.mkdir()
    elif damage == "garbage":
        database.write_bytes(os.urandom(64 * 1024))
    elif damage == "empty":
        database.write_bytes(b"")
    checks = _assert_not_ready(client.get("/readyz"), "database")
    assert checks["storage"] == "ok"


def test_readyz_503_when_local_storage_is_unusable(live: tuple[LiveServer, httpx.Client]) -> None:
    server, client = live
    root = server.data_dir / "files"
    shutil.rmtree(root, ignore_errors=True)
    root.write_bytes(b"not a directory")  # mkdir fails, as for root too
    checks = _assert_not_ready(client.get("/readyz"), "storage")
    assert checks["database"] == "ok"


def test_readyz_503_names_a_refusing_postgres_and_hides_its_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: connections are refused
    settings = _settings(
        tmp_path,
        database_url=f"postgresql+asyncpg://filesvc:pa55word-xyz@127.0.0.1:{port}/filesvc",
        auto_migrate=False,
    )
    with running(settings) as (_, client):
        response = client.get("/readyz")
    checks = _assert_not_ready(response, "database")
    assert checks["storage"] == "ok"
    assert "pa55word-xyz" not in response.text
    # Answered by the refusal itself, not by the probe's deadline running out.
    assert "refused" in checks["database"].lower(), checks


def test_probe_keeps_its_deadline_even_over_a_blocked_thread() -> None:
    """A hung disk blocks a worker thread that cannot be cancelled; the probe answers anyway."""

    released = threading.Event()  # the disk comes back only when the test says so
    finished = threading.Event()

    def blocked() -> None:
        released.wait(HANG_SECONDS)
        finished.set()

    async def hung() -> None:
        await anyio.to_thread.run_sync(blocked)

    async def fine() -> None:
        await asyncio.sleep(0)

    async def main() -> tuple[BaseException | None, BaseException | None, bool]:
        try:
            slow, quick = await asyncio.gather(probe(hung, 0.2), probe(fine, 0.2))
            return slow, quick, finished.is_set()
        finally:
            released.set()  # asyncio.run waits for the worker thread on the way out

    slow, quick, thread_had_finished = asyncio.run(main())
    assert isinstance(slow, TimeoutError)
    assert quick is None
    assert not thread_had_finished, "the probe waited for the blocked thread"


def test_failure_descriptions_mask_secrets(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        database_url="postgresql+asyncpg://u:db-secret-1@db.internal/x",
        signing_key=SecretStr("signing-secret-2"),
        api_keys={"api-secret-3": ["admin"]},
    )
    secrets = secrets_of(settings)
    failure = RuntimeError(
        "connect to postgresql://u:db-secret-1@db.internal/x failed; "
        "key signing-secret-2; api-secret-3;\n(Background on this error at: https://x)"
    )
    text = describe_failure(failure, secrets)
    for secret in ("db-secret-1", "signing-secret-2", "api-secret-3", "Background"):
        assert secret not in text
    assert text.startswith("RuntimeError: connect to postgresql://u:***@db.internal/x")


@pytest.fixture
def unmigrated_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database that answers: a fresh PostgreSQL database, or an empty SQLite file."""
    if request.param == "sqlite":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "empty.db").touch()
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'empty.db'}"
        return
    from tests.conftest import POSTGRES_ADMIN_URL, _admin, require

    name = f"filesvc_unmigrated_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # asyncpg raises OSError or its own errors
        require(False, f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {exc}")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize(
    "unmigrated_database",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_an_unmigrated_database_is_503_naming_migrate_never_500(
    tmp_path: Path, unmigrated_database: str
) -> None:
    settings = _settings(tmp_path, database_url=unmigrated_database, auto_migrate=False)
    with running(settings) as (_, client):
        checks = _assert_not_ready(client.get("/readyz"), "database")
        assert "filesvc migrate" in checks["database"], checks
        for response in (
            client.post("/api/v1/files?filename=a.png", content=make_image("image/png")),
            client.get("/api/v1/files"),
            client.get("/files/" + "a" * 32),
        ):
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert "filesvc migrate" in error["message"], error
            assert response.headers["retry-after"]
