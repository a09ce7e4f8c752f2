"""Liveness and readiness.

``/healthz`` answers from memory: the process is up and its event loop turns.
``/readyz`` asks the database and the storage (:mod:`filesvc.readiness`) and
answers 503 naming what failed.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from filesvc.deps import ResourcesDep
from filesvc.errors import RETRY_AFTER_SECONDS, error_body
from filesvc.readiness import readiness

router = APIRouter(tags=["operations"])

_NO_STORE = {"Cache-Control": "no-store"}


@router.get("/healthz", summary="The process is alive", response_model=None)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"}, headers=_NO_STORE)


@router.get(
    "/readyz",
    summary="Database and storage are reachable",
    response_model=None,
    responses={503: {"description": "Not ready: `details.checks` names what failed."}},
)
async def readyz(resources: ResourcesDep) -> JSONResponse:
    checks, failed = await readiness(resources.engine, resources.storage, resources.settings)
    if failed:
        body = error_body(
            "not_ready", f"Unavailable: {', '.join(failed)}.", details={"checks": checks}
        )
        headers = {**_NO_STORE, "Retry-After": str(RETRY_AFTER_SECONDS)}
        return JSONResponse(body, status_code=503, headers=headers)
    return JSONResponse({"status": "ok", "checks": checks}, headers=_NO_STORE)
