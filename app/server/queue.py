"""One connection's messages on their way to the application."""

from __future__ import annotations

import asyncio
import collections

from app.protocol import Message


class MessageQueue(collections.deque):
    """One connection's messages for the application, in place of uvicorn's ``asyncio.Queue``.

    uvicorn puts with ``put_nowait`` and reads with ``get``/``empty`` in ``receive``, which
    ``WebSocketProtocol`` replaces; an ``asyncio.Queue`` pays, for each message of a ping-pong,
    a future through ``_get_loop``, a ``_finished`` event cleared, and a wake-up of putters
    there can never be (it is unbounded). ``receive`` here takes the message from the deque and
    waits on a plain future only when the deque is empty. Several readers (an application
    reading from two tasks) each get their own future; a cancelled one is dropped at the next
    wait, so cancelled receives on an idle connection hold one future at most.
    """

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        super().__init__()
        self.waiters: list[asyncio.Future[None]] = []

    def put_nowait(self, message: Message) -> None:
        self.append(message)
        if self.waiters:
            for waiter in self.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self.waiters.clear()

    def arrival(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future done when the next message is put; one per waiting reader."""
        if self.waiters:  # cancelled waits only, unless two tasks read at once: keep the live
            self.waiters = [waiter for waiter in self.waiters if not waiter.done()]
        waiter = loop.create_future()
        self.waiters.append(waiter)
        return waiter

    async def get(self) -> Message:
        """``asyncio.Queue.get``, for uvicorn code that reads the queue directly."""
        while not self:
            await self.arrival(asyncio.get_running_loop())
        return self.popleft()

    def empty(self) -> bool:
        return not self

    def qsize(self) -> int:
        return len(self)
