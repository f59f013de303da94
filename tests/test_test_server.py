"""``/ws/test/`` (behaviours on demand, issue 33) on the wire, against ``manage.py serve``: what
a raw client sees of each behaviour (frame boundaries, FIN and RSV1 bits, pings, codes and
reasons, a drop), timings within bounds, every refusal, and the bounds on pushes and delays.
The behaviours on the other servers are asserted at the end, for the compatibility matrix.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
import zlib

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.behaviours import PUSH_TOTAL_BYTES, Behaviours
from tests import attacks
from tests.attacks import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    TEXT,
    frame,
    open_websocket,
    read_frame,
)
from tests.compat import BEHAVIOUR

pytestmark = pytest.mark.server

PONG = 0xA
DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate\r\n"


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


def raw(server, query: str, *, extra: str = "") -> socket.socket:
    return open_websocket(server.port, f"/ws/test/?{query}", extra=extra)[0]


def refusal(server, query: str) -> tuple[int, str]:
    """The status and body of a refused handshake (a raw client's)."""
    sock = attacks.connect(server.port)
    sock.sendall(attacks.upgrade_request(f"/ws/test/?{query}", server.port))
    response = attacks.read_until_closed(sock).decode()
    sock.close()
    head, _, body = response.partition("\r\n\r\n")
    return int(head.split()[1]), body


async def refused(url: str) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as error:
        async with connect(url):
            pass
    response = error.value.response
    return response.status_code, bytes(response.body or b"").decode()


def url(server, query: str) -> str:
    return f"{server.ws_url}/ws/test/?{query}"


# --- fragments and compression ------------------------------------------------------------


def test_fragment_sends_each_echo_in_frames_of_n_bytes_fin_on_the_last(uvicorn_server):
    sock = raw(uvicorn_server, "fragment=3")
    sock.sendall(frame(TEXT, b"hello world") + frame(BINARY, bytes(range(7))))
    frames = [read_frame(sock) for _ in range(4 + 3)]
    assert [(op, fin, len(data)) for op, fin, _, data in frames] == [
        (TEXT, False, 3), (CONT, False, 3), (CONT, False, 3), (CONT, True, 2),
        (BINARY, False, 3), (CONT, False, 3), (CONT, True, 1),
    ]  # fmt: skip
    assert b"".join(data for *_, data in frames[:4]) == b"hello world"
    assert b"".join(data for *_, data in frames[4:]) == bytes(range(7))
    sock.close()
    big = raw(uvicorn_server, "fragment=65536")
    big.sendall(frame(BINARY, bytes(200_000)))
    sizes = [(fin, len(data)) for _, fin, _, data in (read_frame(big) for _ in range(4))]
    assert sizes == [(False, 65536), (False, 65536), (False, 65536), (True, 3392)]
    big.close()


def test_compress_never_sends_plain_frames_with_rsv1_clear(uvicorn_server):
    sock = raw(uvicorn_server, "compress=never", extra=DEFLATE)
    text = b"abc " * 200  # deflate would shrink it to a tenth: as usual it goes compressed
    for _ in range(3):
        sock.sendall(frame(TEXT, text))
        assert read_frame(sock) == (TEXT, True, False, text)  # not a stored block either
    sock.close()
    usual = raw(uvicorn_server, "compress=auto", extra=DEFLATE)
    usual.sendall(frame(TEXT, text))
    _, _, rsv1, payload = read_frame(usual)
    assert rsv1 and len(payload) < len(text) and inflate(payload) == text
    usual.close()


def test_compress_always_and_alternate_choose_rsv1_per_message(uvicorn_server):
    always = raw(uvicorn_server, "compress=always", extra=DEFLATE)
    always.sendall(frame(TEXT, b"hi"))  # as usual, under 256 bytes: a stored block
    _, _, rsv1, payload = read_frame(always)
    assert rsv1 and inflate(payload) == b"hi"
    assert payload[0] & 0b110 != 0, "a stored block, not deflate"  # BTYPE 00 is stored
    always.close()
    alternate = raw(uvicorn_server, "compress=alternate", extra=DEFLATE)
    text = b"xyz " * 100
    seen = []
    for _ in range(4):
        alternate.sendall(frame(TEXT, text))
        _, _, rsv1, payload = read_frame(alternate)
        seen.append(rsv1)
        assert (inflate(payload) if rsv1 else payload) == text
    assert seen == [True, False, True, False]
    alternate.close()
    # Compressed and fragmented: the compressed payload is cut, RSV1 on the first frame only.
    both = raw(uvicorn_server, "compress=always&fragment=4", extra=DEFLATE)
    both.sendall(frame(TEXT, text))
    frames = []
    while not frames or not frames[-1][1]:
        frames.append(read_frame(both))
    assert [rsv1 for _, _, rsv1, _ in frames] == [True] + [False] * (len(frames) - 1)
    assert all(len(data) == 4 for *_, data in frames[:-1])
    assert inflate(b"".join(data for *_, data in frames)) == text
    both.close()


def test_compress_other_than_auto_needs_deflate_negotiated(uvicorn_server):
    status, body = refusal(uvicorn_server, "compress=never")
    assert status == 400 and "compress=never needs permessage-deflate negotiated" in body


# --- pings ----------------------------------------------------------------------------------


def test_ping_sends_pings_and_the_log_says_each_pong_came_back(uvicorn_server):
    sock = raw(uvicorn_server, "ping=0.2")
    opened = time.monotonic()
    arrivals = []
    for _ in range(2):
        opcode, _, _, payload = read_frame(sock)
        arrivals.append(time.monotonic() - opened)
        assert opcode == PING
        sock.sendall(frame(PONG, payload))
    # Pings at 0.2 s and 0.4 s (a slow reader only sees them later).
    assert 0.15 < arrivals[0] < 2 and 0.35 < arrivals[1] < 3, arrivals
    uvicorn_server.wait_for_log(r"pong 1 came back after [\d.]+ ms")
    uvicorn_server.wait_for_log(r"pong 2 came back after [\d.]+ ms")
    sock.close()


def test_a_missing_pong_closes_1011_pong_timeout(uvicorn_server):
    sock = raw(uvicorn_server, "ping=0.1&pong_timeout=0.3")
    opened = time.monotonic()
    frames = []
    while (not frames or frames[-1][0] != CLOSE) and time.monotonic() - opened < 5:
        frames.append(read_frame(sock))  # never answered
    elapsed = time.monotonic() - opened
    assert [op for op, *_ in frames[:3]] == [PING, PING, PING]
    payload = frames[-1][3]
    assert struct.unpack("!H", payload[:2])[0] == 1011 and payload[2:] == b"pong timeout"
    assert 0.35 < elapsed < 2.5, elapsed  # the first ping at 0.1 s, its deadline 0.3 s later
    uvicorn_server.wait_for_log(r"pong 1 did not come back within 0.3 s")
    sock.close()


# --- delay ----------------------------------------------------------------------------------


def test_delay_holds_each_echo_that_long_and_keeps_order(uvicorn_server):
    sock = raw(uvicorn_server, "delay=400")
    sent = time.monotonic()
    sock.sendall(b"".join(frame(TEXT, f"#{i}".encode()) for i in range(5)))
    got, times = [], []
    for _ in range(5):
        got.append(read_frame(sock)[3])
        times.append(time.monotonic() - sent)
    assert got == [f"#{i}".encode() for i in range(5)]
    assert times[0] >= 0.4, times
    # Each echo waits from its own arrival: five take 0.4 s, not 2 (one after another).
    assert times[-1] - times[0] < 0.35, times
    sock.close()


@pytest.mark.asyncio
async def test_the_delay_backlog_is_bounded_and_reading_waits(uvicorn_server):
    message = bytes(256 * 1024)  # four of them are over TEST_DELAY_BACKLOG_BYTES (1 MiB)
    async with connect(url(uvicorn_server, "delay=300"), max_size=2**20) as ws:
        for i in range(5):
            await ws.send(bytes([i]) + message[1:])
        echoes = [await asyncio.wait_for(ws.recv(), 5) for _ in range(5)]
    assert [echo[0] for echo in echoes] == [0, 1, 2, 3, 4]
    uvicorn_server.wait_for_log(
        r"delay backlog full \(7\d{5} bytes held, TEST_DELAY_BACKLOG_BYTES 1048576\)"
    )


# --- closes and drops -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_close_sends_the_code_and_reason_asked_at_once_after_n_echoes_or_after_ms(
    uvicorn_server,
):
    async with connect(url(uvicorn_server, "close=4001&reason=r%C3%A9sum%C3%A9")) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "résumé")

    async with connect(url(uvicorn_server, "close=1013&reason=later&close_after=2")) as ws:
        for text in ("a", "b", "c"):
            await ws.send(text)
        assert [await ws.recv(), await ws.recv()] == ["a", "b"]
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "later")

    started = time.monotonic()
    async with connect(url(uvicorn_server, "close=1001&close_in=300")) as ws:
        await ws.send("still here")
        assert await ws.recv() == "still here"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 1001
    assert 0.3 <= time.monotonic() - started < 2.0


