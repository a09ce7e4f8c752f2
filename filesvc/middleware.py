"""The request middleware: request id, access log line and metrics for every request.

A pure ASGI middleware (no ``BaseHTTPMiddleware``: it must not buffer or
re-task streamed uploads and exports). For each HTTP request it

- takes the client's ``X-Request-ID`` when it is safe (≤128 characters of
  ``[A-Za-z0-9._-]``) or makes one, binds it for the logs and returns it on
  the response, whatever answered (routes, error handlers, 404s);
- counts request body bytes, response body bytes, the status and the time to
  the end of the response body, labelled by the route *template*;
- writes one ``filesvc.access`` log line when the response is done;
- aborts a response whose client takes no more bytes for ``send_timeout``
  seconds (``FILESVC_SEND_TIMEOUT``): the server's ``send`` waits while the
  socket's buffers are full, so a client that stops reading would otherwise
  hold the response, and any slot behind it (an export slot, a storage
  reader), for as long as it keeps the connection open. Being around
  ``send`` itself, this covers every streaming response, whoever wrote it.

It goes outermost among the app's middleware, so that responses made by the
others (CORS preflights, authentication refusals) carry the id too. Only a
fault that escapes every handler is answered outside it, by Starlette's
``ServerErrorMiddleware``: :mod:`filesvc.errors` adds the id to that answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextvars import ContextVar

import anyio
from starlette.responses import JSONResponse
from starlette.routing import Match, Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from filesvc.errors import (
    CLIENT_CLOSED_STATUS,
    RETRY_AFTER_SECONDS,
    ClientClosedRequest,
    error_body,
)
from filesvc.logs import (
    bind_request,
    current_request,
    is_valid_request_id,
    note_error_code,
    unbind_request,
)
from filesvc.metrics import METHODS, Metrics
from filesvc.routemap import API_PREFIX

access_logger = logging.getLogger("filesvc.access")

_HEADER = b"x-request-id"
#: Routes that receive uploads: their body bytes and refusals are counted apart.
UPLOAD_ROUTES = frozenset({("POST", f"{API_PREFIX}/files"), ("POST", f"{API_PREFIX}/files/batch")})
#: Route templates under this prefix stream CSV exports.
EXPORT_ROUTE_PREFIX = f"{API_PREFIX}/exports/"
#: Send timeout when none is given (``FILESVC_SEND_TIMEOUT``'s default).
DEFAULT_SEND_TIMEOUT = 30.0


#: ``error_code`` logged for a response aborted because its client stopped reading.
SEND_TIMEOUT_CODE = "send_timeout"
#: What uvicorn logs when the app returns before its response is complete.
_UNFINISHED_RESPONSE = "ASGI callable returned without completing response."
#: Set in the request's task when this middleware aborted its response on purpose.
_aborted: ContextVar[bool] = ContextVar("filesvc_response_aborted", default=False)


class SendTimedOut(Exception):
    """The client accepted no bytes for the send timeout: the response is abandoned."""


class _AbortedResponseFilter(logging.Filter):
    """Drops uvicorn's error line about a response this middleware cut short.

    The access line already says so (``incomplete``, ``error_code``); uvicorn
    closes the connection after logging, which is exactly the abort wanted.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _UNFINISHED_RESPONSE and _aborted.get())


_ABORTED_FILTER = _AbortedResponseFilter()


#: What uvicorn cancels a request's task with when the graceful shutdown timeout ends.
_SHUTDOWN_CANCEL_MARK = "graceful shutdown"
#: ``error_code`` of a request cut short by the end of a graceful shutdown.
SHUTDOWN_CODE = "shutting_down"


def _is_shutdown_cancel(exc: BaseException) -> bool:
    """``exc`` is uvicorn cancelling the request at the end of its graceful shutdown.

    uvicorn cancels every task still running then, with a message that says
    so; a client that went away cancels nothing with a message.
    """
    if isinstance(exc, asyncio.CancelledError):
        return any(_SHUTDOWN_CANCEL_MARK in str(arg) for arg in exc.args)
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_shutdown_cancel(inner) for inner in exc.exceptions)
    return False


def _is_send_timeout(exc: BaseException) -> bool:
    """``exc`` is, or is a group made only of, :class:`SendTimedOut` (task groups wrap it)."""
    if isinstance(exc, SendTimedOut):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_send_timeout(inner) for inner in exc.exceptions)
    return False


