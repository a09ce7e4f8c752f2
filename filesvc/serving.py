"""HTTP semantics of static file URLs, apart from any route or backend.

Validators (RFC 9110 §8.8), conditional requests (§13), byte ranges (§14),
``multipart/byteranges`` (§14.6), ``Content-Disposition`` (RFC 6266) and
``Repr-Digest`` (RFC 9530) as pure functions of the request headers and the
stored file's metadata, plus :class:`StoredFileResponse`, an ASGI response
that streams the selected bytes from any storage backend with flat memory.

Where nginx follows the RFC we agree with it; where it does not, we follow
the RFC (see the README's "Static URLs" section for the list).
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Self
from urllib.parse import quote

import anyio
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from filesvc.errors import PreconditionFailed, RangeNotSatisfiable
from filesvc.sniffing import RASTER_IMAGE_TYPES

logger = logging.getLogger("filesvc")

#: Most ranges one request may ask for; with more, the whole file is sent
#: (200), as nginx does past ``max_ranges``. Each range costs a storage read.
#: Scanning stops at the first member past it, however long the header is.
MAX_RANGES = 32
#: Most members of an ``If-Match``/``If-None-Match`` list that are looked at;
#: a longer list matches nothing (If-Match: 412; If-None-Match: no 304), so a
#: header of millions of tags costs no more than this many comparisons.
MAX_ENTITY_TAGS = 64
#: Public files never change under their URL (a new upload gets a new id).
PUBLIC_CACHE_CONTROL = "public, max-age=31536000, immutable"
#: Private files stay out of shared caches and off disk.
PRIVATE_CACHE_CONTROL = "private, no-store"

#: The request headers this module reads; everything else is left alone.
CONDITION_HEADERS = frozenset(
    {
        b"range",
        b"if-range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
    }
)


class ByteRange(NamedTuple):
    """Bytes ``start`` up to, not including, ``stop``."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


@dataclass(frozen=True, slots=True)
class Representation:
    """What a static URL serves: the stored file as HTTP describes it."""

    size: int
    content_type: str
    sha256: str
    #: Seconds since the epoch, whole: HTTP dates have no fractions.
    last_modified: int

    @classmethod
    def of(cls, *, size: int, content_type: str, sha256: str, created_at: datetime) -> Self:
        return cls(size, content_type, sha256.lower(), int(created_at.timestamp()))

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'

    @property
    def last_modified_http(self) -> str:
        return http_date(self.last_modified)

    @property
    def repr_digest(self) -> str:
        return repr_digest(self.sha256)


