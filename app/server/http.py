"""The HTTP side: request heads bounded in size, lines and time, before h11 sees them."""

from __future__ import annotations

import asyncio
import logging

import h11
from django.conf import settings
from uvicorn.protocols.http.h11_impl import H11Protocol

from app import metrics
from app.protocol import peer

logger = logging.getLogger("app.server")


def http_refusal(status: int, phrase: str, why: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response, for refusals before any request."""
    body = f"{status} {phrase}: {why}\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HttpProtocol(H11Protocol):
    """uvicorn's h11 protocol with the request head bounded in size, lines and time.

    h11 is the parser that can be bounded (httptools has no header size limit: an endless header
    block grew the server by ~600 MiB/s). It only parses handshakes and page requests, so it
    costs WebSocket throughput nothing (docs/hardening.md has the measurement). uvicorn answers
    h11's own size error with a 400 that does not say why, and has no deadline for a request
    head at all (slowloris), so both are counted here, before h11 sees the bytes.
    """

    head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def _start_head(self) -> None:
        """A request head is awaited: count its bytes and lines, and give it a deadline."""
        self.head_bytes = 0
        self.head_lines = 0
        self._cancel_deadline()
        self.head_deadline = self.loop.call_later(settings.HTTP_HEADER_TIMEOUT, self._head_timeout)

    def _cancel_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def data_received(self, data: bytes) -> None:
        if self.head_deadline is not None:  # still reading a request head
            self.head_bytes += len(data)
            self.head_lines += data.count(b"\n")
            if self.head_bytes > settings.HTTP_MAX_HEADER_BYTES:
                why = f"request head over {settings.HTTP_MAX_HEADER_BYTES} bytes"
                return self._refuse(431, "Request Header Fields Too Large", why, "header_too_large")
            if self.head_lines > settings.HTTP_MAX_HEADERS + 2:  # request line, headers, blank
                why = f"more than {settings.HTTP_MAX_HEADERS} header lines"
                return self._refuse(431, "Request Header Fields Too Large", why, "header_too_large")
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_deadline()  # the head is complete (or the connection failed)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._cancel_deadline()  # the WebSocket protocol takes the transport from here
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_head()  # a keep-alive connection: the next head has a deadline too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _head_timeout(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.head_bytes == 0 and self.conn.our_state is h11.IDLE and self.cycle is not None:
            # An idle keep-alive connection after a response: uvicorn's keep-alive timeout has it.
            return
        why = f"no complete request head within {settings.HTTP_HEADER_TIMEOUT} s"
        self._refuse(408, "Request Timeout", why, "header_timeout")

    def _refuse(self, status: int, phrase: str, why: str, reason: str) -> None:
        self._cancel_deadline()
        metrics.refused(reason)
        logger.warning("refused %s: %d %s", peer(self.client), status, why)
        self.transport.write(http_refusal(status, phrase, why))
        self.transport.close()
