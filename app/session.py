"""One connection's protocol rules, apart from any I/O: event in, the message to send out.

Every consumer drives one ``Session`` per connection, so the sync and the async consumers
cannot drift apart, and the rules can be tested without a server.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings

from app import metrics, protocol
from app.layers import error_text
from app.protocol import CloseCode, ConnectionState, Message, Scope, ServerFeatures, peer

logger = logging.getLogger("app.ws")

_connection_ids = itertools.count(1)


def connection_logger(scope: Scope, consumer: str) -> ConnectionLog:
    """A logger per connection: every line names the connection, its client and its path."""
    client = peer(scope.get("client"))
    return ConnectionLog(
        f"[ws#{next(_connection_ids)} {consumer} {client} {scope.get('path', '')}]"
    )


class ConnectionLog:
    """``app.ws`` with the connection's prefix on every line: the part of ``LoggerAdapter`` a
    connection uses, holding one string (an adapter holds a dict and two attributes more, for
    every open connection)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def log(self, level: int, msg: str, *args: object, **kwargs) -> None:
        if logger.isEnabledFor(level):
            logger.log(level, f"{self.prefix} {msg}", *args, **kwargs)

    def info(self, msg: str, *args: object, **kwargs) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: object, **kwargs) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: object, **kwargs) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)


def choose_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first subprotocol the client offered that we support; never one it did not offer."""
    for name in offered:
        if name in supported:
            return name
    return None


def utf8_length_over(text: str, limit: int) -> int | None:
    """The UTF-8 length of ``text`` if it is over ``limit``, else None, encoding only when needed."""
    if len(text) * 4 <= limit:  # no character takes more than 4 bytes
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    return size if size > limit else None


@dataclass(slots=True)
class TokenBucket:
    """A per-connection rate limit: ``rate`` messages a second, bursts of up to ``burst``."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """Spend one token if there is one; False means over the limit.

        Refilled lazily, only when empty, with the time since the last refill (or since the
        bucket was last full: time spent full earns nothing): the same bound as a bucket
        refilled on every call (at most ``burst`` at once, ``burst + rate * t`` over ``t``),
        without reading the clock for each message. Every frame and message of every
        connection passes here; the clock read and arithmetic were 3.5 % of the server's time.
        """
        if self.tokens >= self.burst:
            self.stamp = time.monotonic() if now is None else now
        elif self.tokens < 1:
            now = time.monotonic() if now is None else now
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1:
                return False
        self.tokens -= 1
        return True

    def spend(self, amount: float) -> bool:
        """Spend ``amount`` tokens at once (bytes, say) if there are that many; False means
        over the limit. Refilled on every call: for events rarer than a message."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


