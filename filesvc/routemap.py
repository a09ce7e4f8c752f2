"""The routes as served, for the code that must see every one: scopes and ``Allow``.

FastAPI 0.16x keeps included routers nested and resolves them lazily, so
``app.routes`` no longer lists the API's routes; older versions copy each
route, with what its ``include_router`` calls added, into ``app.routes``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import fastapi.routing
from starlette.applications import Starlette

#: Where every route that needs an API key lives.
API_PREFIX: Final = "/api/v1"


def effective_routes(app: Starlette) -> Iterator[Any]:
    """Each route with its full path and the dependencies its inclusion added."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    return iter(app.routes) if contexts is None else iter(contexts(app.routes))


def allowed_methods(app: Starlette, path: str) -> list[str]:
    """The methods of the resource at ``path``: the ``Allow`` of a 405.

    Routes with fewer parameters win, as in the OpenAPI document:
    ``/api/v1/files/batch`` is the batch resource (POST), not a file whose id
    happens to be ``batch``.
    """
    matches: dict[int, set[str]] = {}
    for route in effective_routes(app):
        pattern = getattr(route, "path_regex", None)
        methods = getattr(route, "methods", None)
        if pattern is not None and methods and pattern.match(path):
            parameters = str(getattr(route, "path", "")).count("{")
            matches.setdefault(parameters, set()).update(methods)
    if not matches:
        return []
    methods = matches[min(matches)]
    # filesvc.head answers HEAD wherever GET is answered.
    return sorted(methods | {"HEAD"} if "GET" in methods else methods)