def new_request_id() -> str:
    return uuid.uuid4().hex


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _HEADER:
            text = value.decode("latin-1")
            return text if is_valid_request_id(text) else None
    return None


class RequestMiddleware:
    #: Probed every few seconds: their successful answers are logged at debug level.
    quiet_routes = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(
        self,
        app: ASGIApp,
        *,
        router: Router,
        metrics: Metrics,
        send_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.router = router
        self.metrics = metrics
        #: ``FILESVC_SEND_TIMEOUT``; the app factory passes it.
        self.send_timeout = DEFAULT_SEND_TIMEOUT if send_timeout is None else send_timeout
        logging.getLogger("uvicorn.error").addFilter(_ABORTED_FILTER)  # once: same instance

    def route_template(self, scope: Scope, arrived: Scope) -> str:
        """The path template of the route that answered, e.g. ``/api/v1/files/{file_id}``.

        The router leaves the route it chose in ``scope["route"]``; a route of an
        included router knows only its own part of the path, so the prefix it
        was included under is taken from the request's path. Mounts record
        nothing, and change ``root_path`` on their way in: ``arrived`` is the
        scope as it came, to match them against.
        """
        route = scope.get("route")
        if isinstance(route, Route):
            return _with_prefix(route, scope["path"])
        for candidate in self.router.routes:  # mounts (static files) are not recorded
            if isinstance(candidate, Mount | Route):
                match, _ = candidate.matches(arrived)
                if match is not Match.NONE:
                    return candidate.path_format
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or new_request_id()
        scope["request_id"] = request_id
        token = bind_request(request_id)
        exchange = _Exchange(self, scope, request_id)
        timeout = self.send_timeout
        try:
            with self.metrics.in_progress(exchange.gauge):
                await self.app(scope, exchange.receive(receive), exchange.send(send, timeout))
        except BaseException as exc:
            if _is_shutdown_cancel(exc):
                # The server gave up waiting for this request at shutdown. Left to
                # uvicorn it would answer a plain-text 500 and log a traceback:
                # answer the SPEC's 503 instead when nothing was sent yet, and log
                # the one access line either way.
                if exchange.status is None:
                    await _answer_shutting_down(exchange.send(send, timeout))
                else:
                    exchange.abandon(SHUTDOWN_CODE)
                    _aborted.set(True)
                exchange.finish()
                unbind_request(token)
                return
            if _is_send_timeout(exc):
                # Everything inside has unwound (readers closed, slots released).
                # Returning with the response unfinished makes uvicorn close the
                # connection; the access line is the one record of it.
                exchange.abandon()
                _aborted.set(True)
                exchange.finish()
                unbind_request(token)
                return
            exchange.fail(exc)
            exchange.finish()
            # The id stays bound: the server logs this fault next, in this same task.
            raise
        exchange.finish()
        unbind_request(token)


class _Exchange:
    """One request and its response, as the middleware counts and logs them."""

    def __init__(self, middleware: RequestMiddleware, scope: Scope, request_id: str) -> None:
        self.middleware = middleware
        self.metrics = middleware.metrics
        self.scope = scope
        self.arrived = dict(scope)  # before routers and mounts change it
        self.request_id = request_id
        self.started = time.perf_counter()
        self.method = scope["method"] if scope["method"] in METHODS else "other"
        # Known before routing: these routes have no parameters, or a fixed prefix.
        path = scope["path"]
        self.is_upload = (self.method, path) in UPLOAD_ROUTES
        is_export = self.method in {"GET", "HEAD"} and path.startswith(EXPORT_ROUTE_PREFIX)
        self.gauge = (
            self.metrics.uploads_in_progress
            if self.is_upload
            else self.metrics.exports_in_progress
            if is_export
            else None
        )
        self.route: str | None = None
        self.status: int | None = None
        self.fault_code: str | None = None
        self.incomplete = False
        self.bytes_in = 0
        self.bytes_out = 0

    def receive(self, receive: Receive) -> Receive:
        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                self.bytes_in += size
                if self.is_upload and size:
                    self.metrics.uploaded_bytes.inc(size)
            return message

        return counting_receive

    def send(self, send: Send, timeout: float) -> Send:
        header = (_HEADER, self.request_id.encode("latin-1"))
        served = None

        async def tagging_send(message: Message) -> None:
            nonlocal served
            if message["type"] == "http.response.start":
                self.status = message["status"]
                if 300 <= self.status < 400:
                    _relative_own_location(message, self.scope)
                self.route = self.middleware.route_template(self.scope, self.arrived)
                served = self.metrics.served_bytes.labels(route=self.route)
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                message["headers"] = [*headers, header]
            elif message["type"] == "http.response.body":
                size = len(message.get("body", b""))
                if size and served is not None:
                    self.bytes_out += size
                    served.inc(size)
                # The server's send returns once the socket takes the bytes (its
                # buffer below the high-water mark): waiting longer means the
                # client has stopped reading.
                try:
                    with anyio.fail_after(timeout):
                        await send(message)
                except TimeoutError:
                    raise SendTimedOut(f"the client took no bytes for {timeout:g} s") from None
                return
            await send(message)

        return tagging_send

    def abandon(self, code: str = SEND_TIMEOUT_CODE) -> None:
        self.incomplete = True
        self.fault_code = code
        note_error_code(code)
        if self.status is None:
            self.status = CLIENT_CLOSED_STATUS

    def fail(self, exc: BaseException) -> None:
        self.incomplete = True
        if self.status is None:  # answered after us, by ServerErrorMiddleware, if at all
            gone = isinstance(exc, asyncio.CancelledError)
            self.status = CLIENT_CLOSED_STATUS if gone else 500
            self.fault_code = ClientClosedRequest.code if gone else "internal_error"

    def finish(self) -> None:
        status = self.status if self.status is not None else 500
        route = self.route or self.middleware.route_template(self.scope, self.arrived)
        duration = time.perf_counter() - self.started
        context = current_request()
        error_code = (context.error_code if context is not None else None) or self.fault_code
        incomplete = self.incomplete or (context is not None and context.incomplete)
        labels = {"method": self.method, "route": route, "status": str(status)}
        self.metrics.requests.labels(**labels).inc()
        self.metrics.request_duration.labels(**labels).observe(duration)
        if self.is_upload and status >= 400:
            self.metrics.upload_refusals.labels(reason=error_code or f"http_{status}").inc()
        quiet = route in self.middleware.quiet_routes and status < 400
        level = logging.DEBUG if quiet else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        client = self.scope.get("client")
        access_logger.log(
            level,
            "%s %s %d",
            self.scope["method"],
            self.scope["path"],
            status,
            extra={
                "request_id": self.request_id,
                "method": self.scope["method"],
                "route": route,
                "path": self.scope["path"],
                "status": status,
                "duration_ms": round(duration * 1000, 3),
                "bytes": self.bytes_out,
                "request_bytes": self.bytes_in,
                "error_code": error_code,
                "client": client[0] if client else None,
                "incomplete": True if incomplete else None,
            },
        )


def _relative_own_location(message: Message, scope: Scope) -> None:
    """Make a redirect to this very host relative (RFC 9110 §10.2.2 allows it).

    Starlette builds the trailing-slash redirect from the request's ``Host``
    header; without ``FILESVC_TRUSTED_HOSTS`` any host would be echoed into
    ``Location`` (a cache poisoned with it sends users elsewhere). A relative
    ``Location`` names no host at all. Redirects elsewhere (presigned S3 URLs)
    are left alone.
    """
    host = next((v for k, v in scope["headers"] if k == b"host"), None)
    if host is None:
        return
    headers = list(message.get("headers", ()))
    for index, (name, value) in enumerate(headers):
        if name.lower() != b"location":
            continue
        scheme, sep, rest = value.partition(b"://")
        if sep and scheme.lower() in (b"http", b"https", b"ws", b"wss"):
            authority, slash, path = rest.partition(b"/")
            if authority.lower() == host.lower():
                headers[index] = (name, slash + path if slash else b"/")
    message["headers"] = headers


async def _answer_shutting_down(send: Send) -> None:
    """The SPEC's 503 for a request the server stopped waiting for."""
    response = JSONResponse(
        error_body(
            SHUTDOWN_CODE,
            "The service is shutting down; retry the request.",
        ),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"},
    )
    await send({"type": "http.response.start", "status": 503, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


def _with_prefix(route: Route, path: str) -> str:
    """``route``'s template below the prefix that ``path`` has in front of it."""
    start = 0
    while start != -1:
        if route.path_regex.match(path[start:]):
            return path[:start] + route.path_format
        start = path.find("/", start + 1)
    return route.path_format
