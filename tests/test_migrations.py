"""Start-up's migration: run apart from the serving process, recognised without alembic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from filesvc.db import HEAD_REVISION, head_revision

#: Run in a fresh interpreter: what a serving process holds after start-up.
SERVING_PROCESS = """
import asyncio, json, sys
from pathlib import Path
from filesvc.app import create_app
from filesvc.config import Settings
from filesvc.db import create_engine, current_revision
from filesvc.server import migrate_apart

settings = Settings(data_dir=Path(sys.argv[1]))
migrate_apart(settings)
after_migration = "alembic" in sys.modules
app = create_app(settings)

async def start_and_read() -> str | None:
    async with app.router.lifespan_context(app):
        pass
    engine = create_engine(settings)
    try:
        return await current_revision(engine)
    finally:
        await engine.dispose()

revision = asyncio.run(start_and_read())
print(json.dumps({"after_migration": after_migration, "after_start": "alembic" in sys.modules,
                  "revision": revision}))
"""


def _serving_process(data_dir: Path) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FILESVC_", "PROMETHEUS_"))}
    done = subprocess.run(
        [sys.executable, "-c", SERVING_PROCESS, str(data_dir)],
        env=clean,
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_head_revision_is_alembics_head() -> None:
    assert HEAD_REVISION == head_revision()


@pytest.mark.parametrize("runs", [1, 2])
def test_the_serving_process_migrates_without_holding_alembic(tmp_path: Path, runs: int) -> None:
    """A fresh database is migrated by a child process; a migrated one by nobody."""
    data = tmp_path / "data"
    for _ in range(runs):
        held = _serving_process(data)
        assert held == {"after_migration": False, "after_start": False, "revision": HEAD_REVISION}


def test_a_database_behind_the_head_is_migrated_at_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FILESVC_", "PROMETHEUS_"))}
    older = subprocess.run(
        [sys.executable, "-m", "filesvc", "migrate", "--revision", "0001"],
        env={**clean, "FILESVC_DATA_DIR": str(data)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert older.returncode == 0, older.stderr
    assert "migrated to 0001" in older.stdout
    assert _serving_process(data)["revision"] == HEAD_REVISION