_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(seconds: int) -> str:
    """The IMF-fixdate of RFC 9110 §5.6.7 (``email.utils.formatdate`` is three times slower)."""
    t = time.gmtime(seconds)
    return (
        f"{_DAY_NAMES[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_NAMES[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def repr_digest(sha256_hex: str) -> str:
    """RFC 9530 ``Repr-Digest`` of the whole representation."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"


# --- request headers -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conditions:
    """The conditional and range headers of one request, repeated lines joined by ``, ``."""

    range: str | None = None
    if_range: str | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Conditions:
        """From ASGI ``scope["headers"]`` in one pass.

        Repeated lines are appended to one growing buffer (amortised linear):
        joining strings as they come would copy the value so far for each
        line, quadratic in their number.
        """
        found: dict[bytes, bytearray] = {}
        for name, value in raw:
            if name in CONDITION_HEADERS:
                joined = found.get(name)
                if joined is None:
                    found[name] = bytearray(value.strip())
                else:
                    joined += b", "
                    joined += value.strip()
        if not found:
            return _NO_CONDITIONS
        return cls(
            **{
                name.decode().replace("-", "_"): joined.decode("latin-1")
                for name, joined in found.items()
            }
        )


_NO_CONDITIONS = Conditions()

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF_FIXDATE = re.compile(
    r"(?:mon|tue|wed|thu|fri|sat|sun), (\d\d) ([a-z]{3}) (\d{4}) " + _TIME + " gmt", re.I
)
_RFC850_DATE = re.compile(
    r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday), (\d\d)-([a-z]{3})-(\d\d) "
    + _TIME
    + " gmt",
    re.I,
)
_ASCTIME_DATE = re.compile(
    r"(?:mon|tue|wed|thu|fri|sat|sun) ([a-z]{3}) ([ \d]\d) " + _TIME + r" (\d{4})", re.I
)


def parse_http_date(value: str, *, now: datetime | None = None) -> int | None:
    """Seconds since the epoch of an RFC 9110 §5.6.7 HTTP-date, or None when invalid."""
    value = value.strip()
    try:
        if match := _IMF_FIXDATE.fullmatch(value):
            day, month, year, hour, minute, second = match.groups()
            full_year = int(year)
        elif match := _RFC850_DATE.fullmatch(value):
            day, month, year, hour, minute, second = match.groups()
            # Two-digit years more than 50 years ahead are in the past century.
            current = (now or datetime.now(UTC)).year
            full_year = current - current % 100 + int(year)
            if full_year > current + 50:
                full_year -= 100
        elif match := _ASCTIME_DATE.fullmatch(value):
            month, day, hour, minute, second, year = match.groups()
            full_year = int(year)
        else:
            return None
        number = _MONTHS.get(month.lower())
        if number is None:
            return None
        moment = datetime(
            full_year, number, int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError:  # 31 Feb, 25:00 and the like
        return None
    return int(moment.timestamp())


class EntityTag(NamedTuple):
    weak: bool
    #: The tag without its quotes.
    opaque: str


#: Whitespace and empty list members (RFC 9110 §5.6.1.2), skipped in one C-level match.
_LIST_GAP = re.compile(r"[ \t,]*")
_ETAG_MEMBER = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*(?:,|\Z)')


def _list_members(value: str, member: re.Pattern[str]) -> Iterator[re.Match[str] | None]:
    """The members of a comma-separated list (RFC 9110 §5.6.1) as ``member`` matches them.

    Empty members and the whitespace around them are skipped. A member that
    does not match is None, and scanning goes on after the next comma. Lazy:
    a caller that stops early has scanned no further, and each step moves
    forward (time linear in the characters looked at).
    """
    position = 0
    end = len(value)
    while True:
        gap = _LIST_GAP.match(value, position)
        assert gap is not None  # it matches the empty string
        position = gap.end()
        if position >= end:
            return
        match = member.match(value, position)
        yield match
        if match is not None:
            position = match.end()
            continue
        comma = value.find(",", position)
        if comma < 0:
            return
        position = comma + 1


def parse_entity_tags(value: str, *, limit: int = MAX_ENTITY_TAGS) -> list[EntityTag] | None:
    """The members of an ``If-Match``/``If-None-Match`` list; None for ``*``.

    Malformed members (unquoted tags and the like) are skipped: they match
    nothing. A list of more than ``limit`` members, well formed or not, is
    cut short at the first member past it and matches nothing (``[]``): the
    cost is bounded by ``limit`` whatever the header's length, and each step
    moves forward (time linear in the characters looked at).
    """
    if value.strip() == "*":
        return None
    tags: list[EntityTag] = []
    for members, match in enumerate(_list_members(value, _ETAG_MEMBER), 1):
        if members > limit:
            return []
        if match is not None:  # a malformed member matches nothing
            tags.append(EntityTag(bool(match.group(1)), match.group(2)))
    return tags


def strong_match(tags: list[EntityTag] | None, opaque: str) -> bool:
    """RFC 9110 §8.8.3.2 strong comparison against our (strong) tag; ``*`` matches."""
    return tags is None or any(not tag.weak and tag.opaque == opaque for tag in tags)


def weak_match(tags: list[EntityTag] | None, opaque: str) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison; ``*`` matches."""
    return tags is None or any(tag.opaque == opaque for tag in tags)


#: Digits beyond this count are a number larger than any file (and than Python's int limit).
_MAX_DIGITS = 18
_HUGE = 10**_MAX_DIGITS


def _position(digits: str) -> int:
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


#: One range-spec, then optional whitespace up to the next comma or the end.
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)[ \t]*(?=,|\Z)")


def parse_range(value: str, size: int) -> list[ByteRange] | None:
    """The satisfiable ranges of a ``Range`` header (RFC 9110 §14.1.2), clipped to ``size``.

    None when the header is invalid or not in bytes (it is then ignored, as
    RFC 9110 §14.2 allows), and when it has more than :data:`MAX_RANGES`
    range-specs (the whole file is sent, as nginx does past ``max_ranges``);
    an empty list when it is valid but none of its ranges is satisfiable
    (416). Ranges keep the order they were asked in.

    The header is scanned once, without splitting it, and scanning stops at
    the first spec past the cap: a header of millions of members costs no
    more than one of 33.
    """
    unit, equals, range_set = value.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    ranges: list[ByteRange] = []
    specs = 0  # the loop counts them; none at all is invalid
    for specs, match in enumerate(_list_members(range_set, _RANGE_SPEC), 1):
        if match is None or specs > MAX_RANGES:
            return None
        first, last = match.groups()
        if first:
            start = _position(first)
            if last:
                stop = _position(last) + 1
                if stop <= start:  # last-pos before first-pos: invalid syntax
                    return None
            else:
                stop = size
            if start < size:
                ranges.append(ByteRange(start, min(stop, size)))
        elif last:
            suffix = _position(last)
            if suffix > 0 and size > 0:
                ranges.append(ByteRange(max(size - suffix, 0), size))
            elif suffix > 0:
                # A non-zero suffix of an empty file is satisfiable (§14.1.1) but
                # holds no byte that a Content-Range could name: send it whole.
                return None
        else:
            return None  # a lone "-"
    if specs == 0:
        return None
    return ranges


