"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from filesvc.deps import ResourcesDep
from filesvc.errors import RETRY_AFTER_SECONDS, error_body

router = APIRouter(tags=["operations"])

#: Seconds each readiness probe may take.
READY_TIMEOUT = 2.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database and storage are reachable", response_model=None)
async def readyz(resources: ResourcesDep) -> dict[str, Any] | JSONResponse:
    checks: dict[str, str] = {}

    async def database() -> None:
        async with resources.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    for name, probe in (("database", database), ("storage", resources.storage.check)):
        try:
            with anyio.fail_after(READY_TIMEOUT):
                await probe()
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready; say which
            checks[name] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
    failed = [name for name, state in checks.items() if state != "ok"]
    if failed:
        body = error_body(
            "not_ready", f"Unavailable: {', '.join(failed)}.", details={"checks": checks}
        )
        return JSONResponse(
            body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    return {"status": "ok", "checks": checks}
