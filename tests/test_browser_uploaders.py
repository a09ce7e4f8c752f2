"""The README's recipes for stock upload widgets, run in Chromium from another origin.

Each recipe is taken from README.md as written (between ``<!-- recipe: NAME -->``
and the end of its code block), with the service's URL and key put in, and
served with the library's ``dist/`` files by a second local HTTP server: the
page's origin is not the service's, so every request goes through CORS with
``FILESVC_CORS_ORIGINS`` set, as on a customer's site. The libraries come from
npm (``tests/js/package.json``; ``.ci/run`` installs them).

What each test proves: a real image is stored (through the widget, checked in
the API), and a refused file shows the service's JSON ``message`` (not
"network error" nor "[object Object]") after exactly one request.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, FilePayload, Page

from tests.browser import DESKTOP, PageWatch, chromium, watch  # noqa: F401
from tests.conftest import ServerFactory, require
from tests.images import make_image
from tests.servers import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "tests" / "js" / "node_modules"
KEY = "uploader-key-5b7e"
#: What the recipes say, and what the test puts in their place.
EXAMPLE_SERVICE = "https://files.example.com"
EXAMPLE_KEY = "your-key"
#: The dist/ files each recipe loads, from tests/js/node_modules.
ASSETS = {
    "uppy-xhr": ["uppy/dist/uppy.min.mjs", "uppy/dist/uppy.min.css"],
    "uppy-tus": ["uppy/dist/uppy.min.mjs", "uppy/dist/uppy.min.css"],
    "dropzone": ["dropzone/dist/dropzone-min.js", "dropzone/dist/dropzone.css"],
    "filepond": ["filepond/dist/filepond.min.js", "filepond/dist/filepond.min.css"],
}
NOT_AN_IMAGE = b"plain text, whatever the name says\n" * 10


def recipe(name: str) -> str:
    """The code block under ``<!-- recipe: name -->`` in README.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- recipe: {re.escape(name)} -->\n```html\n(.*?)\n```", readme, re.S)
    assert found, f"README.md has no recipe {name!r}"
    return found.group(1)


class _Quiet(SimpleHTTPRequestHandler):
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
    }

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OtherOrigin:
    """A plain static HTTP server on another port: another origin than the service."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        handler = partial(_Quiet, directory=str(directory))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, name: str, service: LiveServer) -> str:
        """Write the recipe's page next to its library files; its URL."""
        require(
            NODE_MODULES.is_dir(),
            "the uploaders' npm packages are missing: npm ci --prefix tests/js",
        )
        for asset in ASSETS[name]:
            shutil.copy(NODE_MODULES / asset, self.directory / Path(asset).name)
        code = recipe(name).replace(EXAMPLE_SERVICE, service.url).replace(EXAMPLE_KEY, KEY)
        head = '<!doctype html>\n<meta charset="utf-8">\n<link rel="icon" href="data:,">\n'
        page = f"{head}<title>{name}</title>\n{code}\n"
        (self.directory / f"{name}.html").write_text(page, encoding="utf-8")
        return f"{self.url}/{name}.html"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[OtherOrigin]:
    site = tmp_path / "site"
    site.mkdir()
    served = OtherOrigin(site)
    yield served
    served.close()


@pytest.fixture
def service(make_server: ServerFactory, origin: OtherOrigin) -> LiveServer:
    return make_server(cors_origins=[origin.url], api_keys={KEY: ["files:write", "files:read"]})


@pytest.fixture
def tab(browser: Browser) -> Iterator[PageWatch]:
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(15_000)
    yield watch(context.new_page())
    context.close()


def refusal(service: LiveServer) -> str:
    """The service's own message for a file that is not an image."""
    with httpx.Client(base_url=service.url, headers={"X-API-Key": KEY}, timeout=30) as client:
        response = client.post("/api/v1/files", files={"file": ("notes.png", NOT_AN_IMAGE)})
    assert response.status_code == 415
    message: str = response.json()["error"]["message"]
    return message


def stored(service: LiveServer) -> list[str]:
    with httpx.Client(base_url=service.url, headers={"X-API-Key": KEY}, timeout=30) as client:
        response = client.get("/api/v1/files")
    assert response.status_code == 200
    return [item["filename"] for item in response.json()["items"]]


def upload_requests(page: Page, service: LiveServer, path: str) -> list[str]:
    """Every request the page sends to ``path`` of the service (preflights too)."""
    seen: list[str] = []
    target = service.url + path

    def on_request(request: Any) -> None:
        if request.url.split("?")[0].rstrip("/").startswith(target):
            seen.append(request.method)

    page.on("request", on_request)
    return seen


def without_uppy_log(tab: PageWatch, message: str) -> None:
    """Uppy logs each failed upload to the console: that line is expected."""
    tab.console_errors = [
        line for line in tab.console_errors if not (line.startswith("[Uppy]") and message in line)
    ]


def open_refusing(
    tab: PageWatch,
    service: LiveServer,
    origin: OtherOrigin,
    name: str,
    path: str = "/api/v1/files",
) -> tuple[Page, str, list[str]]:
    """Recipe ``name``'s page, the service's message for a non-image, and the
    methods of the requests the page sends to ``path``."""
    message = refusal(service)
    page = tab.page
    sent = upload_requests(page, service, path)
    page.goto(origin.publish(name, service))
    return page, message, sent


