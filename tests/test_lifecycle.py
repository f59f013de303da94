"""Process life: clean shutdown on SIGTERM, and one-line start-up errors."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.compat import BEHAVIOUR
from tests.conftest import assert_clean_log
from tests.servers import ROOT, SERVERS, LiveServer, free_port

pytestmark = pytest.mark.server


async def close_codes_after_sigterm(server: LiveServer, clients: int = 4, within: float = 5.0):
    """Open ``clients`` echo connections, SIGTERM the server, return what each client saw and when."""
    sockets = [
        await connect(f"{server.ws_url}/ws/echo/{('sync', 'async')[i % 2]}/")
        for i in range(clients)
    ]
    for ws in sockets:
        await ws.send("ready?")
        assert await ws.recv() == "ready?"
    started = time.monotonic()
    server.terminate()

    async def outcome(ws):
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), within)
        return (closed.value.rcvd.code if closed.value.rcvd else None), time.monotonic() - started

    return await asyncio.gather(*(outcome(ws) for ws in sockets))


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", SERVERS)
async def test_sigterm_closes_clients_as_recorded_and_the_server_exits(kind, server_env):
    """What each server sends its WebSocket clients on SIGTERM (``tests.compat``), measured."""
    server = LiveServer(kind, env=server_env).wait_ready()
    try:
        outcomes = await close_codes_after_sigterm(server)
        returncode = server.process.wait(timeout=10)  # it ends by itself
    finally:
        server.stop()
    assert [code for code, _ in outcomes] == [BEHAVIOUR[kind].shutdown_close_code] * 4
    assert max(elapsed for _, elapsed in outcomes) < 5.0
    assert ("Traceback" not in server.log()) == BEHAVIOUR[kind].shutdown_quiet, server.log()
    if kind == "uvicorn":  # the run command: the whole story, down to the log
        # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is its clean exit.
        assert returncode in (0, -15)
        log = server.log()
        assert log.count("disconnected code=1012 SERVICE_RESTART") == 4
        assert "Finished server process" in log
        assert_clean_log(log)


@pytest.mark.asyncio
async def test_runserver_serves_the_page_and_both_routes(server_env):
    import urllib.request

    with LiveServer("runserver", env=server_env) as server:
        with urllib.request.urlopen(f"{server.http_url}/static/js/main.js", timeout=5) as response:
            assert response.status == 200
        for kind in ("sync", "async"):
            async with connect(f"{server.ws_url}/ws/echo/{kind}/") as ws:
                await ws.send(kind)
                assert await ws.recv() == kind


def run_manage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_port_in_use_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_manage("serve", "--port", str(port))
    assert_one_line_error(result, f"port {port} on 127.0.0.1 is already in use")


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            {"ECHO_MAX_MESSAGE_BYTES": "lots"},
            "ECHO_MAX_MESSAGE_BYTES='lots': expected a whole number",
        ),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG='maybe': expected 1/0"),
        ({"REDIS_URL": "http://localhost:6379"}, "is not a redis://, rediss:// or unix:// URL"),
        (
            {"REDIS_URL": "redis://127.0.0.1:1/0"},
            "REDIS_URL 'redis://127.0.0.1:1/0' is unreachable",
        ),
    ],
)
def test_bad_settings_are_one_line(env, expected):
    assert_one_line_error(run_manage("serve", "--port", str(free_port()), env=env), expected)


def test_several_workers_need_redis():
    result = run_manage(
        "serve", "--port", str(free_port()), "--workers", "2", env={"REDIS_URL": ""}
    )
    assert_one_line_error(result, "--workers 2 needs REDIS_URL")


def test_loading_the_application_freezes_what_it_loaded_for_the_collector():
    """A server process never walks Django and the modules again in a full collection."""
    code = "import gc, project.asgi; print(gc.get_freeze_count())"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 10_000  # Django and its modules: about 100,000 objects
