"""The ``filesvc`` command line.

Exit codes: 0 success, 1 the command ran and failed (e.g. the database is
unreachable), 2 bad usage or an invalid setting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from filesvc.config import Settings, describe_error
from filesvc.exitcodes import EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK, EXIT_USAGE, report_failure


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535)")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def load_settings() -> Settings:
    """Settings from the environment, or one line naming the bad variable and exit 2."""
    try:
        return Settings()
    except ValidationError as exc:
        print(f"filesvc: {describe_error(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def embedded_database_path(settings: Settings) -> Path | None:
    """The SQLite file the settings name, or None for PostgreSQL and in-memory databases."""
    from sqlalchemy.engine import make_url

    if not settings.is_sqlite:
        return None
    database = make_url(settings.effective_database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def require_database(settings: Settings) -> None:
    """Exit 1 with one line when the SQLite file the settings name does not exist.

    Opening it would create an empty database (and its directory): run where
    no settings are, ``filesvc check`` would report on a fresh ./data/filesvc.db
    instead of saying that it found nothing. Only ``serve`` and ``migrate``
    create the embedded database.
    """
    path = embedded_database_path(settings)
    if path is not None and not path.exists():
        print(
            f"filesvc: no database at {path} (set FILESVC_DATABASE_URL or FILESVC_DATA_DIR; "
            "`filesvc migrate` creates the embedded one)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_FAILED)


def _serve(args: argparse.Namespace) -> int:
    from filesvc.server import ConnectionLimits, StartupFailed, serve

    if args.h11_max_incomplete_event_size is not None and args.http != "h11":
        print("filesvc: --h11-max-incomplete-event-size needs --http h11", file=sys.stderr)
        return EXIT_USAGE
    settings = load_settings()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so the
    # default action would kill the process (exit -15). A finished graceful
    # shutdown is a success for supervisors and orchestrators: exit 0 instead.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        serve(
            settings,
            host=args.host,
            port=args.port,
            workers=args.workers,
            reload=args.reload,
            log_level=args.log_level,
            graceful_timeout=args.graceful_timeout,
            limits=ConnectionLimits(
                limit_concurrency=args.limit_concurrency,
                limit_max_requests=args.limit_max_requests,
                backlog=args.backlog,
                timeout_keep_alive=args.timeout_keep_alive,
                http=args.http,
                h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
            ),
        )
    except StartupFailed as exc:
        logging.getLogger("filesvc").error("start-up failed: %s", exc)  # JSON, like every line
        return EXIT_FAILED
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    from filesvc.db import create_engine, current_revision, head_revision, migrate

    settings = load_settings()
    if args.check:
        require_database(settings)
    path = embedded_database_path(settings)
    creating = path is not None and not path.exists()

    async def run() -> int:
        engine = create_engine(settings)
        try:
            if creating:
                print(f"created {path}")
            if args.check:
                current = await current_revision(engine)
                head = head_revision()
                print(f"database at {current or 'empty'}, code at {head}")
                return EXIT_OK if current == head else EXIT_FAILED
            await migrate(engine, args.revision)
            print(f"database migrated to {await current_revision(engine)}")
            return EXIT_OK
        finally:
            await engine.dispose()

    return _run(run)


def _check(args: argparse.Namespace) -> int:
    from filesvc.consistency import check
    from filesvc.db import create_engine, create_session_factory
    from filesvc.storage import create_storage
    from filesvc.storage.resumable_stores import create_resumable_store

    settings = load_settings()
    require_database(settings)
    grace = settings.incomplete_upload_grace if args.grace is None else args.grace

    async def run() -> int:
        engine = create_engine(settings)
        storage = create_storage(settings)
        try:
            report = await check(
                create_session_factory(engine),
                storage,
                grace_seconds=grace,
                fix=args.fix,
                resumable=create_resumable_store(settings, storage),
            )
        finally:
            await storage.aclose()
            await engine.dispose()
        print(
            f"checked {report.rows_checked} rows and {report.objects_checked} stored objects: "
            f"{len(report.rows_without_bytes)} rows without bytes, "
            f"{len(report.bytes_without_row)} unrecorded objects older than {grace:g}s"
            + (
                f" ({report.young_unrecorded} younger left alone)"
                if report.young_unrecorded
                else ""
            )
        )
        for file_id in report.rows_without_bytes:
            print(f"row without bytes: {file_id}")
        for key in report.bytes_without_row:
            print(f"bytes without row: {key}")
        print(
            f"{report.unfinished_uploads} resumable uploads unfinished, "
            f"{len(report.expired_uploads)} expired"
        )
        for upload_id in report.expired_uploads:
            print(f"expired upload: {upload_id}")
        print(
            f"{len(report.unfinished_writes)} unfinished uploads older than {grace:g}s"
            + (
                f" ({report.young_unfinished} younger left alone)"
                if report.young_unfinished
                else ""
            )
        )
        for write in report.unfinished_writes:
            print(f"unfinished upload: {write.key} ({write.handle})")
        if args.fix:
            print(f"fixed {report.fixed}")
            return EXIT_OK
        return EXIT_OK if report.clean else EXIT_FAILED

    return _run(run)


def _run(command: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command's coroutine; a database or storage failure is one line and exit 1."""
    try:
        return asyncio.run(command())
    except Exception as exc:
        code = report_failure(exc, os_error="database unreachable")
        if code is None:
            raise
        return code