@pytest.mark.asyncio
async def test_drop_after_n_echoes_ends_tcp_without_a_close_frame(uvicorn_server):
    sock = raw(uvicorn_server, "drop_after=2")
    sock.sendall(b"".join(frame(TEXT, text) for text in (b"one", b"two", b"three")))
    assert [read_frame(sock)[3] for _ in range(2)] == [b"one", b"two"]
    sock.settimeout(5)
    assert sock.recv(100) == b"", "expected the end of the stream, no close frame"
    sock.close()
    async with connect(url(uvicorn_server, "drop_after=0")) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is None and ws.close_code == 1006
    uvicorn_server.wait_for_log(r"dropping .* /ws/test/ without a close frame")


# --- refusals -------------------------------------------------------------------------------

#: Each parameter out of its range (or unknown, repeated, alone when it needs another), and
#: what the refusal must say.
REFUSED = [
    ("fragment=0", "fragment must be a whole number 1-65,536 bytes, got '0'"),
    ("fragment=65537", "fragment must be a whole number 1-65,536 bytes"),
    ("delay=10001", "delay must be a whole number 0-10,000 ms"),
    ("delay=-1", "delay must be a whole number 0-10,000 ms"),
    ("ping=0.05", "ping must be a number 0.1-60 s"),
    ("ping=61", "ping must be a number 0.1-60 s"),
    ("ping=1&pong_timeout=60.5", "pong_timeout must be a number 0.1-60 s"),
    ("pong_timeout=1", "pong_timeout needs ping"),
    (
        "close=1005",
        "close must be a close code a server may send (1000-1003, 1007-1014, 3000-4999)",
    ),
    ("close=2000", "close must be a close code a server may send"),
    ("close=5000", "close must be a close code a server may send"),
    ("close=1000&reason=" + "x" * 124, "reason must be at most 123 bytes of UTF-8, got 124"),
    ("close=1000&reason=" + "%C3%A9" * 62, "reason must be at most 123 bytes of UTF-8, got 124"),
    ("reason=hi", "reason needs close"),
    ("close=1000&close_after=100001", "close_after must be a whole number 0-100,000 echoes"),
    ("close=1000&close_in=600001", "close_in must be a whole number 0-600,000 ms"),
    ("close_after=3", "close_after needs close"),
    ("drop_after=100001", "drop_after must be a whole number 0-100,000 echoes"),
    ("push=100001", "push must be a whole number 0-100,000 messages"),
    ("push=1&push_size=1048577", "push_size must be a whole number 0-1,048,576 bytes"),
    ("push=1&push_rate=10001", "push_rate must be a number 0.1-10,000 messages/s"),
    ("push=1&push_rate=0", "push_rate must be a number 0.1-10,000 messages/s"),
    ("push=1&push_type=json", "push_type must be one of text|bytes, got 'json'"),
    ("push=1&push_type=bytes&push_size=15", "push_size must be at least 16 for push_type=bytes"),
    ("push_size=10", "push_size needs push"),
    ("compress=sometimes", "compress must be one of auto|never|always|alternate"),
    ("headers=yes", "headers must be 0 or 1, got 'yes'"),
    ("bogus=1", "unknown parameter 'bogus' (the parameters: fragment, delay, ping"),
    ("delay=1&delay=2", "delay is given more than once"),
]


