"""The project's consumer base classes: Channels' ``AsyncConsumer`` and ``SyncConsumer``,
with the per-message overhead taken out and Channels' contract kept.

Handlers are still named after message types and called by ``dispatch``; what changes is
how a message gets to ``dispatch``. Each change cites its cause in Channels 4.3. What is kept,
and checked by running Channels' own test suite with these classes in its base classes' place
(``tests/test_channels_suite.py``):

- a handler's exception ends the consumer and reaches the server, as with Channels (on a
  WebSocket the client is first closed with 1011 and a reason);
- each connection's sync handlers run in one ``contextvars.Context`` of their own, copied from
  the context the consumer was called in, and on one thread (see ``HandlerLanes``);
- settings are read with defaults, and a consumer that does not opt in to tracing
  (``traceable``) or to the channel layer's news (a ``layer_unavailable`` or ``layer_dropped``
  handler) pays nothing for them and sees nothing of them.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from operator import attrgetter
from time import perf_counter

from asgiref.sync import SyncToAsync
from channels.consumer import AsyncConsumer, SyncConsumer, get_handler_name
from channels.db import aclose_old_connections
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from app import metrics, protocol
from app.layers import LAYER_ERRORS, closed_transport, error_text
from app.protocol import CloseCode, Message, Receive, Scope, Send, ServerFeatures
from app.session import ConnectionLog
from app.tracing import Tracer, asks_for_trace

try:  # what uvicorn raises for a send to a client that has left
    from uvicorn.protocols.utils import ClientDisconnected
except ImportError:  # pragma: no cover - uvicorn is a dependency

    class ClientDisconnected(OSError):
        pass


try:  # what daphne raises for a send while its closing handshake runs
    from autobahn.exception import Disconnected
except ImportError:  # pragma: no cover - daphne is a dependency

    class Disconnected(RuntimeError):
        pass


#: What a server's ``send`` raises for a connection that it has closed, or that the client
#: left (measured in issue 23: a send every millisecond while the client sends a frame with
#: RSV1 set, a close frame, or a reset):
#:
#: - uvicorn: ``ClientDisconnected``, an ``OSError`` as the ASGI spec asks. (Plain uvicorn
#:   raises ``RuntimeError`` between failing a connection and losing it; ``app/server/``
#:   raises ``ClientDisconnected`` there too.)
#: - daphne: autobahn's ``Disconnected``, a ``RuntimeError``, while the closing handshake
#:   runs; once the connection is gone the send is dropped.
#: - hypercorn and granian: nothing; the send is dropped.
SERVER_SEND_GONE = (OSError, Disconnected)


class ClientGone(ClientDisconnected):
    """The server's ``send`` found the connection closed: the client left, or the server
    closed it for something the client did. Raised in place of whatever that server raises
    (``SERVER_SEND_GONE``), only from the server's ``send``, so that an ``OSError`` of the
    application's own still propagates as with Channels. The consumer ends with one INFO line.
    """


def from_server_send(error: Exception) -> Exception:
    """What the consumer raises for ``error`` from the server's ``send``: ``ClientGone`` for a
    closed connection, anything else as it is."""
    if isinstance(error, SERVER_SEND_GONE) and not isinstance(error, ClientGone):
        gone = ClientGone(f"{type(error).__name__}: {error}")
        gone.__cause__ = error
        return gone
    return error


logger = logging.getLogger("app.dispatch")

#: Threads for sync handlers where settings has no ``SYNC_CONSUMER_THREADS``, and at most
#: (``SYNC_CONSUMER_MAX_THREADS``), while every one is busy, for new connections.
DEFAULT_SYNC_CONSUMER_THREADS = 8
DEFAULT_SYNC_CONSUMER_MAX_THREADS = 256

#: Seconds a sync handler runs before its sends are written as it makes them rather than when
#: it returns (``Outbox``).
FLUSH_AFTER = 0.01

#: Seconds a consumer waits for its cancelled readers before it ends regardless.
READER_STOP_TIMEOUT = 2.0

#: Seconds a consumer whose send found the client gone waits for the server's
#: ``websocket.disconnect`` (uvicorn has queued it already; daphne sends it once its closing
#: handshake ends) before it handles a 1006 of its own.
DISCONNECT_WAIT = 5.0

#: Up to this many open connections in the process, a consumer calls ``receive()`` for the next
#: message before handling the current one (``read_ahead``). Measured on granian, project async
#: echo, msg/s with / without (docs/performance.md): 1 connection 1.30, 10: 1.20-1.27, 30: 1.07,
#: 50: 0.98, 100: 0.79 (and 1.34 x the CPU per message).
READ_AHEAD_CONNECTIONS = 32


def read_ahead(receive: Receive) -> Awaitable[Message] | None:
    """The next ``receive()``, called now, while the process has few connections; else None.

    granian starts reading when ``receive()`` is called, and its future, complete by the time it
    is awaited, returns without waking the loop: called before the handler runs, the next
    message is read meanwhile, and one connection's round trip loses a thread hand-off. With
    many connections the loop has other work while a message is read, and the reads left
    pending cost granian more than they save. Other servers' ``receive`` is a coroutine
    function: called early, it does nothing until awaited.
    """
    return receive() if live.count <= READ_AHEAD_CONNECTIONS else None


def discard(awaitable: Awaitable[object] | None) -> None:
    """Drop a ``receive()`` that was issued ahead and will not be awaited.

    Most servers' ``receive`` is a coroutine function: closed unstarted, it did nothing (and
    warns of nothing). granian's returns a future whose read has already begun: cancelled, it
    stops reading and lets go of the connection.
    """
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    elif (cancel := getattr(awaitable, "cancel", None)) is not None:
        cancel()


class UnroutableMessage(ValueError):
    """A message no handler can take: a malformed type, or no method for its type.

    Raised where Channels raises its ``ValueError`` (this is one), and, as with Channels, it
    is the first thing the caller sees: nothing is sent to the client before it leaves the
    consumer (Channels' ``test_block_underscored_type_function_call`` requires exactly that).
    """


class LiveConsumers:
    """How many consumers are running in this process: one per open WebSocket connection."""

    def __init__(self) -> None:
        self.count = 0

    def opened(self) -> None:
        self.count += 1

    def closed(self) -> None:
        self.count -= 1


#: Read by /healthz; only the event loop thread changes it.
live = LiveConsumers()


class Finisher:
    """Handler outcomes on their way back to one event loop: one ``call_soon_threadsafe`` for
    all that are ready, instead of one per handler (``run_in_executor``: 17,000-19,000 round
    trips a second with 100 connections waiting; this way 55,000-150,000, measured in process).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.outcomes: collections.deque[tuple[asyncio.Future, object, BaseException | None]]
        self.outcomes = collections.deque()
        self.scheduled = False

    def finished(self, future: asyncio.Future, result: object, error: BaseException | None) -> None:
        """In a lane's thread: hand one outcome back; wake the loop unless a wake-up is pending.
        (Appended before ``scheduled`` is read, and the loop clears it before reading: none is
        left behind; two threads may both wake it, which costs an empty ``_settle``.)"""
        self.outcomes.append((future, result, error))
        if not self.scheduled:
            self.scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        self.scheduled = False
        outcomes = self.outcomes
        while outcomes:
            future, result, error = outcomes.popleft()
            if future.cancelled():
                continue
            if error is None:
                future.set_result(result)
            elif isinstance(error, StopIteration):  # a future refuses it, as a coroutine does
                future.set_exception(RuntimeError(f"handler raised {error!r}"))
            else:
                future.set_exception(error)


_finishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Finisher] = (
    weakref.WeakKeyDictionary()
)


