"""A busy room whose other members misbehave, on every server and both layers (issue 23).

Readers and senders behave; meanwhile members of the same room (and of the echo routes) break
the protocol the ways real clients and networks do. What a client does or suffers must never
show as a traceback or an ERROR line, every well-behaved member gets every message or is told
with a close code, and ``/healthz`` stays answering within 500 ms (the prober, in its own
process). Bounded: a few hundred messages, a few dozen misbehaving connections, loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct

import pytest

from tests.attacks import BINARY, CLOSE, CONT, TEXT, Prober, frame, upgrade_request
from tests.conftest import assert_clean_log
from tests.servers import SERVERS, LiveServer

pytestmark = pytest.mark.server

ROOM = "chaos"
MEMBERS = 10  # well-behaved: half on the async route, half on the sync one
SENDERS = 2  # of those members, each publishing PER_SENDER messages
PER_SENDER = 150
MISBEHAVING = 48  # 6 ways x 4 routes, twice
#: The close codes that tell a member it fell behind (daphne: the 4000 + code mirror).
TOLD = {1013, 4013}


def frame_head(opcode: int, length: int, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame's head, with a zero mask (the payload goes as it is)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if length < 126:
        return bytes([first, 0x80 | length]) + b"\0\0\0\0"
    if length < 65536:
        return bytes([first, 0x80 | 126]) + struct.pack("!H", length) + b"\0\0\0\0"
    return bytes([first, 0x80 | 127]) + struct.pack("!Q", length) + b"\0\0\0\0"


async def raw_member(port: int, path: str):
    """An open WebSocket on raw streams: (reader, writer), the handshake's head consumed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(path, port))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return reader, writer


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset instead of a FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def rsv1(reader, writer) -> None:
    writer.write(frame_head(TEXT, 5, rsv1=True) + b"hello")


