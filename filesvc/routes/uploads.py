"""Resumable uploads: the tus 1.0.0 protocol at ``/api/v1/uploads`` (HTTP only).

Headers are parsed in :mod:`filesvc.tusheaders`, the work is done by
:mod:`filesvc.resumable`. Every answer, errors included, carries
``Tus-Resumable``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute

from filesvc.auth import require
from filesvc.bodies import client_paced_body
from filesvc.deps import ResourcesDep
from filesvc.errors import ChecksumFailed, FilesvcError, InvalidRequest, UploadNotFound
from filesvc.handlers import error_response
from filesvc.metrics import Metrics
from filesvc.models import ResumableUpload
from filesvc.resumable import Uploads
from filesvc.schemas import error_responses
from filesvc.tusheaders import (
    CHECKSUM_ALGORITHMS,
    PATCH_CONTENT_TYPE,
    TUS_EXTENSIONS,
    TUS_VERSION,
    check_resumable,
    http_date,
    parse_checksum,
    parse_count,
    parse_metadata,
)

PREFIX = "/uploads"


class InvalidContentType(FilesvcError):
    status_code = 415
    code = "invalid_content_type"
    message = f"A body must be sent as Content-Type: {PATCH_CONTENT_TYPE}."


class TusRoute(APIRoute):
    """Adds ``Tus-Resumable`` to every answer, the errors raised in the route included."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def tus_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except FilesvcError as exc:
                response = error_response(exc)
            response.headers["Tus-Resumable"] = TUS_VERSION
            return response

        return tus_handler


router = APIRouter(prefix=PREFIX, tags=["uploads"], route_class=TusRoute)

#: Every tus request but OPTIONS states the protocol version; another or none is 412.
TUS_RESUMABLE_HEADER: dict[str, Any] = {
    "parameters": [
        {
            "name": "Tus-Resumable",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "enum": [TUS_VERSION]},
            "description": "The tus protocol version: 412 with `Tus-Version` for any other.",
        }
    ]
}


def get_uploads(resources: ResourcesDep) -> Uploads:
    return resources.resumable


def get_metrics(resources: ResourcesDep) -> Metrics:
    return resources.metrics


