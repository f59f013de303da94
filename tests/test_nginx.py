"""The service behind real nginx (Debian's), with TLS, as deploy/nginx.conf configures it.

The fixture makes a throwaway certificate, runs ``manage.py serve --workers 2`` on a private
``redis-server`` with ``BEHIND_PROXY=1``, and nginx from ``deploy/nginx.conf`` itself, with only
its ports, upstream, certificate paths and ``proxy_read_timeout`` (2 s) substituted, on free
loopback ports.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import ROOT, LiveServer, free_port, wait_for_port

pytestmark = [pytest.mark.server, pytest.mark.redis, pytest.mark.asyncio]

READ_TIMEOUT = 2  # nginx's proxy_read_timeout in the test; the server pings every second


def site_config(
    *, http_port: int, https_port: int, upstream: int, cert: Path, key: Path, access_log: Path
) -> str:
    """deploy/nginx.conf with the test's ports, paths and read timeout."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    for old, new in (
        ("/var/log/nginx/channels-echo.access.log", str(access_log)),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};"),
        ("/etc/ssl/certs/echo.example.com.pem", str(cert)),
        ("/etc/ssl/private/echo.example.com.key", str(key)),
        ("proxy_read_timeout 60s;", f"proxy_read_timeout {READ_TIMEOUT}s;"),
        ("server_name echo.example.com;", "server_name 127.0.0.1;"),
    ):
        assert old in text, f"deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


#: The connection's log line ("accepted"), with the worker's process id (settings' log format).
ACCEPTED = r"app\.ws\[(\d+)\] \[ws#\d+ \w+ {address}:\d+ \S+\] accepted"


