"""The file API: upload, list, get, delete."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from filesvc import crud
from filesvc.auth import require
from filesvc.config import Settings
from filesvc.deps import ResourcesDep, SessionDep, SettingsDep
from filesvc.errors import InvalidRequest
from filesvc.formparser import is_multipart
from filesvc.models import VISIBILITIES, StoredFile, Visibility
from filesvc.routemap import API_PREFIX
from filesvc.schemas import (
    FileBatch,
    FileList,
    FileOut,
    IsoDatetime,
    error_responses,
)
from filesvc.variants_store import delete_variants

logger = logging.getLogger("filesvc")

router = APIRouter(prefix="/files", tags=["files"])


def file_url(settings: Settings, row: StoredFile) -> str:
    """The file's static URL, ending in its readable name."""
    path = f"/files/{row.id}/{quote(row.filename, safe='')}"
    return f"{settings.public_base_url}{path}" if settings.public_base_url else path


def file_out(settings: Settings, row: StoredFile) -> FileOut:
    return FileOut.model_validate(
        {
            **{name: getattr(row, name) for name in FileOut.row_fields()},
            "url": file_url(settings, row),
        }
    )


_UPLOAD_ERRORS = error_responses(400, 401, 403, 408, 413, 415, 422, 503, 507)


def _upload_route(batch: bool) -> dict[str, Any]:
    """What both upload routes declare: 201, the write scope, their errors and body."""
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {
        "file": {"type": "array", "items": file_schema, "minItems": 1} if batch else file_schema,
        "visibility": {"type": "string", "enum": list(VISIBILITIES), "default": "public"},
        "sha256": {
            "type": "string",
            "pattern": "^[0-9a-fA-F]{64}$",
            "description": "Expected SHA-256 (hex); must come before the file part.",
        },
    }
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": properties}
        }
    }
    if not batch:
        content["application/octet-stream"] = {"schema": file_schema}
    return {
        "status_code": 201,
        "dependencies": [require("files:write")],
        "responses": _UPLOAD_ERRORS,
        "openapi_extra": {"requestBody": {"required": True, "content": content}},
    }


def _utc(moment: datetime | None) -> datetime | None:
    """A query bound in UTC: it needs a zone, and must stay within years 1 to 9999 in UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise InvalidRequest("Timestamps need a time zone, e.g. 2026-01-01T00:00:00Z.")
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+14:00
        raise InvalidRequest("A timestamp is out of range once converted to UTC.") from exc


@router.post(
    "",
    response_model=FileOut,
    summary="Upload one file",
    description="A multipart/form-data body with one part named `file` (and optional fields "
    "`visibility`, `sha256`), or any other body as the raw file (name from `?filename=`, "
    "checksum from an RFC 9530 `Repr-Digest: sha-256=:…:` header). The type is detected "
    "from the bytes.",
    **_upload_route(batch=False),
)
async def upload_file(
    request: Request,
    resources: ResourcesDep,
    filename: Annotated[
        str | None, Query(max_length=1024, description="Name of a raw upload.")
    ] = None,
    visibility: Annotated[
        Visibility | None, Query(description="Visibility of a raw upload.")
    ] = None,
) -> JSONResponse:
    if is_multipart(request.headers.get("content-type", "")):
        [row] = await resources.uploads.form(request, max_files=1, visibility=visibility)
    else:
        row = await resources.uploads.raw(request, filename=filename, visibility=visibility)
    return JSONResponse(
        file_out(resources.settings, row).model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"{API_PREFIX}/files/{row.id}"},
    )


@router.post(
    "/batch",
    response_model=FileBatch,
    summary="Upload several files, all or nothing",
    description="Several parts named `file`. If one is refused, none is kept; the error's "
    "`details` give the part's `index` and `filename`.",
    **_upload_route(batch=True),
)
async def upload_batch(request: Request, resources: ResourcesDep) -> FileBatch:
    settings = resources.settings
    if not is_multipart(request.headers.get("content-type", "")):
        raise InvalidRequest("A batch upload must be multipart/form-data.")
    rows = await resources.uploads.form(request, max_files=settings.max_batch_files)
    return FileBatch(files=[file_out(settings, row) for row in rows])


@router.get(
    "",
    response_model=FileList,
    summary="List files, newest first",
    dependencies=[require("files:read")],
    responses=error_responses(400, 401, 403, 503),
)
async def list_files(
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    content_type: Annotated[
        str | None, Query(max_length=127, pattern=r"^[\w.+-]+/[\w.+-]+$")
    ] = None,
    created_after: IsoDatetime | None = None,
    created_before: IsoDatetime | None = None,
) -> FileList:
    rows, next_cursor = await crud.list_files(
        session,
        limit=limit,
        cursor=cursor,
        content_type=content_type,
        created_after=_utc(created_after),
        created_before=_utc(created_before),
    )
    return FileList(items=[file_out(settings, row) for row in rows], next_cursor=next_cursor)


@router.get(
    "/{file_id}",
    response_model=FileOut,
    summary="One file's metadata",
    dependencies=[require("files:read")],
    responses=error_responses(401, 403, 404, 503),
)
async def get_file(file_id: str, session: SessionDep, settings: SettingsDep) -> FileOut:
    return file_out(settings, await crud.get_file(session, file_id))


@router.delete(
    "/{file_id}",
    status_code=204,
    summary="Delete a file and its bytes",
    dependencies=[require("files:write")],
    responses=error_responses(401, 403, 404, 503),
)
async def delete_file(file_id: str, session: SessionDep, resources: ResourcesDep) -> Response:
    row = await crud.get_file(session, file_id)
    # The row goes first: a failure in between leaves unlisted bytes (which
    # `filesvc check` finds), never a listed file without bytes.
    await crud.delete_file(session, row)
    await resources.storage.delete(row.storage_key)
    await delete_variants(resources.storage, row.storage_key)
    return Response(status_code=204)
