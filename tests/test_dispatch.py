"""The lean base classes keep Channels' guarantees: database hygiene, and no serialisation."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
import weakref
from unittest.mock import AsyncMock

import pytest
from asgiref.sync import sync_to_async
from channels.exceptions import StopConsumer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connection

from app.dispatch import LeanAsyncConsumer, LeanSyncConsumer

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


class BlockingSync(LeanSyncConsumer):
    """Each message does blocking work: waits at a barrier shared by the connections, or sleeps."""

    channel_layer_alias = None
    barrier: threading.Barrier | None = None

    def websocket_connect(self, event):
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        if event["text"] == "barrier":
            self.barrier.wait(timeout=5)  # raises BrokenBarrierError unless all run at once
        else:
            time.sleep(1.0)  # the blocking work of the behaviour test
        self.send({"type": "websocket.send", "text": event["text"]})

    def websocket_disconnect(self, event):
        raise StopConsumer()


async def open_connections(consumer, count: int) -> list[WebsocketCommunicator]:
    communicators = [WebsocketCommunicator(consumer.as_asgi(), "/") for _ in range(count)]
    for communicator in communicators:
        assert (await communicator.connect())[0]
    return communicators


async def test_sync_handlers_of_different_connections_run_at_the_same_time():
    """Four handlers meet at a barrier of four: possible only if none waits for another."""
    BlockingSync.barrier = threading.Barrier(4)
    communicators = await open_connections(BlockingSync, 4)
    for communicator in communicators:
        await communicator.send_to(text_data="barrier")
    for communicator in communicators:
        assert await communicator.receive_from(timeout=6) == "barrier"
        await communicator.disconnect()


async def test_four_connections_of_one_second_blocking_work_take_less_than_serialised():
    """The behaviour a user sees. Serialised, four 1 s sleeps take at least 4 s, whatever the
    machine; side by side about 1 s. The margin (3.5 s) is for a loaded 2-core machine; the
    barrier test above is the exact check."""
    communicators = await open_connections(BlockingSync, 4)
    started = time.monotonic()
    for communicator in communicators:
        await communicator.send_to(text_data="sleep")
    for communicator in communicators:
        assert await communicator.receive_from(timeout=5) == "sleep"
    assert time.monotonic() - started < 3.5  # serialised, at least 4 s (channels#2132)
    for communicator in communicators:
        await communicator.disconnect()


class PlainSyncEcho(LeanSyncConsumer):
    channel_layer_alias = None

    def websocket_connect(self, event):
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        self.send({"type": "websocket.send", "text": event["text"]})

    def websocket_disconnect(self, event):
        raise StopConsumer()


async def test_one_connections_messages_stay_in_order_on_the_pool():
    (communicator,) = await open_connections(PlainSyncEcho, 1)
    for i in range(200):
        await communicator.send_to(text_data=str(i))
    assert [await communicator.receive_from() for _ in range(200)] == [str(i) for i in range(200)]
    await communicator.disconnect()


@pytest.fixture
def cleanups(monkeypatch):
    """Threads in which the base classes ran close_old_connections(), sync or async."""
    import app.dispatch

    calls: list[int] = []
    original = app.dispatch.close_old_connections

    def spy(**kwargs):
        calls.append(threading.get_ident())
        return original(**kwargs)

    async def aspy():
        return await sync_to_async(spy)()  # what channels.db.aclose_old_connections does

    monkeypatch.setattr(app.dispatch, "close_old_connections", spy)
    monkeypatch.setattr(app.dispatch, "aclose_old_connections", aspy)
    return calls


class QueryingSync(LeanSyncConsumer):
    channel_layer_alias = None

    def websocket_connect(self, event):
        self.send({"type": "websocket.accept"})

    def websocket_disconnect(self, event):
        raise StopConsumer()

    def websocket_receive(self, event):
        count = User.objects.count()
        self.send({"type": "websocket.send", "text": f"{count} {threading.get_ident()}"})


class QueryingAsync(LeanAsyncConsumer):
    channel_layer_alias = None
    uses_database = True  # the default, stated: this handler uses the ORM

    async def websocket_connect(self, event):
        await self.send({"type": "websocket.accept"})

    async def websocket_disconnect(self, event):
        raise StopConsumer()

    async def websocket_receive(self, event):
        count = await User.objects.acount()  # Django's async ORM: runs on the sync thread
        thread = await sync_to_async(threading.get_ident)()
        await self.send({"type": "websocket.send", "text": f"{count} {thread}"})


@pytest.mark.parametrize("consumer", [QueryingSync, QueryingAsync])
async def test_a_handler_that_queries_has_its_connection_cleaned_up(consumer, cleanups):
    (communicator,) = await open_connections(consumer, 1)
    cleanups.clear()
    await communicator.send_to(text_data="count")
    await communicator.send_to(text_data="count")
    first, second = [await communicator.receive_from() for _ in range(2)]
    threads = {int(reply.split()[1]) for reply in (first, second)}
    # The thread that ran each query had its stale database connections closed, as in Channels.
    assert threads <= set(cleanups)
    assert len(cleanups) >= 2
    await communicator.disconnect()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_database_free_consumers_skip_the_clean_up(cleanups, kind):
    from tests.conftest import make_communicator

    communicator = make_communicator(f"/ws/echo/{kind}/")
    assert (await communicator.connect())[0]
    cleanups.clear()
    for _ in range(5):
        await communicator.send_to(text_data="x")
        await communicator.receive_from()
    assert cleanups == []  # the echo consumers set uses_database = False
    await communicator.disconnect()
    assert connection.alias == "default"


@pytest.mark.parametrize("path", ["/ws/echo/async/", "/ws/broadcast/sync/lobby/"])
async def test_an_open_connection_holds_the_consumers_frame_and_no_routers_or_middlewares(path):
    """What the server awaits for a WebSocket is the consumer's own coroutine: the Origin
    check, ``SessionWhenNeeded``, ``URLRouter`` and ``as_asgi`` keep no frame for the
    connection's life (ProtocolTypeRouter, Channels' own, keeps one)."""
    from project.asgi import application

    scope = {
        "type": "websocket",
        "path": path,
        "headers": [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")],
    }
    websocket_app = application.application_mapping["websocket"]
    coroutine = websocket_app(scope, None, None)
    try:
        assert coroutine.cr_code is LeanAsyncConsumer.__call__.__code__
        routed = coroutine.cr_frame.f_locals["scope"]
        assert routed["url_route"]["kwargs"] == ({"room": "lobby"} if "lobby" in path else {})
    finally:
        coroutine.close()


class EagerReceive:
    """A server's ``receive`` as granian's: each call returns a future whose read has begun.

    The script's messages are there at once; past its end a future stays pending (an idle
    client). Calling again while a future is pending fails the test: one message at a time.
    """

    def __init__(self, *messages: dict) -> None:
        self.script = list(messages)
        self.calls = 0
        self.latest: asyncio.Future | None = None

    def __call__(self) -> asyncio.Future:
        assert self.latest is None or self.latest.done(), "receive() while one was pending"
        self.calls += 1
        self.latest = asyncio.get_running_loop().create_future()
        if self.script:
            self.latest.set_result(self.script.pop(0))
        return self.latest


class Counting:
    """Handlers that record how many receive() calls the server had seen when each ran."""

    channel_layer_alias = None
    uses_database = False
    server: EagerReceive
    seen: list[int]

    def record(self, event):
        self.seen.append(self.server.calls)
        if event["type"] == "websocket.disconnect":
            raise StopConsumer()

    websocket_connect = websocket_receive = websocket_disconnect = record


class CountingSync(Counting, LeanSyncConsumer):
    pass


class CountingAsync(Counting, LeanAsyncConsumer):
    async def websocket_connect(self, event):
        self.record(event)

    websocket_receive = websocket_disconnect = websocket_connect


class CountingAsyncWithLayer(CountingAsync):
    """Client events come through the two-source reader (app/sources.py ``two_sources``)."""

    channel_layer_alias = "default"


SCRIPT = (
    {"type": "websocket.connect"},
    {"type": "websocket.receive", "text": "a"},
    {"type": "websocket.receive", "text": "b"},
    {"type": "websocket.disconnect", "code": 1000},
)


@pytest.mark.parametrize("consumer", [CountingSync, CountingAsync, CountingAsyncWithLayer])
async def test_the_next_receive_is_issued_before_a_message_is_handled_and_dropped_at_the_end(
    consumer,
):
    """On granian the next message is read while this one is handled (docs/performance.md);
    the one issued ahead when the consumer ends is cancelled, so the server stops reading."""
    consumer.server, consumer.seen = EagerReceive(*SCRIPT), []
    await asyncio.wait_for(consumer.as_asgi()({"type": "websocket"}, consumer.server, None), 5)
    assert consumer.seen == [2, 3, 4, 5]  # message k handled after receive() call k + 1
    assert consumer.server.calls == 5
    assert consumer.server.latest.cancelled()


@pytest.mark.parametrize("consumer", [CountingSync, CountingAsync, CountingAsyncWithLayer])
async def test_with_many_connections_the_next_receive_waits_for_the_handler(consumer, monkeypatch):
    """Past READ_AHEAD_CONNECTIONS reading ahead costs granian more than it saves."""
    monkeypatch.setattr("app.sources.READ_AHEAD_CONNECTIONS", 0)  # this connection is one too many
    consumer.server, consumer.seen = EagerReceive(*SCRIPT), []
    await asyncio.wait_for(consumer.as_asgi()({"type": "websocket"}, consumer.server, None), 5)
    assert consumer.seen == [1, 2, 3, 4]  # message k handled before receive() call k + 1
    assert consumer.server.calls == 4


async def test_a_receive_issued_ahead_as_a_coroutine_is_closed_unstarted():
    """uvicorn's, daphne's and hypercorn's ``receive`` is a coroutine function: the call made
    ahead does nothing until awaited, and the last one is closed (no "never awaited")."""
    script, started, made = list(SCRIPT), [], []

    async def body():
        started.append(True)
        return script.pop(0)

    def receive():
        made.append(body())
        return made[-1]

    CountingAsync.server, CountingAsync.seen = EagerReceive(), []
    await asyncio.wait_for(CountingAsync.as_asgi()({"type": "websocket"}, receive, None), 5)
    assert len(made) == 5 and len(started) == 4
    assert inspect.getcoroutinestate(made[-1]) == inspect.CORO_CLOSED


class Message(dict):
    """A message a weak reference can follow."""


class PlainAsyncEcho(LeanAsyncConsumer):
    channel_layer_alias = None
    uses_database = False

    async def websocket_connect(self, event):
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, event):
        await self.send({"type": "websocket.send", "text": event["text"]})


@pytest.mark.parametrize("consumer", [PlainSyncEcho, PlainAsyncEcho])
async def test_an_idle_connection_holds_no_message_it_has_handled(consumer):
    """Reading ahead keeps the next receive, not the last message (which can be 1 MiB)."""
    loop = asyncio.get_running_loop()
    freed = asyncio.Event()
    message = Message(type="websocket.receive", text="x" * 2**20)
    watch = weakref.ref(message, lambda _: loop.call_soon_threadsafe(freed.set))  # noqa: F841
    server = EagerReceive({"type": "websocket.connect"}, message)
    del message
    task = asyncio.create_task(consumer.as_asgi()({"type": "websocket"}, server, AsyncMock()))
    try:
        await asyncio.wait_for(freed.wait(), 5)  # while the consumer waits for the next one
        assert server.calls == 3 and not server.latest.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert server.latest.cancelled()
