"""What every scenario gets: options, directories, the process registry, the report."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.perf.harness import FILESVC, PYTHON, MiB, Processes, Server, free_port
from tests.perf.report import Report

#: Settings every filesvc under test gets: PDFs allowed (the upload payload), big files.
FILESVC_ENV = {
    "FILESVC_ALLOWED_TYPES": "application/pdf,image/jpeg,image/png,image/gif,image/webp",
    "FILESVC_MAX_UPLOAD_BYTES": str(4096 * MiB),
}


@dataclass
class Bench:
    quick: bool
    runs: int
    #: Inputs kept from one bench run to the next (big files, databases, datasette).
    cache: Path
    #: This run's scratch directory, removed at the end.
    work: Path
    processes: Processes
    report: Report

    def scratch(self, name: str) -> Path:
        """A fresh directory for one server or one measurement."""
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def filesvc(self, name: str, env: dict[str, str] | None = None) -> Server:
        """``filesvc serve`` (one worker) on a fresh data directory; not started yet."""
        data = self.scratch(name)
        port = free_port()
        return Server(
            "filesvc",
            [FILESVC, "serve", "--port", str(port), "--workers", "1"],
            port=port,
            log=data / "serve.log",
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("FILESVC_")},
                "FILESVC_DATA_DIR": str(data / "data"),
                **FILESVC_ENV,
                **(env or {}),
            },
            ready_path="/healthz",
        )

    def uvicorn(self, name: str, app: str, env: dict[str, str]) -> Server:
        """A baseline app of :mod:`tests.perf.baseline_apps` under uvicorn, one worker."""
        directory = self.scratch(name)
        port = free_port()
        return Server(
            name,
            [PYTHON, "-m", "uvicorn", f"tests.perf.baseline_apps:{app}", "--port", str(port)],
            port=port,
            log=directory / "uvicorn.log",
            env=env,
            ready_path="/healthz" if app in ("upload_app", "bare_upload_app") else "/files/",
        )


def sha256_of(path: Path) -> str:
    """The file's SHA-256, remembered beside it (inputs are big and made once)."""
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists() and sidecar.stat().st_mtime >= path.stat().st_mtime:
        return sidecar.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(8 * MiB):
            digest.update(chunk)
    sidecar.write_text(digest.hexdigest())
    return digest.hexdigest()


def pdf_payload(cache: Path, size: int) -> Path:
    """``size`` bytes that start as a PDF and go on as random data, made once."""
    path = cache / f"upload-{size // MiB}MiB.pdf"
    if path.exists() and path.stat().st_size == size:
        return path
    print(f"  making {path} …", flush=True)
    head = b"%PDF-1.7\n%bench\n"
    temp = path.with_suffix(".tmp")
    with temp.open("wb") as file:
        file.write(head)
        left = size - len(head)
        while left > 0:
            step = min(left, 8 * MiB)
            file.write(os.urandom(step))
            left -= step
    temp.replace(path)
    return path
