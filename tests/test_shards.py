"""Rooms across two Redis servers: ``REDIS_URL=redis://a,redis://b`` (issue 24).

The rooms engine puts each room (its epoch, offset, history and publishes) on one server, by
the CRC-32 of its name. Two redis-server processes, two uvicorn processes configured with both:
rooms work across processes with every message delivered exactly once, and when one Redis goes away
the members of the rooms it held are told (1013), not left waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import clean_processes
from tests.redis_server import RedisServer, redis_missing

pytestmark = [pytest.mark.redis, pytest.mark.server]

ROOMS = 8
MESSAGES = 20  # per sender


@pytest.fixture
def shards():
    if reason := redis_missing():
        pytest.skip(reason)
    servers = [RedisServer().start() for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def two_processes(shards, server_env):
    env = {**server_env, "REDIS_URL": ",".join(shard.url for shard in shards)}
    yield from clean_processes(env, count=2)


def shard_of_group(shards: list[RedisServer], room: str) -> int:
    """Which Redis holds the room (its epoch and offset, kept from the first join)."""
    held = [bool(redis.Redis.from_url(shard.url).keys(f"rooms:{{{room}}}:*")) for shard in shards]
    assert held.count(True) == 1, held
    return held.index(True)


async def read(ws, count: int) -> list[str]:
    return [await asyncio.wait_for(ws.recv(), 15) for _ in range(count)]


@pytest.mark.asyncio
async def test_rooms_across_two_redis_shards_deliver_everything_exactly_once_and_tell_on_loss(
    shards, two_processes
):
    rooms = [f"shard-{uuid.uuid4().hex[:8]}" for _ in range(ROOMS)]
    # In each room one member on each process (async on one, sync on the other).
    members = {
        room: [
            await connect(f"{process.ws_url}/ws/broadcast/{kind}/{room}/")
            for process, kind in zip(two_processes, ("async", "sync"), strict=True)
        ]
        for room in rooms
    }
    placement = {room: shard_of_group(shards, room) for room in rooms}
    assert set(placement.values()) == {0, 1}, "every group on one Redis: nothing was sharded"

    async def room_traffic(room: str) -> None:
        pair = members[room]
        for index, ws in enumerate(pair):
            for number in range(MESSAGES):
                await ws.send(f"{index}:{number}")
        for ws in pair:
            heard = await read(ws, 2 * MESSAGES)
            for index in range(2):  # each sender's, once each, in order
                assert [h for h in heard if h.startswith(f"{index}:")] == [
                    f"{index}:{number}" for number in range(MESSAGES)
                ]

    await asyncio.gather(*(room_traffic(room) for room in rooms))

    # One Redis goes away: whoever publishes to a room it held is told, 1013.
    lost = 1
    shards[lost].stop()
    on_lost = [room for room in rooms if placement[room] == lost]

    async def told(ws) -> int | None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send("after the loss")
            while True:
                await asyncio.wait_for(ws.recv(), 15)
        return ws.close_code

    codes = await asyncio.gather(*(told(members[room][0]) for room in on_lost))
    assert codes == [1013] * len(on_lost), codes
    for room in rooms:
        for ws in members[room]:
            await ws.close()
    assert any(
        "closing 1013 TRY_AGAIN_LATER: channel layer unavailable" in process.log()
        for process in two_processes
    )
