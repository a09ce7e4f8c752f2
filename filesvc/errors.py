"""Domain errors and their mapping onto the spec's JSON error body.

Code anywhere raises one of these; :func:`install_error_handlers` turns each
into ``{"error": {"code", "message", "details"}}`` with its status. Nothing
else in the service picks status codes for failures.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from filesvc.logs import REQUEST_ID_HEADER, current_request_id, note_error_code
from filesvc.routemap import allowed_methods

logger = logging.getLogger("filesvc")

#: Seconds a client is told to wait after a 503.
RETRY_AFTER_SECONDS = 5


class FilesvcError(Exception):
    status_code = 500
    code = "internal_error"
    message = "Internal error."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def with_details(self, details: Any) -> FilesvcError:
        self.details = details
        return self


class InvalidRequest(FilesvcError):
    status_code = 400
    code = "invalid_request"
    message = "The request is malformed."


class Unauthorized(FilesvcError):
    status_code = 401
    code = "unauthorized"
    message = "An API key is required."


class Forbidden(FilesvcError):
    status_code = 403
    code = "forbidden"
    message = "This API key lacks the scope for this request."


class SignatureRequired(FilesvcError):
    status_code = 403
    code = "signature_required"
    message = "This file is private: use a signed URL."


class InvalidSignature(FilesvcError):
    status_code = 403
    code = "invalid_signature"
    message = "The URL signature is invalid or has expired."


class NotFound(FilesvcError):
    status_code = 404
    code = "not_found"
    message = "Not found."


class FileNotFound(NotFound):
    code = "file_not_found"
    message = "No file has this id."


class MethodNotAllowed(FilesvcError):
    status_code = 405
    code = "method_not_allowed"
    message = "This method is not allowed here."


class RequestTimeout(FilesvcError):
    status_code = 408
    code = "request_timeout"
    message = "The request body arrived too slowly."


class PreconditionFailed(FilesvcError):
    status_code = 412
    code = "precondition_failed"
    message = "A precondition of the request failed."


class PayloadTooLarge(FilesvcError):
    status_code = 413
    code = "payload_too_large"
    message = "The file is larger than the limit."


class UnsupportedMediaType(FilesvcError):
    status_code = 415
    code = "unsupported_media_type"
    message = "This content type is not allowed."


class RangeNotSatisfiable(FilesvcError):
    status_code = 416
    code = "range_not_satisfiable"
    message = "No requested range is satisfiable."


class InvalidContent(FilesvcError):
    status_code = 422
    code = "invalid_content"
    message = "The content is not a valid file of its type."


class ChecksumMismatch(FilesvcError):
    status_code = 422
    code = "checksum_mismatch"
    message = "The SHA-256 of the received bytes differs from the one stated."


class InsufficientStorage(FilesvcError):
    status_code = 507
    code = "insufficient_storage"
    message = "The storage is full."


class ServiceUnavailable(FilesvcError):
    status_code = 503
    code = "service_unavailable"
    message = "The service is unavailable."

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        super().__init__(
            message, details=details, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    message = "The database is unavailable."


class StorageUnavailable(ServiceUnavailable):
    code = "storage_unavailable"
    message = "The file storage is unavailable."


class ClientClosedRequest(FilesvcError):
    # nginx's 499: no client reads it, but the access log and metrics do.
    status_code = 499
    code = "client_closed_request"
    message = "The client closed the connection before its request was complete."


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    # Every error answer is built here: the access log and metrics learn its code.
    note_error_code(code)
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


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
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        logger.warning("database unavailable: %s", exc, extra={"request_id": _request_id(request)})
        return error_response(DatabaseUnavailable())
    if getattr(exc.orig, "sqlstate", None) in _UNTEXTUAL_SQLSTATES:
        # PostgreSQL refuses a NUL byte in text: the client's value, not a fault.
        return error_response(InvalidRequest("A value is not valid text (a NUL byte?)."))
    return await _on_unexpected(request, exc)


#: character_not_in_repertoire, untranslatable_character.
_UNTEXTUAL_SQLSTATES = {"22021", "22P05"}


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


_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ETIMEDOUT}


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


class DatasetNotFound(NotFound):
    code = "dataset_not_found"
    message = "No export dataset has this name."
