"""CORS for FILESVC_CORS_ORIGINS only, and the optional trusted-host check (filesvc/origins.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.images import make_image
from tests.servers import LiveServer

ORIGIN = "https://app.example.com"
KEY = "cors-admin-key-7d1f"


pytestmark = pytest.mark.embedded


@pytest.fixture
def cors(make_server: ServerFactory) -> LiveServer:
    return make_server(cors_origins=[ORIGIN], api_keys={KEY: ["admin"]})


def preflight(
    client: httpx.Client, path: str, origin: str, method: str, headers: str | None = None
) -> httpx.Response:
    request_headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        request_headers["Access-Control-Request-Headers"] = headers
    return client.options(path, headers=request_headers)


def _listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def test_preflight_allowed(cors: LiveServer) -> None:
    with httpx.Client(base_url=cors.url) as client:
        for method, path, headers in (
            ("POST", "/api/v1/files", "authorization, content-type, repr-digest"),
            ("POST", "/api/v1/files/batch", "x-api-key"),
            ("DELETE", "/api/v1/files/abc", "authorization"),
            ("GET", "/files/abc/a.png", "range, if-none-match"),
        ):
            response = preflight(client, path, ORIGIN, method, headers)
            assert response.status_code == 200, response.text
            assert response.headers["access-control-allow-origin"] == ORIGIN
            assert method.lower() in _listed(response.headers["access-control-allow-methods"])
            allowed = _listed(response.headers["access-control-allow-headers"])
            assert _listed(headers) <= allowed
            assert "origin" in _listed(response.headers["vary"])
            # The key is a header, not a cookie: no credentials mode.
            assert "access-control-allow-credentials" not in response.headers


def test_preflight_refused(cors: LiveServer) -> None:
    with httpx.Client(base_url=cors.url) as client:
        for origin, method, headers in (
            ("https://evil.example.com", "POST", "authorization"),
            ("https://app.example.com.evil.com", "GET", None),
            ("http://app.example.com", "GET", None),  # another scheme is another origin
            ("null", "POST", None),
            (ORIGIN, "PUT", None),
            (ORIGIN, "POST", "x-evil-header"),
        ):
            response = preflight(client, "/api/v1/files", origin, method, headers)
            assert response.status_code == 400, (origin, method, headers)
            assert response.json()["error"]["code"] == "cors_refused"
            if origin != ORIGIN:
                assert "access-control-allow-origin" not in response.headers


def test_cross_origin_requests(cors: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=cors.url) as client:
        uploaded = client.post(
            "/api/v1/files?filename=a.png",
            content=make_image("image/png"),
            headers={"Origin": ORIGIN, **auth},
        )
        assert uploaded.status_code == 201
        assert uploaded.headers["access-control-allow-origin"] == ORIGIN
        exposed = _listed(uploaded.headers["access-control-expose-headers"])
        assert {"location", "x-request-id", "content-range", "etag"} <= exposed

        # Errors carry the CORS headers too, so the page can read the JSON error.
        refused = client.get("/api/v1/files", headers={"Origin": ORIGIN})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ORIGIN

        other = client.get("/api/v1/files", headers={"Origin": "https://evil.example.com", **auth})
        assert other.status_code == 200  # the browser, not the server, withholds the answer
        assert "access-control-allow-origin" not in other.headers


def test_no_cors_when_unconfigured(server: LiveServer, client: httpx.Client) -> None:
    response = client.get("/api/v1/files", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert not [name for name in response.headers if name.startswith("access-control-")]
    response = preflight(client, "/api/v1/files", ORIGIN, "POST", "authorization")
    assert response.status_code == 405
    assert not [name for name in response.headers if name.startswith("access-control-")]


# Trusted hosts


def test_trusted_hosts(make_server: ServerFactory) -> None:
    server = make_server(trusted_hosts=["files.example.com", "*.cdn.example.net"])
    with httpx.Client(base_url=server.url) as client:
        for host in ("files.example.com", "files.example.com:8000", "a.cdn.example.net"):
            assert client.get("/api/v1/files", headers={"Host": host}).status_code == 200, host
        for host in (
            "evil.example.com",
            "files.example.com.evil.com",
            "cdn.example.net",
            "127.0.0.1",
        ):
            response = client.get("/api/v1/files", headers={"Host": host})
            assert response.status_code == 400, host
            assert response.json()["error"]["code"] == "invalid_host"
        # Probes and scrapers reach pods by address.
        assert client.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200


def test_any_host_when_unconfigured(client: httpx.Client) -> None:
    assert client.get("/api/v1/files", headers={"Host": "anything.example"}).status_code == 200


# Stock upload libraries, as they send by default (issue 16)

#: Request headers each library sends by default, as its preflight lists them.
STOCK_UPLOADERS = {
    # Dropzone 6: every upload, XMLHttpRequest with FormData.
    "dropzone": ("POST", "/api/v1/files", "cache-control, x-requested-with"),
    # Uppy's XHRUpload with our recipe's header, and FilePond with an API key.
    "uppy-xhr": ("POST", "/api/v1/files", "authorization"),
    "filepond": ("POST", "/api/v1/files", "x-api-key"),
    # tus-js-client 4 (and Uppy's Tus plugin): creation, then PATCHes, HEAD to resume.
    "tus-create": (
        "POST",
        "/api/v1/uploads",
        "tus-resumable, upload-length, upload-metadata, upload-concat, upload-defer-length",
    ),
    "tus-patch": (
        "PATCH",
        "/api/v1/uploads/abc",
        "content-type, tus-resumable, upload-offset, upload-checksum",
    ),
    "tus-resume": ("HEAD", "/api/v1/uploads/abc", "tus-resumable"),
    "tus-terminate": ("DELETE", "/api/v1/uploads/abc", "tus-resumable"),
}


@pytest.mark.parametrize("uploader", sorted(STOCK_UPLOADERS))
def test_preflight_allows_stock_uploaders(cors: LiveServer, uploader: str) -> None:
    method, path, headers = STOCK_UPLOADERS[uploader]
    with httpx.Client(base_url=cors.url) as client:
        response = preflight(client, path, ORIGIN, method, headers)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert method.lower() in _listed(response.headers["access-control-allow-methods"])
    assert _listed(headers) <= _listed(response.headers["access-control-allow-headers"])


def test_stock_uploader_headers_only_for_configured_origins(cors: LiveServer) -> None:
    with httpx.Client(base_url=cors.url) as client:
        response = preflight(
            client, "/api/v1/files", "https://evil.example.com", "POST", "x-requested-with"
        )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_exposes_what_uploaders_read(cors: LiveServer) -> None:
    with httpx.Client(base_url=cors.url) as client:
        response = client.get("/api/v1/files", headers={"Origin": ORIGIN, "X-API-Key": KEY})
    exposed = _listed(response.headers["access-control-expose-headers"])
    assert {
        "location",
        "etag",
        "retry-after",
        "x-request-id",
        "tus-resumable",
        "tus-version",
        "tus-extension",
        "tus-max-size",
        "upload-offset",
        "upload-length",
        "upload-expires",
        "upload-metadata",
    } <= exposed


def test_refusals_carry_no_retry_after(make_server: ServerFactory) -> None:
    """A 4xx refusal says "do not retry": no Retry-After that a client could obey."""
    server = make_server(cors_origins=[ORIGIN], max_upload_bytes=1000)
    headers = {"Origin": ORIGIN}
    with httpx.Client(base_url=server.url, headers=headers) as client:
        refused = {
            415: client.post("/api/v1/files", files={"file": ("a.png", b"not an image")}),
            413: client.post(
                "/api/v1/files", files={"file": ("b.png", make_image(noise=True, size=(80, 80)))}
            ),
            404: client.get("/api/v1/files/nope"),
            400: client.get("/api/v1/files?limit=0"),
        }
    for status, response in refused.items():
        assert response.status_code == status, response.text
        assert "retry-after" not in response.headers, status
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert response.json()["error"]["message"]
