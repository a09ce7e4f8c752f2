"""Response bodies of the JSON API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer

from filesvc.models import Visibility


def _iso_8601_text(value: Any) -> Any:
    # Pydantic would also read 0.5 or 1700000000 as seconds since 1970.
    if not isinstance(value, datetime) and not re.match(r"\d{4}-\d{2}-\d{2}", str(value)):
        raise ValueError("expected an ISO 8601 date-time, e.g. 2026-01-01T00:00:00Z")
    return value


#: A query or form date-time: ISO 8601 text only.
IsoDatetime = Annotated[datetime, BeforeValidator(_iso_8601_text)]

#: A UTC date-time written as ISO 8601 with ``Z``, as every answer writes them.
ZuluDatetime = Annotated[
    datetime,
    PlainSerializer(lambda value: value.isoformat().replace("+00:00", "Z"), return_type=str),
]


class FileOut(BaseModel):
    id: str = Field(description="Opaque URL-safe id; never begins with - = + or @.")
    filename: str = Field(description="The client's file name, sanitised; metadata only.")
    content_type: str = Field(description="Detected from the bytes.")
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Hex SHA-256 of the stored bytes.")
    width: int | None = Field(description="Pixels, for images.")
    height: int | None = Field(description="Pixels, for images.")
    visibility: Visibility
    created_at: ZuluDatetime
    url: str = Field(description="The file's static URL.")

    @classmethod
    def row_fields(cls) -> tuple[str, ...]:
        """The fields read straight off a file's row: every one but ``url``."""
        return tuple(name for name in cls.model_fields if name != "url")


class FileList(BaseModel):
    items: list[FileOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class FileBatch(BaseModel):
    files: list[FileOut]


class SignedUrl(BaseModel):
    url: str
    expires_at: ZuluDatetime


class ErrorDetail(BaseModel):
    code: str = Field(description="snake_case error code.")
    message: str = Field(description="Human sentence.")
    details: Any | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting the JSON error body for each status."""
    return {status: {"model": ErrorBody} for status in statuses}
