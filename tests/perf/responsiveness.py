"""``/healthz`` latency while a 1 GiB upload and a 1,000,000-row export run on the same worker.

A client on one keep-alive connection asks ``/healthz`` again and again (a
2 ms pause between answers) for as long as the upload and the export last;
p50 and p99 of each run, medians over the runs. The same client against the
idle server gives the floor.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from functools import partial

import httpx

from tests.perf import exports
from tests.perf.context import Bench, pdf_payload
from tests.perf.harness import MiB, Spread
from tests.perf.report import Row
from tests.perf.tools import program

P99_LIMIT_MS = 50.0
PAUSE = 0.002


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def healthz_until(port: int, done: Callable[[], bool], limit: float) -> list[float]:
    """Latencies (ms) of sequential ``/healthz`` requests until ``done()`` or ``limit`` seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    deadline = time.monotonic() + limit
    try:
        while not done() and time.monotonic() < deadline:
            started = time.perf_counter()
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"/healthz answered {response.status}")
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(PAUSE)
    finally:
        connection.close()
    return latencies


def _finished(clients: list[subprocess.Popen[bytes]]) -> bool:
    return all(client.poll() is not None for client in clients)


def run(bench: Bench) -> None:
    payload = pdf_payload(bench.cache, 1024 * MiB)
    db = exports.database(bench, exports.ROWS)
    server = exports.filesvc_server(bench, db, "filesvc-responsiveness")
    export_path = f"/api/v1/exports/{exports.TABLE}.csv"
    curl = program("curl")
    p50s: list[float] = []
    p99s: list[float] = []
    counts: list[int] = []
    with bench.processes.running(server):
        has_export = httpx.get(f"{server.url}{export_path}?limit=1", timeout=30).is_success
        idle = healthz_until(server.port, lambda: False, 2.0)
        for _ in range(bench.runs):
            response = bench.work / "upload.json"
            clients = [
                subprocess.Popen(
                    [curl, "-sS", "-o", str(response), "-H", "Expect:"]
                    + ["-F", f"file=@{payload};type=application/pdf"]
                    + [f"{server.url}/api/v1/files"]
                )
            ]
            if has_export:
                clients.append(
                    subprocess.Popen([curl, "-sS", "-o", "/dev/null", server.url + export_path])
                )
            try:
                latencies = healthz_until(server.port, partial(_finished, clients), 600)
            finally:
                for client in clients:
                    if client.poll() is None:
                        client.kill()
                    client.wait()
            if any(client.returncode != 0 for client in clients):
                raise RuntimeError("the upload or the export failed under /healthz probing")
            stored = json.loads(response.read_text())
            httpx.delete(f"{server.url}/api/v1/files/{stored['id']}", timeout=60)
            p50s.append(statistics.median(latencies))
            p99s.append(percentile(latencies, 0.99))
            counts.append(len(latencies))
        rss = server.peak_rss_bytes()
    load = "1 GiB upload + 1 M-row export" if has_export else "1 GiB upload (no export route)"
    floor = f"idle: p50 {statistics.median(idle):.1f} ms, p99 {percentile(idle, 0.99):.1f} ms"
    bench.report.add(
        Row(
            "/healthz under load",
            "filesvc",
            "p99 latency",
            Spread.of(p99s),
            "ms",
            rss,
            f"p50 {statistics.median(p50s):.1f} ms; {statistics.median(counts):.0f} requests "
            f"per run during {load}; {floor}",
        )
    )
    p99 = statistics.median(p99s)
    bench.report.verdict(
        "/healthz during upload + export",
        f"p99 < {P99_LIMIT_MS:.0f} ms",
        f"p99 {p99:.1f} ms (p50 {statistics.median(p50s):.1f} ms) during {load}",
        p99 < P99_LIMIT_MS if has_export else None,
    )
