"""``/healthz`` latency while a 1 GiB upload and a 1,000,000-row export run on the same worker.

A client on one keep-alive connection asks ``/healthz`` again and again (a
2 ms pause between answers) for as long as the upload and the export last;
p50 and p99 of each run, medians over the runs. The same client against the
idle server gives the floor.

Two hostile loads follow, each against a fresh server so that its peak RSS
(``VmHWM``) is its own, reported above the idle RSS:

- hostile headers: concurrent GETs of a static URL with multi-megabyte
  ``Range`` (a million members, and 100,000 repeated lines) and
  ``If-None-Match`` (a million tags) headers;
- decode flood: concurrent uploads of tiny JPEG and PNG files whose headers
  claim tens of megapixels (a few hundred bytes each).
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx

from tests.perf import exports
from tests.perf.context import Bench, pdf_payload
from tests.perf.harness import MiB, Spread
from tests.perf.report import Row
from tests.perf.tools import program

P99_LIMIT_MS = 50.0
PAUSE = 0.002
#: Targets of the hostile loads (issue 14): /healthz p99, and peak RSS above idle.
HOSTILE_P99_LIMIT_MS = 100.0
HOSTILE_RSS_LIMIT = 400 * MiB
#: Concurrent hostile clients, and the requests each sends per run.
HOSTILE_CLIENTS = 8
HOSTILE_REQUESTS = 6
#: Concurrent lying-image uploads, and the uploads each sends per run.
FLOOD_CLIENTS = 16
FLOOD_UPLOADS = 4


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


# --- hostile loads -------------------------------------------------------------------


def hostile_heads(path: str, etag: str) -> list[bytes]:
    """Request heads of a few megabytes each: what froze the event loop before issue 14."""
    head = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n".encode()
    return [
        head + b"Range: bytes=" + b"0-0," * 1_000_000 + b"\r\n\r\n",
        head + b"Range: bytes=0-0\r\n" + b"Range: 1-1\r\n" * 100_000 + b"\r\n",
        head + b"If-None-Match: " + b'"x", ' * 1_000_000 + etag.encode() + b"\r\n\r\n",
    ]


def _send_and_read(port: int, request: bytes) -> int:
    """Send one raw request, read the answer to the end; the status code."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the head was sent in full (431): read the answer
        try:
            while chunk := sock.recv(1 << 20):
                data += chunk
        except ConnectionResetError:
            pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def lying_images() -> list[tuple[str, bytes]]:
    """Tiny files whose headers claim about 36 megapixels (under the 40 MP default limit)."""
    from tests.images import make_image

    side = 6000
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * side), 9))  # one row of data
        + _png_chunk(b"IEND", b"")
    )
    jpeg = bytearray(make_image("image/jpeg"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return [("lie.png", png), ("lie.jpg", bytes(jpeg))]


def current_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _drive(
    load: Callable[[], object], finished: threading.Event, failure: list[BaseException]
) -> None:
    try:
        load()
    except BaseException as exc:  # reported after the probe ends
        failure.append(exc)
    finally:
        finished.set()


def _under_load(
    bench: Bench, name: str, prepare: Callable[[str], Callable[[], object]]
) -> tuple[list[float], list[int], list[float], int, int]:
    """Run ``prepare(url)()`` once per run on a fresh server, probing /healthz meanwhile.

    Returns the p99s, request counts and p50s per run, the idle RSS and the peak RSS.
    """
    server = bench.filesvc(name)
    p99s: list[float] = []
    p50s: list[float] = []
    counts: list[int] = []
    with bench.processes.running(server):
        idle_rss = current_rss_bytes(server.pid)
        load = prepare(server.url)
        for _ in range(bench.runs):
            finished = threading.Event()
            failure: list[BaseException] = []
            worker = threading.Thread(target=_drive, args=(load, finished, failure))
            worker.start()
            latencies = healthz_until(server.port, finished.is_set, 600)
            worker.join()
            if failure:
                raise RuntimeError(f"{name}: the load failed") from failure[0]
            p99s.append(percentile(latencies, 0.99))
            p50s.append(statistics.median(latencies))
            counts.append(len(latencies))
        peak = server.peak_rss_bytes()
    return p99s, counts, p50s, idle_rss, peak


def _hostile_headers(url: str) -> Callable[[], object]:
    stored = httpx.post(
        f"{url}/api/v1/files?filename=h.png", content=_small_png(), timeout=60
    ).json()
    port = int(url.rsplit(":", 1)[1])
    heads = hostile_heads("/files/" + stored["id"], f'"{stored["sha256"]}"')

    def load() -> None:
        jobs = [heads[i % len(heads)] for i in range(HOSTILE_CLIENTS * HOSTILE_REQUESTS)]
        with ThreadPoolExecutor(HOSTILE_CLIENTS) as pool:
            statuses = list(pool.map(partial(_send_and_read, port), jobs))
        # 431 once FILESVC_MAX_HEADER_BYTES refuses the head unparsed; 200 under a larger limit.
        if any(status not in (200, 431) for status in statuses):
            raise RuntimeError(f"hostile headers answered {sorted(set(statuses))}")

    return load


def _small_png() -> bytes:
    from tests.images import make_image

    return make_image("image/png", (64, 64), noise=True)


def _decode_flood(url: str) -> Callable[[], object]:
    images = lying_images()

    def upload(index: int) -> int:
        name, data = images[index % len(images)]
        response = httpx.post(f"{url}/api/v1/files?filename={name}", content=data, timeout=120)
        return response.status_code

    def load() -> None:
        with ThreadPoolExecutor(FLOOD_CLIENTS) as pool:
            statuses = list(pool.map(upload, range(FLOOD_CLIENTS * FLOOD_UPLOADS)))
        # 422 (the data cannot fill the header's size) or 503 (decode budget full) are
        # the bounded answers; a 201 or a 500 is not.
        if any(status not in (422, 503) for status in statuses):
            raise RuntimeError(f"lying images answered {sorted(set(statuses))}")

    return load


def run_hostile(bench: Bench) -> None:
    loads = {
        "hostile headers": (
            _hostile_headers,
            f"{HOSTILE_CLIENTS} clients × {HOSTILE_REQUESTS} GETs with 4 MB Range / "
            "If-None-Match headers",
        ),
        "decode flood": (
            _decode_flood,
            f"{FLOOD_CLIENTS} clients × {FLOOD_UPLOADS} uploads of ~36 MP lying JPEG/PNG headers",
        ),
    }
    for label, (prepare, what) in loads.items():
        p99s, counts, p50s, idle, peak = _under_load(
            bench, "filesvc-" + label.replace(" ", "-"), prepare
        )
        above = max(0, peak - idle)
        bench.report.add(
            Row(
                f"/healthz under {label}",
                "filesvc",
                "p99 latency",
                Spread.of(p99s),
                "ms",
                peak,
                f"p50 {statistics.median(p50s):.1f} ms; {statistics.median(counts):.0f} "
                f"requests per run during {what}; peak RSS {above / MiB:.0f} MiB above idle "
                f"({idle / MiB:.0f} MiB)",
            )
        )
        p99 = statistics.median(p99s)
        bench.report.verdict(
            f"/healthz during {label}",
            f"p99 < {HOSTILE_P99_LIMIT_MS:.0f} ms, peak RSS < "
            f"{HOSTILE_RSS_LIMIT / MiB:.0f} MiB above idle",
            f"p99 {p99:.1f} ms, peak RSS {above / MiB:.0f} MiB above idle",
            p99 < HOSTILE_P99_LIMIT_MS and above < HOSTILE_RSS_LIMIT,
        )
