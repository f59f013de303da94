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

The pieces, one module each: where messages come from (``app/sources.py``), where sync
handlers run and how their sends get back (``app/lanes.py``), what a send to a closed
connection raises (``app/client_gone.py``), and the layer's news (``app/layer_news.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from time import perf_counter

from asgiref.sync import SyncToAsync
from channels.consumer import AsyncConsumer, SyncConsumer, get_handler_name
from channels.db import aclose_old_connections
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.db import close_old_connections

from app import metrics, protocol
from app.client_gone import SERVER_SEND_GONE, ClientGone, from_server_send, handle_the_rest
from app.lanes import FLUSH_AFTER, Outbox, finisher_for, handler_lanes
from app.layer_news import LayerNews, wants_news
from app.layers import error_text
from app.protocol import CloseCode, Message, Receive, Scope, Send, ServerFeatures
from app.session import ConnectionLog
from app.sources import discard, live, read_ahead, two_sources, unspent
from app.tracing import Tracer, asks_for_trace

logger = logging.getLogger("app.dispatch")


class UnroutableMessage(ValueError):
    """A message no handler can take: a malformed type, or no method for its type.

    Raised where Channels raises its ``ValueError`` (this is one), and, as with Channels, it
    is the first thing the caller sees: nothing is sent to the client before it leaves the
    consumer (Channels' ``test_block_underscored_type_function_call`` requires exactly that).
    """


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
                    except ClientGone as gone:
                        gone.leftovers, pending = [pending] if unspent(pending) else [], None
                        raise
                    finally:
                        discard(pending)
                else:
                    await self._two_sources(receive)
            except ClientGone as gone:
                # A send after the client left, or after the server closed the connection for
                # something the client did: the disconnect is the news, not an error. What the
                # server read from the client before it is still handled (a room member's last
                # messages still reach the room).
                self.connection_log().info("client gone before a send could reach it")
                self._sends_go_nowhere()
                await handle_the_rest(
                    self.dispatch,
                    receive,
                    gone.leftovers,
                    disconnect_handled=self._metrics.disconnect_handled,
                )
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
        """Client events and channel-layer events (``two_sources``); the layer's news for the
        consumers that opt in to it (``app/layer_news.py``)."""
        layer_receive = self.channel_receive
        if wants_news(self):
            news = LayerNews(
                self.channel_layer,
                self.channel_name,
                self.channel_receive,
                drops=hasattr(self, "layer_dropped"),
            )
            layer_receive = news.receive
        if self.tracer:
            layer_receive = self.tracer.source(layer_receive)
        leftovers: list[Message | Awaitable[Message]] = []
        try:
            await two_sources(receive, layer_receive, self.dispatch, leftovers=leftovers)
        except ClientGone as gone:
            gone.leftovers = leftovers  # handle_the_rest's
            raise
        except BaseException:
            for item in leftovers:
                discard(item)
            raise

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

    def _sends_go_nowhere(self) -> None:
        """Once the client is gone: the handlers' sends are dropped, not raised."""

        async def nowhere(message: Message) -> None:
            pass

        self.send = nowhere


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

    def _sends_go_nowhere(self) -> None:
        """Once the client is gone: the handlers' sends are dropped, not raised."""
        self.send = lambda message: None
        self._outbox.error = None  # the error that said so; its queue was dropped with it

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
