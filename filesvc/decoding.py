"""One image-decoding memory budget per process.

Every decode (the upload check, variant renders) reserves the bytes of the
bitmap it is about to allocate before Pillow allocates them, so a few hostile
headers that each promise tens of megapixels cannot take the process's memory:
they wait a bounded time for room, then get 503 with ``Retry-After``.
Reservations block, so they are taken in worker threads, never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from filesvc.errors import InvalidContent, ServiceUnavailable


class DecodeBudgetExhausted(ServiceUnavailable):
    code = "decode_budget_exhausted"
    message = "Too many images are being decoded; retry shortly."


class DecodeBudget:
    """Bytes of decoded bitmaps that may exist at once in this process."""

    def __init__(self, limit_bytes: int, wait_seconds: float) -> None:
        self.limit_bytes = limit_bytes
        self.wait_seconds = wait_seconds
        self._in_use = 0
        self._room = threading.Condition()

    @property
    def in_use(self) -> int:
        """Bytes reserved right now (for ``/metrics``)."""
        return self._in_use

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the block; blocks, so call from a worker thread.

        A request larger than the whole budget can never fit: it is refused at
        once (422) rather than made to wait.
        """
        if nbytes > self.limit_bytes:
            raise InvalidContent(
                f"Decoding this image needs {nbytes} bytes, more than the limit of "
                f"{self.limit_bytes}."
            )
        with self._room:
            fits = self._room.wait_for(
                lambda: self._in_use + nbytes <= self.limit_bytes, timeout=self.wait_seconds
            )
            if not fits:
                raise DecodeBudgetExhausted()
            self._in_use += nbytes
        try:
            yield
        finally:
            with self._room:
                self._in_use -= nbytes
                self._room.notify_all()
