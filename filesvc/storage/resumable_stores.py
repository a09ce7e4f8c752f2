"""The resumable side of the configured storage backend (kept apart from the interface,
so that backends can import :mod:`filesvc.storage.resumable` without a cycle)."""

from __future__ import annotations

from pathlib import Path

from filesvc.config import Settings
from filesvc.storage.base import Storage
from filesvc.storage.resumable import ResumableStore


def create_resumable_store(settings: Settings, storage: Storage) -> ResumableStore:
    """The resumable side of ``storage``, the backend the settings name."""
    if settings.storage == "s3":
        from filesvc.storage.resumable_s3 import S3ResumableStore
        from filesvc.storage.s3 import S3Storage

        assert isinstance(storage, S3Storage)
        return S3ResumableStore(storage)
    from filesvc.storage.local import LocalStorage
    from filesvc.storage.resumable_local import LocalResumableStore

    assert isinstance(storage, LocalStorage)
    return LocalResumableStore(storage, uploads_dir(settings))


def uploads_dir(settings: Settings) -> Path:
    """Where local uploads in progress grow: beside the storage root, same file system."""
    return settings.data_dir / "uploads"
