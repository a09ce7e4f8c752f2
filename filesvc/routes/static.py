"""Static URLs: ``GET``/``HEAD /files/{id}`` and ``/files/{id}/{any-name}``.

HTTP only: the semantics live in :mod:`filesvc.serving`. Each request costs
one primary-key read (:mod:`filesvc.lookup`) and one storage read per range
(none for HEAD, 304, 412 or 416); nothing is cached in the process, so a
deleted file is gone from every worker at once. Static URLs need no API key.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Depends, Query, Request
from fastapi.routing import APIRoute
from starlette.datastructures import QueryParams
from starlette.responses import RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from filesvc.deps import Resources
from filesvc.errors import FileNotFound, NotAnImage, SignatureRequired
from filesvc.lookup import FileRecord
from filesvc.models import FILE_ID
from filesvc.schemas import ErrorBody
from filesvc.serving import (
    PRIVATE_CACHE_CONTROL,
    PUBLIC_CACHE_CONTROL,
    Conditions,
    Multipart,
    Representation,
    Selection,
    StoredFileResponse,
    content_disposition,
    multipart_chunks,
    representation_headers,
    select,
    validator_headers,
)
from filesvc.signing import MAX_SIGNED_SECONDS, verify
from filesvc.storage import ObjectNotFound, Storage
from filesvc.variants import (
    QUERY_NAMES,
    SOURCE_TYPES,
    VariantQuery,
    VariantRequest,
    parse_query,
    resolve,
    settle,
    variant_filename,
)
from filesvc.variants_store import range_opener

#: Lifetime of the presigned storage URL a public file redirects to.
REDIRECT_URL_SECONDS = 3600
#: How long caches may keep that redirect: well inside the URL's lifetime.
REDIRECT_CACHE_SECONDS = 300

ExpiresQuery = Annotated[str | None, Query(description="Expiry (Unix seconds) of a signed URL.")]
SignatureQuery = Annotated[str | None, Query(description="HMAC-SHA256 signature of a signed URL.")]
VariantQueryParam = Annotated[
    str | None,
    Query(description="An image variant preset (`FILESVC_IMAGE_PRESETS`), e.g. `thumb`."),
]
SideQuery = Annotated[
    str | None, Query(description="Variant width or height, pixels (1-4096): signed URLs only.")
]
FitQuery = Annotated[
    str | None, Query(description="`cover`, `contain` or `inside`: signed URLs only.")
]
FormatQuery = Annotated[
    str | None,
    Query(description="`webp`, `avif`, `jpeg`, `png` or `auto`: signed URLs only."),
]
QualityQuery = Annotated[str | None, Query(description="Quality 1-100: signed URLs only.")]

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_HEADERS = {
    name: {"schema": {"type": "string"}, "description": text}
    for name, text in {
        "ETag": "Strong: the quoted hex SHA-256 of the bytes.",
        "Last-Modified": "When the file was uploaded.",
        "Cache-Control": "`public, max-age=31536000, immutable`, or `private, no-store` "
        "for private files.",
        "Repr-Digest": "RFC 9530 `sha-256=:<base64>:` of the whole file, also on 206.",
        "Content-Disposition": "`inline` for raster images, else `attachment`, with the name.",
        "Accept-Ranges": "`bytes`.",
    }.items()
}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole file.", "content": {"*/*": _BINARY}, "headers": _HEADERS},
    206: {
        "description": "The requested range; several ranges as `multipart/byteranges`.",
        "content": {"*/*": _BINARY, "multipart/byteranges": _BINARY},
        "headers": {**_HEADERS, "Content-Range": {"schema": {"type": "string"}}},
    },
    304: {"description": "Not modified (`If-None-Match`, `If-Modified-Since`)."},
    307: {"description": "Redirect to a presigned S3 URL (with `FILESVC_S3_REDIRECT=true`)."},
    400: _error("A variant parameter is malformed."),
    403: _error(
        "`signature_required` (private file, or ad-hoc variant parameters) or `invalid_signature`."
    ),
    404: _error("No file has this id, no variant preset this name, or the file is no image."),
    422: _error("The stored image does not decode (variants)."),
    412: _error("`If-Match` or `If-Unmodified-Since` failed."),
    416: _error("No requested range is satisfiable; `Content-Range: bytes */<size>`."),
    503: _error("Database or storage unavailable, or the image-decoding budget is full."),
}
_DESCRIPTION = (
    "The stored bytes, streamed. Public files need no credentials; private files need "
    "`expires` and `signature` from `POST /api/v1/files/{id}/signed-url`. Conditional "
    "requests and byte ranges follow RFC 9110. `?variant=<preset>` serves a raster image "
    "resized (rendered once, then stored); other variant parameters need a signed URL."
)
_ROUTE: dict[str, Any] = {
    "responses": _RESPONSES,
    "response_class": StoredFileResponse,
    "status_code": 200,
    "response_description": "The whole file.",
    "description": _DESCRIPTION,
}


class StaticFileRoute(APIRoute):
    """Routed and documented like any route, answered as plain ASGI by :func:`respond`.

    FastAPI's per-request machinery (a Request, dependency solving and
    validation, exit stacks) costs more than serving a small file does. Static
    URLs take no body, no credentials and no dependencies, so :meth:`handle`
    reads the two query parameters itself; the endpoint functions below do the
    same through FastAPI, and declare the operation for OpenAPI.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in (self.methods or ()):
            await super().handle(scope, receive, send)  # 405 with Allow, as for any route
            return
        expires = signature = None
        variant = None
        if scope["query_string"]:
            query = QueryParams(scope["query_string"])
            expires, signature = query.get("expires"), query.get("signature")
            variant = parse_query(query)
        response = await respond(
            scope, scope["path_params"]["file_id"], expires, signature, variant
        )
        await response(scope, receive, send)


