"""Unit tests of filesvc.serving: validators, conditions, ranges, headers, the response."""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import hashlib
import re
import tracemalloc
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from filesvc.errors import PreconditionFailed, RangeNotSatisfiable
from filesvc.serving import (
    MAX_ENTITY_TAGS,
    MAX_RANGES,
    ByteRange,
    Conditions,
    EntityTag,
    Multipart,
    Representation,
    StoredFileResponse,
    TruncatedObject,
    ascii_filename,
    content_disposition,
    http_date,
    multipart_chunks,
    parse_entity_tags,
    parse_http_date,
    parse_range,
    repr_digest,
    select,
    strong_match,
    weak_match,
)

DATA = bytes(range(256)) * 4  # 1024 bytes
SHA = hashlib.sha256(DATA).hexdigest()
CREATED = datetime(2026, 3, 1, 12, 30, 45, 678_000, tzinfo=UTC)
LAST_MODIFIED = "Sun, 01 Mar 2026 12:30:45 GMT"
REP = Representation.of(size=len(DATA), content_type="image/png", sha256=SHA, created_at=CREATED)
ETAG = f'"{SHA}"'


# --- validators ----------------------------------------------------------------------


def test_representation_validators() -> None:
    assert REP.etag == ETAG
    assert REP.last_modified_http == LAST_MODIFIED  # whole seconds, GMT
    assert REP.last_modified == int(CREATED.timestamp())
    upper = Representation.of(size=1, content_type="x/y", sha256=SHA.upper(), created_at=CREATED)
    assert upper.etag == ETAG


@pytest.mark.parametrize("seconds", [0, 784111777, 951782400, 1772368245, 4102444799])
def test_http_date_is_imf_fixdate(seconds: int) -> None:
    assert http_date(seconds) == email.utils.formatdate(seconds, usegmt=True)
    assert parse_http_date(http_date(seconds)) == seconds


def test_repr_digest_is_rfc_9530_base64_of_the_raw_digest() -> None:
    empty = hashlib.sha256(b"").hexdigest()
    assert repr_digest(empty) == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", 784111777),  # obsolete asctime
        ("sun, 06 nov 1994 08:49:37 gmt", 784111777),  # case is forgiven
        ("  Sun, 06 Nov 1994 08:49:37 GMT  ", 784111777),
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun, 06 Nov 1994 08:49:37", None),
        ("Sun, 31 Feb 1994 08:49:37 GMT", None),
        ("Sun, 06 Foo 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 25:49:37 GMT", None),
        ("1994-11-06T08:49:37Z", None),
        ("", None),
        ("Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT", None),
    ],
)
def test_parse_http_date(text: str, expected: int | None) -> None:
    assert parse_http_date(text) == expected


def test_rfc850_two_digit_years_never_land_more_than_50_years_ahead() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_http_date("Saturday, 01-Jan-77 00:00:00 GMT", now=now) == 220924800  # 1977
    assert parse_http_date("Tuesday, 01-Jan-76 00:00:00 GMT", now=now) == 3345062400  # 2076
    assert parse_http_date("Friday, 01-Jan-38 00:00:00 GMT", now=now) == 2145916800  # 2038


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", None),
        (" * ", None),
        ('"a"', [EntityTag(False, "a")]),
        ('W/"a"', [EntityTag(True, "a")]),
        ('"a", W/"b" ,"c"', [EntityTag(False, "a"), EntityTag(True, "b"), EntityTag(False, "c")]),
        ('"a,b"', [EntityTag(False, "a,b")]),  # a comma is a valid etagc
        (',, "a" ,,', [EntityTag(False, "a")]),
        ('a, "b"', [EntityTag(False, "b")]),  # unquoted members match nothing
        ('"a" junk, "b"', [EntityTag(False, "b")]),
        ('w/"a"', []),  # the weak prefix is case-sensitive
        ("", []),
        ('"unterminated', []),
    ],
)
def test_parse_entity_tags(text: str, expected: list[EntityTag] | None) -> None:
    assert parse_entity_tags(text) == expected


