"""The ``filesvc`` command as scripts run it: help, exit codes, one-line failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import FILESVC, free_port

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def filesvc(
    *args: str,
    data_dir: Path,
    timeout: float = 60,
    extra_env: dict[str, str] | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FILESVC_", "PROMETHEUS_"))}
    return subprocess.run(
        [FILESVC, *args],
        env={**clean, "FILESVC_DATA_DIR": str(data_dir), **env, **(extra_env or {})},
        cwd=data_dir.parent,  # no stray .env
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_the_commands_and_the_exit_codes(tmp_path: Path) -> None:
    result = filesvc("--help", data_dir=tmp_path / "data")
    assert result.returncode == EXIT_OK
    for command in ("serve", "migrate", "check", "export"):
        assert command in result.stdout
    assert "exit codes:" in result.stdout and "invalid FILESVC_* setting" in result.stdout


@pytest.mark.parametrize("command", ["serve", "migrate", "check", "export"])
def test_each_command_has_help(tmp_path: Path, command: str) -> None:
    result = filesvc(command, "--help", data_dir=tmp_path / "data")
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.startswith(f"usage: filesvc {command}")
    assert "exit codes:" in result.stdout


@pytest.mark.parametrize(
    "args",
    [[], ["bogus"], ["serve", "--workers", "0"], ["serve", "--port", "70000"], ["migrate", "-x"]],
)
def test_bad_usage_exits_2(tmp_path: Path, args: list[str]) -> None:
    result = filesvc(*args, data_dir=tmp_path / "data")
    assert result.returncode == EXIT_USAGE, result
    assert "usage: filesvc" in result.stderr


@pytest.mark.parametrize(
    "args", [["serve"], ["serve", "--workers", "2"], ["migrate"], ["migrate", "--check"]]
)
def test_a_bad_setting_stops_start_up_with_one_line_naming_it(
    tmp_path: Path, args: list[str]
) -> None:
    result = filesvc(*args, data_dir=tmp_path / "data", FILESVC_MAX_UPLOAD_BYTES="-5")
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("filesvc: invalid setting FILESVC_MAX_UPLOAD_BYTES: ")
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_an_empty_signing_key_is_refused(tmp_path: Path) -> None:
    # An empty HMAC key would let anyone sign a URL to any private file.
    result = filesvc("migrate", "--check", data_dir=tmp_path / "data", FILESVC_SIGNING_KEY="")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.startswith("filesvc: invalid setting FILESVC_SIGNING_KEY: ")


def test_check_of_a_database_without_the_schema_exits_1_without_a_traceback(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "filesvc.db").touch()  # an empty SQLite file: a database without tables
    result = filesvc("check", data_dir=data)
    assert result.returncode == EXIT_FAILED
    assert result.stderr.startswith("filesvc: database error: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args", [["check"], ["check", "--fix"], ["migrate", "--check"], ["export", "files"]]
)
def test_commands_where_no_database_is_refuse_without_creating_one(
    tmp_path: Path, args: list[str]
) -> None:
    """Run in the wrong directory (no settings), a command must not create ./data/filesvc.db."""
    data = tmp_path / "data"
    result = filesvc(*args, data_dir=data)
    assert result.returncode == EXIT_FAILED, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("filesvc: no database at ")
    assert "FILESVC_DATABASE_URL" in lines[0] and "FILESVC_DATA_DIR" in lines[0]
    assert not data.exists()


def test_migrate_creates_the_embedded_database_and_says_where(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = filesvc("migrate", data_dir=data)
    assert result.returncode == EXIT_OK, result.stderr
    assert f"created {data.resolve() / 'filesvc.db'}" in result.stdout
    assert (data / "filesvc.db").is_file()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FILESVC_DATABASE_URL": "notaurl"}, "FILESVC_DATABASE_URL"),
        ({"FILESVC_DATABASE_URL": "mysql://u@h/db"}, "FILESVC_DATABASE_URL"),
        ({"FILESVC_INCOMPLETE_UPLOAD_GRACE": "60"}, "FILESVC_INCOMPLETE_UPLOAD_GRACE"),
        ({"FILESVC_SEND_TIMEOUT": "0"}, "FILESVC_SEND_TIMEOUT"),
    ],
)
@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["check"]])
def test_settings_that_cannot_work_are_one_line(
    tmp_path: Path, env: dict[str, str], variable: str, command: list[str]
) -> None:
    result = filesvc(*command, data_dir=tmp_path / "data", extra_env=env)
    assert result.returncode == EXIT_USAGE, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("filesvc: invalid setting ") and variable in lines[0], lines
    assert "Traceback" not in result.stderr


def test_h11_head_limit_needs_h11(tmp_path: Path) -> None:
    result = filesvc("serve", "--h11-max-incomplete-event-size", "8192", data_dir=tmp_path / "data")
    assert result.returncode == EXIT_USAGE
    assert "--http h11" in result.stderr


def test_serve_exits_1_when_a_worker_fails_after_the_start_up_check(tmp_path: Path) -> None:
    """The parent's check passes; the workers then fail (here: an app that never starts).
    uvicorn stops them all and returns: the command must not exit 0."""
    data = tmp_path / "data"
    code = (
        "import sys, filesvc.server, filesvc.cli; "
        "filesvc.server.APP_IMPORT_STRING = 'tests.crashing_app:app'; "
        "sys.exit(filesvc.cli.main(sys.argv[1:]))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FILESVC_", "PROMETHEUS_"))}
    result = subprocess.run(
        [sys.executable, "-c", code, "serve", "--port", str(free_port()), "--workers", "2"],
        env={**clean, "FILESVC_DATA_DIR": str(data)},
        cwd=Path(__file__).resolve().parent.parent,  # tests.crashing_app importable by workers
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_FAILED, result.stderr
    last = json.loads(result.stderr.splitlines()[-1])
    assert "failed to start after the start-up check" in last["message"], last


def test_migrate_check_then_migrate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "filesvc.db").touch()  # an empty database
    behind = filesvc("migrate", "--check", data_dir=data)
    assert behind.returncode == EXIT_FAILED, behind.stderr
    assert behind.stdout.startswith("database at empty, code at ")
    migrated = filesvc("migrate", data_dir=data)
    assert migrated.returncode == EXIT_OK, migrated.stderr
    current = filesvc("migrate", "--check", data_dir=data)
    assert current.returncode == EXIT_OK, current.stderr


def test_migrate_with_the_database_down_exits_1(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://filesvc:secret@127.0.0.1:{free_port()}/filesvc"
    result = filesvc("migrate", data_dir=tmp_path / "data", FILESVC_DATABASE_URL=url)
    assert result.returncode == EXIT_FAILED
    assert "database unreachable" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_that_cannot_start_exits_1_with_json_lines(tmp_path: Path, workers: str) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    result = filesvc(
        "serve", "--port", str(free_port()), "--workers", workers, data_dir=blocker, timeout=90
    )
    assert result.returncode == EXIT_FAILED, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # all JSON
    assert any(line["level"] == "error" for line in lines)
    assert result.stdout == ""


def test_export_to_a_file_never_writes_through_a_planted_partial_name(tmp_path: Path) -> None:
    """The partial file gets a random name, created exclusively: a symlink planted
    at a predictable one (`.out.csv.part`) cannot redirect the export's bytes."""
    data = tmp_path / "data"
    assert filesvc("migrate", data_dir=data).returncode == EXIT_OK
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".out.csv.part").symlink_to(victim)
    result = filesvc("export", "files", "-o", str(tmp_path / "out.csv"), data_dir=data)
    assert result.returncode == EXIT_OK, result.stderr
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.csv").read_text().startswith("id,")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".out.csv.part",
        "data",
        "out.csv",
        "victim",
    ]
