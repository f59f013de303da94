"""Where a consumer's messages come from: the server's ``receive``, read ahead while the
process has few connections, and, for a consumer with a channel layer, the layer's receive too,
in arrival order, one dispatch at a time."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable

from app.protocol import Message, Receive

logger = logging.getLogger("app.dispatch")

#: Seconds a consumer waits for its cancelled readers before it ends regardless.
READER_STOP_TIMEOUT = 2.0


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


def discard(awaitable: Awaitable[object] | Message | None) -> None:
    """Drop a ``receive()`` that was issued ahead and will not be awaited.

    Most servers' ``receive`` is a coroutine function: closed unstarted, it did nothing (and
    warns of nothing). granian's returns a future whose read has already begun: cancelled, it
    stops reading and lets go of the connection. A message already read needs nothing.
    """
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    elif (cancel := getattr(awaitable, "cancel", None)) is not None:
        cancel()


def unspent(awaitable: Awaitable[object] | None) -> bool:
    """Whether a ``receive()`` may still be awaited for its message: a coroutine not yet
    started, or a read begun ahead (granian's future) that was not cancelled. A reader cancelled
    while it awaited one has spent it (the servers' receive loses nothing when cancelled)."""
    if awaitable is None:
        return False
    if inspect.iscoroutine(awaitable):
        return inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED
    cancelled = getattr(awaitable, "cancelled", None)
    return cancelled is None or not cancelled()


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


async def two_sources(
    receive: Receive,
    layer_receive: Receive,
    dispatch: Callable[[Message], Awaitable[None]],
    *,
    leftovers: list[Message | Awaitable[Message]],
) -> None:
    """Client events and channel-layer events, in arrival order, one dispatch at a time.

    Each source has a reader task that dispatches what it read when its turn comes (a
    lock: waiting readers go in arrival order), so a message costs one task wake-up. (A
    one-slot queue to a dispatching task, with an ``asyncio.wait`` per message, cost three,
    and Channels' ``await_many_dispatch`` a new task as well: 35 % of a room's time.) Both
    readers run in one context copied from this call's, so handlers share their
    ``contextvars`` as they do when dispatched from here. A reader holds at most one
    message while it waits for its turn.

    When the readers stop, what the client's reader had read and not dispatched, and a read it
    had begun, go into ``leftovers``, in order, for the caller to handle or ``discard``: a send
    that finds the client gone must not lose what the client sent before it left.
    """
    turn = asyncio.Lock()
    ended = False

    async def read(source: Receive, *, then_yield: bool, kept: list | None = None) -> None:
        nonlocal ended
        pending = source()
        try:
            while True:
                message = await pending
                pending = read_ahead(source)  # as in the consumer's one-source loop
                try:
                    await turn.acquire()  # no suspension unless the other reader has it
                except asyncio.CancelledError:
                    if kept is not None:
                        kept.append(message)
                    raise
                try:
                    if ended:  # the other reader's handler ended the consumer
                        if kept is not None:
                            kept.append(message)
                        return
                    try:
                        await dispatch(message)
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
            if kept is not None and unspent(pending):
                kept.append(pending)
            else:
                discard(pending)

    context = contextvars.copy_context()
    # What a client sends is read one message per turn of the loop; a room's messages are
    # delivered as long as they are there. (One message per turn for both, as Channels does:
    # with three members publishing, each member delivered one message for three published,
    # and every queue overflowed at once: tests/test_limits.py.)
    readers = [
        asyncio.create_task(read(receive, then_yield=True, kept=leftovers), context=context),
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
            logger.warning("%d channel-layer reader(s) did not stop; left to the layer", len(stuck))
