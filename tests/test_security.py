"""The security review's findings (issue 32) and what held, one test each: static paths, DNS
rebinding, the Origin rules, public health details, tokens in logs, bootstrap tools; CSWSH on
every route, CSRF, cookie flags, open redirects, room-name collisions, and handshakes that
offer thousands of subprotocols or extensions.

What needs nginx in front is in tests/test_nginx.py; the trace listeners' bound in
tests/test_tracing.py; Redis health checks in tests/test_redis.py.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import re
import secrets
import time

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client

from app.explain import explain
from app.handshake import allowed_hosts_origin_validator
from app.logs import EscapingAccessFormatter, EscapingFormatter
from app.routing import URLRouter, websocket_urlpatterns
from tests.attacks import connect, read_until_closed, upgrade_request
from tests.conftest import assert_clean_log, make_communicator
from tests.servers import ROOT, LiveServer

ROUTES = (
    "/ws/echo/sync/",
    "/ws/echo/async/",
    "/ws/broadcast/sync/lobby/",
    "/ws/broadcast/async/lobby/",
    "/ws/trace/some-token/",
)


def raw_get(port: int, path: str, headers: str = "") -> tuple[int, bytes]:
    """``GET path`` sent byte for byte as given (no client normalises it): status and body."""
    sock = connect(port)
    try:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}"
            "Connection: close\r\n\r\n".encode()
        )
        response = read_until_closed(sock, timeout=5)
    finally:
        sock.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# --- 2. static paths out of the static folders ----------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize(
    "path",
    [
        "/static/../project/settings.py",
        "/static/..%2fproject/settings.py",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static//etc/passwd",
    ],
)
def test_a_static_path_out_of_the_static_folders_is_404_with_one_warning(uvicorn_server, path):
    """It was a 500, ``ERROR: Exception in ASGI application`` and a 60-line traceback."""
    status, body = raw_get(uvicorn_server.port, path)
    assert status == 404
    assert b"SECRET_KEY" not in body and b"root:" not in body  # nothing disclosed
    uvicorn_server.wait_for_log(re.escape(f'"GET {path} HTTP/1.1" 404'))  # the request's last
    log = uvicorn_server.log()[uvicorn_server.since :]
    assert_clean_log(log)
    warnings = re.findall(r"WARNING app\.static\[\d+\] refused static path (.*)", log)
    assert len(re.findall(r"\b(WARNING|ERROR)\b", log)) == len(warnings) <= 1, log


@pytest.mark.server
def test_a_static_file_is_still_served(uvicorn_server):
    status, body = raw_get(uvicorn_server.port, "/static/js/main.js")
    assert status == 200 and b"import" in body


# --- 3. DNS rebinding: a loopback probe must name the host by address -------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8000", 200),
        ("127.0.0.1", 200),
        ("localhost:8000", 200),
        ("localhost", 200),
        ("[::1]:8000", 200),
        ("rebind.attacker.example:8000", 400),
        ("evil.com", 400),
        ("127.0.0.1.evil.com", 400),
        ("localhost.evil.com:8000", 400),
    ],
)
def test_a_loopback_probe_is_answered_only_for_an_address_or_localhost(
    settings, caplog, path, host, status
):
    """A page at ``http://rebind.attacker.example:8000/`` resolving to 127.0.0.1 read /metrics:
    a browser on this host is a loopback client. Production's ALLOWED_HOSTS names the site."""
    settings.ALLOWED_HOSTS = ["echo.example.com"]
    with caplog.at_level(logging.INFO):
        response = Client().get(path, HTTP_HOST=host, REMOTE_ADDR="127.0.0.1")
    assert response.status_code == status
    if status == 400:  # refused like any foreign Host: Django's DisallowedHost, at WARNING
        records = [r for r in caplog.records if r.name == "django.security.DisallowedHost"]
        assert [r.levelname for r in records] == ["WARNING"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- 6. the Origin: scheme, host and port ---------------------------------------------------

PRODUCTION_SITE = {
    "PRODUCTION": True,
    "DEBUG": False,
    "ALLOWED_HOSTS": ["echo.example.com"],
    "CSRF_TRUSTED_ORIGINS": ["https://admin.example.org:8443", "https://*.example.net"],
}


async def real_check(origin: str, host: str | None, secure: bool, app=None) -> bool:
    """Whether the handshake stack (the Origin validator before the router) accepts it."""
    headers = [(b"origin", origin.encode("latin-1"))]
    if host is not None:
        headers.append((b"host", host.encode()))
    communicator = WebsocketCommunicator(
        app or make_communicator("/").application, "/ws/echo/async/", headers=headers
    )
    communicator.scope["scheme"] = "wss" if secure else "ws"
    accepted, _ = await communicator.connect()
    if accepted:
        await communicator.disconnect()
    return accepted


def explained(origin: str, host: str | None, secure: bool) -> bool:
    """What ``/handshake-check`` (app/explain.py) says of the same handshake."""
    verdict = explain(
        path="/ws/echo/async/",
        origin=origin,
        subprotocols=[],
        session=None,
        layer_reachable=lambda: True,
        host=host,
        secure=secure,
    )
    assert verdict.ok or verdict.rule == "origin", verdict
    return verdict.ok


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://echo.example.com", True),
        ("https://echo.example.com:443", True),
        ("http://echo.example.com", False),  # another scheme
        ("https://echo.example.com:8443", False),  # another port
        ("https://echo.example.com.", False),  # trailing dot
        ("https://echo.example.com.evil.example", False),  # look-alike
        ("https://evilecho.example.com", False),
        ("https://echo.example.com@evil.example", False),
        ("https://echo.example.com/", False),  # not a serialised origin
        ("null", False),
        ("file://", False),
        ("chrome-extension://abcdefghijklmnopabcdefghijklmnop", False),
        ("https://admin.example.org:8443", True),  # CSRF_TRUSTED_ORIGINS, as listed
        ("https://admin.example.org", False),  # ... on its port only
        ("https://app.example.net", True),  # https://*.example.net
        ("https://deep.app.example.net", True),
        ("http://app.example.net", False),
        ("https://example.net.evil.example", False),
    ],
)
async def test_production_accepts_https_on_the_default_port_and_the_trusted_origins(
    settings, origin, allowed
):
    for name, value in PRODUCTION_SITE.items():
        setattr(settings, name, value)
    app = allowed_hosts_origin_validator(URLRouter(websocket_urlpatterns))
    for host in ("echo.example.com", None):  # nginx passes $host; production ignores it
        assert await real_check(origin, host, True, app) is allowed
        assert explained(origin, host, True) is allowed  # the page is told the same


