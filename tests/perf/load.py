"""Load: 50 concurrent uploads of distinct images and 8 concurrent ranged downloads.

Run against SQLite and against PostgreSQL (127.0.0.1:5432, user postgres,
trust; a scratch database is created, migrated with ``filesvc migrate`` and
dropped afterwards). Every upload's SHA-256 is checked against the bytes
sent, every range against the same slice of the file, and every upload must
be listed afterwards; any 5xx or "database is locked" in the server's log is
an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import secrets
import statistics
import subprocess
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from PIL import Image

from tests.perf.context import Bench, pdf_payload
from tests.perf.harness import FILESVC, MiB, Server, Skip, Spread
from tests.perf.report import Row
from tests.perf.responsiveness import percentile

CONCURRENT_UPLOADS = 50
RANGED_CLIENTS = 8
RANGE_BYTES = 1 * MiB
BIG_FILE_BYTES = 64 * MiB
POSTGRES_ADMIN = os.environ.get("FILESVC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@dataclass
class Outcome:
    seconds: float = 0.0
    upload_ms: list[float] = field(default_factory=list)
    range_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def timed(
        self, what: str, request: Awaitable[httpx.Response], times_ms: list[float]
    ) -> httpx.Response | None:
        """The response, its time added to ``times_ms``; None (an error noted) on failure."""
        started = time.perf_counter()
        try:
            response = await request
        except httpx.HTTPError as exc:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return None
        times_ms.append((time.perf_counter() - started) * 1000)
        return response


def make_images(count: int) -> list[bytes]:
    """Distinct JPEGs (random noise) of about 40 KB each."""
    images = []
    for _ in range(count):
        image = Image.frombytes("RGB", (160, 120), os.urandom(160 * 120 * 3))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


async def hammer(server: Server, images: list[bytes], big: bytes, big_url: str) -> Outcome:
    outcome = Outcome()
    limits = httpx.Limits(max_connections=CONCURRENT_UPLOADS + RANGED_CLIENTS)
    gate = asyncio.Semaphore(CONCURRENT_UPLOADS)
    uploads_done = asyncio.Event()

    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120) as client:

        async def upload(index: int, data: bytes) -> None:
            files = {"file": (f"image-{index}.jpg", data, "image/jpeg")}
            async with gate:
                sent = client.post("/api/v1/files", files=files)
                response = await outcome.timed(f"upload {index}", sent, outcome.upload_ms)
            if response is None:
                return
            if response.status_code != 201:
                outcome.errors.append(f"upload {index}: {response.status_code} {response.text}")
            elif response.json()["sha256"] != hashlib.sha256(data).hexdigest():
                outcome.errors.append(f"upload {index}: wrong sha256")

        async def ranged(seed: int) -> None:
            pick = random.Random(seed)
            while not uploads_done.is_set():
                start = pick.randrange(0, len(big) - RANGE_BYTES)
                header = {"Range": f"bytes={start}-{start + RANGE_BYTES - 1}"}
                got = client.get(big_url, headers=header)
                response = await outcome.timed(f"range {start}", got, outcome.range_ms)
                if response is None:
                    continue
                if response.status_code != 206:
                    outcome.errors.append(f"range {start}: {response.status_code}")
                elif response.content != big[start : start + RANGE_BYTES]:
                    outcome.errors.append(f"range {start}: wrong bytes")

        async def all_uploads() -> None:
            try:
                await asyncio.gather(*(upload(i, data) for i, data in enumerate(images)))
            finally:
                uploads_done.set()

        started = time.perf_counter()
        await asyncio.gather(all_uploads(), *(ranged(seed) for seed in range(RANGED_CLIENTS)))
        outcome.seconds = time.perf_counter() - started
    return outcome


def _upload_big(server: Server, data: bytes) -> str:
    response = httpx.post(
        f"{server.url}/api/v1/files",
        files={"file": ("big.pdf", data, "application/pdf")},
        timeout=120,
    )
    response.raise_for_status()
    url: str = response.json()["url"]
    if httpx.head(server.url + url, timeout=30).status_code == 404:
        raise Skip("static URLs (GET /files/{id}/{name}) are not served by this build")
    return url


def _listed(server: Server) -> int:
    count, cursor = 0, None
    with httpx.Client(base_url=server.url, timeout=60) as client:
        while True:
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/v1/files", params=params).raise_for_status().json()
            count += len(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return count


def run_on(bench: Bench, server: Server, label: str) -> None:
    uploads_per_round = 100 if bench.quick else 200
    big = pdf_payload(bench.cache, BIG_FILE_BYTES).read_bytes()
    rates: list[float] = []
    outcomes: list[Outcome] = []
    with bench.processes.running(server):
        big_url = _upload_big(server, big)
        for _ in range(bench.runs):
            images = make_images(uploads_per_round)
            outcome = asyncio.run(hammer(server, images, big, big_url))
            outcomes.append(outcome)
            rates.append(len(outcome.upload_ms) / outcome.seconds)
        listed = _listed(server)
        rss = server.peak_rss_bytes()
    errors = [error for outcome in outcomes for error in outcome.errors]
    expected = 1 + uploads_per_round * bench.runs
    if listed != expected:
        errors.append(f"{listed} files listed, {expected} uploaded")
    log = server.log.read_text(errors="replace")
    if "database is locked" in log.lower():
        errors.append("'database is locked' in the server log")
    server_errors = sum(1 for line in log.splitlines() if '"status": 5' in line)
    if server_errors:
        errors.append(f"{server_errors} 5xx answers in the server log")
    uploads = [ms for outcome in outcomes for ms in outcome.upload_ms]
    ranges = [ms for outcome in outcomes for ms in outcome.range_ms]
    figures = (
        f"upload p50 {statistics.median(uploads):.0f} ms, p99 {percentile(uploads, 0.99):.0f} ms; "
        f"{len(ranges)} ranged GETs, p50 {statistics.median(ranges):.0f} ms, "
        f"p99 {percentile(ranges, 0.99):.0f} ms; errors {len(errors)}"
    )
    bench.report.add(
        Row(f"load {label}", "filesvc", "uploads/s", Spread.of(rates), "uploads/s", rss, figures)
    )
    for error in errors[:10]:
        print(f"  error: {error}", flush=True)
    bench.report.verdict(
        f"load {label}",
        f"{CONCURRENT_UPLOADS} concurrent uploads + {RANGED_CLIENTS} ranged downloads: "
        "every sha256 and range right, all listed, no 'database is locked', no 5xx",
        f"{statistics.median(rates):.0f} uploads/s, {figures}",
        not errors,
    )


def run(bench: Bench) -> None:
    run_on(bench, bench.filesvc("filesvc-load-sqlite"), "SQLite")
    try:
        with postgres_database() as url:
            env = {"FILESVC_DATABASE_URL": url}
            server = bench.filesvc("filesvc-load-postgres", env)
            subprocess.run(
                [FILESVC, "migrate"], env=server.env, check=True, capture_output=True, timeout=120
            )
            run_on(bench, server, "PostgreSQL")
    except Skip as exc:
        bench.report.skip("load PostgreSQL", "no errors under load", str(exc))


@contextmanager
def postgres_database() -> Iterator[str]:
    """A scratch database, dropped afterwards; its SQLAlchemy URL."""
    import asyncpg

    name = f"filesvc_bench_{os.getpid()}_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(f"{POSTGRES_ADMIN}/postgres", timeout=5)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # asyncpg raises OSError or its own errors
        raise Skip(f"PostgreSQL at {POSTGRES_ADMIN} is not reachable: {exc}") from exc
    try:
        yield f"{POSTGRES_ADMIN.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
