"""Every value of an awkward table survives an export into the tools analysts load CSV with.

The table (on SQLite and on PostgreSQL) holds NULL beside "", commas, quotes,
CR/LF, formulas, emoji and right-to-left text, a lone ``\\.``, exact decimals,
64-bit integers, floats, JSON (a JSON string, JSON null, an object), zoned
timestamps, dates and booleans. Each export is read back by PostgreSQL's
``COPY … FROM`` (every delimiter, with and without BOM), pandas, polars,
DuckDB and Python's csv, with the options the README gives, and every value
is compared with the source. Both the dialect's fast path and the row path
are exported. Parquet is read back by pyarrow, pandas, polars and DuckDB.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filesvc.exports import Exporter
from tests.conftest import ServerFactory, SettingsFactory
from tests.servers import LiveServer
from tests.tables import execute

COLUMNS = ("id", "txt", "num", "big", "flt", "doc", "at", "day", "flag")
#: What the fast path on SQLite takes (its datetimes take the row path).
FAST_SQLITE_COLUMNS = ("id", "txt", "num", "big", "flt", "doc", "day", "flag")
TEXTS = [
    None,
    "",
    "a,b",
    'say "hi"',
    "line1\nline2",
    "crlf\r\nend",
    "=SUM(A1)",
    "+1",
    "-x",
    "@me",
    "\ttab",
    "emoji 🎉 and שלום עולם",
    "\\.",
    "NULL",
    "semi;colon",
    " padded ",
]
ZONE = timezone(timedelta(hours=2))
ROWS: list[tuple[Any, ...]] = [
    (
        i + 1,
        text,
        [None, Decimal("0.000001"), Decimal("12.5"), Decimal("-3"), Decimal("1000000")][i % 5],
        [None, 2**62, -(2**63), 0, 42][i % 5],
        [None, 0.1 + 0.2, 1e-07, -2.5, 3.0][i % 5],
        [None, '"hello"', "null", '{"a": [1, "x,y"], "b": "=1"}', "[]"][i % 5],
        [
            None,
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=ZONE),
            datetime(2026, 3, 4, 5, 6, 7, 250000, tzinfo=UTC),
        ][i % 3],
        [None, date(2026, 1, 2), date(1999, 12, 31)][i % 3],
        [None, True, False][i % 3],
    )
    for i, text in enumerate(TEXTS)
]
_DDL = {
    "sqlite": "CREATE TABLE awkward (id INTEGER PRIMARY KEY, txt TEXT, num NUMERIC, "
    "big INTEGER, flt REAL, doc JSON, at TIMESTAMP WITH TIME ZONE, day DATE, flag BOOLEAN)",
    "postgresql": "CREATE TABLE {name} (id integer PRIMARY KEY, txt text, num numeric, "
    "big bigint, flt double precision, doc jsonb, at timestamptz, day date, flag boolean)",
}


def _sqlite_stored(row: tuple[Any, ...]) -> dict[str, Any]:
    values = dict(zip(COLUMNS, row, strict=True))
    values["num"] = None if row[2] is None else str(row[2])  # NUMERIC affinity decides
    values["at"] = None if row[6] is None else row[6].isoformat()
    values["day"] = None if row[7] is None else row[7].isoformat()
    values["flag"] = None if row[8] is None else int(row[8])
    return values


def expected(dialect: str) -> list[dict[str, Any]]:
    """The source's values, as Python values: what every reader must give back."""
    rows = []
    for row in ROWS:
        values = dict(zip(COLUMNS, row, strict=True))
        if dialect == "sqlite" and values["num"] is not None and values["num"] % 1:
            values["num"] = Decimal(repr(float(values["num"])))  # SQLite keeps it as REAL
        values["doc"] = None if values["doc"] is None else json.loads(values["doc"])
        values["at"] = None if values["at"] is None else values["at"].astimezone(UTC)
        rows.append(values)
    return rows


