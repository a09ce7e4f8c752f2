"""Resumable writes on local disk: one file per upload, appended, renamed into place.

An upload grows in ``<data_dir>/uploads/<id>`` (beside the storage root, so the
final rename stays on one file system and is atomic). Each request truncates
the file to the recorded offset first, so bytes a crashed or refused request
left beyond it are dropped, writes with ``pwrite`` and fsyncs before the new
offset is recorded. Any process sharing the data directory can take the next
request.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from filesvc.storage.base import ObjectNotFound
from filesvc.storage.local import LocalStorage, _translated_os_errors, fsync_dir
from filesvc.storage.resumable import Appender, ResumableStore, State, UploadLost


class LocalAppender(Appender):
    writes_in_thread = True

    def __init__(self, fd: int, temp: Path, final: Path, offset: int) -> None:
        self._fd = fd
        self._temp = temp
        self._final = final
        self._offset = offset

    async def write(self, data: bytes) -> None:
        with _translated_os_errors():
            await anyio.to_thread.run_sync(self._write_all, data, self._offset)
        self._offset += len(data)

    def write_blocking(self, data: bytes) -> None:
        with _translated_os_errors():
            self._write_all(data, self._offset)
        self._offset += len(data)

    def _write_all(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    async def persist(self) -> State:
        with _translated_os_errors():
            await anyio.to_thread.run_sync(os.fsync, self._fd)
        return {}

    async def finish(self) -> None:
        def move() -> None:
            os.fsync(self._fd)
            self._final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._temp, self._final)
            fsync_dir(self._final.parent)

        with _translated_os_errors():
            await anyio.to_thread.run_sync(move)

    async def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            await anyio.to_thread.run_sync(os.close, fd)


class LocalResumableStore(ResumableStore):
    def __init__(self, storage: LocalStorage, directory: Path) -> None:
        self._storage = storage
        self.directory = directory

    def _temp(self, upload_id: str) -> Path:
        # Ids are generated and checked against models.FILE_ID before they get here.
        return self.directory / upload_id

    async def create(self, upload_id: str, key: str) -> State:
        temp = self._temp(upload_id)

        def touch() -> None:
            temp.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))

        with _translated_os_errors():
            await anyio.to_thread.run_sync(touch)
        return {}

    async def open_append(self, upload_id: str, key: str, offset: int, state: State) -> Appender:
        temp = self._temp(upload_id)
        try:
            final = self._storage.path(key)
        except ObjectNotFound as exc:
            raise UploadLost(key) from exc

        def open_at() -> int:
            fd = os.open(temp, os.O_WRONLY | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_size < offset:
                    raise UploadLost(upload_id)
                os.ftruncate(fd, offset)  # drop bytes no request recorded
            except BaseException:
                os.close(fd)
                raise
            return fd

        try:
            with _translated_os_errors():
                fd = await anyio.to_thread.run_sync(open_at)
        except FileNotFoundError as exc:
            raise UploadLost(upload_id) from exc
        return LocalAppender(fd, temp, final, offset)

    async def discard(self, upload_id: str, key: str, state: State) -> None:
        try:
            await anyio.to_thread.run_sync(os.unlink, self._temp(upload_id))
        except FileNotFoundError:
            pass