async def oversize(reader, writer) -> None:
    size = 2 * 1024 * 1024
    writer.write(frame_head(BINARY, size))
    for _ in range(size // 65536):
        writer.write(b"x" * 65536)
        await writer.drain()


async def reset_mid_frame(reader, writer) -> None:
    writer.write(frame_head(TEXT, 1000) + b"only ten b")
    await writer.drain()
    reset(writer)


async def fin_mid_frame(reader, writer) -> None:
    writer.write(frame_head(TEXT, 1000) + b"only ten b")
    await writer.drain()
    writer.write_eof()


async def close_inside_fragments(reader, writer) -> None:
    writer.write(
        frame(TEXT, b"first", fin=False) + frame(CLOSE, b"\x03\xe8") + frame(CONT, b"last")
    )


async def burst_then_reset(reader, writer) -> None:
    writer.write(frame(TEXT, b"burst " * 20) * 50)
    await writer.drain()
    reset(writer)


MISBEHAVIOURS = [rsv1, oversize, reset_mid_frame, fin_mid_frame, close_inside_fragments, burst_then_reset]  # fmt: skip
MISBEHAVING_PATHS = [
    f"/ws/broadcast/async/{ROOM}/",
    f"/ws/broadcast/sync/{ROOM}/",
    "/ws/echo/async/",
    "/ws/echo/sync/",
]


async def misbehave(port: int, index: int) -> None:
    """One misbehaving member: joins, waits for the room to be busy, misbehaves, and reads
    what the server says until it closes (bounded)."""
    how = MISBEHAVIOURS[index % len(MISBEHAVIOURS)]
    path = MISBEHAVING_PATHS[(index // len(MISBEHAVIOURS)) % len(MISBEHAVING_PATHS)]
    reader, writer = await raw_member(port, path)
    try:
        await asyncio.sleep(0.02 * index)  # spread over the sending: the chaos's own pace
        with contextlib.suppress(OSError):
            await how(reader, writer)
            await writer.drain()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with asyncio.timeout(5):
                while await reader.read(65536):
                    pass
    finally:
        writer.transport.abort()


async def read_room(ws, expected: int) -> tuple[dict[str, list[int]], int | str | None]:
    """A well-behaved member's reading: per sender, the numbers it heard; and the close code
    it was told, None if it heard everything, or what it heard when it stopped waiting."""
    from websockets.exceptions import ConnectionClosed

    heard: dict[str, list[int]] = {}
    ended = 0
    try:
        async with asyncio.timeout(30):
            while ended < SENDERS:  # each sender's "end" comes after its last message
                sender, _, number = (await ws.recv()).partition(":")
                if number == "end":
                    ended += 1
                elif number.isdigit():  # not a misbehaving member's burst
                    heard.setdefault(sender, []).append(int(number))
    except ConnectionClosed:
        return heard, ws.close_code
    except TimeoutError:
        return heard, f"timed out with {sum(map(len, heard.values()))} of {expected}"
    return heard, None


async def leave(ws) -> None:
    """Close, reading meanwhile: a misbehaving member's burst may still be arriving, and a
    client that stops reading never sees the server's close frame behind it."""
    from websockets.exceptions import ConnectionClosed

    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    draining = asyncio.create_task(drain())
    await ws.close()
    await draining


@pytest.fixture(params=["memory", "redis"])
def layer_env(request, server_env) -> dict[str, str]:
    if request.param == "memory":
        return dict(server_env)
    redis = request.getfixturevalue("redis_server")
    return {**server_env, "REDIS_URL": redis.url}


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", SERVERS)
async def test_a_busy_room_with_misbehaving_members_logs_no_error(kind, layer_env):
    from websockets.asyncio.client import connect as ws_connect

    with LiveServer(kind, env=layer_env) as server:
        url = f"{server.ws_url}/ws/broadcast/%s/{ROOM}/"
        members = [await ws_connect(url % ("async", "sync")[i % 2]) for i in range(MEMBERS)]

        async def publish(ws, sender: int) -> None:
            for number in range(PER_SENDER):
                await ws.send(f"s{sender}:{number}")
                if number % 10 == 0:
                    await asyncio.sleep(0.005)  # the senders' pace: ~2 s of traffic
            # Numbered too: a member that lost the last message finds the gap here and is told.
            await ws.send(f"s{sender}:end")

        with Prober(server.port) as prober:
            listening = [asyncio.create_task(read_room(ws, SENDERS * PER_SENDER)) for ws in members]
            chaos = [asyncio.create_task(misbehave(server.port, i)) for i in range(MISBEHAVING)]
            await asyncio.gather(*(publish(ws, s) for s, ws in enumerate(members[:SENDERS])))
            outcomes = await asyncio.gather(*listening)
            await asyncio.gather(*chaos)
        await asyncio.gather(*(leave(ws) for ws in members))
        during = server.log()
        server.stop()
        log = server.log()

    for heard, code in outcomes:
        if code is None:
            for sender in range(SENDERS):
                assert heard[f"s{sender}"] == list(range(PER_SENDER)), (
                    f"s{sender}: lost or reordered"
                )
        else:
            assert code in TOLD, f"a well-behaved member was closed with {code}, not told"
    served = sum(code is None for _, code in outcomes)
    print(f"{kind}: {served} of {len(outcomes)} members heard everything, the rest were told")
    prober.assert_responsive(within=0.5)
    assert_clean_log(during)
    if kind == "hypercorn":
        log, deadlocked = without_hypercorns_deadlocked_connections(log[len(during) :])
        assert deadlocked <= MISBEHAVING // len(MISBEHAVIOURS), deadlocked  # burst_then_reset's
    assert_clean_log(log)


def without_hypercorns_deadlocked_connections(log: str) -> tuple[str, int]:
    """The log less the tracebacks hypercorn's deadlocked connections leave at shutdown, and
    how many there were.

    A client that resets right after a burst deadlocks its connection in hypercorn 0.18: the
    application's send fails, hypercorn then puts ``websocket.disconnect`` into the
    application's queue (``app_put``), which is full (``max_app_queue_size``, 10), from inside
    that very send; its reading task waits on the same queue. Neither returns, nothing reads
    the socket, and at SIGTERM asyncio logs each one's ``CancelledError`` at ERROR, as it does
    for any connection open then (the compatibility matrix's SIGTERM row). Only entries of
    exactly that shape are taken out.
    """
    entries = re.split(r"\n(?=\d{4}-\d\d-\d\d |\[)", log)  # a log line and its traceback
    kept, deadlocked = [], 0
    for entry in entries:
        lines = entry.splitlines()
        if (
            "Traceback" in entry
            and "hypercorn/protocol/ws_stream.py" in entry
            and "await self.app_put(" in entry
            and lines[-1].strip() in ("asyncio.exceptions.CancelledError", "CancelledError")
        ):
            deadlocked += 1
        else:
            kept.append(entry)
    return "\n".join(kept), deadlocked