def create_awkward(settings: Any) -> str:
    dialect = "sqlite" if settings.is_sqlite else "postgresql"
    names = ", ".join(f":{name}" for name in COLUMNS)
    if dialect == "sqlite":
        rows = [_sqlite_stored(row) for row in ROWS]
        insert = f"INSERT INTO awkward VALUES ({names})"
    else:
        rows = [dict(zip(COLUMNS, row, strict=True)) for row in ROWS]
        insert = (
            "INSERT INTO awkward VALUES (:id, :txt, :num, :big, :flt, CAST(:doc AS jsonb), "
            ":at, :day, :flag)"
        )
    execute(
        settings,
        "DROP TABLE IF EXISTS awkward",
        _DDL[dialect].format(name="awkward"),
        insert,
        rows=rows,
    )
    return dialect


@pytest.fixture
def storage_backend() -> str:
    return "local"


@pytest.fixture
def awkward(make_settings: SettingsFactory, make_server: ServerFactory) -> tuple[LiveServer, str]:
    dialect = create_awkward(make_settings())
    return make_server(export_tables=["awkward"]), dialect


@pytest.fixture(params=["fast", "rows"])
def path(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
def http(awkward: tuple[LiveServer, str], path: str) -> Iterator[httpx.Client]:
    server, _ = awkward
    exporter: Exporter = server.app.state.resources.exporter
    exporter.fast_paths = path == "fast"
    with httpx.Client(
        base_url=server.url, timeout=60, headers={"Accept-Encoding": "identity"}
    ) as client:
        yield client


def columns_for(dialect: str, path: str) -> tuple[str, ...]:
    # On SQLite the fast path is tried with the columns it takes, so that it runs.
    return FAST_SQLITE_COLUMNS if dialect == "sqlite" and path == "fast" else COLUMNS


def download(http: httpx.Client, suffix: str = "csv", **params: Any) -> bytes:
    response = http.get(f"/api/v1/exports/awkward.{suffix}", params=params)
    assert response.status_code == 200, response.text
    return response.content


# ---- text → typed values, by column ----


def _typed(name: str, text: str | None) -> Any:
    if text is None:
        return None
    if name in {"id", "big"}:
        return int(text)
    if name == "num":
        assert "e" not in text.lower(), text  # decimals never in exponent notation
        return Decimal(text)
    if name == "flt":
        return float(text)
    if name == "doc":
        return json.loads(text)
    if name == "at":
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if name == "day":
        return date.fromisoformat(text)
    if name == "flag":
        return {"true": True, "false": False}[text]
    return text


def compare(
    got: list[dict[str, Any]],
    dialect: str,
    columns: tuple[str, ...],
    *,
    empty_is_null: bool = False,
) -> None:
    """Each row read back has the source's values; ``empty_is_null`` for readers that
    read NULL and "" alike (both then stand for None)."""
    rows = _null_empty_merged(expected(dialect)) if empty_is_null else expected(dialect)
    want = [{name: row[name] for name in columns} for row in rows]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for name in columns:
            a, b = g[name], w[name]
            if isinstance(a, float) and isinstance(b, float):
                assert a == b or (math.isnan(a) and math.isnan(b)), (name, a, b)
            else:
                assert a == b, (w["id"], name, a, b)


def _null_empty_merged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (None if v == "" else v) for k, v in row.items()} for row in rows]


# ---- the CSV readers ----


def test_python_csv_reads_every_value(http: httpx.Client, awkward: Any, path: str) -> None:
    _, dialect = awkward
    columns = columns_for(dialect, path)
    data = download(http, columns=",".join(columns), formula_escape="false")
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header, *rows = list(reader)
    assert tuple(header) == columns
    # Python's csv (before 3.13) reads NULL and "" alike: both are "".
    got = [{n: _typed(n, v or None) for n, v in zip(columns, row, strict=True)} for row in rows]
    compare(got, dialect, columns, empty_is_null=True)


