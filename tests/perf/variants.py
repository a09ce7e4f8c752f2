"""Image variants: a 12-megapixel JPEG's ``thumb``, first render and cached, and renders at once.

- first render: ``GET ?variant=thumb`` of 8 different 12-megapixel JPEGs, one
  after another, each its first request (render, store, serve); p50 and p99 ms.
- cached: 200 sequential GETs of a rendered thumb; p50 and p99 ms.
- cached variant req/s against a static GET of a file of the same size (the
  thumb's own bytes, uploaded as a file), under wrk like the static scenario.
- 16 first renders of 16 different 12-megapixel JPEGs at once (``preview``)
  on a freshly started server: its peak RSS, against the decode budget.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from pathlib import Path

import httpx
from PIL import Image

from filesvc.config import Settings
from tests.perf.context import Bench
from tests.perf.harness import MiB, Server, Spread
from tests.perf.report import Row
from tests.perf.static import wrk
from tests.perf.tools import program

SIZE = (4000, 3000)
FIRST_RENDERS = 8
CONCURRENT = 16
CACHED_GETS = 200
#: The decode budget of the servers under test (the setting's default).
BUDGET_BYTES: int = Settings.model_fields["image_decode_budget_bytes"].default
ACCEPT = {"Accept": "image/webp,*/*"}


def photo(cache: Path, index: int) -> Path:
    """A 12-megapixel JPEG like a phone's: smooth light with sensor noise, a few MB."""
    path = cache / f"variant-photo-{index}.jpg"
    if path.exists():
        return path
    width, height = SIZE
    base = Image.linear_gradient("L").resize(SIZE)
    noise = Image.effect_noise(SIZE, 24 + index)
    channels = [
        Image.blend(base, noise, 0.3),
        Image.blend(base.rotate(180), noise, 0.2),
        Image.blend(base.transpose(Image.Transpose.FLIP_LEFT_RIGHT), noise, 0.25),
    ]
    buffer = io.BytesIO()
    Image.merge("RGB", channels).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return path


def _upload(server: Server, data: bytes, name: str) -> str:
    response = httpx.post(
        f"{server.url}/api/v1/files", params={"filename": name}, content=data, timeout=120
    )
    response.raise_for_status()
    url: str = response.json()["url"]
    return server.url + url


def _ms(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def run(bench: Bench) -> None:
    program("wrk")
    photos = [photo(bench.cache, i) for i in range(max(FIRST_RENDERS, CONCURRENT))]
    megabytes = statistics.mean(p.stat().st_size for p in photos) / MiB
    scenario = "variants 12 MP JPEG"

    server = bench.filesvc("filesvc-variants")
    with bench.processes.running(server), httpx.Client(timeout=120) as http:
        urls = [_upload(server, p.read_bytes(), p.name) for p in photos[:FIRST_RENDERS]]
        first: list[float] = []
        for url in urls:
            started = time.perf_counter()
            response = http.get(url + "?variant=thumb", headers=ACCEPT)
            first.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
        thumb_url = urls[0] + "?variant=thumb"
        http.get(thumb_url, headers=ACCEPT).raise_for_status()
        cached: list[float] = []
        for _ in range(CACHED_GETS):
            started = time.perf_counter()
            http.get(thumb_url, headers=ACCEPT).raise_for_status()
            cached.append((time.perf_counter() - started) * 1000)
        p50, p99 = _ms(first)
        bench.report.add(
            Row(
                scenario,
                "filesvc",
                "first thumb render",
                Spread.of(first),
                "ms",
                None,
                f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, {megabytes:.1f} MB originals",
            )
        )
        c50, c99 = _ms(cached)
        bench.report.add(
            Row(
                scenario,
                "filesvc",
                "cached thumb GET",
                Spread.of(cached),
                "ms",
                None,
                f"p50 {c50:.1f} ms, p99 {c99:.1f} ms",
            )
        )
        seconds = 5 if bench.quick else 10
        rates: dict[str, list[float]] = {"variant": [], "static": []}
        # wrk sends no Accept, so the preset's auto format is the original's (JPEG). The
        # static file to compare with is that very thumb, uploaded: the same bytes.
        variant_url = urls[0] + "?variant=thumb"
        same_size = _upload(server, http.get(variant_url).content, "thumb.jpg")
        for _ in range(bench.runs):
            rates["variant"].append(wrk(variant_url, seconds)[0])
            rates["static"].append(wrk(same_size, seconds)[0])
        variant_rate, static_rate = Spread.of(rates["variant"]), Spread.of(rates["static"])
        bench.report.add(
            Row(scenario, "filesvc", "cached variant GET", variant_rate, "req/s", None, "wrk")
        )
        bench.report.add(
            Row(scenario, "filesvc", "static GET, same size", static_rate, "req/s", None, "wrk")
        )
        peak_single = server.peak_rss_bytes()

    fresh = bench.filesvc("filesvc-variants-burst")
    with bench.processes.running(fresh):
        burst_urls = [_upload(fresh, p.read_bytes(), p.name) for p in photos[:CONCURRENT]]
        before = fresh.peak_rss_bytes()

        async def burst() -> float:
            async with httpx.AsyncClient(timeout=300) as client:
                started = time.perf_counter()
                responses = await asyncio.gather(
                    *(client.get(url + "?variant=preview", headers=ACCEPT) for url in burst_urls)
                )
                for response in responses:
                    response.raise_for_status()
                return time.perf_counter() - started

        elapsed = asyncio.run(burst())
        peak = fresh.peak_rss_bytes()
        bench.report.add(
            Row(
                scenario,
                "filesvc",
                f"{CONCURRENT} first previews at once",
                Spread.of([elapsed * 1000]),
                "ms",
                peak,
                f"peak RSS {peak / MiB:.0f} MiB (after uploads {before / MiB:.0f} MiB)",
            )
        )

    bench.report.versus(
        "variants cached",
        "≥ 0.9× a static GET of the same size",
        variant_rate,
        static_rate,
        "static",
        0.9,
        f"{variant_rate.median:,.0f} req/s",
    )
    bench.report.verdict(
        "variants first thumb",
        "first thumb render of a 12 MP JPEG < 150 ms (p50)",
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms",
        p50 < 150,
    )
    bench.report.verdict(
        "variants burst",
        f"{CONCURRENT} concurrent first renders: RSS growth within the decode budget",
        f"peak {peak / MiB:.0f} MiB, growth {(peak - before) / MiB:.0f} MiB, budget "
        f"{BUDGET_BYTES / MiB:.0f} MiB (one-render server peak {peak_single / MiB:.0f} MiB)",
        peak - before <= BUDGET_BYTES,
    )