def finisher_for(loop: asyncio.AbstractEventLoop) -> Finisher:
    """The loop's one ``Finisher`` (a test run has a loop per test)."""
    finisher = _finishers.get(loop)
    if finisher is None:
        finisher = _finishers[loop] = Finisher(loop)
    return finisher


class Lane:
    """One thread for sync handlers, with what holds it.

    Jobs wait in a deque: the loop wakes the thread only when it is idle, and a busy thread
    takes the next job without a wake-up; outcomes go back through the loop's ``Finisher``.
    """

    def __init__(self, index: int) -> None:
        self.name = f"sync-consumer-{index}"
        self.connections = 0  # connections whose handlers run here
        self.running = 0  # handlers running (or queued) here now
        self.handler_started: float | None = None  # when the handler in its thread began
        self.jobs: collections.deque[tuple] = collections.deque()
        self.lock = threading.Lock()
        self.wake = threading.Semaphore(0)
        self.idle = True
        self.thread: threading.Thread | None = None

    def submit(self, finisher: Finisher, fn: Callable, *args: object) -> asyncio.Future:
        """Run ``fn(*args)`` on this lane's thread, after the jobs before it; on the loop."""
        future = finisher.loop.create_future()
        with self.lock:
            self.jobs.append((finisher, future, fn, args))
            wake, self.idle = self.idle, False
        if wake:
            if self.thread is None:  # started on first use, as ThreadPoolExecutor does
                self.thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self.thread.start()
            self.wake.release()
        return future

    def _work(self) -> None:
        while True:
            self.wake.acquire()
            while True:
                with self.lock:
                    if not self.jobs:
                        self.idle = True
                        break
                    finisher, future, fn, args = self.jobs.popleft()
                try:
                    result = fn(*args)
                except BaseException as error:  # the awaiting dispatch raises it
                    finisher.finished(future, None, error)
                else:
                    finisher.finished(future, result, None)
                # An idle lane holds nothing of its last job (its message can be 1 MiB).
                finisher = future = fn = args = result = None


