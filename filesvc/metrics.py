"""Prometheus metrics: what they are, and how they are collected.

Each app gets its own :class:`Metrics` on its own registry (held by the app's ``Resources``),
so that many apps in one process (the tests) never collide and each starts at
zero. Under ``filesvc serve --workers N`` every worker writes its values to
files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode,
chosen by that variable when prometheus-client is first imported) and
``/metrics`` adds up the files of all workers, whichever worker answers.

Labels stay bounded: routes are templates (``/api/v1/files/{file_id}``), never
raw paths; methods outside the usual few are ``other``; datasets are the
configured ones.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

#: Environment variable that switches prometheus-client to multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Request latency buckets, seconds: API calls in milliseconds, uploads and exports in minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Methods kept as label values; any other is counted as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The multiprocess directory in force, or None when this process counts alone."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The service's metrics, registered on a registry of their own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()

        def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, documentation, labels, registry=registry)

        def live_gauge(name: str, documentation: str) -> Gauge:
            # Added up over the live workers: a worker's share goes when it exits.
            return Gauge(name, documentation, multiprocess_mode="livesum", registry=registry)

        self.requests = counter(
            "filesvc_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
        )
        self.request_duration = Histogram(
            "filesvc_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response body.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.served_bytes = counter(
            "filesvc_served_bytes",
            "Response body bytes sent (files, exports, API answers), by route template.",
            ["route"],
        )
        self.uploaded_bytes = counter(
            "filesvc_uploaded_bytes",
            "Request body bytes received by the upload routes, refused uploads included.",
        )
        self.upload_refusals = counter(
            "filesvc_upload_refusals",
            "Uploads answered with an error, by the error's code.",
            ["reason"],
        )
        self.uploads_in_progress = live_gauge(
            "filesvc_uploads_in_progress", "Upload requests being received right now."
        )
        self.resumable_uploads = Gauge(
            "filesvc_resumable_uploads",
            "Resumable (tus) uploads begun and not yet complete, expired or terminated, "
            "as last counted in the database by any worker.",
            multiprocess_mode="mostrecent",
            registry=registry,
        )
        self.resumable_requests_in_progress = live_gauge(
            "filesvc_resumable_requests_in_progress",
            "Resumable (tus) upload requests receiving bytes right now.",
        )
        self.exports_in_progress = live_gauge(
            "filesvc_exports_in_progress", "CSV exports being streamed right now."
        )
        self.decode_bytes_in_use = live_gauge(
            "filesvc_image_decode_bytes_in_use",
            "Bytes of the image-decoding memory budget reserved right now.",
        )
        self.export_slots_in_use = live_gauge(
            "filesvc_export_slots_in_use",
            "Export slots held (an export holds one, with its database connection, from "
            "connecting to its last byte); FILESVC_MAX_CONCURRENT_EXPORTS per process.",
        )
        self.export_slots = live_gauge(
            "filesvc_export_slots",
            "Export slots there are (FILESVC_MAX_CONCURRENT_EXPORTS per process).",
        )
        self.export_rows = counter(
            "filesvc_export_rows", "Rows written into CSV exports, by dataset.", ["dataset"]
        )
        self.export_bytes = counter(
            "filesvc_export_bytes",
            "CSV bytes sent by exports (gzipped when the client accepts it), by dataset.",
            ["dataset"],
        )
        self.variant_renders = counter(
            "filesvc_variant_renders",
            "Image variants rendered and stored (not those served from storage), by format.",
            ["format"],
        )
        if multiprocess_dir() is None:
            # Per-process facts mean nothing once added up over workers.
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

    def count_export(self, dataset: str, rows: int, nbytes: int) -> None:
        """Record a batch of an export as it streams: call once per chunk written."""
        self.export_rows.labels(dataset=dataset).inc(rows)
        self.export_bytes.labels(dataset=dataset).inc(nbytes)

    @contextlib.contextmanager
    def in_progress(self, gauge: Gauge | None) -> Iterator[None]:
        if gauge is None:
            yield
            return
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type, in the format the scraper accepts.

        Blocking (multiprocess mode reads every worker's files): run it in a thread.
        """
        encoder, content_type = choose_encoder(accept or "")
        path = multiprocess_dir()
        if path is None:
            return encoder(self.registry), content_type
        sweep_dead_processes(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        return encoder(registry), content_type


def prepare_multiprocess_dir(path: Path) -> None:
    """Create ``path`` and remove the value files an earlier run left in it."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def remove_multiprocess_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def release_process() -> None:
    """At a worker's exit: its in-progress gauges stop counting towards the total."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


def sweep_dead_processes(path: str) -> None:
    """Drop the live gauges of workers that died without :func:`release_process` (a crash)."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.match(os.path.basename(name))
        if match is not None and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
