"""CSV export of a 1,000,000-row × 8-column table: SQLite (filesvc against sqlite3 and
Datasette) and PostgreSQL (filesvc against psql's \\copy of the same SELECT).

The table is generated once into the cache by sqlite3 itself (int, text, text,
int, real, ISO datetime text, text with quotes, commas and NULLs, 64-hex text)
and migrated with ``filesvc migrate``, so that filesvc reads the very file
that ``sqlite3 -csv`` and ``datasette`` read. Each run's CSV is counted (one
line per row, plus the header where there is one). Time to the first row is
measured apart, with a client that stops reading once the first data row has
arrived. The 5,000,000-row table (full runs only) checks that filesvc's peak
RSS does not grow with the row count.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.perf.context import Bench
from tests.perf.harness import FILESVC, MiB, Missing, Server, Skip, Spread, free_port, run_checked
from tests.perf.report import Row, ratio, show_ratio
from tests.perf.tools import datasette, program

ROWS = 1_000_000
BIG_ROWS = 5_000_000
TABLE = "t"
RSS_LIMIT = 150 * MiB
FLAT_RSS_BYTES = 10 * MiB
FIRST_ROW_LIMIT_MS = 50.0
#: The issue's goals, measured in one run: filesvc's rows/s over the baseline's.
SQLITE3_GOAL = 1.0
DATASETTE_GOAL = 10.0
PSQL_GOAL = 0.8
POSTGRES_ADMIN_URL = os.environ.get(
    "FILESVC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
PG_DATABASE = "filesvc_bench_export"
GENERATE_PG = """\
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} (
    id integer PRIMARY KEY,
    name text NOT NULL,
    category text NOT NULL,
    quantity integer NOT NULL,
    price double precision NOT NULL,
    created_at timestamptz NOT NULL,
    note text,
    digest text NOT NULL
);
INSERT INTO {table}
SELECT x, 'item ' || x, 'category-' || (x % 37), (x::bigint * 7919) % 100000,
    round(((x % 100000) * 0.37)::numeric, 2)::double precision,
    to_timestamp(1600000000 + x * 31),
    CASE x % 10 WHEN 0 THEN 'says "hi", twice' WHEN 1 THEN NULL ELSE 'note ' || (x % 1000) END,
    md5(x::text) || md5((-x)::text)
FROM generate_series(1, {rows}) AS x;
VACUUM ANALYZE {table};
"""
EXPORT_TIMEOUT = 900.0

GENERATE = """\
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
CREATE TABLE {table} (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    price REAL NOT NULL,
    created_at TEXT NOT NULL,
    note TEXT,
    digest TEXT NOT NULL
);
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {rows})
INSERT INTO {table}
SELECT
    x,
    'item ' || x,
    'category-' || (x % 37),
    (x * 7919) % 100000,
    round((x % 100000) * 0.37, 2),
    strftime('%Y-%m-%dT%H:%M:%SZ', 1600000000 + x * 31, 'unixepoch'),
    CASE x % 10 WHEN 0 THEN 'says "hi", twice' WHEN 1 THEN NULL ELSE 'note ' || (x % 1000) END,
    lower(hex(randomblob(32)))
FROM n;
"""


def database(bench: Bench, rows: int) -> Path:
    """The cached table of ``rows`` rows, with filesvc's schema beside it."""
    path = bench.cache / f"export-{rows}.sqlite"
    if path.exists():
        return path
    print(f"  generating {path} ({rows:,} rows) …", flush=True)
    temp = path.with_suffix(".tmp")
    temp.unlink(missing_ok=True)
    subprocess.run(
        [program("sqlite3"), str(temp)],
        input=GENERATE.format(table=TABLE, rows=rows).encode(),
        check=True,
        timeout=1800,
    )
    env = {**os.environ, "FILESVC_DATABASE_URL": f"sqlite+aiosqlite:///{temp}"}
    subprocess.run([FILESVC, "migrate"], env=env, check=True, timeout=300, capture_output=True)
    temp.replace(path)
    return path