def test_strong_and_weak_comparison() -> None:
    assert strong_match(None, SHA) and weak_match(None, SHA)
    assert strong_match([EntityTag(False, SHA)], SHA)
    assert not strong_match([EntityTag(True, SHA)], SHA)
    assert weak_match([EntityTag(True, SHA)], SHA)
    assert not weak_match([EntityTag(False, "other")], SHA)
    assert not strong_match([], SHA) and not weak_match([], SHA)


# --- ranges --------------------------------------------------------------------------

R = ByteRange


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 100, [R(0, 1)]),
        ("bytes=0-99", 100, [R(0, 100)]),
        ("bytes=10-", 100, [R(10, 100)]),
        ("bytes=-10", 100, [R(90, 100)]),
        ("bytes=-1000", 100, [R(0, 100)]),  # a suffix longer than the file is all of it
        ("bytes=90-1000", 100, [R(90, 100)]),  # clipped at the end
        ("bytes=99-", 100, [R(99, 100)]),
        ("Bytes=0-1", 100, [R(0, 2)]),  # the unit is case-insensitive
        ("bytes=0-1,5-6", 100, [R(0, 2), R(5, 7)]),
        ("bytes=5-6,0-1", 100, [R(5, 7), R(0, 2)]),  # order kept
        ("bytes= 0-1 ,\t5-6 ", 100, [R(0, 2), R(5, 7)]),  # OWS around members
        ("bytes=0-1,,5-6,", 100, [R(0, 2), R(5, 7)]),  # empty members
        ("bytes=0-1,200-300", 100, [R(0, 2)]),  # unsatisfiable members are dropped
        ("bytes=0-" + "9" * 40, 100, [R(0, 100)]),  # beyond any int limit
        ("bytes=-" + "9" * 40, 100, [R(0, 100)]),
        # valid but unsatisfiable
        ("bytes=100-", 100, []),
        ("bytes=100-200", 100, []),
        ("bytes=-0", 100, []),
        ("bytes=" + "9" * 40 + "-", 100, []),
        ("bytes=0-", 0, []),
        ("bytes=0-0", 0, []),
        # invalid: ignored (the whole file is sent)
        ("bytes=5-2", 100, None),  # last-pos before first-pos
        ("bytes=-", 100, None),
        ("bytes=", 100, None),
        ("bytes=,", 100, None),
        ("bytes=0 - 1", 100, None),
        ("bytes=a-b", 100, None),
        ("bytes=0-1x", 100, None),
        ("bytes=1.5-2", 100, None),
        ("bytes=+1-2", 100, None),
        ("bytes 0-1", 100, None),
        ("items=0-1", 100, None),
        ("0-1", 100, None),
        ("bytes=0-1, bytes=2-3", 100, None),  # two Range lines joined
        ("bytes=-5", 0, None),  # a suffix of an empty file: nothing to name in Content-Range
    ],
)
def test_parse_range(header: str, size: int, expected: list[ByteRange] | None) -> None:
    assert parse_range(header, size) == expected


def test_byte_range_content_range() -> None:
    assert R(0, 1).content_range(10) == "bytes 0-0/10"
    assert R(5, 10).content_range(10) == "bytes 5-9/10"
    assert R(5, 10).length == 5


# --- select: RFC 9110 §13.2.2 --------------------------------------------------------

EARLIER = "Sun, 01 Mar 2026 12:30:44 GMT"
LATER = "Sun, 01 Mar 2026 12:30:46 GMT"
WHOLE = (R(0, 1024),)


def conditions(**fields: str) -> Conditions:
    return Conditions(**fields)


