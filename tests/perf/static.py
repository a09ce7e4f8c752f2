"""Static GETs under wrk: a 50 KiB JPEG and a 10 MiB file, filesvc against nginx and StaticFiles.

The same bytes are served by all three: filesvc from an upload (its public
``url``), nginx and Starlette's ``StaticFiles`` from a directory. wrk runs
``-t2 -c64`` for 10 s (5 s with ``--quick``); any non-2xx answer or socket
error fails the scenario.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import httpx
from PIL import Image

from tests.perf.context import Bench, pdf_payload
from tests.perf.harness import MiB, Missing, Server, Spread, run_checked
from tests.perf.nginx import Nginx
from tests.perf.report import Row
from tests.perf.tools import program

JPEG_BYTES = 50 * 1024
BIG_BYTES = 10 * MiB
THREADS, CONNECTIONS = 2, 64


def jpeg_payload(cache: Path, target: int = JPEG_BYTES) -> Path:
    """A real JPEG of about ``target`` bytes (noise, so it does not compress away)."""
    path = cache / f"static-{target // 1024}KiB.jpg"
    if path.exists():
        return path
    side, data = 64, b""
    while len(data) < target:
        side += 8
        image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=75)
        data = buffer.getvalue()
    path.write_bytes(data)
    return path


def wrk(url: str, seconds: int) -> tuple[float, float]:
    """Requests/s and the 99th percentile latency (ms) of one wrk run."""
    out = run_checked(
        [
            program("wrk"),
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "--latency",
            url,
        ],
        timeout=seconds + 60,
        what=f"wrk {url}",
    )
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures on {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if match is None or p99 is None:
        raise RuntimeError(f"unreadable wrk output:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return float(match.group(1)), float(p99.group(1)) * scale


def run(bench: Bench) -> None:
    program("wrk")
    seconds = 5 if bench.quick else 10
    results: dict[str, dict[str, Spread]] = {}
    for label, payload in (
        ("50 KiB JPEG", jpeg_payload(bench.cache)),
        ("10 MiB file", pdf_payload(bench.cache, BIG_BYTES)),
    ):
        size = payload.stat().st_size
        scenario = f"static {label}"
        root = bench.scratch(f"static-root-{size}")
        (root / payload.name).write_bytes(payload.read_bytes())
        filesvc = bench.filesvc(f"filesvc-static-{size}")
        servers: list[tuple[str, Server]] = [("filesvc", filesvc)]
        try:
            servers.append(
                ("nginx", Nginx(bench.scratch(f"nginx-static-{size}"), static_root=root))
            )
        except Missing as exc:
            print(f"  no nginx baseline: {exc}", flush=True)
        plain = bench.uvicorn(f"staticfiles-{size}", "static_app", {"BENCH_STATIC_DIR": str(root)})
        servers.append(("StaticFiles", plain))
        with bench.processes.running(*(server for _, server in servers)):
            urls = {name: f"{server.url}/files/{payload.name}" for name, server in servers}
            urls["filesvc"] = filesvc.url + _upload(filesvc, payload)
            for url in urls.values():
                _check_same_bytes(url, payload)
            rates: dict[str, list[float]] = {name: [] for name in urls}
            tails: dict[str, list[float]] = {name: [] for name in urls}
            for _ in range(bench.runs):
                for name, url in urls.items():
                    rate, p99 = wrk(url, seconds)
                    rates[name].append(rate)
                    tails[name].append(p99)
            results[label] = {}
            for name, server in servers:
                spread = Spread.of(rates[name])
                results[label][name] = spread
                tail = Spread.of(tails[name])
                note = f"{size * spread.median / 1e6:,.0f} MB/s, p99 {tail.median:.1f} ms"
                bench.report.add(
                    Row(scenario, name, "GET", spread, "req/s", server.peak_rss_bytes(), note)
                )
    small = results["50 KiB JPEG"]
    bench.report.versus(
        "static 50 KiB",
        "≥ 5× Starlette StaticFiles req/s",
        small["filesvc"],
        small.get("StaticFiles"),
        "StaticFiles",
        5,
        f"{small['filesvc'].median:,.0f} req/s",
    )
    big = results["10 MiB file"]
    bench.report.versus(
        "static 10 MiB",
        "≥ 0.7× nginx MB/s",
        big["filesvc"],
        big.get("nginx"),
        "nginx",
        0.7,
        f"{BIG_BYTES * big['filesvc'].median / 1e6:,.0f} MB/s",
    )


def _upload(server: Server, payload: Path) -> str:
    with payload.open("rb") as file:
        response = httpx.post(
            f"{server.url}/api/v1/files",
            files={"file": (payload.name, file)},
            timeout=120,
        )
    response.raise_for_status()
    url: str = response.json()["url"]
    return url


def _check_same_bytes(url: str, payload: Path) -> None:
    response = httpx.get(url, timeout=60)
    if response.status_code != 200 or response.content != payload.read_bytes():
        raise RuntimeError(f"{url} does not serve {payload.name}: {response.status_code}")
