"""A running export: database rows in, CSV chunks out, memory flat.

:meth:`Exporter.open` does everything that can fail cleanly — finds the
dataset (404), checks the query (400), connects and starts the statement
(503 when the database is down) — before a byte of CSV exists. Then
:meth:`ExportStream.chunks` reads the rows from a server-side cursor
(``AsyncConnection.stream`` with ``yield_per``: asyncpg's cursor on
PostgreSQL, aiosqlite's stepping cursor on SQLite) a batch at a time. The next
batch is asked for before the current one is formatted and sent, so that what
can run beside us does (SQLite's stepping, which releases the GIL in
aiosqlite's thread; PostgreSQL's executor, in its own process). The gain is
small: building Python rows holds the GIL whichever thread does it.

Batches are sized to give chunks of about :attr:`ExportStream.chunk_bytes`:
formatting one takes well under a millisecond, so it is done on the event
loop. Measured on a 1 M-row table, a worker thread per batch cost 5–10 % more
CPU and gained nothing: formatting is Python code, so it holds the GIL
wherever it runs, and the hop to the thread is pure overhead. gzip is the
exception: zlib releases the GIL, so compression goes to a worker thread and
the event loop stays free while it runs. 64 KiB chunks measured fastest:
128 KiB took a third more CPU, and so did reading four chunks' rows at a
time (the rows and their transposition no longer fit the CPU caches).

A failure after the first chunk propagates: the HTTP layer must then end the
connection without the final chunk, so that no client takes a truncated file
for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncResult

from filesvc.config import Settings
from filesvc.errors import DatasetNotFound, ServiceUnavailable
from filesvc.exports.csvformat import BOM, CSVFormat
from filesvc.exports.datasets import Catalog, Dataset
from filesvc.exports.pgcopy import CopyExport
from filesvc.exports.query import ExportQuery, parse_query
from filesvc.metrics import Metrics

if TYPE_CHECKING:
    # Imported when first used: pyarrow's libraries are some 70 MiB of a process's
    # memory, which a service that never exports need not hold.
    from filesvc.exports.sqlitearrow import ArrowExport

logger = logging.getLogger("filesvc.exports")


class ExportStream:
    """One export on its way out: a connection, its streaming result, the CSV format."""

    #: Rows of the first batch: few, so that the first rows leave at once.
    first_batch_rows = 100
    #: Bytes of CSV a batch aims at; later batches are sized from the earlier ones.
    chunk_bytes = 64 * 1024
    min_batch_rows = 1
    max_batch_rows = 8192
    #: Rows the driver fetches per round trip.
    yield_per = 8192
    #: Seconds a stopped export waits for a read in flight before interrupting it.
    read_grace_seconds = 2.0
    #: zlib level of gzip-coded exports: fast, and most of the gain on CSV.
    gzip_level = 4

    def __init__(
        self,
        query: ExportQuery,
        connection: AsyncConnection,
        result: AsyncResult[Any],
        on_close: Callable[[Any], None] | None = None,
    ) -> None:
        self.query = query
        self.rows = 0
        #: Rows the next read asks for (the first few, so that the first bytes leave at once).
        self.batch_rows = self.first_batch_rows
        self._connection = connection
        self._result = result
        self._format = CSVFormat(
            query.delimiter,
            formula_escape=query.formula_escape,
            raw=frozenset(i for i, c in enumerate(query.columns) if c.raw),
        )
        self._on_close = on_close
        self._closed = False

    @property
    def dataset(self) -> Dataset:
        return self.query.dataset

    @classmethod
    async def open(
        cls,
        engine: AsyncEngine,
        query: ExportQuery,
        on_close: Callable[[Any], None] | None = None,
    ) -> ExportStream:
        """Connect and start the statement: a database that is down fails here, not mid-file."""
        connection = await engine.connect()
        try:
            statement = query.statement().execution_options(yield_per=cls.yield_per)
            result = await connection.stream(statement)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await connection.close()
            raise
        return cls(query, connection, result, on_close)

    async def chunks(self, *, gzip: bool = False) -> AsyncGenerator[bytes, None]:
        """The CSV, in chunks of encoded (and with ``gzip``, compressed) bytes."""
        compressor = (
            zlib.compressobj(self.gzip_level, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzip else None
        )
        head = BOM if self.query.bom else ""
        if self.query.header:
            head += self._format.header([c.name for c in self.query.columns])
        if head:
            yield self._encode(head, compressor)
        async for rows in self.batches():
            text = self._format.rows(rows)
            if compressor is None:
                chunk = text.encode("utf-8")
            else:
                chunk = await anyio.to_thread.run_sync(self._encode, text, compressor)
            self.rows += len(rows)
            yield chunk
            self.batch_rows = max(
                self.min_batch_rows,
                min(self.max_batch_rows, len(rows) * self.chunk_bytes // max(len(text), 1)),
            )
        if compressor is not None:
            yield compressor.flush()

    async def parquet_chunks(self) -> AsyncGenerator[bytes, None]:
        """The rows as a Parquet file: a row group's bytes as soon as it is full."""
        from filesvc.exports.parquet import ParquetChunks

        writer = await anyio.to_thread.run_sync(
            ParquetChunks, self.query.columns, self.dataset.name
        )
        head = writer.take()  # the file's magic number: the first bytes leave at once
        if head:
            yield head
        async for rows in self.batches():
            writer.add(rows)
            self.rows += len(rows)
            self.batch_rows = self.max_batch_rows
            if writer.pending_rows >= writer.group_rows:
                data = await anyio.to_thread.run_sync(writer.flush)
                if data:
                    yield data
        yield await anyio.to_thread.run_sync(writer.close)

    async def batches(self) -> AsyncGenerator[Sequence[Any], None]:
        """The rows, a batch at a time; a batch holds :attr:`batch_rows` rows, read ahead."""
        result = self._result
        # The next batch is read while this one is formatted and sent: the
        # database's side of the work overlaps with ours.
        reading = asyncio.ensure_future(result.fetchmany(self.batch_rows))
        try:
            # Shielded: a cancelled export lets a read finish (see _settle) rather
            # than interrupt the driver mid-call, which would spoil the connection.
            while rows := await asyncio.shield(reading):
                reading = asyncio.ensure_future(result.fetchmany(self.batch_rows))
                yield rows
        except Exception as exc:
            logger.warning(
                "export of %s failed after %d rows: %s", self.dataset.name, self.rows, exc
            )
            raise
        finally:
            await self._settle(reading)

    async def _settle(self, reading: asyncio.Future[Any]) -> None:
        """Wait for a read in flight, for a while; then interrupt it."""
        with anyio.CancelScope(shield=True):
            if not reading.done():
                with anyio.move_on_after(self.read_grace_seconds):
                    await asyncio.wait([reading])
            if not reading.done():  # a long first read (a sort, say): stop the database
                reading.cancel()
                await asyncio.wait([reading])
        if not reading.cancelled():
            reading.exception()  # retrieved: a read abandoned half-way may have failed

    @staticmethod
    def _encode(text: str, compressor: zlib._Compress | None) -> bytes:
        data = text.encode("utf-8")
        if compressor is None:
            return data
        # Flushed every chunk, so that a client can decode each as it arrives.
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    async def aclose(self) -> None:
        """Stop reading and hand the connection back; safe to call twice, and when cancelled."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close(self)
        # An interrupted or broken connection is invalidated: its cursor is gone with it.
        closers = [self._connection.close]
        if not self._connection.invalidated:
            closers.insert(0, self._result.close)
        with anyio.CancelScope(shield=True):
            for close in closers:
                try:
                    await close()
                except Exception as exc:  # a broken connection has nothing left to release
                    logger.debug("closing export of %s: %s", self.dataset.name, exc)


class Exporter:
    """What a process keeps for exports: the dataset catalog and the running exports."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.catalog = Catalog(settings.export_tables)
        #: Exports one process runs at once; each holds a database connection throughout.
        self.max_running = settings.max_concurrent_exports
        self.running: set[AnyExport] = set()
        #: Whether an export may take its dialect's fast path (off: always the row path).
        self.fast_paths = settings.export_fast_paths
        self._starting = 0
        self._metrics = metrics
        if metrics is not None:
            metrics.export_slots.set(self.max_running)

    @property
    def slots_in_use(self) -> int:
        return len(self.running) + self._starting

    def _slots_changed(self) -> None:
        if self._metrics is not None:
            self._metrics.export_slots_in_use.set(self.slots_in_use)

    def _closed(self, stream: Any) -> None:
        self.running.discard(stream)
        self._slots_changed()

    async def plan(
        self, engine: AsyncEngine, name: str, params: Sequence[tuple[str, str]]
    ) -> ExportQuery:
        """The checked query of an export of dataset ``name`` (404, 400), without running it."""
        dataset = await self.catalog.get(engine, name)
        if dataset is None:
            raise DatasetNotFound(f"There is no dataset named '{name}'.")
        return parse_query(dataset, params, dialect=engine.dialect.name)

    async def open(
        self,
        engine: AsyncEngine,
        name: str,
        params: Sequence[tuple[str, str]],
        *,
        parquet: bool = False,
    ) -> AnyExport:
        """A started export of dataset ``name``; 404, 400 or 503 before any CSV exists."""
        query = await self.plan(engine, name, params)
        if self.slots_in_use >= self.max_running:
            raise ServiceUnavailable(
                f"{self.max_running} exports are running already; try again shortly."
            )
        self._starting += 1  # holds its place while it connects
        self._slots_changed()
        try:
            stream: AnyExport | None = None
            if not parquet and self.fast_paths:
                stream = await _fast_path(engine, query, self._closed)
            if stream is None:
                stream = await ExportStream.open(engine, query, on_close=self._closed)
            self.running.add(stream)
        finally:
            self._starting -= 1
            self._slots_changed()
        return stream


#: A running export: the row path's stream, or a fast path's.
AnyExport: TypeAlias = "ExportStream | CopyExport | ArrowExport"


async def _fast_path(
    engine: AsyncEngine, query: ExportQuery, on_close: Callable[[Any], None]
) -> AnyExport | None:
    """The dialect's fast path for ``query``, started; None when it cannot take it."""
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg":
        return await CopyExport.open(engine, query, on_close)
    if engine.dialect.name == "sqlite":
        from filesvc.exports.sqlitearrow import ArrowExport

        return await ArrowExport.open(engine, query, on_close)
    return None
