"""``filesvc serve``: uvicorn with JSON logs, and workers that share their metrics.

With ``--workers N`` (N > 1) the parent process first starts and stops the app
once (:func:`preflight`): migrations run once instead of racing in N workers,
and a start-up failure (bad database URL, unwritable data directory) ends the
command with one line instead of N workers failing. With one worker, a due
migration runs in a child process instead (:func:`migrate_apart`). It also points
``PROMETHEUS_MULTIPROC_DIR`` at a clean directory before the workers start, so
that ``/metrics`` adds up every worker's values. After that check a worker
can still fail to start (the database went away meanwhile): uvicorn then
stops every worker and returns as if asked to stop; :func:`serve` raises
:class:`WorkerFailed` instead, so the command does not exit 0.

uvicorn's connection limits (:class:`ConnectionLimits`) are passed through
from ``filesvc serve``'s options. uvicorn bounds neither the size nor the
arrival time of request headers (``httptools`` has no limit; ``h11`` has
``--h11-max-incomplete-event-size``): the README says which reverse-proxy
settings close that.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filesvc.config import Settings
from filesvc.httpprotocol import BoundedHttpToolsProtocol
from filesvc.logs import logging_config, redact
from filesvc.metrics import (
    MULTIPROC_ENV,
    multiprocess_dir,
    prepare_multiprocess_dir,
    remove_multiprocess_dir,
)

logger = logging.getLogger("filesvc")

#: What uvicorn imports in each worker.
APP_IMPORT_STRING = "filesvc.main:app"
#: uvicorn's exit status when the app failed to start.
UVICORN_STARTUP_FAILURE = 3


class StartupFailed(Exception):
    """The service could not start; the message says why, in one line."""


class WorkerFailed(StartupFailed):
    """A worker failed to start after the start-up check, and uvicorn stopped them all."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """uvicorn's own bounds on connections, as ``filesvc serve`` options set them."""

    #: Connections (and tasks) at once per worker before new requests get 503; None: no limit.
    limit_concurrency: int | None = None
    #: Requests a worker serves before it is replaced (bounds slow leaks); None: no limit.
    limit_max_requests: int | None = None
    #: Connections the kernel queues before accepting them.
    backlog: int = 2048
    #: Seconds an idle keep-alive connection is kept open.
    timeout_keep_alive: int = 5
    #: HTTP/1.1 parser: ``h11`` can bound a request's head, ``httptools`` is faster.
    http: Literal["auto", "httptools", "h11"] = "auto"
    #: With ``h11``: most bytes of a request head (request line and headers) buffered.
    h11_max_incomplete_event_size: int | None = None


def preflight(settings: Settings) -> None:
    """Run the app's start-up and shutdown once, in this process."""
    from filesvc.app import create_app

    app = create_app(settings)

    async def cycle() -> None:
        async with app.router.lifespan_context(app):
            pass

    try:
        asyncio.run(cycle())
    except Exception as exc:
        raise StartupFailed(redact(f"{type(exc).__name__}: {exc}".splitlines()[0])) from exc


def migrate_apart(settings: Settings) -> None:
    """Start-up's migration, when one is due, in a child process (``filesvc migrate``).

    alembic's modules stay in a process's memory once imported; run apart, the
    serving process finds the schema at the head and never imports them.
    """
    from filesvc.db import HEAD_REVISION, create_engine, current_revision

    if not settings.should_auto_migrate:
        return

    async def revision() -> str | None:
        engine = create_engine(settings)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    try:
        if asyncio.run(revision()) == HEAD_REVISION:
            return
    except Exception as exc:
        raise StartupFailed(redact(f"{type(exc).__name__}: {exc}".splitlines()[0])) from exc
    child = subprocess.run(
        [sys.executable, "-m", "filesvc", "migrate"],
        env={**os.environ, "FILESVC_DATABASE_URL": settings.effective_database_url},
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        said = child.stderr.strip().splitlines() or [f"exit status {child.returncode}"]
        raise StartupFailed(redact(f"migration failed: {said[-1]}"))


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    reload: bool = False,
    log_level: str | None = None,
    graceful_timeout: float = 30.0,
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve until stopped; :class:`StartupFailed` when the app cannot start."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    limits = limits or ConnectionLimits()
    BoundedHttpToolsProtocol.configure(settings)

    level = log_level or settings.log_level
    log_config = logging_config(level)
    logging.config.dictConfig(log_config)
    logging.captureWarnings(True)
    if workers > 1 and not reload:
        preflight(settings)
    else:
        migrate_apart(settings)
    owned_dir = _set_up_multiprocess_metrics(workers > 1 and not reload)
    options = dict(
        host=host,
        port=port,
        workers=workers,
        reload=reload,
        # The code, wherever it is installed; not the current directory.
        reload_dirs=[str(Path(__file__).resolve().parent)] if reload else None,
        log_level=level,
        log_config=log_config,
        # The request middleware writes the access line, with route and request id.
        access_log=False,
        timeout_graceful_shutdown=math.ceil(graceful_timeout),
        proxy_headers=True,
        server_header=False,
        limit_concurrency=limits.limit_concurrency,
        limit_max_requests=limits.limit_max_requests,
        backlog=limits.backlog,
        timeout_keep_alive=limits.timeout_keep_alive,
        # httptools with the request head bounded (filesvc.httpprotocol); h11 bounds its own.
        http=BoundedHttpToolsProtocol if limits.http != "h11" else "h11",
        h11_max_incomplete_event_size=limits.h11_max_incomplete_event_size,
    )
    try:
        if workers > 1 and not reload:
            # uvicorn.run's own branch for workers, keeping the supervisor to
            # ask afterwards why it stopped.
            config = uvicorn.Config(APP_IMPORT_STRING, **options)  # type: ignore[arg-type]
            supervisor = Multiprocess(config, sockets=[config.bind_socket()])
            supervisor.run()
            failed = [p for p in supervisor.processes if p.exitcode == UVICORN_STARTUP_FAILURE]
            if failed:
                raise WorkerFailed(
                    f"{len(failed)} worker(s) failed to start after the start-up check "
                    "(see the log above); all workers were stopped"
                )
        else:
            uvicorn.run(APP_IMPORT_STRING, **options)  # type: ignore[arg-type]
    except SystemExit as exc:
        if exc.code == UVICORN_STARTUP_FAILURE:
            raise StartupFailed("the application failed to start (see the log above)") from None
        raise
    finally:
        if owned_dir is not None:
            remove_multiprocess_dir(owned_dir)


def _set_up_multiprocess_metrics(several_workers: bool) -> Path | None:
    """A clean ``PROMETHEUS_MULTIPROC_DIR`` when needed; returns it if made here."""
    given = multiprocess_dir()
    if given is None and not several_workers:
        return None
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="filesvc-metrics-"))
    prepare_multiprocess_dir(path)
    os.environ[MULTIPROC_ENV] = str(path)  # inherited by the workers uvicorn spawns
    return None if given else path
