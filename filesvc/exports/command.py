"""``filesvc export NAME``: a dataset as CSV (or ``--format parquet``) to a file or stdout.

The options become the same parameters the route reads from its query
string, and go through the same :class:`~filesvc.exports.Exporter`, so that
the CLI and ``GET /api/v1/exports/NAME.csv`` agree byte for byte.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import anyio

from filesvc.config import Settings
from filesvc.errors import InvalidRequest, NotFound
from filesvc.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, report_failure
from filesvc.storage.local import fsync_dir

#: Seconds between two updates of the progress line.
PROGRESS_INTERVAL = 0.5


def query_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The command's options as the query parameters of the HTTP route."""
    params: list[tuple[str, str]] = []
    if args.columns is not None:
        params.append(("columns", args.columns))
    if args.order_by is not None:
        params.append(("order_by", args.order_by))
    for item in args.filter or ():
        key, separator, value = item.partition("=")
        if not separator:
            raise InvalidRequest(f"--filter {item!r}: write it as COLUMN[__OP]=VALUE.")
        params.append((key, value))
    if args.limit is not None:
        params.append(("limit", str(args.limit)))
    if args.bom:
        params.append(("bom", "true"))
    if args.delimiter is not None:
        params.append(("delimiter", args.delimiter))
    if not args.header:
        params.append(("header", "false"))
    if not args.formula_escape:
        params.append(("formula_escape", "false"))
    return params


class Progress:
    """``12,345,678 rows  410,000 rows/s  1.9 GB`` on one refreshed line of a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self._shown = 0.0

    def update(self, rows: int, size: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._shown < PROGRESS_INTERVAL):
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-9)
        line = f"{rows:,} rows  {rows / elapsed:,.0f} rows/s  {_size(size)}"
        if final:
            line += f"  in {elapsed:.1f} s"
        self.stream.write(f"\r\x1b[K{line}" + ("\n" if final else ""))
        self.stream.flush()


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError


async def write_export(
    settings: Settings,
    name: str,
    params: list[tuple[str, str]],
    out: IO[bytes],
    *,
    parquet: bool = False,
) -> int:
    """Stream the export into ``out``; the number of rows written."""
    from filesvc.db import create_engine
    from filesvc.exports.stream import Exporter, ExportStream

    engine = create_engine(settings)
    try:
        export = await Exporter(settings).open(engine, name, params, parquet=parquet)
        progress = Progress(sys.stderr)
        size = 0
        if parquet:
            assert isinstance(export, ExportStream)  # Parquet takes the row path
            chunks = export.parquet_chunks()
        else:
            chunks = export.chunks()
        try:
            async for chunk in chunks:
                await anyio.to_thread.run_sync(out.write, chunk)
                size += len(chunk)
                progress.update(export.rows, size)
        finally:
            await export.aclose()
        await anyio.to_thread.run_sync(out.flush)
        progress.update(export.rows, size, final=True)
        return export.rows
    finally:
        await engine.dispose()


_FILE_MODE = 0o666


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_special(target: Path) -> bool:
    """Whether ``target`` exists and is neither a regular file nor a directory."""
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``export`` command; its exit code."""
    try:
        params = query_params(args)
        parquet = getattr(args, "format", "csv") == "parquet"
        if args.output == "-":
            asyncio.run(
                write_export(settings, args.name, params, sys.stdout.buffer, parquet=parquet)
            )
            return EXIT_OK
        target = Path(args.output)
        if _is_special(target):
            # A device or a pipe (`-o /dev/null`, a FIFO) is written to as it is:
            # renaming a file over it would replace the device itself.
            with target.open("wb") as out:
                asyncio.run(write_export(settings, args.name, params, out, parquet=parquet))
            return EXIT_OK
        # A random name, created exclusively: a predictable one could be a
        # symlink planted by someone else that the export would write through.
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        partial = Path(name)
        try:
            os.fchmod(fd, _FILE_MODE & ~_umask())  # what a plain open() would have made
            with os.fdopen(fd, "wb") as out:
                asyncio.run(write_export(settings, args.name, params, out, parquet=parquet))
                out.flush()
                os.fsync(out.fileno())  # the bytes are on disk before the name is
            os.replace(partial, target)
            fsync_dir(target.parent)  # and the rename survives a crash too
        finally:
            partial.unlink(missing_ok=True)  # a failed export leaves no file behind
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        code = report_failure(exc, os_error="export failed", usage=(InvalidRequest, NotFound))
        if code is None:
            raise
        return code
