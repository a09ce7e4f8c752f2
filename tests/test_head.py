"""``HEAD`` wherever ``GET`` works (filesvc/head.py), generated from the app's own routes.

The list of URLs is built from the route table of the app under test (every
route that answers ``GET``, in the OpenAPI schema or not, plus every file of
the static mount), so a new route is covered the day it is added: a path
parameter this test does not know fails it, naming the route.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount

from filesvc.app import create_app, static_dir
from filesvc.routemap import effective_routes
from tests.conftest import ServerFactory
from tests.images import make_image
from tests.servers import LiveServer
from tests.waiting import eventually

KEY = "head-admin-key-31c9"
#: Headers that differ between two answers to the same request by nature.
PER_RESPONSE = {"date", "x-request-id", "content-disposition", "transfer-encoding", "server"}
#: Pages whose body changes from one request to the next (the counters move).
LIVE_PAGES = {"/metrics"}
_PARAMETER = re.compile(r"{([a-z_]+)(?::[a-z]+)?}")


pytestmark = pytest.mark.embedded


@pytest.fixture
def keyed(make_server: ServerFactory) -> LiveServer:
    return make_server(api_keys={KEY: ["admin"]})


@pytest.fixture
def http(keyed: LiveServer) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": KEY}
    with httpx.Client(base_url=keyed.url, headers=headers, timeout=60) as client:
        yield client


def get_urls(server: LiveServer, values: dict[str, dict[str, str]]) -> list[str]:
    """A concrete URL for every route (and static asset) that answers GET.

    ``values`` maps a path prefix to the values of its routes' parameters.
    """
    app = create_app(server.settings)
    urls: list[str] = []
    for route in effective_routes(app):
        if isinstance(getattr(route, "original_route", route), Mount):
            assert route.path == "/static", f"a mount this test does not know: {route.path}"
            assets = sorted(p for p in static_dir().rglob("*") if p.is_file())
            urls += [f"/static/{p.relative_to(static_dir()).as_posix()}" for p in assets]
            continue
        if "GET" not in (getattr(route, "methods", None) or ()):
            continue
        path = str(route.path)
        known = next((v for prefix, v in values.items() if path.startswith(prefix)), {})
        unknown = set(_PARAMETER.findall(path)) - set(known)
        assert not unknown, f"{path}: give test_head.py a value for {unknown}"
        urls.append(_PARAMETER.sub(partial(_value, known), path))
    return urls


def _value(known: dict[str, str], match: re.Match[str]) -> str:
    return known[match.group(1)]


def comparable(url: str, response: httpx.Response) -> dict[str, str]:
    ignored = PER_RESPONSE | ({"content-length"} if url in LIVE_PAGES else set())
    return {k: v for k, v in response.headers.items() if k not in ignored}


def test_every_get_route_answers_head_with_the_get_headers(
    keyed: LiveServer, http: httpx.Client
) -> None:
    uploaded = http.post("/api/v1/files", files={"file": ("a b.png", make_image())})
    assert uploaded.status_code == 201, uploaded.text
    file = uploaded.json()
    values = {
        "/api/v1/exports/": {"name": "files"},
        "/api/v1/files/": {"file_id": file["id"]},
        "/files/": {"file_id": file["id"], "name": "a%20b.png"},
    }
    urls = get_urls(keyed, values)
    # The routes the issue names, so that a broken route table cannot pass empty.
    for expected in ("/", "/api/v1/files", "/api/v1/exports", "/healthz", "/openapi.json"):
        assert expected in urls
    assert any(url.startswith("/api/v1/exports/") for url in urls)
    assert "/static/app.js" in urls
    # Every GET of the OpenAPI schema is among them.
    schema = http.get("/openapi.json").json()
    documented = [path for path, operations in schema["paths"].items() if "get" in operations]
    for path in documented:
        known = next((v for prefix, v in values.items() if path.startswith(prefix)), {})
        assert _PARAMETER.sub(partial(_value, known), path) in urls, path

    for url in urls:
        got = http.get(url)
        head = http.head(url)
        assert got.status_code == 200, (url, got.status_code, got.text[:200])
        assert head.status_code == 200, (url, head.status_code)
        assert head.content == b"", url
        if "content-length" in got.headers and url not in LIVE_PAGES:
            assert head.headers["content-length"] == str(len(got.content)), url
        assert comparable(url, head) == comparable(url, got), url


def test_head_goes_through_authentication_and_validation(
    keyed: LiveServer, http: httpx.Client
) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as anonymous:
        for url in ("/api/v1/files", "/api/v1/exports", "/api/v1/exports/files.csv"):
            assert anonymous.head(url).status_code == 401, url
            assert anonymous.get(url).status_code == 401, url
    for url, status in (
        ("/api/v1/files?limit=0", 400),
        ("/api/v1/files/nonexistent", 404),
        ("/api/v1/exports/nothing.csv", 404),
        ("/api/v1/exports/files.csv?columns=nope", 400),
    ):
        got, head = http.get(url), http.head(url)
        assert (got.status_code, head.status_code) == (status, status), url
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]


def test_methods_other_than_get_are_still_refused(http: httpx.Client) -> None:
    response = http.request("PUT", "/api/v1/files")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    # HEAD of a resource that has no GET is refused as its GET would be.
    head = http.head("/api/v1/files/abc/signed-url")
    assert head.status_code == http.get("/api/v1/files/abc/signed-url").status_code == 405
    assert head.headers["allow"] == "POST"


def test_head_of_an_export_leaves_the_service_whole(keyed: LiveServer, http: httpx.Client) -> None:
    """A HEAD of a streamed export: the CSV headers, no body, and no export left behind."""
    for number in range(3):
        http.post("/api/v1/files", files={"file": (f"{number}.png", make_image())})
    head = http.head("/api/v1/exports/files.csv")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/csv")
    assert head.content == b""
    # The export stops once the headers are out (it ends just after the answer).
    idle = re.compile(r"^filesvc_exports_in_progress(\{[^}]*\})? 0\.0$", re.M)
    eventually(lambda: idle.search(http.get("/metrics").text), "the export ends")
    for _ in range(3):
        assert http.get("/api/v1/exports/files.csv").status_code == 200


@pytest.mark.anyio
async def test_no_body_bytes_leave_the_app() -> None:
    """Below any server (uvicorn drops a HEAD body itself): the app sends none."""
    from filesvc.config import Settings

    settings = Settings(_env_file=None, data_dir=Path("/nonexistent/unused"))
    app = create_app(settings)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "HEAD",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 200
    length = dict(sent[0]["headers"])[b"content-length"]
    assert int(length) == (static_dir() / "index.html").stat().st_size
    assert [m.get("body", b"") for m in sent[1:]] == [b""]
    assert scope["method"] == "HEAD"
