"""Where ``SyncConsumer`` handlers run: one thread (a lane) per connection, shared by several
connections, and the outbox that carries a handler's sends back to the event loop.

Channels runs every ``SyncConsumer`` handler of the process on one thread (channels#2132), and
waits in ``async_to_sync`` on each send. Here a connection keeps one lane while it lives (so
thread-bound objects made in one handler work in the next), lanes run side by side, and a
handler's sends are queued and written when it returns.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import time
import weakref
from collections.abc import Callable
from operator import attrgetter

from django.conf import settings

from app import metrics
from app.client_gone import ClientGone, from_server_send
from app.protocol import Message, Send

#: Threads for sync handlers where settings has no ``SYNC_CONSUMER_THREADS``, and at most
#: (``SYNC_CONSUMER_MAX_THREADS``), while every one is busy, for new connections.
DEFAULT_SYNC_CONSUMER_THREADS = 8
DEFAULT_SYNC_CONSUMER_MAX_THREADS = 256

#: Seconds a sync handler runs before its sends are written as it makes them rather than when
#: it returns (``Outbox``).
FLUSH_AFTER = 0.01


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
