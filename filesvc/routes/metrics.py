"""``GET /metrics``: Prometheus exposition of :mod:`filesvc.metrics`."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request, Response

from filesvc.deps import ResourcesDep

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Text exposition format (OpenMetrics when the scraper asks for it). "
    "Under several workers, the values of all workers added up.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(request: Request, resources: ResourcesDep) -> Response:
    body, content_type = await anyio.to_thread.run_sync(
        resources.metrics.render, request.headers.get("accept")
    )
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})
