"""One image-decoding memory budget per process.

Every decode (the upload check, variant renders) reserves the bytes of the
bitmap it is about to allocate, plus what the decoder allocates on top, before
Pillow allocates them, so a few hostile headers that each promise tens of
megapixels cannot take the process's memory: they wait a bounded time for
room, then get 503 with ``Retry-After``. Reservations block, so they are taken
in worker threads, never on the event loop.

Freed bitmaps must also leave the process: glibc keeps freed heap memory in
per-thread arenas, and its mmap threshold grows after each large free, so after
a burst of decodes the memory stays taken. :func:`tune_allocator` pins the
threshold (large buffers are mmapped, untouched pages cost nothing, a free
returns them) and :meth:`DecodeBudget.reserve` trims the arenas after a large
reservation ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from filesvc.errors import InvalidContent, ServiceUnavailable

#: Allocations at least this large are mmapped (glibc's ``M_MMAP_THRESHOLD``): above the
#: upload pipeline's 1 MiB chunks, which would otherwise be mapped and faulted in afresh.
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
#: Free memory kept at the top of a heap before it is given back (``M_TRIM_THRESHOLD``);
#: pinning the mmap threshold would otherwise leave this at 128 KiB and churn the heap.
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024
#: A reservation at least this large trims the allocator's free memory when it ends.
TRIM_AFTER_BYTES = 16 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


class DecodeBudgetExhausted(ServiceUnavailable):
    code = "decode_budget_exhausted"
    message = "Too many images are being decoded; retry shortly."


def bitmap_bytes(mode: str, size: tuple[int, int]) -> int:
    """Bytes of a Pillow image of ``mode`` and ``size``: 1, 2 or 4 per pixel, plus row pointers."""
    width, height = size
    if mode in ("1", "L", "P"):
        pixel = 1
    elif mode.startswith("I;16"):
        pixel = 2
    else:  # RGB is stored as 4 bytes a pixel, like RGBA, CMYK, I and F
        pixel = 4
    return width * height * pixel + height * 8


class _Allocator:
    """glibc's malloc knobs, when the C library is glibc."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tuned = False
        self._libc: ctypes.CDLL | None = None
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name)
            libc.mallopt  # noqa: B018 (absent on musl and macOS)
            libc.malloc_trim  # noqa: B018
        except (OSError, AttributeError, TypeError):
            return
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        self._libc = libc

    def tune(self) -> None:
        with self._lock:
            if self._libc is not None and not self._tuned:
                # A fixed threshold also stops glibc raising it (up to 32 MiB) after each free.
                self._libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                self._libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                self._tuned = True

    def trim(self) -> None:
        if self._libc is not None:
            self._libc.malloc_trim(0)


_allocator = _Allocator()


def tune_allocator() -> None:
    """Make large decode buffers come from mmap, so that freeing them returns them (idempotent)."""
    _allocator.tune()


class DecodeBudget:
    """Bytes of decoded bitmaps (and decoder buffers) that may exist at once in this process.

    A reservation may start below its ceiling and grow (see :meth:`reserve`).
    Room is given only when every decode holding part of the budget could
    still finish, one after another, each growing to its ceiling as the
    previous ones give theirs back (a banker's check), so decodes that grow
    never wait on each other for ever.
    """

    def __init__(
        self,
        limit_bytes: int,
        wait_seconds: float,
        *,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.wait_seconds = wait_seconds
        self._on_change = on_change
        self._in_use = 0
        self._active: set[Reservation] = set()
        self._room = threading.Condition()
        tune_allocator()

    @property
    def in_use(self) -> int:
        """Bytes reserved right now (for ``/metrics``)."""
        return self._in_use

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._in_use)

    def _check_fits(self, nbytes: int) -> None:
        if nbytes > self.limit_bytes:
            raise InvalidContent(
                f"Decoding this image needs {nbytes} bytes, more than the limit of "
                f"{self.limit_bytes}."
            )

    def _safe_with(self, reservation: Reservation, nbytes: int) -> bool:
        """Whether ``reservation`` may hold ``nbytes`` and every decode still finish."""
        held = {r: r.nbytes for r in self._active}
        held[reservation] = nbytes
        free = self.limit_bytes - sum(held.values())
        if free < 0:
            return False
        for r in sorted(held, key=lambda r: r.ceiling - held[r]):
            if r.ceiling - held[r] > free:
                return False
            free += held[r]
        return True

    def _take(self, reservation: Reservation, nbytes: int) -> None:
        with self._room:
            fits = self._room.wait_for(
                lambda: self._safe_with(reservation, nbytes), timeout=self.wait_seconds
            )
            if not fits:
                raise DecodeBudgetExhausted()
            self._in_use += nbytes - reservation.nbytes
            reservation.nbytes = nbytes
            self._active.add(reservation)
            self._changed()
            # Less room, but a smaller need ahead: another waiter may now be safe.
            self._room.notify_all()

    @contextmanager
    def reserve(self, nbytes: int, *, up_to: int | None = None) -> Iterator[Reservation]:
        """Hold ``nbytes`` of the budget for the block; blocks, so call from a worker thread.

        A decode whose memory is touched as its data arrives (rows of a bitmap
        whose untouched pages are never resident) may start smaller and
        :meth:`Reservation.grow_to` at most ``up_to`` bytes as it goes. A
        request larger than the whole budget can never fit: it is refused at
        once (422) rather than made to wait.
        """
        ceiling = max(nbytes, up_to or 0)
        self._check_fits(ceiling)
        reservation = Reservation(self, ceiling)
        self._take(reservation, nbytes)
        try:
            yield reservation
        finally:
            with self._room:
                self._active.discard(reservation)
                self._in_use -= reservation.nbytes
                self._changed()
                self._room.notify_all()
            if reservation.nbytes >= TRIM_AFTER_BYTES:
                _allocator.trim()


class Reservation:
    """Bytes one decode holds; it may grow, up to its ceiling, as the decoder fills its bitmap."""

    def __init__(self, budget: DecodeBudget, ceiling: int) -> None:
        self._budget = budget
        self.nbytes = 0
        self.ceiling = ceiling

    def grow_to(self, nbytes: int) -> None:
        """Hold ``nbytes`` in all (at most the ceiling); waits like :meth:`DecodeBudget.reserve`."""
        nbytes = min(nbytes, self.ceiling)
        if nbytes > self.nbytes:
            self._budget._take(self, nbytes)