@dataclass(frozen=True, slots=True)
class Selection:
    """What to answer: 200 (whole file), 206 (``ranges``) or 304."""

    status: int
    ranges: tuple[ByteRange, ...] = ()


def _if_range_holds(value: str, representation: Representation) -> bool:
    """RFC 9110 §13.1.5: a strong entity-tag match, or the exact Last-Modified date."""
    if value.startswith('"') or value.startswith("W/"):
        return value == representation.etag
    moment = parse_http_date(value)
    return moment is not None and moment == representation.last_modified


def select(method: str, conditions: Conditions, representation: Representation) -> Selection:
    """Evaluate preconditions (RFC 9110 §13.2.2, in its order), then ``Range``.

    Raises :class:`PreconditionFailed` (412) and :class:`RangeNotSatisfiable` (416).
    """
    opaque = representation.sha256
    last_modified = representation.last_modified
    reading = method in ("GET", "HEAD")
    c = conditions
    # 1. If-Match, else 2. If-Unmodified-Since
    if c.if_match is not None:
        if not strong_match(parse_entity_tags(c.if_match), opaque):
            raise PreconditionFailed("If-Match does not match the file's ETag.")
    elif c.if_unmodified_since is not None:
        moment = parse_http_date(c.if_unmodified_since)
        if moment is not None and last_modified > moment:
            raise PreconditionFailed("The file was modified after If-Unmodified-Since.")
    # 3. If-None-Match, else 4. If-Modified-Since
    if c.if_none_match is not None:
        if weak_match(parse_entity_tags(c.if_none_match), opaque):
            if reading:
                return Selection(304)
            raise PreconditionFailed("If-None-Match matches the file's ETag.")
    elif c.if_modified_since is not None and reading:
        moment = parse_http_date(c.if_modified_since)
        if moment is not None and last_modified <= moment:
            return Selection(304)
    whole = Selection(200, (ByteRange(0, representation.size),))
    # 5. Range (GET only, RFC 9110 §14.2) and If-Range
    if c.range is None or method != "GET":
        return whole
    if c.if_range is not None and not _if_range_holds(c.if_range, representation):
        return whole
    ranges = parse_range(c.range, representation.size)
    if ranges is None:
        return whole
    if not ranges:
        raise RangeNotSatisfiable(headers={"Content-Range": f"bytes */{representation.size}"})
    if len(ranges) > MAX_RANGES or sum(r.length for r in ranges) > representation.size:
        # Too many ranges, or overlaps asking for more than the file: a broken
        # or hostile client gets the file once, as from nginx.
        return whole
    return Selection(206, tuple(ranges))


# --- response headers ------------------------------------------------------

_ATTR_CHAR = "!#$&+-.^_`|~"  # RFC 8187 attr-char besides ALPHA and DIGIT


_UNSAFE_IN_QUOTES = frozenset('"\\%')


def ascii_filename(name: str) -> str:
    """A fallback for ``filename=``: printable ASCII, no quote, backslash or percent sign."""
    if name.isascii() and name.isprintable() and _UNSAFE_IN_QUOTES.isdisjoint(name):
        return name.strip() or "file"
    folded = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in folded if not unicodedata.combining(ch))
    text = "".join(ch if " " <= ch <= "~" and ch not in '"\\%' else "_" for ch in text)
    return text.strip() or "file"


def content_disposition(filename: str, content_type: str) -> str:
    """``inline`` for raster images, ``attachment`` otherwise, with an RFC 6266 file name.

    Non-ASCII names (and names a quoted-string cannot carry verbatim) get
    ``filename*=UTF-8''…`` beside the ASCII fallback; nothing from the name can
    end the header or add another (control characters never pass through).
    """
    disposition = "inline" if content_type in RASTER_IMAGE_TYPES else "attachment"
    fallback = ascii_filename(filename)
    header = f'{disposition}; filename="{fallback}"'
    if fallback != filename:
        header += "; filename*=UTF-8''" + quote(filename, safe=_ATTR_CHAR)
    return header


def validator_headers(representation: Representation, cache_control: str) -> list[tuple[str, str]]:
    """What a 304 repeats of the 200 it stands for (RFC 9110 §15.4.5)."""
    return [
        ("etag", representation.etag),
        ("last-modified", representation.last_modified_http),
        ("cache-control", cache_control),
    ]


