"""The request middleware: request id, access log line and metrics for every request.

A pure ASGI middleware (no ``BaseHTTPMiddleware``: it must not buffer or
re-task streamed uploads and exports). For each HTTP request it

- takes the client's ``X-Request-ID`` when it is safe (≤128 characters of
  ``[A-Za-z0-9._-]``) or makes one, binds it for the logs and returns it on
  the response, whatever answered (routes, error handlers, 404s);
- counts request body bytes, response body bytes, the status and the time to
  the end of the response body, labelled by the route *template*;
- writes one ``filesvc.access`` log line when the response is done.

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

from starlette.routing import Match, Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from filesvc.logs import bind_request, current_request, is_valid_request_id, unbind_request
from filesvc.metrics import METHODS, Metrics

access_logger = logging.getLogger("filesvc.access")

_HEADER = b"x-request-id"
#: Routes that receive uploads: their body bytes and refusals are counted apart.
UPLOAD_ROUTES = frozenset({("POST", "/api/v1/files"), ("POST", "/api/v1/files/batch")})
#: Route templates under this prefix stream CSV exports.
EXPORT_ROUTE_PREFIX = "/api/v1/exports/"
#: Status logged and counted for a request whose client went away before the answer.
CLIENT_CLOSED_STATUS = 499


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

    def __init__(self, app: ASGIApp, *, router: Router, metrics: Metrics) -> None:
        self.app = app
        self.router = router
        self.metrics = metrics

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
        started = time.perf_counter()
        request_id = incoming_request_id(scope) or new_request_id()
        scope["request_id"] = request_id
        arrived = dict(scope)
        token = bind_request(request_id)
        method = scope["method"] if scope["method"] in METHODS else "other"
        # Known before routing: these routes have no parameters, or a fixed prefix.
        is_upload = (method, scope["path"]) in UPLOAD_ROUTES
        is_export = method in {"GET", "HEAD"} and scope["path"].startswith(EXPORT_ROUTE_PREFIX)
        metrics = self.metrics
        route = "unmatched"
        served = metrics.served_bytes.labels(route=route)
        status: int | None = None
        bytes_in = 0
        bytes_out = 0

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                bytes_in += size
                if is_upload and size:
                    metrics.uploaded_bytes.inc(size)
            return message

        async def tagging_send(message: Message) -> None:
            nonlocal status, bytes_out, route, served
            if message["type"] == "http.response.start":
                status = message["status"]
                route = self.route_template(scope, arrived)
                served = metrics.served_bytes.labels(route=route)
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                headers.append((_HEADER, request_id.encode("latin-1")))
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                size = len(message.get("body", b""))
                if size:
                    bytes_out += size
                    served.inc(size)
            await send(message)

        gauge = (
            metrics.uploads_in_progress
            if is_upload
            else metrics.exports_in_progress
            if is_export
            else None
        )
        fault: BaseException | None = None
        fault_code: str | None = None
        try:
            with metrics.in_progress(gauge):
                await self.app(scope, counting_receive, tagging_send)
        except BaseException as exc:
            fault = exc
            if status is None:
                gone = isinstance(exc, asyncio.CancelledError)
                status = CLIENT_CLOSED_STATUS if gone else 500
                fault_code = "client_closed_request" if gone else "internal_error"
            # The id stays bound: the server logs this fault next, in this same task.
            raise
        finally:
            final = status if status is not None else 500
            if route == "unmatched":  # no response started: the router may still know
                route = self.route_template(scope, arrived)
            duration = time.perf_counter() - started
            context = current_request()
            error_code = context.error_code if context is not None else None
            error_code = error_code or fault_code
            labels = {"method": method, "route": route, "status": str(final)}
            metrics.requests.labels(**labels).inc()
            metrics.request_duration.labels(**labels).observe(duration)
            if is_upload and final >= 400:
                metrics.upload_refusals.labels(reason=error_code or f"http_{final}").inc()
            quiet = route in self.quiet_routes and final < 400
            level = logging.DEBUG if quiet else logging.INFO
            if access_logger.isEnabledFor(level):
                client = scope.get("client")
                access_logger.log(
                    level,
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    final,
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "route": route,
                        "path": scope["path"],
                        "status": final,
                        "duration_ms": round(duration * 1000, 3),
                        "bytes": bytes_out,
                        "request_bytes": bytes_in,
                        "error_code": error_code,
                        "client": client[0] if client else None,
                        "incomplete": True if fault is not None else None,
                    },
                )
            if fault is None:
                unbind_request(token)


def _with_prefix(route: Route, path: str) -> str:
    """``route``'s template below the prefix that ``path`` has in front of it."""
    start = 0
    while start != -1:
        if route.path_regex.match(path[start:]):
            return path[:start] + route.path_format
        start = path.find("/", start + 1)
    return route.path_format
