"""Faults and bad input: each gets a defined close code or HTTP status, and nothing is lost."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.protocol import CloseCode
from tests.conftest import assert_clean_log, make_communicator
from tests.servers import ROOT, LiveServer

CLOSE_CODES = {int(code) for code in CloseCode} | {4000 + (int(code) - 1000) for code in CloseCode}


# --- rate limit -----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["sync", "async"])
@override_settings(WEBSOCKET_RATE_LIMIT=1, WEBSOCKET_RATE_BURST=5)
async def test_a_flood_closes_with_1008_rate_limit(kind, caplog):
    communicator = make_communicator(f"/ws/echo/{kind}/")
    assert (await communicator.connect())[0]
    with caplog.at_level(logging.WARNING):
        for i in range(20):
            await communicator.send_to(text_data=str(i))
        replies = []
        while (reply := await communicator.receive_output())["type"] == "websocket.send":
            replies.append(reply["text"])
    # The burst of 5 passes (refilling at 1/s adds no whole token in the time this takes).
    assert replies == ["0", "1", "2", "3", "4"]
    assert (reply["code"], reply["reason"]) == (1008, "rate limit")
    assert "closing 1008 POLICY_VIOLATION: rate limit" in caplog.text
    await communicator.disconnect()


def test_the_default_rate_limit_leaves_the_benchmarks_ping_pong_alone():
    from django.conf import settings

    from app.session import TokenBucket

    bucket = TokenBucket(settings.WEBSOCKET_RATE_LIMIT, settings.WEBSOCKET_RATE_BURST)
    # One connection's fastest ping-pong in docs/benchmarks.md is about 16,000 msg/s.
    start = bucket.stamp
    assert all(bucket.take(start + i / 16_000) for i in range(100_000))


def test_the_token_bucket_allows_one_burst_then_the_rate_and_no_more():
    from app.session import TokenBucket

    bucket = TokenBucket(rate=1000, burst=100)
    start = bucket.stamp
    flood = sum(bucket.take(start + i / 10_000) for i in range(20_000))  # 10x the rate for 2 s
    assert 100 + 2000 - 2 <= flood <= 100 + 2000 + 1
    later = start + 60  # a minute idle earns one burst, not a minute's worth
    assert sum(bucket.take(later + i * 1e-7) for i in range(1000)) in (100, 101)


# --- fuzzing the consumers ------------------------------------------------------------------

FUZZ = hypothesis_settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class ErrorRecords(logging.Handler):
    """Collects ERROR records while active: a fuzzed example must not log one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> list[logging.LogRecord]:
        logging.getLogger().addHandler(self)
        return self.records

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)


odd_values = st.one_of(
    st.none(),
    st.text(max_size=50),
    st.binary(max_size=50),
    st.integers(),
    st.floats(),
    st.lists(st.integers()),
)


async def one_event(kind: str, event: dict) -> dict:
    communicator = make_communicator(f"/ws/echo/{kind}/")
    assert (await communicator.connect())[0]
    await communicator.send_input(event)
    reply = await communicator.receive_output(timeout=2)
    await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
    await communicator.wait(timeout=2)
    assert communicator.future.exception() is None
    return reply


@pytest.mark.django_db(transaction=True)  # pool threads may hold a connection from earlier tests
@FUZZ
@given(
    kind=st.sampled_from(["sync", "async"]),
    fields=st.dictionaries(st.sampled_from(["text", "bytes"]), odd_values),
)
def test_any_receive_event_is_echoed_or_closed_with_a_defined_code(kind, fields):
    event = {"type": "websocket.receive", **fields}
    with ErrorRecords() as errors:
        reply = asyncio.run(one_event(kind, event))
    text, data = fields.get("text"), fields.get("bytes")
    if isinstance(text, str) and data is None:
        assert reply == {"type": "websocket.send", "text": text}
    elif isinstance(data, bytes) and text is None:
        assert reply == {"type": "websocket.send", "bytes": data}
    else:
        assert reply["type"] == "websocket.close" and reply["code"] in CLOSE_CODES
    assert errors == []


async def handshake(path: str, headers: list, subprotocols: list[str]) -> dict:
    communicator = WebsocketCommunicator(
        __import__("project.asgi", fromlist=["application"]).application,
        "/",
        headers=headers,
        subprotocols=subprotocols,
    )
    communicator.scope["path"] = path
    await communicator.send_input({"type": "websocket.connect"})
    reply = await communicator.receive_output(timeout=2)
    if reply["type"] == "websocket.accept":
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
    else:
        await communicator.send_input({"type": "websocket.disconnect", "code": 1006})
    await communicator.wait(timeout=2)
    assert communicator.future.exception() is None
    return reply


@pytest.mark.django_db(transaction=True)
@FUZZ
@given(
    path=st.one_of(
        st.sampled_from(["/ws/echo/sync/", "/ws/echo/async/", "/ws/broadcast/async/r/"]),
        st.text(max_size=40),
    ),
    origin=st.one_of(
        st.none(),
        st.binary(max_size=40),
        st.sampled_from([b"http://[", b"http://a:99999", b"http://localhost"]),
    ),
    subprotocols=st.lists(st.text(min_size=1, max_size=12), max_size=4),
    extra_headers=st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from([b"cookie", b"host", b"x-forwarded-for"]),
                st.binary(min_size=1, max_size=12),
            ),
            st.one_of(
                st.binary(max_size=40), st.sampled_from([b"sessionid=nope", b"sessionid=", b";;=;"])
            ),
        ),
        max_size=4,
    ),
)
def test_any_path_headers_and_subprotocols_are_accepted_or_refused_cleanly(
    path, origin, subprotocols, extra_headers
):
    headers = [(b"origin", origin)] if origin is not None else []
    headers += [(name.lower(), value) for name, value in extra_headers]
    with ErrorRecords() as errors:
        reply = asyncio.run(handshake(path, headers, subprotocols))
    assert reply["type"] in {"websocket.accept", "websocket.close"}
    if reply["type"] == "websocket.accept":
        assert reply["subprotocol"] in ([*subprotocols, None])
        assert reply["subprotocol"] in ("echo.v1", None)
    assert errors == []


