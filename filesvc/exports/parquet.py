"""Rows → an Apache Parquet file, a row group at a time, with the declared column types.

The schema comes from the dataset's declared types, never from the data:
integers are ``int64``, floats ``double``, decimals with a declared
precision ``decimal128``/``decimal256`` (an unconstrained NUMERIC has no
scale a Parquet decimal could hold exactly, so it is its exact text),
booleans ``bool``, zoned datetimes ``timestamp[us, UTC]`` (naive ones
``timestamp[us]``), dates ``date32``, times ``time64[us]``, text, UUIDs and
JSON ``string`` (JSON as its text), binary ``binary``; anything else its text.

Rows are gathered until a row group is full (:attr:`ParquetChunks.group_rows`),
which is then encoded and compressed in a worker thread (pyarrow releases the
GIL) and its bytes handed out at once: memory holds one row group, whatever
the row count. The footer, which indexes the groups, ends the file.

A value that does not fit its column's type (SQLite lets a writer store
text in an INTEGER column) cannot be written into a typed column: it is
written as null and counted in the log, never a failure mid-file.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import types as sqltypes

from filesvc.exports.datasets import DatasetColumn

logger = logging.getLogger("filesvc.exports")

MEDIA_TYPE = "application/vnd.apache.parquet"


def arrow_type(column: DatasetColumn) -> pa.DataType:
    """The Parquet (Arrow) type of a dataset column, from its declared type."""
    kind = column.kind
    if kind == "integer":
        return pa.int64()
    if kind == "float":
        return pa.float64()
    if kind == "decimal":
        sql_type = column.column.type
        precision = getattr(sql_type, "precision", None)
        scale = getattr(sql_type, "scale", None)
        if isinstance(sql_type, sqltypes.Numeric) and precision and scale is not None:
            if precision <= 38:
                return pa.decimal128(precision, scale)
            if precision <= 76:
                return pa.decimal256(precision, scale)
        return pa.string()
    if kind == "boolean":
        return pa.bool_()
    if kind == "datetime":
        return pa.timestamp("us", tz="UTC") if column.aware else pa.timestamp("us")
    if kind == "date":
        return pa.date32()
    if kind == "time":
        return pa.string() if column.aware else pa.time64("us")
    if kind == "binary":
        return pa.binary()
    return pa.string()


def arrow_schema(columns: Sequence[DatasetColumn]) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c)) for c in columns])


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | uuid.UUID):
        return value.isoformat() if isinstance(value, datetime) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return value if isinstance(value, str) else str(value)


def _fitting(arrow: pa.DataType) -> Callable[[Any], Any]:
    """What a value becomes in a column of type ``arrow``: itself, its text, or None."""
    if pa.types.is_string(arrow):
        return lambda value: None if value is None else _text(value)
    if pa.types.is_timestamp(arrow):
        zoned = arrow.tz is not None

        def moment(value: Any) -> Any:
            if not isinstance(value, datetime):
                return None
            if zoned and value.tzinfo is None:
                return value.replace(tzinfo=UTC)  # naive means UTC, as SQLite reads it
            if not zoned and value.tzinfo is not None:
                return value.astimezone(UTC).replace(tzinfo=None)
            return value

        return moment
    return lambda value: value


class ParquetChunks:
    """Batches of rows in, the bytes of a Parquet file out."""

    #: Rows of a row group: a few MiB of CSV-sized data, small enough to keep memory flat.
    group_rows = 65_536

    def __init__(self, columns: Sequence[DatasetColumn], dataset: str) -> None:
        self.schema = arrow_schema(columns)
        self.dataset = dataset
        self._fits = [_fitting(field.type) for field in self.schema]
        self._pending: list[list[Any]] = [[] for _ in columns]
        self._sink = _Sink()
        self._writer = pq.ParquetWriter(
            pa.PythonFile(self._sink, mode="w"), self.schema, compression="zstd"
        )
        self.misfits = 0

    @property
    def pending_rows(self) -> int:
        return len(self._pending[0]) if self._pending else 0

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        """Gather ``rows`` (cheap: no encoding here)."""
        for index, values in enumerate(zip(*rows, strict=True)):
            self._pending[index].extend(values)

    def flush(self) -> bytes:
        """Write what was gathered as one row group; the file's bytes so far. Blocking."""
        if self.pending_rows:
            pending = zip(self.schema, self._pending, strict=True)
            arrays = [
                self._array(index, field.type, values)
                for index, (field, values) in enumerate(pending)
            ]
            self._pending = [[] for _ in self._pending]
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        return self._drain()

    def close(self) -> bytes:
        """The rest of the file: the last row group and the footer. Blocking."""
        data = self.flush()
        self._writer.close()
        return data + self._drain()

    def take(self) -> bytes:
        """What the writer has written and nobody has taken yet."""
        return self._sink.take()

    def _drain(self) -> bytes:
        return self._sink.take()

    def _array(self, index: int, arrow: pa.DataType, values: list[Any]) -> pa.Array:
        fit = self._fits[index]
        converted = [fit(v) for v in values] if not pa.types.is_integer(arrow) else values
        try:
            return pa.array(converted, type=arrow)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
        cells = []
        for value in converted:
            try:
                pa.array([value], type=arrow)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                self.misfits += 1
                value = None
            cells.append(value)
        logger.warning(
            "export of %s: %d values do not fit their column type; written as null",
            self.dataset,
            self.misfits,
        )
        return pa.array(cells, type=arrow)


class _Sink(io.RawIOBase):
    """Where the writer puts the file: bytes kept until taken, and its length."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        part = bytes(data)
        self._parts.append(part)
        self._position += len(part)
        return len(part)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data
