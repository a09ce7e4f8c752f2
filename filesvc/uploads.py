"""Request stream → multipart parser → validation → storage, SHA-256 on the way.

Nothing here holds a whole file or spools it to a temporary file: bytes are
parsed as they arrive, gathered into chunks of :attr:`FileReceiver.flush_bytes`
and handed to a worker thread (hashing, image decoding) and to the storage
writer while the next chunk is being received. A refusal (413, 415, 422) or a
failure aborts the storage write, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import time
import unicodedata
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from filesvc.config import Settings
from filesvc.errors import (
    ChecksumMismatch,
    FilesvcError,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from filesvc.imaging import ImageProbe
from filesvc.sniffing import RASTER_IMAGE_TYPES, SNIFF_BYTES, detect
from filesvc.storage import Storage, StorageWriter, new_key, open_writer

#: Longest stored file name, in characters.
MAX_FILENAME_CHARS = 255
#: Multipart framing allowed on top of the file limit before Content-Length alone refuses.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_EXTENDED_FILENAME = re.compile(rb"filename\*\s*=\s*utf-8'[^']*'([^;\s]+)", re.IGNORECASE)
_REPR_DIGEST = re.compile(r"(?:^|,)\s*sha-256\s*=\s*:([A-Za-z0-9+/=]+):", re.IGNORECASE)


def new_file_id() -> str:
    """26 characters of base32: URL-safe, never starting with - = + or @."""
    return base64.b32encode(os.urandom(16)).decode().rstrip("=").lower()


def sanitize_filename(raw: str | None, content_type: str | None = None) -> str:
    """A display name: last path part, no control or bidi characters, bounded length."""
    name = unicodedata.normalize("NFC", raw or "")
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(
        ch for ch in name if unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co", "Cn"}
    )
    name = name.strip().lstrip(".").strip()
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name or "file"


@dataclass(slots=True)
class ReceivedFile:
    """A file whose bytes are committed to storage under ``key``."""

    id: str
    key: str
    filename: str
    content_type: str
    size: int
    sha256: str
    width: int | None
    height: int | None


@dataclass(slots=True)
class UploadForm:
    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


class FileReceiver:
    """Receives one file's bytes: size limit, type sniffing, SHA-256, image check, storage."""

    #: Bytes gathered before one hand-over to a worker thread and to storage.
    flush_bytes = 1024 * 1024

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        *,
        filename: str | None,
        expected_sha256: str | None = None,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self.id = new_file_id()
        self.key = new_key(self.id)
        self.filename = sanitize_filename(filename)
        self.expected_sha256 = expected_sha256
        self.size = 0
        self.content_type: str | None = None
        self._hash = hashlib.sha256()
        # Received pieces not yet handed over, joined once per chunk: a bytearray
        # grown with += and then copied out would copy every byte twice.
        self._pieces: list[bytes | memoryview] = []
        self._buffered = 0
        self._inflight: asyncio.Task[None] | None = None
        self._probe: ImageProbe | None = None
        self._stack = AsyncExitStack()
        self._writer: StorageWriter | None = None

    async def __aenter__(self) -> FileReceiver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()
                try:
                    await self._inflight
                except BaseException:
                    pass
            if self._probe is not None and exc_info[0] is not None:
                # abandon() may wait for room in the decoder's queue: not on the event loop.
                await anyio.to_thread.run_sync(self._probe.abandon)
            await self._stack.aclose()

    async def feed(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.size > self._settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"The file is larger than the limit of {self._settings.max_upload_bytes} bytes."
            )
        self._pieces.append(data)
        self._buffered += len(data)
        if self.content_type is None:
            if self._buffered < SNIFF_BYTES:
                return
            await self._start()
        if self._buffered >= self.flush_bytes:
            await self._flush()
        elif self._probe is not None and self._probe.error is not None:
            raise self._probe.error

    async def _start(self) -> None:
        content_type = detect(b"".join(self._pieces)[:SNIFF_BYTES])
        if content_type is None or content_type not in self._settings.allowed_types:
            allowed = ", ".join(self._settings.allowed_types)
            what = "empty" if not self._buffered else f"of type {content_type or 'unknown'}"
            raise UnsupportedMediaType(f"The file is {what}; allowed types: {allowed}.")
        self.content_type = content_type
        if content_type in RASTER_IMAGE_TYPES:
            self._probe = ImageProbe(content_type, self._settings.max_image_pixels)
        self._writer = await self._stack.enter_async_context(open_writer(self._storage, self.key))

    async def _flush(self) -> None:
        if self._inflight is not None:
            await self._inflight
            self._inflight = None
        if self._probe is not None and self._probe.error is not None:
            raise self._probe.error
        if not self._buffered:
            return
        chunk = b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        # Hashing, decoding and disk writes overlap with receiving the next chunk.
        self._inflight = asyncio.create_task(self._store(chunk))

    async def _store(self, chunk: bytes) -> None:
        await anyio.to_thread.run_sync(self._digest, chunk)
        assert self._writer is not None
        await self._writer.write(chunk)

    def _digest(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        if self._probe is not None:
            self._probe.feed(chunk)

    async def finish(self) -> ReceivedFile:
        """Validate what was received and commit it to storage."""
        if self.content_type is None:
            await self._start()
        await self._flush()
        if self._inflight is not None:
            await self._inflight
            self._inflight = None
        width = height = None
        if self._probe is not None:
            width, height = await anyio.to_thread.run_sync(self._probe.finish)
        sha256 = self._hash.hexdigest()
        if self.expected_sha256 is not None and self.expected_sha256 != sha256:
            raise ChecksumMismatch(details={"expected": self.expected_sha256, "received": sha256})
        assert self._writer is not None and self.content_type is not None
        await self._writer.commit()
        return ReceivedFile(
            id=self.id,
            key=self.key,
            filename=self.filename,
            content_type=self.content_type,
            size=self.size,
            sha256=sha256,
            width=width,
            height=height,
        )


async def _body_chunks(request: Request, settings: Settings) -> AsyncIterator[bytes]:
    """The request body as it arrives, from a client that must keep up.

    A client is cut off (408) when it stalls longer than ``body_timeout``, when
    the body takes longer than ``body_deadline`` in all, or when, past its first
    ``body_timeout`` seconds, its average rate falls below ``min_body_rate``: an
    idle timeout alone lets a client that sends one byte a second hold a
    connection and a storage write open for ever. The rate counts only the time
    spent waiting for the client, not the time the service spends storing.
    """
    stream = request.stream().__aiter__()
    started = time.monotonic()
    waited = 0.0
    received = 0
    while True:
        budget = settings.body_timeout
        reason = f"stalled for more than {settings.body_timeout:g} seconds"
        left = settings.body_deadline - (time.monotonic() - started)
        if left < budget:
            budget, reason = left, f"took longer than {settings.body_deadline:g} seconds"
        if settings.min_body_rate:
            allowed = max(settings.body_timeout, received / settings.min_body_rate)
            # Within 10% of the idle budget, a client that sends nothing is said to stall.
            if allowed - waited < budget * 0.9:
                budget = allowed - waited
                reason = f"arrived slower than {settings.min_body_rate} bytes per second"
        asked = time.monotonic()
        try:
            with anyio.fail_after(max(budget, 0.0)):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise RequestTimeout(f"The request body {reason}.") from exc
        waited += time.monotonic() - asked
        received += len(chunk)
        if chunk:
            yield chunk


def check_content_length(request: Request, limit: int, file_limit: int) -> None:
    """Early refusal from the header alone; the streamed count is what really decides.

    ``limit`` is the most the whole body may be; the message names ``file_limit``,
    the limit a user knows about.
    """
    header = request.headers.get("content-length")
    if header is None:
        return
    try:
        length = int(header)
    except ValueError as exc:
        raise InvalidRequest("Content-Length is not a number.") from exc
    if length > limit:
        raise PayloadTooLarge(f"The file is larger than the limit of {file_limit} bytes.")


def parse_sha256_hex(value: str) -> str:
    if not _SHA256_HEX.match(value.strip()):
        raise InvalidRequest("The sha256 field must be 64 hexadecimal characters.")
    return value.strip().lower()


def parse_repr_digest(header: str | None) -> str | None:
    """The SHA-256 stated by an RFC 9530 ``Repr-Digest`` header, as hex."""
    if header is None:
        return None
    match = _REPR_DIGEST.search(header)
    if match is None:
        return None  # other algorithms are allowed, and ignored
    try:
        digest = base64.b64decode(match.group(1), validate=True)
    except binascii.Error as exc:
        raise InvalidRequest("Repr-Digest sha-256 is not valid base64.") from exc
    if len(digest) != 32:
        raise InvalidRequest("Repr-Digest sha-256 must be 32 bytes.")
    return digest.hex()


def _check_query_utf8(request: Request, name: str) -> None:
    """Starlette decodes a query with replacement characters; refuse bytes that are not UTF-8."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    for key, value in parse_qsl(raw, keep_blank_values=True, encoding="latin-1"):
        try:
            if key == name:
                value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"The {name} query parameter is not UTF-8.") from exc


async def receive_raw(
    request: Request, settings: Settings, storage: Storage, *, filename: str | None
) -> ReceivedFile:
    """A non-multipart body is the file itself."""
    check_content_length(request, settings.max_upload_bytes, settings.max_upload_bytes)
    if filename is not None and "\ufffd" in filename:
        _check_query_utf8(request, "filename")
    expected = parse_repr_digest(request.headers.get("repr-digest"))
    async with FileReceiver(
        settings, storage, filename=filename, expected_sha256=expected
    ) as receiver:
        async for chunk in _body_chunks(request, settings):
            await receiver.feed(chunk)
        return await receiver.finish()


class _Part:
    __slots__ = ("headers", "name", "filename", "is_file", "value", "receiver")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.name = ""
        self.filename: str | None = None
        self.is_file = False
        self.value = bytearray()
        self.receiver: FileReceiver | None = None


async def receive_multipart(
    request: Request,
    settings: Settings,
    storage: Storage,
    *,
    max_files: int,
) -> UploadForm:
    """Parse a multipart/form-data body as it streams in.

    Files are committed to storage one by one as their part ends; if anything
    fails before the whole body is read, the committed ones are deleted again.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Expected multipart/form-data with a boundary.")
    if len(boundary) > 200:
        raise InvalidRequest("The multipart boundary is longer than 200 characters.")
    # Framing and form fields may legitimately come on top of the files' bytes.
    framing = MULTIPART_OVERHEAD_BYTES + settings.max_form_fields * settings.max_field_bytes
    check_content_length(
        request, settings.max_upload_bytes * max_files + framing, settings.max_upload_bytes
    )

    form = UploadForm()
    events: list[tuple[str, Any]] = []
    header_field = bytearray()
    header_value = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        events.append(("header", (bytes(header_field), bytes(header_value))))
        header_field.clear()
        header_value.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": lambda: events.append(("begin", None)),
            # A view, not a slice: the bytes are copied once, when the receiver joins them.
            "on_part_data": lambda d, s, e: events.append(("data", memoryview(d)[s:e])),
            "on_part_end": lambda: events.append(("end", None)),
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": lambda: events.append(("headers_done", None)),
            "on_end": lambda: events.append(("finished", None)),
        },
    )

    try:
        await _parse_parts(request, settings, storage, parser, events, form, max_files)
    except BaseException:
        await discard(storage, form.files)
        raise
    return form


