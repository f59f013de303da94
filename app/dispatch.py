"""The project's consumer base classes: Channels' ``AsyncConsumer`` and ``SyncConsumer``,
with the per-message overhead taken out and a lost channel layer turned into an event.

Handlers are still named after message types and called by ``dispatch``; what changes is
how a message gets to ``dispatch``. Each change cites its cause in Channels 4.3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import SyncToAsync
from channels.consumer import AsyncConsumer, SyncConsumer, get_handler_name
from channels.db import aclose_old_connections
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from app import protocol
from app.layers import LAYER_ERRORS, error_text
from app.protocol import CloseCode, Message, Receive, Scope, Send, ServerFeatures
from app.tracing import Tracer

try:  # what uvicorn raises for a send to a client that has left
    from uvicorn.protocols.utils import ClientDisconnected
except ImportError:  # pragma: no cover - uvicorn is a dependency

    class ClientDisconnected(OSError):
        pass


logger = logging.getLogger("app.dispatch")


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

#: Seconds a consumer waits for its cancelled readers before it ends regardless.
READER_STOP_TIMEOUT = 2.0

#: Threads for sync handlers. One shared thread would serialise every connection (channels#2132).
_sync_handler_pool: ThreadPoolExecutor | None = None


def sync_handler_pool() -> ThreadPoolExecutor:
    global _sync_handler_pool
    if _sync_handler_pool is None:
        _sync_handler_pool = ThreadPoolExecutor(
            max_workers=settings.SYNC_CONSUMER_THREADS, thread_name_prefix="sync-consumer"
        )
    return _sync_handler_pool


class _DispatchLoop:
    """The receive loop shared by both base classes (``AsyncConsumer.__call__`` rewritten)."""

    #: LeanAsyncConsumer: close stale database connections before each handler, as Channels
    #: does. Consumers whose handlers never touch the ORM set this False: it costs a thread hop
    #: per message. (LeanSyncConsumer always cleans up, in its handler thread, at no hop.)
    uses_database = True
    _layer_failed = False
    tracer = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        live.opened()
        try:
            # Only a handshake with ?trace=<token> is wrapped; every other connection keeps the
            # server's own receive and send, with no per-message check (app/tracing.py).
            self.tracer = await Tracer.for_scope(scope, "sync" if self._sync else "async")
            if self.tracer is not None:
                receive, send = self.tracer.source(receive), self.tracer.sink(send)
            # SyncConsumer's handlers call send() from their thread: one hop back to the loop
            # (Channels uses async_to_sync, several hops and context copies per message).
            self.base_send = _blocking(send, asyncio.get_running_loop()) if self._sync else send
            if self.channel_layer is None:
                # One source: a plain loop, no task and asyncio.wait per message (await_many_dispatch).
                while True:
                    await self.dispatch(await receive())
            else:
                self.channel_name = await self.channel_layer.new_channel()
                await self._two_sources(receive)
        except StopConsumer:
            pass
        except ClientDisconnected:
            # A send after the client left: the disconnect is the news, not an error.
            self.connection_log().info("client gone before a send could reach it")
        except Exception:
            await self._internal_error(send)
        finally:
            live.closed()

    async def _internal_error(self, send: Send) -> None:
        """A handler raised: log it once with its traceback, close this connection with 1011.

        Only this connection is affected; the server never sees the exception, so it logs
        nothing more.
        """
        self.connection_log().exception("handler raised; closing with 1011")
        code = ServerFeatures.from_scope(self.scope).close_code(CloseCode.INTERNAL_ERROR)
        with contextlib.suppress(Exception):  # the connection may already be gone
            await send(protocol.close(code, "internal error"))

    def connection_log(self) -> logging.Logger | logging.LoggerAdapter:
        """The connection's own logger where its session made one."""
        session = getattr(self, "session", None)
        return session.log if session is not None else logger

    async def _two_sources(self, receive: Receive) -> None:
        """Client events and channel-layer events, in arrival order, one dispatch at a time."""
        inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=1)  # a reader waits while we dispatch

        async def pump(source) -> None:
            while True:
                await inbox.put(await source())

        layer_receive = (
            self.tracer.source(self._layer_receive) if self.tracer else self._layer_receive
        )
        readers = [
            asyncio.create_task(pump(receive)),
            asyncio.create_task(pump(layer_receive)),
        ]
        try:
            while True:
                getter = asyncio.ensure_future(inbox.get())
                done, _ = await asyncio.wait(
                    [getter, *readers], return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    for reader in done:
                        reader.result()  # a reader failed: raise its error
                await self.dispatch(getter.result())
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
        """The next channel-layer message; a failing layer becomes one ``layer.unavailable`` event."""
        if self._layer_failed:
            await asyncio.Future()  # told the consumer once; it is closing, so wait for nothing
        for attempt in (1, 2):
            try:
                return await self.channel_layer.receive(self.channel_name)
            except LAYER_ERRORS as error:
                # Once more: after Redis restarts, the first command on a pooled connection fails.
                if attempt == 2:
                    self._layer_failed = True
                    return {
                        "type": "layer.unavailable",
                        "error": error_text(error),
                    }
        raise AssertionError("unreachable")

    def handler_for(self, message: Message):
        """The method named after the message type: ``websocket.receive`` -> ``websocket_receive``."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        return handler


def _blocking(send: Send, loop: asyncio.AbstractEventLoop):
    """``send`` for a handler thread: waits until the server took the message, as Channels' does."""

    def blocking_send(message: Message) -> None:
        asyncio.run_coroutine_threadsafe(send(message), loop).result()

    return blocking_send


class LeanAsyncConsumer(_DispatchLoop, AsyncConsumer):
    """``AsyncConsumer`` without a database clean-up hop where the handlers use no database."""

    async def dispatch(self, message: Message) -> None:
        handler = self.handler_for(message)
        if self.uses_database:
            # Channels awaits this before every handler: a thread hop even for DB-free handlers.
            await aclose_old_connections()
        await handler(message)


class LeanSyncConsumer(_DispatchLoop, SyncConsumer):
    """``SyncConsumer`` whose handlers run on a thread pool, with one thread hop each way.

    Channels runs every SyncConsumer on one thread_sensitive thread (channels#2132): a slow
    handler stalls every other connection. Here a pool runs connections side by side, and one
    connection's messages stay in order because ``dispatch`` awaits each handler.
    """

    async def dispatch(self, message: Message) -> None:
        # Channels wraps this in database_sync_to_async; a plain run_in_executor does the same
        # work (thread, database clean-up) without asgiref's per-call context machinery,
        # about 1.4x the echo rate.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(sync_handler_pool(), self._handle_in_thread, loop, message)

    def _handle_in_thread(self, loop: asyncio.AbstractEventLoop, message: Message) -> None:
        # What SyncToAsync tells its threads, so that async_to_sync() in a handler (a channel
        # layer call, say) runs on the server's loop rather than on a new one.
        SyncToAsync.threadlocal.main_event_loop = loop
        SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
        close_old_connections()  # as DatabaseSyncToAsync does, in the handler's own thread
        try:
            self.handler_for(message)(message)
        finally:
            close_old_connections()