def test_every_parameter_out_of_range_is_refused_400_with_its_range(uvicorn_server):
    for query, why in REFUSED:
        status, body = refusal(uvicorn_server, query)
        assert status == 400, (query, body)
        uvicorn_server.wait_for_log(re.escape(f"/ws/test/: 400 {why}"))
    # Each refusal is one WARNING line, of app.handshake.
    log = uvicorn_server.log()[uvicorn_server.since :]
    lines = [line for line in log.splitlines() if "WARNING" in line and "/ws/test/" in line]
    assert len(lines) == len(REFUSED), lines


@pytest.mark.asyncio
async def test_the_refusal_body_names_the_parameter_and_its_range(uvicorn_server):
    status, body = await refused(url(uvicorn_server, "delay=99999"))
    assert (status, body) == (
        400,
        "400 Bad Request: delay must be a whole number 0-10,000 ms, got '99999'\n",
    )


def test_any_combination_parses_into_one_frozen_behaviours():
    query = (
        "fragment=4&delay=10&ping=0.5&pong_timeout=1&close=4000&reason=caf%C3%A9&close_after=3"
        "&close_in=900&drop_after=5&push=2&push_size=20&push_rate=5&push_type=bytes"
        "&compress=alternate&headers=1&trace=abc"
    )
    assert Behaviours.from_query(query.encode()) == Behaviours(
        fragment=4, delay=10, ping=0.5, pong_timeout=1.0, close=4000, reason="café",
        close_after=3, close_in=900, drop_after=5, push=2, push_size=20, push_rate=5.0,
        push_type="bytes", compress="alternate", headers=True,
    )  # fmt: skip
    assert Behaviours.from_query(b"") == Behaviours()
    assert Behaviours.from_query(b"compress=auto").needs_extension() == []
    assert Behaviours.from_query(b"drop_after=0").needs_extension() == ["drop_after"]


