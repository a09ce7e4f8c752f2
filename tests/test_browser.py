"""The web page in a real browser: Debian's chromium driven by playwright.

Every test opens ``/`` of a live server, acts as a user would (choose, drop,
type, click) and checks what the page shows against what the API and the data
directory hold. Console errors are collected and must be none, apart from the
browser's own log line for a refusal the test provoked on purpose.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageOps
from playwright.sync_api import Browser, FilePayload, Locator, Page

from tests.browser import DESKTOP, PHONE, PageWatch, chromium, screenshot, watch  # noqa: F401
from tests.conftest import ServerFactory
from tests.images import make_image
from tests.servers import LiveServer
from tests.waiting import wait_until

# The page does not care which database is behind the API (SQLite only), nor
# which storage: local disk, whose directory the tests can look into.
pytestmark = [pytest.mark.browser, pytest.mark.embedded]

ALL_SCOPES = ["files:write", "files:read", "exports:read"]
#: Bytes per second the browser may send in the cancel test, so it can be caught mid-way.
THROTTLED_UPLOAD_BYTES_PER_SECOND = 200_000


@pytest.fixture
def tab(browser: Browser) -> Iterator[PageWatch]:
    """A fresh browser context (its own sessionStorage) at desktop size."""
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(15_000)
    yield watch(context.new_page())
    context.close()


# ------------------------------------------------------------------- helpers


def gradient_image(size: tuple[int, int], start: str, end: str, kind: str = "PNG") -> bytes:
    """A diagonal two-colour gradient: pleasant thumbnails for the screenshots."""
    ramp = Image.linear_gradient("L").rotate(45, expand=True).resize(size)
    image = ImageOps.colorize(ramp, start, end)
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def payload(name: str, data: bytes, mime: str = "image/png") -> FilePayload:
    return {"name": name, "mimeType": mime, "buffer": data}


def upload_via_api(client: httpx.Client, name: str, data: bytes, **headers: str) -> dict[str, Any]:
    response = client.post(
        "/api/v1/files", files={"file": (name, data, "image/png")}, headers=headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def listed(client: httpx.Client, **headers: str) -> list[dict[str, Any]]:
    response = client.get("/api/v1/files", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def open_page(tab: PageWatch, server: LiveServer, *, clipboard: bool = False) -> Page:
    if clipboard:  # the copy buttons write to it, the tests read it back
        tab.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    tab.page.goto(server.url)
    return tab.page


def row_of(page: Page, file: dict[str, Any]) -> Locator:
    """The file's row in the page's list of recent uploads."""
    return page.locator(f"#recent .file-row[data-id='{file['id']}']")


def loaded_image(page: Page, file: dict[str, Any], condition: str) -> Locator:
    """The image of the file's row, once loaded and ``condition`` (JS, of ``img``) holds."""
    image = row_of(page, file).locator("img")
    page.wait_for_function(f"(img) => img.complete && {condition}", arg=image.element_handle())
    return image


def copy_from(page: Page, row: Locator, button: str) -> Any:
    """Click one of the row's copy buttons; what it put on the clipboard."""
    row.get_by_role("button", name=button).click()
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Copied')"
    )
    return page.evaluate("navigator.clipboard.readText()")


def upload_numbered(client: httpx.Client, count: int) -> None:
    """Small images ``file-0.png`` (the oldest) to ``file-{count - 1}.png``, each its own size."""
    for number in range(count):
        upload_via_api(client, f"file-{number}.png", make_image("image/png", (8 + number, 8)))


def wait_for_rows(page: Page, count: int) -> None:
    """Until the list of recent files shows ``count`` rows."""
    page.wait_for_function(
        "(count) => document.querySelectorAll('#recent .file-row').length === count", arg=count
    )


def pick_columns(form: Locator, *columns: str) -> None:
    """Untick every column of an export form, then tick ``columns``."""
    form.get_by_role("button", name="None").click()
    for column in columns:
        form.locator(f"input[name=column][value={column}]").check()


