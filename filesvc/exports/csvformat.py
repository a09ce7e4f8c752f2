r"""Rows → RFC 4180 CSV text, a batch at a time.

The output is what PostgreSQL's ``COPY … TO STDOUT (FORMAT csv)`` writes,
plus OWASP formula escaping: CRLF line ends, a field quoted only when it
holds the delimiter, a quote, CR or LF (quotes doubled) or is ``\.`` (which
``COPY … FROM`` reads as the end of the data when it stands alone on a
line), NULL as an empty unquoted field and the empty string as ``""``.
Numbers, booleans and datetimes are written exactly and never escaped; only
text can be a formula. A JSON column (:meth:`CSVFormat.rows`'s ``raw``) is
its JSON text, quoted as needed but never formula-escaped.

``csv.writer`` cannot tell NULL from ``""`` before Python 3.12
(``QUOTE_NOTNULL``), and at about 2 µs a row it alone would take longer than
``sqlite3 -csv`` needs for the whole export. So a batch is formatted a
column at a time: one C-level pass per column finds its value types, and a
text column is joined once and searched for the few characters that need
work. A column whose values need none (the usual case) is used as it is;
only the columns that do are formatted value by value. Rows are then joined
in C. The result is the same text as a value-by-value writer would give
(``tests/test_csvformat.py`` checks it against one) in about half the time
of ``csv.writer``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

NoneType = type(None)

#: The delimiters on offer, by the name a client uses.
DELIMITERS = {"comma": ",", "semicolon": ";", "tab": "\t"}
#: Characters that make a spreadsheet read a cell as a formula (OWASP CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LINE_END = "\r\n"
BOM = "\ufeff"

# Joins a text column's values for one search; a value holding it can only
# cause a needless slow path, never a missed one.
_SEPARATOR = "\x00"
_FORMULA_AFTER_SEPARATOR = re.compile("\x00[=+\\-@\t\r]")
# NULL → empty field, empty string → "" : one C-level dict lookup per value.
_NULL_AND_EMPTY = {None: "", "": '""', "\\.": '"\\."'}
#: The end-of-data marker of PostgreSQL's COPY: quoted wherever it is a whole field.
END_OF_DATA = "\\."
_NONE_REPR = {"None": ""}
_BOOLEANS = {True: "true", False: "false", None: ""}


def _datetime(value: datetime) -> str:
    if value.tzinfo is None:
        return value.isoformat()
    return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def _binary(value: bytes | bytearray | memoryview) -> str:
    return "\\x" + bytes(value).hex()  # PostgreSQL's bytea hex output


def _decimal(value: Decimal) -> str:
    return format(value, "f")  # never exponent notation: 1E+2 is written 100


#: Values written exactly as these give them; none of them can need quoting.
_PLAIN: dict[type, Callable[[Any], str]] = {
    int: int.__repr__,
    float: float.__repr__,  # shortest exact repr, as csv.writer writes floats
    bool: _BOOLEANS.__getitem__,
    Decimal: _decimal,
    datetime: _datetime,
    date: date.isoformat,
    uuid.UUID: str,
    bytes: _binary,
    bytearray: _binary,
    memoryview: _binary,
}
#: Values turned into text first, then treated as text.
_TEXTUAL: dict[type, Callable[[Any], str]] = {
    dict: lambda value: json.dumps(value, ensure_ascii=False),
    list: lambda value: json.dumps(value, ensure_ascii=False, default=str),
    time: time.isoformat,
    timedelta: str,
}


class CSVFormat:
    """How cells are written: the delimiter, and whether formulas are escaped."""

    __slots__ = ("delimiter", "formula_escape", "raw", "_escape", "_quote")

    def __init__(
        self,
        delimiter: str = ",",
        *,
        formula_escape: bool = True,
        raw: frozenset[int] = frozenset(),
    ) -> None:
        if delimiter not in DELIMITERS.values():
            raise ValueError(f"unsupported delimiter {delimiter!r}")
        self.delimiter = delimiter
        self.formula_escape = formula_escape
        #: Positions of columns whose text is data (JSON), never a formula.
        self.raw = raw

        # Closures over locals: these run once per value of the columns that need them.
        def escape(value: str | None) -> str | None:
            return "'" + value if value and value.startswith(FORMULA_STARTS) else value

        def quote(value: str | None) -> str | None:
            if value and (delimiter in value or '"' in value or "\n" in value or "\r" in value):
                return '"' + value.replace('"', '""') + '"'
            return '"\\."' if value == END_OF_DATA else value

        self._escape = escape
        self._quote = quote

    def __repr__(self) -> str:
        return f"CSVFormat({self.delimiter!r}, formula_escape={self.formula_escape})"

    def header(self, names: Sequence[str]) -> str:
        return self.rows([names])

    def rows(self, rows: Sequence[Sequence[Any]]) -> str:
        """The CSV text of ``rows``, each line ended by CRLF."""
        if not rows:
            return ""
        columns = [
            self._column(values, index in self.raw)
            for index, values in enumerate(zip(*rows, strict=True))
        ]
        return LINE_END.join(map(self.delimiter.join, zip(*columns, strict=True))) + LINE_END

    def cell(self, value: Any, raw: bool = False) -> str:
        """One value as a field: the reference that :meth:`rows` agrees with."""
        if value is None:
            return ""
        plain = _PLAIN.get(type(value))
        if plain is not None:
            return plain(value)
        text = value if type(value) is str else _TEXTUAL.get(type(value), str)(value)
        if not text:
            return '""'
        if self.formula_escape and not raw:
            text = self._escape(text) or text
        return self._quote(text) or text

    def _raw_cell(self, value: Any) -> str:
        return self.cell(value, True)

    def _column(self, values: tuple[Any, ...], raw: bool = False) -> Iterable[str]:
        types = set(map(type, values))
        nulls = NoneType in types
        if types <= {str, NoneType}:
            return self._text(values, nulls, raw)
        if types <= {int, float, NoneType}:
            if not nulls:
                return map(repr, values)
            texts = list(map(repr, values))  # repr(None) is "None": no number's text
            return map(_NONE_REPR.get, texts, texts)
        if types <= {bool, NoneType}:
            return map(_BOOLEANS.__getitem__, values)
        if len(types) == 1:
            plain = _PLAIN.get(types.pop())
            if plain is not None:
                return map(plain, values)
        return map(self._raw_cell if raw else self.cell, values)

    def _text(self, values: tuple[str | None, ...], nulls: bool, raw: bool) -> Iterable[str]:
        joined = _SEPARATOR.join(filter(None, values) if nulls else values)  # type: ignore[arg-type]
        cells: Iterable[str | None] = values
        if (
            self.formula_escape
            and not raw
            and (joined.startswith(FORMULA_STARTS) or _FORMULA_AFTER_SEPARATOR.search(joined))
        ):
            cells = map(self._escape, cells)
        d = self.delimiter
        if d in joined or '"' in joined or "\n" in joined or "\r" in joined:
            cells = map(self._quote, cells)
        if nulls or "" in values or END_OF_DATA in values:
            cells = list(cells)
            return map(_NULL_AND_EMPTY.get, cells, cells)  # type: ignore[arg-type]
        return cells  # type: ignore[return-value]  # no None in it
