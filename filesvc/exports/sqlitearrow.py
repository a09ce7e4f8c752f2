"""The SQLite fast path: rows as Arrow batches (ADBC), made CSV by vectorised pyarrow kernels.

SQLAlchemy builds and checks the query, as for every path; it is compiled
with its values inlined (SQLite has no backslash escapes: text literals only
double their quotes) and run by the ADBC SQLite driver, which fills Arrow
arrays in C. Each column is read as ``CAST(col AS TEXT)``: SQLite renders
integers and reals exactly (shortest round trip) in C, and a value that does
not fit its declared type (SQLite lets a writer store text in an INTEGER
column) is just text, never a failure. The driver infers an Arrow type from
the first batch (an empty or all-NULL column would come out ``int64`` and a
later text value would then fail), so one row of empty strings is put in
front of the rows (``UNION ALL``) and dropped: every column is then text.

The CSV rules of :mod:`~filesvc.exports.csvformat` are then applied a column
at a time with pyarrow compute kernels (C++, no GIL): the column's whole
text is first searched for the characters that could need work (a memchr
over one buffer), and only a column that may need it is matched value by
value. The lines are joined by one kernel, and the chunk is the bytes of the
joined array's data buffer. Reading and formatting a batch run in a worker
thread: the event loop only passes bytes on.

What this path does not cover takes the row path (:func:`supports`):
datetimes and times (stored text in many forms, normalised by the row path),
UUIDs (stored as 32 hex digits), binary and other kinds; Parquet.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import zlib
from collections.abc import AsyncGenerator, Callable
from decimal import Decimal
from typing import Any

import adbc_driver_manager
import adbc_driver_sqlite
import anyio
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Text, cast, literal, select, union_all
from sqlalchemy.engine import make_url
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.asyncio import AsyncEngine

from filesvc.db import SQLITE_BUSY_TIMEOUT_MS
from filesvc.exports.csvformat import BOM, CSVFormat
from filesvc.exports.datasets import Dataset
from filesvc.exports.query import ExportQuery

logger = logging.getLogger("filesvc.exports")

try:
    # Arrow's allocator keeps freed pages for a while (for speed); an export frees
    # a batch's worth every few milliseconds: hand them back at once, memory stays flat.
    pa.jemalloc_set_decay_ms(0)
except (NotImplementedError, pa.ArrowNotImplementedError):  # built without jemalloc
    pass

KINDS = frozenset({"integer", "float", "decimal", "text", "boolean", "date", "json"})
_NUMERIC = frozenset({"integer", "float", "decimal"})

#: Anything that makes a value need quoting, besides the delimiter.
_SPECIAL = (b'"', b"\r", b"\n", b"\\.")
#: A text cell's formula starts; for other kinds, a "-" starts a number.
_FORMULA_TEXT = r"^[=+\-@\t\r]"
_FORMULA_OTHER = r"^([=+@\t\r]|-[^0-9.I])"
_FORMULA_BYTES = (b"=", b"+", b"-", b"@", b"\t", b"\r")


def supports(query: ExportQuery) -> bool:
    return all(c.kind in KINDS for c in query.columns)


def database_path(engine: AsyncEngine) -> str | None:
    """The SQLite database file of ``engine``; None for an in-memory one."""
    database = make_url(str(engine.url)).database
    return database if database and database != ":memory:" else None


def arrow_sql(query: ExportQuery, dialect: Any) -> str:
    """The SELECT the driver runs: every column as text, behind one row of empty strings."""
    labels = [f"c{i}" for i in range(len(query.columns))]
    rows = select(
        *(cast(c.column, Text).label(label) for c, label in zip(query.columns, labels, strict=True))
    ).select_from(query.dataset.columns[0].column.table)
    rows = rows.where(*query.where).order_by(*query.order_by)
    if query.limit is not None:
        rows = rows.limit(query.limit)
    first = select(*(literal("", Text).label(label) for label in labels))
    statement: Any = union_all(first, select(rows.subquery()))
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


class ArrowFormat:
    """Arrow batches of text columns → CSV bytes, by the rules of :class:`CSVFormat`."""

    def __init__(self, query: ExportQuery) -> None:
        self.delimiter = query.delimiter
        self.kinds = [c.kind for c in query.columns]
        self.formula_escape = query.formula_escape
        self._needs_quote = (
            r'^$|^\\\.$|["\r\n' + ("\\t" if query.delimiter == "\t" else query.delimiter) + "]"
        )
        self._delimiter_bytes = query.delimiter.encode()

    def batch(self, batch: pa.RecordBatch) -> bytes:
        columns = [self._column(a, kind) for a, kind in zip(batch.columns, self.kinds, strict=True)]
        if len(columns) == 1:
            lines = pc.coalesce(columns[0], "")
        else:
            lines = pc.binary_join_element_wise(
                *columns,
                pa.scalar(self.delimiter, pa.string()),
                null_handling="replace",
                null_replacement="",
            )
        lines = pc.binary_join_element_wise(lines, "", "\r\n")
        try:
            # The driver does not check that text is UTF-8 (SQLite lets a writer
            # store any bytes as TEXT); the row path's driver fails on such a value.
            lines.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise sqlite3.OperationalError(f"Could not decode to UTF-8: {exc}") from exc
        return _data(lines)

    def _column(self, array: pa.Array, kind: str) -> pa.Array:
        text = _data(array)
        if kind == "boolean":
            array = pc.if_else(
                pc.equal(array, "1"), "true", pc.if_else(pc.equal(array, "0"), "false", array)
            )
        elif kind == "decimal" and b"e" in text:
            array = _plain_decimals(array)
        elif kind == "float" and (b"e" in text or b"Inf" in text):
            # SQLite writes 1.0e-07 and Inf where Python (the row path) writes 1e-07 and inf.
            array = pc.replace_substring(pc.replace_substring(array, ".0e", "e"), "Inf", "inf")
        if (
            self.formula_escape
            and kind != "json"
            and any(start in text for start in _FORMULA_BYTES)
        ):
            pattern = _FORMULA_TEXT if kind == "text" else _FORMULA_OTHER
            formula = pc.match_substring_regex(array, pattern)
            if pc.any(formula).as_py():
                array = pc.if_else(formula, pc.binary_join_element_wise("'", array, ""), array)
        if (
            self._delimiter_bytes in text
            or any(special in text for special in _SPECIAL)
            or _has_empty(array)
        ):
            needs = pc.match_substring_regex(array, self._needs_quote)
            if pc.any(needs).as_py():
                quoted = pc.binary_join_element_wise(
                    '"', pc.replace_substring(array, '"', '""'), '"', ""
                )
                array = pc.if_else(needs, quoted, array)
        return array


def _data(array: pa.Array) -> bytes:
    """The bytes of a string array's values, end to end (its data buffer, sliced)."""
    if len(array) == 0:
        return b""
    if array.type != pa.string():
        array = array.cast(pa.string())
    offsets = array.buffers()[1]
    start = int.from_bytes(offsets[array.offset * 4 : array.offset * 4 + 4], "little", signed=True)
    end_at = (array.offset + len(array)) * 4
    end = int.from_bytes(offsets[end_at : end_at + 4], "little", signed=True)
    data = array.buffers()[2]
    return b"" if data is None else data[start:end].to_pybytes()


