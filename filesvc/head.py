"""``HEAD`` wherever ``GET`` works (RFC 9110 §9.3.2), in one place for every route.

FastAPI routes answer only the methods they declare, so a ``GET`` route
answers ``HEAD`` with 405; link checkers, CDNs and polars probe with ``HEAD``
first. Rather than a ``HEAD`` copy of every route, this middleware runs a
``HEAD`` request as the ``GET`` of the same URL, with everything a ``GET``
goes through (authentication, scopes, validation, conditional requests), and
sends the response's status and headers without its body.

A route that declares ``HEAD`` itself (static URLs answer it without opening
the stored file, and may redirect to a URL presigned for ``HEAD``) gets the
request as it came; its body, if any, is dropped all the same.

A streamed response (an export) is not run to its end for nothing: once the
headers are out, ``receive`` reports the client gone, which is how a streamed
response learns to stop, and the rest of its body is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from filesvc.routemap import effective_routes

_DISCONNECT: Message = {"type": "http.disconnect"}


def declares_head(routes: Iterable[Any], path: str) -> bool:
    """Whether a route at ``path`` answers ``HEAD`` by itself."""
    for route in routes:
        pattern = getattr(route, "path_regex", None)
        methods = getattr(route, "methods", None)
        if pattern is not None and methods and "HEAD" in methods and pattern.match(path):
            return True
    return False


class HeadMiddleware:
    """Answer ``HEAD`` as the ``GET`` of the same URL would, without the body."""

    def __init__(self, app: ASGIApp, *, routes: Callable[[], Iterable[Any]]) -> None:
        self.app = app
        # A callable: routes are added to the app after its middleware is declared.
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        if declares_head(self.routes(), scope["path"]):
            inner = scope
        else:
            # A copy: the server reads the method from its own scope to know that
            # this answer has no body whatever its Content-Length says.
            inner = {**scope, "method": "GET"}
        headers_sent = anyio.Event()

        def share_routing() -> None:
            # Outer middleware reads what the router records in the scope (the route).
            if inner is not scope:
                scope.update({k: v for k, v in inner.items() if k != "method"})

        async def bodiless_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                share_routing()
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                headers_sent.set()
            elif message["type"] != "http.response.body":
                await send(message)  # e.g. trailers or extensions: none are used today

        async def receive_until_sent() -> Message:
            if headers_sent.is_set():
                return _DISCONNECT
            message: Message = _DISCONNECT
            async with anyio.create_task_group() as group:

                async def from_client() -> None:
                    nonlocal message
                    message = await receive()
                    group.cancel_scope.cancel()

                async def until_sent() -> None:
                    await headers_sent.wait()
                    group.cancel_scope.cancel()

                group.start_soon(from_client)
                group.start_soon(until_sent)
            return message

        try:
            await self.app(inner, receive_until_sent, bodiless_send)
        finally:
            share_routing()


def install_head(app: Any) -> None:
    """Add the middleware to ``app`` (a Starlette or FastAPI application)."""
    app.add_middleware(HeadMiddleware, routes=lambda: effective_routes(app))
