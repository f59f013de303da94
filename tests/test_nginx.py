"""The service behind real nginx (Debian's), with TLS, as deploy/nginx.conf configures it.

The fixture makes a throwaway certificate, runs ``manage.py serve --workers 2`` on a private
``redis-server`` with ``BEHIND_PROXY=1``, and nginx from ``deploy/nginx.conf`` itself, with only
its ports, upstream, certificate paths and ``proxy_read_timeout`` (2 s) substituted, on free
loopback ports.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.servers import ROOT, LiveServer, free_port

pytestmark = [pytest.mark.server, pytest.mark.redis, pytest.mark.asyncio]

READ_TIMEOUT = 2  # nginx's proxy_read_timeout in the test; the server pings every second


def site_config(*, http_port: int, https_port: int, upstream: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with the test's ports, paths and read timeout."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    for old, new in (
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


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # poll interval while the port is not yet open
    raise TimeoutError(f"nginx did not open port {port}")


class Stack:
    def __init__(self, server: LiveServer, https_port: int, http_port: int, cert: Path):
        self.server, self.https_port, self.http_port = server, https_port, http_port
        self.context = ssl.create_default_context(cafile=str(cert))
        self.origin = f"https://127.0.0.1:{https_port}"

    def url(self, path: str) -> str:
        return f"wss://127.0.0.1:{self.https_port}{path}"

    def ws(self, path: str, **kwargs):
        kwargs.setdefault("origin", self.origin)
        return connect(self.url(path), ssl=self.context, **kwargs)


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
    env = {
        **server_env,
        "REDIS_URL": redis_server.url,
        "BEHIND_PROXY": "1",
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
        "WEBSOCKET_PING_INTERVAL": "1",
    }
    server = LiveServer("uvicorn", env=env, extra=("--workers", "2")).wait_ready()
    http_port, https_port = free_port(), free_port()
    site = tmp / "site.conf"
    site.write_text(site_config(http_port=http_port, https_port=https_port,
                                upstream=server.port, cert=cert, key=key))  # fmt: skip
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
        wait_for_port(https_port, nginx)
        yield Stack(server, https_port, http_port, cert)
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


async def test_rooms_work_through_nginx_with_two_workers_on_one_redis(stack):
    room = f"nginx-{time.monotonic_ns()}"
    members = [await stack.ws(f"/ws/broadcast/async/{room}/").__aenter__() for _ in range(6)]
    try:
        await members[0].send("to the room")
        for ws in members:
            assert await asyncio.wait_for(ws.recv(), 5) == "to the room"
    finally:
        for ws in members:
            await ws.close()
    pids = set(re.findall(r"Started server process \[(\d+)\]", stack.server.log()))
    assert (
        len(pids) == 2
    )  # two workers serve, sharing Redis (which one took a member is the kernel's)


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
