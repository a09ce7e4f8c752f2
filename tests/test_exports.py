"""CSV exports over HTTP, against a live server on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import os
import random
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from filesvc.config import Settings
from filesvc.exports import Catalog, Exporter
from tests.conftest import ServerFactory, SettingsFactory
from tests.exporting import export, refused
from tests.images import make_image
from tests.servers import LiveServer
from tests.tables import (
    MIXED_COLUMNS,
    MIXED_CSV,
    MIXED_HEADER,
    MIXED_KINDS,
    MIXED_LINES,
    create_big,
    create_mixed,
    execute,
    query,
)
from tests.waiting import HANG_SECONDS, eventually

EXPORT_TABLES = ["mixed", "mixed_view", "absent"]


@pytest.fixture
def storage_backend() -> str:
    """Exports read the database only: the storage backend makes no difference here."""
    return "local"


@pytest.fixture
def mixed_server(make_settings: SettingsFactory, make_server: ServerFactory) -> LiveServer:
    create_mixed(make_settings())
    return make_server(export_tables=EXPORT_TABLES)


@pytest.fixture
def client(mixed_server: LiveServer) -> Iterator[httpx.Client]:
    # identity: the plain stream unless a test asks for gzip (httpx asks for it by default)
    with httpx.Client(
        base_url=mixed_server.url, timeout=60, headers={"Accept-Encoding": "identity"}
    ) as http:
        yield http


def is_sqlite(server: LiveServer) -> bool:
    return server.settings.is_sqlite


# ---- listing ----


def test_the_listing_names_files_and_the_configured_tables_with_their_columns(
    client: httpx.Client,
) -> None:
    response = client.get("/api/v1/exports")
    assert response.status_code == 200
    datasets = {d["name"]: d for d in response.json()["datasets"]}
    assert list(datasets) == ["files", "mixed", "mixed_view"]  # "absent" is left out
    files = [(c["name"], c["type"]) for c in datasets["files"]["columns"]]
    assert files == [
        ("id", "text"),
        ("filename", "text"),
        ("content_type", "text"),
        ("size", "integer"),
        ("sha256", "text"),
        ("width", "integer"),
        ("height", "integer"),
        ("visibility", "text"),
        ("created_at", "datetime"),
    ]
    mixed = [(c["name"], c["type"]) for c in datasets["mixed"]["columns"]]
    assert mixed == list(zip(MIXED_COLUMNS, MIXED_KINDS, strict=True))
    assert datasets["mixed"]["description"] == "Table mixed."
    assert datasets["mixed_view"]["description"] == "View mixed_view."
    assert [c["name"] for c in datasets["mixed_view"]["columns"]] == ["label", "qty"]


# ---- format ----


def test_the_whole_table_exactly(client: httpx.Client) -> None:
    assert export(client) == MIXED_CSV


def test_headers(client: httpx.Client) -> None:
    response = client.get("/api/v1/exports/mixed.csv")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(
        r'attachment; filename="mixed-\d{8}T\d{6}Z\.csv"', response.headers["content-disposition"]
    )
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-encoding" not in response.headers
    assert "content-length" not in response.headers


def test_gzip_when_the_client_accepts_it(client: httpx.Client) -> None:
    with client.stream(
        "GET", "/api/v1/exports/mixed.csv", headers={"Accept-Encoding": "br;q=1, gzip;q=0.5"}
    ) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw).decode() == MIXED_CSV
    refusing = client.get("/api/v1/exports/mixed.csv", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refusing.headers


def test_the_files_dataset_leaves_out_internal_columns(
    client: httpx.Client, mixed_server: LiveServer
) -> None:
    uploaded = client.post(
        "/api/v1/files", files={"file": ("=1+1.png", make_image(), "image/png")}
    ).json()
    assert uploaded["filename"] == "=1+1.png"
    text = export(client, "files")
    header, line, end = text.split("\r\n")
    assert header == "id,filename,content_type,size,sha256,width,height,visibility,created_at"
    assert "storage_key" not in text and end == ""
    assert line == ",".join(
        [
            uploaded["id"],
            "'" + uploaded["filename"],  # a file name is text: formula-escaped
            "image/png",
            str(uploaded["size"]),
            uploaded["sha256"],
            "64",
            "48",
            "public",
            uploaded["created_at"],  # ISO 8601 with Z, as the JSON API writes it
        ]
    )


# ---- options ----


def test_columns_keep_their_order(client: httpx.Client) -> None:
    assert export(client, columns="note,id", limit=2) == (
        'note,id\r\n"line1\nline2",1\r\n"say ""hi"", ok",2\r\n'
    )


def test_limit(client: httpx.Client) -> None:
    assert export(client, limit=2) == MIXED_HEADER + MIXED_LINES[1] + MIXED_LINES[2]
    assert export(client, limit=0) == MIXED_HEADER


def test_a_view_without_a_key_breaks_ties_by_every_column(
    client: httpx.Client, mixed_server: LiveServer
) -> None:
    execute(
        mixed_server.settings,
        "INSERT INTO mixed (id, qty, label) VALUES (6, 3, 'a'), (7, 3, 'b'), (8, 3, 'a')",
    )
    text = export(client, "mixed_view", order_by="-qty", qty__gte=3)
    assert text == "label,qty\r\nżółć 🎉,42\r\na,3\r\na,3\r\nb,3\r\nplain,3\r\n"


def test_bom(client: httpx.Client) -> None:
    response = client.get("/api/v1/exports/mixed.csv", params={"bom": "true", "limit": 1})
    assert response.content == ("\ufeff" + MIXED_HEADER + MIXED_LINES[1]).encode()
    no_header = client.get(
        "/api/v1/exports/mixed.csv", params={"bom": "true", "header": "false", "limit": 1}
    )
    assert no_header.content == ("\ufeff" + MIXED_LINES[1]).encode()


def test_delimiters(client: httpx.Client) -> None:
    semicolon = export(client, delimiter="semicolon", columns="id,note", limit=2)
    assert semicolon == 'id;note\r\n1;"line1\nline2"\r\n2;"say ""hi"", ok"\r\n'
    tab = export(client, delimiter="tab", columns="id,label,ratio", limit=2)
    assert tab == 'id\tlabel\tratio\r\n1\tplain\t0.25\r\n2\t""\t1e-07\r\n'
    assert export(client, delimiter="comma", limit=1) == MIXED_HEADER + MIXED_LINES[1]


def test_header_false(client: httpx.Client) -> None:
    assert export(client, header="false") == MIXED_CSV.removeprefix(MIXED_HEADER)


def test_formula_escape_false(client: httpx.Client) -> None:
    text = export(client, formula_escape="false", columns="label,note", id__in="4,5")
    assert text == 'label,note\r\n=SUM(A1),"crlf\r\nend"\r\nżółć 🎉,-negative text\r\n'


# ---- refusals: all before any CSV ----


def test_an_unknown_dataset_is_404(client: httpx.Client) -> None:
    for name in ("nope", "absent", "alembic_version", "sqlite_master"):
        error = refused(client, 404, f"/api/v1/exports/{name}.csv")
        assert error["code"] == "dataset_not_found"


def test_a_column_that_cannot_be_compared_takes_only_isnull(
    make_settings: SettingsFactory, make_server: ServerFactory
) -> None:
    settings = make_settings()
    blob = "BLOB" if settings.is_sqlite else "bytea"
    execute(
        settings,
        "DROP TABLE IF EXISTS blobs",
        f"CREATE TABLE blobs (id integer PRIMARY KEY, data {blob})",
        "INSERT INTO blobs VALUES (:id, :data)",
        rows=[{"id": 1, "data": b"\x00\xff"}, {"id": 2, "data": None}],
    )
    server = make_server(export_tables=["blobs"])
    with httpx.Client(base_url=server.url) as http:
        assert export(http, "blobs") == "id,data\r\n1,\\x00ff\r\n2,\r\n"
        assert export(http, "blobs", data__isnull="true") == "id,data\r\n2,\r\n"
        for params in ({"data": "x"}, {"order_by": "data"}):
            error = refused(http, 400, "/api/v1/exports/blobs.csv", **params)
            assert "binary" in error["message"]


# ---- round trip ----


def _typed(text: str, like: Any) -> Any:
    """A CSV field read back as the type the database gave."""
    if text == "" and like in (None, ""):
        return like  # csv cannot tell NULL from "": the exact-string tests do
    if isinstance(like, bool):
        return text == "true"
    if isinstance(like, datetime):
        return datetime.fromisoformat(text)
    if isinstance(like, date):
        return date.fromisoformat(text)
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, Decimal):
        return Decimal(text)
    return text


def _stored(value: Any, kind: str) -> Any:
    """A value as SQLite stores it, read as the export reads it."""
    if isinstance(value, str) and kind == "datetime":
        return datetime.fromisoformat(value)
    if isinstance(value, str) and kind == "date":
        return date.fromisoformat(value)
    if kind == "boolean" and value is not None:
        return bool(value)
    return value


def test_round_trip_equals_the_rows_in_the_database(
    client: httpx.Client, mixed_server: LiveServer
) -> None:
    rng = random.Random(7)
    alphabet = 'ab ,;"\r\n\t=+-@ü🎉'
    rows = [
        {
            "id": 100 + i,
            "qty": rng.choice([None, rng.randint(-(2**31), 2**31 - 1)]),
            "ratio": rng.choice([None, rng.uniform(-1e6, 1e6), rng.random() * 1e-12]),
            "label": rng.choice(
                [None, "", "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))]
            ),
            "note": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))),
        }
        for i in range(3000)
    ]
    execute(
        mixed_server.settings,
        "INSERT INTO mixed (id, qty, ratio, label, note) VALUES (:id, :qty, :ratio, :label, :note)",
        rows=rows,
    )
    text = export(client, formula_escape="false")
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[0] == list(MIXED_COLUMNS)
    stored = query(mixed_server.settings, "SELECT * FROM mixed ORDER BY id")
    assert len(parsed) - 1 == len(stored) == 3005
    for fields, row in zip(parsed[1:], stored, strict=True):
        expected = [_stored(v, k) for v, k in zip(row, MIXED_KINDS, strict=True)]
        assert [_typed(f, v) for f, v in zip(fields, expected, strict=True)] == expected


# ---- streaming ----

BIG_ROWS = 300_000


@pytest.fixture
def big_server(make_settings: SettingsFactory, make_server: ServerFactory) -> LiveServer:
    create_big(make_settings(), BIG_ROWS)
    return make_server(export_tables=["big"])


def _running(server: LiveServer) -> Exporter:
    exporter: Exporter = server.app.state.resources.exporter
    return exporter


def _eventually(condition: Callable[[], bool], timeout: float = HANG_SECONDS) -> None:
    eventually(condition, "the export's resources are given back", timeout)


def _export_backends(server: LiveServer) -> list[tuple[Any, ...]]:
    """PostgreSQL backends other than ours that are reading the big table or in a transaction."""
    return query(
        server.settings,
        "SELECT pid, state, query FROM pg_stat_activity WHERE datname = current_database() "
        # COPY's long SELECT list may be cut off (track_activity_query_size) before its FROM.
        "AND pid <> pg_backend_pid() AND ((query LIKE '%FROM big%' OR query LIKE 'COPY (%big.%') "
        "AND state <> 'idle' "
        "OR state LIKE 'idle in transaction%')",
    )


def test_the_first_bytes_leave_before_the_table_is_read_and_a_disconnect_stops_the_query(
    big_server: LiveServer,
) -> None:
    with httpx.Client(base_url=big_server.url, headers={"Accept-Encoding": "identity"}) as http:
        with http.stream("GET", "/api/v1/exports/big.csv") as response:
            chunks = response.iter_raw()
            first = next(chunks)
            assert first.startswith(b"id,name,category")
            [running] = _running(big_server).running
            assert running.rows < BIG_ROWS / 2
            next(chunks)
            if not is_sqlite(big_server):
                assert _export_backends(big_server)  # the cursor is open, mid-table
    # The client has gone: the export stops and its connection goes back to the pool.
    _eventually(lambda: not _running(big_server).running)
    assert running.rows < BIG_ROWS / 2
    engine = big_server.app.state.resources.engine
    _eventually(lambda: engine.pool.checkedout() == 0)
    if not is_sqlite(big_server):
        _eventually(lambda: not _export_backends(big_server))


def test_a_whole_big_export(big_server: LiveServer) -> None:
    with httpx.Client(base_url=big_server.url, timeout=120) as http:  # gzip: httpx decodes it
        with http.stream("GET", "/api/v1/exports/big.csv") as response:
            assert response.headers["content-encoding"] == "gzip"
            lines = sum(chunk.count(b"\n") for chunk in response.iter_bytes())
    assert lines == BIG_ROWS + 1


def _break_the_database(server: LiveServer) -> None:
    """Make the export's connection fail under it, while it is half-way through."""
    if is_sqlite(server):
        # The rows live in the main file (checkpointed before the export started):
        # cut it short, and the pages still to be read are gone.
        path = server.settings.data_dir / "filesvc.db"
        with path.open("r+b") as database:
            database.truncate(64 * 1024)
    else:
        query(
            server.settings,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND (query LIKE '%FROM big%' OR query LIKE 'COPY (%big.%')",
        )


