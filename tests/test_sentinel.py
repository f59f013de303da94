"""Redis with Sentinel: a master, a replica and a sentinel (all Debian's redis-server), two
server processes configured with ``REDIS_SENTINELS`` only, and the master killed under them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import assert_clean_log
from tests.redis_server import RedisServer, SentinelServer, redis_missing
from tests.servers import LiveServer

pytestmark = [pytest.mark.redis, pytest.mark.server, pytest.mark.asyncio]

#: The promise under test: rooms work again within this many seconds of the promotion.
RECOVERY_SECONDS = 10


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass  # not up yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.05)  # poll interval of the Redis processes' state


@pytest.fixture
def cluster():
    if reason := redis_missing():
        pytest.skip(reason)
    master = RedisServer().start()
    replica = RedisServer(extra=("--replicaof", "127.0.0.1", str(master.port))).start()
    started = [master, replica]
    try:
        wait_until(
            lambda: (
                redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up"
            ),
            10,
            "the replica synced",
        )
        sentinel = SentinelServer(master).start()  # after the sync: its first look sees the replica
        started.append(sentinel)
        wait_until(
            lambda: len(redis.Redis(port=sentinel.port).sentinel_slaves("mymaster")) == 1,
            15,
            "the sentinel knows the replica",
        )
        yield master, replica, sentinel
    finally:
        for process in started:
            process.stop()


def master_port(sentinel: RedisServer) -> int:
    return int(redis.Redis(port=sentinel.port).sentinel_get_master_addr_by_name("mymaster")[1])


async def exchange(servers: list[LiveServer], room: str, rounds: int) -> dict[str, list[str]]:
    """Two members on each server; each sends ``rounds`` numbered messages then an end mark.

    Returns what each member received, read until it had every sender's end mark (a member's
    messages from one sender arrive in order, so a duplicate would be in there).
    """
    urls = [
        f"{server.ws_url}/ws/broadcast/{kind}/{room}/"
        for server in servers
        for kind in ("async", "sync")
    ]
    async with asyncio.timeout(10):
        members = [await connect(url) for url in urls]
    try:
        for index, ws in enumerate(members):
            for n in range(rounds):
                await ws.send(f"{index}:{n}")
            await ws.send(f"{index}:end")
        received: dict[str, list[str]] = {}
        for index, ws in enumerate(members):
            got: list[str] = []
            async with asyncio.timeout(10):
                while sum(message.endswith(":end") for message in got) < len(members):
                    got.append(await ws.recv())
            received[f"member {index}"] = got
        return received
    finally:
        await asyncio.gather(*(ws.close() for ws in members), return_exceptions=True)


async def test_rooms_work_again_within_10_s_of_a_failover_and_nothing_arrives_twice(
    cluster, server_env
):
    master, replica, sentinel = cluster
    env = {**server_env, "REDIS_SENTINELS": f"127.0.0.1:{sentinel.port}"}
    servers = [LiveServer("uvicorn", env=env) for _ in range(2)]
    try:
        for server in servers:
            server.wait_ready()
        rounds = 5
        expected = sorted(f"{i}:{n}" for i in range(4) for n in [*range(rounds), "end"])
        before = await exchange(servers, f"sentinel-{uuid.uuid4().hex[:8]}", rounds)
        assert all(sorted(got) == expected for got in before.values()), before

        # Members idle in a room when the master dies.
        room = f"sentinel-{uuid.uuid4().hex[:8]}"
        idle = [await connect(f"{s.ws_url}/ws/broadcast/async/{room}/") for s in servers]
        master.kill()
        for ws in idle:  # told, as when a lone Redis goes away: try again later
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 15)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013

        await asyncio.to_thread(
            wait_until, lambda: master_port(sentinel) == replica.port, 30, "the replica promoted"
        )
        promoted = time.monotonic()
        while True:  # a fresh room, joined and used the way clients retrying after 1013 would
            try:
                after = await exchange(servers, f"sentinel-{uuid.uuid4().hex[:8]}", rounds)
                break
            except (InvalidStatus, ConnectionClosed, TimeoutError, OSError):
                assert time.monotonic() - promoted < RECOVERY_SECONDS, "rooms still down"
                await asyncio.sleep(0.2)  # a client's retry interval
        recovered = time.monotonic() - promoted
        print(f"rooms worked again {recovered:.2f} s after the promotion")  # for docs, with -s
        assert recovered < RECOVERY_SECONDS
        for member, got in after.items():
            assert sorted(got) == expected, f"{member} received {got}"  # each once, none lost
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        log = server.log()
        assert "channel layer unavailable" in log
        assert_clean_log(log)
