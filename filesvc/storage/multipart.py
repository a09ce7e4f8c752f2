"""One object streamed to S3 as a multipart upload, fed in order by the upload pipeline.

The writer gathers the chunks it is handed into parts of ``part_size`` and
sends each part as soon as it is full, while the client keeps uploading; at
most ``max_concurrency`` parts are in flight, after which :meth:`write` waits
(and TCP flow control slows the client). An upload therefore holds at most
``part_size × (max_concurrency + 1)`` bytes plus one chunk. The multipart
upload is only created once a first part is full and more bytes follow: an
object of at most one part is a single PutObject.

Chunks are kept as they arrive and cut with memoryviews; the one copy a part
costs is joining its pieces into the request body, in the worker thread that
sends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import anyio

from filesvc.errors import StorageUnavailable
from filesvc.storage.base import StorageWriter
from filesvc.storage.s3objects import Pieces, S3Objects

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

logger = logging.getLogger("filesvc")


class MultipartWriter(StorageWriter):
    """Parts sent while the client uploads; complete on commit, abort on any failure."""

    def __init__(
        self, objects: S3Objects, key: str, *, part_size: int, max_concurrency: int
    ) -> None:
        self._storage = objects
        self._key = key
        self._part_size = part_size
        self._pending: deque[bytes | memoryview] = deque()
        self._pending_bytes = 0
        self._upload_id: str | None = None
        self._next_part = 1
        self._parts: dict[int, CompletedPartTypeDef] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = anyio.Semaphore(max_concurrency)
        self._failure: Exception | None = None
        self._may_exist = False  # a PutObject or Complete was sent: the object may be there
        self._aborted = False

    async def write(self, data: bytes) -> None:
        self._raise_failure()
        if not data:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        # Strictly more than a part: the last part is only cut on commit.
        while self._pending_bytes > self._part_size:
            await self._send_part(self._take(self._part_size))

    def _take(self, size: int) -> Pieces:
        """The next ``size`` pending bytes, as views: nothing is copied here."""
        taken: Pieces = []
        needed = size
        while needed:
            chunk = self._pending[0]
            if len(chunk) <= needed:
                taken.append(self._pending.popleft())
                needed -= len(chunk)
            else:
                view = memoryview(chunk)
                taken.append(view[:needed])
                self._pending[0] = view[needed:]
                needed = 0
        self._pending_bytes -= size
        return taken

    async def _send_part(self, pieces: Pieces) -> None:
        await self._slots.acquire()  # back-pressure once every slot is taken
        try:
            self._raise_failure()
            if self._upload_id is None:
                self._upload_id = await self._storage.create_upload(self._key)
        except BaseException:
            self._slots.release()
            raise
        number = self._next_part
        self._next_part += 1
        task = asyncio.create_task(self._upload_part(self._upload_id, number, pieces))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _upload_part(self, upload_id: str, number: int, pieces: Pieces) -> None:
        try:
            self._parts[number] = await self._storage.upload_part(
                self._key, upload_id, number, pieces
            )
        except Exception as exc:  # raised by the next write or the commit
            if self._failure is None:
                self._failure = exc
        except BaseException:
            if self._failure is None:
                self._failure = StorageUnavailable("An upload to S3 was interrupted.")
            raise
        finally:
            pieces.clear()
            self._slots.release()

    def _raise_failure(self) -> None:
        if self._aborted:
            raise RuntimeError("write to an aborted S3 writer")
        if self._failure is not None:
            raise self._failure

    async def _wait_for_parts(self) -> None:
        # asyncio.wait, unlike gather, never cancels the parts: a part must
        # end before the abort, or it could land after it and stay billed.
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    async def commit(self) -> None:
        self._raise_failure()
        if self._upload_id is None:
            body = self._take(self._pending_bytes)
            self._may_exist = True
            await self._storage.put_object(self._key, body)
        else:
            if self._pending_bytes:
                await self._send_part(self._take(self._pending_bytes))
            await self._wait_for_parts()
            self._raise_failure()
            parts = [self._parts[number] for number in sorted(self._parts)]
            self._may_exist = True
            await self._storage.complete_upload(self._key, self._upload_id, parts)
        self.committed = True

    async def abort(self) -> None:
        if self._aborted:
            return
        self._aborted = True
        self._pending.clear()
        self._pending_bytes = 0
        await self._wait_for_parts()
        self._parts.clear()
        if self._upload_id is not None:
            await self._storage.abort_upload(self._key, self._upload_id)
        if self._may_exist:
            # The commit's answer was lost, not necessarily the commit: the key
            # is fresh and never reused, so removing whatever is there is safe.
            try:
                await self._storage.delete(self._key)
            except Exception as exc:  # `filesvc check` finds what is left
                logger.warning("could not remove %s after a failed commit: %s", self._key, exc)
