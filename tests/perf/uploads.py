"""Upload throughput: 100 MiB and 1 GiB, multipart and raw, against nginx, UploadFile, bare ASGI.

The client is curl, as a user would run it (``-F file=@…`` and ``-X POST -T
file``: ``--data-binary @file`` would load the whole file into curl first).
``Expect: 100-continue`` is turned off so that no server pays curl's wait for
it. Before each upload the previous one's bytes are deleted and dirty pages
written back, so that no run pays for another's writeback. Every stored copy
is checked: filesvc's and UploadFile's SHA-256, nginx's body file size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.perf.context import Bench, pdf_payload, sha256_of
from tests.perf.harness import MiB, Missing, Server, Spread, run_checked, settle_disk
from tests.perf.nginx import Nginx
from tests.perf.report import Row, ratio, show_ratio
from tests.perf.tools import program

SIZES = (100 * MiB, 1024 * MiB)
#: Peak RSS may differ this much between sizes and still count as "the same".
FLAT_RSS_BYTES = 10 * MiB
RSS_LIMIT = 100 * MiB
#: Seconds one upload may take before the run counts as failed.
UPLOAD_TIMEOUT = 600.0


@dataclass
class Target:
    """One server under test, and how to upload to it and check what it stored."""

    label: str
    server: Server
    url: str
    check: Callable[[bytes, Path, int, str], None]


def curl_upload(url: str, payload: Path, mode: str, response: Path) -> tuple[int, float]:
    """Status and seconds of one upload with curl."""
    argv = [program("curl"), "-sS", "-o", str(response), "-w", "%{http_code} %{time_total}"]
    argv += ["-H", "Expect:", "--max-time", str(UPLOAD_TIMEOUT)]
    if mode == "multipart":
        argv += ["-F", f"file=@{payload};type=application/pdf"]
    else:
        argv += ["-X", "POST", "-T", str(payload), "-H", "Content-Type: application/pdf"]
    out = run_checked([*argv, url], timeout=UPLOAD_TIMEOUT + 30, what=f"curl upload to {url}")
    status, seconds = out.split()
    return int(status), float(seconds)


def run(bench: Bench) -> None:
    curl = program("curl")
    assert curl
    for mode in ("multipart", "raw"):
        scenario = f"upload {mode}"
        peaks: dict[int, int] = {}
        speeds: dict[int, dict[str, Spread]] = {}
        for size in SIZES:
            payload = pdf_payload(bench.cache, size)
            digest = sha256_of(payload)
            targets = _targets(bench, mode, size)
            label = f"{scenario} {_size_name(size)}"
            servers = [target.server for target in targets]
            with bench.processes.running(*servers):
                results: dict[str, list[float]] = {target.label: [] for target in targets}
                for _ in range(bench.runs):
                    for target in targets:
                        settle_disk()
                        response = bench.work / "response.json"
                        status, seconds = curl_upload(target.url, payload, mode, response)
                        body = response.read_bytes() if response.exists() else b""
                        if status != 201:
                            raise RuntimeError(
                                f"{target.label} answered {status} to a {label}: {body[:300]!r}"
                            )
                        target.check(body, payload, size, digest)
                        results[target.label].append(size / seconds / 1e6)
                speeds[size] = {}
                for target in targets:
                    spread = Spread.of(results[target.label])
                    rss = target.server.peak_rss_bytes()
                    speeds[size][target.label] = spread
                    if target.label == "filesvc":
                        peaks[size] = rss
                    bench.report.add(Row(label, target.label, "throughput", spread, "MB/s", rss))
        _verdict(bench, mode, speeds, peaks)


def _verdict(
    bench: Bench, mode: str, speeds: dict[int, dict[str, Spread]], peaks: dict[int, int]
) -> None:
    big = max(SIZES)
    ours = speeds[big].get("filesvc")
    vs_nginx = ratio(ours, speeds[big].get("nginx"))
    rss_big, rss_small = peaks[big] / MiB, peaks[min(SIZES)] / MiB
    flat = abs(peaks[big] - peaks[min(SIZES)]) <= FLAT_RSS_BYTES
    measured = [show_ratio(vs_nginx, "nginx")]
    ok = vs_nginx is not None and peaks[big] <= RSS_LIMIT
    if mode == "multipart":
        vs_plain = ratio(ours, speeds[big].get("UploadFile"))
        measured.append(show_ratio(vs_plain, "UploadFile"))
        ok = ok and vs_nginx is not None and vs_nginx >= 0.6
        ok = ok and vs_plain is not None and vs_plain >= 2.5 and flat
        target = "≥ 0.6× nginx, ≥ 2.5× UploadFile, peak RSS ≤ 100 MiB and flat 100 MiB→1 GiB"
    else:
        vs_bare = ratio(ours, speeds[big].get("bare ASGI"))
        measured.append(show_ratio(vs_bare, "bare same-work ASGI app"))
        ok = ok and vs_bare is not None and vs_bare >= 1.2
        target = "≥ 1.2× a bare ASGI app doing the same work, peak RSS ≤ 100 MiB (nginx shown)"
    assert ours is not None
    measured.append(f"{ours.median:.0f} MB/s")
    measured.append(f"peak RSS {rss_big:.0f} MiB (100 MiB upload: {rss_small:.0f} MiB)")
    bench.report.verdict(f"upload {mode} 1 GiB", target, ", ".join(measured), ok)


def _size_name(size: int) -> str:
    return f"{size // 1024 // MiB} GiB" if size >= 1024 * MiB else f"{size // MiB} MiB"


def _targets(bench: Bench, mode: str, size: int) -> list[Target]:
    tag = f"{mode}-{size // MiB}"
    filesvc = bench.filesvc(f"filesvc-upload-{tag}")
    path = "/api/v1/files" if mode == "multipart" else "/api/v1/files?filename=payload.pdf"
    targets = [Target("filesvc", filesvc, filesvc.url + path, _filesvc_check(filesvc))]
    try:
        nginx = Nginx(bench.scratch(f"nginx-upload-{tag}"))
    except Missing as exc:
        print(f"  no nginx baseline: {exc}", flush=True)
    else:
        targets.append(Target("nginx", nginx, nginx.url + "/upload", _nginx_check(nginx, mode)))
    if mode == "raw":
        store = bench.scratch(f"bare-store-{tag}")
        bare = bench.uvicorn(f"bare-{tag}", "bare_upload_app", {"BENCH_STORE_DIR": str(store)})
        targets.append(Target("bare ASGI", bare, bare.url + "/upload", _plain_check))
    if mode == "multipart":
        store = bench.scratch(f"uploadfile-store-{tag}")
        plain = bench.uvicorn(f"uploadfile-{tag}", "upload_app", {"BENCH_STORE_DIR": str(store)})
        targets.append(Target("UploadFile", plain, plain.url + "/upload", _plain_check))
    return targets


def _filesvc_check(server: Server) -> Callable[[bytes, Path, int, str], None]:
    def check(body: bytes, payload: Path, size: int, digest: str) -> None:
        stored = json.loads(body)
        if stored["sha256"] != digest or stored["size"] != size:
            raise RuntimeError(f"filesvc stored something else: {stored}")
        httpx.delete(f"{server.url}/api/v1/files/{stored['id']}", timeout=60).raise_for_status()

    return check


def _nginx_check(nginx: Nginx, mode: str) -> Callable[[bytes, Path, int, str], None]:
    def check(body: bytes, payload: Path, size: int, digest: str) -> None:
        sizes = nginx.take_body_files()
        whole = len(sizes) == 1 and (sizes[0] == size if mode == "raw" else sizes[0] > size)
        if not whole:
            raise RuntimeError(f"nginx stored bodies of {sizes} bytes for a {size}-byte upload")

    return check


def _plain_check(body: bytes, payload: Path, size: int, digest: str) -> None:
    stored = json.loads(body)
    if stored["sha256"] != digest or stored["size"] != size:
        raise RuntimeError(f"the UploadFile app stored something else: {stored}")
    Path(stored["path"]).unlink()