# --- pushes ---------------------------------------------------------------------------------

PUSH_TEXT = re.compile(r"push (\d+) (\d+\.\d{3})( *)")


@pytest.mark.asyncio
async def test_push_sends_n_numbered_messages_in_the_documented_format(uvicorn_server):
    before, started = time.time() * 1000, time.monotonic()
    async with connect(url(uvicorn_server, "push=20&push_size=64&push_rate=100")) as ws:
        texts = [await asyncio.wait_for(ws.recv(), 5) for _ in range(20)]
        took = time.monotonic() - started
        await ws.send("echo too")
        assert await asyncio.wait_for(ws.recv(), 5) == "echo too"  # and nothing more pushed
    after = time.time() * 1000
    stamps = []
    for n, text in enumerate(texts, 1):
        match = PUSH_TEXT.fullmatch(text)
        assert match and int(match[1]) == n and len(text) == 64, text
        stamps.append(float(match[2]))
    assert before <= stamps[0] <= stamps[-1] <= after
    assert stamps == sorted(stamps)
    assert 0.18 < took < 3.0, took  # 19 intervals of 10 ms after the first
    # A header longer than push_size: the header alone.
    async with connect(url(uvicorn_server, "push=2&push_size=1&push_rate=10000")) as ws:
        texts = [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)]
    assert all(PUSH_TEXT.fullmatch(text) and not text.endswith(" ") for text in texts), texts
    # Bytes: 8 bytes of n and a double t, big-endian, then zeros.
    async with connect(url(uvicorn_server, "push=3&push_type=bytes&push_size=40")) as ws:
        pushed = [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)]
    for n, data in enumerate(pushed, 1):
        number, stamp = struct.unpack("!Qd", data[:16])
        assert (number, len(data), data[16:]) == (n, 40, bytes(24))
        assert before <= stamp <= time.time() * 1000


@pytest.mark.asyncio
async def test_a_push_bomb_is_refused_per_connection_and_per_address(uvicorn_server):
    # Per connection: 64 MiB in all.
    status, body = await refused(url(uvicorn_server, "push=65&push_size=1048576"))
    assert status == 400 and f"at most {PUSH_TOTAL_BYTES:,} bytes (64 MiB)" in body
    # Per address: TEST_PUSH_BYTES_PER_CLIENT (8 MiB/s) across its connections.
    status, body = await refused(url(uvicorn_server, "push=10&push_size=1048576&push_rate=9"))
    assert status == 400 and "TEST_PUSH_BYTES_PER_CLIENT" in body
    half = "push=60&push_size=1048576&push_rate=5"  # 5 MiB/s, for 12 s
    async with connect(url(uvicorn_server, half), max_size=2**21) as first:
        await asyncio.wait_for(first.recv(), 5)
        status, body = await refused(url(uvicorn_server, half))
        assert status == 429, body
        assert "pushes of 5,242,880 bytes/s run for this address already" in body
        uvicorn_server.wait_for_log(r"/ws/test/: 429 pushes of")
        log = uvicorn_server.log()[uvicorn_server.since :]
        assert len(re.findall(r"WARNING .*/ws/test/: 429 ", log)) == 1  # one line a refusal
    # Its pushes end with it: the next is served (the budget is given back as it ends).
    deadline = time.monotonic() + 5
    while True:
        try:
            async with connect(url(uvicorn_server, half), max_size=2**21) as second:
                assert (await asyncio.wait_for(second.recv(), 5)).startswith("push 1 ")
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "the first connection's budget was kept"
            await asyncio.sleep(0.05)  # poll interval until the first consumer has ended