UploadsDep = Annotated[Uploads, Depends(get_uploads)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def _location(uploads: Uploads, upload_id: str) -> str:
    path = f"/api/v1{PREFIX}/{upload_id}"
    base = uploads.settings.public_base_url
    return f"{base}{path}" if base else path


def _progress_headers(offset: int, expires_at: datetime) -> dict[str, str]:
    return {"Upload-Offset": str(offset), "Upload-Expires": http_date(expires_at)}


def _discovery(uploads: Uploads) -> Response:
    return Response(
        status_code=204,
        headers={
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(TUS_EXTENSIONS),
            "Tus-Max-Size": str(uploads.settings.max_upload_bytes),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        },
    )


def _content_length(request: Request) -> int | None:
    header = request.headers.get("content-length")
    return None if header is None else parse_count(header, "Content-Length")


async def _refresh_gauge(uploads: Uploads, metrics: Metrics) -> None:
    try:
        metrics.resumable_uploads.set(await uploads.count())
    except Exception:  # a gauge is not worth failing a request for
        pass


@router.options(
    "",
    status_code=204,
    summary="tus discovery: version, extensions, limits",
    dependencies=[require("files:write")],
)
async def discover(uploads: UploadsDep) -> Response:
    return _discovery(uploads)


@router.options(
    "/{upload_id}",
    status_code=204,
    summary="tus discovery, on an upload's URL",
    dependencies=[require("files:write")],
)
async def discover_upload(upload_id: str, uploads: UploadsDep) -> Response:
    return _discovery(uploads)


@router.post(
    "",
    status_code=201,
    summary="Create a resumable upload (tus creation, creation-with-upload)",
    description="`Upload-Length` (bytes) and optional `Upload-Metadata` (`filename`, "
    "`visibility`, `sha256` hex). With `Content-Type: application/offset+octet-stream`, the "
    "body is the upload's first bytes. The upload's id becomes the file's id.",
    dependencies=[require("files:write")],
    responses=error_responses(400, 401, 403, 408, 412, 413, 415, 422, 460, 503, 507),
    openapi_extra=TUS_RESUMABLE_HEADER,
)
async def create_upload(request: Request, uploads: UploadsDep, metrics: MetricsDep) -> Response:
    headers = request.headers
    check_resumable(headers.get("tus-resumable"))
    if headers.get("upload-defer-length") is not None:
        raise InvalidRequest("Upload-Defer-Length is not supported: send Upload-Length.")
    length = parse_count(headers.get("upload-length"), "Upload-Length")
    raw_metadata = headers.get("upload-metadata") or ""
    metadata = parse_metadata(raw_metadata)
    with_body = headers.get("content-type", "").split(";")[0].strip() == PATCH_CONTENT_TYPE
    checksum = parse_checksum(headers.get("upload-checksum")) if with_body else None
    content_length = _content_length(request) if with_body else None
    row = await uploads.create(length, metadata, raw_metadata)
    await _refresh_gauge(uploads, metrics)
    location = _location(uploads, row.id)
    offset, expires_at = 0, row.expires_at
    if with_body and content_length != 0:
        try:
            with metrics.in_progress(metrics.resumable_requests_in_progress):
                progress = await uploads.append(
                    row.id,
                    0,
                    client_paced_body(request, uploads.settings),
                    checksum=checksum,
                    content_length=content_length,
                )
        except ChecksumFailed as exc:
            exc.headers["Location"] = location  # the upload exists; resume it there
            raise
        finally:
            await _refresh_gauge(uploads, metrics)
        offset, expires_at = progress.offset, progress.expires_at
    return Response(
        status_code=201,
        headers={"Location": location, **_progress_headers(offset, expires_at)},
    )


def _upload_headers(row: ResumableUpload) -> dict[str, str]:
    headers = {
        "Upload-Length": str(row.length),
        "Cache-Control": "no-store",
        **_progress_headers(row.offset, row.expires_at),
    }
    if row.upload_metadata:
        headers["Upload-Metadata"] = row.upload_metadata
    return headers


@router.head(
    "/{upload_id}",
    summary="An upload's offset (tus)",
    dependencies=[require("files:write")],
    responses=error_responses(401, 403, 404, 410, 412, 503),
    openapi_extra=TUS_RESUMABLE_HEADER,
)
async def upload_offset(request: Request, upload_id: str, uploads: UploadsDep) -> Response:
    check_resumable(request.headers.get("tus-resumable"))
    try:
        row = await uploads.get(upload_id)
    except UploadNotFound:
        # Complete: it became the file with the same id. A client whose last
        # PATCH answer was lost learns here that it is done (offset = length).
        file = await uploads.completed(upload_id)
        if file is None:
            raise
        headers = {"Upload-Offset": str(file.size), "Upload-Length": str(file.size)}
        return Response(status_code=200, headers={**headers, "Cache-Control": "no-store"})
    return Response(status_code=200, headers=_upload_headers(row))


@router.patch(
    "/{upload_id}",
    status_code=204,
    summary="Append bytes to an upload (tus)",
    description="`Content-Type: application/offset+octet-stream`, `Upload-Offset` equal to "
    "the upload's offset, optional `Upload-Checksum: sha1|sha256 <base64>` of this body "
    "(460 when it does not match). The last byte makes the upload a file with the same id.",
    dependencies=[require("files:write")],
    responses=error_responses(400, 401, 403, 404, 408, 409, 410, 412, 413, 415, 422, 423, 460),
    openapi_extra=TUS_RESUMABLE_HEADER,
)
async def append(
    request: Request, upload_id: str, uploads: UploadsDep, metrics: MetricsDep
) -> Response:
    headers = request.headers
    check_resumable(headers.get("tus-resumable"))
    if headers.get("content-type", "").split(";")[0].strip() != PATCH_CONTENT_TYPE:
        raise InvalidContentType()
    offset = parse_count(headers.get("upload-offset"), "Upload-Offset")
    checksum = parse_checksum(headers.get("upload-checksum"))
    content_length = _content_length(request)
    try:
        with metrics.in_progress(metrics.resumable_requests_in_progress):
            progress = await uploads.append(
                upload_id,
                offset,
                client_paced_body(request, uploads.settings),
                checksum=checksum,
                content_length=content_length,
            )
    except BaseException:
        await _refresh_gauge(uploads, metrics)  # a refusal may have removed the upload
        raise
    if progress.complete:
        await _refresh_gauge(uploads, metrics)
    answer = _progress_headers(progress.offset, progress.expires_at)
    return Response(status_code=204, headers=answer)


@router.delete(
    "/{upload_id}",
    status_code=204,
    summary="Terminate an upload and drop its bytes (tus termination)",
    dependencies=[require("files:write")],
    responses=error_responses(401, 403, 404, 410, 412, 423),
    openapi_extra=TUS_RESUMABLE_HEADER,
)
async def terminate(
    request: Request, upload_id: str, uploads: UploadsDep, metrics: MetricsDep
) -> Response:
    check_resumable(request.headers.get("tus-resumable"))
    await uploads.terminate(upload_id)
    await _refresh_gauge(uploads, metrics)
    return Response(status_code=204)