def test_a_failure_mid_stream_ends_the_response_without_its_final_chunk(
    big_server: LiveServer,
) -> None:
    if is_sqlite(big_server):
        execute(big_server.settings, "PRAGMA wal_checkpoint(TRUNCATE)")
    received = b""
    with httpx.Client(base_url=big_server.url, headers={"Accept-Encoding": "identity"}) as http:
        with http.stream("GET", "/api/v1/exports/big.csv") as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            received += next(chunks) + next(chunks)
            _break_the_database(big_server)
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                for chunk in chunks:
                    received += chunk
    assert received.count(b"\r\n") < BIG_ROWS
    _eventually(lambda: not _running(big_server).running)


# ---- the database: lazy, retried, and 503 while down ----


def test_the_service_starts_with_the_database_down_and_answers_503(
    make_settings: SettingsFactory, make_server: ServerFactory
) -> None:
    down = "postgresql+asyncpg://postgres@127.0.0.1:9/nowhere"
    server = make_server(database_url=down, auto_migrate=False, export_tables=["mixed"])
    with httpx.Client(base_url=server.url) as http:
        for path in ("/api/v1/exports", "/api/v1/exports/files.csv", "/api/v1/exports/mixed.csv"):
            response = http.get(path)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "database_unavailable"
            assert response.headers["retry-after"]