@pytest.mark.parametrize(
    ("method", "fields", "status", "ranges"),
    [
        ("GET", {}, 200, WHOLE),
        ("HEAD", {}, 200, WHOLE),
        # If-Match: strong comparison, 412 when it fails
        ("GET", {"if_match": ETAG}, 200, WHOLE),
        ("GET", {"if_match": "*"}, 200, WHOLE),
        ("GET", {"if_match": f'"x", {ETAG}'}, 200, WHOLE),
        ("GET", {"if_match": '"x"'}, 412, ()),
        ("GET", {"if_match": f"W/{ETAG}"}, 412, ()),
        # If-Unmodified-Since, ignored under If-Match or when not a date
        ("GET", {"if_unmodified_since": LAST_MODIFIED}, 200, WHOLE),
        ("GET", {"if_unmodified_since": LATER}, 200, WHOLE),
        ("GET", {"if_unmodified_since": EARLIER}, 412, ()),
        ("GET", {"if_unmodified_since": "yesterday"}, 200, WHOLE),
        ("GET", {"if_match": ETAG, "if_unmodified_since": EARLIER}, 200, WHOLE),
        # If-None-Match: weak comparison, 304 for GET and HEAD
        ("GET", {"if_none_match": ETAG}, 304, ()),
        ("HEAD", {"if_none_match": ETAG}, 304, ()),
        ("GET", {"if_none_match": f"W/{ETAG}"}, 304, ()),
        ("GET", {"if_none_match": f'"x", {ETAG}'}, 304, ()),
        ("GET", {"if_none_match": "*"}, 304, ()),
        ("GET", {"if_none_match": '"x"'}, 200, WHOLE),
        # If-Modified-Since, ignored under If-None-Match or when not a date
        ("GET", {"if_modified_since": LAST_MODIFIED}, 304, ()),
        ("GET", {"if_modified_since": LATER}, 304, ()),
        ("GET", {"if_modified_since": EARLIER}, 200, WHOLE),
        ("GET", {"if_modified_since": "garbage"}, 200, WHOLE),
        ("GET", {"if_none_match": '"x"', "if_modified_since": LATER}, 200, WHOLE),
        ("GET", {"if_none_match": ETAG, "if_modified_since": EARLIER}, 304, ()),
        # 412 is decided before 304
        ("GET", {"if_match": '"x"', "if_none_match": ETAG}, 412, ()),
        # Range, GET only
        ("GET", {"range": "bytes=0-9"}, 206, (R(0, 10),)),
        ("HEAD", {"range": "bytes=0-9"}, 200, WHOLE),
        ("GET", {"range": "bytes=0-1,10-11"}, 206, (R(0, 2), R(10, 12))),
        ("GET", {"range": "bytes=9-0"}, 200, WHOLE),
        ("GET", {"range": "bytes=0-9", "if_none_match": ETAG}, 304, ()),
        ("GET", {"range": "bytes=0-9", "if_match": '"x"'}, 412, ()),
        # If-Range: a strong ETag or the exact Last-Modified
        ("GET", {"range": "bytes=0-9", "if_range": ETAG}, 206, (R(0, 10),)),
        ("GET", {"range": "bytes=0-9", "if_range": '"x"'}, 200, WHOLE),
        ("GET", {"range": "bytes=0-9", "if_range": f"W/{ETAG}"}, 200, WHOLE),
        ("GET", {"range": "bytes=0-9", "if_range": LAST_MODIFIED}, 206, (R(0, 10),)),
        ("GET", {"range": "bytes=0-9", "if_range": LATER}, 200, WHOLE),
        ("GET", {"range": "bytes=0-9", "if_range": "garbage"}, 200, WHOLE),
        ("GET", {"if_range": '"x"'}, 200, WHOLE),  # without Range it is ignored
        ("GET", {"range": "bytes=5000-", "if_range": '"x"'}, 200, WHOLE),
    ],
)
def test_select(
    method: str, fields: dict[str, str], status: int, ranges: tuple[ByteRange, ...]
) -> None:
    if status == 412:
        with pytest.raises(PreconditionFailed):
            select(method, conditions(**fields), REP)
        return
    selection = select(method, conditions(**fields), REP)
    assert (selection.status, selection.ranges) == (status, ranges)


def test_unsatisfiable_range_is_416_with_the_size() -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        select("GET", conditions(range="bytes=1024-"), REP)
    assert caught.value.headers == {"Content-Range": "bytes */1024"}


def test_too_many_ranges_send_the_whole_file() -> None:
    allowed = ",".join(f"{i}-{i}" for i in range(MAX_RANGES))
    assert select("GET", conditions(range=f"bytes={allowed}"), REP).status == 206
    too_many = ",".join(f"{i}-{i}" for i in range(MAX_RANGES + 1))
    assert select("GET", conditions(range=f"bytes={too_many}"), REP) == select(
        "GET", Conditions(), REP
    )