DEVELOPMENT_CASES = [
    # origin, Host header, over TLS, allowed
    ("http://127.0.0.1:8000", "127.0.0.1:8000", False, True),
    ("http://127.0.0.1:8001", "127.0.0.1:8000", False, False),  # another local page
    ("https://127.0.0.1:8000", "127.0.0.1:8000", False, False),
    ("http://localhost:8000", "127.0.0.1:8000", False, False),
    ("http://localhost:5555", "localhost:5555", False, True),
    ("http://localhost", "localhost", False, True),
    ("http://localhost:80", "localhost", False, True),
    ("http://[::1]:8000", "[::1]:8000", False, True),
    ("https://127.0.0.1:8443", "127.0.0.1:8443", True, True),  # TLS in front
    ("http://127.0.0.1:8443", "127.0.0.1:8443", True, False),
    ("http://rebind.attacker.example:8000", "rebind.attacker.example:8000", False, False),
    ("http://127.0.0.1.:8000", "127.0.0.1:8000", False, False),
    ("http://127.0.0.1:8000.evil.example", "127.0.0.1:8000", False, False),
    ("http://127.0.0.1:8000@evil.example", "127.0.0.1:8000", False, False),
    ("http://127.0.0.1:8000/", "127.0.0.1:8000", False, False),
    ("null", "127.0.0.1:8000", False, False),
    ("file://", "127.0.0.1:8000", False, False),
    ("chrome-extension://abcdefghijklmnop", "127.0.0.1:8000", False, False),
    # No Host: no browser's handshake; the Origin's host is checked alone.
    ("http://localhost:5555", None, False, True),
    ("http://evil.example", None, False, False),
]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("origin", "host", "secure", "allowed"), DEVELOPMENT_CASES)
async def test_development_accepts_the_origin_served_and_explain_agrees(
    origin, host, secure, allowed
):
    """A page at http://127.0.0.1:8000 may open ws://127.0.0.1:8000; any other local port,
    scheme or name may not (it was: any http://127.0.0.1:<port>)."""
    assert await real_check(origin, host, secure) is allowed
    assert explained(origin, host, secure) is allowed


@pytest.mark.django_db
def test_handshake_check_reads_the_host_and_scheme_of_its_own_request():
    client = Client()
    for origin, host, secure, allowed in DEVELOPMENT_CASES:
        if host is None or host.startswith("rebind."):
            continue  # no Host / a foreign one: Django answers the check itself 400
        verdict = client.get(
            "/handshake-check",
            {"path": "/ws/echo/async/", "origin": origin},
            HTTP_HOST=host,
            secure=secure,
        ).json()
        assert verdict["ok"] is allowed, (origin, host, verdict)