def test_the_formula_guard_touches_text_only(http: httpx.Client, awkward: Any, path: str) -> None:
    _, dialect = awkward
    columns = columns_for(dialect, path)
    data = download(http, columns=",".join(columns)).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(data, newline="")))
    by_id = {int(r["id"]): r for r in rows}
    for row in expected(dialect):
        text = row["txt"]
        got = by_id[row["id"]]
        if text and text[0] in "=+-@\t\r":
            assert got["txt"] == "'" + text
        else:
            assert got["txt"] == (text or "")
        if row["big"] is not None:
            assert got["big"] == str(row["big"])  # -9223372036854775808: a number, not escaped
        if row["doc"] is not None:
            assert json.loads(got["doc"]) == row["doc"]  # JSON is never escaped


def test_a_lone_end_of_data_marker_is_quoted(http: httpx.Client, path: str) -> None:
    data = download(http, columns="txt", header="false", formula_escape="false")
    lines = data.split(b"\r\n")
    assert b'"\\."' in lines
    assert b"\\." not in lines


def test_pandas_reads_every_value(http: httpx.Client, awkward: Any, path: str) -> None:
    _, dialect = awkward
    columns = columns_for(dialect, path)
    data = download(http, columns=",".join(columns), formula_escape="false", bom="true")
    frame = pd.read_csv(
        io.BytesIO(data),
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        encoding="utf-8-sig",
    )
    assert tuple(frame.columns) == columns
    rows = [
        {n: _typed(n, None if pd.isna(v) else v) for n, v in record.items()}
        for record in frame.to_dict("records")
    ]
    # pandas reads "" as it reads NULL (NaN) with these options; nothing else is lost.
    compare(rows, dialect, columns, empty_is_null=True)


def test_polars_reads_every_value(http: httpx.Client, awkward: Any, path: str) -> None:
    _, dialect = awkward
    columns = columns_for(dialect, path)
    data = download(http, columns=",".join(columns), formula_escape="false", bom="true")
    frame = pl.read_csv(io.BytesIO(data), infer_schema=False)
    assert tuple(frame.columns) == columns
    got = [{n: _typed(n, v) for n, v in row.items()} for row in frame.iter_rows(named=True)]
    compare(got, dialect, columns)


def test_duckdb_reads_every_value(
    http: httpx.Client, awkward: Any, path: str, tmp_path: Path
) -> None:
    _, dialect = awkward
    columns = columns_for(dialect, path)
    for delimiter, char in (("comma", ","), ("semicolon", ";"), ("tab", "\t")):
        data = download(
            http, columns=",".join(columns), formula_escape="false", delimiter=delimiter
        )
        file = tmp_path / f"{delimiter}.csv"
        file.write_bytes(data)
        relation = _relation(
            f"SELECT * FROM read_csv('{file}', header = true, all_varchar = true, "
            f"allow_quoted_nulls = false, delim = '{char}', quote = '\"', escape = '\"')"
        )
        assert tuple(relation.columns) == columns
        got = [
            {n: _typed(n, v) for n, v in zip(columns, row, strict=True)}
            for row in relation.fetchall()
        ]
        compare(got, dialect, columns)


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def test_postgresql_copy_from_loads_every_value(
    http: httpx.Client, awkward: Any, path: str, request: pytest.FixtureRequest
) -> None:
    import asyncpg

    _, dialect = awkward
    columns = columns_for(dialect, path)
    target = _asyncpg_url(request.getfixturevalue("postgres_url"))
    loads = []
    for delimiter, char in (("comma", ","), ("semicolon", ";"), ("tab", "\t")):
        for bom in ("false", "true"):
            data = download(
                http,
                columns=",".join(columns),
                formula_escape="false",
                delimiter=delimiter,
                bom=bom,
            )
            loads.append((char, bom == "true", data))

    async def run() -> list[list[dict[str, Any]]]:
        connection = await asyncpg.connect(target)
        results = []
        try:
            for index, (char, _bom, data) in enumerate(loads):
                name = f"loaded_{dialect}_{index}"
                await connection.execute(f"DROP TABLE IF EXISTS {name}")
                await connection.execute(_DDL["postgresql"].format(name=name))
                # HEADER (not HEADER MATCH): with a BOM the first name is "\ufeffid".
                await connection.copy_to_table(
                    name,
                    source=io.BytesIO(data),
                    columns=list(columns),
                    format="csv",
                    header=True,
                    delimiter=char,
                )
                records = await connection.fetch(
                    f"SELECT {', '.join(columns)}, doc::text AS doc_text FROM {name} ORDER BY id"
                )
                results.append(
                    [
                        {
                            **{n: r[n] for n in columns},
                            "doc": None if r["doc_text"] is None else json.loads(r["doc_text"]),
                        }
                        for r in records
                    ]
                )
                await connection.execute(f"DROP TABLE {name}")
        finally:
            await connection.close()
        return results

    for got in asyncio.run(run()):
        compare(got, dialect, columns)


