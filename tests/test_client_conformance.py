"""The Autobahn client suite: ``manage.py fuzzingserver`` and the page's "Test this browser".

Chromium runs a subset of the client cases (sections 1-7 and one permessage-deflate case) from
the page, in the page's own WebSocket, and each comes back OK or INFORMATIONAL; the page may
connect to the fuzzing server's origin and no other; the verdicts are kosoku's (a client that
does not echo fails). ``make client-conformance`` runs the whole suite (bench/client_conformance.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from bench.client_conformance import FuzzingServer, ask, run_in_page, websockets_case
from tests.conftest import assert_clean_log
from tests.servers import LiveServer
from tests.test_browser_client import axe_violations

pytestmark = [pytest.mark.server, pytest.mark.browser]

#: A few cases of each of sections 1-7, and one of 12 (1,000 compressed 64-byte messages).
SUBSET = ["1.1.1", "1.2.8", "2.6", "3.1", "4.1.1", "5.6", "5.19", "6.2.1", "7.1.1", "12.1.3"]
PASSING = {"OK", "INFORMATIONAL"}
T = TypeVar("T")


@pytest.fixture(scope="module")
def fuzzing_server():
    with FuzzingServer(",".join(SUBSET)) as server:
        yield server


@pytest.fixture(scope="module")
def site(server_env, fuzzing_server):
    """The page, served with ``CLIENT_CONFORMANCE_URL`` pointing at the fuzzing server."""
    server = LiveServer("uvicorn", env={**server_env, "CLIENT_CONFORMANCE_URL": fuzzing_server.url})
    server.wait_ready()
    yield server
    server.stop()
    assert_clean_log(server.log())


@pytest.fixture
def site_page(browser, site):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(site.http_url + "/")
    page.errors = errors
    yield page
    context.close()


def test_chromium_runs_the_client_cases_from_the_page(site_page, fuzzing_server):
    run_in_page(site_page, timeout=45)
    rows = site_page.locator("#conformance-results tr")
    assert [rows.nth(i).get_attribute("data-case") for i in range(rows.count())] == SUBSET
    shown = {
        rows.nth(i).get_attribute("data-case"): rows.nth(i).get_attribute("data-behavior")
        for i in range(rows.count())
    }
    agent = site_page.get_attribute("#conformance", "data-agent")
    judged = fuzzing_server.verdicts(agent)
    assert shown == {case: verdict["behavior"] for case, verdict in judged.items()}, judged
    assert set(shown.values()) <= PASSING, judged
    # Each case's description is there on demand, under its id.
    first = rows.first.locator("details")
    assert not first.locator("p").is_visible()
    first.locator("summary").click()
    assert "Send text message with payload 0." in first.locator("p").inner_text()
    assert axe_violations(site_page) == []
    progress = site_page.inner_text("#conformance-progress")
    assert re.search(rf"{len(SUBSET)} cases as {re.escape(agent)}: \d+ OK", progress), progress
    # Chromium reports each connection it fails on purpose (3.1, 4.1.1); nothing else.
    others = [
        e for e in site_page.errors if not re.match(r"WebSocket connection to '\S+/runCase", e)
    ]
    assert others == []


def test_the_page_may_connect_to_the_fuzzing_server_and_no_other_origin(
    site, site_page, fuzzing_server
):
    import urllib.request

    with urllib.request.urlopen(site.http_url + "/") as response:
        policy = response.headers["Content-Security-Policy"]
    assert f"connect-src 'self' {fuzzing_server.url};" in policy
    attempt = """url => new Promise(resolve => {
        document.addEventListener("securitypolicyviolation", e => resolve("blocked " + e.blockedURI));
        try {
            const ws = new WebSocket(url);
            ws.onmessage = () => resolve("answered");
        } catch (err) { resolve("blocked " + err.name); }
    })"""
    assert site_page.evaluate(attempt, fuzzing_server.url + "/getCaseCount") == "answered"
    # The same server under another name is another origin: refused by the policy.
    other = fuzzing_server.url.replace("127.0.0.1", "localhost") + "/getCaseCount"
    assert site_page.evaluate(attempt, other).startswith("blocked")


def test_without_a_fuzzing_server_the_control_is_disabled_and_says_how(page):
    page.click("#conformance-details > summary")
    assert page.is_disabled("#conformance-run")
    assert "manage.py fuzzingserver" in page.inner_text("#conformance-off")
    assert page.get_attribute("#conformance", "data-url") == ""
    assert axe_violations(page) == []


def test_the_verdicts_are_kosokus_a_client_that_does_not_echo_fails(fuzzing_server):
    async def silent(url: str) -> None:
        from websockets.asyncio.client import connect

        async with connect(url, ping_interval=None) as ws:
            await ws.close()

    async def run() -> tuple[object, object]:
        base = fuzzing_server.url
        await silent(f"{base}/runCase?case=1&agent=silent")
        await websockets_case(f"{base}/runCase?case=1&agent=echo")
        return (
            await ask(f"{base}/getCaseStatus?case=1&agent=silent"),
            await ask(f"{base}/getCaseStatus?case=1&agent=echo"),
        )

    silent_status, echo_status = in_a_thread(run())
    assert silent_status["behavior"] == "FAILED", silent_status
    assert echo_status["behavior"] == "OK", echo_status
    info = in_a_thread(ask(f"{fuzzing_server.url}/getCaseInfo?case=10"))
    assert info["id"] == "12.1.3" and "compressed" in info["description"], json.dumps(info)


def in_a_thread(coroutine: Coroutine[object, object, T]) -> T:
    """Playwright's sync API keeps an event loop running in this thread (the module's browser)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=60)


def test_the_setting_takes_an_origin_only(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from project.settings import websocket_origin

    monkeypatch.setenv("X", "ws://127.0.0.1:9001/")
    assert websocket_origin("X") == "ws://127.0.0.1:9001"
    for wrong in ("http://127.0.0.1:9001", "ws://127.0.0.1:9001/runCase", "ws://127.0.0.1:x"):
        monkeypatch.setenv("X", wrong)
        with pytest.raises(ImproperlyConfigured):
            websocket_origin("X")


@override_settings(CLIENT_CONFORMANCE_URL="")
def test_the_fuzzing_server_binds_loopback_unless_told_otherwise(monkeypatch):
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: started.append(argv))
    call_command("fuzzingserver")
    with pytest.raises(CommandError, match="not loopback"):
        call_command("fuzzingserver", host="0.0.0.0")
    call_command("fuzzingserver", host="0.0.0.0", public=True)
    hosts = [argv[argv.index("--host") + 1] for argv in started]
    assert hosts == ["127.0.0.1", "0.0.0.0"]
    assert started[0][started[0].index("--port") + 1] == "9001"
