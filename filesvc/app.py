"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from filesvc import __version__, auth
from filesvc.config import Settings
from filesvc.db import create_engine, create_session_factory, migrate_if_behind
from filesvc.decoding import DecodeBudget
from filesvc.deps import Resources
from filesvc.exports import Exporter
from filesvc.handlers import install_error_handlers
from filesvc.head import install_head
from filesvc.keys import KeyRing
from filesvc.lookup import create_lookup
from filesvc.metrics import Metrics, release_process
from filesvc.middleware import RequestMiddleware
from filesvc.origins import install_origins
from filesvc.pipeline import UploadPipeline
from filesvc.resumable import Uploads, open_uploads
from filesvc.routes import exports, files, health, signed_urls, uploads
from filesvc.routes import metrics as metrics_routes
from filesvc.routes import static as static_urls
from filesvc.signing import load_signing_key
from filesvc.storage import Storage, create_storage
from filesvc.variants_store import VariantRenderer

logger = logging.getLogger("filesvc")


class _RevalidatedStaticFiles(StaticFiles):
    """The page's assets, revalidated on every load so an upgrade is seen at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def static_dir() -> Path:
    """The web page: ``static/`` of a checkout, or the copy packaged into the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "static", here / "static"):
        if (candidate / "index.html").is_file():
            return candidate
    return here.parent / "static"


def _lifespan(
    settings: Settings, metrics: Metrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """The one owner of every long-lived object: built here, closed here."""
        auth.warn_if_open(settings)
        async with AsyncExitStack() as stack:
            engine = create_engine(settings)
            stack.push_async_callback(engine.dispose)
            storage = create_storage(settings)
            stack.push_async_callback(storage.aclose)
            stack.callback(release_process)
            if settings.should_auto_migrate:
                await migrate_if_behind(engine)
            await _sweep(storage, settings)
            sessions = create_session_factory(engine)
            lookup = create_lookup(settings, engine)
            stack.push_async_callback(lookup.aclose)
            decode_budget = DecodeBudget(
                settings.image_decode_budget_bytes,
                settings.image_decode_wait,
                on_change=metrics.decode_bytes_in_use.set,
            )
            resumable = open_uploads(settings, sessions, storage, decode_budget)
            await _sweep_expired_uploads(resumable)
            app.state.resources = Resources(
                settings=settings,
                engine=engine,
                sessions=sessions,
                storage=storage,
                signing_key=load_signing_key(settings),
                keyring=KeyRing.from_settings(settings),
                metrics=metrics,
                lookup=lookup,
                uploads=UploadPipeline(settings, storage, sessions, decode_budget),
                decode_budget=decode_budget,
                variants=VariantRenderer(
                    storage,
                    decode_budget,
                    max_pixels=settings.max_image_pixels,
                    on_render=lambda spec: metrics.variant_renders.labels(format=spec.format).inc(),
                ),
                resumable=resumable,
                exporter=Exporter(settings, metrics),
            )
            yield

    return lifespan


async def _sweep(storage: Storage, settings: Settings) -> None:
    try:
        swept = await storage.sweep_incomplete(settings.incomplete_upload_grace)
        if swept:
            logger.info("swept %d unfinished uploads left by an earlier run", swept)
    except Exception as exc:  # storage may be down at start-up; serve 503s meanwhile
        logger.warning("could not sweep unfinished uploads: %s", exc)


async def _sweep_expired_uploads(resumable: Uploads) -> None:
    # Also swept when met (410) and by each creation: no process has to stay up for it.
    try:
        swept = await resumable.sweep_expired()
        if swept:
            logger.info("swept %d expired resumable uploads", swept)
    except Exception as exc:  # the database or storage may be down at start-up
        logger.warning("could not sweep expired resumable uploads: %s", exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(
        title="filesvc",
        version=__version__,
        summary="File uploads to local disk or S3, stable static URLs, streamed CSV exports.",
        lifespan=_lifespan(settings, metrics),
    )
    install_error_handlers(app)
    # Every /api route goes into this router: it needs a key and a declared scope.
    # Static URLs are the hottest routes, and routes are tried in order.
    app.include_router(static_urls.router)
    api = auth.api_router()
    api.include_router(files.router)
    api.include_router(signed_urls.router)
    api.include_router(exports.router)
    api.include_router(uploads.router)
    app.include_router(api)
    app.include_router(health.router)
    app.include_router(metrics_routes.router)

    assets = _RevalidatedStaticFiles(directory=static_dir(), check_dir=False)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        # Served as its assets are, so that it answers If-None-Match and
        # If-Modified-Since with 304 like them.
        return await assets.get_response("index.html", request.scope)

    app.mount("/static", assets, name="static")
    install_head(app)
    install_origins(app, settings)
    auth.check_routes(app)
    # Added last, so outermost: request id, access log and metrics cover every answer.
    app.add_middleware(
        RequestMiddleware, router=app.router, metrics=metrics, send_timeout=settings.send_timeout
    )
    return app