async def _parse_parts(
    request: Request,
    settings: Settings,
    storage: Storage,
    parser: MultipartParser,
    events: list[tuple[str, Any]],
    form: UploadForm,
    max_files: int,
) -> None:
    async with AsyncExitStack() as stack:
        state = _FormState(settings, storage, form, max_files, stack)
        async for chunk in _body_chunks(request, settings):
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise InvalidRequest(f"Malformed multipart body: {exc}.") from exc
            try:
                for kind, value in events:
                    await state.handle(kind, value)
            except FilesvcError as exc:
                part = state.part
                if max_files > 1 and part is not None and part.is_file:
                    name = sanitize_filename(part.filename)
                    exc.with_details({"index": len(form.files), "filename": name})
                raise
            finally:
                events.clear()
            if state.finished:
                # Whatever follows the final boundary is an epilogue to ignore, not to
                # read: a chunked body could otherwise go on for ever.
                break
        if not state.finished:
            raise InvalidRequest("The multipart body ended before its final boundary.")
        if "sha256" in form.fields:
            # Checked against nothing, it would only look like an integrity check.
            raise InvalidRequest("The sha256 field must come before the file part it describes.")


class _FormState:
    """What the parser's events have built so far: the current part and the form."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        form: UploadForm,
        max_files: int,
        stack: AsyncExitStack,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._form = form
        self._max_files = max_files
        self._stack = stack
        self._header_bytes = 0
        self._field_parts = 0
        self.part: _Part | None = None
        self.finished = False

    async def handle(self, kind: str, value: Any) -> None:
        if kind == "begin":
            self.part = _Part()
            self._header_bytes = 0
            return
        if kind == "finished":
            self.finished = True
            return
        part = self.part
        assert part is not None
        if kind == "header":
            self._header_bytes += len(value[0]) + len(value[1])
            if self._header_bytes > self._settings.max_part_header_bytes or len(part.headers) > 32:
                raise InvalidRequest("A multipart part's headers are too large.")
            part.headers.append(value)
        elif kind == "headers_done":
            await self._begin_part(part)
        elif kind == "data":
            if part.receiver is not None:
                await part.receiver.feed(value)
            else:
                part.value += value
                if len(part.value) > self._settings.max_field_bytes:
                    raise InvalidRequest(
                        f"Form field {part.name!r} is longer than "
                        f"{self._settings.max_field_bytes} bytes."
                    )
        elif kind == "end":
            if part.receiver is not None:
                self._form.files.append(await part.receiver.finish())
            else:
                self._form.fields[part.name] = _decode_field(part)
            self.part = None

    async def _begin_part(self, part: _Part) -> None:
        _describe_part(part)
        form = self._form
        if not part.is_file:
            # Parts, not distinct names: a name repeated a million times counts too.
            self._field_parts += 1
            if self._field_parts > self._settings.max_form_fields:
                raise InvalidRequest(f"More than {self._settings.max_form_fields} form fields.")
            return
        if part.name != "file":
            raise InvalidRequest(
                f"Unexpected file part {part.name!r}: files go in parts named 'file'."
            )
        if len(form.files) >= self._max_files:
            raise InvalidRequest(f"At most {self._max_files} file part(s) are accepted here.")
        # A sha256 field describes the file part that follows it, and only that one.
        expected = form.fields.pop("sha256", None)
        part.receiver = await self._stack.enter_async_context(
            FileReceiver(
                self._settings,
                self._storage,
                filename=part.filename,
                expected_sha256=None if expected is None else parse_sha256_hex(expected),
            )
        )


def _describe_part(part: _Part) -> None:
    disposition = None
    for name, value in part.headers:
        if name.lower() == b"content-disposition":
            disposition = value
    if disposition is None:
        raise InvalidRequest("A multipart part has no Content-Disposition header.")
    kind, options = parse_options_header(disposition)
    if kind != b"form-data" or b"name" not in options:
        raise InvalidRequest("A multipart part is not form-data with a name.")
    part.name = _utf8(options[b"name"], "A multipart part's name")
    if b"filename" in options:
        part.is_file = True
        part.filename = _utf8(options[b"filename"], "The file name")
    elif (extended := _EXTENDED_FILENAME.search(disposition)) is not None:
        # RFC 5987 ``filename*=UTF-8''%E2%82%AC.png``, which the parser drops.
        part.is_file = True
        part.filename = _utf8(unquote_to_bytes(extended.group(1)), "The file name")


def _utf8(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} is not UTF-8.") from exc


def _decode_field(part: _Part) -> str:
    try:
        return bytes(part.value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"Form field {part.name!r} is not UTF-8.") from exc


async def discard(storage: Storage, files: list[ReceivedFile]) -> None:
    """Remove committed files whose upload as a whole failed."""
    with anyio.CancelScope(shield=True):
        for received in files:
            await storage.delete(received.key)
