"""The ``filesvc`` command line.

Exit codes: 0 success, 1 the command ran and failed (e.g. the database is
unreachable), 2 bad usage or an invalid setting.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from filesvc.config import Settings, describe_error

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def load_settings() -> Settings:
    """Settings from the environment, or one line naming the bad variable and exit 2."""
    try:
        return Settings()
    except ValidationError as exc:
        print(f"filesvc: {describe_error(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings()
    uvicorn.run(
        "filesvc.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        reload=args.reload,
        log_level=args.log_level or settings.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        proxy_headers=True,
        server_header=False,
    )
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    from filesvc.db import create_engine, current_revision, head_revision, migrate

    settings = load_settings()

    async def run() -> int:
        engine = create_engine(settings)
        try:
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

    try:
        return asyncio.run(run())
    except (OSError, ConnectionError) as exc:
        print(f"filesvc: database unreachable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):
            print(f"filesvc: database error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filesvc",
        description="File upload and CSV export service. Settings come from FILESVC_* "
        "environment variables (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
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
        help="seconds in-flight requests get to finish on SIGTERM (default 30)",
    )
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser(
        "migrate", help="create or upgrade the database schema (needed for PostgreSQL)"
    )
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.add_argument(
        "--check", action="store_true", help="exit 1 unless the schema is up to date"
    )
    migrate.set_defaults(handler=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