class HandlerLanes:
    """The threads sync handlers run on: lanes of one thread each.

    A connection takes a lane when it opens and keeps it until it ends, so all its handlers run
    on one thread, as with Channels (where every ``SyncConsumer`` of the process shares one
    thread): an object with thread affinity made in one handler (a ``sqlite3`` connection, a
    thread-local) works in the next. Connections on different lanes run side by side (Channels'
    single thread serialises them all, channels#2132).

    A new connection takes an idle lane (no handler running), the one with fewest connections.
    When every lane is held by a handler that has run for ``blocked_after`` seconds (slow
    handlers, or sends blocked by clients that do not read), it opens a new lane, up to
    ``max_size``, so that it does not wait behind them; otherwise the lane with fewest
    connections. (Growing whenever every lane is merely busy would open a thread per connection
    under ordinary load: sync echo at 100 connections fell to 0.7x with that rule.)
    """

    def __init__(
        self, size: int, *, max_size: int | None = None, blocked_after: float = 0.1
    ) -> None:
        self.lanes = [self._new_lane(index) for index in range(size)]
        self.max_size = max(size, max_size or size)
        self.blocked_after = blocked_after

    @staticmethod
    def _new_lane(index: int) -> Lane:
        return Lane(index)

    def take(self) -> Lane:
        idle = [lane for lane in self.lanes if lane.running == 0]
        if idle:
            lane = min(idle, key=attrgetter("connections"))
        elif len(self.lanes) < self.max_size and all(map(self._blocked, self.lanes)):
            lane = self._new_lane(len(self.lanes))
            self.lanes.append(lane)
        else:
            lane = min(self.lanes, key=attrgetter("connections"))
        lane.connections += 1
        return lane

    def release(self, lane: Lane) -> None:
        lane.connections -= 1

    def _blocked(self, lane: Lane) -> bool:
        started = lane.handler_started
        return started is not None and time.monotonic() - started >= self.blocked_after


_handler_lanes: HandlerLanes | None = None


def handler_lanes() -> HandlerLanes:
    """The process's lanes: ``SYNC_CONSUMER_THREADS`` at first, ``SYNC_CONSUMER_MAX_THREADS`` at most."""
    global _handler_lanes
    if _handler_lanes is None:
        size = getattr(settings, "SYNC_CONSUMER_THREADS", DEFAULT_SYNC_CONSUMER_THREADS)
        most = getattr(settings, "SYNC_CONSUMER_MAX_THREADS", DEFAULT_SYNC_CONSUMER_MAX_THREADS)
        _handler_lanes = HandlerLanes(size, max_size=most)
    return _handler_lanes


#: Message type -> handler name, for the types seen (at most 1,024: types come from code, but a
#: channel-layer message could carry any string).
_handler_names: dict[str, str] = {}