def curl_csv(url: str, out: Path) -> tuple[float, int]:
    """Seconds for the whole CSV, and its number of lines."""
    argv = [program("curl"), "-sS", "-o", str(out), "-w", "%{http_code} %{time_total}", url]
    status, seconds = run_checked(argv, timeout=EXPORT_TIMEOUT, what=f"curl {url}").split()
    if status != "200":
        raise RuntimeError(f"{url} answered {status}: {out.read_bytes()[:300]!r}")
    return float(seconds), count_lines(out)


def count_lines(path: Path) -> int:
    lines = 0
    with path.open("rb") as file:
        while chunk := file.read(8 * MiB):
            lines += chunk.count(b"\n")
    path.unlink()
    return lines


def first_row_ms(url: str) -> float:
    """Milliseconds from sending the request to holding the first data row (after the header)."""
    with httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        # Plain bytes: counting line ends in gzip output would count nothing real.
        with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
            response.raise_for_status()
            seen = 0
            for chunk in response.iter_raw():
                seen += chunk.count(b"\n")
                if seen >= 2:
                    return (time.perf_counter() - started) * 1000
    raise RuntimeError(f"{url} sent fewer than two lines")


def sqlite3_first_row_ms(db: Path) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(
        [program("sqlite3"), "-csv", str(db), f"select * from {TABLE}"], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        return (time.perf_counter() - started) * 1000
    finally:
        process.kill()
        process.wait()


def sqlite3_csv(db: Path, out: Path) -> tuple[float, int]:
    started = time.perf_counter()
    with out.open("wb") as file:
        subprocess.run(
            [program("sqlite3"), "-csv", str(db), f"select * from {TABLE}"],
            stdout=file,
            check=True,
            timeout=EXPORT_TIMEOUT,
        )
    return time.perf_counter() - started, count_lines(out)


def filesvc_server(bench: Bench, db: Path, name: str) -> Server:
    return bench.filesvc(
        name,
        {"FILESVC_DATABASE_URL": f"sqlite+aiosqlite:///{db}", "FILESVC_EXPORT_TABLES": TABLE},
    )


def datasette_server(bench: Bench, db: Path) -> Server:
    directory = bench.scratch("datasette")
    port = free_port()
    return Server(
        "datasette",
        [
            datasette(bench.cache),
            "serve",
            str(db),
            "--port",
            str(port),
            # Unlimited streamed CSV (its default cap is 100 MB), and time for big pages.
            "--setting",
            "max_csv_mb",
            "0",
            "--setting",
            "sql_time_limit_ms",
            "60000",
        ],
        port=port,
        log=directory / "datasette.log",
        ready_path="/-/versions.json",
    )


def run(bench: Bench) -> None:
    db = database(bench, ROWS)
    filesvc = filesvc_server(bench, db, "filesvc-export-1m")
    path = f"/api/v1/exports/{TABLE}.csv"
    speeds: dict[str, Spread] = {}
    firsts: dict[str, Spread] = {}
    peaks: dict[int, int] = {}
    out = bench.work / "export.csv"
    with bench.processes.running(filesvc):
        probe = httpx.get(f"{filesvc.url}{path}?limit=1", timeout=30)
        if probe.status_code == 404:
            raise Skip(f"GET {path} answers 404 here: CSV exports have not landed in this build")
        probe.raise_for_status()
        speeds["filesvc"], firsts["filesvc"] = _measure(
            bench,
            lambda: curl_csv(filesvc.url + path, out),
            lambda: first_row_ms(filesvc.url + path),
        )
        peaks[ROWS] = filesvc.peak_rss_bytes()
    bench.report.add(_row("filesvc", speeds["filesvc"], firsts["filesvc"], peaks[ROWS], ROWS))

    speeds["sqlite3"], firsts["sqlite3"] = _measure(
        bench, lambda: sqlite3_csv(db, out), lambda: sqlite3_first_row_ms(db), header=False
    )
    bench.report.add(_row("sqlite3 -csv", speeds["sqlite3"], firsts["sqlite3"], None, ROWS))

    try:
        plain = datasette_server(bench, db)
    except Missing as exc:
        print(f"  no Datasette baseline: {exc}", flush=True)
    else:
        url = f"{plain.url}/{db.stem}/{TABLE}.csv?_stream=on&_size=max"
        with bench.processes.running(plain):
            speeds["datasette"], firsts["datasette"] = _measure(
                bench, lambda: curl_csv(url, out), lambda: first_row_ms(url)
            )
            rss = plain.peak_rss_bytes()
        bench.report.add(_row("Datasette", speeds["datasette"], firsts["datasette"], rss, ROWS))

    big_note = "not run (--quick)"
    if not bench.quick:
        big = database(bench, BIG_ROWS)
        server = filesvc_server(bench, big, "filesvc-export-5m")
        with bench.processes.running(server):
            seconds, lines = curl_csv(server.url + path, out)
            _expect_lines(lines, BIG_ROWS, header=True)
            peaks[BIG_ROWS] = server.peak_rss_bytes()
        rate = Spread.of([BIG_ROWS / seconds])
        bench.report.add(
            Row(
                "export 5 M rows",
                "filesvc",
                "rows/s",
                rate,
                "rows/s",
                peaks[BIG_ROWS],
                "1 run: the peak-RSS check",
            )
        )
        big_note = f"{peaks[BIG_ROWS] / MiB:.0f} MiB at 5 M rows"

    ours = speeds["filesvc"]
    vs_sqlite = ratio(ours, speeds.get("sqlite3"))
    vs_datasette = ratio(ours, speeds.get("datasette"))
    first = firsts["filesvc"].median
    peak = peaks[ROWS]
    flat = BIG_ROWS not in peaks or abs(peaks[BIG_ROWS] - peak) <= FLAT_RSS_BYTES
    ok = (
        vs_sqlite is not None
        and vs_sqlite >= SQLITE3_GOAL
        and vs_datasette is not None
        and vs_datasette >= DATASETTE_GOAL
        and first < FIRST_ROW_LIMIT_MS
        and peak <= RSS_LIMIT
        and flat
    )
    bench.report.verdict(
        "export 1 M rows",
        f"≥ {SQLITE3_GOAL}× sqlite3 -csv, ≥ {DATASETTE_GOAL:.0f}× Datasette, first row "
        f"< {FIRST_ROW_LIMIT_MS:.0f} ms, peak RSS ≤ 150 MiB, flat 1 M→5 M",
        f"{show_ratio(vs_sqlite, 'sqlite3')}, {show_ratio(vs_datasette, 'Datasette')}, "
        f"{ours.median:,.0f} rows/s, first row {first:.0f} ms, peak RSS {peak / MiB:.0f} MiB "
        f"({big_note})",
        ok,
    )
    run_postgres(bench)


def _pg_url(database: str) -> str:
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def postgres_database(bench: Bench) -> str:
    """The 1 M × 8 table in its own PostgreSQL database (made once, kept between runs)."""
    psql = program("psql")
    probe = subprocess.run(
        [psql, _pg_url(PG_DATABASE), "-tAc", f"SELECT count(*) FROM {TABLE}"],
        capture_output=True,
        text=True,
    )
    if probe.returncode == 0 and probe.stdout.strip() == str(ROWS):
        return _pg_url(PG_DATABASE)
    if probe.returncode != 0:
        created = subprocess.run(
            [psql, POSTGRES_ADMIN_URL, "-c", f'CREATE DATABASE "{PG_DATABASE}"'],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise Skip(f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {created.stderr.strip()}")
    print(f"  generating {PG_DATABASE}.{TABLE} ({ROWS:,} rows) …", flush=True)
    subprocess.run(
        [psql, "-q", "-v", "ON_ERROR_STOP=1", _pg_url(PG_DATABASE)],
        input=GENERATE_PG.format(table=TABLE, rows=ROWS).encode(),
        check=True,
        timeout=1800,
    )
    url = _pg_url(PG_DATABASE).replace("postgresql://", "postgresql+asyncpg://")
    env = {**os.environ, "FILESVC_DATABASE_URL": url}
    subprocess.run([FILESVC, "migrate"], env=env, check=True, timeout=300, capture_output=True)
    return _pg_url(PG_DATABASE)


def psql_copy(url: str, out: Path) -> tuple[float, int]:
    """psql's \\copy of the SELECT filesvc runs (all columns, in key order), with a header."""
    sql = f"\\copy (SELECT * FROM {TABLE} ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"
    started = time.perf_counter()
    with out.open("wb") as file:
        subprocess.run(
            [program("psql"), url, "-c", sql], stdout=file, check=True, timeout=EXPORT_TIMEOUT
        )
    return time.perf_counter() - started, count_lines(out)


def run_postgres(bench: Bench) -> None:
    """filesvc's COPY path against psql's \\copy, on the same 1 M × 8 table, in one run."""
    try:
        url = postgres_database(bench)
    except (Skip, FileNotFoundError, subprocess.CalledProcessError) as exc:
        print(f"  no PostgreSQL export scenario: {exc}", flush=True)
        return
    server = bench.filesvc(
        "filesvc-export-pg",
        {
            "FILESVC_DATABASE_URL": url.replace("postgresql://", "postgresql+asyncpg://"),
            "FILESVC_EXPORT_TABLES": TABLE,
        },
    )
    path = f"/api/v1/exports/{TABLE}.csv"
    out = bench.work / "export-pg.csv"
    with bench.processes.running(server):
        ours, first = _measure(
            bench,
            lambda: curl_csv(server.url + path, out),
            lambda: first_row_ms(server.url + path),
        )
        peak = server.peak_rss_bytes()
    bench.report.add(
        Row(
            "export 1 M rows (PostgreSQL)",
            "filesvc",
            "rows/s",
            ours,
            "rows/s",
            peak,
            f"first row {first.median:.0f} ms ({first.low:.0f}–{first.high:.0f})",
        )
    )
    theirs, _ = _measure(bench, lambda: psql_copy(url, out), lambda: 0.0)
    bench.report.add(
        Row("export 1 M rows (PostgreSQL)", "psql \\copy", "rows/s", theirs, "rows/s", None, "")
    )
    vs_psql = ratio(ours, theirs)
    ok = (
        vs_psql is not None
        and vs_psql >= PSQL_GOAL
        and first.median < FIRST_ROW_LIMIT_MS
        and peak <= RSS_LIMIT
    )
    bench.report.verdict(
        "export 1 M rows (PostgreSQL)",
        f"≥ {PSQL_GOAL}× psql \\copy (FORMAT csv, HEADER), first row < "
        f"{FIRST_ROW_LIMIT_MS:.0f} ms, peak RSS ≤ 150 MiB",
        f"{show_ratio(vs_psql, 'psql')}, {ours.median:,.0f} rows/s, first row "
        f"{first.median:.0f} ms, peak RSS {peak / MiB:.0f} MiB",
        ok,
    )


def _measure(
    bench: Bench,
    whole: Callable[[], tuple[float, int]],
    first: Callable[[], float],
    *,
    header: bool = True,
) -> tuple[Spread, Spread]:
    rates, firsts = [], []
    for _ in range(bench.runs):
        seconds, lines = whole()
        _expect_lines(lines, ROWS, header=header)
        rates.append(ROWS / seconds)
        firsts.append(first())
    return Spread.of(rates), Spread.of(firsts)


def _expect_lines(lines: int, rows: int, *, header: bool) -> None:
    if lines != rows + header:
        raise RuntimeError(f"the CSV had {lines} lines for {rows} rows (header: {header})")


def _row(server: str, rate: Spread, first: Spread, rss: int | None, rows: int) -> Row:
    note = f"first row {first.median:.0f} ms ({first.low:.0f}–{first.high:.0f})"
    return Row(f"export {rows // 1_000_000} M rows", server, "rows/s", rate, "rows/s", rss, note)
