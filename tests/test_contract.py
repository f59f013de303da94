"""The base classes keep Channels' contract where they differ from it in mechanism.

Channels' own suite (``test_channels_suite.py``) covers what it tests; these cover the rest:
per-connection contextvars and thread affinity, exceptions, any awaitable from ``send``,
settings read with defaults, and opt-in tracing and layer-failure events.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.exceptions import StopConsumer
from channels.layers import InMemoryChannelLayer
from channels.testing import WebsocketCommunicator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import app.dispatch
import app.lanes
from app.dispatch import LeanAsyncConsumer, LeanSyncConsumer, UnroutableMessage
from app.lanes import HandlerLanes
from tests.compat import BEHAVIOUR
from tests.probe_app import RaisingAsync, RaisingSync, application
from tests.servers import SERVERS, LiveServer

pytestmark = pytest.mark.asyncio

HANDLERS = 40


def zoned(connection: int, index: int) -> str:
    """A message naming its connection, its index and the time zone its handler activates."""
    return f"c{connection}-{index}-{('Europe/Paris', 'Asia/Tokyo')[(index + connection) % 2]}"


@pytest.fixture
def lanes(request, monkeypatch) -> HandlerLanes:
    """Sync handlers on ``request.param`` lanes: 1 puts every connection on the same thread."""
    size = getattr(request, "param", 4)
    replaced = HandlerLanes(size, max_size=size)
    monkeypatch.setattr(app.lanes, "_handler_lanes", replaced)
    return replaced


def probe(path: str) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, path, spec_version="2.4")


# --- contextvars and thread affinity ----------------------------------------------------------


@pytest.mark.parametrize("lanes", [1, 4], indirect=True, ids=["one-thread", "four-threads"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_each_connection_has_its_own_context_and_keeps_it(kind, lanes):
    """2 connections x 40 handlers, interleaved: each handler sees the middleware's value of its
    own connection and what its own previous handler set, never the other connection's."""
    connections = [probe(f"/ws/probe/context/{kind}/?c{c}") for c in range(2)]
    for communicator in connections:
        assert (await communicator.connect())[0]
    for i in range(HANDLERS):
        for c, communicator in enumerate(connections):
            await communicator.send_to(text_data=zoned(c, i))
    for c, communicator in enumerate(connections):
        threads = set()
        previous, zone = "", "UTC"
        for i in range(HANDLERS):
            seen_id, seen_value, seen_language, thread = (await communicator.receive_from()).split(
                "|"
            )
            assert (seen_id, seen_value, seen_language) == (f"c{c}", previous, zone), i
            previous = zoned(c, i)
            zone = previous.split("-", 2)[2]
            threads.add(thread)
        if kind == "sync":
            assert len(threads) == 1, "a connection's sync handlers ran on several threads"
        await communicator.disconnect()


class SqliteSync(LeanSyncConsumer):
    """Keeps a sqlite3 connection, which refuses use from any thread but its creator's."""

    channel_layer_alias = None

    def websocket_connect(self, event):
        self.db = sqlite3.connect(":memory:")
        self.db.execute("create table seen (text)")
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        self.db.execute("insert into seen values (?)", (event["text"],))
        (count,) = self.db.execute("select count(*) from seen").fetchone()
        self.send({"type": "websocket.send", "text": str(count)})

    def websocket_disconnect(self, event):
        self.db.close()
        raise StopConsumer()


@pytest.mark.parametrize("lanes", [2], indirect=True)
async def test_an_object_with_thread_affinity_lives_as_long_as_its_connection(lanes):
    """More connections (5) than lanes (2): each still runs every handler on one thread."""
    connections = [WebsocketCommunicator(SqliteSync.as_asgi(), "/") for _ in range(5)]
    for communicator in connections:
        assert (await communicator.connect())[0]
    for i in range(1, 11):
        for communicator in connections:
            await communicator.send_to(text_data="x")
        for communicator in connections:
            assert await communicator.receive_from() == str(i)
    assert sorted(lane.connections for lane in lanes.lanes) == [2, 3]  # least loaded first
    for communicator in connections:
        await communicator.disconnect()
    assert [lane.connections for lane in lanes.lanes] == [0, 0]


