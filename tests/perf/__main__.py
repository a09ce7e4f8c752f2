"""``python -m tests.perf``: run the scenarios, print one table and one verdict per scenario."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from tests.perf.context import Bench
from tests.perf.harness import Missing, Processes, Skip, terminate_as_interrupt
from tests.perf.report import Report

#: Scenario name → module (each has ``run(bench)``) and the target it checks, for skips.
SCENARIOS = {
    "upload": ("tests.perf.uploads", "upload throughput against nginx and UploadFile"),
    "export": (
        "tests.perf.exports",
        "1 M-row CSV export against sqlite3 -csv and Datasette, and against psql \\copy",
    ),
    "export-postgres": (
        "tests.perf.exports_postgres",
        "1 M-row CSV export from PostgreSQL against psql \\copy (part of export)",
    ),
    "static": ("tests.perf.static", "static GETs against nginx and Starlette StaticFiles"),
    "responsiveness": ("tests.perf.responsiveness", "/healthz p99 < 50 ms under load"),
    "variants": (
        "tests.perf.variants",
        "12 MP JPEG thumb: first render < 150 ms, cached GET ≥ 0.9× static, bounded burst",
    ),
    "hostile": (
        "tests.perf.hostile",
        "/healthz p99 < 100 ms, peak RSS < 400 MiB above idle, under hostile headers and "
        "lying images",
    ),
    "load": ("tests.perf.load", "50 concurrent uploads + 8 ranged downloads, no errors"),
    "resumable": ("tests.perf.resumable", "1 GiB tus in 8 MiB PATCHes ≥ 0.8× one-shot raw"),
}
DEFAULT_CACHE = Path(os.environ.get("FILESVC_BENCH_DIR", "/tmp/filesvc-bench"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.perf",
        description="filesvc's benchmark suite: every scenario measures filesvc and its "
        "baselines in the same run, on 127.0.0.1.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="shorter loads (wrk 5 s, no 5 M-row export)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="SCENARIO",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per measurement, medians reported (min 3)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"inputs kept between bench runs (default {DEFAULT_CACHE}; env FILESVC_BENCH_DIR)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed, not only on errors"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 3:
        print("--runs must be at least 3 (medians of fewer say little)", file=sys.stderr)
        return 2
    cache: Path = args.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"run-{os.getpid()}"
    report = Report()
    bench = Bench(args.quick, args.runs, cache, work, Processes(), report)
    names = args.only or list(SCENARIOS)
    started = time.monotonic()
    interrupted = False
    try:
        with terminate_as_interrupt():
            for name in names:
                module, target = SCENARIOS[name]
                print(f"== {name}", flush=True)
                try:
                    importlib.import_module(module).run(bench)
                except (Missing, Skip) as exc:
                    report.skip(name, target, str(exc))
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:
                    traceback.print_exc()
                    report.error(name, target, f"{type(exc).__name__}: {exc}")
                finally:
                    bench.processes.stop_all()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every server the bench started", file=sys.stderr)
    finally:
        bench.processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    print(f"\n## filesvc benchmarks ({'quick' if args.quick else 'full'}, {minutes:.1f} min)\n")
    print(report.table())
    print()
    print(report.summary())
    if interrupted:
        return 130
    if any(v.status == "ERROR" for v in report.verdicts):
        return 1
    if args.strict and any(v.status == "MISS" for v in report.verdicts):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