router = APIRouter(tags=["static"], route_class=StaticFileRoute)


async def _open(storage: Storage, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
    try:
        return await storage.open_reader(key, offset, length)
    except ObjectNotFound as exc:  # deleted since its row was read
        raise FileNotFound() from exc


def _presign_seconds(expires: str | None) -> int:
    if expires is None:
        return REDIRECT_URL_SECONDS
    return max(1, min(int(expires) - int(time.time()), MAX_SIGNED_SECONDS))


async def respond(
    scope: Scope,
    file_id: str,
    expires: str | None,
    signature: str | None,
    variant: VariantQuery | None = None,
) -> Response:
    """The answer to a GET or HEAD of a static URL; raises the domain errors."""
    resources: Resources = scope["app"].state.resources
    lookup = resources.lookup
    signed = expires is not None or signature is not None
    wanted = None
    if variant is not None:  # 400 or 404 before anything is looked up
        wanted = resolve(variant, resources.settings.image_presets)
    if signed:  # checked before the database: a bad signature costs no query
        canonical = variant.canonical() if variant is not None else ""
        preset_only = variant is not None and not variant.ad_hoc
        verify(
            resources.signing_key,
            file_id,
            expires,
            signature,
            canonical,
            file_signature_covers=preset_only,
        )
    elif variant is not None and variant.ad_hoc:
        raise SignatureRequired("Variant sizes and formats beyond the presets need a signed URL.")
    if not FILE_ID.fullmatch(file_id):  # unknown without asking the database
        raise FileNotFound()
    row = await lookup.get(file_id)
    if row is None:
        raise FileNotFound()
    public = row.visibility == "public"
    if not public and not signed:
        raise SignatureRequired()
    if wanted is not None:
        return await respond_variant(scope, row, wanted, public=public, signed=signed)
    representation = Representation.of(
        size=row.size, content_type=row.content_type, sha256=row.sha256, created_at=row.created_at
    )
    # A signed URL expires: no shared cache may keep its answer (SPEC: `private`).
    cache_control = PUBLIC_CACHE_CONTROL if public and not signed else PRIVATE_CACHE_CONTROL
    method = scope["method"]
    selection = select(method, Conditions.from_raw(scope["headers"]), representation)
    if selection.status == 304:
        return StoredFileResponse(304, validator_headers(representation, cache_control))

    storage = resources.storage
    # HEAD is answered here: a URL presigned for GET answers 403 to a HEAD (S3
    # signs the method), and the headers need no byte of the object.
    if resources.settings.s3_redirect and method != "HEAD":
        url = await storage.presigned_url(
            row.storage_key,
            _presign_seconds(expires),
            content_disposition=content_disposition(row.filename, row.content_type),
            content_type=row.content_type,
        )
        if url is not None:
            # A signed request's presigned URL may expire within seconds: never cache it.
            shared = public and not signed
            cache = f"public, max-age={REDIRECT_CACHE_SECONDS}" if shared else PRIVATE_CACHE_CONTROL
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": cache})

    headers = representation_headers(
        representation, filename=row.filename, cache_control=cache_control
    )
    opener = partial(_open, storage, row.storage_key)
    return await _ranged(method, selection, representation, headers, opener)


async def respond_variant(
    scope: Scope, row: FileRecord, wanted: VariantRequest, *, public: bool, signed: bool
) -> Response:
    """A variant of ``row``, rendered now if it is not stored yet; served like a static file."""
    if row.content_type not in SOURCE_TYPES:
        raise NotAnImage()
    resources: Resources = scope["app"].state.resources
    renderer = resources.variants
    accept = None
    if wanted.format == "auto":
        lines = [value.decode("latin-1") for name, value in scope["headers"] if name == b"accept"]
        accept = ", ".join(lines)
    spec, varies = settle(wanted, row.content_type, accept, renderer.encodable)
    stored = await renderer.get(row.storage_key, row.content_type, spec, row.size)
    representation = Representation(
        stored.size, stored.content_type, stored.sha256, stored.rendered_at
    )
    cache_control = PUBLIC_CACHE_CONTROL if public and not signed else PRIVATE_CACHE_CONTROL
    vary = [("vary", "Accept")] if varies else []
    method = scope["method"]
    selection = select(method, Conditions.from_raw(scope["headers"]), representation)
    if selection.status == 304:
        return StoredFileResponse(304, [*validator_headers(representation, cache_control), *vary])
    headers = [
        # A variant is always a raster image, AVIF included: shown inline.
        (name, "inline;" + value.partition(";")[2])
        if name == "content-disposition"
        else (name, value)
        for name, value in representation_headers(
            representation,
            filename=variant_filename(row.filename, spec),
            cache_control=cache_control,
        )
    ]
    headers.extend(vary)
    opener = range_opener(resources.storage, stored)
    return await _ranged(method, selection, representation, headers, opener)


async def _ranged(
    method: str,
    selection: Selection,
    representation: Representation,
    headers: list[tuple[str, str]],
    open_range: Callable[[int, int], Awaitable[AsyncIterator[bytes]]],
) -> Response:
    """The 200 or 206 answer of a selection: one range as it is, several as multipart."""
    ranges = selection.ranges
    if len(ranges) == 1:
        [byte_range] = ranges
        if selection.status == 206:
            headers.append(("content-range", byte_range.content_range(representation.size)))
        headers.append(("content-type", representation.content_type))
        body = None
        if method != "HEAD" and byte_range.length:
            body = await open_range(byte_range.start, byte_range.length)
        return StoredFileResponse(
            selection.status, headers, body=body, content_length=byte_range.length
        )
    multipart = Multipart.build(ranges, representation.size, representation.content_type)
    headers.append(("content-type", multipart.content_type))
    first = await open_range(ranges[0].start, ranges[0].length)
    chunks = multipart_chunks(open_range, ranges, multipart, first=first)
    return StoredFileResponse(206, headers, body=chunks, content_length=multipart.content_length)


class StaticQuery(NamedTuple):
    """A static URL's query, as :func:`respond` takes it."""

    expires: str | None
    signature: str | None
    variant: VariantQuery | None


def _static_query(
    expires: ExpiresQuery = None,
    signature: SignatureQuery = None,
    variant: VariantQueryParam = None,
    w: SideQuery = None,
    h: SideQuery = None,
    fit: FitQuery = None,
    format: FormatQuery = None,
    q: QualityQuery = None,
) -> StaticQuery:
    """The query parameters both static URLs take, declared once for FastAPI and OpenAPI."""
    given = dict(zip(QUERY_NAMES, (variant, w, h, fit, format, q), strict=True))
    wanted = parse_query({name: value for name, value in given.items() if value is not None})
    return StaticQuery(expires, signature, wanted)


StaticQueryDep = Annotated[StaticQuery, Depends(_static_query)]


# Decorators apply bottom-up: GET, the common case, is registered (and tried) first.
@router.head(
    "/files/{file_id}/{name:path}", summary="A stored file's headers, by a readable URL", **_ROUTE
)
@router.get("/files/{file_id}/{name:path}", summary="A stored file, by a readable URL", **_ROUTE)
async def serve_named_file(
    request: Request, file_id: str, name: str, query: StaticQueryDep
) -> Response:
    """``name`` is only for people and tools that save by URL; it is never looked up."""
    return await respond(request.scope, file_id, *query)


@router.head("/files/{file_id}", summary="A stored file's headers", **_ROUTE)
@router.get("/files/{file_id}", summary="A stored file", **_ROUTE)
async def serve_file(request: Request, file_id: str, query: StaticQueryDep) -> Response:
    return await respond(request.scope, file_id, *query)
