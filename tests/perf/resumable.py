"""Resumable upload throughput: 1 GiB through tus in 8 MiB PATCHes against one raw upload.

Both uploads go to ``filesvc serve`` (one worker each, so each peak RSS is its
own) from the same httpx client in this process, reading the same payload in
8 MiB pieces: the one-shot upload as one streamed body, the tus upload as a
creation and one PATCH per piece. Each PATCH is a separate request that takes
the upload's lease, restores the SHA-256 state from the database, appends,
fsyncs and records the new offset, which is what the ratio prices.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.perf.context import Bench, pdf_payload, sha256_of
from tests.perf.harness import MiB, Spread, settle_disk
from tests.perf.report import Row, ratio, show_ratio

SIZE = 1024 * MiB
QUICK_SIZE = 256 * MiB
PATCH_BYTES = 8 * MiB
RSS_LIMIT = 100 * MiB
TIMEOUT = 600.0
TUS = {"Tus-Resumable": "1.0.0"}


def _pieces(payload: Path) -> Iterator[bytes]:
    with payload.open("rb") as file:
        while piece := file.read(PATCH_BYTES):
            yield piece


def one_shot(client: httpx.Client, url: str, payload: Path) -> tuple[float, str]:
    started = time.perf_counter()
    response = client.post(f"{url}/api/v1/files?filename=payload.pdf", content=_pieces(payload))
    seconds = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"one-shot upload answered {response.status_code}: {response.text}")
    body = response.json()
    return seconds, f"{body['id']}:{body['sha256']}"


def resumable(client: httpx.Client, url: str, payload: Path, size: int) -> tuple[float, str]:
    started = time.perf_counter()
    created = client.post(f"{url}/api/v1/uploads", headers={**TUS, "Upload-Length": str(size)})
    if created.status_code != 201:
        raise RuntimeError(f"tus creation answered {created.status_code}: {created.text}")
    location = url + created.headers["location"]
    offset = 0
    for piece in _pieces(payload):
        response = client.patch(
            location,
            headers={
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
            content=piece,
        )
        if response.status_code != 204:
            raise RuntimeError(f"PATCH at {offset}: {response.status_code} {response.text}")
        offset = int(response.headers["upload-offset"])
    seconds = time.perf_counter() - started
    file_id = location.rsplit("/", 1)[1]
    body = client.get(f"{url}/api/v1/files/{file_id}").json()
    return seconds, f"{body['id']}:{body['sha256']}"


def run(bench: Bench) -> None:
    size = QUICK_SIZE if bench.quick else SIZE
    payload = pdf_payload(bench.cache, size)
    digest = sha256_of(payload)
    label = f"tus upload {size // MiB} MiB"
    servers = {
        "one-shot raw": bench.filesvc("filesvc-oneshot"),
        "tus 8 MiB PATCHes": bench.filesvc("filesvc-tus"),
    }
    speeds: dict[str, list[float]] = {name: [] for name in servers}
    with bench.processes.running(*servers.values()), httpx.Client(timeout=TIMEOUT) as client:
        for _ in range(bench.runs):
            for name, server in servers.items():
                settle_disk()
                if name == "one-shot raw":
                    seconds, stored = one_shot(client, server.url, payload)
                else:
                    seconds, stored = resumable(client, server.url, payload, size)
                file_id, sha256 = stored.split(":")
                if sha256 != digest:
                    raise RuntimeError(f"{name} stored something else ({sha256})")
                client.delete(f"{server.url}/api/v1/files/{file_id}").raise_for_status()
                speeds[name].append(size / seconds / 1e6)
        spreads = {name: Spread.of(values) for name, values in speeds.items()}
        peaks = {name: server.peak_rss_bytes() for name, server in servers.items()}
    for name in servers:
        row = Row(label, f"filesvc {name}", "throughput", spreads[name], "MB/s", peaks[name])
        bench.report.add(row)
    tus = spreads["tus 8 MiB PATCHes"]
    versus = ratio(tus, spreads["one-shot raw"])
    peak = peaks["tus 8 MiB PATCHes"]
    ok = versus is not None and versus >= 0.8 and peak <= RSS_LIMIT
    measured = (
        f"{show_ratio(versus, 'one-shot raw')}, {tus.median:.0f} MB/s, "
        f"peak RSS {peak / MiB:.0f} MiB"
    )
    bench.report.verdict(label, "≥ 0.8× a one-shot raw upload, peak RSS ≤ 100 MiB", measured, ok)
