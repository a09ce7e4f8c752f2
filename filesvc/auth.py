"""API keys with scopes, enforced for every route under ``/api/``.

Keys come from ``FILESVC_API_KEYS`` and are kept only as SHA-256 digests,
compared in constant time against every configured key (no early exit), so
neither the comparison nor the lookup tells a client how close its guess was.

Every route of the API lives in the router made by :func:`api_router`. A route
declares the scope it needs with ``dependencies=[require("files:read")]``, on
the route itself or on ``include_router`` for a whole sub-router.
:func:`check_routes`, called last by the app factory, stops start-up when a
route under ``/api/`` declares no scope or sits outside that router, and the
router's own dependency answers 403 for any endpoint that check has not
approved. So a new route cannot forget its scope: it declares one, or the app
does not start.

With no keys configured the service runs open (every request holds every
scope) and says so loudly at start-up.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.security import (
    APIKeyHeader,
    HTTPAuthorizationCredentials,
    HTTPBearer,
    SecurityScopes,
)

from filesvc.config import SCOPES, Settings
from filesvc.deps import get_resources
from filesvc.errors import Forbidden, Unauthorized
from filesvc.keys import OPEN, Principal, key_digest
from filesvc.routemap import API_PREFIX, effective_routes
from filesvc.schemas import ErrorBody

logger = logging.getLogger("filesvc")

API_KEY_HEADER: Final = "X-API-Key"
_CHALLENGE: Final = 'Bearer realm="filesvc"'

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="`Authorization: Bearer <key>` with a key of `FILESVC_API_KEYS`.",
)
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    scheme_name="apiKey",
    description="`X-API-Key: <key>`: the same keys, for clients that cannot send a bearer token.",
)


def warn_if_open(settings: Settings) -> None:
    """The loud start-up line of a service without keys."""
    if not settings.api_keys:
        logger.warning(
            "SECURITY WARNING: FILESVC_API_KEYS is empty, so the API under %s is OPEN: "
            "anyone who can reach this service can upload, list and delete files and "
            "read every export. Configure keys before exposing it.",
            API_PREFIX,
        )


def _presented_key(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> str:
    token = bearer.credentials if bearer is not None else None
    if token is None and api_key is None:
        raise Unauthorized(
            f"An API key is required: send 'Authorization: Bearer <key>' or "
            f"'{API_KEY_HEADER}: <key>'.",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    if (
        token is not None
        and api_key is not None
        and not hmac.compare_digest(key_digest(token), key_digest(api_key))
    ):
        raise Unauthorized(
            f"The Authorization and {API_KEY_HEADER} headers carry different keys.",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_request"'},
        )
    presented = token if token is not None else api_key
    assert presented is not None
    return presented


async def authorize(
    request: Request,
    security_scopes: SecurityScopes,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    """The caller, if its key holds every scope the route declares; else 401 or 403."""
    if not security_scopes.scopes:
        raise Forbidden("This route declares no scope, so no key may use it.")
    keyring = get_resources(request).keyring
    if keyring.is_open:
        principal = OPEN
    else:
        principal = keyring.lookup(_presented_key(bearer, api_key)) or _refuse_key()
        missing = [s for s in security_scopes.scopes if not principal.allows(s)]
        if missing:
            raise Forbidden(
                f"This API key lacks the scope {', '.join(missing)}.",
                details={"required": security_scopes.scopes},
            )
    request.state.principal = principal
    return principal


def _refuse_key() -> Principal:
    raise Unauthorized(
        "The API key is not valid.",
        headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
    )


def require(scope: str) -> Any:
    """The dependency that declares (and checks) the scope a route needs."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
    return Security(authorize, scopes=[scope])


def _auth_dependants(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        if sub.call is authorize:
            yield sub
        yield from _auth_dependants(sub)


def declared_scopes(route: Any) -> list[str]:
    """The scopes a route declares through :func:`require`, in order."""
    dependant = getattr(route, "dependant", None)
    scopes: list[str] = []
    if dependant is not None:
        for sub in _auth_dependants(dependant):
            scopes += [s for s in sub.own_oauth_scopes or [] if s not in scopes]
    return scopes


async def _guard(request: Request) -> None:
    """Fail closed: only endpoints that :func:`check_routes` saw declare a scope are served."""
    allowed: frozenset[Any] = getattr(request.app.state, "scoped_endpoints", frozenset())
    if request.scope.get("endpoint") not in allowed:
        raise Forbidden("This route declares no scope, so no key may use it.")


def api_router() -> APIRouter:
    """The one router of everything under ``/api/v1``; include every API route in it."""
    return APIRouter(
        prefix=API_PREFIX,
        dependencies=[Depends(_guard)],
        responses={
            401: {"model": ErrorBody, "description": "API key missing or not valid."},
            403: {"model": ErrorBody, "description": "The API key lacks the route's scope."},
        },
    )


def check_routes(app: FastAPI) -> None:
    """Refuse to start when a route under ``/api/`` is outside the API router or has no scope.

    Call it last in the app factory: endpoints it has not seen answer 403.
    """
    scoped: set[Any] = set()
    for route in effective_routes(app):
        path = getattr(route, "path", None) or ""
        if not path.startswith("/api/"):
            continue
        dependant = getattr(route, "dependant", None)
        name = f"{','.join(sorted(getattr(route, 'methods', None) or ()))} {path}".strip()
        if dependant is None:
            raise RuntimeError(f"{name} is mounted under /api/ outside auth.api_router()")
        if not any(d.call is _guard for d in dependant.dependencies):
            raise RuntimeError(f"{name} is not included in auth.api_router()")
        if not declared_scopes(route):
            raise RuntimeError(
                f"{name} declares no scope: add "
                "dependencies=[require('<scope>')] to the route or its include_router"
            )
        scoped.add(route.endpoint)
    app.state.scoped_endpoints = frozenset(scoped)