def wait_for_tiles(page: Page, state: str, count: int) -> None:
    page.wait_for_function(
        "([state, count]) => document.querySelectorAll("
        "`#uploads .tile[data-state=${state}]`).length === count",
        arg=[state, count],
    )


def tile_texts(page: Page, part: str) -> dict[str, str]:
    """Each upload tile's name → the text of its ``.tile-{part}`` (message, meta)."""
    names = page.locator("#uploads .tile .tile-name").all_inner_texts()
    texts = page.locator(f"#uploads .tile .tile-{part}").all_inner_texts()
    return dict(zip(names, texts, strict=True))


# --------------------------------------------------------------------- tests


def test_three_images_upload_with_progress_and_thumbnails(
    tab: PageWatch, server: LiveServer, client: httpx.Client
) -> None:
    originals = {
        "red.png": make_image("image/png", (64, 48)),
        "photo.jpg": make_image("image/jpeg", (120, 90), noise=True),
        "anim.gif": make_image("image/gif", (30, 30)),
    }
    mimes = {"red.png": "image/png", "photo.jpg": "image/jpeg", "anim.gif": "image/gif"}
    page = open_page(tab, server)
    page.set_input_files(
        "#file-input", [payload(name, data, mimes[name]) for name, data in originals.items()]
    )

    wait_for_tiles(page, "done", 3)
    assert page.locator("#uploads progress").evaluate_all("bars => bars.map(b => b.value)") == [
        100,
        100,
        100,
    ]
    page.wait_for_function(
        "() => [...document.querySelectorAll('#uploads img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length === 3"
    )
    urls = page.locator("#uploads .copy[aria-label^='Copy the URL of']").evaluate_all(
        "bs => bs.map(b => b.dataset.url)"
    )
    previews = page.locator("#uploads .copy[aria-label^='Copy the preview URL of']").evaluate_all(
        "bs => bs.map(b => b.dataset.url)"
    )
    thumbs = page.locator("#uploads img").evaluate_all("images => images.map(i => i.src)")
    names = page.locator("#uploads .tile-name").all_inner_texts()
    for name, url, preview, thumb in zip(names, urls, previews, thumbs, strict=True):
        assert url.startswith(server.url + "/files/")
        assert preview == url + "?variant=preview"
        assert thumb == url + "?variant=thumb"  # the thumbnail is a variant, not the original
        fetched = httpx.get(url, timeout=30)
        assert fetched.status_code == 200
        assert hashlib.sha256(fetched.content).digest() == hashlib.sha256(originals[name]).digest()

    stored = {item["filename"] for item in listed(client)}
    assert stored == set(originals)
    wait_for_rows(page, 3)
    tab.assert_no_errors()


def test_refusals_show_the_server_message_and_store_nothing(
    tab: PageWatch, make_server: ServerFactory
) -> None:
    server = make_server(max_upload_bytes=20_000)
    too_large = make_image("image/png", (120, 120), noise=True)
    not_an_image = b"just some text, not an image\n"
    assert len(too_large) > 20_000
    with httpx.Client(base_url=server.url, timeout=30) as client:
        expected = {
            "big.png": client.post("/api/v1/files", files={"file": ("big.png", too_large)}),
            "notes.png": client.post("/api/v1/files", files={"file": ("notes.png", not_an_image)}),
        }
        assert {n: r.status_code for n, r in expected.items()} == {
            "big.png": 413,
            "notes.png": 415,
        }
        page = open_page(tab, server)
        page.set_input_files(
            "#file-input", [payload("big.png", too_large), payload("notes.png", not_an_image)]
        )
        wait_for_tiles(page, "error", 2)

        assert tile_texts(page, "message") == {
            name: response.json()["error"]["message"] for name, response in expected.items()
        }
        assert listed(client) == []
    assert server.stored_paths() == []
    tab.assert_no_errors(413, 415)


