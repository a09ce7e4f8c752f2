"""Tables the export tests create in the test database (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from filesvc.config import Settings


def execute(settings: Settings, *statements: str, rows: list[dict[str, Any]] | None = None) -> None:
    """Run ``statements`` in one transaction; the last one once per row of ``rows``."""
    url = settings.effective_database_url
    if settings.is_sqlite:
        database = make_url(url).database
        assert database
        Path(database).parent.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                for index, statement in enumerate(statements):
                    last = index == len(statements) - 1
                    await connection.execute(text(statement), rows if last and rows else None)
        finally:
            await engine.dispose()

    asyncio.run(run())


def query(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        engine = create_async_engine(settings.effective_database_url)
        try:
            async with engine.connect() as connection:
                return [tuple(row) for row in await connection.execute(text(sql))]
        finally:
            await engine.dispose()

    return asyncio.run(run())


# ---- mixed: every kind of value, and every character CSV must take care of ----

MIXED_COLUMNS = ("id", "qty", "price", "ratio", "at", "day", "active", "label", "note")
MIXED_KINDS = (
    "integer",
    "integer",
    "decimal",
    "float",
    "datetime",
    "date",
    "boolean",
    "text",
    "text",
)
MIXED_ROWS: list[tuple[Any, ...]] = [
    (
        1,
        3,
        Decimal("12.5"),
        0.25,
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        date(2026, 1, 2),
        True,
        "plain",
        "line1\nline2",
    ),
    (
        2,
        -7,
        Decimal("-0.125"),
        1e-07,
        datetime(2026, 3, 4, 5, 6, 7, 250000, tzinfo=UTC),
        date(2026, 3, 4),
        False,
        "",
        'say "hi", ok',
    ),
    (3, None, None, None, None, None, None, None, None),
    (
        4,
        0,
        Decimal("1000000"),
        -2.5,
        datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
        date(2025, 12, 31),
        True,
        "=SUM(A1)",
        "crlf\r\nend",
    ),
    (
        5,
        42,
        Decimal("0.1"),
        3.0,
        datetime(2026, 6, 1, tzinfo=UTC),
        date(2026, 6, 1),
        False,
        "żółć 🎉",
        "-negative text",
    ),
]
MIXED_HEADER = "id,qty,price,ratio,at,day,active,label,note\r\n"
MIXED_LINES = {
    1: '1,3,12.5,0.25,2026-01-02T03:04:05Z,2026-01-02,true,plain,"line1\nline2"\r\n',
    2: '2,-7,-0.125,1e-07,2026-03-04T05:06:07.250000Z,2026-03-04,false,"","say ""hi"", ok"\r\n',
    3: "3,,,,,,,,\r\n",
    4: '4,0,1000000,-2.5,2025-12-31T23:59:59Z,2025-12-31,true,\'=SUM(A1),"crlf\r\nend"\r\n',
    5: "5,42,0.1,3.0,2026-06-01T00:00:00Z,2026-06-01,false,żółć 🎉,'-negative text\r\n",
}
MIXED_CSV = MIXED_HEADER + "".join(MIXED_LINES[i] for i in sorted(MIXED_LINES))

_MIXED_DDL = {
    "sqlite": "CREATE TABLE mixed (id INTEGER PRIMARY KEY, qty INTEGER, price NUMERIC, "
    "ratio REAL, at TIMESTAMP, day DATE, active BOOLEAN, label TEXT, note TEXT)",
    "postgresql": "CREATE TABLE mixed (id integer PRIMARY KEY, qty integer, price numeric, "
    "ratio double precision, at timestamptz, day date, active boolean, label text, note text)",
}


def _sqlite_value(value: Any) -> Any:
    """What a SQLite writer stores: text for dates, 0/1 for booleans, REAL for numerics."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return float(value)
    return value


def create_mixed(settings: Settings) -> None:
    """The ``mixed`` table and the ``mixed_view`` view (no primary key) over it."""
    dialect = "sqlite" if settings.is_sqlite else "postgresql"
    rows = [
        {
            name: _sqlite_value(value) if dialect == "sqlite" else value
            for name, value in zip(MIXED_COLUMNS, row, strict=True)
        }
        for row in MIXED_ROWS
    ]
    names = ", ".join(f":{name}" for name in MIXED_COLUMNS)
    execute(
        settings,
        "DROP VIEW IF EXISTS mixed_view",
        "DROP TABLE IF EXISTS mixed",
        _MIXED_DDL[dialect],
        "CREATE VIEW mixed_view AS SELECT label, qty FROM mixed",
        f"INSERT INTO mixed VALUES ({names})",
        rows=rows,
    )


# ---- big: the shape of the benchmark table, any number of rows ----

_BIG_SQL = {
    "sqlite": (
        "CREATE TABLE {name} (id INTEGER PRIMARY KEY, name TEXT, category TEXT, qty INTEGER, "
        "price REAL, created_at TEXT, note TEXT, digest TEXT)",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
        "INSERT INTO {name} SELECT i, 'name ' || i, 'cat' || (i % 5), (i * 7) % 1000, "
        "(i % 1000) / 8.0, strftime('%Y-%m-%dT%H:%M:%SZ', 1767225600 + i * 7, 'unixepoch'), "
        "CASE WHEN i % 3 = 0 THEN 'note, with comma ' || i ELSE 'plain note ' || i END, "
        "lower(hex(randomblob(32))) FROM n",
    ),
    "postgresql": (
        "CREATE TABLE {name} (id integer PRIMARY KEY, name text, category text, qty integer, "
        "price double precision, created_at text, note text, digest text)",
        "INSERT INTO {name} SELECT i, 'name ' || i, 'cat' || (i % 5), (i * 7) % 1000, "
        "(i % 1000) / 8.0, to_char(to_timestamp(1767225600 + i * 7) AT TIME ZONE 'UTC', "
        '\'YYYY-MM-DD"T"HH24:MI:SS"Z"\'), '
        "CASE WHEN i % 3 = 0 THEN 'note, with comma ' || i ELSE 'plain note ' || i END, "
        "md5(i::text) || md5((-i)::text) FROM generate_series(1, {count}) AS i",
    ),
}


def create_big(settings: Settings, count: int, name: str = "big") -> None:
    dialect = "sqlite" if settings.is_sqlite else "postgresql"
    create, fill = _BIG_SQL[dialect]
    execute(
        settings,
        f"DROP TABLE IF EXISTS {name}",
        create.format(name=name),
        fill.format(name=name, count=count),
    )