def assert_refused(tab: PageWatch, service: LiveServer, message: str) -> None:
    """Nothing stored, and no console error but the refusal's own (and Uppy's log of it)."""
    assert stored(service) == []
    without_uppy_log(tab, message)
    tab.assert_no_errors(415)


def png(name: str) -> FilePayload:
    return {"name": name, "mimeType": "image/png", "buffer": make_image()}


def text_as_png(name: str) -> FilePayload:
    return {"name": name, "mimeType": "image/png", "buffer": NOT_AN_IMAGE}


# ------------------------------------------------------ an image, each widget


def uppy_add_and_upload(page: Page, file: FilePayload) -> None:
    page.locator("input.uppy-Dashboard-input").first.set_input_files([file])
    page.get_by_role("button", name=re.compile(r"^Upload \d+ file")).click()


def upload_through(page: Page, name: str, file: FilePayload) -> None:
    """Give recipe ``name``'s widget a file, and wait until the widget says it is stored."""
    if name.startswith("uppy-"):
        uppy_add_and_upload(page, file)
        page.get_by_text("Complete", exact=True).wait_for()
    elif name == "dropzone":
        page.locator("input.dz-hidden-input").set_input_files([file])
        page.locator(".dz-preview.dz-success").wait_for()
    else:
        page.locator("input.filepond--browser").set_input_files([file])
        page.locator(".filepond--file-status-main", has_text="Upload complete").wait_for()


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("uppy-xhr", "uppy.png"),
        ("uppy-tus", "resumable.png"),
        ("dropzone", "dropped.png"),
        ("filepond", "pond.png"),
    ],
)
def test_recipe_upload(
    tab: PageWatch, service: LiveServer, origin: OtherOrigin, name: str, filename: str
) -> None:
    """Each widget stores an image; Uppy's XHRUpload to /api/v1/files, and its Tus to
    /api/v1/uploads (issue 18)."""
    page = tab.page
    page.goto(origin.publish(name, service))
    upload_through(page, name, png(filename))
    assert stored(service) == [filename]
    tab.assert_no_errors()


# ---------------------------------------------------------------------- Uppy


def test_uppy_xhr_shows_our_message_and_never_retries_a_4xx(
    tab: PageWatch, service: LiveServer, origin: OtherOrigin
) -> None:
    page, message, posts = open_refusing(tab, service, origin, "uppy-xhr")
    uppy_add_and_upload(page, text_as_png("notes.png"))
    # The Dashboard puts the reason on the failed file's "?" (its tooltip and name).
    page.get_by_role("button", name=message, exact=True).wait_for()
    assert "network error" not in page.inner_text("body").lower()
    page.wait_for_timeout(2000)  # Uppy's retries would all have come within 1.2 s
    assert [m for m in posts if m == "POST"] == ["POST"]
    assert_refused(tab, service, message)


def test_uppy_tus_shows_our_message_and_never_retries_a_4xx(
    tab: PageWatch, service: LiveServer, origin: OtherOrigin
) -> None:
    """Needs tus at /api/v1/uploads (issue 18): 415 from the first bytes of a PATCH."""
    page, message, sent = open_refusing(tab, service, origin, "uppy-tus", "/api/v1/uploads")
    uppy_add_and_upload(page, text_as_png("notes.png"))
    page.get_by_role("button", name=message, exact=True).wait_for()
    page.wait_for_timeout(2000)
    # One creation (with the bytes, or then one PATCH): no retry of the refusal.
    assert sent.count("POST") == 1
    assert sent.count("PATCH") <= 1
    assert_refused(tab, service, message)


# ------------------------------------------------------- Dropzone and FilePond


def test_dropzone_shows_our_message(
    tab: PageWatch, service: LiveServer, origin: OtherOrigin
) -> None:
    page, message, posts = open_refusing(tab, service, origin, "dropzone")
    # A text file as such: Dropzone's own thumbnailer would fail on a fake .png
    # and race our message with its "Failed to load the image".
    notes: FilePayload = {"name": "notes.txt", "mimeType": "text/plain", "buffer": NOT_AN_IMAGE}
    page.locator("input.dz-hidden-input").set_input_files([notes])
    shown = page.locator(".dz-preview.dz-error [data-dz-errormessage]")
    shown.wait_for()
    assert shown.inner_text() == message  # not "[object Object]"
    page.wait_for_timeout(1000)
    assert posts == ["POST"]
    assert_refused(tab, service, message)


def test_filepond_shows_our_message(
    tab: PageWatch, service: LiveServer, origin: OtherOrigin
) -> None:
    page, message, posts = open_refusing(tab, service, origin, "filepond")
    page.locator("input.filepond--browser").set_input_files([text_as_png("notes.png")])
    page.locator(".filepond--file-status-main", has_text=message).wait_for()
    page.wait_for_timeout(1000)
    assert posts == ["POST"]
    assert_refused(tab, service, message)