@dataclass(slots=True)
class Session:
    """One connection's state and rules: subprotocol, size limit, closing, logging.

    ``max_message_bytes`` (default ``ECHO_MAX_MESSAGE_BYTES``, 256 KiB) is the largest message
    echoed; a larger one closes the connection with 1009 MESSAGE_TOO_BIG. ``rate_limit``
    (default None: no limit) closes a flooding connection with 1008 POLICY_VIOLATION.
    """

    consumer: str
    scope: Scope
    supported_subprotocols: Sequence[str] = ()
    max_message_bytes: int = 256 * 1024
    rate_limit: TokenBucket | None = None
    state: ConnectionState = ConnectionState.CONNECTING
    features: ServerFeatures = field(init=False)
    log: ConnectionLog = field(init=False)

    def __post_init__(self) -> None:
        self.features = ServerFeatures.from_scope(self.scope)
        self.log = connection_logger(self.scope, self.consumer)

    @classmethod
    def from_settings(
        cls, scope: Scope, consumer: str, *, subprotocols: Sequence[str] = ()
    ) -> Session:
        """The session under the settings' limits; ``subprotocols`` (e.g. ``rooms.v1``) are
        supported before the echo's (``ECHO_SUBPROTOCOLS``)."""
        return cls(
            consumer=consumer,
            scope=scope,
            supported_subprotocols=[*subprotocols, *settings.ECHO_SUBPROTOCOLS],
            max_message_bytes=settings.ECHO_MAX_MESSAGE_BYTES,
            rate_limit=TokenBucket(settings.WEBSOCKET_RATE_LIMIT, settings.WEBSOCKET_RATE_BURST)
            if settings.WEBSOCKET_RATE_LIMIT > 0
            else None,
        )

    def accept(self) -> Message:
        """The ``websocket.accept`` answering ``websocket.connect``."""
        subprotocol = choose_subprotocol(
            self.scope.get("subprotocols") or (), self.supported_subprotocols
        )
        self.state = ConnectionState.OPEN
        self.log.info("accepted subprotocol=%s", subprotocol)
        return protocol.accept(subprotocol, headers=[("x-echo-consumer", self.consumer)])

    def reply(self, event: Message) -> Message | None:
        """What to send for a ``websocket.receive``: its echo, a close, or nothing once closing.

        Broadcast consumers send the echo to their room instead of back to the client.
        """
        if self.state is not ConnectionState.OPEN:
            return None  # the client sent while we were closing: the close already said why
        if self.rate_limit is not None and not self.rate_limit.take():
            return self.close(CloseCode.POLICY_VIOLATION, "rate limit", level=logging.WARNING)
        text, data = event.get("text"), event.get("bytes")
        if isinstance(text, str) and data is None:
            too_big = utf8_length_over(text, self.max_message_bytes)
            return (
                self.close(CloseCode.MESSAGE_TOO_BIG, self._too_big(too_big))
                if too_big
                else protocol.send_text(text)
            )
        if isinstance(data, bytes | bytearray) and text is None:
            if len(data) > self.max_message_bytes:
                return self.close(CloseCode.MESSAGE_TOO_BIG, self._too_big(len(data)))
            return protocol.send_bytes(bytes(data))
        return self.close(
            CloseCode.UNSUPPORTED_DATA,
            "receive event must carry exactly one of text (str) or bytes",
        )

    def close(
        self, code: CloseCode, reason: str, *, level: int = logging.INFO, detail: str = ""
    ) -> Message:
        """A server-initiated close: logged once with its cause, then the connection is closing.

        ``detail`` goes to the log only, never to the client.
        """
        sent = self.features.close_code(code)
        self.state = ConnectionState.CLOSING
        self.log.log(
            level,
            "closing %s: %s%s",
            CloseCode.describe(sent),
            reason,
            f" ({detail})" if detail else "",
        )
        return protocol.close(sent, reason)

    def layer_lost(self, error: Exception | str) -> Message | None:
        """The close for a channel layer that failed (1013: the client should retry later)."""
        if self.state is not ConnectionState.OPEN:
            return None
        return self.close(
            CloseCode.TRY_AGAIN_LATER,
            "channel layer unavailable, try again later",
            level=logging.WARNING,
            detail=error if isinstance(error, str) else error_text(error),
        )

    def fell_behind(self, lost: int) -> Message:
        """The close for a room member that missed ``lost`` messages the history no longer
        holds: it resumes (``rooms.v1``) and is told it did not recover them."""
        metrics.room_messages_lost.inc(lost)
        return self.room_lost(
            f"fell behind past the room's history: {lost} message(s) lost, resume"
        )

    def read_only(self) -> Message:
        """The close (1008) for a member whose token lets it read, not publish."""
        return self.close(CloseCode.POLICY_VIOLATION, "read-only member", level=logging.WARNING)

    def room_lost(self, reason: str) -> Message:
        """The close (1013) for a room member that cannot be given every message in order."""
        return self.close(CloseCode.TRY_AGAIN_LATER, reason, level=logging.WARNING)

    def disconnected(self, event: Message) -> None:
        """Record ``websocket.disconnect``: the code (and reason, on servers that pass one)."""
        self.state = ConnectionState.CLOSED
        reason = event.get("reason") or ""
        self.log.info(
            "disconnected code=%s reason=%r", CloseCode.describe(event.get("code")), reason
        )

    def _too_big(self, size: int) -> str:
        return f"message of {size} bytes exceeds the {self.max_message_bytes}-byte limit"
