"""API keys and scopes: every /api/v1 route × no key, a wrong key, each scope, both headers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from filesvc import auth
from filesvc.app import create_app
from filesvc.config import SCOPES, Settings
from filesvc.keys import KeyRing
from filesvc.routemap import effective_routes
from tests.conftest import ServerFactory
from tests.images import make_image
from tests.servers import LiveServer


@dataclass(frozen=True, slots=True)
class ApiRoute:
    method: str
    path: str
    scopes: tuple[str, ...]


def api_routes(app: FastAPI) -> list[ApiRoute]:
    """Each method and path under ``/api/`` with the scopes it declares."""
    return [
        ApiRoute(method, route.path, tuple(auth.declared_scopes(route)))
        for route in effective_routes(app)
        if (getattr(route, "path", None) or "").startswith("/api/")
        for method in sorted(getattr(route, "methods", None) or ())
    ]


KEYS = {
    "write-3f9c1e0b7a": ["files:write"],
    "read-8d2a6c4f1e": ["files:read"],
    "exports-5b7e9d3c2a": ["exports:read"],
    "admin-1c4e7a9f0d": ["admin"],
}
KEY_OF = {scopes[0]: key for key, scopes in KEYS.items()}
ADMIN_KEY = KEY_OF["admin"]

#: The scope each API route needs. A route missing here fails
#: test_every_api_route_is_in_the_matrix, so the matrix stays complete.
ROUTE_SCOPES: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/files"): "files:write",
    ("POST", "/api/v1/files/batch"): "files:write",
    ("GET", "/api/v1/files"): "files:read",
    ("GET", "/api/v1/files/{file_id}"): "files:read",
    ("DELETE", "/api/v1/files/{file_id}"): "files:write",
    ("POST", "/api/v1/files/{file_id}/signed-url"): "files:read",
    ("GET", "/api/v1/exports"): "exports:read",
    ("GET", "/api/v1/exports/{name}.csv"): "exports:read",
    ("GET", "/api/v1/exports/{name}.parquet"): "exports:read",
    ("HEAD", "/api/v1/exports"): "exports:read",
    ("HEAD", "/api/v1/exports/{name}.csv"): "exports:read",
    ("HEAD", "/api/v1/exports/{name}.parquet"): "exports:read",
    ("OPTIONS", "/api/v1/uploads"): "files:write",
    ("POST", "/api/v1/uploads"): "files:write",
    ("OPTIONS", "/api/v1/uploads/{upload_id}"): "files:write",
    ("HEAD", "/api/v1/uploads/{upload_id}"): "files:write",
    ("PATCH", "/api/v1/uploads/{upload_id}"): "files:write",
    ("DELETE", "/api/v1/uploads/{upload_id}"): "files:write",
}


# Keys are checked before any database or storage work: SQLite and disk suffice.
pytestmark = pytest.mark.embedded


def test_every_api_route_is_in_the_matrix(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"api_keys": KEYS}))
    routes = api_routes(app)
    assert routes
    for route in routes:
        assert (route.method, route.path) in ROUTE_SCOPES, f"add {route} to ROUTE_SCOPES"
        assert route.scopes == (ROUTE_SCOPES[route.method, route.path],)


Call = Callable[[httpx.Client, dict[str, str]], httpx.Response]
TUS_CREATE = {"Tus-Resumable": "1.0.0", "Upload-Length": "10"}
TUS_PATCH = {
    "Tus-Resumable": "1.0.0",
    "Upload-Offset": "0",
    "Content-Type": "application/offset+octet-stream",
}


def _upload(client: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    files = {"file": ("a.png", make_image("image/png"), "image/png")}
    return client.post("/api/v1/files", files=files, headers=headers)


def _calls(file_id: str) -> dict[tuple[str, str], Call]:
    png = make_image("image/png")
    return {
        ("POST", "/api/v1/files"): _upload,
        ("POST", "/api/v1/files/batch"): lambda c, h: c.post(
            "/api/v1/files/batch", files=[("file", ("b.png", png, "image/png"))], headers=h
        ),
        ("GET", "/api/v1/files"): lambda c, h: c.get("/api/v1/files", headers=h),
        ("GET", "/api/v1/files/{file_id}"): lambda c, h: c.get(
            f"/api/v1/files/{file_id}", headers=h
        ),
        ("DELETE", "/api/v1/files/{file_id}"): lambda c, h: c.delete(
            f"/api/v1/files/{file_id}", headers=h
        ),
        ("POST", "/api/v1/files/{file_id}/signed-url"): lambda c, h: c.post(
            f"/api/v1/files/{file_id}/signed-url", headers=h
        ),
        ("GET", "/api/v1/exports"): lambda c, h: c.get("/api/v1/exports", headers=h),
        ("GET", "/api/v1/exports/{name}.csv"): lambda c, h: c.get(
            "/api/v1/exports/files.csv", headers=h
        ),
        ("GET", "/api/v1/exports/{name}.parquet"): lambda c, h: c.get(
            "/api/v1/exports/files.parquet", headers=h
        ),
        ("HEAD", "/api/v1/exports"): lambda c, h: c.head("/api/v1/exports", headers=h),
        ("HEAD", "/api/v1/exports/{name}.csv"): lambda c, h: c.head(
            "/api/v1/exports/files.csv", headers=h
        ),
        ("HEAD", "/api/v1/exports/{name}.parquet"): lambda c, h: c.head(
            "/api/v1/exports/files.parquet", headers=h
        ),
        ("OPTIONS", "/api/v1/uploads"): lambda c, h: c.options("/api/v1/uploads", headers=h),
        ("POST", "/api/v1/uploads"): lambda c, h: c.post(
            "/api/v1/uploads", headers={**h, **TUS_CREATE}
        ),
        ("OPTIONS", "/api/v1/uploads/{upload_id}"): lambda c, h: c.options(
            f"/api/v1/uploads/{file_id}", headers=h
        ),
        ("HEAD", "/api/v1/uploads/{upload_id}"): lambda c, h: c.head(
            f"/api/v1/uploads/{file_id}", headers={**h, "Tus-Resumable": "1.0.0"}
        ),
        ("PATCH", "/api/v1/uploads/{upload_id}"): lambda c, h: c.patch(
            f"/api/v1/uploads/{file_id}", headers={**h, **TUS_PATCH}, content=b"x"
        ),
        ("DELETE", "/api/v1/uploads/{upload_id}"): lambda c, h: c.delete(
            f"/api/v1/uploads/{file_id}", headers={**h, "Tus-Resumable": "1.0.0"}
        ),
    }


def _header_forms(key: str) -> list[dict[str, str]]:
    return [{"Authorization": f"Bearer {key}"}, {"X-API-Key": key}]


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    if response.request.method == "HEAD":
        return  # no body to read the code from
    assert response.json()["error"]["code"] == code


@pytest.fixture
def keyed(make_server: ServerFactory) -> LiveServer:
    return make_server(api_keys=KEYS)


@pytest.mark.parametrize("route", sorted(ROUTE_SCOPES), ids=" ".join)
def test_scope_matrix(keyed: LiveServer, route: tuple[str, str]) -> None:
    present = {(r.method, r.path) for r in api_routes(keyed.app)}
    if route not in present:
        pytest.skip(f"{' '.join(route)} is not part of the app yet")
    needed = ROUTE_SCOPES[route]
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        uploaded = _upload(client, {"X-API-Key": ADMIN_KEY})
        assert uploaded.status_code == 201, uploaded.text
        call = _calls(uploaded.json()["id"])[route]
        rows_before = keyed.row_count()

        missing = call(client, {})
        _assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        for wrong in (*_header_forms("not-a-key"), *_header_forms(ADMIN_KEY + "x")):
            response = call(client, wrong)
            _assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
        # A refused write stored nothing.
        assert keyed.row_count() == rows_before

        for scope in SCOPES:
            for headers in _header_forms(KEY_OF[scope]):
                response = call(client, headers)
                if scope in (needed, "admin"):
                    assert response.status_code not in (401, 403), (scope, response.text)
                    assert response.status_code < 500, response.text
                else:
                    _assert_error(response, 403, "forbidden")
                    if response.request.method != "HEAD":
                        assert needed in response.json()["error"]["message"]


def test_other_authorization_schemes_do_not_count(keyed: LiveServer) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        basic = client.get("/api/v1/files", auth=(ADMIN_KEY, ""))
        _assert_error(basic, 401, "unauthorized")
        empty = client.get("/api/v1/files", headers={"Authorization": "Bearer"})
        _assert_error(empty, 401, "unauthorized")


def test_two_different_keys_are_refused(keyed: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-API-Key": KEY_OF["files:read"]}
    with httpx.Client(base_url=keyed.url) as client:
        _assert_error(client.get("/api/v1/files", headers=headers), 401, "unauthorized")
        same = {"Authorization": f"Bearer {ADMIN_KEY}", "X-API-Key": ADMIN_KEY}
        assert client.get("/api/v1/files", headers=same).status_code == 200


def test_an_unauthorised_upload_stores_nothing(keyed: LiveServer) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        for headers in ({}, {"X-API-Key": KEY_OF["files:read"]}):
            response = client.post(
                "/api/v1/files?filename=a.png", content=make_image("image/png"), headers=headers
            )
            assert response.status_code in (401, 403)
    assert keyed.stored_paths() == []
    assert keyed.row_count() == 0


def test_public_routes_need_no_key(keyed: LiveServer) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        for path in ("/", "/static/index.html", "/healthz", "/readyz", "/docs", "/openapi.json"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
        assert client.get("/metrics").status_code == 200
        uploaded = _upload(client, {"X-API-Key": KEY_OF["files:write"]}).json()
        for url in (uploaded["url"], f"/files/{uploaded['id']}"):
            static = client.get(url)
            assert static.status_code == 200, static.text
            assert static.content == make_image("image/png")
        private = client.post(
            "/api/v1/files?filename=p.png&visibility=private",
            content=make_image("image/png"),
            headers={"X-API-Key": KEY_OF["files:write"]},
        ).json()
        # A private file needs its signature, never a key.
        refused = client.get(private["url"], headers={"X-API-Key": ADMIN_KEY})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "signature_required"
        signed = client.post(
            f"/api/v1/files/{private['id']}/signed-url", headers={"X-API-Key": KEY_OF["files:read"]}
        ).json()
        assert client.get(signed["url"]).status_code == 200


def test_open_without_keys(server: LiveServer, client: httpx.Client) -> None:
    assert _upload(client, {}).status_code == 201
    assert client.get("/api/v1/files").status_code == 200
    # Without keys configured, credentials are ignored rather than checked.
    assert client.get("/api/v1/files", headers={"X-API-Key": "anything"}).status_code == 200


def test_an_open_service_warns_loudly(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="filesvc"):
        auth.warn_if_open(settings)
        auth.warn_if_open(settings.model_copy(update={"api_keys": KEYS}))
    [record] = [r for r in caplog.records if "FILESVC_API_KEYS" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "OPEN" in record.getMessage()


def test_openapi_declares_the_security_schemes(keyed: LiveServer) -> None:
    with httpx.Client(base_url=keyed.url) as client:
        schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"]["type"] == "apiKey"
    assert schemes["apiKey"]["in"] == "header"
    assert schemes["apiKey"]["name"] == "X-API-Key"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/api/"):
                needed = ROUTE_SCOPES[method.upper(), path]
                assert operation["security"] == [{"bearer": [needed]}, {"apiKey": [needed]}]
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            else:
                assert "security" not in operation, (method, path)


# Fail closed: a route that forgets its scope is refused, at start-up and at run time.


def _get(app: FastAPI, path: str, key: str | None = None) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, headers={"X-API-Key": key} if key else {})

    return asyncio.run(run())


def _app(*, scoped: bool, through_api_router: bool = True) -> FastAPI:
    app = FastAPI()
    app.state.resources = SimpleNamespace(keyring=KeyRing(KEYS))
    api = auth.api_router() if through_api_router else FastAPI().router
    dependencies: list[Any] = [auth.require("files:read")] if scoped else []

    @api.get("/api/v1/new" if not through_api_router else "/new", dependencies=dependencies)
    async def new() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(api)
    return app


def test_a_route_without_a_scope_stops_start_up() -> None:
    auth.check_routes(_app(scoped=True))
    with pytest.raises(RuntimeError, match="declares no scope"):
        auth.check_routes(_app(scoped=False))
    with pytest.raises(RuntimeError, match="not included in auth.api_router"):
        auth.check_routes(_app(scoped=True, through_api_router=False))


def test_a_route_without_a_scope_is_refused_at_run_time() -> None:
    from filesvc.handlers import install_error_handlers

    # Built without the start-up check (or added after it): refused, whatever the key.
    app = _app(scoped=False)
    install_error_handlers(app)
    _assert_error(_get(app, "/api/v1/new", ADMIN_KEY), 403, "forbidden")
    app = _app(scoped=True)
    install_error_handlers(app)
    _assert_error(_get(app, "/api/v1/new", ADMIN_KEY), 403, "forbidden")

    auth.check_routes(app)
    _assert_error(_get(app, "/api/v1/new"), 401, "unauthorized")
    assert _get(app, "/api/v1/new", ADMIN_KEY).status_code == 200


def test_a_subrouter_can_declare_its_scope_on_inclusion() -> None:
    from fastapi import APIRouter

    from filesvc.handlers import install_error_handlers

    sub = APIRouter(prefix="/things")

    @sub.get("")
    async def things() -> list[str]:
        return []

    app = FastAPI()
    install_error_handlers(app)
    app.state.resources = SimpleNamespace(keyring=KeyRing(KEYS))
    api = auth.api_router()
    api.include_router(sub, dependencies=[auth.require("exports:read")])
    app.include_router(api)
    auth.check_routes(app)
    assert [(r.path, r.scopes) for r in api_routes(app)] == [("/api/v1/things", ("exports:read",))]
    assert _get(app, "/api/v1/things", ADMIN_KEY).status_code == 200
    assert _get(app, "/api/v1/things", KEY_OF["exports:read"]).status_code == 200
    _assert_error(_get(app, "/api/v1/things", KEY_OF["files:read"]), 403, "forbidden")


def test_keyring_lookup() -> None:
    ring = KeyRing(KEYS)
    assert not ring.is_open
    assert KeyRing({}).is_open
    for key, scopes in KEYS.items():
        principal = ring.lookup(key)
        assert principal is not None and principal.scopes == frozenset(scopes)
        assert principal.key_id is not None and principal.key_id not in key
    for guess in ("", ADMIN_KEY[:-1], ADMIN_KEY + " ", ADMIN_KEY.upper(), "\udcff"):
        assert ring.lookup(guess) is None
    admin = ring.lookup(ADMIN_KEY)
    assert admin is not None and all(admin.allows(scope) for scope in SCOPES)
    with pytest.raises(ValueError):
        auth.require("files:everything")
