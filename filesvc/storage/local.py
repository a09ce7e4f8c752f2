"""Local-disk storage: one file per key under a root directory.

A write goes to a hidden temporary file beside its final path, is fsynced,
and is renamed into place on commit, so a reader (or a crash) never sees a
partial object at a final path. Temporaries left by a crash are swept at
start-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import anyio

from filesvc.errors import InsufficientStorage, StorageUnavailable
from filesvc.storage.base import (
    STORAGE_KEY,
    ObjectNotFound,
    Storage,
    StorageWriter,
    StoredObject,
    UnfinishedWrite,
)

#: Suffix of in-progress writes; never a suffix of a committed key.
TEMP_SUFFIX = ".part"
#: A temp file's path under the root, as :meth:`LocalStorage.iter_unfinished` names it.
_TEMP_NAME = re.compile(r"([A-Za-z0-9_-]+/)*\.[A-Za-z0-9_-]+\.[0-9a-f]+" + re.escape(TEMP_SUFFIX))
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)


@contextmanager
def _translated_os_errors() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in _FULL:
            raise InsufficientStorage() from exc
        raise StorageUnavailable(f"The file storage failed: {exc.strerror or exc}.") from exc


class LocalWriter(StorageWriter):
    """Writes to a temporary file, starting its write-back as it goes; renamed on commit.

    Without write-back started per chunk, every dirty page waits for the final
    fsync, which then takes most of an upload's wall time after the last byte.
    """

    writes_in_thread = True

    def __init__(self, final: Path, temp: Path, fd: int) -> None:
        self._final = final
        self._temp = temp
        self._fd = fd
        self._written = 0
        self._closed = False

    def write_blocking(self, data: bytes) -> None:
        with _translated_os_errors():
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            start_write_back(self._fd, self._written, len(data))
            self._written += len(data)

    async def write(self, data: bytes) -> None:
        await anyio.to_thread.run_sync(self.write_blocking, data)

    async def commit(self) -> None:
        with _translated_os_errors():
            await anyio.to_thread.run_sync(os.fsync, self._fd)
            self._close()
            await aiofiles.os.replace(self._temp, self._final)
            await anyio.to_thread.run_sync(fsync_dir, self._final.parent)
        self.committed = True

    async def abort(self) -> None:
        self._close()
        try:
            await aiofiles.os.remove(self._temp)
        except FileNotFoundError:
            pass

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


def _libc_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux, or no glibc symbol
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _libc_sync_file_range()
#: SYNC_FILE_RANGE_WRITE: start write-back of dirty pages in the range, without waiting.
_SYNC_FILE_RANGE_WRITE = 2


def start_write_back(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range out now (Linux); a no-op elsewhere."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries: a file just renamed into it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _single_chunk(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


def _pread(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes from ``offset``, fewer only at the end of the file."""
    parts = []
    while length > 0:
        part = os.pread(fd, length, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        length -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class LocalStorage(Storage):
    name = "local"
    #: Bytes read from disk per chunk when streaming a file out; reads up to
    #: this size are made in one call (see :meth:`_read_small`).
    chunk_size = 256 * 1024
    #: Whether reads may try the page cache without waiting (``RWF_NOWAIT``, Linux).
    _nowait = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, key: str) -> Path:
        """The file of a key; the one place that turns keys into paths.

        Pure string work, safe on the event loop: a key is ``/``-separated
        segments of ``[A-Za-z0-9_-]``, so no segment is empty, ``.`` or ``..``
        and the path stays under the root lexically. Symbolic links planted
        under the root are :meth:`resolved`'s concern.
        """
        if not STORAGE_KEY.match(key):
            raise ObjectNotFound(key)
        return Path(f"{self.root}/{key}")

    async def resolved(self, key: str) -> Path:
        """:meth:`path`, checked to lead under the root through any symbolic link.

        Resolving stats every component: on a slow or hung disk that must
        not happen on the event loop, so it runs in a worker thread.
        """
        path = self.path(key)
        real = await anyio.to_thread.run_sync(os.path.realpath, path)
        if os.path.commonpath([str(self.root), real]) != str(self.root):
            raise ObjectNotFound(key)
        return Path(real)

    async def create_writer(self, key: str) -> StorageWriter:
        final = await self.resolved(key)
        temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        with _translated_os_errors():
            await aiofiles.os.makedirs(final.parent, exist_ok=True)
            fd = await anyio.to_thread.run_sync(
                os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666
            )
        return LocalWriter(final, temp, fd)

    async def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Chunks read from the page cache on the event loop when they are there.

        Most static files are small and hot. A worker-thread round trip costs
        more than copying them, and under load the GIL hand-offs cost more
        still, so each chunk is read on the event loop with ``RWF_NOWAIT``,
        which fails rather than wait for the disk; only then does a thread
        read it. Opening and closing are metadata calls answered from the
        kernel's caches for hot files (nginx, too, makes them in its event
        loop). A read of at most :attr:`chunk_size` is one chunk.
        """
        try:
            with _translated_os_errors():
                file = self._open_checked(key)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        if length is not None and length <= self.chunk_size:
            try:
                with _translated_os_errors():
                    data = await self._pread(file, offset, length)
            finally:
                file.close()
            return _single_chunk(data)
        return self._chunks(file, offset, length)

    def _open_checked(self, key: str) -> io.FileIO:
        """The key's file, opened for reading, checked to lead under the root.

        What :meth:`path` checks, checked on the open descriptor instead: where
        ``/proc/self/fd`` says it leads. One system call rather than one per
        path component, and no window between the check and the open.
        """
        if not STORAGE_KEY.match(key):
            raise ObjectNotFound(key)
        # O_NONBLOCK: opening a FIFO planted under the root must not wait for a writer.
        fd = os.open(f"{self.root}/{key}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        file = io.FileIO(fd, "rb")
        try:
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # no /proc: resolve the path instead
                real = os.path.realpath(self.path(key))
            if not real.startswith(f"{self.root}/"):
                raise ObjectNotFound(key)
        except BaseException:
            file.close()
            raise
        return file

    async def _pread(self, file: io.FileIO, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``: from the page cache, else in a thread."""
        if self._nowait:
            data = self._pread_cached(file, offset, length)
            if data is not None:
                return data
        return await anyio.to_thread.run_sync(_pread, file.fileno(), offset, length)

    def _pread_cached(self, file: io.FileIO, offset: int, length: int) -> bytes | None:
        """The bytes if the page cache holds them all, else None (the disk is not touched)."""
        buffer = bytearray(length)
        try:
            count = os.preadv(file.fileno(), [buffer], offset, _RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:  # a kernel or file system without RWF_NOWAIT
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            self._nowait = False
            return None
        if count < length and os.fstat(file.fileno()).st_size > offset + count:
            return None  # partly cached
        return bytes(buffer) if count == length else bytes(memoryview(buffer)[:count])

    async def _chunks(
        self, file: io.FileIO, offset: int, length: int | None
    ) -> AsyncIterator[bytes]:
        try:
            remaining = length
            while remaining is None or remaining > 0:
                size = self.chunk_size if remaining is None else min(self.chunk_size, remaining)
                with _translated_os_errors():
                    chunk = await self._pread(file, offset, size)
                if not chunk:
                    break
                offset += len(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            file.close()

    async def stat(self, key: str) -> StoredObject:
        try:
            result = await aiofiles.os.stat(await self.resolved(key))
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        return StoredObject(key=key, size=result.st_size, modified=result.st_mtime)

    async def delete(self, key: str) -> None:
        try:
            await aiofiles.os.remove(await self.resolved(key))
        except (FileNotFoundError, ObjectNotFound):
            pass

    async def check(self) -> None:
        def probe() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not readable and writable", str(self.root))

        try:
            await anyio.to_thread.run_sync(probe)
        except OSError as exc:
            raise StorageUnavailable(f"Local storage at {self.root} is unusable: {exc}.") from exc

    async def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        paths = await anyio.to_thread.run_sync(self._committed_paths, prefix)
        for path in paths:
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                yield key

    def _committed_paths(self, prefix: str = "") -> list[Path]:
        # Only the folder the prefix names is walked (variants of one file: one folder).
        folder = prefix.rpartition("/")[0]
        if folder and not STORAGE_KEY.match(folder):
            return []
        top = self.root / folder if folder else self.root
        if not top.exists():
            return []
        return sorted(p for p in top.rglob("*") if p.is_file() and not p.name.startswith("."))

    async def iter_unfinished(self) -> AsyncIterator[UnfinishedWrite]:
        def scan() -> list[UnfinishedWrite]:
            if not self.root.exists():
                return []
            found = []
            for path in self.root.rglob(f".*{TEMP_SUFFIX}"):
                try:
                    started = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                # ".<name>.<hex><suffix>" beside the final file (see create_writer).
                name = path.name[1:].rsplit(".", 2)[0]
                key = (path.parent / name).relative_to(self.root).as_posix()
                handle = path.relative_to(self.root).as_posix()
                found.append(UnfinishedWrite(key, handle, started))
            return sorted(found, key=lambda w: w.handle)

        for write in await anyio.to_thread.run_sync(scan):
            yield write

    async def discard_unfinished(self, write: UnfinishedWrite) -> None:
        if not _TEMP_NAME.fullmatch(write.handle):
            raise ObjectNotFound(write.handle)
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(self.root / write.handle)

    async def sweep_incomplete(self, older_than: float) -> int:
        def sweep() -> int:
            if not self.root.exists():
                return 0
            cutoff = time.time() - older_than
            removed = 0
            for path in self.root.rglob(f".*{TEMP_SUFFIX}"):
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
            return removed

        return await anyio.to_thread.run_sync(sweep)
