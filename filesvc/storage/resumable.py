"""Resumable writes: one object built over many requests, by any process.

A tus upload's bytes arrive in PATCH requests that any service process may
take. Between requests nothing stays in memory: what a backend needs to go on
(S3's multipart upload id and parts, the bytes staged for the next part) is
returned as a JSON-able ``state`` that the caller keeps in the database with
the offset, and handed back to the next request.

One request's life: :meth:`ResumableStore.open_append` at the recorded offset,
``write`` the new bytes in order, then either ``persist`` (durable, returns the
new state: record it with the new offset) or ``finish`` (the object appears
complete under its key, unrecorded). Bytes written but never recorded (a crash,
a checksum mismatch) are overwritten by the next request, which starts at the
recorded offset.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from filesvc.storage.base import ChunkWriter

State = dict[str, Any]

#: Prefix of every storage key a resumable upload uses: S3's start-up sweep of
#: crashed one-shot uploads (hours) leaves these alone, since tus clients may
#: resume for a day; their own expiry sweeps them.
KEY_PREFIX = "tus/"


class UploadLost(Exception):
    """The stored bytes of an upload are gone or shorter than its recorded offset."""


class Appender(ChunkWriter):
    """Appends one request's bytes to an upload."""

    @abstractmethod
    async def persist(self) -> State:
        """Make every byte written durable; the state to record with the new offset."""

    @abstractmethod
    async def finish(self) -> None:
        """The upload is whole: make it the object under its key (not yet recorded)."""

    async def close(self) -> None:
        """Release what the request held (files, buffers); written bytes stay unrecorded."""
        return None


class ResumableStore(ABC):
    """The resumable side of a :class:`Storage` backend."""

    @abstractmethod
    async def create(self, upload_id: str, key: str) -> State:
        """Prepare an empty upload; its first state."""

    @abstractmethod
    async def open_append(self, upload_id: str, key: str, offset: int, state: State) -> Appender:
        """An appender at ``offset``; :class:`UploadLost` when the stored bytes fall short."""

    @abstractmethod
    async def discard(self, upload_id: str, key: str, state: State) -> None:
        """Remove every byte of an unfinished upload (a finished object stays)."""

    def staging_keys(self, upload_id: str) -> list[str]:
        """Storage keys an unfinished upload may hold besides its final key (for checks)."""
        return []
