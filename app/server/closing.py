"""The closes the server makes itself, for what a client did: one WARNING line each, the
application told with a ``websocket.disconnect`` marked as the server's (``SERVER_CLOSED``),
and a send after such a close answered as the ASGI spec asks (an ``OSError``).
"""

from __future__ import annotations

import logging

from django.conf import settings
from uvicorn.protocols.utils import ClientDisconnected

from app.protocol import CloseCode, Message, peer
from app.server.outgoing import data_frame

logger = logging.getLogger("app.server")

#: Added to the ``websocket.disconnect`` of a close the server made itself (a protocol error, a
#: bound, shutdown), so that the metrics count it as the server's (``initiator``); servers that
#: do not say so leave the application to take a close it did not send as the client's.
SERVER_CLOSED = {"initiator": "server"}

#: Messages after which the application has closed the connection itself.
APP_CLOSES = frozenset({"websocket.close", "websocket.http.response.body"})


class ServerCloses:
    """``WebSocketProtocol``'s part that closes connections for what their clients did."""

    #: The application sent ``websocket.close`` (or a denial response): a send after that is
    #: its own mistake, and uvicorn's RuntimeError stays.
    app_closed = False
    #: The close frame that waits until the application has answered what came before the
    #: client's violation (``handle_parser_exception``); None otherwise.
    close_after_answers: bytes | None = None

    def _fail(self, code: CloseCode, reason: str, detail: str = "") -> None:
        """Close an abusive connection now: a close frame with ``reason``, the socket closed, the
        application told, one WARNING line."""
        if self.close_sent or self.transport.is_closing():
            return
        self._closing(code, reason, detail or reason)
        self.frames = []
        self.conn.send_close(code, reason)
        self.batch.flush_one(self.transport)  # the application's messages go before the close
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()
        # close() waits for the buffer to drain: a client that reads nothing is dropped later.
        self.loop.call_later(settings.WEBSOCKET_SEND_TIMEOUT, self.transport.abort)

    def _closing(self, code: CloseCode, reason: str, detail: str) -> None:
        """The server closes this connection: one WARNING line, and the application is told."""
        self._log_closing(code, detail)
        self.close_sent = True
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": code, "reason": reason, **SERVER_CLOSED}
        )

    def _log_closing(self, code: int, detail: str) -> None:
        logger.warning(
            "closing %s for %s %s: %s",
            CloseCode.describe(code),
            peer(self.client),
            getattr(self, "scope", {}).get("path", ""),
            detail,
        )

    def handle_parser_exception(self) -> None:
        """uvicorn's, with one WARNING line saying why, the application's
        ``websocket.disconnect`` marked as the server's close (``SERVER_CLOSED``), and what the
        client sent before its violation answered before the close.

        websockets fails the connection for a protocol error (1002), a frame over
        ``ws_max_size`` (1009) or invalid UTF-8 (1007); uvicorn logs none of them, so a client's
        1009 at the server's limit left no trace. And uvicorn dropped the messages read in the
        same chunk before the bad frame, and wrote the close at once: Autobahn's strict answer
        (3.2-3.4, 4.1.3-4.2.5, 5.15) is their echo, then the close. Here they are delivered, and
        the close waits until the application has taken the disconnect that follows them (so
        it has answered them), ``close_timeout`` at most; nothing read after the bad frame is.
        """
        close = self.conn.close_sent
        detail = close.reason or str(self.conn.parser_exc)
        if not self._answers_pending():
            self._log_closing(close.code, detail)
            super().handle_parser_exception()
            self._mark_server_closed()
            return
        # As any close of ours (close_sent: nothing more is read into the queue), but the
        # close frame waits.
        self._closing(close.code, close.reason, detail)
        self.close_after_answers = b"".join(self.conn.data_to_send())
        self.close_timer = self.loop.call_later(self.close_timeout, self.close_now)

    def _answers_pending(self) -> bool:
        """Whether the application may still answer what it was sent: a message waits for it,
        or it has taken one and not yet come back for the next."""
        waiting = any(not waiter.done() for waiter in self.queue.waiters)
        return bool(self.queue) or not waiting

    def close_now(self) -> None:
        """Write the close that waited for the application's answers, and close the socket."""
        output, self.close_after_answers = self.close_after_answers, None
        if output is None:
            return
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        if not self.transport.is_closing():
            self.transport.write(output)
            self.transport.close()

    def answer_before_close(self, message: Message) -> None:
        """A send while the close waits for the application's answers: a message goes out as
        a frame of its own (websockets, past its close, sends none), a close lets the waiting
        close go now. (``send`` calls this instead of raising ``ClientDisconnected``.)"""
        kind = message["type"]
        if self.transport.is_closing():  # the close went at its deadline, or the client left
            raise ClientDisconnected("the server has closed this connection")
        if kind == "websocket.send":
            if (frame := data_frame(message, self.conn.extensions)) is not None:
                self.transport.write(frame)
        elif kind == "websocket.close":
            self.app_closed = True
            self.close_now()

    def shutdown(self) -> None:
        """uvicorn's (1012 to an open connection), with its disconnect marked as the server's."""
        was_open = self.handshake_complete and not self.close_sent
        self.batch.flush_one(self.transport)  # the application's messages go before the 1012
        super().shutdown()
        if was_open:
            self._mark_server_closed()

    def _mark_server_closed(self) -> None:
        """The ``websocket.disconnect`` uvicorn has just queued came from the server's close."""
        if self.queue and self.queue[-1].get("type") == "websocket.disconnect":
            self.queue[-1].update(SERVER_CLOSED)
