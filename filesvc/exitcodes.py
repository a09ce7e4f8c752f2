"""Exit codes of the ``filesvc`` commands, and the one mapping from failures to them."""

from __future__ import annotations

import sys

from filesvc.errors import FilesvcError

EXIT_OK = 0
#: The command ran and failed (database unreachable, schema behind, start-up failed).
EXIT_FAILED = 1
#: Bad usage or an invalid setting.
EXIT_USAGE = 2
#: Stopped by Ctrl-C, as shells report SIGINT.
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0  success
  1  the command ran and failed (database unreachable, schema behind, start-up failed)
  2  bad usage or an invalid FILESVC_* setting (one line names the variable)
"""

_DATABASE_MODULES = ("sqlalchemy", "asyncpg", "sqlite3")


def report_failure(
    exc: Exception, *, os_error: str, usage: tuple[type[FilesvcError], ...] = ()
) -> int | None:
    """Print one line for a failure a command reports, and its exit code; None: a bug, re-raise.

    ``os_error`` says what an OS error means to this command (a database that
    cannot be reached, an output file that cannot be written); ``usage`` lists
    the domain errors that are the caller's mistake (exit 2).
    """
    if isinstance(exc, usage):
        print(f"filesvc: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, FilesvcError):  # e.g. the storage is unavailable
        print(f"filesvc: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, OSError | ConnectionError):
        print(f"filesvc: {os_error}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if type(exc).__module__.startswith(_DATABASE_MODULES):
        print(f"filesvc: database error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return None
