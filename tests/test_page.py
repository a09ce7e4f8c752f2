"""The page at ``/`` honours its own validators, as its assets under ``/static`` do."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.embedded


@pytest.mark.parametrize("url", ["/", "/static/app.js", "/static/vendor/tus.min.js"])
def test_conditional_get(client: httpx.Client, url: str) -> None:
    page = client.get(url)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-cache"  # revalidated on every load
    etag, modified = page.headers["etag"], page.headers["last-modified"]

    for headers in ({"If-None-Match": etag}, {"If-Modified-Since": modified}):
        for method in ("GET", "HEAD"):
            answer = client.request(method, url, headers=headers)
            assert answer.status_code == 304, (method, headers)
            assert answer.content == b""
            assert answer.headers["etag"] == etag

    changed = client.get(url, headers={"If-None-Match": '"another-version"'})
    assert changed.status_code == 200
    assert changed.content == page.content
    old = client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert old.status_code == 200


def test_the_page_is_html(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert b'src="/static/app.js"' in page.content