def test_a_failed_reflection_is_not_kept(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    create_mixed(settings)

    async def run() -> tuple[str, list[str]]:
        catalog = Catalog(["mixed"])
        down = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nowhere")
        up = create_async_engine(settings.effective_database_url)
        try:
            try:
                await catalog.datasets(down)
                failure = "none"
            except OSError as exc:
                failure = type(exc).__name__
            return failure, list(await catalog.datasets(up))
        finally:
            await down.dispose()
            await up.dispose()

    failure, names = asyncio.run(run())
    assert failure != "none"
    assert names == ["files", "mixed"]


def test_a_missing_table_is_left_out_then_found_once_created(
    make_settings: SettingsFactory, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Catalog, "missing_retry_seconds", 0.2)
    server = make_server(export_tables=["later"])
    with httpx.Client(base_url=server.url) as http:
        names = [d["name"] for d in http.get("/api/v1/exports").json()["datasets"]]
        assert names == ["files"]
        assert http.get("/api/v1/exports/later.csv").status_code == 404
        execute(
            server.settings,
            "DROP TABLE IF EXISTS later",
            "CREATE TABLE later (id integer PRIMARY KEY)",
            "INSERT INTO later VALUES (1)",
        )
        eventually(
            lambda: http.get("/api/v1/exports/later.csv").status_code == 200,
            "the new table is found once the retry time has passed",
        )
        assert export(http, "later") == "id\r\n1\r\n"


def test_too_many_exports_at_once_is_503(
    big_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_running(big_server), "max_running", 1)
    with httpx.Client(base_url=big_server.url, headers={"Accept-Encoding": "identity"}) as http:
        with http.stream("GET", "/api/v1/exports/big.csv") as response:
            chunks = response.iter_raw()  # kept: a dropped iterator closes the connection
            next(chunks)
            second = http.get("/api/v1/exports/big.csv")
            assert second.status_code == 503
            assert second.headers["retry-after"]
    _eventually(lambda: not _running(big_server).running)
    with httpx.Client(base_url=big_server.url) as http:
        assert export(http, "big", limit=1).count("\r\n") == 2


def test_openapi_documents_the_routes(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    listing = spec["paths"]["/api/v1/exports"]["get"]
    download = spec["paths"]["/api/v1/exports/{name}.csv"]["get"]
    assert {"200", "503"} <= set(listing["responses"])
    assert {"200", "400", "404", "503"} <= set(download["responses"])
    assert "text/csv" in download["responses"]["200"]["content"]
    names = {p["name"] for p in download["parameters"]}
    assert {"name", "columns", "order_by", "limit", "bom", "delimiter", "header"} <= names
    assert "formula_escape" in names


# ---- a million rows through `filesvc serve`: memory stays flat ----

MILLION = 1_000_000


def _peak_rss_kib(pid: int) -> int:
    """The process's high-water resident memory (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.slow
def test_a_million_rows_stream_in_flat_memory(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", export_tables=["big"])
    create_big(settings, MILLION)
    port = _free_port()
    env = {
        **os.environ,
        "FILESVC_DATA_DIR": str(settings.data_dir),
        "FILESVC_EXPORT_TABLES": "big",
        "FILESVC_LOG_LEVEL": "warning",
    }
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "filesvc.cli", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(
            base_url=url, timeout=120, headers={"Accept-Encoding": "identity"}
        ) as http:
            _eventually(lambda: _answers(http))
            # Warm up: the first batches, the thread pool and the allocator's arenas.
            warm = export(http, "big", limit=50_000)
            assert warm.count("\r\n") == 50_001
            before = _peak_rss_kib(server.pid)
            lines = 0
            tail = b""
            with http.stream("GET", "/api/v1/exports/big.csv") as response:
                for chunk in response.iter_raw():
                    lines += chunk.count(b"\n")  # a read may split a CRLF
                    tail = (tail + chunk)[-200:]
            after = _peak_rss_kib(server.pid)
        assert lines == MILLION + 1
        assert tail.rsplit(b"\r\n", 2)[-2].startswith(b"1000000,name 1000000,")
        # Twenty times the rows of the warm-up, and the peak barely moves.
        assert after - before < 24 * 1024, f"peak RSS grew from {before} to {after} KiB"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _answers(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False