class GatedSync(LeanSyncConsumer):
    """``wait`` blocks its handler until the test opens the gate: a send stuck on a slow client."""

    channel_layer_alias = None
    gate = threading.Event()
    entered = threading.Event()

    def websocket_connect(self, event):
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        if event["text"] == "wait":
            self.entered.set()
            self.gate.wait(timeout=10)
        self.send({"type": "websocket.send", "text": event["text"]})

    def websocket_disconnect(self, event):
        raise StopConsumer()


async def test_a_new_connection_gets_a_new_lane_while_every_lane_is_busy(monkeypatch):
    lanes = HandlerLanes(1, max_size=2, blocked_after=0)
    monkeypatch.setattr(app.lanes, "_handler_lanes", lanes)
    GatedSync.gate.clear()
    GatedSync.entered.clear()
    stuck = WebsocketCommunicator(GatedSync.as_asgi(), "/")
    assert (await stuck.connect())[0]
    await stuck.send_to(text_data="wait")
    assert await asyncio.to_thread(GatedSync.entered.wait, 5)  # it holds the only lane
    fresh = WebsocketCommunicator(GatedSync.as_asgi(), "/")
    assert (await fresh.connect())[0]
    await fresh.send_to(text_data="hello")
    assert await fresh.receive_from() == "hello"  # not behind the stuck handler
    assert len(lanes.lanes) == 2
    GatedSync.gate.set()
    assert await stuck.receive_from() == "wait"
    for communicator in (stuck, fresh):
        await communicator.disconnect()


async def test_lanes_grow_only_when_every_lane_is_blocked_not_merely_busy():
    import time

    lanes = HandlerLanes(2, max_size=4, blocked_after=0.1)
    for lane in lanes.lanes:
        lane.running = 1  # busy with short handlers: ordinary load
        lane.handler_started = time.monotonic()
    assert lanes.take() in lanes.lanes[:2] and len(lanes.lanes) == 2
    for lane in lanes.lanes:
        lane.handler_started = time.monotonic() - 1  # every handler stuck for a second
    assert lanes.take() is lanes.lanes[2]  # a new lane, not a wait behind them


# --- sends from a handler thread (app.lanes.Outbox) ------------------------------------------


class ProgressSync(LeanSyncConsumer):
    """Sends, then blocks until the test has seen that send: held until return, it never ends."""

    channel_layer_alias = None
    uses_database = False
    seen = threading.Event()

    def websocket_connect(self, event):
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        count = int(event["text"])
        self.send({"type": "websocket.send", "text": "working"})
        assert self.seen.wait(timeout=10), "the first send was held back by the slow work"
        for i in range(count):  # more than the outbox holds: send blocks, nothing is lost
            self.send({"type": "websocket.send", "text": str(i)})

    def websocket_disconnect(self, event):
        raise StopConsumer()


async def test_a_send_before_slow_work_arrives_while_the_handler_still_runs_and_order_holds():
    ProgressSync.seen.clear()
    communicator = WebsocketCommunicator(ProgressSync.as_asgi(), "/")
    assert (await communicator.connect())[0]
    await communicator.send_to(text_data="300")
    assert await communicator.receive_from(timeout=5) == "working"
    ProgressSync.seen.set()
    assert [await communicator.receive_from() for _ in range(300)] == [str(i) for i in range(300)]
    await communicator.disconnect()


async def test_a_handler_thread_holds_at_most_max_messages_then_its_send_waits():
    """The server's send is stuck (a client that does not read): the handler thread stops at
    the bound instead of queueing without end, and goes on when the server takes them."""
    loop = asyncio.get_running_loop()
    gate, entered, written = asyncio.Event(), asyncio.Event(), []

    async def stuck_send(message):
        entered.set()
        await gate.wait()
        written.append(message["text"])

    outbox = app.lanes.Outbox(stuck_send, loop, lambda message: None, max_messages=8)
    returned = []

    def handler():
        for i in range(20):
            outbox.put({"type": "websocket.send", "text": str(i)})
            returned.append(i)

    thread = loop.run_in_executor(None, handler)
    await asyncio.wait_for(entered.wait(), 5)  # the 8th put asked the loop to write, and waits
    assert returned == list(range(7)) and len(outbox.queue) == 7  # the 8th is being written
    gate.set()
    await asyncio.wait_for(thread, 5)
    await outbox.drain()
    assert written == [str(i) for i in range(20)]