class Stack:
    def __init__(
        self, server: LiveServer, https_port: int, http_port: int, cert: Path, access_log: Path
    ):
        self.server, self.https_port, self.http_port = server, https_port, http_port
        self.access_log = access_log
        self.context = ssl.create_default_context(cafile=str(cert))
        self.origin = f"https://127.0.0.1:{https_port}"

    def url(self, path: str) -> str:
        return f"wss://127.0.0.1:{self.https_port}{path}"

    def ws(self, path: str, **kwargs):
        kwargs.setdefault("origin", self.origin)
        return connect(self.url(path), ssl=self.context, **kwargs)

    def worker_of(self, address: str) -> int:
        """The process id of the worker that accepted the client from ``address``."""
        return int(self.server.wait_for_log(ACCEPTED.format(address=re.escape(address))).group(1))

    def scrape(self) -> dict[tuple[str, tuple], float]:
        """/metrics from the upstream port (as Prometheus scrapes it): {(name, labels): value}.

        A new TCP connection each time, so successive scrapes reach either worker.
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200, response.read()
        text = response.read().decode()
        connection.close()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


async def clients_on_both_workers(stack: Stack, path: str, *, subnet: int, most: int = 40):
    """Clients from 127.0.<subnet>.1, .2, ... until each of the two workers holds two (the
    kernel decides which worker accepts); {worker pid: [connections]}."""
    by_worker: dict[int, list] = {}
    for host in range(1, most + 1):
        address = f"127.0.{subnet}.{host}"
        ws = await stack.ws(path, local_addr=(address, 0))
        by_worker.setdefault(stack.worker_of(address), []).append(ws)
        if len(by_worker) == 2 and all(len(group) >= 2 for group in by_worker.values()):
            return by_worker
    await close_all([ws for group in by_worker.values() for ws in group])
    raise AssertionError(f"{most} connections did not reach both workers: {list(by_worker)}")


async def close_all(connections) -> None:
    await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server, server_env):
    if not shutil.which("nginx") or not shutil.which("openssl"):
        pytest.skip("needs Debian's nginx and openssl")
    tmp = tmp_path_factory.mktemp("nginx")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    http_port, https_port = free_port(), free_port()
    env = {  # the README's production recipe, for this machine's site (127.0.0.1)
        **server_env,
        "DJANGO_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        # The site is on a port other than 443: its origin is listed, as Django's CSRF needs.
        "DJANGO_CSRF_TRUSTED_ORIGINS": f"https://127.0.0.1:{https_port}",
        "REDIS_URL": redis_server.url,
        "BEHIND_PROXY": "1",
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
        "WEBSOCKET_PING_INTERVAL": "1",
    }
    server = LiveServer("uvicorn", env=env, extra=("--workers", "2")).wait_ready()
    site, access_log = tmp / "site.conf", tmp / "access.log"
    site.write_text(site_config(http_port=http_port, https_port=https_port,
                                upstream=server.port, cert=cert, key=key,
                                access_log=access_log))  # fmt: skip
    for folder in ("client", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / folder).mkdir()
    (tmp / "nginx.conf").write_text(
        f"daemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp}/client;\n"
        f" proxy_temp_path {tmp}/proxy;\n fastcgi_temp_path {tmp}/fastcgi;\n"
        f" uwsgi_temp_path {tmp}/uwsgi;\n scgi_temp_path {tmp}/scgi;\n include {site};\n}}\n"
    )
    nginx = subprocess.Popen(
        ["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(https_port, nginx, "nginx", timeout=10)
        yield Stack(server, https_port, http_port, cert, access_log)
    finally:
        nginx.terminate()
        nginx.wait(10)
        server.stop()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_wss_echo_through_nginx(stack, kind):
    async with stack.ws(f"/ws/echo/{kind}/", subprotocols=["echo.v1"]) as ws:
        assert ws.subprotocol == "echo.v1"
        for message in ("through nginx", b"\x00\xff" * 100):
            await ws.send(message)
            assert await ws.recv() == message


async def test_the_log_has_the_clients_address_from_x_forwarded_for(stack):
    async with stack.ws("/ws/echo/async/", local_addr=("127.0.0.5", 0)) as ws:
        await ws.send("who am I")
        await ws.recv()
    # nginx connects from 127.0.0.1; the consumer's log line names the client, 127.0.0.5.
    stack.server.wait_for_log(r"\[ws#\d+ async 127\.0\.0\.5:\d+ /ws/echo/async/\] accepted")


async def test_the_sites_https_origin_is_accepted_and_a_foreign_one_refused(stack):
    async with stack.ws("/ws/echo/async/") as ws:  # Origin: https://127.0.0.1:PORT
        await ws.send("same site")
        assert await ws.recv() == "same site"
    with pytest.raises(InvalidStatus) as refused:
        async with stack.ws("/ws/echo/async/", origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403


async def test_an_idle_websocket_outlives_three_read_timeouts_thanks_to_the_servers_pings(stack):
    async with stack.ws("/ws/echo/async/") as ws:
        await asyncio.sleep(3 * READ_TIMEOUT + 0.5)  # the idle time under test, not a wait
        await ws.send("still here")
        assert await ws.recv() == "still here"


async def test_rooms_work_through_nginx_across_both_workers_on_one_redis(stack):
    room = f"nginx-{time.monotonic_ns()}"
    by_worker = await clients_on_both_workers(stack, f"/ws/broadcast/async/{room}/", subnet=10)
    members = [ws for group in by_worker.values() for ws in group]
    try:
        for group in by_worker.values():  # a message from a member of each worker reaches all
            await group[0].send(f"from {group[0].local_address}")
            for ws in members:
                assert await asyncio.wait_for(ws.recv(), 5) == f"from {group[0].local_address}"
    finally:
        await close_all(members)


async def test_plain_http_redirects_and_https_sends_hsts_and_healthz(stack):
    plain = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=5)
    plain.request("GET", "/", headers={"Host": "127.0.0.1"})
    response = plain.getresponse()
    assert response.status == 301
    assert response.headers["Location"].startswith("https://127.0.0.1/")
    secure = http.client.HTTPSConnection(
        "127.0.0.1", stack.https_port, timeout=5, context=stack.context
    )
    secure.request("GET", "/healthz")
    health = secure.getresponse()
    assert health.status == 200
    assert health.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert b'"status": "ok"' in health.read()


async def test_metrics_report_every_workers_connections_and_messages_in_each_scrape(stack):
    consumer = (("consumer", "EchoSyncConsumer"),)
    open_key = ("channels_echo_websocket_connections", consumer)
    received_key = ("channels_echo_websocket_messages_received_total", consumer)
    bytes_key = ("channels_echo_websocket_received_bytes_total", consumer)
    before = stack.scrape()
    by_worker = await clients_on_both_workers(stack, "/ws/echo/sync/", subnet=30)
    clients = [ws for group in by_worker.values() for ws in group]
    try:
        for ws in clients:
            for _ in range(3):
                await ws.send("12345")
                assert await ws.recv() == "12345"
        want = {
            open_key: before.get(open_key, 0) + len(clients),
            received_key: before.get(received_key, 0) + 3 * len(clients),
            bytes_key: before.get(bytes_key, 0) + 15 * len(clients),
        }
        deadline = time.monotonic() + 10  # sums reach the files within a second (FLUSH_INTERVAL)
        while True:
            scrapes = [stack.scrape() for _ in range(6)]  # either worker answers each
            got = [{key: scrape.get(key) for key in want} for scrape in scrapes]
            if all(values == want for values in got) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)  # poll interval while the workers flush
        assert got == [want] * 6
    finally:
        await close_all(clients)


async def test_nginx_does_not_expose_metrics(stack):
    secure = http.client.HTTPSConnection(
        "127.0.0.1", stack.https_port, timeout=5, context=stack.context
    )
    secure.request("GET", "/metrics")
    assert secure.getresponse().status == 404


async def test_the_page_over_https_echoes_on_both_consumers_and_joins_a_room_across_workers(
    stack,
):
    from playwright.async_api import async_playwright, expect

    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    room = f"browser-{time.monotonic_ns()}"
    by_worker = await clients_on_both_workers(stack, f"/ws/broadcast/sync/{room}/", subnet=40)
    members = [group[0] for group in by_worker.values()]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context = await browser.new_context(ignore_https_errors=True)  # the throwaway certificate
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(stack.origin + "/")
        state, received = page.locator("#state"), page.locator("#log li[data-kind='received']")
        for kind in ("async", "sync"):
            await page.select_option("#consumer", kind)
            await page.click("#connect")
            await expect(state).to_have_text("open")
            await page.fill("#text", f"wss {kind}")
            await page.press("#text", "Enter")
            await expect(received.last).to_contain_text(f"wss {kind}")
            await page.fill("#binary-size", "300")
            await page.click("#send-binary")
            await expect(received.last).to_contain_text("binary, 300 bytes")
            await page.click("#close")
            await expect(state).to_have_text("closed")
        await page.select_option("#mode", "room")
        await page.fill("#room", room)
        await page.click("#connect")
        await expect(state).to_have_text("open")
        for ws in members:  # one member on each worker: the page's own worker is one of them
            await ws.send(f"hello from {ws.local_address[0]}")
            await expect(received.last).to_contain_text(f"hello from {ws.local_address[0]}")
        await page.fill("#text", "hello from the page")
        await page.press("#text", "Enter")
        for ws in members:
            while (message := await asyncio.wait_for(ws.recv(), 5)) != "hello from the page":
                assert message.startswith("hello from 127.0.40.")  # the members' own, in order
        await browser.close()
    await close_all([ws for group in by_worker.values() for ws in group])
    assert errors == []


async def test_a_rolling_restart_closes_one_workers_clients_with_1012_and_spares_the_rest(stack):
    """SIGTERM to one worker (what `systemctl reload` does to each in turn, via uvicorn's SIGHUP):
    its clients are told 1012 (service restart), the other worker's clients go on, and uvicorn
    starts a replacement that serves new clients."""
    by_worker = await clients_on_both_workers(stack, "/ws/echo/async/", subnet=50)
    (victim, doomed), (_, spared) = sorted(by_worker.items())
    started = stack.server.log().count("Started server process")
    os.kill(victim, signal.SIGTERM)
    for ws in doomed:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    for ws in spared:
        await ws.send("not restarted")
        assert await ws.recv() == "not restarted"
    await close_all(spared)
    stack.server.wait_for_log(rf"Child process \[{victim}\] died", timeout=10)
    # the replacement: a third "Started server process" line, then it serves
    deadline = time.monotonic() + 20
    while stack.server.log().count("Started server process") <= started:
        assert time.monotonic() < deadline, stack.server.log()[-2000:]
        await asyncio.sleep(0.1)  # poll interval while uvicorn starts the replacement
    by_worker = await clients_on_both_workers(stack, "/ws/echo/async/", subnet=51)
    assert victim not in by_worker
    await close_all([ws for group in by_worker.values() for ws in group])


def https_get(stack: Stack, path: str, **headers: str) -> tuple[int, bytes]:
    """``GET path`` through nginx, the path sent as written."""
    secure = http.client.HTTPSConnection(
        "127.0.0.1", stack.https_port, timeout=5, context=stack.context
    )
    secure.request("GET", path, headers=headers)
    response = secure.getresponse()
    return response.status, response.read()


async def test_no_trace_token_reaches_nginxs_access_log_or_the_servers(stack):
    tokens = [secrets.token_urlsafe(24) for _ in range(3)]
    async with stack.ws(f"/ws/echo/async/?trace={tokens[0]}") as ws:
        await ws.send("traced?")
        assert await ws.recv() == "traced?"
    with pytest.raises(InvalidStatus):
        async with stack.ws(f"/ws/trace/{tokens[1]}/"):
            pass
    assert (await asyncio.to_thread(https_get, stack, f"/healthz?x=1&token={tokens[2]}"))[0] == 200
    deadline = time.monotonic() + 5  # nginx writes its line when each request ends
    while (log := stack.access_log.read_text()).count("(redacted)") < 3:
        assert time.monotonic() < deadline, log
        await asyncio.sleep(0.05)  # poll interval of the access log
    assert '"GET /ws/echo/async/?(redacted) HTTP/1.1" 101' in log
    assert '"GET /ws/trace/(redacted)/ HTTP/1.1" 403' in log
    assert '"GET /healthz?(redacted) HTTP/1.1" 200' in log
    assert not [token for token in tokens if token in log or token in stack.server.log()]


async def test_a_crafted_static_path_through_nginx_is_404_with_one_warning(stack):
    status, body = await asyncio.to_thread(https_get, stack, "/static/..%2fproject/settings.py")
    assert status == 404 and b"SECRET_KEY" not in body
    stack.server.wait_for_log(r'"GET /static/\.\.%2fproject/settings\.py HTTP/1\.1" 404')
    log = stack.server.log()[stack.server.since :]
    assert len(re.findall(r"WARNING app\.static\S* refused static path", log)) == 1, log
    assert "ERROR" not in log and "Traceback" not in log, log


async def test_health_through_nginx_tells_a_client_elsewhere_only_the_status(stack):
    status, body = await asyncio.to_thread(
        https_get, stack, "/healthz", **{"X-Forwarded-For": "203.0.113.9"}
    )  # to the app, the client is 203.0.113.9 (nginx appends this test's own 127.0.0.1)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, body = await asyncio.to_thread(https_get, stack, "/healthz")
    assert set(json.loads(body)) == {"status", "websocket_connections", "channel_layer", "rooms"}


@pytest.mark.parametrize(
    "path",
    ["/metrics", "//metrics", "/./metrics", "/%6Detrics", "/metrics/", "/metrics?x=1",
     "/healthz/../metrics", "/static/../metrics", "/METRICS", "/metrics%3F"],
)  # fmt: skip
@pytest.mark.parametrize("forwarded", [None, "127.0.0.1", "127.0.0.1, 127.0.0.1"])
async def test_metrics_stay_private_through_nginx_under_path_tricks_and_forged_addresses(
    stack, path, forwarded
):
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    status, body = await asyncio.to_thread(https_get, stack, path, **headers)
    assert status in (400, 404), (status, body[:200])
    assert b"channels_echo" not in body


async def test_the_origin_through_nginx_must_be_the_site_scheme_and_port_as_served(stack):
    for origin in (f"http://127.0.0.1:{stack.https_port}", f"https://127.0.0.1:{stack.http_port}"):
        with pytest.raises(InvalidStatus) as refused:
            async with stack.ws("/ws/echo/async/", origin=origin):
                pass
        assert refused.value.response.status_code == 403
    query = f"/handshake-check?path=/ws/echo/async/&origin={stack.origin}"
    status, body = await asyncio.to_thread(https_get, stack, query)
    assert status == 200 and json.loads(body)["ok"] is True  # the page is told the same


async def test_no_room_token_reaches_nginxs_access_log_or_the_servers(stack):
    """A room token (``?token=``, app/room_access.py) on a socket's query, and percent-encoded
    in the path ``/handshake-check`` is asked about (what the page sends when a room refuses):
    nginx logs each query as ``?(redacted)``. (The echo route ignores the token.)"""
    tokens = [secrets.token_urlsafe(24) for _ in range(3)]
    async with stack.ws(f"/ws/echo/async/?x=1&token={tokens[0]}") as ws:
        await ws.send("room token?")
        assert await ws.recv() == "room token?"
    check = "/handshake-check?path=%2Fws%2Fbroadcast%2Fasync%2Fprivate.a%2F%3Fsince%3De%3A1%26"
    for path in (f"{check}token%3D{tokens[1]}", f"/handshake-check?path=/ws/trace/{tokens[2]}/"):
        assert (await asyncio.to_thread(https_get, stack, path))[0] == 200
    deadline = time.monotonic() + 5  # nginx writes its line when each request ends
    while (log := stack.access_log.read_text()).count("/handshake-check?(redacted)") < 2:
        assert time.monotonic() < deadline, log
        await asyncio.sleep(0.05)  # poll interval of the access log
    assert '"GET /ws/echo/async/?(redacted) HTTP/1.1" 101' in log
    assert not [token for token in tokens if token in log or token in stack.server.log()]