ATTACKER_ORIGINS = [
    "null",
    "http://evil.example",
    "http://127.0.0.1.evil.example",  # look-alike
    "http://127.0.0.1.:8000",  # trailing dot
    "file://",
    "chrome-extension://abcdefghijklmnopabcdefghijklmnop",
]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("origin", ATTACKER_ORIGINS)
async def test_cross_site_websocket_hijacking_is_refused_on_every_route(path, origin, caplog):
    communicator = make_communicator(
        path, origin=origin, extensions={"websocket.http.response": {}}
    )
    communicator.scope["headers"].append((b"host", b"127.0.0.1:8000"))
    with caplog.at_level(logging.WARNING):
        await communicator.send_input({"type": "websocket.connect"})
        start = await communicator.receive_output()
    assert start["status"] == 403
    assert f"403 Origin {origin!r} is not allowed" in caplog.text


# --- 8d. public health details --------------------------------------------------------------


@pytest.mark.django_db
def test_health_says_only_the_status_to_a_client_elsewhere_and_the_detail_to_loopback():
    public = Client(REMOTE_ADDR="203.0.113.9").get("/healthz")
    assert (public.status_code, public.json()) == (200, {"status": "ok"})
    local = Client(REMOTE_ADDR="127.0.0.1").get("/healthz").json()
    assert set(local) == {"status", "websocket_connections", "channel_layer", "rooms"}
    assert local["rooms"]["engine"] == "memory"


# --- 8b. tokens in logs ---------------------------------------------------------------------


def formatted(formatter: logging.Formatter, message: str, *args: object, name: str = "x") -> str:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, None)
    return formatter.format(record)


def test_our_formatters_and_uvicorns_access_formatter_redact_tokens():
    ours = EscapingFormatter("%(levelname)s %(name)s %(message)s")
    secret = secrets.token_urlsafe(24)
    for line in (
        formatted(ours, "refused %s %s: 403", "127.0.0.1:5", f"/ws/trace/{secret}/"),
        formatted(ours, "%s", f"/ws/echo/async/?trace={secret}&x=1"),
        formatted(ours, "%s", f"/healthz?a=1&token={secret}"),
        formatted(ours, "%s", f"/x?csrf_token={secret}"),
        formatted(ours, "%s", f"/handshake-check?path=%2Fws%2Ftrace%2F{secret}%2F"),
    ):
        assert secret not in line and "(redacted)" in line, line
    assert formatted(ours, "%s", "/ws/echo/async/?x=1").endswith("/ws/echo/async/?x=1")
    access = EscapingAccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s')
    line = formatted(
        access,
        '%s - "%s %s HTTP/%s" %d',
        "127.0.0.1:5",
        "GET",
        f"/healthz?trace={secret}",
        "1.1",
        200,
        name="a",
    )
    assert line == '127.0.0.1:5 - "GET /healthz?trace=(redacted) HTTP/1.1" 200 OK'


@pytest.mark.server
@pytest.mark.asyncio
async def test_no_token_reaches_the_servers_log(uvicorn_server):
    """uvicorn's access line for a traced socket and an HTTP request, and app.handshake's
    refusal of a trace socket, each named the token."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import InvalidStatus

    tokens = [secrets.token_urlsafe(24) for _ in range(3)]
    async with ws_connect(f"{uvicorn_server.ws_url}/ws/echo/async/?trace={tokens[0]}") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
    with pytest.raises(InvalidStatus):
        await ws_connect(f"{uvicorn_server.ws_url}/ws/trace/{tokens[1]}/")
    assert (await asyncio.to_thread(raw_get, uvicorn_server.port, f"/healthz?token={tokens[2]}"))[
        0
    ] == 200
    for pattern in (
        r'"WebSocket /ws/echo/async/\?trace=\(redacted\)" \[accepted\]',
        r"WARNING app\.handshake\[\d+\] refused \S+ /ws/trace/\(redacted\)/: 403",
        r'"GET /healthz\?token=\(redacted\) HTTP/1\.1" 200',
    ):
        uvicorn_server.wait_for_log(pattern)
    log = uvicorn_server.log()
    assert not [token for token in tokens if token in log]


# --- 8c. bootstrap tools --------------------------------------------------------------------


def test_the_venv_upgrades_pip_and_setuptools_before_installing_anything():
    """Debian's venv seeds pip 23.2.1 and setuptools 65.5.0, each with known CVEs."""
    recipe = (ROOT / "Makefile").read_text().split("$(STAMP): pyproject.toml\n", 1)[1]
    commands = [line.strip() for line in recipe.split("\n\n", 1)[0].splitlines()]
    commands = [line for line in commands if line and not line.startswith("#")]
    upgrade = next(i for i, c in enumerate(commands) if "--upgrade pip setuptools" in c)
    install = next(i for i, c in enumerate(commands) if " -e '." in c)
    assert commands[0].endswith("-m venv $(VENV)") and 0 < upgrade < install


