"""How this project runs under uvicorn: the one server that carries the whole ASGI WebSocket spec,
with every resource a client can make it hold bounded.

``python manage.py serve`` uses ``uvicorn_config``; tests and benchmarks start the same
command, so what is tested is what runs.

uvicorn's configuration covers some bounds (``ws_max_size``, the h11 parser's
``h11_max_incomplete_event_size``); the others need its protocol classes, subclassed here and
nowhere else. Each override says its cause; ``tests/test_limits.py`` attacks a real
``manage.py serve`` process for each one, so an upgrade of uvicorn that changes what an override
relies on fails a test.

| bound | setting (default) | answer |
|---|---|---|
| request head size | ``HTTP_MAX_HEADER_BYTES`` (16 KiB) | 431, socket closed |
| header lines | ``HTTP_MAX_HEADERS`` (100) | 431, socket closed |
| time to send a request head | ``HTTP_HEADER_TIMEOUT`` (10 s) | 408, socket closed |
| request line, one header line, header count, as websockets parses the handshake | websockets' own (8 KiB, 8 KiB, 128) | 414/431, socket closed |
| open WebSockets per process | ``WEBSOCKET_MAX_CONNECTIONS`` (fd limit - 1,000) | 503 |
| open WebSockets per client address | ``WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT`` (2,000) | 503 |
| frames a second, control frames and fragments included | ``WEBSOCKET_FRAME_RATE`` / ``_BURST`` (50,000 / 10,000) | close 1008 |
| fragments of one message | ``WEBSOCKET_MAX_FRAGMENTS`` (1,024) | close 1009 |
| bytes queued for a client that does not read | ``WEBSOCKET_WRITE_BUFFER_BYTES`` (256 KiB): reading from it pauses; the app's send waits past 4x | |
| time the queue stays over that mark | ``WEBSOCKET_SEND_TIMEOUT`` (10 s) | close 1008, socket dropped |
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
from collections import Counter
from typing import Any

import h11
from django.conf import settings
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app import metrics
from app.logs import Throttled, uvicorn_log_config
from app.protocol import CloseCode, Message, peer
from app.session import TokenBucket

logger = logging.getLogger("app.server")

#: File descriptors kept free of WebSockets for the listening socket, HTTP, Redis and the database.
FD_RESERVE = 1_000

#: Added to the ``websocket.disconnect`` of a close the server made itself (a protocol error, a
#: bound, shutdown), so that the metrics count it as the server's (``initiator``); servers that
#: do not say so leave the application to take a close it did not send as the client's.
SERVER_CLOSED = {"initiator": "server"}

#: Messages after which the application has closed the connection itself.
APP_CLOSES = frozenset({"websocket.close", "websocket.http.response.body"})

#: Past this many times ``WEBSOCKET_WRITE_BUFFER_BYTES`` unsent, the application's send waits.
WRITE_BUFFER_HARD_LIMIT = 4


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit; the connection cap below follows it
    return soft


def connection_cap() -> int:
    """``WEBSOCKET_MAX_CONNECTIONS``, or the fd limit less ``FD_RESERVE``, whichever is lower."""
    by_fds = max(1, raise_fd_limit() - FD_RESERVE)
    configured = settings.WEBSOCKET_MAX_CONNECTIONS
    return min(configured, by_fds) if configured > 0 else by_fds


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


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol, bounded, and with client errors kept out of the
    ERROR log.

    - A handshake that websockets itself refuses (a request line over 8 KiB: 414; a header line
      over 8 KiB or more than 128 headers: 431) was answered in websockets' output buffer, which
      uvicorn never writes, and the socket stayed open: both are done here.
    - Connections past ``WEBSOCKET_MAX_CONNECTIONS`` in the process, or past
      ``WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT`` from one address, are refused with 503.
    - Every frame, pings and continuation frames included, takes a token from a per-connection
      bucket; a message has at most ``WEBSOCKET_MAX_FRAGMENTS`` fragments. uvicorn answers each
      ping without a limit and keeps each fragment as its own ``bytes``.
    - While more than ``WEBSOCKET_WRITE_BUFFER_BYTES`` wait to be written to a client, reading
      from it pauses (so its pings cannot queue pongs without end), and if that lasts
      ``WEBSOCKET_SEND_TIMEOUT`` the client is closed with 1008 and the socket dropped: uvicorn
      otherwise keeps a non-reading client forever. The application's ``send`` waits only past
      four times the mark (uvicorn's waits from the mark on), so the reply to what was read
      before reading paused never holds a sync handler's thread.
    - A refused handshake (a 403 or 404 sent through the ``websocket.http.response``
      extension) also logs "ASGI callable returned without completing handshake" at ERROR
      (uvicorn PR #3138, open at the time of writing): the handshake is marked done.
    - Invalid UTF-8 in a text frame is closed with 1007 as before, but logged as one WARNING
      line instead of an ERROR with a traceback: it is the client's fault, not the server's.
    - Speed and memory: reading pauses when a second message waits for the application, not
      after each message; messages wait in a ``MessageQueue``, not an ``asyncio.Queue``; the
      handshake's response is dropped once the accept is sent.
    """

    #: Open (or opening) WebSockets of this process, in all and by client host.
    open_count = 0
    open_by_host: Counter[str] = Counter()
    cap: int | None = None
    refusals = Throttled(logger)

    counted = False
    stall_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.queue = MessageQueue()  # type: ignore[assignment]  # uvicorn's is an asyncio.Queue
        self.frame_budget = TokenBucket(
            settings.WEBSOCKET_FRAME_RATE, settings.WEBSOCKET_FRAME_BURST
        )
        self.transport.set_write_buffer_limits(high=settings.WEBSOCKET_WRITE_BUFFER_BYTES)
        self.hard_limit = WRITE_BUFFER_HARD_LIMIT * settings.WEBSOCKET_WRITE_BUFFER_BYTES

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
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

    def handle_connect(self, event: Any) -> None:
        host = self.client[0] if self.client else "-"
        cls = type(self)
        if cls.cap is None:
            cls.cap = connection_cap()
        per_client = settings.WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT
        if cls.open_count >= cls.cap:
            why = f"{cls.open_count} WebSockets open, the process limit is {cls.cap}"
            metrics.refused("connection_cap")
        elif per_client > 0 and cls.open_by_host[host] >= per_client:
            why = f"{cls.open_by_host[host]} WebSockets open from {host}, the limit is {per_client}"
            metrics.refused("client_cap")
        else:
            self.counted = True
            cls.open_count += 1
            cls.open_by_host[host] += 1
            return super().handle_connect(event)
        cls.refusals.warning("refused %s: 503 %s", peer(self.client), why)
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        response = self.conn.reject(503, f"Service Unavailable: {why}\n")
        self.conn.send_response(response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            cls = type(self)
            cls.open_count -= 1
            host = self.client[0] if self.client else "-"
            cls.open_by_host[host] -= 1
            if cls.open_by_host[host] <= 0:
                del cls.open_by_host[host]
            self.counted = False
        self._cancel_stall()
        super().connection_lost(exc)

    # Frames: every one is counted.

    def _frame_allowed(self) -> bool:
        if self.frame_budget.take():
            return True
        self._fail(CloseCode.POLICY_VIOLATION, "rate limit", "frame rate limit")
        return False

    def handle_ping(self) -> None:
        if self._frame_allowed():
            super().handle_ping()

    def handle_pong(self, event: Any) -> None:
        if self._frame_allowed():
            super().handle_pong(event)

    def handle_text(self, event: Any) -> None:
        if self._frame_allowed():
            super().handle_text(event)

    def handle_bytes(self, event: Any) -> None:
        if self._frame_allowed():
            super().handle_bytes(event)

    def handle_cont(self, event: Any) -> None:
        if not self._frame_allowed():
            return
        if len(self.frames) >= settings.WEBSOCKET_MAX_FRAGMENTS:
            limit = settings.WEBSOCKET_MAX_FRAGMENTS
            self._fail(CloseCode.MESSAGE_TOO_BIG, f"message in more than {limit} fragments")
            return
        super().handle_cont(event)

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

    # Flow control: a client that does not read is not read from, then dropped. The
    # application's send waits only past WRITE_BUFFER_HARD_LIMIT times the mark: with reading
    # paused at the mark, an echo's reply fits below it, so a sync handler answering a client
    # that does not read does not hold its lane (uvicorn's send waits from the mark on).

    write_paused = False

    def pause_writing(self) -> None:
        self.write_paused = True  # not uvicorn's: its send would wait from here on
        self.transport.pause_reading()
        if self.stall_timer is None:
            self.stall_timer = self.loop.call_later(settings.WEBSOCKET_SEND_TIMEOUT, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_paused = False
        self._cancel_stall()
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def _cancel_stall(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    def _stalled(self) -> None:
        self.stall_timer = None
        if self.transport.is_closing():
            return
        unsent = settings.WEBSOCKET_WRITE_BUFFER_BYTES
        detail = f"client not reading (over {unsent} bytes unsent for {settings.WEBSOCKET_SEND_TIMEOUT} s)"
        self._closing(CloseCode.POLICY_VIOLATION, "client not reading", detail)
        self.transport.abort()  # a close frame would wait behind what it never read

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

    async def receive(self) -> Message:  # type: ignore[override]
        """uvicorn's ``receive``, except that reading stays paused while writing is.

        ``MessageQueue.get``'s wait, written out: a message of a ping-pong nearly always finds
        the queue empty, and calling ``get`` would add a coroutine to each one (in process,
        per message: ``asyncio.Queue`` 6.4 us, ``MessageQueue.get`` 6.0, this 5.0).
        """
        queue = self.queue
        while not queue:
            await queue.arrival(self.loop)
        message = queue.popleft()
        if self.read_paused and not queue:
            self.read_paused = False
            if not self.write_paused:
                self.transport.resume_reading()
        return message

    # Client errors kept out of the ERROR log.

    #: The application sent ``websocket.close`` (or a denial response): a send after that is
    #: its own mistake, and uvicorn's RuntimeError stays.
    app_closed = False

    async def send(self, message: Message) -> None:  # type: ignore[override]
        if self.close_sent and not self.app_closed:
            # The server closed this connection itself (a protocol error, a bound, a client that
            # does not read): to the application the client is gone, an OSError as the ASGI spec
            # asks. uvicorn raises RuntimeError("Unexpected ASGI message ... after sending
            # 'websocket.close'"), which reads as an application bug and logs a traceback; a room
            # member's queued message met it 5 times in 5 (issue 23).
            raise ClientDisconnected("the server has closed this connection")
        if message["type"] in APP_CLOSES:
            self.app_closed = True
        if self.write_paused and self.transport.get_write_buffer_size() > self.hard_limit:
            self.writable.clear()  # uvicorn's send waits until resume_writing
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # uvicorn keeps the handshake's response, headers and all, for the connection's
            # life, and reads it only to send the accept: 0.6 KiB of an idle connection.
            self.response = None
        elif message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True

    def send_receive_event_to_app(self) -> None:
        """uvicorn's own method, but for two things.

        - Invalid UTF-8 in a text message is logged as one WARNING line (uvicorn: an ERROR with
          a traceback).
        - Reading pauses once a second message waits for the application, not at the first:
          uvicorn pauses after every message and resumes when the application takes it, two
          calls into the event loop's poller per message of a ping-pong (0.96 of plain
          uvicorn's throughput for Starlette's echo, measured; docs/performance.md). The bound
          moves by one message: what one read from the socket held, plus one.
        """
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return None  # past websocket.close: discarded, as uvicorn does
        if self.curr_msg_data_type == "text":
            try:
                message = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError as error:
                self.conn.send_close(CloseCode.INVALID_PAYLOAD, "invalid UTF-8")
                self._log_closing(
                    CloseCode.INVALID_PAYLOAD, f"text message is not UTF-8 ({error.reason})"
                )
                super().handle_parser_exception()  # logged here, with the decoder's reason
                self._mark_server_closed()
                return None
        else:
            message = {"type": "websocket.receive", "bytes": data}
        self.queue.put_nowait(message)
        if not self.read_paused and len(self.queue) > 1:
            self.read_paused = True
            self.transport.pause_reading()
        return None


def uvicorn_config(
    *, host: str = "127.0.0.1", port: int = 8000, reload: bool = False, workers: int | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``, every choice deliberate.

    - ``http``: h11 with ``HttpProtocol``'s bounds (see the module's table).
    - ``ws_max_size`` is the server's frame limit, set above the application's
      ``ECHO_MAX_MESSAGE_BYTES`` so that the application, which can say why, refuses first.
    - ``timeout_graceful_shutdown``: on SIGTERM uvicorn sends every WebSocket 1012 SERVICE_RESTART
      and waits at most this long for the consumers to finish.
    - ``log_config``: uvicorn's, with formatters that escape client text (``app/logs.py``).
    """
    return {
        "app": "project.asgi:application",
        "host": host,
        "port": port,
        "reload": reload,
        "reload_dirs": [str(settings.BASE_DIR / "app"), str(settings.BASE_DIR / "project")]
        if reload
        else None,
        "workers": workers,
        "http": HttpProtocol,
        "h11_max_incomplete_event_size": settings.HTTP_MAX_HEADER_BYTES,
        "ws": WebSocketProtocol,
        "ws_max_size": settings.SERVER_MAX_MESSAGE_BYTES,
        "ws_ping_interval": settings.WEBSOCKET_PING_INTERVAL,
        "ws_per_message_deflate": False,  # echo payloads are the client's; compressing them only costs CPU
        "lifespan": "off",  # Channels' ProtocolTypeRouter has no lifespan handler
        "timeout_graceful_shutdown": 5,
        "proxy_headers": settings.BEHIND_PROXY,
        "forwarded_allow_ips": settings.FORWARDED_ALLOW_IPS,
        "log_level": settings.LOG_LEVEL.lower(),
        "log_config": uvicorn_log_config(),
    }
