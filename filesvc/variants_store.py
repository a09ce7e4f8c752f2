"""Image variants in storage: rendered once, kept beside their original, deleted with it.

A variant is stored under ``variants/<original key>/<digest of its
parameters>`` (:func:`filesvc.variants.variant_key`) in the original's
storage, local disk or S3, as one object: a fixed-size text header (SHA-256,
length, render time, content type) and then the encoded image. The header
makes the object self-describing, so serving a variant needs no database row
and one storage read gives everything its response needs (ETag, length,
bytes). Storage writers commit atomically, so processes that render the same
variant at once each store a complete object, and the last one stays.

Within a process, concurrent requests for a variant that is not stored yet
share one render (:class:`VariantRenderer`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
import anyio.from_thread
import anyio.to_thread

from filesvc.decoding import DecodeBudget
from filesvc.errors import FileNotFound
from filesvc.serving import RangeOpener
from filesvc.storage import ObjectNotFound, Storage
from filesvc.storage.base import open_writer
from filesvc.variants import VariantSpec, variant_key, variants_prefix
from filesvc.variants_render import encodable_formats, render

#: Bytes of the header before a stored variant's image.
HEADER_SIZE = 128
_MAGIC = "filesvc-variant/1"
_HEADER = re.compile(
    rf"{re.escape(_MAGIC)} ([0-9a-f]{{64}}) (\d{{1,12}}) (\d{{1,12}}) ([a-z]+/[a-z0-9.+-]+) *\n"
)
#: The first read of a stored variant: thumbnails and most previews fit whole.
FIRST_READ_BYTES = 64 * 1024
#: Renders at once in this process; more wait their turn without holding a thread.
RENDER_THREADS = 4


@dataclass(frozen=True, slots=True)
class StoredVariant:
    key: str
    sha256: str
    #: Bytes of the image (the header excluded).
    size: int
    content_type: str
    #: When it was rendered, whole epoch seconds (its ``Last-Modified``).
    rendered_at: int
    #: The whole image when the first read held it, else None (read it by range).
    data: bytes | None


def pack_header(sha256: str, size: int, rendered_at: int, content_type: str) -> bytes:
    line = f"{_MAGIC} {sha256} {size} {rendered_at} {content_type} "
    if len(line) >= HEADER_SIZE:
        raise ValueError("variant header too long")
    return (line.ljust(HEADER_SIZE - 1) + "\n").encode("ascii")


def parse_header(key: str, head: bytes) -> StoredVariant | None:
    """The header's facts; None for an object that is not a variant written by this code."""
    match = _HEADER.fullmatch(head[:HEADER_SIZE].decode("ascii", "replace"))
    if match is None:
        return None
    sha256, size, rendered_at, content_type = match.groups()
    return StoredVariant(key, sha256, int(size), content_type, int(rendered_at), None)


async def read_variant(storage: Storage, key: str) -> StoredVariant | None:
    """The stored variant under ``key`` (its image too when small); None when absent or torn."""
    try:
        reader = await storage.open_reader(key, 0, FIRST_READ_BYTES)
    except ObjectNotFound:
        return None
    parts = [chunk async for chunk in reader]
    head = b"".join(parts)
    found = parse_header(key, head)
    if found is None:
        return None
    end = HEADER_SIZE + found.size
    if len(head) >= end:
        image = head[HEADER_SIZE:end]
        return StoredVariant(
            key, found.sha256, found.size, found.content_type, found.rendered_at, image
        )
    if len(head) < FIRST_READ_BYTES:  # the object ends before its header says: re-render
        return None
    return found


async def _memory_chunk(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


def range_opener(storage: Storage, variant: StoredVariant) -> RangeOpener:
    """Opens ``length`` bytes of the variant's image from ``offset`` (a ``RangeOpener``)."""

    async def open_range(offset: int, length: int) -> AsyncIterator[bytes]:
        if variant.data is not None:
            return _memory_chunk(variant.data[offset : offset + length])
        try:
            return await storage.open_reader(variant.key, HEADER_SIZE + offset, length)
        except ObjectNotFound as exc:  # deleted with its original since it was read
            raise FileNotFound() from exc

    return open_range


class VariantRenderer:
    """Finds a stored variant, or renders and stores it, once per process at a time."""

    def __init__(
        self,
        storage: Storage,
        budget: DecodeBudget,
        *,
        max_pixels: int,
        on_render: Callable[[VariantSpec], None] | None = None,
    ) -> None:
        self.storage = storage
        self.budget = budget
        self.max_pixels = max_pixels
        self.encodable = encodable_formats()
        self._on_render = on_render
        self._in_flight: dict[str, asyncio.Future[StoredVariant]] = {}
        self._threads = anyio.CapacityLimiter(RENDER_THREADS)

    async def get(
        self, original_key: str, content_type: str, spec: VariantSpec, source_size: int = 0
    ) -> StoredVariant:
        key = variant_key(original_key, spec)
        found = await read_variant(self.storage, key)
        if found is not None:
            return found
        flight = self._in_flight.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._in_flight[key] = flight
        try:
            # Shielded: the requests waiting on this render must not lose it
            # because the first one's client went away.
            with anyio.CancelScope(shield=True):
                landed = await self._find_or_render(
                    original_key, key, content_type, spec, source_size
                )
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._in_flight[key]
        flight.set_result(landed)
        return landed

    async def _find_or_render(
        self, original_key: str, key: str, content_type: str, spec: VariantSpec, source_size: int
    ) -> StoredVariant:
        landed = await read_variant(self.storage, key)  # a flight that just landed
        if landed is None:
            landed = await self._render(original_key, key, content_type, spec, source_size)
        return landed

    async def _render(
        self, original_key: str, key: str, content_type: str, spec: VariantSpec, source_size: int
    ) -> StoredVariant:
        try:
            reader = await self.storage.open_reader(original_key)
        except ObjectNotFound as exc:  # deleted since its row was read
            raise FileNotFound() from exc
        chunks = reader.__aiter__()

        async def next_chunk() -> bytes:
            try:
                return await chunks.__anext__()
            except StopAsyncIteration:
                return b""

        def pull() -> bytes:
            return anyio.from_thread.run(next_chunk)

        def work() -> tuple[bytes, str]:
            rendered = render(pull, content_type, spec, self.budget, self.max_pixels, source_size)
            return rendered.data, hashlib.sha256(rendered.data).hexdigest()

        try:
            data, sha256 = await anyio.to_thread.run_sync(work, limiter=self._threads)
        finally:
            aclose = getattr(reader, "aclose", None)
            if aclose is not None:
                await aclose()
        rendered_at = int(time.time())
        header = pack_header(sha256, len(data), rendered_at, spec.content_type)
        async with open_writer(self.storage, key) as writer:
            await writer.write(header + data)
            await writer.commit()
        if self._on_render is not None:
            self._on_render(spec)
        return StoredVariant(key, sha256, len(data), spec.content_type, rendered_at, data)


async def delete_variants(storage: Storage, original_key: str) -> int:
    """Delete every stored variant of an original; how many there were."""
    count = 0
    async for key in storage.iter_keys(variants_prefix(original_key)):
        await storage.delete(key)
        count += 1
    return count
