"""The image-decoding memory budget: reservations, 503 when full, and a server's memory."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from filesvc.config import Settings
from filesvc.decoding import DecodeBudget, DecodeBudgetExhausted
from filesvc.errors import InvalidContent
from tests.hostile_images import flat_png, lying_jpeg, lying_png
from tests.images import make_image
from tests.processes import ServeProcess
from tests.servers import LiveServer

MiB = 1024 * 1024
UPLOAD = "/api/v1/files"


def test_a_reservation_waits_for_room_and_is_given_back() -> None:
    seen: list[int] = []
    budget = DecodeBudget(100, 30, on_change=seen.append)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with budget.reserve(80):
            holding.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    assert budget.in_use == 80
    waited: list[int] = []

    def second() -> None:
        with budget.reserve(50):
            waited.append(budget.in_use)

    waiter = threading.Thread(target=second)
    waiter.start()
    release.set()
    holder.join()
    waiter.join()
    assert waited == [50]
    assert budget.in_use == 0
    assert seen == [80, 0, 50, 0]


def test_a_full_budget_refuses_after_its_wait() -> None:
    budget = DecodeBudget(100, 0)
    with budget.reserve(60):
        with pytest.raises(DecodeBudgetExhausted) as caught:
            with budget.reserve(60):
                pass
    assert caught.value.status_code == 503
    assert caught.value.headers["Retry-After"]
    assert budget.in_use == 0


def test_growing_reservations_are_admitted_only_if_all_can_still_finish() -> None:
    budget = DecodeBudget(100, 0)
    with budget.reserve(10, up_to=100) as first:
        with budget.reserve(50):  # returns its bytes when done: first can still grow after
            pass
        # Two decodes that may each grow to 100 could wait on each other for ever.
        with pytest.raises(DecodeBudgetExhausted):
            with budget.reserve(10, up_to=100):
                pass
        with budget.reserve(10, up_to=20) as second:
            first.grow_to(80)
            with pytest.raises(DecodeBudgetExhausted):  # second could not finish then
                first.grow_to(81)
            second.grow_to(20)
            assert budget.in_use == 100
        first.grow_to(100)
        assert budget.in_use == 100
    assert budget.in_use == 0


def test_more_than_the_whole_budget_is_invalid_content_at_once() -> None:
    with pytest.raises(InvalidContent, match="more than the limit"):
        with DecodeBudget(100, 3600).reserve(101):
            pass


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        auto_migrate=True,
        **overrides,  # type: ignore[arg-type]
    )


def _gauge(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("filesvc_image_decode_bytes_in_use "):
            return float(line.split()[1])
    raise AssertionError("no decode gauge in /metrics")


def test_a_full_budget_answers_503_with_retry_after(tmp_path: Path) -> None:
    """While another decode holds the budget, an image upload gets 503, then 201 once it ends."""
    server = LiveServer(_settings(tmp_path, image_decode_budget_bytes=5 * MiB, image_decode_wait=0))
    server.start()
    budget = server.app.state.resources.decode_budget
    image = make_image("image/png", size=(1000, 1000))  # a 4 MB bitmap
    held = threading.Event()
    release = threading.Event()

    def other_decode() -> None:  # as a variant render or a slow upload's decode would
        with budget.reserve(2 * MiB):
            held.set()
            release.wait()

    holder = threading.Thread(target=other_decode)
    holder.start()
    try:
        held.wait()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert _gauge(client) == 2 * MiB
            refused = client.post(UPLOAD, params={"filename": "a.png"}, content=image)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "decode_budget_exhausted"
            assert int(refused.headers["Retry-After"]) > 0
            assert server.row_count() == 0 and not server.stored_paths()
            release.set()
            holder.join()
            assert _gauge(client) == 0
            accepted = client.post(UPLOAD, params={"filename": "a.png"}, content=image)
            assert accepted.status_code == 201, accepted.text
            assert _gauge(client) == 0
    finally:
        release.set()
        holder.join()
        server.stop()


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


@pytest.mark.slow  # hundreds of MiB of bitmaps in a server subprocess
def test_a_flood_of_hostile_images_stays_within_memory_bounds(tmp_path: Path) -> None:
    """16 lying headers and 16 real big bitmaps at once: peak RSS bounded, then back near idle."""
    serve = ServeProcess(tmp_path / "data", env={"FILESVC_LOG_LEVEL": "warning"}).start()
    lies = [lying_jpeg(), lying_png(), lying_jpeg(progressive=True), lying_png(rows=40)] * 4
    # Valid and tiny on the wire, 36 MB of bitmap each: only the budget bounds these.
    flat = flat_png((3000, 3000))
    try:
        with httpx.Client(base_url=serve.url, timeout=120) as client:

            def upload(body: bytes) -> int:
                return client.post(UPLOAD, params={"filename": "x"}, content=body).status_code

            assert upload(flat) == 201  # warm: Pillow's plugins and the thread pool loaded
            idle = _status_kib(serve.pid, "VmRSS")
            with ThreadPoolExecutor(16) as pool:
                lied = list(pool.map(upload, lies))
                real = list(pool.map(upload, [flat] * 16))
            assert lied == [422] * 16
            assert set(real) <= {201, 503} and 201 in real
            peak = _status_kib(serve.pid, "VmHWM")
            after = _status_kib(serve.pid, "VmRSS")
    finally:
        serve.stop()
    assert peak - idle < 400 * 1024, f"peak {peak} KiB, idle {idle} KiB"
    assert after - idle < 64 * 1024, f"after {after} KiB, idle {idle} KiB"
