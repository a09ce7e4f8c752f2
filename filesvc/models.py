"""Database tables."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Visibility = Literal["public", "private"]
#: Who may fetch a file's static URL: anyone, or holders of a signed URL.
VISIBILITIES: tuple[str, ...] = get_args(Visibility)

#: What a file id can look like (ours are 26 characters of base32; the column holds 32).
FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class StoredFile(Base):
    """One stored file: its bytes live in storage under ``storage_key``."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(255), unique=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    visibility: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_files_created_at_id", "created_at", "id"),
        Index("ix_files_content_type_created_at", "content_type", "created_at"),
    )


class ResumableUpload(Base):
    """A tus upload in progress: everything any process needs to take its next request.

    ``backend_state`` is the storage's own JSON (S3: the multipart upload id, its
    parts' ETags and the bytes staged for the next part); ``hash_state`` is the
    running SHA-256 of bytes ``[0, offset)``, serialised (hashlib objects do not
    pickle). ``lease_token``/``lease_until`` is the per-upload lock: taken by a
    conditional UPDATE, so it works alike on SQLite and PostgreSQL and holds no
    connection while a slow client sends its body; a crashed holder's lease
    simply runs out.
    """

    __tablename__ = "resumable_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(255), unique=True)
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(255))
    visibility: Mapped[str] = mapped_column(String(8))
    expected_sha256: Mapped[str | None] = mapped_column(String(64))
    upload_metadata: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(127))
    head: Mapped[bytes] = mapped_column(LargeBinary)
    hash_state: Mapped[bytes] = mapped_column(LargeBinary)
    backend_state: Mapped[str] = mapped_column(Text)
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_resumable_uploads_expires_at", "expires_at"),)
