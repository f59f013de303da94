"""Headless Chromium from Debian, driven by Playwright; no browser download is ever needed."""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

#: Debian's chromium; CHROMIUM_PATH overrides it on other systems.
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"

#: Without the background-networking flags Chromium tries hosts it cannot reach here.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def launch(playwright):
    """A headless Chromium from ``playwright.chromium``."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


# Driving the page: the controls' ids are its interface for tests and screenshots.


def entries(page, kind: str):
    """The log's entries of one kind (sent, received, open, close, error, ...)."""
    return page.locator(f"#log li[data-kind='{kind}']")


def connect(page, kind: str, subprotocols: str = "") -> None:
    from playwright.sync_api import expect

    page.select_option("#consumer", kind)
    page.fill("#subprotocols", subprotocols)
    page.click("#connect")
    expect(page.locator("#state")).to_have_text("open")


def send_text(page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


#: A refused handshake's console lines: the browser's, not the page's.
REFUSED = r"WebSocket connection to .* failed|Failed to load resource"


@contextmanager
def page_on(browser, server, *, cookies: list[dict] | None = None, refused: bool = False):
    """A fresh page on ``server`` that fails the test on any script or console error, but a
    refused handshake's when ``refused`` (a reconnect while the server is down, a 403)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    if cookies:
        context.add_cookies(cookies)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not (refused and re.search(REFUSED, m.text))
            else None
        ),
    )
    page.goto(server.http_url + "/")
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"browser errors: {errors}"