# --- the handshake report -------------------------------------------------------------------


def test_headers_1_reports_the_handshake_as_the_server_received_it(uvicorn_server):
    extra = (
        "X-Custom: One\r\nSec-WebSocket-Protocol: chat.v9, echo.v1\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-webkit\r\n"
    )
    sock, _ = open_websocket(uvicorn_server.port, "/ws/test/?headers=1&delay=0", extra=extra)
    _, _, rsv1, payload = read_frame(sock)
    report = json.loads(inflate(payload) if rsv1 else payload)
    assert report["request_line"] == "GET /ws/test/?headers=1&delay=0 HTTP/1.1"
    names = [name.lower() for name, _ in report["headers"]]
    assert names == [
        "host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
        "x-custom", "sec-websocket-protocol", "sec-websocket-extensions",
    ]  # fmt: skip
    assert ["x-custom", "One"] in [[name.lower(), value] for name, value in report["headers"]]
    assert report["subprotocols"] == ["chat.v9", "echo.v1"]
    assert report["extensions"] == ["permessage-deflate; client_max_window_bits", "x-webkit"]
    assert report["client"] == f"127.0.0.1:{sock.getsockname()[1]}"
    sock.sendall(frame(TEXT, b"then the echo"))
    _, _, rsv1, payload = read_frame(sock)
    assert (inflate(payload) if rsv1 else payload) == b"then the echo"
    sock.close()


# --- the other servers (the compatibility matrix) -----------------------------------------


@pytest.mark.asyncio
async def test_behaviours_through_plain_asgi_work_on_every_server(asgi_server):
    """delay, push, close after an echo, headers=1: the matrix's common row."""
    query = "headers=1&delay=100&push=3&push_rate=1000&close=4000&close_after=1"
    async with connect(url(asgi_server, query)) as ws:
        report = json.loads(await asyncio.wait_for(ws.recv(), 5))
        sent = time.monotonic()
        await ws.send("late")
        got = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append(await asyncio.wait_for(ws.recv(), 5))
        echoed = time.monotonic() - sent
    assert [m for m in got if not m.startswith("push ")] == ["late"]
    assert [m.split()[1] for m in got if m.startswith("push ")] == ["1", "2", "3"]
    assert echoed >= 0.1
    assert closed.value.rcvd.code == 4000
    names = [name for name, _ in report["headers"]]
    assert ("Host" in names) == BEHAVIOUR[asgi_server.kind].test_header_case, names


@pytest.mark.asyncio
async def test_behaviours_the_server_must_do_are_refused_where_it_cannot(asgi_server):
    expected = BEHAVIOUR[asgi_server.kind].test_server_behaviours
    for query in ("fragment=2", "ping=1", "drop_after=1", "compress=never"):
        if expected:
            async with connect(url(asgi_server, query)) as ws:
                await ws.send("ok")
                assert await asyncio.wait_for(ws.recv(), 5) == "ok"
            continue
        status, body = await refused(url(asgi_server, query))
        assert status == BEHAVIOUR[asgi_server.kind].test_refusal_status, (query, body)
        if status == 400:
            assert "need(s) a server with the x-behaviours ASGI extension" in body
        asgi_server.wait_for_log(r"refused .* /ws/test/: 400 \w+ need\(s\) a server")
    if BEHAVIOUR[asgi_server.kind].too_big_code != 1009:  # codes 1001-2999 cannot be sent
        status, _ = await refused(url(asgi_server, "close=1013"))
        assert status == BEHAVIOUR[asgi_server.kind].test_refusal_status
    if not BEHAVIOUR[asgi_server.kind].close_reason:
        status, _ = await refused(url(asgi_server, "close=1000&reason=bye"))
        assert status == BEHAVIOUR[asgi_server.kind].test_refusal_status
