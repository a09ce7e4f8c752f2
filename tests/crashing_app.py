"""An ASGI app whose start-up always fails: the worker that dies after `serve`'s own check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    raise RuntimeError("this worker cannot start")
    yield  # pragma: no cover - never reached


app = Starlette(lifespan=_lifespan)