# --- over real sockets ----------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_invalid_utf8_in_a_text_frame_is_refused_by_the_server(asgi_server, kind):
    """What each server does with invalid UTF-8 (``tests.compat``): a 1007 or a dropped socket."""
    from tests.attacks import TEXT, close_code, frame, read_until_closed, websocket
    from tests.compat import BEHAVIOUR

    with websocket(asgi_server.port, f"/ws/echo/{kind}/") as sock:
        sock.sendall(frame(TEXT, b"ok \xff\xfe not utf-8"))
        data = read_until_closed(sock, timeout=2)
    expected = BEHAVIOUR[asgi_server.kind].invalid_utf8_close_code
    if expected is None:
        assert data == b"", f"expected a dropped connection, got {data!r}"
    else:
        # A close frame with no payload carries no code: the client reports 1005.
        assert close_code(data) == expected, data
    if asgi_server.kind == "uvicorn":  # one WARNING line, not uvicorn's own ERROR traceback
        asgi_server.wait_for_log(
            r"WARNING app\.server\S* closing 1007 INVALID_PAYLOAD for 127\.0\.0\.1:\d+ "
            rf"/ws/echo/{kind}/: text message is not UTF-8"
        )


@pytest.mark.server
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_short_load_loses_and_reorders_nothing(uvicorn_server, kind):
    result = subprocess.run(
        [sys.executable, "-m", "bench.load", "--url", f"{uvicorn_server.ws_url}/ws/echo/{kind}/",
         "--connections", "100", "--messages", "100", "--deadline", "60"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["received"] == 10_000 and figures["lost"] == 0 and figures["reordered"] == 0
    assert not figures["errors"] and not figures["timed_out"]


def healthz(server: LiveServer) -> dict:
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.mark.server
def test_abrupt_disconnects_leave_no_consumer_behind(server_env):
    with LiveServer("uvicorn", env=server_env) as server:
        for kind in ("sync", "async"):
            result = subprocess.run(
                [sys.executable, "-m", "bench.load", "--abrupt", "--connections", "500",
                 "--url", f"{server.ws_url}/ws/echo/{kind}/"],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["dropped"] == 500
        deadline = time.monotonic() + 5
        while (count := healthz(server)["websocket_connections"]) and time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval of the health endpoint
        assert count == 0
    log = server.log()
    # uvicorn reports a connection lost without a close frame as 1005 (no status received).
    assert (
        len(re.findall(r"disconnected code=(1005 NO_STATUS_RCVD|1006 ABNORMAL_CLOSURE)", log))
        == 1000
    )
    assert_clean_log(log)


# --- production settings and health ---------------------------------------------------------

PRODUCTION = {
    "DJANGO_ENV": "production",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "echo.example.com",
    "BEHIND_PROXY": "1",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECURE_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_is_clean_under_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_settings_are_strict():
    code = (
        "from django.conf import settings as s; import json; print(json.dumps([s.DEBUG, s.SESSION_COOKIE_SECURE,"
        " s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER, s.ALLOWED_HOSTS]))"
    )
    result = manage("shell", "-v", "0", "-c", code, env=PRODUCTION)
    assert json.loads(result.stdout) == [
        False, True, True, 31_536_000, ["HTTP_X_FORWARDED_PROTO", "https"], ["echo.example.com"]
    ]  # fmt: skip


@pytest.mark.parametrize(
    "missing, expected",
    [
        ("DJANGO_SECRET_KEY", "DJANGO_SECRET_KEY must be set when DJANGO_ENV=production"),
        ("DJANGO_ALLOWED_HOSTS", "DJANGO_ALLOWED_HOSTS must be set when DJANGO_ENV=production"),
    ],
)
def test_production_requires_its_secrets_in_one_line(missing, expected):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    result = manage("check", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == f"ImproperlyConfigured: {expected}"


def test_production_refuses_debug():
    result = manage("check", env={**PRODUCTION, "DJANGO_DEBUG": "1"})
    assert (
        result.stderr.strip()
        == "ImproperlyConfigured: DJANGO_DEBUG must be off when DJANGO_ENV=production"
    )


@pytest.mark.django_db
def test_healthz_reports_connections_and_the_layer(client):
    data = client.get("/healthz").json()
    assert data["status"] == "ok"
    assert isinstance(data["websocket_connections"], int)
    assert data["channel_layer"] == {"backend": "BoundedInMemoryChannelLayer", "reachable": True}


@pytest.mark.django_db
def test_healthz_says_degraded_not_500_when_redis_is_unreachable(client, settings):
    from channels.layers import channel_layers

    from tests.servers import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URLS = [settings.REDIS_URL]
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [settings.REDIS_URL]},
        }
    }
    channel_layers.backends.pop("default", None)
    try:
        response = client.get("/healthz")
    finally:
        channel_layers.backends.pop("default", None)
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["channel_layer"] == {"backend": "RedisChannelLayer", "reachable": False}
