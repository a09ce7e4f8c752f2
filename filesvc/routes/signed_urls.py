"""``POST /api/v1/files/{id}/signed-url``: a time-limited static URL for any file."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from filesvc import crud
from filesvc.auth import require
from filesvc.deps import ResourcesDep, SessionDep
from filesvc.routes.files import file_url
from filesvc.schemas import SignedUrl, error_responses
from filesvc.signing import MAX_SIGNED_SECONDS, signature

router = APIRouter(prefix="/files", tags=["files"])

#: Default lifetime of a signed URL, in seconds.
DEFAULT_SIGNED_URL_SECONDS = 3600


@router.post(
    "/{file_id}/signed-url",
    response_model=SignedUrl,
    summary="A signed, expiring static URL",
    description="The file's static URL with `expires` and an HMAC-SHA256 `signature` over the "
    "id and the expiry. Private files are only served through such URLs; public ones accept "
    "them too. Absolute when `FILESVC_PUBLIC_BASE_URL` is set.",
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
) -> SignedUrl:
    row = await crud.get_file(session, file_id)
    # Rounded up: the URL lives at least as long as asked.
    expires = math.ceil(time.time()) + expires_in
    token = signature(resources.signing_key, row.id, expires)
    url = f"{file_url(resources.settings, row)}?expires={expires}&signature={token}"
    return SignedUrl(url=url, expires_at=datetime.fromtimestamp(expires, UTC))