def test_cancel_aborts_the_upload_and_stores_nothing(
    tab: PageWatch, server: LiveServer, client: httpx.Client
) -> None:
    page = open_page(tab, server)
    throttle = page.context.new_cdp_session(page)
    throttle.send("Network.enable")
    throttle.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": THROTTLED_UPLOAD_BYTES_PER_SECOND,
        },
    )
    big = make_image("image/png", (600, 600), noise=True)  # about 1 MB: five seconds
    page.set_input_files("#file-input", [payload("slow.png", big)])

    progress = page.locator("#uploads progress")
    page.wait_for_function("() => document.querySelector('#uploads progress').value >= 10")
    assert progress.evaluate("bar => bar.value") < 100  # real progress, not a jump to done
    page.get_by_role("button", name="Cancel the upload of slow.png").click()

    wait_for_tiles(page, "cancelled", 1)
    assert tile_texts(page, "message") == {"slow.png": "Cancelled."}
    assert wait_until(lambda: server.stored_paths() == []), server.stored_paths()
    assert listed(client) == []
    tab.assert_no_errors()


def test_keyboard_and_drop_both_upload(
    tab: PageWatch, server: LiveServer, client: httpx.Client
) -> None:
    page = tab.page
    # Intercepting file choosers is switched on asynchronously by the first
    # listener: switch it on now, or the Enter below may race ahead of it.
    page.on("filechooser", lambda chooser: None)
    page = open_page(tab, server)
    # Labelled controls: every input and select has a label or an aria-label.
    unlabelled = page.evaluate(
        "() => [...document.querySelectorAll('input, select')]"
        ".filter(c => c.labels.length === 0 && !c.getAttribute('aria-label')).map(c => c.id)"
    )
    assert unlabelled == []

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "dropzone"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    assert chooser.value.is_multiple()
    chooser.value.set_files([payload("typed.png", make_image())])
    wait_for_tiles(page, "done", 1)

    dropped = make_image("image/png", (20, 20))
    transfer = page.evaluate_handle(
        """(bytes) => {
            const transfer = new DataTransfer();
            const file = new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"});
            transfer.items.add(file);
            return transfer;
        }""",
        list(dropped),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    wait_for_tiles(page, "done", 2)
    assert {item["filename"] for item in listed(client)} == {"typed.png", "dropped.png"}
    tab.assert_no_errors()


def test_recent_files_page_through_everything(
    tab: PageWatch, server: LiveServer, client: httpx.Client
) -> None:
    upload_numbered(client, 7)
    page = open_page(tab, server)
    rows = page.locator("#recent .file-name")
    wait_for_rows(page, 7)

    page.get_by_label("Per page").select_option("5")
    wait_for_rows(page, 5)
    assert rows.all_inner_texts() == [f"file-{n}.png" for n in (6, 5, 4, 3, 2)]
    assert page.get_by_role("button", name="Newer").is_disabled()

    page.get_by_role("button", name="Older").click()
    wait_for_rows(page, 2)
    assert rows.all_inner_texts() == ["file-1.png", "file-0.png"]
    assert page.get_by_role("button", name="Older").is_disabled()
    assert page.locator("#page-number").inner_text() == "Page 2"

    page.get_by_role("button", name="Newer").click()
    wait_for_rows(page, 5)
    assert rows.all_inner_texts()[0] == "file-6.png"
    tab.assert_no_errors()


def test_export_download_has_exactly_the_picked_columns(
    tab: PageWatch, server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    if client.get("/api/v1/exports").status_code == 404:
        pytest.skip("the CSV export route (/api/v1/exports) is not in the tree yet")
    for name in ("a.png", "b.png", "c.png"):
        upload_via_api(client, name, make_image())
    page = open_page(tab, server)
    form = page.locator("form.dataset[data-name=files]")
    pick_columns(form, "filename", "size")
    form.get_by_label("Row limit").fill("2")
    assert form.get_by_label("Delimiter").input_value() == "comma"
    assert not form.get_by_label("Byte order mark, for Excel").is_checked()

    with page.expect_download() as download:
        form.get_by_role("button", name="Download CSV").click()
    target = tmp_path / "export.csv"
    download.value.save_as(target)
    assert download.value.suggested_filename.startswith("files-")
    assert download.value.suggested_filename.endswith(".csv")

    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))
    assert rows[0] == ["filename", "size"]
    assert len(rows) == 3
    assert {row[0] for row in rows[1:]} <= {"a.png", "b.png", "c.png"}
    tab.assert_no_errors()


