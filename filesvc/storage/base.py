"""The storage interface every backend implements.

A backend stores opaque byte strings under generated keys. Writes go through
a :class:`StorageWriter` that either commits (the object appears whole, at
once) or aborts (nothing is left behind); :func:`open_writer` guarantees the
abort on every failure path, cancellation included.
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio


class ObjectNotFound(Exception):
    """No object is stored under this key."""


@dataclass(frozen=True, slots=True)
class UnfinishedWrite:
    """A write a crashed process left behind (an S3 multipart upload, a local temp file)."""

    key: str
    #: What the backend needs to discard it: the S3 upload id, the local temp file's name.
    handle: str
    #: When it began, seconds since the epoch.
    started: float


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    #: When the object was committed (epoch seconds), where the backend knows.
    modified: float | None = None


class ChunkWriter(ABC):
    """Takes bytes in order: a one-shot upload's object, or one request of a resumable one."""

    #: Whether :meth:`write_blocking` may be called from a worker thread instead
    #: of awaiting :meth:`write`: the upload pipeline then hashes and writes a
    #: chunk in one thread hop instead of two.
    writes_in_thread: bool = False

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    def write_blocking(self, data: bytes) -> None:
        """Write from a worker thread; only where :attr:`writes_in_thread` says so."""
        raise NotImplementedError


class StorageWriter(ChunkWriter):
    """Receives one object's bytes in order; nothing is visible before commit."""

    #: Set by :meth:`commit` once the object is stored.
    committed: bool = False

    @abstractmethod
    async def commit(self) -> None:
        """Make the object visible under its key, complete."""

    @abstractmethod
    async def abort(self) -> None:
        """Discard everything written; safe to call more than once, and after commit fails."""


class Storage(ABC):
    """A place for blobs: local disk, S3, ..."""

    #: Short name used in readiness reports and logs.
    name: str = "storage"

    @abstractmethod
    async def create_writer(self, key: str) -> StorageWriter: ...

    @abstractmethod
    async def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Chunks of the object from ``offset``, ``length`` bytes or to the end.

        Raises :class:`ObjectNotFound` before returning when the key is unknown.
        """

    @abstractmethod
    async def stat(self, key: str) -> StoredObject: ...

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; no error when it does not exist."""

    @abstractmethod
    async def check(self) -> None:
        """Raise :class:`filesvc.errors.StorageUnavailable` when the storage cannot be used."""

    @abstractmethod
    def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every committed key (that starts with ``prefix``), for consistency checks."""

    @abstractmethod
    async def sweep_incomplete(self, older_than: float) -> int:
        """Remove writes left unfinished (by a crash) more than ``older_than`` seconds ago."""

    async def iter_unfinished(self) -> AsyncIterator[UnfinishedWrite]:
        """Writes in progress or left unfinished, for ``filesvc check``; none by default."""
        return
        yield  # an async generator that yields nothing

    async def discard_unfinished(self, write: UnfinishedWrite) -> None:
        """Remove what ``write`` left behind; no error when it is gone already."""
        return None

    async def presigned_url(
        self, key: str, expires_in: int, *, content_disposition: str, content_type: str
    ) -> str | None:
        """A URL the client may fetch directly, when the backend offers one."""
        return None

    async def aclose(self) -> None:
        return None


#: What a storage key may look like: generated path segments, never client input.
STORAGE_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


def new_key(file_id: str) -> str:
    """A storage key for a new file: generated, never from client input, spread over folders."""
    token = secrets.token_hex(2)
    return f"{token[:2]}/{token[2:]}/{file_id}"


@asynccontextmanager
async def open_writer(storage: Storage, key: str) -> AsyncIterator[StorageWriter]:
    """A writer that is aborted unless the body committed it."""
    writer = await storage.create_writer(key)
    try:
        yield writer
    finally:
        if not writer.committed:
            with anyio.CancelScope(shield=True):
                await writer.abort()
