"""Schemathesis against a live ``filesvc serve`` and its own ``/openapi.json``.

Every check runs (``--checks all``): no 5xx, every status, content type,
header and body as documented, 401 without the key, ``Allow`` on 405, and
the rest. Bounded: ``MAX_EXAMPLES`` per operation and phase, a fixed seed
(``FILESVC_FUZZ_SEED`` picks another), about half a minute per database.
What a schema cannot express is configured in ``tests/schemathesis.toml``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ServeProcess

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")
KEY = "fuzz-admin-key-4c1d9e"
#: Test cases per operation and phase: a few hundred requests in all.
MAX_EXAMPLES = 20
SEED = os.environ.get("FILESVC_FUZZ_SEED", "20261125")
#: The run's own limit, well inside CI's.
RUN_TIMEOUT = 300


@pytest.fixture
def serve(tmp_path: Path, database_url: str) -> Iterator[ServeProcess]:
    env = {
        "FILESVC_API_KEYS": json.dumps({KEY: ["admin"]}),
        "FILESVC_LOG_LEVEL": "warning",
        "FILESVC_AUTO_MIGRATE": "true",
    }
    if database_url:
        env["FILESVC_DATABASE_URL"] = database_url
    server = ServeProcess(tmp_path / "data", env=env).start()
    try:
        yield server
    finally:
        server.stop()


def _faults(log: Path) -> list[str]:
    """Server log lines at error level: an answered 5xx hides nothing, a logged one might."""
    if not log.exists():
        return []
    return [line for line in log.read_text().splitlines() if '"level": "error"' in line]


def test_openapi_fuzz(serve: ServeProcess, tmp_path: Path) -> None:
    command = [
        SCHEMATHESIS,
        "--config-file",
        str(CONFIG),
        "run",
        f"{serve.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--generation-with-security-parameters",
        "false",
        "--no-color",
    ]
    environment = {**os.environ, "NO_COLOR": "1"}
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    output = result.stdout + result.stderr
    summary = "\n".join(output.splitlines()[-25:])
    assert result.returncode == 0, f"schemathesis found failures (seed {SEED}):\n{output[-20000:]}"
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None and int(generated.group(1)) >= 100, summary
    tested = re.search(r"Tested: (\d+)", output)
    assert tested is not None and int(tested.group(1)) >= 10, summary
    faults = _faults(serve.log)
    assert not faults, "\n".join(faults[:5])