def test_the_range_cap_counts_specs_as_they_are_scanned() -> None:
    # Past the cap nothing after it is looked at: not even what would make the header invalid.
    specs = ",".join(["0-0"] * (MAX_RANGES + 1))
    assert parse_range(f"bytes={specs},junk", 100) is None
    # Unsatisfiable specs count too: 33 of them are the whole file, not a 416.
    unsatisfiable = ",".join(["500-600"] * (MAX_RANGES + 1))
    assert select("GET", conditions(range=f"bytes={unsatisfiable}"), REP).ranges == WHOLE
    # Empty members are not specs: any number of them costs one C-level match.
    assert parse_range("bytes=" + "," * 100_000 + "0-0", 100) == [R(0, 1)]


def test_entity_tag_lists_past_the_cap_match_nothing() -> None:
    ours = f'"{SHA}"'
    within = ", ".join(['"x"'] * (MAX_ENTITY_TAGS - 1) + [ours])
    assert select("GET", conditions(if_none_match=within), REP).status == 304
    beyond = ", ".join(['"x"'] * MAX_ENTITY_TAGS + [ours])
    assert parse_entity_tags(beyond) == []
    assert select("GET", conditions(if_none_match=beyond), REP).status == 200
    with pytest.raises(PreconditionFailed):
        select("GET", conditions(if_match=beyond), REP)
    # Malformed members count as members: they cannot be used to walk the list for free.
    assert parse_entity_tags(", ".join(["junk"] * MAX_ENTITY_TAGS + [ours])) == []


#: Headers of a few megabytes, as three kinds of hostile request send them.
HUGE_HEADERS = {
    "range of a million members": [(b"range", b"bytes=" + b"0-0," * 1_000_000)],
    "range on 100k lines": [(b"range", b"bytes=0-0")] + [(b"range", b"1-1")] * 100_000,
    "if-none-match of a million tags": [(b"if-none-match", b'"x", ' * 1_000_000)],
    "if-match of a million malformed tags": [(b"if-match", b"x, " * 1_000_000)],
}


@pytest.mark.parametrize("case", HUGE_HEADERS)
def test_huge_headers_cost_no_more_memory_than_their_own_size(case: str) -> None:
    """Memory, unlike time, can be asserted exactly: splitting a header into
    millions of members (what made it slow) allocates many times its size."""
    headers = HUGE_HEADERS[case]
    size = sum(len(name) + len(value) for name, value in headers)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            selection = select("GET", Conditions.from_raw(headers), REP)
        except PreconditionFailed:
            selection = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert selection is None or selection.ranges == WHOLE
    # The joined value (latin-1 bytes, then text: two copies) and little else.
    assert peak < 3 * size + 1_000_000, (peak, size)


def test_overlapping_ranges_asking_more_than_the_file_send_it_whole() -> None:
    assert select("GET", conditions(range="bytes=0-9,5-14"), REP).status == 206
    assert select("GET", conditions(range="bytes=0-,0-"), REP).ranges == WHOLE
    assert select("GET", conditions(range="bytes=-1024,0-0"), REP).status == 200


def test_empty_file() -> None:
    empty = Representation.of(
        size=0, content_type="image/png", sha256=hashlib.sha256(b"").hexdigest(), created_at=CREATED
    )
    assert select("GET", Conditions(), empty).ranges == (R(0, 0),)
    assert select("GET", conditions(range="bytes=-5"), empty).ranges == (R(0, 0),)
    with pytest.raises(RangeNotSatisfiable) as caught:
        select("GET", conditions(range="bytes=0-"), empty)
    assert caught.value.headers == {"Content-Range": "bytes */0"}


def test_conditions_from_raw_headers_join_repeated_lines() -> None:
    raw = [
        (b"host", b"x"),
        (b"if-none-match", b'"a"'),
        (b"range", b"bytes=0-1"),
        (b"if-none-match", b' "b" '),
    ]
    parsed = Conditions.from_raw(raw)
    assert parsed.if_none_match == '"a", "b"'
    assert parsed.range == "bytes=0-1"
    assert parsed.if_match is None
    assert Conditions.from_raw([(b"host", b"x")]) == Conditions()


# --- Content-Disposition -------------------------------------------------------------


def _decoded_filename(header: str) -> str:
    """What an RFC 6266 recipient takes as the name: ``filename*`` first, else ``filename``."""
    extended = re.search(r"; filename\*=UTF-8''([^;\s]*)", header)
    if extended:
        return urllib.parse.unquote(extended.group(1), errors="strict")
    plain = re.search(r'; filename="([^"]*)"', header)
    assert plain is not None
    return plain.group(1)


