"""CSV formatting: exact strings, and the batch formatter against the cell-by-cell reference."""

from __future__ import annotations

import csv
import io
import random
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from filesvc.exports.csvformat import CSVFormat

plain = CSVFormat()


def test_quoting_follows_rfc_4180() -> None:
    rows = [
        ["plain", "with,comma", 'with "quotes"', "line\nfeed", "carriage\rreturn", "crlf\r\nend"],
    ]
    assert plain.rows(rows) == (
        'plain,"with,comma","with ""quotes""","line\nfeed","carriage\rreturn","crlf\r\nend"\r\n'
    )


def test_null_is_an_empty_field_and_the_empty_string_is_quoted() -> None:
    assert plain.rows([[None, "", "x", None], ["", None, None, ""]]) == ',"",x,\r\n"",,,""\r\n'


def test_a_single_null_column_is_an_empty_line_as_copy_writes_it() -> None:
    assert plain.rows([[None], [""], ["a"]]) == '\r\n""\r\na\r\n'


def test_unicode_passes_through() -> None:
    assert (
        plain.rows([["żółć", "日本語", "emoji 🎉", "ａ，ｂ"]]) == "żółć,日本語,emoji 🎉,ａ，ｂ\r\n"
    )


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("=SUM(A1:A2)", "'=SUM(A1:A2)"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", '"\'\rx"'),
        ("=a,b", '"\'=a,b"'),
        ('=HYPERLINK("x")', '"\'=HYPERLINK(""x"")"'),
        ("a=b", "a=b"),
        (" =x", " =x"),
    ],
)
def test_formulas_are_escaped_in_text(value: str, written: str) -> None:
    assert plain.rows([[value]]) == written + "\r\n"
    assert plain.rows([["ok", value, "ok"]]) == f"ok,{written},ok\r\n"


def test_formula_escape_can_be_turned_off() -> None:
    raw = CSVFormat(formula_escape=False)
    assert raw.rows([["=1+2", "-x", "@y", "\tz"]]) == "=1+2,-x,@y,\tz\r\n"


def test_numbers_are_exact_and_never_escaped() -> None:
    row = [-5, -0.5, 0.1 + 0.2, 1e-7, 10**30, Decimal("-1E+2"), Decimal("0.10"), 2.5e16]
    big = "1" + "0" * 30
    assert plain.rows([row]) == f"-5,-0.5,0.30000000000000004,1e-07,{big},-100,0.10,2.5e+16\r\n"


def test_booleans_dates_and_times() -> None:
    row = [
        True,
        False,
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 5, 4, 5, 120000, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 2, 3, 4, 5),
        date(2026, 1, 2),
        time(3, 4, 5),
    ]
    assert plain.rows([row]) == (
        "true,false,2026-01-02T03:04:05Z,2026-01-02T03:04:05.120000Z,2026-01-02T03:04:05,"
        "2026-01-02,03:04:05\r\n"
    )


def test_other_types() -> None:
    key = uuid.UUID("12345678-1234-5678-1234-567812345678")
    row = [key, b"\x00\xff", {"a": [1, "b"]}, [1, 2], timedelta(days=1, hours=2)]
    assert plain.rows([row]) == (
        '12345678-1234-5678-1234-567812345678,\\x00ff,"{""a"": [1, ""b""]}","[1, 2]",'
        '"1 day, 2:00:00"\r\n'
    )


def test_semicolon_and_tab_delimiters_quote_themselves_not_commas() -> None:
    assert CSVFormat(";").rows([["a", "b;c", "d,e", None]]) == 'a;"b;c";d,e;\r\n'
    assert CSVFormat("\t").rows([["a", "b\tc", "d,e", None]]) == 'a\t"b\tc"\td,e\t\r\n'


def test_header() -> None:
    assert plain.header(["id", "name, full", "=x"]) == 'id,"name, full",\'=x\r\n'


def test_an_unknown_delimiter_is_refused() -> None:
    with pytest.raises(ValueError):
        CSVFormat("|")


# Values chosen to hit every path: NULLs, empty strings, formula starts,
# characters that need quoting, mixed types in one column.
_POOL: list[Any] = [
    None,
    "",
    "a",
    "hello world",
    "=1",
    "-",
    "+x",
    "@",
    "\t",
    "\r",
    "\n",
    '"',
    ",",
    ";",
    "a\r\nb",
    "\x00=",
    "x\x00",
    "ünï",
    0,
    -1,
    2**70,
    1.5,
    -0.0,
    float("inf"),
    True,
    False,
    Decimal("1.10"),
    Decimal("-3E-9"),
    datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
    datetime(2026, 5, 1, 12, 0),
    date(2026, 5, 1),
    b"\x01",
    {"k": "v,w"},
]


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("escape", [True, False])
def test_batches_agree_with_the_cell_by_cell_reference(
    seed: int, delimiter: str, escape: bool
) -> None:
    rng = random.Random(seed)
    width = rng.randint(1, 6)
    # Each column draws from its own small slice of the pool, so that some
    # columns are all of one type (the fast paths) and others mixed.
    slices = [rng.sample(_POOL, rng.randint(1, 5)) for _ in range(width)]
    rows = [[rng.choice(slices[c]) for c in range(width)] for _ in range(rng.randint(1, 40))]
    fmt = CSVFormat(delimiter, formula_escape=escape)
    expected = "".join(delimiter.join(fmt.cell(v) for v in row) + "\r\n" for row in rows)
    assert fmt.rows(rows) == expected


@pytest.mark.parametrize("seed", range(10))
def test_text_round_trips_through_the_csv_module(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = 'ab ,;"\r\n\t=+-@ü'
    rows = [
        ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(4)]
        for _ in range(50)
    ]
    text = CSVFormat(formula_escape=False).rows(rows)
    assert list(csv.reader(io.StringIO(text, newline=""))) == rows
