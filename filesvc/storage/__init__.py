"""Blob storage behind one interface: local disk or S3."""

from __future__ import annotations

from filesvc.config import Settings
from filesvc.storage.base import (
    ObjectNotFound,
    Storage,
    StorageWriter,
    StoredObject,
    UnfinishedWrite,
    new_key,
    open_writer,
)

__all__ = [
    "ObjectNotFound",
    "Storage",
    "StorageWriter",
    "StoredObject",
    "UnfinishedWrite",
    "create_storage",
    "new_key",
    "open_writer",
]


def create_storage(settings: Settings) -> Storage:
    """The backend the settings name."""
    if settings.storage == "s3":
        from filesvc.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    from filesvc.storage.local import LocalStorage

    return LocalStorage(settings.data_dir / "files")
