"""An export's query: ``?columns=…&order_by=…&col__gt=…&limit=…`` → a SQL statement.

Every name is looked up among the dataset's columns and every value is
parsed by its column's kind, then bound as a parameter of a SQLAlchemy Core
``select()``: no SQL text is ever made from what a client sends. Anything
not understood is :class:`~filesvc.errors.InvalidRequest` (400), raised here,
before a byte of CSV exists.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import Select, String, cast, func, literal, select
from sqlalchemy import types as sqltypes
from sqlalchemy.sql.elements import ColumnElement

from filesvc.errors import InvalidRequest
from filesvc.exports.csvformat import DELIMITERS
from filesvc.exports.datasets import Dataset, DatasetColumn

#: Longest query string accepted, in characters.
MAX_QUERY_CHARS = 8192
#: Longest value of one parameter (a whole ``__in`` list), in characters.
MAX_VALUE_CHARS = 2048
#: Most filters in one query.
MAX_FILTERS = 32
#: Most values in one ``__in`` list.
MAX_IN_VALUES = 500

OPTIONS = ("columns", "order_by", "limit", "bom", "delimiter", "header", "formula_escape")
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "isnull")

_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,4})?")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
# SQLite keeps datetimes as text in whatever form they were written: both
# sides of a comparison are brought to one form (UTC, milliseconds) first.
_SQLITE_NORMAL = {"datetime": "%Y-%m-%d %H:%M:%f", "time": "%H:%M:%f"}


@dataclass(frozen=True, slots=True)
class ExportQuery:
    """What to export and how: checked against the dataset, ready to run."""

    dataset: Dataset
    columns: tuple[DatasetColumn, ...]
    where: tuple[ColumnElement[bool], ...] = ()
    order_by: tuple[ColumnElement[Any], ...] = ()
    limit: int | None = None
    bom: bool = False
    delimiter: str = ","
    header: bool = True
    formula_escape: bool = True

    def statement(self) -> Select[Any]:
        query = select(*(c.output for c in self.columns)).where(*self.where)
        query = query.order_by(*self.order_by)
        return query if self.limit is None else query.limit(self.limit)


def parse_query_string(raw: str) -> list[tuple[str, str]]:
    """The parameters of a URL query string, bounded in size and number."""
    if len(raw) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"The query string is longer than {MAX_QUERY_CHARS} characters.")
    try:
        return parse_qsl(
            raw,
            keep_blank_values=True,
            max_num_fields=MAX_FILTERS + len(OPTIONS),
            errors="strict",
        )
    except UnicodeDecodeError as exc:
        raise InvalidRequest("The query string is not valid UTF-8.") from exc
    except ValueError as exc:
        raise InvalidRequest(
            f"Too many query parameters: at most {MAX_FILTERS} filters and the options."
        ) from exc


def parse_query(
    dataset: Dataset, params: Sequence[tuple[str, str]], *, dialect: str
) -> ExportQuery:
    """Check ``params`` against ``dataset``; every problem is a 400 naming the parameter."""
    options: dict[str, str] = {}
    where: list[ColumnElement[bool]] = []
    for key, value in params:
        if len(value) > MAX_VALUE_CHARS:
            raise _invalid(key, f"is longer than {MAX_VALUE_CHARS} characters")
        if "\x00" in value:
            raise _invalid(key, "contains a NUL character")
        if key in OPTIONS:
            if key in options:
                raise _invalid(key, "is given more than once")
            options[key] = value
            continue
        if len(where) == MAX_FILTERS:
            raise InvalidRequest(f"Too many filters: at most {MAX_FILTERS}.")
        where.append(_filter(dataset, key, value, dialect))

    columns = dataset.columns
    if "columns" in options:
        columns = tuple(_column(dataset, "columns", name) for name in options["columns"].split(","))
        if len({c.name for c in columns}) != len(columns):
            raise _invalid("columns", "names a column twice")
    return ExportQuery(
        dataset=dataset,
        columns=columns,
        where=tuple(where),
        order_by=_order(dataset, options.get("order_by"), dialect),
        limit=_limit(options.get("limit")),
        bom=_flag(options, "bom", False),
        delimiter=_delimiter(options.get("delimiter")),
        header=_flag(options, "header", True),
        formula_escape=_flag(options, "formula_escape", True),
    )


def _invalid(parameter: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"'{parameter}' {problem}.", details={"parameter": parameter})


def _column(dataset: Dataset, parameter: str, name: str) -> DatasetColumn:
    column = dataset.column(name)
    if column is None:
        raise InvalidRequest(
            f"'{parameter}': dataset '{dataset.name}' has no column '{name}'.",
            details={"parameter": parameter, "columns": [c.name for c in dataset.columns]},
        )
    return column


def _flag(options: dict[str, str], key: str, default: bool) -> bool:
    if key not in options:
        return default
    flag = _BOOLEANS.get(options[key].lower())
    if flag is None:
        raise _invalid(key, "must be true or false")
    return flag


def _delimiter(value: str | None) -> str:
    if value is None:
        return ","
    if value not in DELIMITERS:
        raise _invalid("delimiter", f"must be one of {', '.join(DELIMITERS)}")
    return DELIMITERS[value]


def _limit(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise _invalid("limit", "must be a whole number of rows")
    return int(value)


def _order(dataset: Dataset, value: str | None, dialect: str) -> tuple[ColumnElement[Any], ...]:
    if value is None:
        return tuple(c.column for c in dataset.default_order)
    chosen: list[tuple[DatasetColumn, bool]] = []
    for item in value.split(","):
        descending = item.startswith("-")
        column = _column(dataset, "order_by", item.removeprefix("-"))
        if not column.comparable:
            raise _invalid("order_by", f"cannot order by '{column.name}' ({column.kind})")
        if any(column is c for c, _ in chosen):
            raise _invalid("order_by", f"names '{column.name}' twice")
        chosen.append((column, descending))
    # Ties are broken by the key, or by every column when there is none, so
    # that the same request always gives the same rows in the same order.
    tiebreak = dataset.key or tuple(c for c in dataset.columns if c.comparable)
    chosen += [(c, False) for c in tiebreak if all(c is not o for o, _ in chosen)]
    return tuple(_sort(column, descending, dialect) for column, descending in chosen)


def _sort(column: DatasetColumn, descending: bool, dialect: str) -> ColumnElement[Any]:
    clause = column.column.desc() if descending else column.column.asc()
    if dialect == "sqlite" and column.column.nullable:
        # NULL sorts above every value, as in PostgreSQL, whichever the database.
        clause = clause.nulls_first() if descending else clause.nulls_last()
    return clause


def _filter(dataset: Dataset, key: str, value: str, dialect: str) -> ColumnElement[bool]:
    column, operator = _filter_target(dataset, key)
    sql = column.column
    if operator == "isnull":
        flag = _BOOLEANS.get(value.lower())
        if flag is None:
            raise _invalid(key, "must be true or false")
        return sql.is_(None) if flag else sql.is_not(None)
    if not column.comparable:
        raise _invalid(key, f"cannot filter on '{column.name}' ({column.kind}), only __isnull")
    parse = _parser(column, key, dialect)
    normal = _SQLITE_NORMAL.get(column.kind) if dialect == "sqlite" else None
    left: ColumnElement[Any] = _comparable(column, dialect)
    if normal is not None:
        left = func.strftime(normal, sql)

    def bound(text: str) -> Any:
        parsed = parse(text)
        return func.strftime(normal, literal(parsed, String)) if normal is not None else parsed

    if operator == "in":
        items = value.split(",")
        if len(items) > MAX_IN_VALUES:
            raise _invalid(key, f"lists more than {MAX_IN_VALUES} values")
        return left.in_([bound(item) for item in items])
    return _COMPARISONS[operator](left, bound(value))


def _filter_target(dataset: Dataset, key: str) -> tuple[DatasetColumn, str]:
    """The column and operator of a filter parameter: ``col``, or ``col__op``."""
    name, separator, operator = key.rpartition("__")
    if separator and name:
        column = dataset.column(name)
        if column is not None and operator in OPERATORS:
            return column, operator
    column = dataset.column(key)
    if column is not None:
        return column, "eq"
    if separator and name and dataset.column(name) is not None:
        raise _invalid(key, f"has an unknown operator; known: {', '.join(OPERATORS)}")
    return _column(dataset, key, name if separator and operator in OPERATORS else key), "eq"


_COMPARISONS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def _comparable(column: DatasetColumn, dialect: str) -> ColumnElement[Any]:
    # A native enum compares with text only once cast; its labels are checked first.
    if isinstance(column.column.type, sqltypes.Enum) and dialect == "postgresql":
        return cast(column.column, String)
    return column.column


def _parser(column: DatasetColumn, key: str, dialect: str) -> Callable[[str], Any]:
    """The function that turns a filter's text into a value of ``column``'s kind."""
    kind = column.kind

    def parse(text: str) -> Any:
        try:
            value = _PARSERS[kind](text)
        except (ValueError, ArithmeticError) as exc:
            raise _invalid(key, f"needs {_ARTICLE[kind]}, not '{text}'") from exc
        if kind == "integer":
            limit = 1 << (column.bits - 1)
            if not -limit <= value < limit:
                raise _invalid(key, f"is out of range for '{column.name}'")
        elif kind == "decimal" and dialect == "sqlite":
            value = float(value)  # SQLite stores such numbers as REAL or INTEGER
        elif kind == "datetime":
            value = _moment(value, column, key, dialect)
        elif kind == "time":
            if (value.tzinfo is not None) != column.aware:
                needs = "a time with a zone" if column.aware else "a time without a zone"
                raise _invalid(key, f"needs {needs}")
            if dialect == "sqlite":
                value = value.isoformat()
        elif kind == "text" and isinstance(column.column.type, sqltypes.Enum):
            labels = column.column.type.enums
            if labels and value not in labels:
                raise _invalid(key, f"must be one of {', '.join(labels)}")
        return value

    return parse


def _moment(value: datetime, column: DatasetColumn, key: str, dialect: str) -> Any:
    if column.aware and value.tzinfo is None:
        raise _invalid(key, "needs a time zone, e.g. 2026-01-01T00:00:00Z")
    try:
        return _moment_for(value, column, dialect)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+14:00 has no UTC value
        raise _invalid(key, "is outside the range of dates") from exc


def _moment_for(value: datetime, column: DatasetColumn, dialect: str) -> Any:
    if dialect == "sqlite":
        # Naive values (and naive stored text) mean UTC, as SQLite's own functions read them.
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    if value.tzinfo is None:
        return value
    # In UTC here, so that a moment with no UTC value fails here, not in the driver.
    utc = value.astimezone(UTC)
    return utc if column.aware else utc.replace(tzinfo=None)


def _integer(text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError(text)
    return int(text)


def _number(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if not _NUMBER.fullmatch(text):
            raise ValueError(text)
        return convert(text)

    return parse


def _boolean(text: str) -> bool:
    flag = _BOOLEANS.get(text.lower())
    if flag is None:
        raise ValueError(text)
    return flag


_PARSERS: dict[str, Callable[[str], Any]] = {
    "integer": _integer,
    "float": _number(float),
    "decimal": _number(Decimal),
    "boolean": _boolean,
    "date": date.fromisoformat,
    "datetime": datetime.fromisoformat,
    "time": time.fromisoformat,
    "text": str,
    "uuid": uuid.UUID,
}
_ARTICLE = {
    "integer": "an integer",
    "float": "a number",
    "decimal": "a number",
    "boolean": "true or false",
    "date": "an ISO 8601 date",
    "datetime": "an ISO 8601 date and time",
    "time": "an ISO 8601 time",
    "text": "text",
    "uuid": "a UUID",
}
