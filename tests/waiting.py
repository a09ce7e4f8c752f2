"""Waiting on events, never on the clock: what a loaded CI machine cannot fail."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

#: How long :func:`eventually` waits before calling a test hung. Only a real hang
#: gets near it: the conditions waited on take milliseconds on a quiet machine and
#: must not fail on a loaded one.
HANG_SECONDS = 60.0


def eventually(condition: Callable[[], object], what: str, timeout: float = HANG_SECONDS) -> None:
    """Wait until ``condition()`` is true; fail naming ``what`` only if it never becomes so.

    Tests wait on the state they expect (a file gone, a row written, a task
    ended), never a fixed time: a loaded machine makes the wait longer, not the
    test red.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {timeout:g} s: {what}")
        time.sleep(0.02)


def wait_until(condition: Callable[[], object], timeout: float = HANG_SECONDS) -> bool:
    """Whether ``condition()`` became true before ``timeout``: for ``assert wait_until(...)``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
