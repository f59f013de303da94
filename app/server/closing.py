"""The closes the server makes itself, for what a client did: one WARNING line each, the
application told with a ``websocket.disconnect`` marked as the server's (``SERVER_CLOSED``),
and a send after such a close answered as the ASGI spec asks (an ``OSError``).
"""

from __future__ import annotations

import logging

from django.conf import settings

from app.protocol import CloseCode, peer

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

    def _fail(self, code: CloseCode, reason: str, detail: str = "") -> None:
        """Close an abusive connection now: a close frame with ``reason``, the socket closed, the
        application told, one WARNING line."""
        if self.close_sent or self.transport.is_closing():
            return
        self._closing(code, reason, detail or reason)
        self.frames = []
        self.conn.send_close(code, reason)
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
        """uvicorn's, with one WARNING line saying why, and the application's
        ``websocket.disconnect`` marked as the server's close (``SERVER_CLOSED``).

        websockets fails the connection for a protocol error (1002), a frame over
        ``ws_max_size`` (1009) or invalid UTF-8 in a close reason (1007); uvicorn logs none of
        them, so a client's 1009 at the server's limit left no trace.
        """
        close = self.conn.close_sent
        self._log_closing(close.code, close.reason or str(self.conn.parser_exc))
        super().handle_parser_exception()
        self._mark_server_closed()

    def shutdown(self) -> None:
        """uvicorn's (1012 to an open connection), with its disconnect marked as the server's."""
        was_open = self.handshake_complete and not self.close_sent
        super().shutdown()
        if was_open:
            self._mark_server_closed()

    def _mark_server_closed(self) -> None:
        """The ``websocket.disconnect`` uvicorn has just queued came from the server's close."""
        if self.queue and self.queue[-1].get("type") == "websocket.disconnect":
            self.queue[-1].update(SERVER_CLOSED)
