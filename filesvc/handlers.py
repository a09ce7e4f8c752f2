"""The one mapping from exceptions to the SPEC's JSON error answers.

Domain errors (:mod:`filesvc.errors`) carry their own status and code; the
handlers here also translate what frameworks and drivers raise: request
validation, Starlette's HTTP errors, database and connection failures, a client
that went away, and anything unexpected (logged with its request id, answered
``internal_error`` without a trace).
"""

from __future__ import annotations

import errno
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from filesvc.db import SCHEMA_MISSING, is_schema_missing
from filesvc.errors import (
    ClientClosedRequest,
    DatabaseUnavailable,
    FilesvcError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    error_body,
)
from filesvc.logs import REQUEST_ID_HEADER, current_request_id
from filesvc.routemap import allowed_methods

logger = logging.getLogger("filesvc")
_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ETIMEDOUT}
#: character_not_in_repertoire, untranslatable_character.
_UNTEXTUAL_SQLSTATES = {"22021", "22P05"}


def error_response(exc: FilesvcError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.status_code >= 500 and exc.status_code != 503 and exc.status_code != 507:
        headers.setdefault("Connection", "close")
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details),
        status_code=exc.status_code,
        headers=headers,
    )


_HTTP_CODES = {
    400: InvalidRequest,
    404: NotFound,
    405: MethodNotAllowed,
}


def _request_id(request: Request) -> str:
    return current_request_id() or str(request.scope.get("request_id") or "-")


async def _on_filesvc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FilesvcError)
    if exc.status_code >= 500:
        logger.warning("%s: %s", exc.code, exc.message, extra={"request_id": _request_id(request)})
    return error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
        for e in exc.errors()
    ]
    first = details[0] if details else {"location": "request", "message": "invalid"}
    message = f"Invalid value at {first['location']}: {first['message']}."
    return error_response(InvalidRequest(message, details=details))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind = _HTTP_CODES.get(exc.status_code)
    if kind is None:
        error = FilesvcError(str(exc.detail))
        error.status_code = exc.status_code
        error.code = "http_error"
    else:
        error = kind()
    error.headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # The route that matched lists only its own methods; Allow names them all.
        allowed = allowed_methods(request.app, request.scope["path"])
        if allowed:
            error.headers["Allow"] = ", ".join(allowed)
    return error_response(error)


async def _on_database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DBAPIError)
    if is_schema_missing(exc):  # never a 500: the operator has a step to take
        logger.warning(
            "database has no schema: %s", exc, extra={"request_id": _request_id(request)}
        )
        return error_response(DatabaseUnavailable(SCHEMA_MISSING))
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        logger.warning("database unavailable: %s", exc, extra={"request_id": _request_id(request)})
        return error_response(DatabaseUnavailable())
    if getattr(exc.orig, "sqlstate", None) in _UNTEXTUAL_SQLSTATES:
        # PostgreSQL refuses a NUL byte in text: the client's value, not a fault.
        return error_response(InvalidRequest("A value is not valid text (a NUL byte?)."))
    return await _on_unexpected(request, exc)


async def _on_os_error(request: Request, exc: Exception) -> Response:
    # Storage backends translate their own OS errors; a raw one reaching this
    # point comes from a database driver that could not connect (asyncpg
    # raises OSError, unwrapped by SQLAlchemy, when PostgreSQL is down).
    assert isinstance(exc, OSError)
    if isinstance(exc, ConnectionError | TimeoutError) or _CONNECT_ERRNOS & {exc.errno}:
        logger.warning("database unavailable: %s", exc, extra={"request_id": _request_id(request)})
        return error_response(DatabaseUnavailable())
    if str(exc).startswith("Multiple exceptions"):  # asyncpg tried several addresses
        logger.warning("database unavailable: %s", exc, extra={"request_id": _request_id(request)})
        return error_response(DatabaseUnavailable())
    return await _on_unexpected(request, exc)


async def _on_client_disconnect(request: Request, exc: Exception) -> Response:
    # A truncated body is the client's doing, not a fault of the service.
    logger.info("client disconnected mid-request", extra={"request_id": _request_id(request)})
    return error_response(ClientClosedRequest())


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    request_id = _request_id(request)
    logger.error("unexpected error", exc_info=exc, extra={"request_id": request_id})
    response = error_response(FilesvcError())
    if request_id != "-":  # answered outside the request middleware: tag it here
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FilesvcError, _on_filesvc_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(DBAPIError, _on_database_error)
    app.add_exception_handler(OSError, _on_os_error)
    app.add_exception_handler(ClientDisconnect, _on_client_disconnect)
    app.add_exception_handler(Exception, _on_unexpected)
