"""Exceptions → the SPEC's JSON error answers (filesvc/handlers.py).

Each test raises the real exception from a tiny app's route and reads the
answer through ASGI: the status, the code, the headers, and never a traceback.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.requests import ClientDisconnect

from filesvc import errors
from filesvc.errors import RETRY_AFTER_SECONDS, FilesvcError, InvalidRequest, ServiceUnavailable
from filesvc.handlers import error_response, install_error_handlers


def test_an_error_answer_is_the_json_body_with_the_errors_status() -> None:
    error = InvalidRequest("'limit' must be a number.", details={"parameter": "limit"})
    answer = error_response(error)
    assert answer.status_code == 400
    assert answer.body == (
        b'{"error":{"code":"invalid_request","message":"\'limit\' must be a number.",'
        b'"details":{"parameter":"limit"}}}'
    )


def test_unavailable_says_when_to_retry_and_keeps_the_connection() -> None:
    for kind in (ServiceUnavailable, errors.DatabaseUnavailable, errors.StorageUnavailable):
        answer = error_response(kind())
        assert answer.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert "connection" not in answer.headers
    # A full disk is no fault of the connection either.
    assert "connection" not in error_response(errors.InsufficientStorage()).headers


def test_a_fault_closes_the_connection() -> None:
    # After an unexpected error the request's body may be half read: do not reuse it.
    assert error_response(FilesvcError()).headers["connection"] == "close"
    assert "connection" not in error_response(InvalidRequest()).headers


# The handlers: whatever a route raises, the answer is the JSON error body.


def answer(exception: BaseException) -> httpx.Response:
    """What the client gets when a route raises ``exception``."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise")
    async def raising() -> None:
        raise exception

    async def run() -> httpx.Response:
        # The catch-all handler answers, then Starlette re-raises for the server's log.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/raise")

    return asyncio.run(run())


def request(path: str, method: str = "GET") -> httpx.Response:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/typed")
    async def typed(limit: int) -> dict[str, int]:
        return {"limit": limit}

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path)

    return asyncio.run(run())


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert "Traceback" not in response.text
    return error


class _Driver(Exception):
    """What a database driver raises, with PostgreSQL's SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


def database_error(kind: type[DBAPIError], sqlstate: str = "XX000") -> DBAPIError:
    return kind("SELECT 1", {}, _Driver(sqlstate))


DOWN = "database_unavailable"
CASES = [
    pytest.param(lambda: errors.PayloadTooLarge(), 413, "payload_too_large", id="domain"),
    pytest.param(lambda: database_error(OperationalError), 503, DOWN, id="database down"),
    pytest.param(lambda: database_error(DBAPIError, "22021"), 400, "invalid_request", id="NUL"),
    pytest.param(lambda: database_error(DBAPIError, "22P05"), 400, "invalid_request", id="22P05"),
    pytest.param(lambda: database_error(DBAPIError), 500, "internal_error", id="other database"),
    pytest.param(lambda: ConnectionRefusedError(errno.ECONNREFUSED, "no"), 503, DOWN, id="refused"),
    pytest.param(lambda: OSError(errno.EHOSTUNREACH, "no route"), 503, DOWN, id="unreachable"),
    pytest.param(lambda: TimeoutError("connect"), 503, DOWN, id="timed out"),
    pytest.param(
        lambda: OSError("Multiple exceptions: [Errno 111] a, [Errno 99] b"),
        503,
        DOWN,
        id="every address refused",
    ),
    pytest.param(lambda: OSError(errno.EACCES, "denied"), 500, "internal_error", id="other OS"),
    pytest.param(lambda: ClientDisconnect(), 499, "client_closed_request", id="client gone"),
    pytest.param(lambda: ZeroDivisionError("oops"), 500, "internal_error", id="bug"),
]


@pytest.mark.parametrize(("exception", "status", "code"), CASES)
def test_what_a_route_raises_becomes_the_json_error(
    exception: Callable[[], BaseException],
    status: int,
    code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = assert_error(answer(exception()), status, code)
    if status == 503:
        assert "driver error" not in error["message"]  # the cause goes to the log only
        assert "database unavailable" in caplog.text
    if code == "internal_error":
        assert error["message"] == "Internal error."
        assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)


def test_request_validation_is_400_naming_the_value() -> None:
    error = assert_error(request("/typed?limit=many"), 400, "invalid_request")
    assert error["message"].startswith("Invalid value at query.limit: ")
    assert error["details"][0]["location"] == "query.limit"


def test_unknown_routes_and_methods_keep_the_json_shape() -> None:
    assert_error(request("/nowhere"), 404, "not_found")
    response = request("/typed", method="DELETE")
    assert_error(response, 405, "method_not_allowed")
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert "GET" in allowed and "DELETE" not in allowed
