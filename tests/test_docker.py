"""The container image, checked without a Docker engine: lint, and agreement with the docs."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx

from tests.conftest import require
from tests.processes import free_port
from tests.servers import LiveServer

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    result = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(keyword: str) -> list[str]:
    [args] = [rest for kw, rest in final_stage() if kw == keyword]
    value = json.loads(args)  # exec form: signals reach the process, no shell in between
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    require(hadolint.exists(), "hadolint is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_the_command_the_readme_documents() -> None:
    command = shlex.join(exec_form("ENTRYPOINT") + exec_form("CMD"))
    assert command == "filesvc serve --host 0.0.0.0"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"The image runs `{command}`" in readme


def test_the_console_script_exists() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["filesvc"] == "filesvc.cli:main"
    [entry] = importlib.metadata.entry_points(group="console_scripts", name="filesvc")
    assert entry.value == "filesvc.cli:main"
    assert callable(entry.load())
    assert (Path(sys.executable).parent / "filesvc").exists()


def test_slim_multi_stage_non_root_with_a_data_volume() -> None:
    steps = instructions()
    bases = [rest.split()[0] for kw, rest in steps if kw == "FROM"]
    assert len(bases) >= 2, "multi-stage: build tools stay out of the runtime image"
    assert all(base.startswith(("python:3.11-slim", "python:3.12-slim")) for base in bases)
    final = final_stage()
    [user] = [rest for kw, rest in final if kw == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    assert any(kw == "ENV" and "FILESVC_DATA_DIR=/data" in rest for kw, rest in final)
    assert ("VOLUME", '["/data"]') in final
    assert ("EXPOSE", "8000") in final
    copies = [rest for kw, rest in steps if kw == "COPY"]
    assert not any(rest.split()[0] == "." for rest in copies), "copy only what the image needs"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "data", ".env", "tests"} <= ignored


def _healthcheck_code() -> str:
    [check] = [rest for kw, rest in final_stage() if kw == "HEALTHCHECK"]
    _, _, command = check.partition("CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    code: str = argv[2]
    ast.parse(code)
    assert "/healthz" in code and ":8000/" in code
    return code


def test_healthcheck_probes_healthz(tmp_path: Path) -> None:
    """The HEALTHCHECK one-liner exits 0 against a live service and 1 when nothing answers."""
    from filesvc.config import Settings

    code = _healthcheck_code()
    server = LiveServer(Settings(_env_file=None, data_dir=tmp_path / "data"))
    server.start()
    try:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        healthy = subprocess.run(
            [sys.executable, "-c", code.replace(":8000/", f":{server.port}/")], timeout=30
        )
    finally:
        server.stop()
    down = subprocess.run(
        [sys.executable, "-c", code.replace(":8000/", f":{free_port()}/")],
        capture_output=True,
        timeout=30,
    )
    assert healthy.returncode == 0
    assert down.returncode == 1
