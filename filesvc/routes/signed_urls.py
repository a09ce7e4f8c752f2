"""``POST /api/v1/files/{id}/signed-url``: a time-limited static URL for any file."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query

from filesvc import crud
from filesvc.auth import require
from filesvc.deps import ResourcesDep, SessionDep
from filesvc.routes.files import file_url
from filesvc.schemas import SignedUrl, error_responses
from filesvc.signing import MAX_SIGNED_SECONDS, signature
from filesvc.variants import QUERY_NAMES, parse_query, resolve

router = APIRouter(prefix="/files", tags=["files"])

#: Default lifetime of a signed URL, in seconds.
DEFAULT_SIGNED_URL_SECONDS = 3600


@router.post(
    "/{file_id}/signed-url",
    response_model=SignedUrl,
    summary="A signed, expiring static URL",
    description="The file's static URL with `expires` and an HMAC-SHA256 `signature` over the "
    "id and the expiry. Private files are only served through such URLs; public ones accept "
    "them too. Absolute when `FILESVC_PUBLIC_BASE_URL` is set. With image variant parameters "
    "(`variant`, `w`, `h`, `fit`, `format`, `q`, as on static URLs) the URL serves that variant "
    "and the signature covers them: the only way to serve sizes that are not presets.",
    responses=error_responses(400, 401, 403, 404, 503),
    dependencies=[require("files:read")],
)
async def create_signed_url(
    file_id: str,
    session: SessionDep,
    resources: ResourcesDep,
    expires_in: Annotated[
        int,
        Query(ge=1, le=MAX_SIGNED_SECONDS, description="Lifetime of the URL, in seconds."),
    ] = DEFAULT_SIGNED_URL_SECONDS,
    variant: Annotated[str | None, Query(description="An image variant preset.")] = None,
    w: Annotated[str | None, Query(description="Variant width, pixels (1-4096).")] = None,
    h: Annotated[str | None, Query(description="Variant height, pixels (1-4096).")] = None,
    fit: Annotated[str | None, Query(description="`cover`, `contain` or `inside`.")] = None,
    format: Annotated[
        str | None, Query(description="`webp`, `avif`, `jpeg`, `png` or `auto`.")
    ] = None,
    q: Annotated[str | None, Query(description="Variant quality, 1-100.")] = None,
) -> SignedUrl:
    given = dict(zip(QUERY_NAMES, (variant, w, h, fit, format, q), strict=True))
    query = parse_query({name: value for name, value in given.items() if value is not None})
    if query is not None:
        resolve(query, resources.settings.image_presets)  # 404 or 400 now, not when fetched
    row = await crud.get_file(session, file_id)
    # Rounded up: the URL lives at least as long as asked.
    expires = math.ceil(time.time()) + expires_in
    canonical = query.canonical() if query is not None else ""
    token = signature(resources.signing_key, row.id, expires, canonical)
    params = [
        (name, str(getattr(query, name)))
        for name in QUERY_NAMES
        if query is not None and getattr(query, name) is not None
    ]
    params += [("expires", str(expires)), ("signature", token)]
    url = f"{file_url(resources.settings, row)}?{urlencode(params)}"
    return SignedUrl(url=url, expires_at=datetime.fromtimestamp(expires, UTC))