def test_api_key_is_asked_once_and_a_wrong_key_is_refused(
    tab: PageWatch, make_server: ServerFactory
) -> None:
    server = make_server(api_keys={"right-key": ALL_SCOPES})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        if client.get("/api/v1/files").status_code != 401:
            pytest.fail("api_keys is configured but /api/v1/files answers without a key")
        wrong = client.get("/api/v1/files", headers={"X-API-Key": "wrong-key"})
        assert wrong.status_code == 401
        upload_via_api(client, "kept.png", make_image(), **{"X-API-Key": "right-key"})

        page = open_page(tab, server)
        key_input = page.get_by_label("API key", exact=True)
        key_input.wait_for()
        assert page.locator("#key-error").is_hidden()  # asked, not yet refused

        key_input.fill("wrong-key")
        key_input.press("Enter")
        error = page.locator("#key-error")
        error.wait_for()
        assert error.inner_text() == wrong.json()["error"]["message"]
        assert page.evaluate("sessionStorage.getItem('filesvc.apiKey')") is None

        key_input.fill("right-key")
        page.get_by_role("button", name="Use key").click()
        page.locator("#key-panel").wait_for(state="hidden")
        wait_for_rows(page, 1)
        page.set_input_files("#file-input", [payload("with-key.png", make_image())])
        wait_for_tiles(page, "done", 1)
        assert page.evaluate("sessionStorage.getItem('filesvc.apiKey')") == "right-key"

        page.reload()  # kept for the tab: not asked again
        wait_for_rows(page, 2)
        assert page.locator("#key-panel").is_hidden()
        assert page.locator("#key-state").is_visible()
        headers = {"X-API-Key": "right-key"}
        assert {item["filename"] for item in listed(client, **headers)} == {
            "kept.png",
            "with-key.png",
        }
    tab.assert_no_errors(401)


