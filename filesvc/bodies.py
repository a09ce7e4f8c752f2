"""Request bodies from clients that must keep up, and the checks made before reading one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

from starlette.requests import Request

from filesvc.config import Settings
from filesvc.errors import InvalidRequest, PayloadTooLarge, RequestTimeout


class _Watchdog:
    """One timer per body, not one per received message.

    A cancel scope per message costs tens of microseconds, thousands of times
    per GiB. The deadline of the next wait never moves earlier (see
    :func:`client_paced_body`), so a single timer that re-arms itself at the
    current deadline when it fires early does the same job.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.waiting = False
        self.fired = False

    def arm(self, deadline: float) -> None:
        self.deadline = deadline
        self.waiting = True
        if self._handle is None:
            self._handle = self._loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self._handle = None
        if not self.waiting:
            return  # the next wait arms again
        if self._loop.time() < self.deadline:
            self._handle = self._loop.call_at(self.deadline, self._check)
            return
        self.fired = True
        self._task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def client_paced_body(request: Request, settings: Settings) -> AsyncIterator[bytes]:
    """The request body as it arrives, from a client that must keep up.

    A client is cut off (408) when it stalls longer than ``body_timeout``, when
    the body takes longer than ``body_deadline`` in all, or when, past its first
    ``body_timeout`` seconds, its average rate falls below ``min_body_rate``: an
    idle timeout alone lets a client that sends one byte a second hold a
    connection and a storage write open for ever. The rate counts only the time
    spent waiting for the client, not the time the service spends storing.
    """
    stream = request.stream().__aiter__()
    watchdog = _Watchdog()
    loop = asyncio.get_running_loop()
    started = loop.time()
    waited = 0.0
    received = 0
    try:
        while True:
            asked = loop.time()
            # Each term's deadline only moves later from one wait to the next, which
            # is what lets one self-re-arming timer enforce their minimum.
            deadline = asked + settings.body_timeout
            reason = f"stalled for more than {settings.body_timeout:g} seconds"
            if started + settings.body_deadline < deadline:
                deadline = started + settings.body_deadline
                reason = f"took longer than {settings.body_deadline:g} seconds"
            if settings.min_body_rate:
                allowed = max(settings.body_timeout, received / settings.min_body_rate)
                # Within 10% of the idle budget, a client that sends nothing is said to stall.
                budget = allowed - waited
                if budget < (deadline - asked) * 0.9:
                    deadline = asked + budget
                    reason = f"arrived slower than {settings.min_body_rate} bytes per second"
            if deadline <= asked:
                raise RequestTimeout(f"The request body {reason}.")
            watchdog.arm(deadline)
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not watchdog.fired:
                    raise
                watchdog.fired = False
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                raise RequestTimeout(f"The request body {reason}.") from None
            finally:
                watchdog.waiting = False
            waited += loop.time() - asked
            received += len(chunk)
            if chunk:
                yield chunk
    finally:
        watchdog.close()


def check_content_length(request: Request, limit: int, file_limit: int) -> None:
    """Early refusal from the header alone; the streamed count is what really decides.

    ``limit`` is the most the whole body may be; the message names ``file_limit``,
    the limit a user knows about.
    """
    header = request.headers.get("content-length")
    if header is None:
        return
    try:
        length = int(header)
    except ValueError as exc:
        raise InvalidRequest("Content-Length is not a number.") from exc
    if length > limit:
        raise PayloadTooLarge(f"The file is larger than the limit of {file_limit} bytes.")


def check_query_utf8(request: Request, name: str) -> None:
    """Starlette decodes a query with replacement characters; refuse bytes that are not UTF-8."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    for key, value in parse_qsl(raw, keep_blank_values=True, encoding="latin-1"):
        try:
            if key == name:
                value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"The {name} query parameter is not UTF-8.") from exc