# --- what held: CSRF, cookies, redirects, rooms, handshake offers ---------------------------


@pytest.mark.django_db
def test_a_trace_token_needs_the_csrf_token_and_a_same_site_origin():
    client = Client(enforce_csrf_checks=True)
    csrf = client.get("/").cookies["csrftoken"].value
    assert client.post("/trace/token").status_code == 403  # no CSRF token
    foreign = client.post("/trace/token", HTTP_X_CSRFTOKEN=csrf, HTTP_ORIGIN="http://evil.example")
    assert foreign.status_code == 403
    own = client.post("/trace/token", HTTP_X_CSRFTOKEN=csrf, HTTP_ORIGIN="http://testserver")
    assert own.status_code == 200 and own.json()["token"]


@pytest.mark.server
def test_production_cookies_are_secure_httponly_and_same_site_and_rebinding_is_refused(
    server_env,
):
    env = {
        **server_env,
        "DJANGO_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "echo.example.com",
        "BEHIND_PROXY": "1",
    }
    with LiveServer("uvicorn", env=env) as server:

        def request(method: str, path: str, **headers: str) -> http.client.HTTPResponse:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            headers = {"Host": "echo.example.com", "X-Forwarded-Proto": "https", **headers}
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            response.read()
            return response

        page = request("GET", "/")
        csrf_cookie = page.getheader("Set-Cookie")
        assert "Secure" in csrf_cookie and "SameSite=Lax" in csrf_cookie
        token = re.search(r"csrftoken=([^;]+)", csrf_cookie).group(1)
        issued = request(
            "POST",
            "/trace/token",
            Cookie=f"csrftoken={token}",
            **{"X-CSRFToken": token, "Origin": "https://echo.example.com"},
        )
        assert issued.status == 200
        session_cookie = issued.getheader("Set-Cookie")
        for flag in ("sessionid=", "Secure", "HttpOnly", "SameSite=Lax"):
            assert flag in session_cookie, session_cookie
        # DNS rebinding in production: a loopback client naming another host is refused.
        for path in ("/metrics", "/healthz"):
            assert request("GET", path, Host="evil.com").status == 400
            assert request("GET", path, Host=f"127.0.0.1:{server.port}").status == 200
    assert_clean_log(server.log())


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    ["//evil.example", "///evil.example/", "/\\evil.example", "/%2F%2Fevil.example",
     "/static//evil.example", "//evil.example/%2e%2e", "/healthz/..//evil.example"],
)  # fmt: skip
def test_no_path_redirects_off_the_site(client, path):
    response = client.get(path)
    location = response.get("Location", "")
    assert not re.match(r"^(https?:)?[/\\]{2}", location), (response.status_code, location)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_room_names_alike_are_different_rooms(communicator_factory):
    names = ["lobby", "Lobby", "lobby.", "lobby_", "lobby-", "lobby.x", "room.lobby", "lobby0"]
    members = {}
    for name in names:
        members[name] = communicator_factory(f"/ws/broadcast/async/{name}/")
        assert (await members[name].connect())[0]
    await members["lobby"].send_to(text_data="only lobby")
    assert await members["lobby"].receive_from() == "only lobby"
    for name in names[1:]:
        assert await members[name].receive_nothing(timeout=0.1)


@pytest.mark.server
@pytest.mark.parametrize(
    ("header", "count", "expect"),
    [
        ("Sec-WebSocket-Protocol", 2000, b"Sec-WebSocket-Protocol: echo.v1"),
        ("Sec-WebSocket-Extensions", 180, b"Sec-WebSocket-Extensions: permessage-deflate"),
    ],
)
def test_thousands_of_offers_get_one_answer_at_once(uvicorn_server, header, count, expect):
    """2,000 subprotocols (the one we speak last) and 180 deflate offers: one handshake
    answered within 1 s, one offer taken, the server unmoved."""
    if header == "Sec-WebSocket-Protocol":
        offers = [f"p{i}" for i in range(count - 1)] + ["echo.v1"]
    else:
        offers = [f"permessage-deflate; client_max_window_bits={9 + i % 7}" for i in range(count)]
    lines = "".join(f"{header}: {', '.join(offers[i : i + 100])}\r\n" for i in range(0, count, 100))
    started = time.monotonic()
    sock = connect(uvicorn_server.port)
    try:
        sock.sendall(upgrade_request("/ws/echo/async/", uvicorn_server.port, extra=lines))
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            assert chunk, response
            response += chunk
    finally:
        sock.close()
    assert time.monotonic() - started < 1.0
    assert response.startswith(b"HTTP/1.1 101"), response[:200]
    assert response.count(expect) == 1, response
    assert raw_get(uvicorn_server.port, "/healthz")[0] == 200