def test_screenshots_desktop_and_phone(tab: PageWatch, make_server: ServerFactory) -> None:
    server = make_server(max_upload_bytes=200_000)
    palette = [
        ("sunset.png", "#ff7e5f", "#feb47b"),
        ("ocean.png", "#2193b0", "#6dd5ed"),
        ("forest.png", "#11998e", "#38ef7d"),
        ("dusk.png", "#41295a", "#2f0743"),
        ("lilac.png", "#c471f5", "#fa71cd"),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as api:
        for name, start, end in palette[3:]:
            upload_via_api(api, name, gradient_image((320, 240), start, end))
    page = open_page(tab, server)
    page.set_input_files(
        "#file-input",
        [payload(name, gradient_image((320, 240), a, b)) for name, a, b in palette[:3]]
        + [payload("huge-scan.png", make_image("image/png", (400, 400), noise=True))],
    )
    wait_for_tiles(page, "done", 3)
    wait_for_tiles(page, "error", 1)
    wait_for_rows(page, 5)
    page.wait_for_function(
        "() => [...document.images].every(img => img.complete && img.naturalWidth > 0)"
    )
    page.evaluate("document.activeElement.blur()")
    screenshot(page, "desktop")
    page.set_viewport_size(PHONE)
    screenshot(page, "phone")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    tab.assert_no_errors(413)


def test_a_key_without_the_scope_shows_the_refusal_where_it_applies(
    tab: PageWatch, make_server: ServerFactory
) -> None:
    server = make_server(api_keys={"reader": ["files:read"]})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        headers = {"X-API-Key": "reader"}
        exports = client.get("/api/v1/exports", headers=headers)
        upload = client.post(
            "/api/v1/files", files={"file": ("x.png", make_image())}, headers=headers
        )
        assert (exports.status_code, upload.status_code) == (403, 403)

        page = open_page(tab, server)
        page.get_by_label("API key", exact=True).fill("reader")
        page.get_by_role("button", name="Use key").click()
        message = page.locator("#exports-message")
        message.get_by_text(exports.json()["error"]["message"]).wait_for()
        page.set_input_files("#file-input", [payload("denied.png", make_image())])
        wait_for_tiles(page, "error", 1)
        assert tile_texts(page, "message") == {"denied.png": upload.json()["error"]["message"]}
        assert page.locator("#key-panel").is_hidden()  # the key is right, only not enough
        assert listed(client, **headers) == []
    tab.assert_no_errors(401, 403)


# --------------------------------------------------------- the page, issue 16


def test_sizes_read_in_binary_units(
    browser: Browser, server: LiveServer, client: httpx.Client
) -> None:
    context = browser.new_context(viewport=DESKTOP, locale="en-US")
    try:
        tab = watch(context.new_page())
        stored = upload_via_api(client, "tiny.png", make_image("image/png", (4, 4)))
        page = open_page(tab, server)
        page.set_input_files(
            "#file-input",
            [
                payload("one.txt", b"x", "text/plain"),
                payload("three-hundred.txt", b"x" * 300, "text/plain"),
                payload("kibi.txt", b"x" * 1536, "text/plain"),
                payload("mebi.txt", b"x" * int(1.2 * 1024 * 1024), "text/plain"),
            ],
        )
        wait_for_tiles(page, "error", 4)  # refused (415), but the size shows all the same
        assert tile_texts(page, "meta") == {
            "one.txt": "1 byte",
            "three-hundred.txt": "300 bytes",
            "kibi.txt": "1.5 KiB",
            "mebi.txt": "1.2 MiB",
        }
        row = row_of(page, stored).locator(".file-meta")
        assert row.inner_text() == f"image/png · {stored['size']} bytes · 4×4"
        tab.assert_no_errors(415)
    finally:
        context.close()


def test_a_refused_tile_can_be_dismissed(tab: PageWatch, server: LiveServer) -> None:
    page = open_page(tab, server)
    page.set_input_files(
        "#file-input",
        [payload("good.png", make_image()), payload("bad.png", b"not an image", "image/png")],
    )
    wait_for_tiles(page, "done", 1)
    wait_for_tiles(page, "error", 1)
    # A stored file's tile stays: it holds the file's URLs.
    assert page.get_by_role("button", name="Dismiss good.png").count() == 0
    page.get_by_role("button", name="Dismiss bad.png").click()
    wait_for_tiles(page, "error", 0)
    assert page.locator("#uploads .tile-name").all_inner_texts() == ["good.png"]
    # The focus does not fall off the page with the removed button.
    assert page.evaluate("document.activeElement !== document.body")
    tab.assert_no_errors(415)


def _box(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return {"left": box["x"], "top": box["y"], "bottom": box["y"] + box["height"]}


def test_the_export_panel_is_not_under_the_recent_files(
    tab: PageWatch, server: LiveServer, client: httpx.Client
) -> None:
    upload_numbered(client, 10)
    page = open_page(tab, server)
    wait_for_rows(page, 10)
    page.locator("form.dataset[data-name=files]").wait_for()

    upload, recent, exports = (
        _box(page, f"section.panel-{name}") for name in ("upload", "recent", "exports")
    )
    # Desktop: exports under the uploads, in the left column, beside the recent files.
    assert exports["left"] == upload["left"] < recent["left"]
    assert upload["bottom"] < exports["top"] < upload["bottom"] + 40
    assert exports["top"] < recent["bottom"]

    page.set_viewport_size(PHONE)
    upload, recent, exports = (
        _box(page, f"section.panel-{name}") for name in ("upload", "recent", "exports")
    )
    # Phone: one column, the exports before the long list of files.
    assert upload["bottom"] < exports["top"] < upload["bottom"] + 40
    assert exports["bottom"] < recent["top"]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    tab.assert_no_errors()


def test_export_for_excel_with_bom_and_semicolons(
    tab: PageWatch, server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    upload_via_api(client, "été;1.png", make_image())
    page = open_page(tab, server)
    form = page.locator("form.dataset[data-name=files]")
    pick_columns(form, "filename", "size")
    form.get_by_label("Delimiter").select_option("semicolon")
    form.get_by_label("Byte order mark, for Excel").check()
    with page.expect_download() as download:
        form.get_by_role("button", name="Download CSV").click()
    target = tmp_path / "excel.csv"
    download.value.save_as(target)
    data = target.read_bytes()
    assert data.startswith(b"\xef\xbb\xbffilename;size\r\n")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), delimiter=";"))
    assert rows[1][0] == "été;1.png"  # the delimiter inside a value is quoted

    form.get_by_label("Delimiter").select_option("tab")
    form.get_by_label("Byte order mark, for Excel").uncheck()
    with page.expect_download() as download:
        form.get_by_role("button", name="Download CSV").click()
    download.value.save_as(target)
    assert target.read_bytes().startswith(b"filename\tsize\r\n")
    tab.assert_no_errors()


