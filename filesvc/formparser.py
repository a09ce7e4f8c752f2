"""multipart/form-data as typed events, parsed as the body streams in.

python-multipart does the byte-level parsing; this module turns its callbacks
into a short list of :data:`FormEvent` per chunk fed, and applies the limits
that belong to the form itself (part headers, field sizes, field count). What
happens to a file's bytes is the upload pipeline's business: a file part
arrives as :class:`FileStart`, any number of :class:`FileData`, :class:`FileEnd`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from filesvc.errors import InvalidRequest

#: Longest boundary accepted (RFC 2046 allows 70; clients stay well inside 200).
MAX_BOUNDARY_BYTES = 200
#: Most header lines one part may carry.
MAX_PART_HEADERS = 32

_EXTENDED_FILENAME = re.compile(rb"filename\*\s*=\s*utf-8'[^']*'([^;\s]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Field:
    """A complete non-file form field."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class FileStart:
    """A file part begins; its headers were valid."""

    name: str
    filename: str


@dataclass(frozen=True, slots=True)
class FileData:
    """Bytes of the current file part: a view into the chunk just fed, valid until the next."""

    data: memoryview


@dataclass(frozen=True, slots=True)
class FileEnd:
    """The current file part is complete."""


FormEvent = Field | FileStart | FileData | FileEnd


def is_multipart(content_type: str) -> bool:
    return content_type.lower().startswith("multipart/")


class FormParser:
    """Feeds python-multipart and returns what each chunk completed, in order."""

    def __init__(
        self,
        content_type: str,
        *,
        max_fields: int,
        max_field_bytes: int,
        max_part_header_bytes: int,
    ) -> None:
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidRequest("Expected multipart/form-data with a boundary.")
        if len(boundary) > MAX_BOUNDARY_BYTES:
            raise InvalidRequest(
                f"The multipart boundary is longer than {MAX_BOUNDARY_BYTES} characters."
            )
        self._max_fields = max_fields
        self._max_field_bytes = max_field_bytes
        self._max_part_header_bytes = max_part_header_bytes
        self._events: list[FormEvent] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._fields = 0
        #: The current part: a field's name while its value is gathered, else None.
        self._field_name: str | None = None
        self._field_value = bytearray()
        self._in_file = False
        #: The final boundary was seen; whatever follows is an epilogue to ignore.
        self.finished = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
        )

    def feed(self, chunk: bytes) -> list[FormEvent]:
        """The events ``chunk`` completes, in a list that the next call reuses."""
        self._events.clear()
        if self.finished:
            return self._events
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequest(f"Malformed multipart body: {exc}.") from exc
        return self._events

    def close(self) -> None:
        """The body ended: it must have ended with the final boundary."""
        if not self.finished:
            raise InvalidRequest("The multipart body ended before its final boundary.")

    # -- python-multipart callbacks (a raise here propagates out of feed) -----

    def _on_part_begin(self) -> None:
        self._headers.clear()
        self._header_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field.extend(data[start:end])
        self._count_header_bytes(end - start)

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value.extend(data[start:end])
        self._count_header_bytes(end - start)

    def _count_header_bytes(self, count: int) -> None:
        # Counted as they arrive: a single header line of megabytes never gathers whole.
        self._header_bytes += count
        if self._header_bytes > self._max_part_header_bytes:
            raise InvalidRequest("A multipart part's headers are too large.")

    def _on_header_end(self) -> None:
        self._headers.append((bytes(self._header_field), bytes(self._header_value)))
        self._header_field.clear()
        self._header_value.clear()
        if len(self._headers) > MAX_PART_HEADERS:
            raise InvalidRequest("A multipart part's headers are too large.")

    def _on_headers_finished(self) -> None:
        name, filename = _describe(self._headers)
        if filename is not None:
            self._in_file = True
            self._events.append(FileStart(name=name, filename=filename))
            return
        # Parts, not distinct names: a name repeated a million times counts too.
        self._fields += 1
        if self._fields > self._max_fields:
            raise InvalidRequest(f"More than {self._max_fields} form fields.")
        self._field_name = name
        self._field_value.clear()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            # A view, not a slice: the bytes are copied once, where the pipeline joins them.
            self._events.append(FileData(memoryview(data)[start:end]))
            return
        self._field_value += data[start:end]
        if len(self._field_value) > self._max_field_bytes:
            raise InvalidRequest(
                f"Form field {self._field_name!r} is longer than {self._max_field_bytes} bytes."
            )

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self._events.append(FileEnd())
            return
        assert self._field_name is not None
        value = _utf8(bytes(self._field_value), f"Form field {self._field_name!r}")
        self._events.append(Field(name=self._field_name, value=value))
        self._field_name = None
        self._field_value.clear()

    def _on_end(self) -> None:
        self.finished = True


def _describe(headers: list[tuple[bytes, bytes]]) -> tuple[str, str | None]:
    """A part's name and, for a file part, its file name."""
    disposition = None
    for field, value in headers:
        if field.lower() == b"content-disposition":
            disposition = value
    if disposition is None:
        raise InvalidRequest("A multipart part has no Content-Disposition header.")
    kind, options = parse_options_header(disposition)
    if kind != b"form-data" or b"name" not in options:
        raise InvalidRequest("A multipart part is not form-data with a name.")
    name = _utf8(options[b"name"], "A multipart part's name")
    if b"filename" in options:
        return name, _utf8(options[b"filename"], "The file name")
    if (extended := _EXTENDED_FILENAME.search(disposition)) is not None:
        # RFC 5987 ``filename*=UTF-8''%E2%82%AC.png``, which the parser drops.
        return name, _utf8(unquote_to_bytes(extended.group(1)), "The file name")
    return name, None


def _utf8(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} is not UTF-8.") from exc