# --- exceptions -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # lane threads may hold a connection from earlier tests
@pytest.mark.parametrize("consumer", [RaisingSync, RaisingAsync])
@pytest.mark.parametrize(("spec_version", "code"), [("2.4", 1011), (None, 4011)])
async def test_a_raising_handler_closes_with_a_reason_then_the_exception_propagates(
    consumer, spec_version, code, caplog
):
    failing = WebsocketCommunicator(consumer.as_asgi(), "/", spec_version=spec_version)
    healthy = WebsocketCommunicator(consumer.as_asgi(), "/", spec_version=spec_version)
    assert (await failing.connect())[0] and (await healthy.connect())[0]
    with caplog.at_level(logging.INFO):
        await failing.send_to(text_data="boom")
        close = await failing.receive_output()
        with pytest.raises(RuntimeError, match="the handler failed"):
            await failing.wait()  # as with Channels: the server sees the exception
    assert close == {"type": "websocket.close", "code": code, "reason": "internal error"}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # One line from us saying what and which code; the traceback is the server's to log.
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "RuntimeError: the handler failed" in errors[0].getMessage()
    await healthy.send_to(text_data="still here")
    assert await healthy.receive_from() == "still here"
    await healthy.disconnect()


class RaisingHttp(LeanAsyncConsumer):
    channel_layer_alias = None
    uses_database = False

    async def http_request(self, event):
        raise RuntimeError("the handler failed")


async def test_nothing_websocket_is_sent_on_an_http_scope():
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    communicator = ApplicationCommunicator(RaisingHttp.as_asgi(), scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    with pytest.raises(RuntimeError):
        await communicator.wait()
    assert communicator.output_queue.empty()  # the server answers 500 itself


async def test_a_message_with_no_handler_raises_before_anything_is_sent():
    communicator = WebsocketCommunicator(RaisingAsync.as_asgi(), "/")
    assert (await communicator.connect())[0]
    await communicator.send_input({"type": "websocket.nonsense"})
    with pytest.raises(UnroutableMessage, match=r"No handler for message type websocket\.nonsense"):
        await communicator.wait()
    assert communicator.output_queue.empty()
    assert issubclass(UnroutableMessage, ValueError)  # what Channels raises, and code catches


# --- send: any awaitable ----------------------------------------------------------------------


class NotACoroutine:
    """An awaitable that is not a coroutine, as granian's ``send`` returns."""

    def __init__(self, inner):
        self.inner = inner

    def __await__(self):
        return self.inner.__await__()


@pytest.mark.django_db(transaction=True)
async def test_sync_send_works_with_a_send_that_returns_any_awaitable():
    sent = []

    async def record(message):
        sent.append(message)

    def send(message):
        return NotACoroutine(record(message))

    queue: asyncio.Queue = asyncio.Queue()
    for text in ("a", "b"):
        queue.put_nowait({"type": "websocket.receive", "text": text})
    queue.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await RaisingSync.as_asgi()({"type": "websocket", "path": "/"}, queue.get, send)
    assert [m.get("text") for m in sent] == ["a", "b"]


# --- settings, tracing and layer failures: defaults and opt-ins -------------------------------


@pytest.mark.django_db(transaction=True)
async def test_sync_consumers_work_without_the_thread_setting(settings, monkeypatch):
    del settings.SYNC_CONSUMER_THREADS
    monkeypatch.setattr(app.lanes, "_handler_lanes", None)
    communicator = WebsocketCommunicator(RaisingSync.as_asgi(), "/")
    assert (await communicator.connect())[0]
    await communicator.send_to(text_data="hello")
    assert await communicator.receive_from() == "hello"
    await communicator.disconnect()
    assert len(app.lanes._handler_lanes.lanes) == app.lanes.DEFAULT_SYNC_CONSUMER_THREADS


async def test_a_consumer_that_did_not_opt_in_ignores_trace_parameters(monkeypatch):
    async def no_lookup(*args):
        raise AssertionError("the tracer ran for a consumer that did not opt in")

    monkeypatch.setattr(app.dispatch.Tracer, "for_scope", no_lookup)
    communicator = WebsocketCommunicator(RaisingAsync.as_asgi(), "/?trace=abc")
    assert (await communicator.connect())[0]
    await communicator.send_to(text_data="hello")
    assert await communicator.receive_from() == "hello"
    await communicator.disconnect()


class BrokenLayer(InMemoryChannelLayer):
    async def receive(self, channel):
        raise ConnectionError("layer down")


class LayerUser(LeanAsyncConsumer):
    """No ``layer_unavailable`` handler: a failing layer is an exception, as with Channels."""

    uses_database = False
    channel_layer_alias = "broken"

    async def websocket_connect(self, event):
        await self.send({"type": "websocket.accept"})


class LayerWatcher(LayerUser):
    async def layer_unavailable(self, event):
        await self.send({"type": "websocket.close", "code": 1013, "reason": event["error"]})


@pytest.fixture
def broken_layer(settings):
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        **settings.CHANNEL_LAYERS,
        "broken": {"BACKEND": f"{__name__}.BrokenLayer"},
    }
    yield
    channel_layers.backends.pop("broken", None)