class _DispatchLoop:
    """The receive loop shared by both base classes (``AsyncConsumer.__call__`` rewritten)."""

    #: Close stale database connections around each handler, as Channels does. Consumers whose
    #: handlers never touch the ORM set this False: in LeanAsyncConsumer the clean-up costs a
    #: thread hop per message, in LeanSyncConsumer two calls in the handler's thread.
    uses_database = True
    #: Opt-in: a handshake with ``?trace=<token>`` of its own session is traced (app/tracing.py).
    #: Elsewhere a ``trace`` query parameter is only a query parameter.
    traceable = False
    tracer: Tracer | None = None
    _layer_failed = False
    _watch_drops = False
    #: Counted in ``channels_echo_room_members`` while connected (app/metrics.py).
    room_member = False

    @classmethod
    def as_asgi(cls, **initkwargs) -> Callable:
        """Channels' ``as_asgi``, returning the consumer's coroutine instead of awaiting it in
        one more: an idle connection holds one frame less (about 0.5 KiB)."""

        def app(scope: Scope, receive: Receive, send: Send):
            return cls(**initkwargs)(scope, receive, send)

        app.consumer_class = cls
        app.consumer_initkwargs = initkwargs
        app._asgi_single_callable = True  # not ASGI 2, for asgiref's check
        functools.update_wrapper(app, cls, updated=())
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        live.opened()
        self._metrics = metrics.Connection(
            metrics.consumer_stats(type(self).__name__, room=self.room_member)
        )
        try:
            if self.traceable and asks_for_trace(scope):
                self.tracer = await Tracer.for_scope(scope, "sync" if self._sync else "async")
                if self.tracer is not None:
                    receive, send = self.tracer.source(receive), self.tracer.sink(send)
            self.base_send = self._take_lane(send) if self._sync else send
            try:
                if self.channel_layer is None:
                    # One source: a plain loop, no task and asyncio.wait per message
                    # (await_many_dispatch), and here rather than in a method of its own: an
                    # idle connection holds one coroutine frame less (about 0.5 KiB).
                    # With few connections the next receive() is called before this message is
                    # handled (read_ahead: granian reads it meanwhile). One message at a time,
                    # in order, either way.
                    pending = receive()
                    try:
                        while True:
                            message = await pending
                            pending = read_ahead(receive)
                            await self.dispatch(message)
                            del message  # not held while idle: it can be 1 MiB
                            if pending is None:
                                pending = receive()
                    finally:
                        discard(pending)
                else:
                    await self._two_sources(receive)
            except ClientGone:
                # A send after the client left, or after the server closed the connection for
                # something the client did: the disconnect is the news, not an error.
                self.connection_log().info("client gone before a send could reach it")
                await self._take_disconnect(receive)
            finally:
                if self._sync:
                    handler_lanes().release(self._lane)
        except StopConsumer:
            pass
        except UnroutableMessage as error:
            self.connection_log().error("ending the connection: %s", error)
            raise  # the server ends the connection; its log has the traceback
        except Exception as error:
            await self._close_for(error, send)
            raise  # as with Channels: the server (and a test's communicator) sees it
        finally:
            live.closed()
            self._metrics.ended()

    async def _take_disconnect(self, receive: Receive) -> None:
        """After a send found the client gone: the server's ``websocket.disconnect``, handled as
        any other, so that the consumer's clean-up runs (a room member leaves its group, which
        would otherwise keep a dead channel until the layer expires it: a day on Redis).
        Messages before it are dropped, since nobody can answer them; a server that sends none
        within ``DISCONNECT_WAIT`` seconds is taken to have lost the connection (1006). A
        disconnect handled already (its handler sent, and found the client gone) is not
        handled twice."""
        if self._metrics.disconnect_handled:
            return
        try:
            async with asyncio.timeout(DISCONNECT_WAIT):
                while (message := await receive())["type"] != "websocket.disconnect":
                    pass
        except TimeoutError:
            message = {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL_CLOSURE}
        with contextlib.suppress(StopConsumer, ClientGone):
            await self.dispatch(message)

    def _take_lane(self, send: Send) -> Callable[[Message], None]:
        """A sync consumer's lane and context for its handlers; returns its handlers' ``send``."""
        loop = asyncio.get_running_loop()
        # One context for all this connection's handlers, copied from the one it was called in:
        # middleware's values are seen, a handler's changes reach its next handler, and no
        # other connection's (a thread alone runs every handler in the thread's context).
        self._context = contextvars.copy_context()
        self._lane = handler_lanes().take()
        self._finisher = finisher_for(loop)
        # SyncConsumer's handlers call send() from their thread; the loop writes what they
        # sent when they return (Channels waits in async_to_sync: several hops per message).
        self._outbox = Outbox(send, loop, self._metrics.sent)
        return self._outbox.put

    async def _close_for(self, error: Exception, send: Send) -> None:
        """Tell a WebSocket client why it is being closed before the exception leaves us.

        One line here says which connection and what; the traceback is the server's to log, once,
        as it does for any application that raises. An HTTP scope gets nothing: the server
        answers 500 itself.
        """
        if self.scope.get("type") != "websocket":
            return
        code = ServerFeatures.from_scope(self.scope).close_code(CloseCode.INTERNAL_ERROR)
        self.connection_log().error(
            "handler raised %s; closing with %s", error_text(error), CloseCode.describe(code)
        )
        close = protocol.close(code, "internal error")
        self._metrics.sent(close)
        with contextlib.suppress(Exception):  # closed already, or the client is gone
            await send(close)

    def connection_log(self) -> logging.Logger | ConnectionLog:
        """The connection's own logger where its session made one."""
        session = getattr(self, "session", None)
        return session.log if session is not None else logger

    async def _two_sources(self, receive: Receive) -> None:
        """Client events and channel-layer events, in arrival order, one dispatch at a time.

        Each source has a reader task that dispatches what it read when its turn comes (a
        lock: waiting readers go in arrival order), so a message costs one task wake-up. (A
        one-slot queue to a dispatching task, with an ``asyncio.wait`` per message, cost three,
        and Channels' ``await_many_dispatch`` a new task as well: 35 % of a room's time.) Both
        readers run in one context copied from this call's, so handlers share their
        ``contextvars`` as they do when dispatched from here. A reader holds at most one
        message while it waits for its turn.
        """
        turn = asyncio.Lock()
        ended = False

        async def read(source: Receive, *, then_yield: bool) -> None:
            nonlocal ended
            pending = source()
            try:
                while True:
                    message = await pending
                    pending = read_ahead(source)  # as in __call__
                    await turn.acquire()  # no suspension unless the other reader has it
                    try:
                        if ended:  # the other reader's handler ended the consumer
                            return
                        try:
                            await self.dispatch(message)
                        except BaseException:
                            ended = True
                            raise
                    finally:
                        turn.release()
                    del message
                    if pending is None:
                        pending = source()
                    if then_yield:
                        await asyncio.sleep(0)
            finally:
                discard(pending)

        # Opt-in: a consumer with a layer_unavailable handler is told once that the layer
        # failed (any other gets the layer's exception, as with Channels); one with a
        # layer_dropped handler is told when the layer dropped messages meant for it.
        self._watch_drops = hasattr(self, "layer_dropped") and hasattr(
            self.channel_layer, "take_drops"
        )
        layer_receive = (
            self._layer_receive
            if self._watch_drops or hasattr(self, "layer_unavailable")
            else self.channel_receive
        )
        if self.tracer:
            layer_receive = self.tracer.source(layer_receive)
        self._layer_news: list[Message] = []
        context = contextvars.copy_context()
        # What a client sends is read one message per turn of the loop; a room's messages are
        # delivered as long as they are there. (One message per turn for both, as Channels does:
        # with three members publishing, each member delivered one message for three published,
        # and every queue overflowed at once: tests/test_limits.py.)
        readers = [
            asyncio.create_task(read(receive, then_yield=True), context=context),
            asyncio.create_task(read(layer_receive, then_yield=False), context=context),
        ]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
            for reader in done:
                reader.result()  # a handler's StopConsumer or error, or a source's error
        finally:
            for reader in readers:
                reader.cancel()
            # Bounded: after a Redis outage, channels-redis can leave a cancelled receive waiting
            # on its internal receive lock, and this consumer must still end.
            _, stuck = await asyncio.wait(readers, timeout=READER_STOP_TIMEOUT)
            if stuck:
                logger.warning(
                    "%d channel-layer reader(s) did not stop; left to the layer", len(stuck)
                )

    async def _layer_receive(self) -> Message:
        """The next channel-layer message, for consumers that opted in to the layer's news.

        A failing layer becomes one ``layer.unavailable`` event; messages the layer dropped for
        this channel (``take_drops``, app/layers.py) a ``layer.dropped`` event with their count,
        after the message that revealed them.
        """
        if self._layer_news:
            return self._layer_news.pop()
        if self._layer_failed:
            await asyncio.Future()  # told the consumer once; it is closing, so wait for nothing
        for attempt in (1, 2):
            try:
                message = await self.channel_receive()
                if self._watch_drops and (lost := self.channel_layer.take_drops(self.channel_name)):
                    self._layer_news.append({"type": "layer.dropped", "count": lost})
                return message
            except (*LAYER_ERRORS, RuntimeError) as error:
                if isinstance(error, RuntimeError) and not closed_transport(error):
                    raise
                # Once more: after Redis restarts, the first command on a pooled connection fails.
                if attempt == 2:
                    metrics.layer_errors.labels("receive").inc()
                    self._layer_failed = True
                    return {
                        "type": "layer.unavailable",
                        "error": error_text(error),
                    }
        raise AssertionError("unreachable")

    def handler_for(self, message: Message) -> Callable:
        """The method named after the message type: ``websocket.receive`` -> ``websocket_receive``."""
        try:
            name = _handler_names[message["type"]]  # Channels' get_handler_name, remembered
        except (KeyError, TypeError):
            try:
                name = get_handler_name(message)
            except ValueError as error:
                raise UnroutableMessage(str(error)) from None
            if len(_handler_names) < 1024 and isinstance(message["type"], str):
                _handler_names[message["type"]] = name
        handler = getattr(self, name, None)
        if handler is None:
            raise UnroutableMessage(f"No handler for message type {message['type']}")
        return handler