def _export(args: argparse.Namespace) -> int:
    from filesvc.exports.command import run

    settings = load_settings()
    require_database(settings)
    return run(settings, args)


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand that runs ``handler``, its help ending in the exit codes as the top level's."""
    command = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(handler=handler)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filesvc",
        description="File upload and CSV export service. Settings come from FILESVC_* "
        "environment variables (see the README).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _add_command(
        commands,
        "serve",
        _serve,
        help="run the HTTP service",
        description="Run the HTTP service under uvicorn. Logs are JSON lines on stderr; "
        "with --workers N, /metrics adds up all workers (PROMETHEUS_MULTIPROC_DIR, "
        "a temporary directory unless set).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=_positive, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="override FILESVC_LOG_LEVEL",
    )
    serve.add_argument(
        "--reload", action="store_true", help="restart on code changes (development)"
    )
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on SIGTERM (default 30); "
        "requests still running then are answered 503",
    )
    limits = serve.add_argument_group(
        "connection limits (uvicorn's; see the README's Reliability section)"
    )
    limits.add_argument(
        "--limit-concurrency",
        type=_positive,
        help="connections at once per worker; beyond it new requests get 503 (default: no limit)",
    )
    limits.add_argument(
        "--limit-max-requests",
        type=_positive,
        help="requests a worker serves before it is replaced (default: no limit)",
    )
    limits.add_argument(
        "--backlog", type=_positive, default=2048, help="pending connections queued (default 2048)"
    )
    limits.add_argument(
        "--timeout-keep-alive",
        type=_positive,
        default=5,
        help="seconds an idle keep-alive connection stays open (default 5)",
    )
    limits.add_argument(
        "--http",
        choices=["auto", "httptools", "h11"],
        default="auto",
        help="HTTP/1.1 parser (default auto: httptools); h11 can bound the request head",
    )
    limits.add_argument(
        "--h11-max-incomplete-event-size",
        type=_positive,
        help="with --http h11: most bytes of request line and headers buffered (h11's "
        "default 16 KiB)",
    )

    migrate = _add_command(
        commands,
        "migrate",
        _migrate,
        help="create or upgrade the database schema (needed for PostgreSQL)",
        description="Bring the database schema to a revision (default: the newest). "
        "With --check, change nothing: exit 0 when the schema is current, 1 when not.",
    )
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.add_argument(
        "--check", action="store_true", help="exit 1 unless the schema is up to date"
    )

    check = _add_command(
        commands,
        "check",
        _check,
        help="find rows without bytes, bytes without rows and unfinished uploads left by a "
        "crash; exit 1 if any (0 with --fix)",
    )
    check.add_argument(
        "--fix",
        action="store_true",
        help="delete the rows and the bytes found, and abort the unfinished uploads",
    )
    check.add_argument(
        "--grace",
        type=float,
        help="seconds an unrecorded object must be old to count (default "
        "FILESVC_INCOMPLETE_UPLOAD_GRACE); younger ones may be uploads in progress",
    )

    export = _add_command(
        commands,
        "export",
        _export,
        help="write a dataset as CSV, as GET /api/v1/exports/NAME.csv does",
        description="Write dataset NAME (files, or a table in FILESVC_EXPORT_TABLES) as CSV. "
        "The options are the route's query parameters, e.g. "
        "filesvc export files --columns id,size --order-by=-size --filter size__gt=1000 -o big.csv",
    )
    export.add_argument("name", metavar="NAME", help="the dataset")
    export.add_argument("-o", "--output", default="-", help="file to write (default -: stdout)")
    export.add_argument("--columns", help="columns in this order, comma-separated")
    export.add_argument(
        "--order-by", help="column to sort by; write --order-by=-COL for descending"
    )
    export.add_argument(
        "--filter",
        action="append",
        metavar="COL[__OP]=VALUE",
        help="keep rows where it holds (repeatable); OP: eq ne gt gte lt lte in isnull",
    )
    export.add_argument("--limit", type=int, help="most rows to write")
    export.add_argument(
        "--format",
        choices=["csv", "parquet"],
        default="csv",
        help="csv (default) or parquet (typed columns, as GET /api/v1/exports/NAME.parquet)",
    )
    export.add_argument("--bom", action="store_true", help="start with a UTF-8 BOM (Excel)")
    export.add_argument("--delimiter", choices=["comma", "semicolon", "tab"])
    export.add_argument(
        "--no-header", dest="header", action="store_false", help="leave out the header row"
    )
    export.add_argument(
        "--no-formula-escape",
        dest="formula_escape",
        action="store_false",
        help="do not prefix ' to text cells that begin with = + - @ tab or CR",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
