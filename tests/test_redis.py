"""Rooms across processes through a real Redis: two uvicorn processes, one redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

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
    assert result.stderr.strip().startswith("CommandError: ROOM_ENGINE is memory")


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
async def test_a_gap_in_what_redis_delivered_is_mended_from_the_stream_or_told(
    two_servers, redis_server
):
    """Messages that never reached a process (a subscription that lived through a failover)
    show as a jump in the room's offsets: mended from the room's stream when it holds them,
    else every member there is closed 1013 with the count."""
    import redis

    from app.room_log import payload

    _, b = two_servers
    room = new_room()
    client = redis.Redis.from_url(redis_server.url)
    channel, log = f"rooms:{{{room}}}", f"rooms:{{{room}}}:log"

    def published(offset: int) -> str:
        return f"{epoch}:{offset}:{payload('elsewhere', {'text': str(offset)})}"

    async with connect(room_url(b, room), subprotocols=["rooms.v1"]) as member:
        epoch = json.loads(await asyncio.wait_for(member.recv(), 5))["epoch"]
        client.publish(channel, published(1))
        for offset in (2, 3):  # in the stream only: never published
            now = str(int(time.time()))
            client.xadd(log, {"t": now, "p": published(offset).split(":", 2)[2]}, id=f"{offset}-0")
        client.publish(channel, published(4))
        frames = [json.loads(await asyncio.wait_for(member.recv(), 5)) for _ in range(4)]
        assert [(f["offset"], f["text"]) for f in frames] == [(n, str(n)) for n in range(1, 5)]
        client.publish(channel, published(7))  # 5 and 6 are nowhere
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(member.recv(), 5)
    assert closed.value.rcvd.code == 1013
    assert (
        closed.value.rcvd.reason == "fell behind past the room's history: 2 message(s) lost, resume"
    )


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


# --- /healthz and /handshake-check against Redis (issue 32, item 5) -------------------------


def redis_info(url: str, field: str) -> int:
    """One number of Redis' ``INFO`` (``total_connections_received``, say)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info()[field])
    finally:
        client.close()


def http_get(server: LiveServer, path: str, timeout: float = 10) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_200_health_checks_open_a_handful_of_redis_connections(two_servers, redis_server):
    """Each /healthz and /handshake-check used to PING on a new connection: 200 checks raised
    ``total_connections_received`` by 201. Now one kept connection per process."""
    a, _ = two_servers
    before = redis_info(redis_server.url, "total_connections_received")
    for i in range(200):
        path = "/healthz" if i % 2 else "/handshake-check?path=/ws/broadcast/async/r/"
        status, body = http_get(a, path)
        assert status == 200 and (b'"status": "ok"' in body or b'"ok": true' in body), body
    opened = redis_info(redis_server.url, "total_connections_received") - before - 1  # ours
    assert opened <= 3, opened


def redis_sockets(pid: int, redis_port: int) -> int:
    """TCP connections process ``pid`` holds to ``redis_port`` on this host."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == redis_port:
                count += 1
    return count


def test_with_redis_hung_concurrent_health_checks_answer_degraded_at_once(server_env):
    """Redis stopped with SIGSTOP (it accepts, and never answers): 40 concurrent checks used to
    hold 40 threads and 40 Redis sockets for the timeout and more. Now one PING is under way at
    a time, on the one kept connection, and the other checks answer at once."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    from tests.attacks import python_threads
    from tests.redis_server import RedisServer

    redis_server = RedisServer().start()  # its own: stopping it must not disturb other tests
    server = LiveServer("uvicorn", env={**server_env, "REDIS_URL": redis_server.url}).wait_ready()
    pid = server.process.pid

    def timed_health() -> tuple[float, dict]:
        started = time.monotonic()
        status, body = http_get(server, "/healthz")
        assert status == 200, body
        return time.monotonic() - started, json.loads(body)

    def burst() -> tuple[list[tuple[float, dict]], int, int]:
        """40 checks at once: their (seconds, answer), and the server's threads and Redis
        sockets once 39 have answered (or 0.8 s on, within the 1 s a PING may take)."""
        with ThreadPoolExecutor(40) as pool:
            futures = [pool.submit(timed_health) for _ in range(40)]
            deadline = time.monotonic() + 0.8
            while sum(f.done() for f in futures) < 39 and time.monotonic() < deadline:
                time.sleep(0.01)  # poll interval while the checks answer
            held = python_threads(pid), redis_sockets(pid, redis_server.port)
            return [f.result() for f in futures], *held

    try:
        assert timed_health()[1]["status"] == "ok"
        baseline = python_threads(pid)
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        first, first_threads, first_sockets = burst()
        # Once the PING under way has timed out (1 s), every check says degraded.
        deadline = time.monotonic() + 5
        while timed_health()[1]["status"] != "degraded":
            assert time.monotonic() < deadline, "never degraded"
            time.sleep(0.05)  # poll interval of the health endpoint
        second, second_threads, second_sockets = burst()
        slowest = max(seconds for seconds, _ in first + second)
        assert slowest < 2.0, slowest  # the one PING's timeout (1 s), and the burst's own time
        for results in (first, second):  # all but the one PING answer at once
            assert sorted(seconds for seconds, _ in results)[-2] < 0.5, results
        assert {answer["status"] for _, answer in second} == {"degraded"}
        assert max(first_sockets, second_sockets) <= 1, (first_sockets, second_sockets)
        # Not a thread per check (the old per-request PING held 40): at most a thread pool's
        # workers, which asyncio's default executor caps at min(32, cores + 4).
        pool = min(32, (os.cpu_count() or 1) + 4)
        assert max(first_threads, second_threads) <= baseline + pool, (baseline, first_threads)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(redis_server.process.pid, signal.SIGCONT)
        server.stop()
        redis_server.stop()
    log = server.log()
    assert_clean_log(log)
    assert len(re.findall(r"WARNING app\.layers\S* Redis unreachable for /healthz", log)) == 1