class Outbox:
    """A sync connection's sends on their way from its handler thread to the server's ``send``.

    ``put`` (the handler's ``send``) queues the message and returns; the loop writes what is
    queued, in order, in one wake-up: when the handler returns (on the hop that reports its
    return: one cross-thread hand-off each way per message, where waiting in ``send`` for the
    loop cost two), or at once for a handler still running after ``flush_after`` seconds
    (``eager``), so that a send before slow work is not held back by it. ``dispatch`` waits
    until the queue is written before the connection's next message, so order and the server's
    backpressure hold as before. At most ``max_messages`` messages or ``max_bytes`` of payload
    wait: past that the handler's ``send`` blocks until the loop has written them.

    An error from the server's ``send`` (a client gone) is raised by the handler's next
    ``send``, or by ``dispatch`` once the handler returns, and the rest of the queue is dropped.
    """

    def __init__(
        self,
        send: Send,
        loop: asyncio.AbstractEventLoop,
        count: Callable[[Message], None],
        *,
        max_messages: int = 64,
        max_bytes: int = 1024 * 1024,
    ) -> None:
        self.server_send, self.loop, self.count = send, loop, count
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.queue: collections.deque[tuple[Message, int]] = collections.deque()  # and its size
        self.queued_bytes = 0
        self.counting = threading.Lock()  # queued_bytes changes on both threads
        self.eager = False  # the handler has run past flush_after: hand each send over at once
        self.error: BaseException | None = None
        self.writer: asyncio.Task | None = None  # a write started while the handler runs
        self.waiters: list[concurrent.futures.Future[None]] = []

    def put(self, message: Message) -> None:
        """The handler thread's ``send``."""
        if self.error is not None:
            raise self.error
        size = metrics.payload_bytes(message)
        with self.counting:
            self.queue.append((message, size))  # appended before eager is read: see go_eager
            self.queued_bytes += size
            full = len(self.queue) >= self.max_messages or self.queued_bytes >= self.max_bytes
        if not (full or self.eager):
            return
        waiter: concurrent.futures.Future[None] | None = (
            concurrent.futures.Future() if full else None
        )
        self.loop.call_soon_threadsafe(self._write_soon, waiter)
        while waiter is not None:
            try:
                return waiter.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                # A slow client is the server's to bound; a stopped loop would leave this
                # thread waiting for ever, and block the interpreter's exit with it.
                if self.loop.is_closed():
                    raise ClientGone("the server's event loop has stopped") from None

    def go_eager(self) -> None:
        """On the loop, once the handler has run ``flush_after``: write what it has sent so
        far, and have its later sends handed over at once. (Set before the queue is read, and
        the thread appends before reading it: no send is left behind between the two.)"""
        self.eager = True
        self._write_soon(None)

    def _write_soon(self, waiter: concurrent.futures.Future[None] | None) -> None:
        if waiter is not None:
            self.waiters.append(waiter)
        if self.writer is None or self.writer.done():
            self.writer = self.loop.create_task(self.write())

    async def write(self) -> None:
        """Give the queued messages to the server's ``send`` (any awaitable), in order."""
        queue = self.queue
        try:
            while queue:
                with self.counting:
                    message, size = queue.popleft()
                    self.queued_bytes -= size
                self.count(message)
                await self.server_send(message)
        except Exception as error:
            self.error = from_server_send(error)
            with self.counting:
                queue.clear()
                self.queued_bytes = 0
        finally:
            waiters, self.waiters = self.waiters, []
            for waiter in waiters:
                if self.error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(self.error)

    async def drain(self) -> None:
        """After the handler returned: write what it left, after any write under way."""
        self.eager = False
        if self.writer is not None:
            await self.writer
            self.writer = None
        if self.queue:
            await self.write()
        if self.error is not None:
            raise self.error