async def test_layer_failures_reach_only_consumers_that_opted_in(broken_layer):
    plain = WebsocketCommunicator(LayerUser.as_asgi(), "/")
    await plain.send_input({"type": "websocket.connect"})
    with pytest.raises(ConnectionError, match="layer down"):
        await plain.wait()

    watcher = WebsocketCommunicator(LayerWatcher.as_asgi(), "/")
    await watcher.send_input({"type": "websocket.connect"})
    outputs = [await watcher.receive_output(), await watcher.receive_output()]
    assert outputs[1] == {
        "type": "websocket.close",
        "code": 1013,
        "reason": "ConnectionError: layer down",
    }
    watcher.future.cancel()


async def test_channel_receive_is_set_as_channels_sets_it():
    seen = {}

    class Probe(LeanAsyncConsumer):
        uses_database = False

        async def websocket_connect(self, event):
            seen["receive"] = self.channel_receive
            seen["channel"] = self.channel_name
            raise StopConsumer()

    communicator = WebsocketCommunicator(Probe.as_asgi(), "/")
    await communicator.send_input({"type": "websocket.connect"})
    await communicator.wait()
    assert seen["receive"].args == (seen["channel"],)
    assert seen["receive"].func.__name__ == "receive"


# --- the same on real server processes --------------------------------------------------------


@pytest.fixture(scope="module", params=SERVERS)
def probe_server(request, server_env):
    """Each server on the probe application."""
    server = LiveServer(request.param, env=server_env, app="tests.probe_app:application")
    yield server.wait_ready()
    server.stop()


@pytest.mark.server
@pytest.mark.parametrize("server", SERVERS)
async def test_a_raising_handler_on_a_real_server_closes_and_logs_one_traceback(server, server_env):
    """A server of its own: its whole log is read after it stops, to count the tracebacks."""
    probe_server = LiveServer(server, env=server_env, app="tests.probe_app:application")
    try:
        probe_server.wait_ready()
        expected = BEHAVIOUR[server]
        for kind in ("sync", "async"):
            async with connect(f"{probe_server.ws_url}/ws/probe/raise/{kind}/") as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.send("boom")
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
            frame = closed.value.rcvd
            assert frame is not None, (
                f"{probe_server.kind} dropped the connection without a close frame"
            )
            # daphne refuses 1011 as it refuses 1009: the mirrored 4011, as for 4009.
            assert frame.code == (4011 if expected.too_big_code == 4009 else 1011)
            assert frame.reason == ("internal error" if expected.close_reason else "")
        probe_server.wait_for_log(r"(?s)Traceback.*Traceback")  # the server logs each failure
    finally:
        probe_server.stop()  # the whole log, then count
    log = probe_server.log()
    assert log.count("Traceback") == 2, log
    assert log.count("handler raised RuntimeError: the handler failed; closing with") == 2


@pytest.mark.server
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_contextvars_stay_with_their_connection_on_a_real_server(probe_server, kind):
    async with (
        connect(f"{probe_server.ws_url}/ws/probe/context/{kind}/?c0") as first,
        connect(f"{probe_server.ws_url}/ws/probe/context/{kind}/?c1") as second,
    ):
        connections = [first, second]
        for i in range(HANDLERS):
            for c, ws in enumerate(connections):
                await ws.send(zoned(c, i))
        for c, ws in enumerate(connections):
            previous, zone = "", "UTC"
            for i in range(HANDLERS):
                seen = (await asyncio.wait_for(ws.recv(), 5)).split("|")[:3]
                assert seen == [f"c{c}", previous, zone], i
                previous = zoned(c, i)
                zone = previous.split("-", 2)[2]
