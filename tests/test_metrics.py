"""/metrics: values move with the requests made, parse as Prometheus text, add up over workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from filesvc.middleware import UPLOAD_ROUTES
from tests.conftest import embedded_settings as _settings
from tests.images import make_image
from tests.processes import ServeProcess
from tests.servers import LiveServer, running

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveServer, httpx.Client]]:
    with running(_settings(tmp_path, max_upload_bytes=20_000)) as pair:
        yield pair


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_template_not_raw_path(
    live: tuple[LiveServer, httpx.Client],
) -> None:
    _, client = live
    ids = ["aaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccccccccc"]
    for file_id in ids:
        assert client.get(f"/api/v1/files/{file_id}").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    text = client.get("/metrics").text
    samples = scrape(client)
    labels = {"method": "GET", "route": "/api/v1/files/{file_id}", "status": "404"}
    assert value(samples, "filesvc_http_requests_total", **labels) == 3
    assert value(samples, "filesvc_http_request_duration_seconds_count", **labels) == 3
    assert value(samples, "filesvc_http_request_duration_seconds_bucket", le="+Inf", **labels) == 3
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(samples, "filesvc_http_requests_total", **unmatched) == 1
    for raw in [*ids, "/no/such/page"]:
        assert raw not in text


def test_uploaded_bytes_and_refusals_by_reason(live: tuple[LiveServer, httpx.Client]) -> None:
    _, client = live
    before = scrape(client)
    image = make_image("image/png")
    created = client.post("/api/v1/files?filename=a.png", content=image)
    assert created.status_code == 201, created.text
    assert client.post("/api/v1/files", content=b"plain text, not an image").status_code == 415
    too_big = make_image("image/png", size=(300, 300), noise=True)
    assert client.post("/api/v1/files", content=too_big).status_code == 413
    broken = client.post(
        "/api/v1/files", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
    )
    assert broken.status_code == 400
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("filesvc_uploaded_bytes_total") >= len(image) + 24
    for reason in ("unsupported_media_type", "payload_too_large", "invalid_request"):
        assert delta("filesvc_upload_refusals_total", reason=reason) == 1, reason
    created_labels = {"method": "POST", "route": "/api/v1/files", "status": "201"}
    assert delta("filesvc_http_requests_total", **created_labels) == 1
    assert value(after, "filesvc_uploads_in_progress") == 0


def test_refusals_include_authentication(tmp_path: Path) -> None:
    settings = _settings(tmp_path, api_keys={"writer-key": ["files:write"]})
    with running(settings) as (_, client):
        assert client.post("/api/v1/files", content=make_image()).status_code == 401
        samples = scrape(client)
    assert value(samples, "filesvc_upload_refusals_total", reason="unauthorized") == 1


def test_served_bytes_match_the_bodies_sent(live: tuple[LiveServer, httpx.Client]) -> None:
    _, client = live
    listing = client.get("/api/v1/files")
    page = client.get("/")
    samples = scrape(client)
    assert value(samples, "filesvc_served_bytes_total", route="/api/v1/files") == len(
        listing.content
    )
    assert value(samples, "filesvc_served_bytes_total", route="/") == len(page.content)


def test_uploads_in_progress_while_a_body_is_arriving(
    live: tuple[LiveServer, httpx.Client],
) -> None:
    server, client = live
    image = make_image("image/png", size=(64, 64))
    first_sent = threading.Event()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield image[:100]
        first_sent.set()
        release.wait(timeout=20)
        yield image[100:]

    result: dict[str, int] = {}

    def upload() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as other:
            response = other.post("/api/v1/files?filename=slow.png", content=body())
            result["status"] = response.status_code

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        assert first_sent.wait(timeout=10)
        during = 0.0
        for _ in range(50):  # the server may not have read the first chunk yet
            during = value(scrape(client), "filesvc_uploads_in_progress")
            if during:
                break
            threading.Event().wait(0.05)
        assert during == 1
    finally:
        release.set()
        thread.join(timeout=30)
    assert result["status"] == 201
    assert value(scrape(client), "filesvc_uploads_in_progress") == 0


def test_export_rows_and_bytes_by_dataset(live: tuple[LiveServer, httpx.Client]) -> None:
    _, client = live
    for index in range(3):
        created = client.post(f"/api/v1/files?filename={index}.png", content=make_image())
        assert created.status_code == 201, created.text
    plain = client.get("/api/v1/exports/files.csv", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200, plain.text
    assert plain.text.count("\r\n") == 4  # header and three rows
    with client.stream(
        "GET", "/api/v1/exports/files.csv?columns=id", headers={"Accept-Encoding": "gzip"}
    ) as zipped:
        assert zipped.headers["content-encoding"] == "gzip"
        gzipped = b"".join(zipped.iter_raw())
    # A request is counted when the app is done with it, which may be just after the
    # client holds the last byte (an export hands its connection back first).
    ok = {"method": "GET", "route": "/api/v1/exports/{name}.csv", "status": "200"}
    deadline = time.monotonic() + 10
    while value(samples := scrape(client), "filesvc_http_requests_total", **ok) < 2:
        assert time.monotonic() < deadline, "the second export was never counted"
        time.sleep(0.02)
    assert value(samples, "filesvc_export_rows_total", dataset="files") == 6
    exported = value(samples, "filesvc_export_bytes_total", dataset="files")
    assert exported == len(plain.content) + len(gzipped)  # as sent: compressed when gzipped
    route = "/api/v1/exports/{name}.csv"
    assert value(samples, "filesvc_served_bytes_total", route=route) == exported
    assert value(samples, "filesvc_http_requests_total", **ok) == 2
    assert value(samples, "filesvc_exports_in_progress") == 0


def test_each_app_counts_for_itself(tmp_path: Path) -> None:
    """Many apps in one process (as in these tests): each has its own registry, from zero."""
    with (
        running(_settings(tmp_path / "a")) as (_, first),
        running(_settings(tmp_path / "b")) as (_, second),
    ):
        for _ in range(3):
            first.get("/no/such/page")
        second.get("/no/such/page")
        labels = {"method": "GET", "route": "unmatched", "status": "404"}
        assert value(scrape(first), "filesvc_http_requests_total", **labels) == 3
        assert value(scrape(second), "filesvc_http_requests_total", **labels) == 1


def test_openmetrics_when_the_scraper_asks(live: tuple[LiveServer, httpx.Client]) -> None:
    _, client = live
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = openmetrics_families(response.text)  # type: ignore[no-untyped-call]
    names = {family.name for family in families}
    assert {"filesvc_http_requests", "filesvc_uploads_in_progress"} <= names


def test_upload_routes_exist(live: tuple[LiveServer, httpx.Client]) -> None:
    """The middleware knows the upload routes by path: they must still be there."""
    _, client = live
    paths = client.get("/openapi.json").json()["paths"]
    for method, path in UPLOAD_ROUTES:
        assert method.lower() in paths[path], path


def test_several_workers_add_up_in_one_scrape(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left by an earlier run, unreadable")  # /metrics fails unless cleaned
    serve = ServeProcess(
        tmp_path / "data",
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        args=["--workers", "2"],
    )
    serve.start()
    try:
        with httpx.Client(base_url=serve.url, timeout=10) as client:
            for _ in range(20):
                with httpx.Client(base_url=serve.url, timeout=10) as fresh:  # new connection
                    assert fresh.get("/no/such/page").status_code == 404
            labels = {"method": "GET", "route": "unmatched", "status": "404"}
            for _ in range(4):  # whichever worker answers, the sum is the same
                assert value(scrape(client), "filesvc_http_requests_total", **labels) == 20
        assert not stale.exists()
        assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # one file per worker
    finally:
        code = serve.stop()
    assert code == 0, serve.log.read_text()
    assert not list(metrics_dir.glob("gauge_live*.db"))  # each worker marked itself dead
