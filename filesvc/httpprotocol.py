"""uvicorn's httptools protocol with the request head bounded in size and in time.

uvicorn's httptools parser limits neither: a client can send megabytes of
header lines, which httptools gathers by copying the value so far on every
read, or send a head one byte at a time for ever. Both hold the event loop or
a connection that other requests need. Here a head larger than
``max_head_bytes`` is answered 431 and one that takes longer than
``head_timeout`` seconds 408, both as the SPEC's JSON error, and the
connection is closed; bytes past the limit are never handed to the parser.

Over ``--limit-concurrency``, uvicorn answers a plain-text 503: here the same
check is answered with the SPEC's JSON error and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from filesvc.config import Settings
from filesvc.errors import RETRY_AFTER_SECONDS, ServiceUnavailable, error_body

logger = logging.getLogger("filesvc")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools, refusing request heads that are too large or too slow."""

    #: Most bytes of one request head (request line and header lines).
    max_head_bytes: ClassVar[int] = 64 * 1024
    #: Seconds from a head's first byte to its last.
    head_timeout: ClassVar[float] = 30.0

    @classmethod
    def configure(cls, settings: Settings) -> None:
        """Take the bounds from the settings (once per process, before serving)."""
        cls.max_head_bytes = settings.max_header_bytes
        cls.head_timeout = settings.header_timeout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_head:
            super().data_received(data)
            return
        if self._head_bytes == 0 and data:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)
        room = self.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Only what fits is parsed: if the head has not ended within it, it is too large.
        self._head_bytes = self.max_head_bytes
        super().data_received(data[:room])
        if self._in_head:
            self._refuse(431, "header_too_large", f"larger than {self.max_head_bytes} bytes")
            return
        super().data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        limit = self.limit_concurrency
        if limit is None or (len(self.connections) < limit and len(self.tasks) < limit):
            super().on_headers_complete()
            return
        # uvicorn's own branch would pick its plain-text answer: it is given ours
        # as the app instead, with its check turned off for this one request.
        logger.warning("exceeded the concurrency limit (%d)", limit)
        app, self.app, self.limit_concurrency = self.app, _busy, None
        try:
            super().on_headers_complete()
        finally:
            self.app, self.limit_concurrency = app, limit

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def _cancel_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused:
            seconds = f"{self.head_timeout:g}"
            self._refuse(408, "request_timeout", f"not complete after {seconds} seconds")

    def _refuse(self, status: int, code: str, why: str) -> None:
        self._refused = True
        self._cancel_timer()
        message = f"The request's head (request line and headers) is {why}."
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        reason = {431: "Request Header Fields Too Large", 408: "Request Timeout"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        logger.warning("refused a request head: %s", why, extra={"status": status})
        if not self.transport.is_closing():
            self.transport.write(head + body)
            self.transport.close()


async def _busy(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer over ``--limit-concurrency``: the SPEC's 503, with Retry-After."""
    message = "The service is at its concurrency limit; try again shortly."
    body = json.dumps(error_body(ServiceUnavailable.code, message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