def test_export_as_parquet(
    tab: PageWatch, server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    """Needs GET /api/v1/exports/{name}.parquet (issue 15, the exports branch)."""
    for name in ("a.png", "b.png"):
        upload_via_api(client, name, make_image())
    page = open_page(tab, server)
    form = page.locator("form.dataset[data-name=files]")
    form.get_by_label("Parquet").check()
    # The CSV options do not apply to a typed, binary format.
    assert form.get_by_label("Delimiter").is_hidden()
    assert form.get_by_label("Byte order mark, for Excel").is_hidden()
    pick_columns(form, "filename", "size")
    with page.expect_download() as download:
        form.get_by_role("button", name="Download Parquet").click()
    assert download.value.suggested_filename.endswith(".parquet")
    target = tmp_path / "files.parquet"
    download.value.save_as(target)
    data = target.read_bytes()
    assert data[:4] == data[-4:] == b"PAR1"
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    table = pyarrow_parquet.read_table(target)
    assert table.column_names == ["filename", "size"]
    assert sorted(table.column("filename").to_pylist()) == ["a.png", "b.png"]
    tab.assert_no_errors()


def test_thumbnails_fall_back_to_the_original(
    tab: PageWatch, server: LiveServer, client: httpx.Client
) -> None:
    file = upload_via_api(client, "plain.png", make_image("image/png", (40, 30)))
    refused: list[str] = []

    def refuse_variant(route: Any) -> None:
        # As a server answers a variant it cannot render: the spec's JSON error.
        refused.append(route.request.url)
        route.fulfill(
            status=404,
            content_type="application/json",
            body='{"error": {"code": "not_found", "message": "No such variant."}}',
        )

    tab.page.route("**/*variant=thumb*", refuse_variant)
    page = open_page(tab, server)
    image = loaded_image(page, file, "img.naturalWidth === 40")
    assert image.evaluate("img => img.src") == server.url + file["url"]
    assert refused == [server.url + file["url"] + "?variant=thumb"]
    tab.assert_no_errors(404)


def test_thumbnails_are_small_variants(
    tab: PageWatch, server: LiveServer, client: httpx.Client
) -> None:
    """Needs ``?variant=thumb`` on static URLs (issue 17, the variants branch)."""
    file = upload_via_api(client, "large.png", gradient_image((1200, 900), "#ff7e5f", "#2193b0"))
    page = open_page(tab, server)
    image = loaded_image(page, file, "img.naturalWidth > 0")
    assert image.evaluate("img => img.src").endswith("?variant=thumb")
    assert image.evaluate("img => Math.max(img.naturalWidth, img.naturalHeight)") <= 256
    tab.assert_no_errors()


def test_copy_offers_the_original_and_the_preview(
    tab: PageWatch, server: LiveServer, client: httpx.Client
) -> None:
    """Each copy button puts its absolute URL on the clipboard; a later copy replaces it."""
    file = upload_via_api(client, "photo.png", make_image())
    page = open_page(tab, server, clipboard=True)
    row = row_of(page, file)
    copied = copy_from(page, row, "Copy the preview URL of photo.png")
    assert copied == server.url + file["url"] + "?variant=preview"
    row.get_by_role("button", name="Copy the URL of photo.png").click()
    page.wait_for_function(
        "(url) => navigator.clipboard.readText().then(t => t === url)", arg=server.url + file["url"]
    )
    tab.assert_no_errors()


def _requests(page: Page) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    page.on("request", lambda r: seen.append((r.method, httpx.URL(r.url).path)))
    return seen


def test_small_images_keep_the_plain_post(
    tab: PageWatch, server: LiveServer, client: httpx.Client
) -> None:
    seen = _requests(tab.page)
    page = open_page(tab, server)
    page.set_input_files("#file-input", [payload("small.png", make_image())])
    wait_for_tiles(page, "done", 1)
    assert ("POST", "/api/v1/files") in seen
    assert not [path for _, path in seen if path.startswith("/api/v1/uploads")]
    tab.assert_no_errors()


#: A valid PNG of about 10.8 MB (noise does not compress): over the resumable threshold.
BIG_IMAGE_SIZE = (2000, 1800)


def test_a_big_file_goes_through_tus_and_resumes_after_a_reload(
    tab: PageWatch, server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    """Needs tus at /api/v1/uploads (issue 18, the tus branch).

    The upload is throttled, cut off (the browser goes offline) part-way, the
    page reloaded and the same file chosen again: tus-js-client finds the
    upload's URL under the file's fingerprint and continues from the server's
    offset instead of starting over.
    """
    big = make_image("image/png", BIG_IMAGE_SIZE, noise=True)
    assert len(big) >= 10 * 1024 * 1024
    # A file on disk, as a person chooses it: the same file has the same
    # lastModified each time, which tus-js-client's fingerprint includes.
    chosen = tmp_path / "big.png"
    chosen.write_bytes(big)
    seen = _requests(tab.page)
    page = open_page(tab, server)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    conditions = {"latency": 0, "downloadThroughput": -1, "uploadThroughput": 2_000_000}
    cdp.send("Network.emulateNetworkConditions", {"offline": False, **conditions})
    page.set_input_files("#file-input", [chosen])
    page.wait_for_function("() => document.querySelector('#uploads progress').value >= 20")
    cdp.send("Network.emulateNetworkConditions", {"offline": True, **conditions})
    # The PATCH in flight fails; tus-js-client waits to retry.
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('waiting for the network')"
    )
    assert ("POST", "/api/v1/uploads") in seen
    assert ("POST", "/api/v1/files") not in seen

    # Back online, the person reloads the page and chooses the same file again.
    cdp.send("Network.emulateNetworkConditions", {"offline": False, **conditions})
    page.reload()
    seen.clear()
    page.set_input_files("#file-input", [chosen])
    wait_for_tiles(page, "done", 1)
    creations = [path for method, path in seen if method == "POST"]
    assert creations == [], f"started over instead of resuming: {creations}"
    assert [m for m, p in seen if p.startswith("/api/v1/uploads/")][:1] == ["HEAD"]

    [stored] = listed(client)
    assert stored["filename"] == "big.png"
    assert stored["sha256"] == hashlib.sha256(big).hexdigest()
    # The fingerprint is forgotten once the upload is complete.
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('tus::')).length") == 0
    # The cut itself is logged by the browser: those lines are expected.
    tab.console_errors = [
        line for line in tab.console_errors if "ERR_INTERNET_DISCONNECTED" not in line
    ]
    tab.assert_no_errors()
