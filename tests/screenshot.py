"""Regenerate docs/screenshot.png (1280x800) and docs/screenshot-phone.png (390x844).

``make screenshot``: the real page, under uvicorn, mid-conversation with the async consumer.
"""

from __future__ import annotations

import os
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser import chromium_missing, launch  # noqa: E402
from tests.servers import LiveServer  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"


def conversation(page) -> None:
    page.select_option("#consumer", "async")
    page.fill("#subprotocols", "echo.v1")
    page.check("#trace")
    page.click("#connect")
    expect(page.locator("#state")).to_have_text("open")
    for text in [
        "hello, echo",
        '{"type": "greeting", "items": [1, 2, 3]}',
        "non-BMP too: \U0001f600",
        '<img src=x onerror="alert(1)"> stays text',
    ]:
        page.fill("#text", text)
        page.press("#text", "Enter")
    was_open = page.evaluate("document.getElementById('more-send').open")
    page.evaluate("document.getElementById('more-send').open = true")  # closed on a phone
    page.fill("#binary-size", "4096")
    page.click("#send-binary")
    page.evaluate(f"document.getElementById('more-send').open = {str(was_open).lower()}")
    expect(page.locator("#log li[data-kind='received']")).to_have_count(5)
    expect(page.locator("#log li[data-side='server']")).to_have_count(12)
    page.locator("#log li[data-side='server']").nth(2).locator("summary").click()
    page.locator("#log li[data-kind='received'] .view-json summary").first.click()
    page.fill("#text", "type here, Enter sends")


def main() -> None:
    if reason := chromium_missing():
        raise SystemExit(reason)
    DOCS.mkdir(exist_ok=True)
    with LiveServer("uvicorn") as server, sync_playwright() as playwright:
        browser = launch(playwright)
        for name, viewport in [
            ("screenshot.png", (1280, 800)),
            ("screenshot-phone.png", (390, 844)),
        ]:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.goto(server.http_url + "/")
            conversation(page)
            page.screenshot(path=DOCS / name)
            print(f"wrote docs/{name}")
            page.close()
        browser.close()


if __name__ == "__main__":
    main()
