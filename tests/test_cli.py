"""The ``filesvc`` command as scripts run it: help, exit codes, one-line failures."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.processes import FILESVC, free_port

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def filesvc(
    *args: str, data_dir: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FILESVC_", "PROMETHEUS_"))}
    return subprocess.run(
        [FILESVC, *args],
        env={**clean, "FILESVC_DATA_DIR": str(data_dir), **env},
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
    result = filesvc("check", data_dir=tmp_path / "data")
    assert result.returncode == EXIT_FAILED
    assert result.stderr.startswith("filesvc: database error: ")
    assert "Traceback" not in result.stderr


def test_migrate_check_then_migrate(tmp_path: Path) -> None:
    data = tmp_path / "data"
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
