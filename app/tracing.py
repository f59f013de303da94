"""Opt-in tracing: what a consumer received and sent, field by field, for the page's inspector.

A page asks ``POST /trace/token`` for a token: random, stored in its own Django session, valid
for ``TRACE_TOKEN_TTL`` seconds. It opens ``/ws/trace/<token>/`` (``TraceConsumer``), then
connects a WebSocket with ``?trace=<token>``. That connection's consumer sends a record of every
ASGI event to the token's channel-layer group, and the trace consumer forwards them.

The token travels in the query string rather than as a subprotocol so that the subprotocol the
page offers is still the one negotiated: tracing must not change what it shows. Both ends
check the token against the session of their own handshake, so a token copied into another
browser attaches nothing. A connection without ``?trace=`` is never wrapped: its receive and
send are the server's own, with no check per message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from app.protocol import Message, Receive, Scope, Send, peer

logger = logging.getLogger("app.tracing")

SESSION_KEY = "trace_tokens"  # {token: expiry as a UNIX time}
PREVIEW_CHARS = 200
PREVIEW_BYTES = 32
REDACTED_HEADERS = {b"cookie", b"authorization", b"proxy-authorization"}


def issue_token(session) -> tuple[str, int]:
    """A new token bound to ``session``; returns it and its lifetime.

    Expired tokens are dropped, and the session keeps at most ``TRACE_TOKENS_PER_SESSION``
    (the oldest go first): what a client can make us keep for it is bounded.
    """
    now = time.time()
    tokens = {t: exp for t, exp in session.get(SESSION_KEY, {}).items() if exp > now}
    token = secrets.token_urlsafe(24)
    tokens[token] = now + settings.TRACE_TOKEN_TTL
    tokens = dict(
        sorted(tokens.items(), key=lambda item: item[1])[-settings.TRACE_TOKENS_PER_SESSION :]
    )
    session[SESSION_KEY] = tokens
    return token, settings.TRACE_TOKEN_TTL


def token_valid(session, token: str) -> bool:
    """Whether ``token`` was issued to this very session and has not expired."""
    if session is None or not token:
        return False
    expiry = session.get(SESSION_KEY, {}).get(token)
    return expiry is not None and expiry > time.time()


def trace_group(token: str) -> str:
    """The group for a token's records; a hash, so the token itself never reaches the layer."""
    return "trace." + hashlib.sha256(token.encode()).hexdigest()[:40]


class Listeners:
    """The trace sockets open for each token's group in this process, at most
    ``TRACE_LISTENERS_PER_TOKEN`` each: every traced event is sent to each of them, so a token
    with many would multiply the work of every event it traces.

    Per process, not global: the work bounded is each process's own (its sends to its sockets),
    and a global count would live in Redis, where a process that dies leaves its counts behind.
    Under ``--workers N`` a token may so have N times the bound open at most.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def full(self, group: str) -> bool:
        return self.counts.get(group, 0) >= settings.TRACE_LISTENERS_PER_TOKEN

    def join(self, group: str) -> bool:
        """Count one more listener of ``group``; False (nothing counted) when it has its bound."""
        if self.full(group):
            return False
        self.counts[group] = self.counts.get(group, 0) + 1
        return True

    def leave(self, group: str) -> None:
        remaining = self.counts.get(group, 0) - 1
        if remaining > 0:
            self.counts[group] = remaining
        else:
            self.counts.pop(group, None)


listeners = Listeners()


def asks_for_trace(scope: Scope) -> bool:
    """Whether a handshake carries a ``trace`` query parameter: a substring test, so that the
    connections that do not (nearly all) pay nothing; ``query_token`` parses it."""
    return b"trace=" in scope.get("query_string", b"")


def query_token(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("trace")
    return values[0] if values else None


def preview(value: Any) -> Any:
    """A field as the page shows it: long text cut with its length, bytes as length and hex."""
    if isinstance(value, bytes | bytearray):
        shown = bytes(value[:PREVIEW_BYTES]).hex(" ")
        return {"bytes": len(value), "hex": shown + (" ..." if len(value) > PREVIEW_BYTES else "")}
    if isinstance(value, str) and len(value) > PREVIEW_CHARS:
        return {"text": value[:PREVIEW_CHARS] + "...", "length": len(value)}
    if isinstance(value, list | tuple):
        return [preview(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): preview(item) for key, item in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def headers_summary(headers) -> list[list[str]]:
    return [
        [
            name.decode("latin-1"),
            "(redacted)" if name in REDACTED_HEADERS else value.decode("latin-1"),
        ]
        for name, value in headers
    ]


#: The values of ``trace=`` and ``token=`` in a query string, as they were sent.
QUERY_TOKENS = re.compile(r"((?:^|&)(?:trace|token)=)[^&]+")


def scope_summary(scope: Scope) -> dict:
    """What the consumer knows at connect, with cookies and credentials redacted."""
    # A trace token, and a room token (?token=, app/room_access.py), are not repeated into
    # records, logs or screenshots.
    query = QUERY_TOKENS.sub(r"\g<1>(token)", scope.get("query_string", b"").decode("latin-1"))
    return {
        "path": scope.get("path"),
        "query_string": query,
        "subprotocols": list(scope.get("subprotocols") or []),
        "client": peer(scope.get("client"), default=None),
        "headers": headers_summary(scope.get("headers", [])),
    }


class Tracer:
    """Sends a record of each event of one connection to its token's group."""

    def __init__(self, scope: Scope, consumer: str, token: str):
        self.consumer = consumer
        self.group = trace_group(token)
        self.layer = get_channel_layer()
        self.scope = scope

    @classmethod
    async def for_scope(cls, scope: Scope, consumer: str) -> Tracer | None:
        """A tracer when the handshake asks for one with a token of its own session, else None."""
        token = query_token(scope)
        if token is None:
            return None
        if not await database_sync_to_async(token_valid)(scope.get("session"), token):
            logger.warning(
                "trace token refused for %s: not issued to this session, or expired",
                scope.get("path"),
            )
            return None
        return cls(scope, consumer, token)

    def record(self, direction: str, message: Message) -> dict:
        event_type = message.get("type", "")
        record = {
            "t": time.monotonic(),
            "direction": direction,  # "received" by the consumer, or "sent" by it
            "consumer": self.consumer,
            "type": event_type,
            "fields": {
                key: headers_summary(value) if key == "headers" else preview(value)
                for key, value in message.items()
                if key != "type"
            },
        }
        if direction == "received":
            record["handler"] = event_type.replace(".", "_")
        if event_type == "websocket.connect":
            record["scope"] = scope_summary(self.scope)
        return record

    async def emit(self, direction: str, message: Message) -> None:
        try:
            # Serialised here, once, whatever the number of listeners: each trace socket sends
            # the text as it is (``TraceConsumer.trace_record``), and a layer copies a string
            # for each member instead of deep-copying a dict.
            text = json.dumps(self.record(direction, message))
            await self.layer.group_send(self.group, {"type": "trace.record", "text": text})
        except Exception as error:  # tracing must never break the connection it watches
            logger.warning("trace record lost: %s: %s", type(error).__name__, error)

    def source(self, receive: Receive) -> Receive:
        """``receive`` (from the client or the channel layer), recording each event it returns."""

        async def traced_receive() -> Message:
            message = await receive()
            await self.emit("received", message)
            return message

        return traced_receive

    def sink(self, send: Send) -> Send:
        """``send``, recording each event before it goes to the server."""

        async def traced_send(message: Message) -> None:
            await self.emit("sent", message)
            await send(message)

        return traced_send
