"""Debian's chromium driven by playwright's sync API, for the web page's tests.

playwright's own browser download cannot work here (nor offline), so the
tests launch the system ``/usr/bin/chromium``. Locally they skip loudly when it
is missing; under ``CI=true`` they fail (see ``require`` in conftest).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

from tests.conftest import require

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
#: Seconds any single wait in a browser test may take.
TIMEOUT_MS = 15_000

#: How chromium logs a refused request to the console (not a page error).
_REFUSED = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


@dataclass
class PageWatch:
    """A page plus every console error and uncaught exception it produced."""

    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def assert_no_errors(self, *expected_statuses: int) -> None:
        """No script error at all; network refusals only with the statuses the test caused."""
        assert self.page_errors == [], self.page_errors
        unexpected = [
            text
            for text in self.console_errors
            if not ((m := _REFUSED.search(text)) and int(m.group(1)) in expected_statuses)
        ]
        assert unexpected == [], unexpected


def launch(playwright: Playwright) -> Browser:
    """The system chromium, or a loud skip (a failure in CI) when it is missing."""
    require(
        CHROMIUM.exists(),
        f"Debian's chromium is not at {CHROMIUM} (apt-get install chromium); "
        "the web page's browser tests cannot run",
    )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.fixture(scope="module", name="browser")
def chromium() -> Iterator[Browser]:
    """One chromium per test module; a module gets it by importing ``chromium``."""
    with sync_playwright() as playwright:
        launched = launch(playwright)
        yield launched
        launched.close()


def watch(page: Page) -> PageWatch:
    """Start collecting the page's console errors and uncaught exceptions."""
    watched = PageWatch(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.console_errors.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.page_errors.append(str(error)))
    return watched


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
