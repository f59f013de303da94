"""``WebSocketProtocol``: uvicorn's default WebSocket protocol with the project's parts.

Each part lives in the module named for its subject; this class composes them and keeps the
two methods every message passes through, ``send`` here and ``receive`` in ``flow``, each
in one piece: split across the parts, a message would pay one more coroutine per part.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from app import metrics
from app.protocol import Message, peer
from app.server.behaviours import X_MESSAGES, ServerBehaviours
from app.server.caps import ConnectionCaps
from app.server.closing import APP_CLOSES, ServerCloses, logger
from app.server.deflate import deflate_extensions
from app.server.flow import WRITE_BUFFER_HARD_LIMIT, FlowControl
from app.server.frames import FramePolicy, ServerProtocol
from app.server.http import http_refusal
from app.server.outgoing import batch_for, data_frame
from app.server.queue import MessageQueue
from app.session import TokenBucket


class WebSocketProtocol(
    FramePolicy,
    FlowControl,
    ServerCloses,
    ConnectionCaps,
    ServerBehaviours,
    WebSocketsSansIOProtocol,
):
    """uvicorn's default WebSocket protocol, bounded, and with client errors kept out of the
    ERROR log.

    - ``caps``: connections past the process's or one address's cap get 503.
    - ``frames``: every frame takes a token (1008 past the rate), fragments are joined into one
      buffer, invalid UTF-8 is closed 1007, at the fragment where it appears, with one WARNING
      line.
    - ``flow``: a client that does not read is not read from, then dropped (1008).
    - ``closing``: every close the server makes is one WARNING line and a disconnect marked
      as the server's; a send after it raises ``ClientDisconnected``.
    - ``behaviours``: the ``x-behaviours`` extension (fragments, RSV1 per message, pings,
      a drop without a close frame), for ``/ws/test/``; off the fast path.
    - Here: a handshake that websockets itself refuses (a request line over 8 KiB: 414; a
      header line over 8 KiB or more than 128 headers: 431) was answered in websockets' output
      buffer, which uvicorn never writes, and the socket stayed open: both are done here. A
      refused handshake (a 403 or 404 sent through the ``websocket.http.response`` extension)
      also logs "ASGI callable returned without completing handshake" at ERROR (uvicorn PR
      #3138, open at the time of writing): the handshake is marked done. The handshake's
      response is dropped once the accept is sent, and messages wait in a ``MessageQueue``,
      not an ``asyncio.Queue``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # websockets' protocol as uvicorn configured it, with the close between fragments
        # answered (frames.ServerProtocol adds one method, and no state).
        self.conn.__class__ = ServerProtocol
        # permessage-deflate as deflate.py negotiates it (uvicorn's own is off: config.py).
        self.conn.available_extensions = deflate_extensions()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.queue = MessageQueue()  # type: ignore[assignment]  # uvicorn's is an asyncio.Queue
        self.frame_budget = TokenBucket(
            settings.WEBSOCKET_FRAME_RATE, settings.WEBSOCKET_FRAME_BURST
        )
        self.transport.set_write_buffer_limits(high=settings.WEBSOCKET_WRITE_BUFFER_BYTES)
        self.hard_limit = WRITE_BUFFER_HARD_LIMIT * settings.WEBSOCKET_WRITE_BUFFER_BYTES
        self.batch = batch_for(self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self.batch.drop(self.transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, except that what the client sent before a violation in the same read is
        delivered (uvicorn drops it), and the handshakes websockets refuses get their answer.
        What the application sent this turn is written first: uvicorn may answer a ping or a
        close now (outgoing.WriteBatch)."""
        self.batch.flush_one(self.transport)
        self.conn.receive_data(data)
        self.handle_events()
        if self.conn.parser_exc is not None:
            self.handle_parser_exception()
            return
        if self.conn.reader.buffer or self.partial_text is not None:
            self.check_partial_text()  # a frame is still arriving: fail fast on bad UTF-8
        if (
            not self.handshake_initiated
            and self.conn.handshake_exc is not None
            and not self.transport.is_closing()
        ):
            # websockets refused the request: its 414 or 431 is in data_to_send; for a request
            # it cannot parse at all it has only an end of stream, so the 400 is ours.
            why = f"handshake {self.conn.handshake_exc}"
            response = b"".join(self.conn.data_to_send())
            metrics.refused("header_too_large" if response else "bad_handshake")
            response = response or http_refusal(400, "Bad Request", why)
            self.transport.write(response)
            self.transport.close()
            self.close_sent = True
            logger.warning("refused %s: %s", peer(self.client), why)

    async def send(self, message: Message) -> None:  # type: ignore[override]
        # A message on an open connection: uvicorn's path without its checks of what cannot be
        # here, the frame made once for all the connections it goes to, and written at the end
        # of this turn of the event loop with the others (outgoing.py).
        if (
            message["type"] == "websocket.send"
            and self.handshake_complete
            and not self.close_sent
            and not self.write_paused
            and self.conn.state is State.OPEN
            and self.initial_response is None
            and not self.disconnected
            and (frame := data_frame(message, self.conn.extensions)) is not None
        ):
            self.batch.add(self.loop, self.transport, frame)
            return
        self.batch.flush_one(self.transport)  # what follows is written at once
        if self.close_sent and not self.app_closed:
            # The server closed this connection itself (a protocol error, a bound, a client that
            # does not read): to the application the client is gone, an OSError as the ASGI spec
            # asks. uvicorn raises RuntimeError("Unexpected ASGI message ... after sending
            # 'websocket.close'"), which reads as an application bug and logs a traceback; a room
            # member's queued message met it 5 times in 5 (issue 23).
            if self.close_after_answers is not None:
                return self.answer_before_close(message)
            raise ClientDisconnected("the server has closed this connection")
        if self.write_paused and self.transport.get_write_buffer_size() > self.hard_limit:
            self.writable.clear()  # uvicorn's send waits until resume_writing
        if message["type"] in X_MESSAGES:
            return await self.x_message(message)  # behaviours.py
        await super().send(message)
        kind = message["type"]
        if kind == "websocket.send":
            return  # a message on a closing connection, or on a paused one
        if kind in APP_CLOSES:  # set after uvicorn's send, which does not yield once it closes
            self.app_closed = True
        if kind == "websocket.accept" and self.handshake_complete:
            # uvicorn keeps the handshake's response, headers and all, for the connection's
            # life, and reads it only to send the accept: 0.6 KiB of an idle connection.
            self.response = None
        elif kind == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True
