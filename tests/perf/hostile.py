"""The hostile loads of the responsiveness scenario on their own (``--only hostile``).

They live in :mod:`tests.perf.responsiveness`; this scenario runs them without
the 1 GiB upload and the export, each against a fresh server.
"""

from __future__ import annotations

from tests.perf.responsiveness import run_hostile as run

__all__ = ["run"]
