"""Run the web UI's pure ES modules in Chromium, without a server.

Requests to ``http://ui.test/static/...`` are answered from ``runevents/web/static``
by Playwright's request routing, so ``import('/static/reducer.js')`` works in a
blank page. One browser per session; one page per test.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runevents

STATIC = Path(runevents.__file__).resolve().parent / "web" / "static"
ORIGIN = "http://ui.test"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# Module scope, not session: Playwright's sync API keeps an event loop running
# on the main thread while it is open, which breaks every asyncio test after it.
@pytest.fixture(scope="module")
def js_browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=BROWSER_ARGS)
        yield browser
        browser.close()


def _serve(route: Any) -> None:
    path = route.request.url.removeprefix(ORIGIN).split("?", 1)[0]
    if path.startswith("/static/"):
        file = (STATIC / path.removeprefix("/static/")).resolve()
        if file.is_relative_to(STATIC) and file.is_file():
            kind = "text/javascript" if file.suffix == ".js" else mimetypes.guess_type(file.name)[0]
            route.fulfill(status=200, body=file.read_bytes(), content_type=kind or "text/plain")
            return
        route.fulfill(status=404, body="not found")
        return
    route.fulfill(
        status=200, body="<!doctype html><title>t</title><body></body>", content_type="text/html"
    )


@pytest.fixture
def js_page(js_browser: Any) -> Iterator[Any]:
    """A blank page on ui.test that can import the UI's modules."""
    context = js_browser.new_context()
    context.route(f"{ORIGIN}/**", _serve)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{ORIGIN}/")
    yield page
    context.close()
    assert not errors, errors
