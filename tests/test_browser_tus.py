"""tus-js-client (the vendored static/vendor/tus.min.js) in Debian's chromium.

A tiny test page, served from the service's own origin, uploads a file with
tus-js-client in 512 KiB PATCHes. The network is cut after a few of them (every
later request aborted, as a dropped connection would be), the page is
reloaded, the same file chosen again, and tus-js-client's fingerprint storage
finds the upload and resumes it from the offset the service kept: the first
PATCH after the reload starts where the last acknowledged one ended.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Request, Route

from tests.browser import DESKTOP, chromium, watch  # noqa: F401
from tests.conftest import ServerFactory
from tests.tus import MiB

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

CHUNK = 512 * 1024
#: PATCHes let through before the network goes.
BEFORE_CUT = 3

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>tus test</title>
<input type="file" id="file">
<script src="/static/vendor/tus.min.js"></script>
<script>
window.state = {offset: 0, failed: null, done: null, resumedFrom: null};
document.getElementById("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  const upload = new tus.Upload(file, {
    endpoint: "/api/v1/uploads",
    chunkSize: CHUNK_SIZE,
    retryDelays: [0, 50],
    metadata: {filename: file.name},
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    onProgress: (sent) => { window.state.offset = sent; },
    onError: (error) => { window.state.failed = String(error); },
    onSuccess: () => { window.state.done = upload.url; },
  });
  const previous = await upload.findPreviousUploads();
  if (previous.length) {
    window.state.resumedFrom = previous[0].uploadUrl;
    upload.resumeFromPreviousUpload(previous[0]);
  }
  upload.start();
});
</script>
""".replace("CHUNK_SIZE", str(CHUNK))


def test_tus_js_client_resumes_after_a_cut_and_a_reload(
    browser: Browser, make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(allowed_types=["application/pdf"])
    data = b"%PDF-1.7\n" + os.urandom(4 * MiB)
    path = tmp_path / "big.pdf"
    path.write_bytes(data)  # a real file: its mtime is part of tus-js-client's fingerprint

    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(30_000)
    page_url = f"{server.url}/tus-test.html"
    context.route(page_url, lambda route: route.fulfill(body=PAGE, content_type="text/html"))
    offsets: list[int] = []
    cut = {"armed": True, "on": False}

    def network(route: Route, request: Request) -> None:
        if request.method == "PATCH":
            offsets.append(int(request.headers["upload-offset"]))
            if cut["armed"] and len(offsets) > BEFORE_CUT:
                cut["on"] = True
        if cut["on"]:
            route.abort("internetdisconnected")
        else:
            route.continue_()

    context.route("**/api/v1/uploads**", network)
    try:
        tab = watch(context.new_page())
        page = tab.page
        page.goto(page_url)
        page.set_input_files("#file", str(path))
        page.wait_for_function("window.state.failed !== null")
        assert offsets[:BEFORE_CUT] == [i * CHUNK for i in range(BEFORE_CUT)]
        with httpx.Client(base_url=server.url) as http:
            # The database from another thread: playwright's sync API runs an event loop here.
            with ThreadPoolExecutor(1) as pool:
                rows = pool.submit(server.query, 'SELECT id, "offset" FROM resumable_uploads')
            [(upload, kept)] = rows.result()
            assert kept == BEFORE_CUT * CHUNK
            assert http.get(f"/api/v1/files/{upload}").status_code == 404

        # The network is back; the user reloads and picks the same file.
        context.unroute("**/api/v1/uploads**")
        cut.update(armed=False, on=False)
        offsets.clear()
        context.route("**/api/v1/uploads**", network)
        page.reload()
        page.set_input_files("#file", str(path))
        page.wait_for_function("window.state.done !== null || window.state.failed !== null")
        state = page.evaluate("window.state")
        assert state["failed"] is None, state
        assert state["resumedFrom"] and state["resumedFrom"].endswith(upload)
        assert offsets[0] == BEFORE_CUT * CHUNK  # resumed, not started again
        with httpx.Client(base_url=server.url) as http:
            body = http.get(f"/api/v1/files/{upload}").json()
            assert body["sha256"] == hashlib.sha256(data).hexdigest()
            assert http.get(f"/files/{upload}").content == data
        # No script error; the console's only complaints are the cut requests.
        assert tab.page_errors == []
        assert [e for e in tab.console_errors if "ERR_INTERNET_DISCONNECTED" not in e] == []
    finally:
        context.close()