def _has_empty(array: pa.Array) -> bool:
    shortest = pc.min(pc.binary_length(array)).as_py()
    return bool(shortest == 0)


def _plain_decimals(array: pa.Array) -> pa.Array:
    """A NUMERIC kept as REAL prints with an exponent: the few that do are rewritten in Python."""
    values = array.to_pylist()
    for index, value in enumerate(values):
        if value is not None and "e" in value:
            try:
                values[index] = format(Decimal(repr(float(value))), "f")
            except ValueError:
                pass  # text that is no number: written as it is
    return pa.array(values, pa.string())


class ArrowExport:
    """One export on its way out through ADBC: the same interface as the row path's stream."""

    #: Rows the driver reads per batch: about 1 MiB of CSV for the bench's table.
    batch_rows = 8192
    gzip_level = 4

    def __init__(
        self,
        query: ExportQuery,
        connection: Any,
        cursor: Any,
        reader: Any,
        on_close: Callable[[Any], None] | None,
    ) -> None:
        self.query = query
        self.rows = 0
        self._connection = connection
        self._cursor = cursor
        self._reader = reader
        self._on_close = on_close
        self._closed = False
        self._first = True
        self._arrow = ArrowFormat(query)
        self._format = CSVFormat(query.delimiter, formula_escape=query.formula_escape)
        self._reading: asyncio.Future[pa.RecordBatch | None] | None = None

    @property
    def dataset(self) -> Dataset:
        return self.query.dataset

    @classmethod
    async def open(
        cls,
        engine: AsyncEngine,
        query: ExportQuery,
        on_close: Callable[[Any], None] | None = None,
    ) -> ArrowExport | None:
        """Started (the statement prepared and its first step run); None for the row path."""
        path = database_path(engine)
        if path is None or not supports(query):
            return None
        try:
            sql = arrow_sql(query, engine.dialect)
        except (CompileError, NotImplementedError) as exc:
            logger.debug("export of %s takes the row path: %s", query.dataset.name, exc)
            return None
        connection, cursor, reader = await anyio.to_thread.run_sync(
            _start, path, sql, cls.batch_rows
        )
        return cls(query, connection, cursor, reader, on_close)

    async def chunks(self, *, gzip: bool = False) -> AsyncGenerator[bytes, None]:
        compressor = (
            zlib.compressobj(self.gzip_level, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzip else None
        )
        head = BOM if self.query.bom else ""
        if self.query.header:
            head += self._format.header([c.name for c in self.query.columns])
        if head:
            yield _compress(head.encode("utf-8"), compressor)
        # The next batch is read (in C, no GIL) while this one is formatted (pyarrow
        # kernels, no GIL): on two cores the slower of the two sets the pace.
        self._reading = asyncio.ensure_future(anyio.to_thread.run_sync(self._read))
        try:
            while batch := await asyncio.shield(self._reading):
                self._reading = asyncio.ensure_future(anyio.to_thread.run_sync(self._read))
                chunk = await anyio.to_thread.run_sync(self._format_batch, batch, compressor)
                self.rows += batch.num_rows
                if chunk:
                    yield chunk
        except Exception as exc:
            logger.warning(
                "export of %s failed after %d rows: %s", self.dataset.name, self.rows, exc
            )
            raise
        if compressor is not None:
            yield compressor.flush()

    def _read(self) -> pa.RecordBatch | None:
        """The next batch (in a worker thread); None at the end."""
        if self._closed:
            return None
        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            return None
        if self._first:
            self._first = False
            batch = batch.slice(1)  # the row of empty strings that fixed the types
        return batch

    def _format_batch(self, batch: pa.RecordBatch, compressor: zlib._Compress | None) -> bytes:
        if batch.num_rows == 0:
            return b""
        return _compress(self._arrow.batch(batch), compressor)

    async def aclose(self) -> None:
        if self._closed:
            return
        if self._on_close is not None:
            self._on_close(self)
        self._closed = True
        with anyio.CancelScope(shield=True):
            reading = self._reading
            if reading is not None:  # a read in flight finishes first (it cannot be interrupted)
                await asyncio.wait([reading])
                if not reading.cancelled():
                    reading.exception()  # retrieved: a failure was reported by chunks()
            await anyio.to_thread.run_sync(self._release)

    def _release(self) -> None:
        database, connection = self._connection
        for close in (self._reader.close, self._cursor.close, connection.close, database.close):
            try:
                close()
            except Exception as exc:  # nothing left to release
                logger.debug("closing export of %s: %s", self.dataset.name, exc)


def _start(path: str, sql: str, batch_rows: int) -> tuple[Any, Any, Any]:
    """Open the database, run the statement, and its batch reader (in a worker thread).

    The driver manager's own objects, not its DB-API module: that one imports
    pandas and polars where they are installed, 90 MiB for nothing here.
    """
    database = adbc_driver_sqlite.connect(path)
    connection = statement = None
    try:
        connection = adbc_driver_manager.AdbcConnection(database)
        pragma = adbc_driver_manager.AdbcStatement(connection)
        try:
            # As the service's own connections: wait for a writer rather than fail at once.
            pragma.set_sql_query(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            pragma.execute_update()
        finally:
            pragma.close()
        statement = adbc_driver_manager.AdbcStatement(connection)
        statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
        statement.set_sql_query(sql)
        stream, _ = statement.execute_query()
        reader = pa.RecordBatchReader._import_from_c(stream.address)
    except BaseException:
        for handle in (statement, connection, database):
            if handle is not None:
                handle.close()
        raise
    return (database, connection), statement, reader


def _compress(data: bytes, compressor: zlib._Compress | None) -> bytes:
    if compressor is None:
        return data
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
