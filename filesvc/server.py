"""``filesvc serve``: uvicorn with JSON logs, and workers that share their metrics.

With ``--workers N`` (N > 1) the parent process first starts and stops the app
once (:func:`preflight`): migrations run once instead of racing in N workers,
and a start-up failure (bad database URL, unwritable data directory) ends the
command with one line instead of N workers failing. It also points
``PROMETHEUS_MULTIPROC_DIR`` at a clean directory before the workers start, so
that ``/metrics`` adds up every worker's values.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import math
import os
import tempfile
from pathlib import Path

from filesvc.config import Settings
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


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    reload: bool = False,
    log_level: str | None = None,
    graceful_timeout: float = 30.0,
) -> None:
    """Serve until stopped; :class:`StartupFailed` when the app cannot start."""
    import uvicorn

    level = log_level or settings.log_level
    log_config = logging_config(level)
    logging.config.dictConfig(log_config)
    logging.captureWarnings(True)
    if workers > 1 and not reload:
        preflight(settings)
    owned_dir = _set_up_multiprocess_metrics(workers > 1 and not reload)
    try:
        uvicorn.run(
            APP_IMPORT_STRING,
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
        )
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
