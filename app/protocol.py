"""The WebSocket vocabulary of the ASGI spec: types, close codes, messages, server features.

Nothing here does I/O. Consumers build the messages they send with these helpers so
that every field name and default of the spec is written down once.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Codes 4000-4999 are private use: the application's own (RFC 6455 section 7.4.2).
APPLICATION_CODES = range(4000, 5000)

#: RFC 6455 caps a close reason at 123 bytes of UTF-8 (125 minus the 2-byte code).
MAX_CLOSE_REASON_BYTES = 123


class CloseCode(enum.IntEnum):
    """Close codes this project sends or names (RFC 6455 section 7.4.1, IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013

    @classmethod
    def describe(cls, code: int | None) -> str:
        """Human name of a code, for log lines: ``1009 MESSAGE_TOO_BIG``."""
        if code is None:
            return "no code"
        try:
            return f"{code} {cls(code).name}"
        except ValueError:
            if 3000 <= code <= 4999:
                return f"{code} application-defined"
            return f"{code} unknown"


class ConnectionState(enum.Enum):
    """Where a connection is in its life, as the consumer sees it."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"  # we sent websocket.close and wait for websocket.disconnect
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ServerFeatures:
    """What the ASGI server in front of us honours, read from the connection's scope.

    ``spec_version`` is the server's own declaration: accept headers arrived in ASGI
    WebSocket 2.1 and the close reason in 2.3. daphne declares none (2.0), and its
    WebSocket library, autobahn, refuses close codes other than 1000 and 3000-4999.
    """

    spec_version: tuple[int, ...]
    denial_response: bool

    @classmethod
    def from_scope(cls, scope: Scope) -> ServerFeatures:
        declared = scope.get("asgi", {}).get("spec_version") or scope.get("spec_version") or "2.0"
        extensions = scope.get("extensions") or {}
        return cls._shared(str(declared), "websocket.http.response" in extensions)

    @classmethod
    @functools.lru_cache(maxsize=32)
    def _shared(cls, declared: str, denial_response: bool) -> ServerFeatures:
        """One instance per server kind, not one per connection (0.2 KiB of an idle one)."""
        try:
            version = tuple(int(part) for part in declared.split("."))
        except ValueError:
            version = (2, 0)
        return cls(spec_version=version, denial_response=denial_response)

    @property
    def accept_headers(self) -> bool:
        return self.spec_version >= (2, 1)

    @property
    def close_reason(self) -> bool:
        return self.spec_version >= (2, 3)

    @property
    def protocol_close_codes(self) -> bool:
        """Whether codes 1001-2999 reach the client (daphne, a 2.0 server, turns them into 1011)."""
        return self.spec_version >= (2, 1)

    def close_code(self, code: int) -> int:
        """The code to send for ``code``: itself, or its mirror 4000 + (code - 1000) on daphne.

        The mirror keeps the meaning readable (1009 -> 4009) where the server would otherwise
        replace our code with 1011 and log a traceback.
        """
        if self.protocol_close_codes or code == CloseCode.NORMAL_CLOSURE or code >= 3000:
            return code
        return APPLICATION_CODES.start + (code - 1000)


def accept(subprotocol: str | None = None, headers: Iterable[tuple[str, str]] = ()) -> Message:
    """``websocket.accept``: subprotocol None means none; headers are (name, value) pairs."""
    return {
        "type": "websocket.accept",
        "subprotocol": subprotocol,
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ],
    }


def send_text(text: str) -> Message:
    """``websocket.send`` of a text frame (only the ``text`` key, as the spec allows)."""
    return {"type": "websocket.send", "text": text}


def send_bytes(data: bytes) -> Message:
    """``websocket.send`` of a binary frame."""
    return {"type": "websocket.send", "bytes": data}


def close(code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> Message:
    """``websocket.close``; the reason is cut to the 123 bytes a close frame can carry."""
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CLOSE_REASON_BYTES:
        reason = encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")
    return {"type": "websocket.close", "code": int(code), "reason": reason}


def peer(client: tuple[str, int] | list | None, default: str | None = "-") -> str | None:
    """An ASGI ``client`` (host, port) as ``host:port``, for log lines and trace records."""
    return f"{client[0]}:{client[1]}" if client else default


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header in the scope (names are lower-case in ASGI)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None
