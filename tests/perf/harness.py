"""Servers the bench starts, and the one place that stops them all.

Every server runs in a session (process group) of its own, so that a Ctrl-C
at the terminal reaches only the bench, which then stops each server it
started, children included, before it exits. SIGTERM is turned into the same
path. Peak memory is VmHWM from ``/proc/PID/status``: the most resident memory
a process has ever used, which is why each measurement that reports it gets a
freshly started server.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from tests.processes import free_port

MiB = 1024 * 1024
#: The repository root: servers run from here so that ``tests.perf`` imports.
REPO = Path(__file__).resolve().parents[2]
#: The Python of the bench (the project's venv): baselines run under the same one.
PYTHON = sys.executable
FILESVC = str(Path(sys.executable).parent / "filesvc")

__all__ = ["MiB", "REPO", "PYTHON", "FILESVC", "free_port"]


class Missing(Exception):
    """A tool a scenario needs is not installed and could not be; the message says what to do."""


class Skip(Exception):
    """A scenario (or one of its parts) cannot run here; the message says why."""


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no measurements")
        return cls(statistics.median(values), min(values), max(values), len(values))


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a process and its descendants: the largest of them (one worker each here)."""
    peak = 0
    for each in [pid, *descendants(pid)]:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            found.append(int(child))
            found.extend(descendants(int(child)))
    return found


class Server:
    """One server process, started in its own session and stopped with its whole group."""

    #: Seconds a server gets to start answering.
    start_timeout = 60.0
    #: Seconds it gets to stop after SIGTERM before SIGKILL.
    stop_timeout = 20.0

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        log: Path,
        env: dict[str, str] | None = None,
        ready_path: str = "/",
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.ready_path = ready_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited at start-up: {self.tail_log()}")
                try:
                    if client.get(self.url + self.ready_path).status_code < 500:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within {self.start_timeout:g} s")

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes(self.pid)

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        # Children that outlived their parent (a worker that ignored SIGTERM).
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Processes:
    """Every server the bench started: each is stopped on exit, error or Ctrl-C."""

    def __init__(self) -> None:
        self._servers: list[Server] = []

    def start(self, server: Server) -> Server:
        self._servers.append(server)
        server.start()
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self._servers:
            self._servers.remove(server)

    def stop_all(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    @contextmanager
    def running(self, *servers: Server) -> Iterator[None]:
        """Start ``servers`` (in order) and stop them when the block ends, however it ends."""
        try:
            for server in servers:
                self.start(server)
            yield
        finally:
            for server in reversed(servers):
                self.stop(server)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT end the bench the way Ctrl-C does, so that cleanup runs.

    SIGINT is set explicitly: a shell starting the bench in the background
    would otherwise leave it ignored, and ``kill -INT`` would do nothing.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def run_checked(argv: Sequence[str], *, timeout: float, what: str) -> str:
    """Run a client command; its stdout, or an error naming ``what`` failed."""
    result = subprocess.run(
        list(argv), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {stderr[-500:]}")
    return result.stdout.decode(errors="replace")


def settle_disk() -> None:
    """Write back dirty pages, so that one run's writeback does not slow the next."""
    os.sync()
