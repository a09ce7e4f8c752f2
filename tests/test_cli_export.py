"""``filesvc export``: the same bytes as the HTTP route, to a file or stdout."""

from __future__ import annotations

import os
import pty
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from filesvc.cli import main
from filesvc.config import Settings
from tests.conftest import ServerFactory, SettingsFactory
from tests.tables import MIXED_COLUMNS, MIXED_CSV, create_big, create_mixed, execute


@pytest.fixture
def storage_backend() -> str:
    return "local"


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    settings = make_settings(export_tables=["mixed"])
    create_mixed(settings)
    return settings


def environment(settings: Settings) -> dict[str, str]:
    return {
        "FILESVC_DATA_DIR": str(settings.data_dir),
        "FILESVC_DATABASE_URL": settings.database_url,
        "FILESVC_EXPORT_TABLES": ",".join(settings.export_tables),
        "FILESVC_AUTO_MIGRATE": "true",
    }


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The settings as FILESVC_* variables, for `main()` here and for subprocesses."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    variables = environment(settings)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **variables}


def run(
    *args: str, env: dict[str, str], stderr: int = subprocess.PIPE, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "filesvc.cli", "export", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_export_to_a_file(env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    assert main(["export", "mixed", "-o", str(target)]) == 0
    assert target.read_bytes() == MIXED_CSV.encode()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_export_parquet_to_a_file(env: dict[str, str], tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    target = tmp_path / "out.parquet"
    assert main(["export", "mixed", "--format", "parquet", "-o", str(target)]) == 0
    table = pq.read_table(target)
    assert table.column_names == list(MIXED_COLUMNS)
    assert str(table.schema.field("at").type).startswith("timestamp[us")  # zoned on PostgreSQL
    assert str(table.schema.field("qty").type) == "int64"
    assert table.column("id").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("note").to_pylist()[1] == 'say "hi", ok'  # no formula guard, no quoting


def test_the_options_give_what_the_route_gives(
    env: dict[str, str], tmp_path: Path, settings: Settings, make_server: ServerFactory
) -> None:
    target = tmp_path / "out.csv"
    code = main(
        [
            "export",
            "mixed",
            "--columns",
            "note,id,label",
            "--order-by=-qty",
            "--filter",
            "qty__gte=0",
            "--filter",
            "label__isnull=false",
            "--limit",
            "2",
            "--bom",
            "--delimiter",
            "semicolon",
            "--no-header",
            "--no-formula-escape",
            "-o",
            str(target),
        ]
    )
    assert code == 0
    server = make_server(export_tables=["mixed"])
    params = {
        "columns": "note,id,label",
        "order_by": "-qty",
        "qty__gte": "0",
        "label__isnull": "false",
        "limit": "2",
        "bom": "true",
        "delimiter": "semicolon",
        "header": "false",
        "formula_escape": "false",
    }
    with httpx.Client(base_url=server.url, headers={"Accept-Encoding": "identity"}) as http:
        expected = http.get("/api/v1/exports/mixed.csv", params=params).content
    assert target.read_bytes() == expected
    assert expected == '\ufeff-negative text;5;żółć 🎉\r\n"line1\nline2";1;plain\r\n'.encode()


def test_export_to_stdout(env: dict[str, str]) -> None:
    result = run("mixed", "-o", "-", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == MIXED_CSV.encode()
    assert result.stderr == b""  # no progress line unless stderr is a terminal


def test_a_progress_line_on_a_terminal(env: dict[str, str], make_settings: SettingsFactory) -> None:
    create_big(make_settings(), 20_000)
    variables = {**env, "FILESVC_EXPORT_TABLES": "big"}
    main_fd, terminal = pty.openpty()
    try:
        result = run("big", "-o", os.devnull, env=variables, stderr=terminal)
        # Written to as the device it is, never replaced by a renamed file.
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
        os.close(terminal)
        terminal = -1
        output = b""
        while True:
            try:
                data = os.read(main_fd, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not data:
                break
            output += data
    finally:
        os.close(main_fd)
        if terminal >= 0:
            os.close(terminal)
    assert result.returncode == 0
    assert b"20,000 rows" in output and b"rows/s" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], b"no dataset named 'nope'"),
        (["mixed", "--filter", "qty=abc"], b"'qty' needs an integer"),
        (["mixed", "--filter", "qty"], b"COLUMN[__OP]=VALUE"),
        (["mixed", "--columns", "id,nope"], b"no column 'nope'"),
        (["mixed", "--limit", "-1"], b"'limit'"),
    ],
)
def test_a_bad_request_is_exit_2(env: dict[str, str], args: list[str], message: bytes) -> None:
    result = run(*args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == b""


def test_an_unreachable_database_is_exit_1(env: dict[str, str], tmp_path: Path) -> None:
    down = {**env, "FILESVC_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:9/nowhere"}
    result = run("files", "-o", str(tmp_path / "out.csv"), env=down)
    assert result.returncode == 1
    assert result.stderr.startswith(b"filesvc: ")
    assert not (tmp_path / "out.csv").exists()


def test_a_failure_mid_export_leaves_no_file_and_is_exit_1(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", export_tables=["broken"])
    # A value the driver cannot decode, far enough in that CSV has been written before it.
    execute(
        settings,
        "CREATE TABLE broken (id INTEGER PRIMARY KEY, name TEXT)",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
        "INSERT INTO broken SELECT i, CASE WHEN i = 4000 THEN CAST(x'ff' AS TEXT) "
        "ELSE 'row ' || i END FROM n",
    )
    target = tmp_path / "out.csv"
    result = run(
        "broken", "-o", str(target), env={**os.environ, **environment(settings)}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert b"database error" in result.stderr
    assert list(tmp_path.glob("*.csv*")) == [] and list(tmp_path.glob(".out.csv*")) == []
