"""A room member's last messages reach the room when it closes right after sending them.

The server has read them from the socket before the close; the sender's consumer then finds
its client gone when it forwards the room's copy back to it. What it had read before the
disconnect is still handled, in order (``app/client_gone.py``, ``handle_the_rest``): dropping
it lost 30-470 of 500 messages (issue 32, item 7). Against ``manage.py serve``, in memory and
on Redis across two processes, both consumers, ten runs each.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from websockets.asyncio.client import connect

from tests.conftest import clean_processes
from tests.servers import LiveServer

pytestmark = pytest.mark.server

MESSAGES = 500
RUNS = 10


async def send_then_close(sender_url: str, listener_urls: list[str]) -> list[list[str]]:
    """One sender sends ``MESSAGES`` numbered messages and closes at once; returns what each
    listener received until the last number, or until nothing came for 5 s."""
    listeners = [await connect(url, max_queue=None) for url in listener_urls]
    try:
        # A sender that reads what it is sent, as a browser does (websockets' default queue of
        # 16 stops reading, and the server's close reply would wait behind the room's copies).
        sender = await connect(sender_url, max_queue=None)
        for n in range(MESSAGES):
            await sender.send(f"m{n}")
        await sender.close()  # 1000, right behind the last message

        async def hear(listener) -> list[str]:
            heard: list[str] = []
            while not heard or heard[-1] != f"m{MESSAGES - 1}":
                try:
                    heard.append(await asyncio.wait_for(listener.recv(), 5))
                except TimeoutError:
                    break
            return heard

        return await asyncio.gather(*(hear(listener) for listener in listeners))
    finally:
        await asyncio.gather(*(listener.close() for listener in listeners))


def room_url(server: LiveServer, room: str, kind: str) -> str:
    return f"{server.ws_url}/ws/broadcast/{kind}/{room}/"


def assert_all_heard(heard: list[list[str]]) -> None:
    expected = [f"m{n}" for n in range(MESSAGES)]
    for listener in heard:
        assert len(listener) == MESSAGES, f"heard {len(listener)} of {MESSAGES}"
        assert listener == expected


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_senders_last_messages_reach_the_room_in_memory(uvicorn_server, kind):
    for _ in range(RUNS):
        room = f"last-{uuid.uuid4().hex[:10]}"
        heard = await send_then_close(
            room_url(uvicorn_server, room, kind),
            [room_url(uvicorn_server, room, "async"), room_url(uvicorn_server, room, "sync")],
        )
        assert_all_heard(heard)
    uvicorn_server.wait_for_log(r"client gone before a send could reach it")


@pytest.fixture(scope="module")
def two_on_redis(redis_server, server_env):
    yield from clean_processes({**server_env, "REDIS_URL": redis_server.url}, count=2)


@pytest.mark.redis
@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_senders_last_messages_reach_the_room_across_processes_on_redis(two_on_redis, kind):
    a, b = two_on_redis
    for _ in range(RUNS):
        room = f"last-{uuid.uuid4().hex[:10]}"
        heard = await send_then_close(
            room_url(a, room, kind), [room_url(a, room, "sync"), room_url(b, room, "async")]
        )
        assert_all_heard(heard)