@pytest.mark.parametrize(
    ("name", "content_type", "expected"),
    [
        ("photo.jpg", "image/jpeg", 'inline; filename="photo.jpg"'),
        ("scan.tiff", "image/tiff", 'inline; filename="scan.tiff"'),
        ("doc.pdf", "application/pdf", 'attachment; filename="doc.pdf"'),
        ("a.zip", "application/zip", 'attachment; filename="a.zip"'),
        (
            "résumé.pdf",
            "application/pdf",
            "attachment; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
        ),
        (
            "写真.png",
            "image/png",
            "inline; filename=\"__.png\"; filename*=UTF-8''%E5%86%99%E7%9C%9F.png",
        ),
        (
            'a"b\\c.png',
            "image/png",
            "inline; filename=\"a_b_c.png\"; filename*=UTF-8''a%22b%5Cc.png",
        ),
        (
            "100%.png",
            "image/png",
            "inline; filename=\"100_.png\"; filename*=UTF-8''100%25.png",
        ),
    ],
)
def test_content_disposition(name: str, content_type: str, expected: str) -> None:
    header = content_disposition(name, content_type)
    assert header == expected
    assert _decoded_filename(header) == name


@pytest.mark.parametrize(
    "name", ["evil\r\nSet-Cookie: a=b.png", "tab\there.png", 'x";y=".png', "\x00\x7f.png"]
)
def test_content_disposition_cannot_be_broken_out_of(name: str) -> None:
    header = content_disposition(name, "image/png")
    assert all(" " <= ch <= "~" for ch in header)
    assert header.count('"') == 2
    assert _decoded_filename(header) == name


def test_ascii_filename() -> None:
    assert ascii_filename("Ångström café.png") == "Angstrom cafe.png"
    assert ascii_filename("ﬁle.png") == "file.png"  # compatibility ligature folded
    assert ascii_filename("   ") == "file"
    assert ascii_filename("ß") == "_"


# --- multipart/byteranges --------------------------------------------------------------


def _body_of(multipart: Multipart, ranges: list[ByteRange]) -> bytes:
    return (
        b"".join(h + DATA[r.start : r.stop] for h, r in zip(multipart.heads, ranges, strict=True))
        + multipart.trailer
    )


def test_multipart_framing_is_known_up_front_and_parses() -> None:
    ranges = [R(0, 10), R(500, 520), R(1020, 1024)]
    multipart = Multipart.build(ranges, len(DATA), "image/png", boundary="BOUNDARY")
    body = _body_of(multipart, ranges)
    assert multipart.content_length == len(body)
    assert multipart.content_type == "multipart/byteranges; boundary=BOUNDARY"
    assert body.startswith(b"\r\n--BOUNDARY\r\nContent-Type: image/png\r\n")
    assert body.endswith(b"\r\n--BOUNDARY--\r\n")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {multipart.content_type}\r\n\r\n".encode() + body
    )
    parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in parts] == [
        "bytes 0-9/1024",
        "bytes 500-519/1024",
        "bytes 1020-1023/1024",
    ]
    assert [p.get_payload(decode=True) for p in parts] == [DATA[r.start : r.stop] for r in ranges]


def test_multipart_boundaries_are_random() -> None:
    a = Multipart.build([R(0, 1), R(2, 3)], 10, "image/png")
    b = Multipart.build([R(0, 1), R(2, 3)], 10, "image/png")
    assert a.boundary != b.boundary and len(a.boundary) >= 16


# --- streaming -----------------------------------------------------------------------


class Reader:
    """A storage reader over DATA that records whether it was closed."""

    def __init__(self, offset: int, length: int, chunk: int = 100) -> None:
        self.data = DATA[offset : offset + length]
        self.chunk = chunk
        self.closed = False
        self.served = 0

    def __aiter__(self) -> Reader:
        return self

    async def __anext__(self) -> bytes:
        if self.served >= len(self.data):
            raise StopAsyncIteration
        piece = self.data[self.served : self.served + self.chunk]
        self.served += len(piece)
        return piece

    async def aclose(self) -> None:
        self.closed = True


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def completed(self) -> bool:
        return self.messages[-1] == {
            "type": "http.response.body",
            "body": self.messages[-1]["body"],
            "more_body": False,
        }


