"""Finding (or installing) the baselines' and clients' programs.

Debian packages (nginx, wrk, sqlite3, curl) are installed with apt-get when
the bench runs as root and they are missing; otherwise the bench says what to
install. Datasette goes into a venv of its own under the cache directory, so
that it never changes the project's environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.perf.harness import Missing

#: Program → Debian package.
PACKAGES = {"nginx": "nginx", "wrk": "wrk", "sqlite3": "sqlite3", "curl": "curl"}
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
_apt_updated = False


def program(name: str) -> str:
    """The path of ``name``, installing its Debian package if it is missing and we can."""
    found = _which(name)
    if found:
        return found
    package = PACKAGES.get(name, name)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"  installing {package} (apt-get) for the bench …", flush=True)
        global _apt_updated
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            if not _apt_updated:
                subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
                _apt_updated = True
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", package], check=True, env=env, timeout=900
            )
        except (subprocess.SubprocessError, OSError) as exc:
            raise Missing(
                f"{name} is missing and `apt-get install {package}` failed: {exc}"
            ) from exc
        found = _which(name)
        if found:
            return found
    raise Missing(f"{name} is missing: install it (Debian: apt-get install {package})")


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def datasette(cache: Path) -> str:
    """``datasette`` from a venv under ``cache``, created on first use."""
    venv = cache / "datasette-venv"
    binary = venv / "bin" / "datasette"
    if binary.exists():
        return str(binary)
    print(f"  installing datasette into {venv} …", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "datasette"],
            check=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        raise Missing(
            f"datasette could not be installed ({exc}): "
            f"python3 -m venv {venv} && {venv}/bin/pip install datasette"
        ) from exc
    return str(binary)
