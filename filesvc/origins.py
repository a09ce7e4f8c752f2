"""Who may talk to the service from where: CORS origins and trusted ``Host`` names.

Both are off unless configured: no CORS header at all without
``FILESVC_CORS_ORIGINS``, any ``Host`` without ``FILESVC_TRUSTED_HOSTS``.
Their refusals are the spec's JSON error, like every other error.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from filesvc.config import Settings, check_host_pattern
from filesvc.errors import error_body

#: Methods the web page, API clients and tus clients use across origins.
CORS_METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE")
#: Request headers a cross-origin page may send (CORS-safelisted ones come on top):
#: ours, then what stock upload libraries send by default, so that Uppy, Dropzone,
#: FilePond and tus-js-client work without client-side changes.
CORS_REQUEST_HEADERS = (
    "Authorization",
    "X-API-Key",
    "Content-Type",
    "Repr-Digest",
    "Range",
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
    "If-Range",
    "X-Request-ID",
    # Dropzone (and jQuery-era uploaders) send these on every upload.
    "X-Requested-With",
    "Cache-Control",
    "Accept",
    # tus 1.0.0 (tus-js-client, Uppy's Tus plugin).
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Checksum",
    "Upload-Concat",
    "Upload-Defer-Length",
    "X-HTTP-Method-Override",
)
#: Response headers a cross-origin page may read.
CORS_EXPOSED_HEADERS = (
    "Location",
    "X-Request-ID",
    "Content-Range",
    "Content-Disposition",
    "ETag",
    "Last-Modified",
    "Accept-Ranges",
    "Repr-Digest",
    "Retry-After",
    "WWW-Authenticate",
    # tus: tus-js-client reads the offset, length and expiry of an upload.
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
)
#: Seconds a browser may cache a preflight answer.
CORS_MAX_AGE = 600
#: Paths answered whatever the Host: probes and scrapers address pods by IP.
HOST_EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class CORS(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as the spec's JSON error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode("utf-8", "replace")
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.startswith("access-control-") or name == "vary"
        }
        return JSONResponse(
            error_body("cors_refused", f"{reason}: this cross-origin request is not allowed."),
            status_code=response.status_code,
            headers=headers,
        )


def _host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port: ``[::1]:80`` → ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class TrustedHosts:
    """Refuse requests whose ``Host`` is not one of ``hosts`` (``*.example.com`` allowed)."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        for pattern in hosts:
            check_host_pattern(pattern)
        self.app = app
        self.hosts = [h.lower() for h in hosts]

    def allows(self, host: str) -> bool:
        return any(
            host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
            for pattern in self.hosts
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in HOST_EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        host = _host_name(Headers(scope=scope).get("host", ""))
        if host and self.allows(host):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            error_body("invalid_host", "The Host header names no host this service answers."),
            status_code=400,
        )
        await response(scope, receive, send)


def install_origins(app: FastAPI, settings: Settings) -> None:
    """CORS and the Host check, each only when configured."""
    if settings.cors_origins:
        app.add_middleware(
            CORS,
            allow_origins=settings.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=CORS_MAX_AGE,
        )
    if settings.trusted_hosts:
        app.add_middleware(TrustedHosts, hosts=settings.trusted_hosts)