# ---- Parquet ----

PARQUET_TYPES = {
    "id": pa.int64(),
    "txt": pa.string(),
    "big": pa.int64(),
    "flt": pa.float64(),
    "doc": pa.string(),
    "at": pa.timestamp("us", tz="UTC"),
    "day": pa.date32(),
    "flag": pa.bool_(),
}


def _relation(sql: str) -> duckdb.DuckDBPyRelation:
    relation = duckdb.sql(sql)
    assert relation is not None
    return relation


def _parquet_rows(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    for row in rows:
        row["doc"] = None if row["doc"] is None else json.loads(row["doc"])
        if row["num"] is not None:
            row["num"] = Decimal(row["num"])
    return rows


def test_parquet_reads_back_with_the_declared_types(
    http: httpx.Client, awkward: Any, path: str, tmp_path: Path
) -> None:
    _, dialect = awkward
    response = http.get("/api/v1/exports/awkward.parquet")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert response.headers["content-disposition"].endswith('.parquet"')
    file = tmp_path / "awkward.parquet"
    file.write_bytes(response.content)

    table = pq.read_table(file)
    for name, arrow in PARQUET_TYPES.items():
        assert table.schema.field(name).type == arrow, name
    compare(_parquet_rows(table), dialect, COLUMNS)

    polars = pl.read_parquet(file)
    assert polars.schema["at"] == pl.Datetime("us", "UTC")
    assert polars.schema["big"] == pl.Int64
    compare(_parquet_rows(polars.to_arrow()), dialect, COLUMNS)

    frame = pd.read_parquet(file)
    assert str(frame["flt"].dtype) == "float64"
    assert frame["big"].tolist()[1] == 2**62
    compare(_parquet_rows(pa.Table.from_pandas(frame, preserve_index=False)), dialect, COLUMNS)

    relation = _relation(f"SELECT * FROM read_parquet('{file}') ORDER BY id")
    types = dict(zip(relation.columns, map(str, relation.types), strict=True))
    assert types["at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["big"] == "BIGINT"
    assert types["flag"] == "BOOLEAN"
    assert types["day"] == "DATE"
    compare(_parquet_rows(relation.to_arrow_table()), dialect, COLUMNS)


def test_head_answers_the_headers_of_get_without_a_body(http: httpx.Client) -> None:
    for suffix, media in (("csv", "text/csv"), ("parquet", "application/vnd.apache.parquet")):
        head = http.head(f"/api/v1/exports/awkward.{suffix}")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-type"].startswith(media)
        assert head.headers["content-disposition"].startswith('attachment; filename="awkward-')
        assert http.head(f"/api/v1/exports/absent.{suffix}").status_code == 404
        assert http.head(f"/api/v1/exports/awkward.{suffix}?nope=1").status_code == 400
    assert http.head("/api/v1/exports").status_code == 200
