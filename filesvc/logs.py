"""Structured logs: one JSON object per line, each tagged with its request's id.

:class:`RequestMiddleware <filesvc.middleware.RequestMiddleware>` opens a
:class:`RequestContext` for every HTTP request; :class:`RequestIdFilter` copies
its id onto every log record written while the request runs, whichever logger
writes it (ours, uvicorn's, SQLAlchemy's), and :class:`JsonFormatter` renders
the record as one line. :func:`logging_config` is the ``dictConfig`` that
``filesvc serve`` hands to uvicorn, so that uvicorn's own lines are JSON too.
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: Header carrying the request id, in and out.
REQUEST_ID_HEADER = "X-Request-ID"
#: An incoming id is kept only when it is this safe to log and echo back.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
#: ``scheme://user:password@host`` → the password is never written anywhere.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "color_message", "taskName"}


@dataclass(slots=True)
class RequestContext:
    """What the logs need to know about the request being handled."""

    request_id: str
    #: The spec's error code of the answer, once an error handler chose one.
    error_code: str | None = None
    #: The response was cut short after it started (the client went away mid-stream).
    incomplete: bool = False


_current: ContextVar[RequestContext | None] = ContextVar("filesvc_request", default=None)


def is_valid_request_id(value: str) -> bool:
    return _VALID_REQUEST_ID.match(value) is not None


def bind_request(request_id: str) -> Token[RequestContext | None]:
    """Start a request's context; :func:`unbind_request` ends it."""
    return _current.set(RequestContext(request_id))


def unbind_request(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def current_request() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str | None:
    context = _current.get()
    return context.request_id if context is not None else None


def note_error_code(code: str) -> None:
    """Remember the error code the current request is answered with (logs, metrics)."""
    context = _current.get()
    if context is not None:
        context.error_code = code


def note_incomplete(code: str) -> None:
    """The current request's response ended early, for ``code``'s reason (logs, metrics)."""
    context = _current.get()
    if context is not None:
        context.error_code = code
        context.incomplete = True


def redact(text: str) -> str:
    """``text`` with passwords inside URLs masked."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


class RequestIdFilter(logging.Filter):
    """Tags each record with the id of the request it was written for, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            entry.update(_uvicorn_access_fields(record.args))
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key not in entry and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _uvicorn_access_fields(args: tuple[Any, ...]) -> dict[str, Any]:
    """uvicorn's access records carry (client, method, path, http version, status)."""
    if len(args) != 5:
        return {}
    client, method, path, _version, status = args
    return {"client": client, "method": method, "path": path, "status": status}


def logging_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the service and uvicorn, JSON lines on stderr."""
    level = level.upper()
    handler = {"handlers": ["stderr"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
                "filters": ["request_id"],
            }
        },
        "loggers": {
            "filesvc": handler,
            "uvicorn": handler,
            "uvicorn.error": {"level": level},
            "uvicorn.access": handler,
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