def representation_headers(
    representation: Representation, *, filename: str, cache_control: str
) -> list[tuple[str, str]]:
    """Every header of a 200 or 206 except the framing (length, type, range)."""
    return [
        *validator_headers(representation, cache_control),
        ("accept-ranges", "bytes"),
        ("repr-digest", representation.repr_digest),
        ("content-disposition", content_disposition(filename, representation.content_type)),
        ("x-content-type-options", "nosniff"),
        ("content-security-policy", "sandbox"),
    ]


@dataclass(frozen=True, slots=True)
class Multipart:
    """The framing of a ``multipart/byteranges`` body, known before the first byte."""

    boundary: str
    #: The delimiter and headers before each range's bytes.
    heads: tuple[bytes, ...]
    trailer: bytes
    content_length: int

    @classmethod
    def build(
        cls, ranges: Sequence[ByteRange], size: int, content_type: str, boundary: str | None = None
    ) -> Multipart:
        boundary = boundary or secrets.token_hex(12)
        heads = tuple(
            (
                f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n"
                f"Content-Range: {r.content_range(size)}\r\n\r\n"
            ).encode("latin-1")
            for r in ranges
        )
        trailer = f"\r\n--{boundary}--\r\n".encode("latin-1")
        length = sum(map(len, heads)) + sum(r.length for r in ranges) + len(trailer)
        return cls(boundary, heads, trailer, length)

    @property
    def content_type(self) -> str:
        return f"multipart/byteranges; boundary={self.boundary}"


# --- the response ----------------------------------------------------------

#: Opens ``length`` bytes of the stored object from ``offset`` (``Storage.open_reader``).
RangeOpener = Callable[[int, int], Awaitable[AsyncIterator[bytes]]]


async def _aclose(reader: AsyncIterator[bytes]) -> None:
    aclose: Callable[[], Awaitable[Any]] | None = getattr(reader, "aclose", None)
    if aclose is not None:
        await aclose()


async def close_reader(reader: AsyncIterator[bytes]) -> None:
    """Release a storage reader (its file or HTTP stream), even inside a cancelled scope."""
    with anyio.CancelScope(shield=True):
        await _aclose(reader)


async def multipart_chunks(
    open_range: RangeOpener,
    ranges: Sequence[ByteRange],
    multipart: Multipart,
    *,
    first: AsyncIterator[bytes] | None = None,
) -> AsyncIterator[bytes]:
    """The body of a ``multipart/byteranges`` response, one storage read per range.

    ``first``, when given, is the first range's reader, opened before the
    headers went out so that a missing object could still be answered 404.
    """
    try:
        for index, (head, byte_range) in enumerate(zip(multipart.heads, ranges, strict=True)):
            yield head
            if index == 0 and first is not None:
                reader, first = first, None
            else:
                reader = await open_range(byte_range.start, byte_range.length)
            try:
                async for chunk in reader:
                    yield chunk
            finally:
                await close_reader(reader)
        yield multipart.trailer
    finally:
        if first is not None:  # closed before its turn came
            await close_reader(first)


class TruncatedObject(Exception):
    """Storage ended an object before the length its record promised."""


async def cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once the client is gone: a streamed body stops with it."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class StoredFileResponse(Response):
    """Streams exactly ``content_length`` bytes from an async iterator of chunks.

    Headers are final when the response is built. Small bodies go out
    without a watcher task; larger ones stop reading storage as soon as the
    client disconnects. A body that storage cuts short ends the connection
    without completing the response, so no client mistakes it for the file.
    """

    #: Bodies up to this size are sent without watching for a disconnect.
    watch_disconnect_above = 1024 * 1024

    def __init__(
        self,
        status_code: int,
        headers: Sequence[tuple[str, str]],
        *,
        body: AsyncIterator[bytes] | None = None,
        content_length: int | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        self.status_code = status_code
        self.background = background
        self.body_iterator = body
        self.content_length = content_length or 0
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if content_length is not None:
            raw.append((b"content-length", str(content_length).encode("latin-1")))
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body_iterator
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if body is None or self.content_length == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif self.content_length <= self.watch_disconnect_above:
                await self._stream(body, send)
            else:
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel_on_disconnect, receive, group.cancel_scope)
                    await self._stream(body, send)
                    group.cancel_scope.cancel()
        except BaseException:
            if body is not None:
                await close_reader(body)  # shielded: this may be a cancellation
            raise
        if body is not None:
            await _aclose(body)
        if self.background is not None:
            await self.background()

    async def _stream(self, body: AsyncIterator[bytes], send: Send) -> None:
        remaining = self.content_length
        async for chunk in body:
            if len(chunk) >= remaining:
                chunk = chunk[:remaining]
                remaining = 0
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                return
            if chunk:
                remaining -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        logger.error("storage ended a file %d bytes short of its recorded size", remaining)
        raise TruncatedObject(f"{remaining} bytes missing")
