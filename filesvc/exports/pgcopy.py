"""The PostgreSQL fast path: ``COPY (SELECT …) TO STDOUT WITH (FORMAT csv)`` through asyncpg.

The export's checked ``select()`` (SQLAlchemy builds it, as for every path)
is compiled with its values inlined, because COPY takes no parameters; each
value was parsed by its column's type first, and SQLAlchemy's literal
rendering escapes text for the connection's ``standard_conforming_strings``.
The SELECT list renders what COPY's CSV would write differently from the row
path: the formula guard (``'`` before ``= + - @`` tab CR in text cells),
``true``/``false``, datetimes as ISO 8601 (UTC with ``Z`` when zoned) and
JSON as its text. COPY does the rest in C inside the server: quoting (as
:mod:`~filesvc.exports.csvformat` does), NULL as an empty field and ``""``
for the empty string. Its lines end in LF; a record's LF (one outside
quotes) becomes CRLF here with a few C-level byte operations per chunk.

Columns of kinds this rendering does not cover (times, intervals, binary,
arrays, …) make the export take the row path instead (:func:`supports`).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
from sqlalchemy import Float, Text, case, cast, func, literal, select
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from filesvc.exports.csvformat import BOM, FORMULA_STARTS, CSVFormat
from filesvc.exports.datasets import Dataset, DatasetColumn
from filesvc.exports.query import ExportQuery

logger = logging.getLogger("filesvc.exports")

#: Kinds whose COPY rendering equals the row path's.
KINDS = frozenset(
    {"integer", "float", "decimal", "boolean", "date", "datetime", "text", "uuid", "json"}
)

_ISO = 'YYYY-MM-DD"T"HH24:MI:SS'


def supports(query: ExportQuery) -> bool:
    return all(c.kind in KINDS for c in query.columns)


def _rendered(column: DatasetColumn, formula_escape: bool) -> ColumnElement[Any]:
    sql = column.column
    kind = column.kind
    if kind == "boolean":
        rendered: ColumnElement[Any] = case((sql.is_(True), "true"), (sql.is_(False), "false"))
    elif kind == "datetime":
        # One to_char with microseconds; ".000000" (the only place it can be) is cut,
        # as Python's isoformat leaves a whole second without a fraction.
        moment = func.timezone("UTC", sql) if column.aware else sql
        iso = func.replace(func.to_char(moment, literal(_ISO + ".US")), ".000000", "")
        rendered = iso + "Z" if column.aware else iso
    elif kind == "date":
        rendered = func.to_char(sql, "YYYY-MM-DD")
    elif kind in {"json", "uuid"}:
        rendered = cast(sql, Text)
    elif kind == "text":
        text = cast(sql, Text)
        rendered = text
        if formula_escape:
            rendered = case(
                (func.left(text, 1).in_(list(FORMULA_STARTS)), literal("'") + text), else_=text
            )
    elif kind == "float":
        # PostgreSQL writes the shortest exact text, as Python does, but a whole
        # number without ".0": added, so that both paths agree and readers see floats.
        text = cast(sql, Text)
        # A float literal: a numeric one would convert every value to numeric.
        whole = (sql == func.trunc(sql)) & (func.abs(sql) < cast(literal(1e15), Float()))
        rendered = case((whole, text + ".0"), else_=text)
    else:  # integers and numeric: PostgreSQL's own text is exact (numeric: never an exponent)
        rendered = sql
    return rendered.label(column.name)


def copy_sql(query: ExportQuery, dialect: Any) -> str:
    """The SELECT that COPY runs, values inlined; CompileError when one cannot be."""
    statement = select(*(_rendered(c, query.formula_escape) for c in query.columns))
    statement = statement.select_from(query.dataset.columns[0].column.table)
    statement = statement.where(*query.where).order_by(*query.order_by)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


class CRLF:
    """LF → CRLF at the end of each record, never inside a quoted value; state kept across chunks.

    Between two quotes is a quoted value (a doubled quote toggles twice, so it
    changes nothing), and only there can a record hold an LF of its own.
    """

    def __init__(self) -> None:
        self.inside = False
        #: Records ended so far.
        self.records = 0

    def __call__(self, data: bytes) -> bytes:
        if b'"' not in data:
            if self.inside:
                return data
            self.records += data.count(b"\n")
            return data.replace(b"\n", b"\r\n")
        parts = data.split(b'"')
        start = 1 if self.inside else 0
        outside = parts[start::2]
        self.records += sum(p.count(b"\n") for p in outside)
        parts[start::2] = [p.replace(b"\n", b"\r\n") for p in outside]
        if len(parts) % 2 == 0:  # an odd number of quotes
            self.inside = not self.inside
        return b'"'.join(parts)


class CopyExport:
    """One export on its way out through COPY: the same interface as the row path's stream."""

    #: Bytes gathered into one chunk, as the row path aims at.
    chunk_bytes = 64 * 1024
    #: COPY data kept while the client is slower than the database (back-pressure past it).
    queue_chunks = 8
    gzip_level = 4
    #: Seconds one COPY may take, however slowly its client reads.
    copy_timeout_seconds = 24 * 3600.0
    #: Seconds a stopped export waits for the server to acknowledge a cancel.
    cancel_grace_seconds = 5.0

    def __init__(
        self,
        query: ExportQuery,
        connection: AsyncConnection,
        driver: Any,
        sql: str,
        on_close: Callable[[Any], None] | None,
    ) -> None:
        self.query = query
        self.rows = 0
        self._connection = connection
        self._driver = driver
        self._sql = sql
        self._on_close = on_close
        self._copy: asyncio.Task[Any] | None = None
        self._closed = False
        self._format = CSVFormat(query.delimiter, formula_escape=query.formula_escape)

    @property
    def dataset(self) -> Dataset:
        return self.query.dataset

    @classmethod
    async def open(
        cls,
        engine: AsyncEngine,
        query: ExportQuery,
        on_close: Callable[[Any], None] | None = None,
    ) -> CopyExport | None:
        """Connected and ready; None when this query needs the row path."""
        if not supports(query):
            return None
        connection = await engine.connect()
        try:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            settings = driver.get_settings()
            if (
                getattr(settings, "standard_conforming_strings", "on") != "on"
                or int(getattr(settings, "extra_float_digits", "1")) < 1
            ):
                sql = None  # inlined text or float output would differ: the row path is exact
            else:
                try:
                    sql = copy_sql(query, engine.dialect)
                except (CompileError, NotImplementedError) as exc:
                    logger.debug("export of %s takes the row path: %s", query.dataset.name, exc)
                    sql = None
            if sql is None:
                with anyio.CancelScope(shield=True):
                    await connection.close()
                return None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await connection.close()
            raise
        return cls(query, connection, driver, sql, on_close)

    async def chunks(self, *, gzip: bool = False) -> AsyncGenerator[bytes, None]:
        compressor = (
            zlib.compressobj(self.gzip_level, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzip else None
        )
        head = BOM if self.query.bom else ""
        if self.query.header:
            head += self._format.header([c.name for c in self.query.columns])
        if head:
            yield _compress(head.encode("utf-8"), compressor)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        room = asyncio.Semaphore(self.queue_chunks)

        async def sink(data: bytes) -> None:
            await room.acquire()  # waits while the client is slow: COPY then waits too
            queue.put_nowait(data)

        async def run() -> None:
            try:
                await self._driver.copy_from_query(
                    self._sql,
                    output=sink,
                    format="csv",
                    delimiter=self.query.delimiter,
                    # asyncpg's timeout covers the whole COPY, waits for the client
                    # included: a slow reader is cut off by the send timeout instead.
                    timeout=self.copy_timeout_seconds,
                )
            finally:
                queue.put_nowait(None)

        self._copy = asyncio.create_task(run())
        crlf = CRLF()
        try:
            while True:
                data = await queue.get()
                if data is None:
                    break
                room.release()
                parts = [data]
                size = len(data)
                while size < self.chunk_bytes and not queue.empty():
                    more = queue.get_nowait()
                    if more is None:
                        queue.put_nowait(None)
                        break
                    room.release()
                    parts.append(more)
                    size += len(more)
                chunk = crlf(b"".join(parts))
                self.rows = crlf.records
                if compressor is None:
                    yield chunk
                else:
                    yield await anyio.to_thread.run_sync(_compress, chunk, compressor)
            await self._copy  # raises what went wrong: no final chunk then
        except Exception as exc:
            logger.warning(
                "export of %s failed after %d rows: %s", self.dataset.name, self.rows, exc
            )
            raise
        if compressor is not None:
            yield compressor.flush()

    async def aclose(self) -> None:
        """Stop COPY (asyncpg cancels it in the server) and hand the connection back."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close(self)
        with anyio.CancelScope(shield=True):
            copy = self._copy
            if copy is not None and not copy.done():
                copy.cancel()
                with anyio.move_on_after(self.cancel_grace_seconds):
                    await asyncio.wait([copy])
                if not copy.done():  # the server did not answer: drop the connection
                    self._driver.terminate()
                    await self._connection.invalidate()
            if copy is not None and copy.done() and not copy.cancelled():
                copy.exception()  # retrieved: a failure was reported by chunks()
            try:
                await self._connection.close()
            except Exception as exc:
                logger.debug("closing export of %s: %s", self.dataset.name, exc)


def _compress(data: bytes, compressor: zlib._Compress | None) -> bytes:
    if compressor is None:
        return data
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
