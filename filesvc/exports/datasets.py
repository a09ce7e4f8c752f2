"""The datasets on offer: ``files`` always, plus the tables named in settings.

A configured table or view is reflected from the database (its columns and
their types) the first time an export needs it, not at start-up, so that the
service starts while the database is down. What reflection finds is kept in
the :class:`Catalog` for the life of the process: it comes from the schema,
which every process sees alike. A failed reflection is not kept (the next
request tries again); a configured name that does not exist is logged and
left out, and looked for again after :attr:`Catalog.missing_retry_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time as clock
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, MetaData, Table, cast, inspect, type_coerce
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import NoSuchTableError, SAWarning
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from filesvc.config import ExportColumns
from filesvc.models import StoredFile

logger = logging.getLogger("filesvc.exports")

#: The built-in dataset, and the columns of its table that are internal.
FILES = "files"
FILES_HIDDEN_COLUMNS = frozenset({"storage_key"})

#: Kinds of column whose values a filter can parse, compare and order by.
COMPARABLE_KINDS = frozenset(
    {"integer", "float", "decimal", "boolean", "date", "datetime", "time", "text", "uuid"}
)


def column_kind(sql_type: sqltypes.TypeEngine[Any]) -> str:
    """What a column holds, in the words the dataset listing uses."""
    if isinstance(sql_type, sqltypes.Interval):
        return "interval"
    if isinstance(sql_type, sqltypes.TypeDecorator):
        sql_type = sql_type.impl_instance
    for kind, types in _KINDS:
        if isinstance(sql_type, types):
            return kind
    if isinstance(sql_type, sqltypes.NullType):
        return "unknown"
    return type(sql_type).__name__.lower()


_KINDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("boolean", sqltypes.Boolean),
    ("integer", sqltypes.Integer),
    ("float", sqltypes.Float),
    ("decimal", sqltypes.Numeric),
    ("datetime", sqltypes.DateTime),
    ("date", sqltypes.Date),
    ("time", sqltypes.Time),
    ("uuid", sqltypes.Uuid),
    ("text", sqltypes.String),
    ("binary", sqltypes._Binary),
    ("json", sqltypes.JSON),
    ("array", sqltypes.ARRAY),
)


def _integer_bits(sql_type: sqltypes.TypeEngine[Any], dialect: Dialect) -> int:
    if dialect.name == "sqlite" or isinstance(sql_type, sqltypes.BigInteger):
        return 64
    return 16 if isinstance(sql_type, sqltypes.SmallInteger) else 32


@dataclass(frozen=True, slots=True)
class DatasetColumn:
    """One exported column: its name, kind, and the expressions that read it."""

    name: str
    kind: str
    column: Column[Any]
    #: What the SELECT list reads (``column``, or ``column`` read leniently).
    output: ColumnElement[Any]
    #: Whether its datetimes carry a zone (a filter value must then name one).
    aware: bool = False
    #: Integer width, for range checks of filter values.
    bits: int = 64

    @property
    def comparable(self) -> bool:
        return self.kind in COMPARABLE_KINDS

    @property
    def raw(self) -> bool:
        """Whether its text is data to write as it is, never a formula (JSON)."""
        return self.kind == "json"


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    description: str
    columns: tuple[DatasetColumn, ...]
    #: Columns that identify a row (the primary key), for stable order; empty for a view.
    key: tuple[DatasetColumn, ...]
    #: The order of an export that asks for none.
    default_order: tuple[DatasetColumn, ...]

    def column(self, name: str) -> DatasetColumn | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None


def _dataset_column(column: Column[Any], dialect: Dialect, *, lenient: bool) -> DatasetColumn:
    kind = column_kind(column.type)
    output: ColumnElement[Any] = column
    if lenient:
        output = type_coerce(column, _LENIENT.get(kind, sqltypes.NullType())).label(column.name)
    elif kind == "json":
        # The JSON text as the database gives it: a JSON string keeps its quotes
        # and JSON null is `null`, where decoding would make them text and NULL.
        # A CAST in SQL: asyncpg would decode json/jsonb itself otherwise.
        output = cast(column, sqltypes.Text()).label(column.name)
    return DatasetColumn(
        name=column.name,
        kind=kind,
        column=column,
        output=output,
        aware=bool(getattr(column.type, "timezone", False)),
        bits=_integer_bits(column.type, dialect) if kind == "integer" else 64,
    )


def files_dataset(dialect: Dialect) -> Dataset:
    table = StoredFile.__table__
    assert isinstance(table, Table)
    columns = tuple(
        _dataset_column(c, dialect, lenient=False)
        for c in table.columns
        if c.name not in FILES_HIDDEN_COLUMNS
    )
    by_name = {c.name: c for c in columns}
    return Dataset(
        name=FILES,
        description="The upload records: one row per stored file.",
        columns=columns,
        key=(by_name["id"],),
        default_order=(by_name["created_at"], by_name["id"]),
    )


def table_dataset(
    name: str,
    table: Table,
    dialect: Dialect,
    *,
    is_view: bool,
    policy: ExportColumns | None = None,
) -> Dataset:
    # SQLite keeps whatever a writer stored, whatever the declared type: its
    # values are read as stored, dates and booleans parsed only where they parse.
    lenient = dialect.name == "sqlite"
    policy = policy or ExportColumns()
    if policy.columns is not None:  # the allow-list's order is the export's order
        by_table = {c.name: c for c in table.columns}
        chosen = [by_table[n] for n in policy.columns if n in by_table]
        for missing in sorted(set(policy.columns) - set(by_table)):
            logger.warning("export table %r has no column %r to offer", name, missing)
    else:
        chosen = [c for c in table.columns if policy.allows(c.name)]
    columns = tuple(_dataset_column(c, dialect, lenient=lenient) for c in chosen)
    by_name = {c.name: c for c in columns}
    # A key with a left-out column is no key: ties are then broken by every column offered.
    primary = [c.name for c in table.primary_key.columns]
    key = tuple(by_name[n] for n in primary) if all(n in by_name for n in primary) else ()
    what = "View" if is_view else "Table"
    return Dataset(
        name=name,
        description=table.comment or f"{what} {name}.",
        columns=columns,
        key=key,
        default_order=key,
    )


class _Lenient(sqltypes.TypeDecorator[Any]):
    """Parses what parses; anything else comes through as stored, never an error."""

    impl = sqltypes.NullType
    cache_ok = True
    parse: Any = None

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if type(value) is str:
            try:
                return self.parse(value)
            except ValueError:
                return value
        return value


class _LenientDateTime(_Lenient):
    cache_ok = True
    parse = staticmethod(datetime.fromisoformat)


class _LenientDate(_Lenient):
    cache_ok = True
    parse = staticmethod(date.fromisoformat)


class _LenientTime(_Lenient):
    cache_ok = True
    parse = staticmethod(time.fromisoformat)


class _LenientDecimal(sqltypes.TypeDecorator[Any]):
    """SQLite keeps a NUMERIC as INTEGER or REAL: a REAL becomes the decimal it prints as."""

    impl = sqltypes.NullType
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return Decimal(repr(value)) if type(value) is float and math.isfinite(value) else value


class _LenientBoolean(sqltypes.TypeDecorator[Any]):
    impl = sqltypes.NullType
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return bool(value) if value == 0 or value == 1 else value


_LENIENT: dict[str, sqltypes.TypeEngine[Any]] = {
    "datetime": _LenientDateTime(),
    "date": _LenientDate(),
    "time": _LenientTime(),
    "boolean": _LenientBoolean(),
    "decimal": _LenientDecimal(),
}


def sqlite_declared_type(declared: str) -> sqltypes.TypeEngine[Any] | None:
    """The type a SQLite column's declared type name means, where its affinity says less.

    SQLite keeps the declared name as written (``TIMESTAMP WITH TIME ZONE``,
    ``JSONB``, ``BOOL``); SQLAlchemy knows only some names and falls back to
    the affinity (NUMERIC) for the rest, which would make a timestamp a decimal.
    """
    name = declared.upper()
    zoned = "WITH TIME ZONE" in name or "TIMESTAMPTZ" in name or name.startswith("TIMETZ")
    if "TIMESTAMP" in name or "DATETIME" in name:
        return sqltypes.DateTime(timezone=zoned)
    if name.startswith("DATE"):
        return sqltypes.Date()
    if name.startswith("TIME"):
        return sqltypes.Time(timezone=zoned)
    if name.startswith("BOOL"):
        return sqltypes.Boolean()
    if name.startswith("JSON"):
        return sqltypes.JSON()
    if name.startswith("UUID"):
        return sqltypes.Uuid()
    return None


class Catalog:
    """The datasets of one process, reflected on first use and kept."""

    #: Seconds before configured tables that were missing are looked for again.
    missing_retry_seconds = 60.0

    def __init__(self, tables: Mapping[str, ExportColumns] | Sequence[str]) -> None:
        policies = (
            dict(tables) if isinstance(tables, Mapping) else {n: ExportColumns() for n in tables}
        )
        if FILES in policies:
            logger.warning("export table %r ignored: %r is always offered", FILES, FILES)
            del policies[FILES]
        self.policies: dict[str, ExportColumns] = policies
        self.table_names = tuple(policies)
        self._datasets: dict[str, Dataset] | None = None
        self._stale_at = 0.0
        self._lock = asyncio.Lock()

    async def datasets(self, engine: AsyncEngine) -> Mapping[str, Dataset]:
        """Every dataset by name, ``files`` first; reflects the configured tables if needed."""
        if self._datasets is not None and clock.monotonic() < self._stale_at:
            return self._datasets
        async with self._lock:
            if self._datasets is None:
                self._datasets = await self._load(engine)  # fails: not kept, tried again
            elif clock.monotonic() >= self._stale_at:
                try:
                    self._datasets = await self._load(engine)
                except Exception as exc:  # keep what was found; look again later
                    self._stale_at = clock.monotonic() + self.missing_retry_seconds
                    logger.warning("export tables not looked for again: %s", exc)
        return self._datasets

    async def get(self, engine: AsyncEngine, name: str) -> Dataset | None:
        return (await self.datasets(engine)).get(name)

    async def _load(self, engine: AsyncEngine) -> dict[str, Dataset]:
        datasets = {FILES: files_dataset(engine.dialect)}
        if not self.table_names:
            self._stale_at = float("inf")
            return datasets
        async with engine.connect() as connection:
            found = await connection.run_sync(self._reflect)
        missing = [name for name in self.table_names if name not in found]
        for name in missing:
            logger.warning(
                "export table %r does not exist: left out, looked for again in %d s",
                name,
                self.missing_retry_seconds,
            )
        self._stale_at = clock.monotonic() + self.missing_retry_seconds if missing else float("inf")
        datasets.update(found)
        return datasets

    def _reflect(self, connection: Connection) -> dict[str, Dataset]:
        metadata = MetaData()
        inspector = inspect(connection)
        found: dict[str, Dataset] = {}
        for name in self.table_names:
            schema, _, table_name = name.rpartition(".")
            # Types the dialect does not know are read as stored; say so once, in the log.
            declared = (
                _sqlite_declared(connection, schema, table_name)
                if connection.dialect.name == "sqlite"
                else {}
            )

            def retype(
                _inspector: Any,
                _table: Table,
                info: dict[str, Any],
                declared: dict[str, str] = declared,
            ) -> None:
                better = sqlite_declared_type(declared.get(info["name"], ""))
                if better is not None:
                    info["type"] = better

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SAWarning)
                try:
                    table = Table(
                        table_name,
                        metadata,
                        schema=schema or None,
                        autoload_with=connection,
                        listeners=[("column_reflect", retype)],
                    )
                except NoSuchTableError:
                    continue
            for warning in caught:
                logger.warning("export table %r: %s", name, warning.message)
            views = inspector.get_view_names(schema=schema or None)
            found[name] = table_dataset(
                name,
                table,
                connection.dialect,
                is_view=table_name in views,
                policy=self.policies[name],
            )
        return found


def _sqlite_declared(connection: Connection, schema: str, table: str) -> dict[str, str]:
    """Column name → the type name as declared, from SQLite's own catalog."""
    quote = connection.dialect.identifier_preparer.quote
    prefix = f"{quote(schema)}." if schema else ""
    rows = connection.exec_driver_sql(f"PRAGMA {prefix}table_xinfo({quote(table)})")
    return {row[1]: row[2] or "" for row in rows}