async def never_disconnects() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


SCOPE: dict[str, Any] = {"type": "http", "method": "GET"}


@pytest.mark.anyio
async def test_response_streams_exactly_content_length_and_closes_the_reader() -> None:
    reader = Reader(0, 1024)
    response = StoredFileResponse(200, [("etag", ETAG)], body=reader, content_length=1024)
    send = Recorder()
    await response(SCOPE, never_disconnects, send)
    start = send.messages[0]
    assert start["status"] == 200
    assert (b"content-length", b"1024") in start["headers"]
    assert (b"etag", ETAG.encode()) in start["headers"]
    assert send.body == DATA and send.completed
    assert len(send.messages) == 1 + 11  # 100-byte chunks, the last one closes the body
    assert reader.closed


@pytest.mark.anyio
async def test_response_trims_a_reader_that_yields_too_much() -> None:
    reader = Reader(0, 1024)
    send = Recorder()
    await StoredFileResponse(206, [], body=reader, content_length=150)(
        SCOPE, never_disconnects, send
    )
    assert send.body == DATA[:150] and send.completed and reader.closed


@pytest.mark.anyio
async def test_response_never_completes_a_truncated_object() -> None:
    reader = Reader(0, 500)
    send = Recorder()
    with pytest.raises(TruncatedObject):
        await StoredFileResponse(200, [], body=reader, content_length=1024)(
            SCOPE, never_disconnects, send
        )
    assert send.body == DATA[:500]
    assert all(m.get("more_body", True) for m in send.messages[1:])
    assert reader.closed


@pytest.mark.anyio
async def test_response_without_body() -> None:
    send = Recorder()
    await StoredFileResponse(304, [("etag", ETAG)])(SCOPE, never_disconnects, send)
    assert [m["type"] for m in send.messages] == ["http.response.start", "http.response.body"]
    assert not any(k == b"content-length" for k, _ in send.messages[0]["headers"])
    head = Recorder()
    await StoredFileResponse(200, [], content_length=1024)(SCOPE, never_disconnects, head)
    assert (b"content-length", b"1024") in head.messages[0]["headers"]
    assert head.body == b""


class EndlessReader(Reader):
    async def __anext__(self) -> bytes:
        self.served += 1
        return b"x" * 65536


@pytest.mark.anyio
async def test_a_disconnect_stops_reading_storage() -> None:
    reader = EndlessReader(0, 0)
    sent = 0

    async def send(message: Any) -> None:
        nonlocal sent
        sent += 1
        await anyio.sleep(0)

    async def receive() -> dict[str, Any]:
        await anyio.sleep(0.05)
        return {"type": "http.disconnect"}

    response = StoredFileResponse(200, [], body=reader, content_length=10**12)
    await response(SCOPE, receive, send)
    assert reader.closed
    assert 0 < reader.served < 10**12 // 65536


@pytest.mark.anyio
async def test_multipart_chunks_open_each_range_and_close_them() -> None:
    ranges = [R(0, 10), R(100, 350), R(1000, 1024)]
    multipart = Multipart.build(ranges, len(DATA), "image/png")
    opened: list[Reader] = []

    async def open_range(offset: int, length: int) -> AsyncIterator[bytes]:
        reader = Reader(offset, length)
        opened.append(reader)
        return reader

    first = Reader(0, 10)
    body = b"".join([c async for c in multipart_chunks(open_range, ranges, multipart, first=first)])
    assert body == _body_of(multipart, ranges)
    assert first.closed and len(opened) == 2 and all(r.closed for r in opened)


@pytest.mark.anyio
async def test_multipart_chunks_close_an_unused_first_reader() -> None:
    ranges = [R(0, 10), R(20, 30)]
    multipart = Multipart.build(ranges, len(DATA), "image/png")
    first = Reader(0, 10)

    async def opener(offset: int, length: int) -> AsyncIterator[bytes]:
        raise AssertionError("the second range is never reached")

    chunks = multipart_chunks(opener, ranges, multipart, first=first)
    await chunks.__anext__()  # the first part's head only
    await chunks.aclose()  # type: ignore[attr-defined]
    assert first.closed