# --- the rooms engine on Redis (issue 30) ---------------------------------------------------


def command_calls(client, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


@pytest.mark.asyncio
async def test_a_room_message_costs_one_script_call_whatever_the_rooms_size(
    two_servers, redis_server
):
    """channels-redis ``core`` writes one entry per member per message; the engine runs one
    script (append, trim, PUBLISH) per message, for 60 members on two processes as for one."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    room, members = new_room(), 60
    sockets = [
        await connect(room_url(two_servers[i % 2], room, ("sync", "async")[i // 2 % 2]))
        for i in range(members)
    ]
    try:
        for first in sockets[:2]:  # each process loads its script once (NOSCRIPT, then load)
            await first.send("warm")
        for ws in sockets:
            assert [await asyncio.wait_for(ws.recv(), 10) for _ in range(2)] == ["warm"] * 2
        before = {c: command_calls(client, c) for c in ("evalsha", "eval", "publish", "xadd")}
        for number in range(10):
            await sockets[number % members].send(f"m{number}")
        for ws in sockets:
            assert sorted([await asyncio.wait_for(ws.recv(), 10) for _ in range(10)]) == sorted(
                f"m{n}" for n in range(10)
            )
        calls = {c: command_calls(client, c) - before[c] for c in before}
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    assert calls["evalsha"] + calls["eval"] == 10, calls  # one per message, not per member
    assert calls["xadd"] == 10 and calls["publish"] == 10, calls


@pytest.fixture(scope="module")
def small_history_servers(redis_server, server_env):
    env = {**server_env, "REDIS_URL": redis_server.url, "ROOM_HISTORY_SIZE": "5"}
    yield from clean_processes(env, count=2)


@pytest.mark.asyncio
async def test_the_rooms_stream_holds_its_history_size_and_a_resume_past_it_is_not_recovered(
    small_history_servers, redis_server
):
    import redis

    a, b = small_history_servers
    room = new_room()
    async with connect(room_url(a, room), subprotocols=["rooms.v1"]) as member:
        welcome = json.loads(await asyncio.wait_for(member.recv(), 5))
        for number in range(8):
            await member.send(f"m{number}")
        frames = [json.loads(await asyncio.wait_for(member.recv(), 5)) for _ in range(8)]
    assert [f["offset"] for f in frames] == list(range(1, 9))
    log = redis.Redis.from_url(redis_server.url).xrange(f"rooms:{{{room}}}:log")
    assert [entry_id for entry_id, _ in log] == [f"{n}-0".encode() for n in range(4, 9)]
    epoch = welcome["epoch"]
    # On the other process, which never had the room: from the stream.
    async with connect(
        room_url(b, room, "sync") + f"?since={epoch}:3", subprotocols=["rooms.v1"]
    ) as ws:
        resumed = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (resumed["recovered"], resumed["offset"]) == (True, 8)
        replay = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(5)]
        assert [(f["offset"], f["text"]) for f in replay] == [(n, f"m{n - 1}") for n in range(4, 9)]
    async with connect(room_url(b, room) + f"?since={epoch}:2", subprotocols=["rooms.v1"]) as ws:
        resumed = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (resumed["recovered"], resumed["offset"]) == (False, 8)  # 3 was trimmed
