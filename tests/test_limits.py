"""Hostile and broken clients against a real ``manage.py serve`` process (loopback only).

Each test is one row of docs/hardening.md's attack table: it runs the attack for a bounded time
while a prober in its own process asks ``/healthz`` and echoes on fresh connections, and checks
that the attacker got a defined answer with one log line, that the server's RSS stayed bounded,
and that every probe answered within 500 ms. Timeouts are set short here (2 s) to keep the
suite fast; ``test_the_bounds_have_their_documented_defaults`` pins the defaults.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time

import pytest
from django.conf import settings

from tests.attacks import (
    BINARY,
    CONT,
    PING,
    TEXT,
    Prober,
    RssWatch,
    close_code,
    connect,
    frame,
    read_until_closed,
    sustained,
    upgrade_request,
    websocket,
)
from tests.servers import LiveServer

pytestmark = pytest.mark.server

RSS_BOUND_MIB = 64
SHORT = {
    "HTTP_HEADER_TIMEOUT": "2",
    "WEBSOCKET_SEND_TIMEOUT": "2",
    "WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT": "200",
    "LOG_LEVEL": "WARNING",
}


@pytest.fixture(scope="module")
def server(server_env):
    with LiveServer("uvicorn", env={**server_env, **SHORT}) as live:
        yield live


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def test_the_bounds_have_their_documented_defaults():
    assert settings.HTTP_MAX_HEADER_BYTES == 16 * 1024
    assert settings.HTTP_MAX_HEADERS == 100
    assert settings.HTTP_HEADER_TIMEOUT == 10
    assert settings.WEBSOCKET_MAX_CONNECTIONS == 0  # the open-file limit less 1,000
    assert settings.WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT == 2_000
    assert (settings.WEBSOCKET_FRAME_RATE, settings.WEBSOCKET_FRAME_BURST) == (50_000, 16_384)
    assert settings.WEBSOCKET_WRITE_BUFFER_BYTES == 256 * 1024
    assert settings.WEBSOCKET_SEND_TIMEOUT == 10


# --- the handshake -----------------------------------------------------------------------------


def test_an_endless_header_block_gets_431_and_a_closed_socket(server):
    def endless_header() -> bytes:
        with connect(server.port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sent = 0
            try:
                while sent < 64 * 1024 * 1024:  # bounded: 64 MiB at most
                    sock.sendall(b"X-Filler: " + b"a" * 4000 + b"\r\n")
                    sent += 4012
            except OSError:
                pass  # the server closed: what we wait for
            return read_until_closed(sock)

    with RssWatch(server.process.pid) as rss, Prober(server.port) as prober:
        responses = sustained(endless_header, most=10_000)
    assert [status_of(r) for r in responses] == [431] * len(responses), responses[0][:200]
    assert rss.growth_mib < RSS_BOUND_MIB
    prober.assert_responsive()
    server.wait_for_log(r"refused 127\.0\.0\.1:\d+: 431 request head over 16384 bytes")


def _upgrade(path: str, port: int, extra: str = "") -> bytes:
    return upgrade_request(path, port, extra=extra)


@pytest.mark.parametrize(
    ("name", "request_bytes", "status", "log"),
    [
        ("64 KiB header", lambda port: _upgrade("/ws/echo/async/", port, f"X-Big: {'a' * 65536}\r\n"), 431, "431 request head over"),
        ("500 headers", lambda port: _upgrade("/ws/echo/async/", port, "".join(f"X-{i}: v\r\n" for i in range(500))), 431, "431 more than 100 header lines"),
        ("8 KB path", lambda port: _upgrade("/ws/echo/async/" + "a" * 8192, port), 414, "handshake"),
        ("8 KB query", lambda port: _upgrade("/ws/echo/async/?q=" + "a" * 8192, port), 414, "handshake"),
        ("10 KB subprotocol", lambda port: _upgrade("/ws/echo/async/", port, f"Sec-WebSocket-Protocol: {'a' * 10240}\r\n"), 431, "handshake"),
        ("9.4 KB Cookie", lambda port: _upgrade("/ws/echo/async/", port, f"Cookie: c={'a' * 9400}\r\n"), 431, "handshake"),
        ("99 small headers on a page request", lambda port: b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n", 200, None),
    ],
)  # fmt: skip
def test_oversize_handshakes_get_their_status_and_a_closed_socket(
    server, name, request_bytes, status, log
):
    with connect(server.port) as sock:
        sock.sendall(request_bytes(server.port))
        if status == 200:  # within the bounds: served as usual
            assert status_of(sock.recv(65536)) == 200
            return
        started = time.monotonic()
        response = read_until_closed(sock)
    assert status_of(response) == status, response[:200]
    assert time.monotonic() - started < 2, "the socket was left open"
    server.wait_for_log(rf"refused 127\.0\.0\.1:\d+: (handshake )?.*{re.escape(log)}")


def test_slowloris_connections_get_408_at_the_deadline(server):
    sockets = [connect(server.port) for _ in range(200)]
    silent = connect(server.port)  # sends nothing at all
    started = time.monotonic()
    with Prober(server.port) as prober:
        for sock in sockets:
            sock.sendall(b"GET / HTTP/1.1\r\n")
        # One header byte each, every 0.5 s, as slowloris does, until the server answers.
        answered: dict[socket.socket, bytes] = {}
        while len(answered) < len(sockets) and time.monotonic() - started < 6:
            for sock in sockets:
                if sock in answered:
                    continue
                try:
                    sock.sendall(b"X")
                    sock.settimeout(0.002)
                    answered[sock] = sock.recv(4096)
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:  # closed: its 408 may be waiting to be read
                    answered[sock] = read_until_closed(sock, timeout=1)
            time.sleep(0.5)  # the attacker's pace, not a synchronisation
        silent_answer = read_until_closed(silent)
    elapsed = time.monotonic() - started
    for sock in [*sockets, silent]:
        sock.close()
    assert len(answered) == len(sockets), f"{len(sockets) - len(answered)} never answered"
    statuses = [status_of(a) for a in answered.values()]
    assert statuses == [408] * len(sockets), f"{len(sockets) - statuses.count(408)} got no 408"
    assert status_of(silent_answer) == 408
    assert elapsed < 5  # deadline 2 s, plus the pace
    prober.assert_responsive()
    server.wait_for_log(r"408 no complete request head within 2 s")


# --- connections -------------------------------------------------------------------------------


def test_one_address_past_its_connection_cap_gets_503_and_others_still_connect(server):
    """The 20,000-connection flood, from 127.0.0.2: its first 200 (the test's cap) are served."""
    held, refused = [], 0

    def one_more() -> bool:
        """A connection past the cap: True when it was refused with 503."""
        try:
            held.append(websocket(server.port, source="127.0.0.2"))
        except ConnectionRefusedError as error:
            return "503" in str(error)
        return False

    with RssWatch(server.process.pid) as rss, Prober(server.port) as prober:
        refused = sum(one_more() for _ in range(400))
        beyond = sustained(one_more, most=2000)  # the flood goes on, the cap holds
        for sock in held:
            sock.close()
    assert (len(held), refused) == (200, 200)
    assert all(beyond), f"{beyond.count(False)} got in past the cap"
    assert rss.growth_mib < RSS_BOUND_MIB
    prober.assert_responsive()  # 127.0.0.1's fresh echoes got in throughout
    lines = re.findall(r"refused 127\.0\.0\.2:\d+: 503 .*", server.log())
    assert len(lines) == 1, lines  # one line for the burst, not 200
    assert "200 WebSockets open from 127.0.0.2, the limit is 200" in lines[0]


def test_the_process_cap_refuses_with_503_and_the_fd_limit_is_reported(server_env):
    env = {
        **server_env,
        "WEBSOCKET_MAX_CONNECTIONS": "50",
        "WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT": "0",
    }
    with LiveServer("uvicorn", env=env) as capped:
        held = [websocket(capped.port) for _ in range(50)]
        with pytest.raises(ConnectionRefusedError, match="503"):
            websocket(capped.port, source="127.0.0.3")
        for sock in held:
            sock.close()
        capped.wait_for_log(r"open-file limit \d+: at most 50 WebSockets per process")
        capped.wait_for_log(
            r"refused 127\.0\.0\.3:\d+: 503 50 WebSockets open, the process limit is 50"
        )


# --- frames ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_accepted_connection_keeps_no_handshake_response():
    """uvicorn's protocol, driven as uvicorn drives it, with an application that accepts: the
    101 goes out, and the response it was built from is not kept for the connection's life
    (app/server/; 0.6 KiB of the 20 an idle connection holds, docs/performance.md)."""
    import asyncio

    from app.server import WebSocketProtocol
    from tests.uvicorn_protocol import drive

    accepted = asyncio.Event()

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        accepted.set()
        await receive()  # open until the test ends

    protocol, transport = drive(WebSocketProtocol, app)
    await asyncio.wait_for(accepted.wait(), 5)
    written = b"".join(call.args[0] for call in transport.write.call_args_list)
    assert written.startswith(b"HTTP/1.1 101")
    assert protocol.handshake_complete
    assert protocol.response is None
    protocol.connection_lost(None)
    await asyncio.wait_for(asyncio.gather(*protocol.tasks), 5)


@pytest.mark.asyncio
async def test_reading_pauses_once_a_second_message_waits_and_resumes_when_all_are_taken():
    """The server's read-ahead is one message (app/server/): a ping-pong never pauses, a
    client that sends faster than its application reads is paused at the second message."""
    from unittest import mock

    from app.server import MessageQueue, WebSocketProtocol

    protocol = WebSocketProtocol.__new__(WebSocketProtocol)  # only what the two methods touch
    protocol.queue, protocol.transport = MessageQueue(), mock.Mock()
    protocol.read_paused, protocol.close_sent = False, False

    def message_from_client(data: bytes) -> None:
        protocol.frames, protocol.curr_msg_data_type = [data], "text"
        protocol.send_receive_event_to_app()

    message_from_client(b"one")
    assert not protocol.transport.pause_reading.called  # ping-pong: nothing to pause for
    assert await protocol.receive() == {"type": "websocket.receive", "text": "one"}
    for text in (b"two", b"three", b"four"):
        message_from_client(text)
    assert protocol.transport.pause_reading.call_count == 1
    assert protocol.queue.qsize() == 3  # what one read held: nothing more is read
    for _ in range(3):
        assert not protocol.transport.resume_reading.called
        await protocol.receive()
    assert protocol.transport.resume_reading.call_count == 1
    assert not protocol.read_paused


def test_uvicorn_uses_its_message_queue_only_as_message_queue_provides():
    """``MessageQueue`` replaces uvicorn's ``asyncio.Queue`` (app/server/): if uvicorn starts
    calling another method of it, this fails before a connection does."""
    import ast
    import inspect

    from uvicorn.protocols.websockets import websockets_sansio_impl

    from app.server import MessageQueue

    tree = ast.parse(inspect.getsource(websockets_sansio_impl))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "queue"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert used and used <= {"put_nowait", "get", "empty", "qsize"}, used
    assert all(callable(getattr(MessageQueue, name)) for name in used)


@pytest.mark.asyncio
async def test_the_message_queue_loses_nothing_to_a_cancelled_receive_and_serves_two_readers():
    import asyncio

    from app.server import MessageQueue

    queue = MessageQueue()
    receive = queue.get

    # A reader cancelled after the message arrived, before it ran: the message stays queued.
    reader = asyncio.create_task(receive())
    await asyncio.sleep(0)  # one turn of the loop: the task starts, and waits
    assert len(queue.waiters) == 1
    queue.put_nowait("one")
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert await receive() == "one"

    # Waits cancelled on an idle queue leave at most one future behind.
    for _ in range(100):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(receive(), 0.001)
    assert len(queue.waiters) <= 1

    # Two readers at once: each gets one message, in order.
    readers = [asyncio.create_task(receive()) for _ in range(2)]
    await asyncio.sleep(0)
    assert len(queue.waiters) == 2
    queue.put_nowait("two")
    queue.put_nowait("three")
    assert sorted(await asyncio.wait_for(asyncio.gather(*readers), 5)) == ["three", "two"]
    assert not queue and not queue.waiters


def test_a_ping_flood_is_closed_1008_at_the_frame_rate(server):
    pings = frame(PING, b"p" * 125) * 1000

    def ping_flood() -> tuple[float, int | None]:
        """One flooding client (it reads nothing, not even pongs): how long until it was
        closed, and the close code it got."""
        with websocket(server.port, rcvbuf=4096) as sock:
            started = time.monotonic()
            sock.settimeout(1)
            while time.monotonic() - started < 10:
                try:
                    sock.sendall(pings)  # never reading the pongs
                except TimeoutError:
                    continue  # the server has stopped reading us: keep pushing
                except OSError:
                    break  # closed
            elapsed = time.monotonic() - started
            return elapsed, close_code(read_until_closed(sock, timeout=1))

    with RssWatch(server.process.pid) as rss, Prober(server.port) as prober:
        floods = sustained(ping_flood, most=50)
    # Closed at the frame rate, or, on a machine too slow to send that fast, at the send timeout;
    # None: the close frame sat behind unread pongs.
    for elapsed, code in floods:
        assert elapsed < 8, "not closed"
        assert code in (1008, None)
    assert rss.growth_mib < RSS_BOUND_MIB
    prober.assert_responsive()
    server.wait_for_log(
        r"closing 1008 POLICY_VIOLATION for 127\.0\.0\.1:\d+ /ws/echo/async/: (frame rate limit|client not reading)"
    )


def test_a_slow_ping_flood_that_never_reads_is_dropped_at_the_send_timeout(server):
    """Under the frame rate, but the pongs pile up: reading pauses, then the client is dropped."""
    sock = websocket(server.port, rcvbuf=4096)
    batch = frame(PING, b"p" * 125) * 200
    with RssWatch(server.process.pid) as rss, Prober(server.port) as prober, sock:
        started = time.monotonic()
        sock.settimeout(1)
        try:
            while time.monotonic() - started < 8:
                sock.sendall(batch)  # 200 pings per 10 ms: 20,000 a second
                time.sleep(0.01)  # the attacker's pace
        except OSError:
            pass
    assert time.monotonic() - started < 7, "not dropped"
    assert rss.growth_mib < RSS_BOUND_MIB
    prober.assert_responsive()
    server.wait_for_log(
        r"closing 1008 POLICY_VIOLATION for 127\.0\.0\.1:\d+ /ws/echo/async/: client not reading"
    )


def test_a_flood_of_empty_fragments_meets_the_frame_rate(server):
    """Empty fragments hold no bytes, so the message limit never stops them; the frame rate
    does (its burst is 10,000): 30,000 of them, as fast as the socket takes them."""
    with websocket(server.port) as sock:
        with contextlib.suppress(OSError):  # the server may close before we finish
            sock.sendall(frame(TEXT, b"x", fin=False) + frame(CONT, b"", fin=False) * 30_000)
        answer = read_until_closed(sock)
    # None: the server closed with our unread frames in its buffer, and the reset that sends
    # took the close frame with it; its line says what it did.
    assert close_code(answer) in (1008, None)
    server.wait_for_log(
        r"closing 1008 POLICY_VIOLATION for 127\.0\.0\.1:\d+ /ws/echo/async/: frame rate limit"
    )


@pytest.mark.asyncio
async def test_fragments_are_joined_into_one_buffer_as_they_come():
    """5,000 one-byte fragments: the connection holds one buffer of 5,001 bytes, not 5,001
    objects (uvicorn's list of ``bytes`` held about 100 bytes per fragment), and the message
    reaches the application whole."""
    import asyncio

    from app.server import WebSocketProtocol
    from tests.uvicorn_protocol import drive

    got = asyncio.get_running_loop().create_future()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        got.set_result(await receive())
        await receive()

    protocol, _ = drive(WebSocketProtocol, app)
    await asyncio.sleep(0)  # the application starts and accepts
    protocol.data_received(frame(BINARY, b"x", fin=False) + frame(CONT, b"y", fin=False) * 5000)
    assert [type(part) for part in protocol.frames] == [bytearray]
    assert len(protocol.frames[0]) == 5001
    protocol.data_received(frame(CONT, b"z"))
    message = await asyncio.wait_for(got, 5)
    assert message["bytes"] == b"x" + b"y" * 5000 + b"z" and type(message["bytes"]) is bytes
    protocol.connection_lost(None)
    await asyncio.wait_for(asyncio.gather(*protocol.tasks), 5)


# --- clients that do not read ------------------------------------------------------------------


def never_reads(sock: socket.socket, message: bytes, *, within: float = 12.0) -> bool:
    """Ask for echoes and never read them, for at most ``within`` seconds; True if the server
    dropped us meanwhile (a send then fails), False if we were still connected at the end."""
    sock.settimeout(1)
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            sock.sendall(message)
        except TimeoutError:
            continue  # the server has stopped reading from us: keep pushing
        except OSError:
            return True
    return False


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_clients_that_never_read_are_dropped_and_hold_no_thread(server, kind):
    """40 clients (more than the 8 sync lanes) ask for echoes and never read them.

    No handler waits on them: the sync lanes do not grow past their 8 (they open more only
    while every lane's handler has been blocked for 0.1 s), so the server's threads stay
    within the 8 lanes it may start, whatever it had before.
    """
    from concurrent.futures import ThreadPoolExecutor

    message = frame(BINARY, b"x" * 65535)
    clients = [websocket(server.port, f"/ws/echo/{kind}/", rcvbuf=4096) for _ in range(40)]
    attackers = ThreadPoolExecutor(len(clients))
    with RssWatch(server.process.pid) as rss, Prober(server.port) as prober, attackers:
        dropped = list(attackers.map(lambda sock: never_reads(sock, message), clients))
    for sock in clients:
        sock.close()
    assert all(dropped), f"{dropped.count(False)} of {len(clients)} still connected"
    assert rss.growth_mib < RSS_BOUND_MIB
    lanes = settings.SYNC_CONSUMER_THREADS
    assert rss.threads_peak <= rss.threads_before + lanes, (rss.threads_before, rss.threads_peak)
    prober.assert_responsive()
    pattern = (
        rf"closing 1008 POLICY_VIOLATION for 127\.0\.0\.1:\d+ /ws/echo/{kind}/: client not reading"
    )
    assert len(re.findall(pattern, server.log())) >= len(clients)


# --- logs ----------------------------------------------------------------------------------------


def test_client_text_cannot_forge_a_log_line(server):
    path = "/ws/nope/%0AERROR%20app.ws%20FORGED-BY-CLIENT%1B[31m%00"
    for origin, status in (("http://evil.example", 403), ("http://evil.example\x1b[2J", 400)):
        with connect(server.port) as sock:
            sock.sendall(upgrade_request(path, server.port, extra=f"Origin: {origin}\r\n"))
            assert status_of(read_until_closed(sock)) == status
    server.wait_for_log(r"FORGED-BY-CLIENT")
    server.wait_for_log(r"refused 127\.0\.0\.1:\d+: handshake did not receive a valid HTTP request")
    log = server.log()
    assert not re.search(r"^ERROR app\.ws FORGED", log, re.MULTILINE), "a client started a log line"
    assert "\x1b" not in log and "\x00" not in log
    assert "\\x0aERROR app.ws FORGED-BY-CLIENT\\x1b[31m\\x00" in log


# --- trace tokens ------------------------------------------------------------------------------


def test_anonymous_trace_token_requests_cost_no_storage(server, server_env):
    """500 POST /trace/token without a session cookie: before, one django_session row each."""
    import http.client
    import sqlite3

    def request(method: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request(method, path, headers=headers)
        return connection.getresponse()

    page = request("GET", "/", {})
    csrf = page.headers["Set-Cookie"].split("csrftoken=", 1)[1].split(";", 1)[0]
    cookies = []
    for _ in range(500):
        response = request(
            "POST",
            "/trace/token",
            {"Cookie": f"csrftoken={csrf}", "X-CSRFToken": csrf, "Origin": server.http_url},
        )
        assert response.status == 200
        cookies.append(response.headers["Set-Cookie"])
    with sqlite3.connect(server_env["DJANGO_DB_PATH"]) as db:
        (rows,) = db.execute("select count(*) from django_session").fetchone()
    assert rows == 0
    assert all("sessionid=" in cookie for cookie in cookies)  # each got its token, in its cookie


def test_one_session_keeps_at_most_eight_tokens():
    from importlib import import_module

    from app.tracing import SESSION_KEY, issue_token

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    issued = [issue_token(session)[0] for _ in range(20)]
    assert list(session[SESSION_KEY]) == issued[-8:]


# --- rooms ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def room_server(server_env):
    """The in-memory layer with small queues (100 messages), so that a slow member overflows."""
    env = {**server_env, **SHORT, "CHANNEL_CAPACITY": "100"}
    with LiveServer("uvicorn", env=env) as live:
        yield live


@pytest.mark.asyncio
async def test_a_room_with_a_member_that_never_reads_loses_no_one_a_message_silently(room_server):
    """30 members read, one never does; 3 of the readers send 150 messages of 16 KiB each.

    Every reader gets every message, each sender's in order, or is closed with 1013 and a line
    saying how many it lost. A sender that is closed stops mid-way: the others get a gap-free
    start of its messages. Afterwards a new message still reaches every reader left. The member
    that never reads is offered 7 MiB, more than its socket buffers, the server's write buffer
    and its layer queue (100 messages) hold together, so it must fall behind: it is closed, with
    1013 (fell behind) or 1008 (not reading), and a line says so.
    """
    import asyncio

    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    url = f"{room_server.ws_url}/ws/broadcast/async/bomb/"
    deaf = websocket(room_server.port, "/ws/broadcast/async/bomb/", rcvbuf=4096)
    readers = [await ws_connect(url, max_size=2**20) for _ in range(30)]
    senders, per_sender, pad = 3, 150, "x" * 16384

    # A sender's last message has been published once it comes back to the sender itself.
    published = [asyncio.Event() for _ in range(senders)]

    async def read_all(ws, me: int) -> tuple[dict[str, list[int]], int | None]:
        """Until the closing "end" (each sender's messages keep their order, not all of them)."""
        heard: dict[str, list[int]] = {}
        try:
            while (text := await asyncio.wait_for(ws.recv(), 30)) != "end":
                sender, index = text.split(":")[0].split("-")
                heard.setdefault(sender, []).append(int(index))
                if sender == f"s{me}" and int(index) == per_sender - 1:
                    published[me].set()
            return heard, None
        except ConnectionClosed as closed:
            if me < senders:
                published[me].set()  # closed: it publishes nothing more
            return heard, closed.rcvd.code if closed.rcvd else None

    async def send_all(ws, sender: int) -> None:
        with contextlib.suppress(ConnectionClosed):  # a sender that falls behind is closed too
            for index in range(per_sender):
                await ws.send(f"s{sender}-{index}:{pad}")
        await asyncio.wait_for(published[sender].wait(), 30)

    with RssWatch(room_server.process.pid) as rss, Prober(room_server.port) as prober:
        listening = [asyncio.create_task(read_all(ws, i)) for i, ws in enumerate(readers)]
        await asyncio.gather(*(send_all(readers[s], s) for s in range(senders)))
        async with ws_connect(url) as last:  # joins behind all of it: its "end" comes last
            await last.send("end")
            outcomes = await asyncio.gather(*listening)
    deaf_port = deaf.getsockname()[1]
    room_server.wait_for_log(
        rf"127\.0\.0\.1:{deaf_port} /ws/broadcast/async/bomb/\] closing 1013 TRY_AGAIN_LATER: fell behind"
        rf"|closing 1008 POLICY_VIOLATION for 127\.0\.0\.1:{deaf_port} /ws/broadcast/async/bomb/: client not reading",
        timeout=10,
    )
    deaf.close()
    told = [heard for heard, code in outcomes if code == 1013]
    served = [heard for heard, code in outcomes if code is None]
    assert len(told) + len(served) == len(readers), [code for _, code in outcomes]
    print(f"{len(served)} readers got everything, {len(told)} fell behind and were told")
    kept_on = {f"s{s}" for s in range(senders) if outcomes[s][1] is None}
    for heard in served:
        for sender, indexes in heard.items():
            assert indexes == list(range(len(indexes))), f"{sender}: a gap or a reordering"
        assert all(len(heard.get(sender, ())) == per_sender for sender in kept_on), heard.keys()
    assert rss.growth_mib < 512
    prober.assert_responsive()
    told_lines = re.findall(r"closing 1013 TRY_AGAIN_LATER: fell behind", room_server.log())
    assert len(told_lines) >= len(told)  # one line each (and maybe one for the deaf member)
    assert served, "every reader fell behind: the test's own client is too slow to show anything"
    survivors = [ws for ws, (_, code) in zip(readers, outcomes, strict=True) if code is None]
    await survivors[0].send("again")
    for ws in survivors:  # the room still works for every member left
        assert (await asyncio.wait_for(ws.recv(), 10)).startswith("again")
        await ws.close()


@pytest.mark.asyncio
async def test_a_member_that_never_reads_holds_bounded_bytes_of_big_messages(server_env):
    """Two members, one never reads; the other sends 480 messages of 200 KiB (96 MiB, over the
    64 MiB the server's RSS may grow by).

    Channels' layer counts messages only: 10,000 of 256 KiB held 2.5 GiB for the silent member.
    Here its queue holds at most CHANNEL_CAPACITY_BYTES (16 MiB) and it is dropped or told.
    """
    import asyncio

    from websockets.asyncio.client import connect as ws_connect

    payload = b"x" * (200 * 1024)
    with LiveServer("uvicorn", env={**server_env, **SHORT}) as room_server:  # a log of its own
        url = f"{room_server.ws_url}/ws/broadcast/async/heavy/"
        deaf = websocket(room_server.port, "/ws/broadcast/async/heavy/", rcvbuf=4096)
        with RssWatch(room_server.process.pid) as rss:
            async with ws_connect(url, max_size=2**20) as sender:
                for _ in range(480):
                    await sender.send(payload)
                    assert await asyncio.wait_for(sender.recv(), 10) == payload  # its own copy
        deaf.close()
        assert rss.growth_mib < RSS_BOUND_MIB, rss.growth_mib
        room_server.wait_for_log(
            r"dropped a room\.message for \S+: channel full \(\d+ bytes queued, limit 16777216\)"
        )
