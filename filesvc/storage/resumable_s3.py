"""Resumable writes on S3: a multipart upload fed by many requests, small ones staged in S3.

The multipart upload is created with the tus upload, on the final key. Each
request cuts the bytes it receives into parts of ``part_size`` (at least
5 MiB, S3's minimum for every part but the last) and sends each as soon as it
is full, one in flight while the next fills. What is left at the end of a
request, less than a part, is written to a staging object; the next request,
whichever process takes it, reads it back as the start of its next part. So
small PATCHes are gathered in storage, never in one process's memory, and a
request holds at most two parts in memory.

The state recorded with the offset: the upload id, the part size, each sent
part's number and ETag (and CRC32 when checksums are on), and the staged size.
A part sent but not recorded (a crash, a checksum mismatch) is sent again under
the same number by the next request; parts left out of the recorded list are
dropped by S3 when the upload completes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from filesvc.storage.base import ObjectNotFound
from filesvc.storage.resumable import KEY_PREFIX, Appender, ResumableStore, State, UploadLost
from filesvc.storage.s3 import S3Storage
from filesvc.storage.s3objects import Pieces

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef


def staging_key(upload_id: str) -> str:
    """The object that holds an upload's bytes not yet sent as a part."""
    return f"{KEY_PREFIX}staging/{upload_id}"


class S3Appender(Appender):
    def __init__(
        self, storage: S3Storage, upload_id: str, key: str, state: State, staged: bytes
    ) -> None:
        self._storage = storage
        self._id = upload_id
        self._key = key
        self._upload_id: str = state["upload_id"]
        self._part_size: int = state["part_size"]
        self._parts: list[dict[str, Any]] = [dict(p) for p in state["parts"]]
        self._pieces: Pieces = [staged] if staged else []
        self._buffered = len(staged)
        self._inflight: asyncio.Task[dict[str, Any]] | None = None

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self._pieces.append(data)
        self._buffered += len(data)
        while self._buffered >= self._part_size:
            await self._send(self._take(self._part_size))

    def _take(self, size: int) -> Pieces:
        taken: Pieces = []
        needed = size
        while needed:
            piece = self._pieces[0]
            if len(piece) <= needed:
                taken.append(self._pieces.pop(0))
                needed -= len(piece)
            else:
                view = memoryview(piece)
                taken.append(view[:needed])
                self._pieces[0] = view[needed:]
                needed = 0
        self._buffered -= size
        return taken

    async def _send(self, pieces: Pieces) -> None:
        await self._wait()  # one part in flight while the next one fills
        number = len(self._parts) + 1
        self._inflight = asyncio.create_task(self._upload(number, pieces))

    async def _upload(self, number: int, pieces: Pieces) -> dict[str, Any]:
        part: CompletedPartTypeDef = await self._storage.objects.upload_part(
            self._key, self._upload_id, number, pieces
        )
        return dict(part)

    async def _wait(self) -> None:
        if self._inflight is not None:
            task, self._inflight = self._inflight, None
            self._parts.append(await task)

    def _state(self, staged: int) -> State:
        return {
            "upload_id": self._upload_id,
            "part_size": self._part_size,
            "parts": self._parts,
            "staged": staged,
        }

    async def persist(self) -> State:
        await self._wait()
        staged = self._buffered
        if staged:
            await self._storage.objects.put_object(staging_key(self._id), self._take(staged))
        return self._state(staged)

    async def finish(self) -> None:
        if self._buffered or not self._parts:
            await self._send(self._take(self._buffered))
        await self._wait()
        parts: Any = self._parts
        await self._storage.objects.complete_upload(self._key, self._upload_id, parts)
        await self._storage.objects.delete(staging_key(self._id))

    async def close(self) -> None:
        if self._inflight is not None:
            # Never cancelled half-sent: a part that lands later is simply unrecorded.
            await asyncio.wait({self._inflight})
            self._inflight = None
        self._pieces.clear()
        self._buffered = 0


class S3ResumableStore(ResumableStore):
    def __init__(self, storage: S3Storage) -> None:
        self._storage = storage

    async def create(self, upload_id: str, key: str) -> State:
        multipart_id = await self._storage.objects.create_upload(key)
        return {
            "upload_id": multipart_id,
            "part_size": self._storage.part_size,
            "parts": [],
            "staged": 0,
        }

    async def open_append(self, upload_id: str, key: str, offset: int, state: State) -> Appender:
        staged = int(state.get("staged", 0))
        data = b""
        if staged:
            try:
                chunks = await self._storage.open_reader(staging_key(upload_id), 0, staged)
            except ObjectNotFound as exc:
                raise UploadLost(upload_id) from exc
            data = b"".join([chunk async for chunk in chunks])
            if len(data) != staged:
                raise UploadLost(upload_id)
        return S3Appender(self._storage, upload_id, key, state, data)

    def staging_keys(self, upload_id: str) -> list[str]:
        return [staging_key(upload_id)]

    async def discard(self, upload_id: str, key: str, state: State) -> None:
        if state.get("upload_id"):
            await self._storage.objects.abort_upload(key, state["upload_id"])
        await self._storage.objects.delete(staging_key(upload_id))
