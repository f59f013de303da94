"""Rooms across processes through a real Redis: two uvicorn processes, one redis-server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import assert_clean_log, clean_processes
from tests.servers import ROOT, LiveServer

pytestmark = [pytest.mark.redis, pytest.mark.server]


def new_room() -> str:
    return f"redis-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def two_servers(redis_server, server_env):
    """Two uvicorn processes sharing the private Redis."""
    yield from clean_processes({**server_env, "REDIS_URL": redis_server.url}, count=2)


def room_url(server: LiveServer, room: str, kind: str = "async") -> str:
    return f"{server.ws_url}/ws/broadcast/{kind}/{room}/"


def broadcast_command(redis_url: str, room: str, message: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "broadcast", room, message],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.asyncio
async def test_a_message_to_process_a_reaches_clients_of_process_b(two_servers):
    a, b = two_servers
    room = new_room()
    async with (
        connect(room_url(a, room, "sync")) as on_a,
        connect(room_url(b, room, "async")) as on_b,
        connect(room_url(b, room, "sync")) as also_on_b,
    ):
        await on_a.send("hello from A")
        for ws in (on_a, on_b, also_on_b):
            assert await asyncio.wait_for(ws.recv(), 5) == "hello from A"
        await on_b.send(b"\x01bytes from B")
        for ws in (on_a, on_b, also_on_b):
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x01bytes from B"


@pytest.mark.asyncio
async def test_the_broadcast_command_reaches_both_processes(two_servers, redis_server):
    a, b = two_servers
    room = new_room()
    async with connect(room_url(a, room)) as on_a, connect(room_url(b, room, "sync")) as on_b:
        result = await asyncio.to_thread(
            broadcast_command, redis_server.url, room, "pushed \U0001f4e3"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"sent 11 bytes to room {room}"
        for ws in (on_a, on_b):
            assert await asyncio.wait_for(ws.recv(), 5) == "pushed \U0001f4e3"


def test_the_broadcast_command_without_redis_says_why():
    result = broadcast_command("", "lobby", "hello")
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "CommandError: neither REDIS_URL nor REDIS_SENTINELS is set"
    )


@pytest.mark.asyncio
async def test_no_loss_50_clients_100_messages_each_across_two_processes(two_servers):
    """The stated load: 50 clients on two processes each send 100 messages as fast as they can;
    every client receives all 5,000, each sender's in order."""
    room = new_room()
    clients, per_client = 50, 100
    sockets = [
        await connect(
            room_url(two_servers[i % 2], room, ("sync", "async")[i // 2 % 2]), max_queue=None
        )
        for i in range(clients)
    ]
    try:

        async def send_all(i, ws):
            for n in range(per_client):
                await ws.send(f"{i}:{n}")

        async def receive_all(ws):
            return [await asyncio.wait_for(ws.recv(), 30) for _ in range(clients * per_client)]

        receivers = [asyncio.create_task(receive_all(ws)) for ws in sockets]
        await asyncio.gather(*(send_all(i, ws) for i, ws in enumerate(sockets)))
        results = await asyncio.wait_for(asyncio.gather(*receivers), 120)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    for received in results:
        assert len(received) == clients * per_client
        by_sender: dict[str, list[int]] = {}
        for message in received:
            sender, n = message.split(":")
            by_sender.setdefault(sender, []).append(int(n))
        assert len(by_sender) == clients
        assert all(ns == list(range(per_client)) for ns in by_sender.values())


@pytest.mark.asyncio
async def test_redis_stopped_while_serving_then_back(server_env):
    """Echo keeps working; rooms close with 1013 and refuse with 503; after Redis returns, rooms work."""
    from tests.redis_server import RedisServer

    redis_server = RedisServer().start()  # its own: stopping it must not disturb other tests
    server = LiveServer("uvicorn", env={**server_env, "REDIS_URL": redis_server.url}).wait_ready()
    room = new_room()
    try:
        member = await connect(room_url(server, room))
        await member.send("before")
        assert await asyncio.wait_for(member.recv(), 5) == "before"

        redis_server.stop()
        # The member's channel-layer receive fails: it is closed with 1013 and told why.
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(member.recv(), 10)
        assert closed.value.rcvd.code == 1013
        assert closed.value.rcvd.reason == "channel layer unavailable, try again later"
        server.wait_for_log(
            r"WARNING app\.ws\[\d+\] .*closing 1013 TRY_AGAIN_LATER: channel layer unavailable"
        )

        async with connect(f"{server.ws_url}/ws/echo/async/") as echo:
            await echo.send("echo needs no Redis")
            assert await asyncio.wait_for(echo.recv(), 5) == "echo needs no Redis"

        with pytest.raises(InvalidStatus) as refused:
            await connect(room_url(server, room))
        assert refused.value.response.status_code == 503
        server.wait_for_log(
            re.escape(f"/ws/broadcast/async/{room}/: 503 channel layer unavailable")
        )

        redis_server.start()
        async with (
            connect(room_url(server, room)) as again,
            connect(room_url(server, room, "sync")) as other,
        ):
            await again.send("after")
            assert await asyncio.wait_for(other.recv(), 10) == "after"
    finally:
        server.stop()
        redis_server.stop()
    # No traceback, and no consumer left behind for shutdown to cancel.
    assert_clean_log(server.log())


@pytest.mark.asyncio
async def test_a_member_that_lost_messages_through_redis_is_told(two_servers, redis_server):
    """The room policy on channels-redis: a gap in a sender's numbers closes the member with
    1013 and the count (channels-redis drops silently past its capacity)."""
    from channels_redis.core import RedisChannelLayer

    _, b = two_servers
    room = new_room()
    layer = RedisChannelLayer(hosts=[redis_server.url])
    numbered = {"type": "room.message", "sender": "elsewhere"}
    async with connect(room_url(b, room)) as member:
        await layer.group_send(f"room.{room}", {**numbered, "text": "one", "seq": 1})
        assert await asyncio.wait_for(member.recv(), 5) == "one"
        await layer.group_send(f"room.{room}", {**numbered, "text": "four", "seq": 4})
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(member.recv(), 5)
    assert closed.value.rcvd.code == 1013
    assert closed.value.rcvd.reason == "fell behind: 2 room message(s) lost, reconnect"
    await layer.close_pools()


@pytest.mark.asyncio
async def test_a_burst_of_300_joins_is_accepted(two_servers):
    """redis-py 8 allows 100 connections a pool by default, then fails at once: a burst of joins
    got 503 "Too many connections" (REDIS_MAX_CONNECTIONS raises the bound)."""
    a, _ = two_servers
    room = new_room()
    results = await asyncio.gather(
        *(connect(room_url(a, room)) for _ in range(300)), return_exceptions=True
    )
    members = [ws for ws in results if not isinstance(ws, BaseException)]
    try:
        assert len(members) == 300, [r for r in results if isinstance(r, BaseException)][:3]
        await members[0].send("all here")
        for ws in members:
            assert await asyncio.wait_for(ws.recv(), 10) == "all here"
    finally:
        await asyncio.gather(*(ws.close() for ws in members), return_exceptions=True)
