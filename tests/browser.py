"""Headless Chromium from Debian, driven by Playwright; no browser download is ever needed."""

from __future__ import annotations

import os
import shutil
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
