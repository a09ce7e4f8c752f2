"""The upload pipeline: receive → validate → store → record, or clean up.

One owner for every upload, whatever brings its bytes (a raw body, a
multipart form, a resumable upload's PATCHes): :class:`FileReceiver` takes a
file's bytes in order and applies the size limit, the type judged from the
first bytes, the SHA-256 and the image check while handing chunks to storage;
:class:`UploadPipeline` records committed files as rows, all or nothing, and
removes their bytes when anything fails. Routes only translate HTTP.

Nothing here holds a whole file or spools it: bytes are gathered into chunks
of :attr:`FileReceiver.flush_bytes` and handed to one worker-thread call
(hash, image decoder feed and, for local disk, the write itself) while the
next chunk is being received.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from filesvc import crud
from filesvc.bodies import check_content_length, check_query_utf8, client_paced_body
from filesvc.config import Settings
from filesvc.decoding import DecodeBudget
from filesvc.errors import (
    ChecksumMismatch,
    FilesvcError,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from filesvc.formparser import Field, FileData, FileEnd, FileStart, FormParser
from filesvc.imaging import ImageProbe
from filesvc.metadata import MetadataStripper
from filesvc.models import VISIBILITIES, StoredFile
from filesvc.sniffing import RASTER_IMAGE_TYPES, SNIFF_BYTES, allows, detect
from filesvc.storage import Storage, StorageWriter, new_key, open_writer

logger = logging.getLogger("filesvc")

#: Longest stored file name, in characters.
MAX_FILENAME_CHARS = 255
#: Multipart framing allowed on top of the file limit before Content-Length alone refuses.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def new_file_id() -> str:
    """26 characters of base32: URL-safe, never starting with - = + or @."""
    return base64.b32encode(os.urandom(16)).decode().rstrip("=").lower()


def sanitize_filename(raw: str | None) -> str:
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


def parse_visibility(value: str | None) -> str:
    if value is None or value == "":
        return "public"
    if value not in VISIBILITIES:
        raise InvalidRequest("visibility must be 'public' or 'private'.")
    return value


def parse_sha256_hex(value: str) -> str:
    if not _SHA256_HEX.match(value.strip()):
        raise InvalidRequest("The sha256 field must be 64 hexadecimal characters.")
    return value.strip().lower()


def file_row(
    file_id: str,
    storage_key: str,
    filename: str,
    content_type: str,
    *,
    size: int,
    sha256: str,
    dimensions: tuple[int, int] | None,
) -> StoredFile:
    """The row of a file whose bytes are committed and checked, however they came.

    Not recorded yet: its visibility and creation time are set as it is
    (:meth:`UploadPipeline.record`, or a resumable upload's last request).
    """
    width, height = dimensions or (None, None)
    return StoredFile(
        id=file_id,
        storage_key=storage_key,
        filename=filename,
        content_type=content_type,
        size=size,
        sha256=sha256,
        width=width,
        height=height,
    )


def allowed_type(head: bytes, settings: Settings) -> str:
    """The type ``head`` (a file's first bytes) proves, if the settings allow it; else 415.

    CPU-bound (libmagic and the text rule): call it from a worker thread.
    """
    content_type = detect(head[:SNIFF_BYTES])
    if not allows(settings.allowed_types, content_type):
        allowed = ", ".join(settings.allowed_types)
        what = "empty" if not head else f"of type {content_type}"
        raise UnsupportedMediaType(f"The file is {what}; allowed types: {allowed}.")
    return content_type


class FileReceiver:
    """Receives one file's bytes: size limit, type, SHA-256, image check, storage.

    Use as an async context manager: leaving it without :meth:`finish` having
    committed aborts the storage write, so a refused or failed file leaves nothing.
    """

    #: Bytes gathered before one hand-over to a worker thread and to storage.
    flush_bytes = 1024 * 1024

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        *,
        filename: str | None,
        expected_sha256: str | None = None,
        file_id: str | None = None,
        decode_budget: DecodeBudget,
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._decode_budget = decode_budget
        self.id = file_id or new_file_id()
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
        # FILESVC_STRIP_METADATA: stored bytes differ from received ones; the
        # client's digest is checked against what it sent.
        self._stripper: MetadataStripper | None = None
        self._received_hash = hashlib.sha256()
        self.stored_size = 0

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
        head = b"".join(self._pieces)[:SNIFF_BYTES]
        self.content_type = await anyio.to_thread.run_sync(allowed_type, head, self._settings)
        if self.content_type in RASTER_IMAGE_TYPES:
            self._probe = ImageProbe(
                self.content_type, self._settings.max_image_pixels, self._decode_budget
            )
        if self._settings.strip_metadata:
            self._stripper = MetadataStripper.for_type(self.content_type)
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
        writer = self._writer
        assert writer is not None
        if writer.writes_in_thread:
            # One worker-thread call for the hash, the decoder feed and the write.
            await anyio.to_thread.run_sync(self._digest_and_write, writer, chunk)
        else:
            chunk = await anyio.to_thread.run_sync(self._digest, chunk)
            await writer.write(chunk)

    def _digest(self, chunk: bytes, last: bool = False) -> bytes:
        """Hash and check the bytes to store (stripped, when asked); they are returned."""
        if self._stripper is not None:
            self._received_hash.update(chunk)
            chunk = self._stripper.feed(chunk)
            if last:
                chunk += self._stripper.finish()
        self.stored_size += len(chunk)
        self._hash.update(chunk)
        if self._probe is not None:
            self._probe.feed(chunk)
        return chunk

    def _digest_and_write(self, writer: StorageWriter, chunk: bytes, last: bool = False) -> None:
        writer.write_blocking(self._digest(chunk, last))

    async def finish(self) -> StoredFile:
        """Validate what was received and commit it to storage: a row, not yet recorded."""
        if self.content_type is None:
            await self._start()
        await self._flush()
        if self._inflight is not None:
            await self._inflight
            self._inflight = None
        if self._stripper is not None:  # the bytes it held back
            assert self._writer is not None
            if self._writer.writes_in_thread:
                await anyio.to_thread.run_sync(self._digest_and_write, self._writer, b"", True)
            else:
                await self._writer.write(await anyio.to_thread.run_sync(self._digest, b"", True))
        dimensions = None
        if self._probe is not None:
            dimensions = await anyio.to_thread.run_sync(self._probe.finish)
        sha256 = self._hash.hexdigest()
        received = self._received_hash.hexdigest() if self._stripper is not None else sha256
        if self.expected_sha256 is not None and self.expected_sha256 != received:
            raise ChecksumMismatch(details={"expected": self.expected_sha256, "received": received})
        assert self._writer is not None and self.content_type is not None
        await self._writer.commit()
        return file_row(
            self.id,
            self.key,
            self.filename,
            self.content_type,
            size=self.stored_size,
            sha256=sha256,
            dimensions=dimensions,
        )


async def recorded_ids(
    sessions: async_sessionmaker[AsyncSession], ids: Sequence[str]
) -> set[str] | None:
    """Which of ``ids`` have a row, after a commit failed in flight; None when unknown.

    The commit may have landed before its answer was lost: bytes may go only for
    rows known to be absent, and stay (for `filesvc check`) when the database
    cannot say.
    """
    try:
        async with sessions() as session:
            return await crud.existing_ids(session, ids)
    except Exception:
        logger.warning("a commit failed in flight and cannot be checked: bytes kept")
        return None


class UploadPipeline:
    """Turns request bodies into recorded files: all of them, or none and no bytes."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        sessions: async_sessionmaker[AsyncSession],
        decode_budget: DecodeBudget,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self._sessions = sessions
        self._decode_budget = decode_budget

    def receiver(
        self,
        *,
        filename: str | None,
        expected_sha256: str | None = None,
        file_id: str | None = None,
    ) -> FileReceiver:
        """A receiver for one file's bytes from any source."""
        return FileReceiver(
            self.settings,
            self.storage,
            filename=filename,
            expected_sha256=expected_sha256,
            file_id=file_id,
            decode_budget=self._decode_budget,
        )

    async def raw(
        self, request: Request, *, filename: str | None, visibility: str | None
    ) -> StoredFile:
        """A non-multipart body is the file itself."""
        settings = self.settings
        check_content_length(request, settings.max_upload_bytes, settings.max_upload_bytes)
        if filename is not None and "\ufffd" in filename:
            check_query_utf8(request, "filename")
        chosen = parse_visibility(visibility)
        expected = parse_repr_digest(request.headers.get("repr-digest"))
        async with self.receiver(filename=filename, expected_sha256=expected) as receiver:
            async for chunk in client_paced_body(request, settings):
                await receiver.feed(chunk)
            received = await receiver.finish()
        [row] = await self.record([received], chosen)
        return row

    async def form(
        self, request: Request, *, max_files: int, visibility: str | None = None
    ) -> list[StoredFile]:
        """A multipart/form-data body: its ``file`` parts, recorded all or nothing.

        Files are committed to storage one by one as their part ends; if anything
        fails before they are recorded, the committed ones are deleted again.
        """
        settings = self.settings
        parser = FormParser(
            request.headers.get("content-type", ""),
            max_fields=settings.max_form_fields,
            max_field_bytes=settings.max_field_bytes,
            max_part_header_bytes=settings.max_part_header_bytes,
        )
        # Framing and form fields may legitimately come on top of the files' bytes.
        framing = MULTIPART_OVERHEAD_BYTES + settings.max_form_fields * settings.max_field_bytes
        check_content_length(
            request, settings.max_upload_bytes * max_files + framing, settings.max_upload_bytes
        )
        files: list[StoredFile] = []
        try:
            fields = await self._receive_form(request, parser, files, max_files)
            if not files:
                raise InvalidRequest("The form has no part named 'file'.")
            chosen = parse_visibility(fields.get("visibility", visibility))
        except BaseException:
            await self.discard(files)
            raise
        return await self.record(files, chosen)

    async def _receive_form(
        self, request: Request, parser: FormParser, files: list[StoredFile], max_files: int
    ) -> dict[str, str]:
        fields: dict[str, str] = {}
        receiver: FileReceiver | None = None
        #: The name of the file part being received, for a refusal's details.
        current: str | None = None
        async with AsyncExitStack() as stack:
            async for chunk in client_paced_body(request, self.settings):
                try:
                    for event in parser.feed(chunk):
                        if isinstance(event, FileData):
                            assert receiver is not None
                            await receiver.feed(event.data)
                        elif isinstance(event, Field):
                            fields[event.name] = event.value
                        elif isinstance(event, FileStart):
                            current = event.filename
                            receiver = await stack.enter_async_context(
                                self._file_part(event, fields, len(files), max_files)
                            )
                        elif isinstance(event, FileEnd):
                            assert receiver is not None
                            files.append(await receiver.finish())
                            receiver = current = None
                except FilesvcError as exc:
                    if max_files > 1 and current is not None:
                        name = sanitize_filename(current)
                        exc.with_details({"index": len(files), "filename": name})
                    raise
                if parser.finished:
                    # Whatever follows the final boundary is an epilogue to ignore, not to
                    # read: a chunked body could otherwise go on for ever.
                    break
            parser.close()
        if "sha256" in fields:
            # Checked against nothing, it would only look like an integrity check.
            raise InvalidRequest("The sha256 field must come before the file part it describes.")
        return fields

    def _file_part(
        self, start: FileStart, fields: dict[str, str], count: int, max_files: int
    ) -> FileReceiver:
        if start.name != "file":
            raise InvalidRequest(
                f"Unexpected file part {start.name!r}: files go in parts named 'file'."
            )
        if count >= max_files:
            raise InvalidRequest(f"At most {max_files} file part(s) are accepted here.")
        # A sha256 field describes the file part that follows it, and only that one.
        expected = fields.pop("sha256", None)
        return self.receiver(
            filename=start.filename,
            expected_sha256=None if expected is None else parse_sha256_hex(expected),
        )

    async def record(self, files: Sequence[StoredFile], visibility: str) -> list[StoredFile]:
        """Write the rows of committed files, all or none; on any failure their bytes go too.

        Except when a commit fails or is cancelled in flight: it may have landed
        before its answer was lost, so bytes are removed only for rows known to
        be absent, and kept for `filesvc check` when that cannot be known. Bytes
        never vanish under a row.
        """
        now = datetime.now(UTC)
        for row in files:
            row.visibility = visibility
            row.created_at = now
        try:
            async with self._sessions() as session:
                return await crud.add_files(session, files)
        except crud.CommitOutcomeUnknown as exc:
            with anyio.CancelScope(shield=True):
                ids = [r.id for r in files]
                present = await recorded_ids(self._sessions, ids)
                if present is None:
                    present = set(ids)
                await self.discard([r for r in files if r.id not in present])
            if exc.__cause__ is not None:
                raise exc.__cause__ from None
            raise
        except BaseException:
            await self.discard(files)
            raise

    async def discard(self, files: Sequence[StoredFile]) -> None:
        """Remove committed files whose upload as a whole failed."""
        with anyio.CancelScope(shield=True):
            for row in files:
                await self.storage.delete(row.storage_key)


# -- integrity headers ----------------------------------------------------------

# RFC 9530 Repr-Digest is an RFC 8941 dictionary; these are the member forms it
# can take. The whole header must match, so a digest that does not parse is
# refused, never mistaken for an absent one.
_SF_KEY = r"[a-z*][a-z0-9_.*-]*"
_SF_ITEM = (
    r'(?::[A-Za-z0-9+/=]*:|"(?:[^"\\\x00-\x1f\x7f]|\\["\\])*"|\?[01]'
    r"|-?[0-9]{1,15}(?:\.[0-9]{1,3})?|[A-Za-z*][!#$%&'*+.^_`|~:/0-9A-Za-z-]*)"
)
_SF_PARAMS = rf"(?:;\s*{_SF_KEY}(?:={_SF_ITEM})?)*"
_SF_MEMBER = re.compile(rf"({_SF_KEY})(?:=({_SF_ITEM}))?{_SF_PARAMS}")
_SF_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")
#: Most members a Repr-Digest may list: one per algorithm, and there are few.
MAX_DIGEST_MEMBERS = 16


def parse_repr_digest(header: str | None) -> str | None:
    """The SHA-256 stated by an RFC 9530 ``Repr-Digest`` header, as hex.

    Other algorithms are allowed, and ignored; a header that does not parse,
    or a ``sha-256`` member that is not 32 bytes of base64, is 400.
    """
    if header is None:
        return None
    members = _SF_SEPARATOR.split(header.strip(" \t"))
    if len(members) > MAX_DIGEST_MEMBERS:
        raise InvalidRequest(f"Repr-Digest lists more than {MAX_DIGEST_MEMBERS} digests.")
    found: str | None = None
    for member in members:
        match = _SF_MEMBER.fullmatch(member)
        if match is None:
            raise InvalidRequest("Repr-Digest is not an RFC 9530 digest dictionary.")
        if match.group(1) != "sha-256":
            continue
        value = match.group(2) or ""
        if not (value.startswith(":") and value.endswith(":") and len(value) >= 2):
            raise InvalidRequest("Repr-Digest sha-256 must be a byte sequence, :<base64>:.")
        try:
            digest = base64.b64decode(value[1:-1], validate=True)
        except ValueError as exc:
            raise InvalidRequest("Repr-Digest sha-256 is not valid base64.") from exc
        if len(digest) != 32:
            raise InvalidRequest("Repr-Digest sha-256 must be 32 bytes.")
        found = digest.hex()
    return found