class LeanAsyncConsumer(_DispatchLoop, AsyncConsumer):
    """``AsyncConsumer`` without a database clean-up hop where the handlers use no database."""

    async def dispatch(self, message: Message) -> None:
        handler = self.handler_for(message)
        started = perf_counter()
        try:
            if self.uses_database:
                # Channels awaits this before every handler: a thread hop even for DB-free handlers.
                await aclose_old_connections()
            await handler(message)
        finally:
            self._metrics.handled(message, started)

    async def send(self, message: Message) -> None:
        """Channels' ``send``, counted for the metrics."""
        self._metrics.sent(message)
        try:
            await self.base_send(message)
        except SERVER_SEND_GONE as error:
            raise from_server_send(error)  # noqa: B904 - it names its cause


class LeanSyncConsumer(_DispatchLoop, SyncConsumer):
    """``SyncConsumer`` whose handlers run on the connection's own lane, one thread hop each way
    (shared with the other handlers ready at the same time).

    Channels runs every SyncConsumer on one thread_sensitive thread (channels#2132): a slow
    handler stalls every other connection. Here each connection has a lane (``HandlerLanes``),
    and one connection's messages stay in order because ``dispatch`` awaits each handler.
    """

    async def dispatch(self, message: Message) -> None:
        # Channels wraps this in database_sync_to_async; the lane does the same work (thread,
        # database clean-up, context) without asgiref's per-call machinery, and its hand-offs
        # are shared by the handlers that are ready together (Lane, Finisher).
        lane = self._lane
        lane.running += 1
        started = perf_counter()
        # A handler still running after FLUSH_AFTER has its sends written as it makes them.
        eager = self._finisher.loop.call_later(FLUSH_AFTER, self._outbox.go_eager)
        returned = False
        try:
            await lane.submit(self._finisher, self._context.run, self._handle, message)
            returned = True
        finally:
            eager.cancel()
            lane.running -= 1
            self._metrics.handled(message, started)
            if not returned:  # what it sent before raising goes out first; its error outranks
                with contextlib.suppress(Exception):
                    await self._outbox.drain()
        await self._outbox.drain()  # written before the connection's next message

    def _handle(self, message: Message) -> None:
        """One handler call, in the lane's thread and the connection's context."""
        # What SyncToAsync tells its threads, so that async_to_sync() in a handler (a channel
        # layer call, say) runs on the server's loop rather than on a new one.
        SyncToAsync.threadlocal.main_event_loop = self._finisher.loop
        SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
        if self.uses_database:
            close_old_connections()  # as DatabaseSyncToAsync does, in the handler's own thread
        lane = self._lane
        lane.handler_started = time.monotonic()  # HandlerLanes.take sees a blocked lane
        try:
            self.handler_for(message)(message)
        finally:
            lane.handler_started = None
            if self.uses_database:
                close_old_connections()
