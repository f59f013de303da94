"""Shared test set-up: the skip policy, and a communicator that speaks like a real server."""

from __future__ import annotations

import gc
import os
import re

import pytest
from channels.testing import WebsocketCommunicator

from project.asgi import application
from tests.servers import SERVERS

gc.unfreeze()  # project/asgi.py freezes what a server loaded; this process is not a server

#: What uvicorn declares: ASGI WebSocket spec 2.4 and the denial-response extension.
UVICORN_SCOPE = {"spec_version": "2.4"}


def _forbid_skip(report) -> None:
    """With REQUIRE_ALL_TESTS=1 (CI), a skip is a failure: nothing is quietly left out."""
    if report.skipped and os.environ.get("REQUIRE_ALL_TESTS") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but REQUIRE_ALL_TESTS=1 forbids skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that skips (a marker, ``pytest.skip``, a fixture's skip)."""
    _forbid_skip((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module that skips at collection (``pytest.skip(allow_module_level=True)``): no
    test of it ever reaches ``pytest_runtest_makereport``."""
    _forbid_skip((yield).get_result())


@pytest.fixture(autouse=True)
def _fresh_server_logs():
    """Each test's ``wait_for_log`` sees only the lines written during that test."""
    from tests.servers import LiveServer

    for server in list(LiveServer.live):
        server.mark()


def make_communicator(
    path: str,
    *,
    subprotocols: list[str] | None = None,
    origin: str | None = "http://127.0.0.1:8000",
    spec_version: str | None = "2.4",
    extensions: dict | None = None,
    app=application,
) -> WebsocketCommunicator:
    """A ``WebsocketCommunicator`` on the whole stack (origin check, auth, router).

    By default it declares ASGI spec 2.4 as uvicorn does; ``spec_version=None`` makes it
    look like daphne, which declares none.
    """
    headers = [(b"origin", origin.encode())] if origin is not None else []
    communicator = WebsocketCommunicator(
        app, path, headers=headers, subprotocols=subprotocols, spec_version=spec_version
    )
    if extensions is not None:
        communicator.scope["extensions"] = extensions
    return communicator


async def refused_handshake(communicator: WebsocketCommunicator) -> tuple[int, str]:
    """The status and body of a handshake the application refuses (with the
    ``websocket.http.response`` extension), once the consumer has ended."""
    await communicator.send_input({"type": "websocket.connect"})
    start = await communicator.receive_output()
    body = await communicator.receive_output()
    await communicator.wait()
    return start["status"], body["body"].decode()


@pytest.fixture
def communicator_factory():
    """Yields ``make_communicator`` and disconnects every communicator it made at the end."""
    made: list[WebsocketCommunicator] = []

    def factory(*args, **kwargs) -> WebsocketCommunicator:
        communicator = make_communicator(*args, **kwargs)
        made.append(communicator)
        return communicator

    yield factory
    for communicator in made:
        if not communicator.future.done():
            communicator.future.cancel()


@pytest.fixture(scope="session")
def server_env(tmp_path_factory) -> dict[str, str]:
    """Environment for server processes: a migrated SQLite database of their own."""
    import subprocess
    import sys

    from tests.servers import ROOT

    env = {"DJANGO_DB_PATH": str(tmp_path_factory.mktemp("server-db") / "db.sqlite3")}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
    )
    return env


@pytest.fixture(scope="session")
def shared_servers(server_env):
    """Server processes started on first use and shared by the whole session."""
    from tests.servers import LiveServer

    started: dict[str, LiveServer] = {}

    def get(kind: str) -> LiveServer:
        if kind not in started:
            started[kind] = LiveServer(kind, env=server_env).wait_ready()
        return started[kind]

    yield get
    for server in started.values():
        server.stop()
    for server in started.values():
        assert_clean_log(server.log())


@pytest.fixture(scope="session", params=SERVERS)
def asgi_server(request, shared_servers):
    """The project under each real server."""
    return shared_servers(request.param)


@pytest.fixture(scope="session")
def uvicorn_server(shared_servers):
    """The project under uvicorn, as the run command serves it."""
    return shared_servers("uvicorn")


def clean_processes(env: dict[str, str], count: int = 1):
    """``count`` uvicorn processes (``manage.py serve``) on ``env``, for a fixture to yield from:
    started together, then stopped, and each one's log must be clean."""
    from tests.servers import LiveServer

    processes = [LiveServer("uvicorn", env=env) for _ in range(count)]
    for process in processes:
        process.wait_ready()
    yield processes
    for process in processes:
        process.stop()
    for process in processes:
        assert_clean_log(process.log())


def assert_clean_log(log: str) -> None:
    """A server log after a test run holds no traceback and no ERROR line."""
    assert "Traceback" not in log, log
    bad = [line for line in log.splitlines() if re.match(r"(\S+ \S+ )?(ERROR|CRITICAL)\b", line)]
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server for the session; skips with the reason where there is none."""
    from tests.redis_server import RedisServer, redis_missing

    if reason := redis_missing():
        pytest.skip(reason)
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through Playwright, for one test module (the sync API's own
    event loop must not outlive the module's tests into asyncio tests elsewhere)."""
    from tests.browser import chromium_missing, launch

    if reason := chromium_missing():
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(request, browser, uvicorn_server):
    """A fresh page (1280x800) on the live server; fails the test on any console error but
    those its ``allow_console_errors(pattern)`` marker expects (a refused handshake, say)."""
    marker = request.node.get_closest_marker("allow_console_errors")
    allowed = re.compile(marker.args[0]) if marker else None
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(uvicorn_server.http_url + "/")
    yield page
    context.close()
    errors = [e for e in errors if not (allowed and allowed.search(e))]
    assert errors == [], f"browser console errors: {errors}"
