"""The query parameters of ``/ws/test/`` (behaviours on demand), parsed and checked, apart from
any I/O: a query string in, a frozen ``Behaviours`` out, or ``InvalidBehaviour`` naming the
parameter and its range. The consumer (``app/test_server.py``) refuses the handshake with it.

The ranges are the protocol (docs/testing-your-client.md has the table; the page's "Server
behaviour" panel builds URLs from it): each is a constant here, and no value outside one is
served.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from urllib.parse import parse_qsl

from app.protocol import MAX_CLOSE_REASON_BYTES, ServerFeatures

FRAGMENT_BYTES = (1, 65_536)
DELAY_MS = (0, 10_000)
PING_S = (0.1, 60.0)
PONG_TIMEOUT_S = (0.1, 60.0)
#: Every code a server may send on the wire (RFC 6455 7.4.1, IANA: 1004-1006 and 1015 never are).
CLOSE_CODES = ((1000, 1003), (1007, 1014), (3000, 4999))
CLOSE_AFTER_ECHOES = (0, 100_000)
CLOSE_IN_MS = (0, 600_000)
DROP_AFTER_ECHOES = (0, 100_000)
PUSH_MESSAGES = (0, 100_000)
PUSH_BYTES = (0, 1024 * 1024)
PUSH_RATE = (0.1, 10_000.0)
#: A connection's pushes in all: ``push`` x ``push_size``.
PUSH_TOTAL_BYTES = 64 * 1024 * 1024
#: Pushes a second when ``push_rate`` is not given.
DEFAULT_PUSH_RATE = 100.0
#: A bytes push is at least its header: 8 bytes of number, 8 of time.
PUSH_HEADER_BYTES = 16
PUSH_TYPES = ("text", "bytes")
COMPRESS = ("auto", "never", "always", "alternate")
#: Parameters the server must carry out itself: the ``x-behaviours`` extension (app/server/).
NEEDS_EXTENSION = ("fragment", "ping", "pong_timeout", "drop_after", "compress")
#: Parameters of the page's, not behaviours: accepted and left to their owners (tracing).
PASSED_THROUGH = ("trace",)

_INTEGER = re.compile(r"[0-9]{1,7}")
_DECIMAL = re.compile(r"[0-9]{1,5}(\.[0-9]{1,3})?|\.[0-9]{1,3}")


class InvalidBehaviour(ValueError):
    """A parameter that is unknown, repeated, or out of its range; the message says which."""


def _integer(name: str, low: int, high: int, unit: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not _INTEGER.fullmatch(value) or not low <= int(value) <= high:
            raise InvalidBehaviour(
                f"{name} must be a whole number {low:,}-{high:,}{unit}, got {value!r}"
            )
        return int(value)

    return parse


def _decimal(name: str, low: float, high: float, unit: str) -> Callable[[str], float]:
    def parse(value: str) -> float:
        if not _DECIMAL.fullmatch(value) or not low <= float(value) <= high:
            raise InvalidBehaviour(
                f"{name} must be a number {low:g}-{high:,g}{unit}, got {value!r}"
            )
        return float(value)

    return parse


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise InvalidBehaviour(f"{name} must be one of {'|'.join(choices)}, got {value!r}")
        return value

    return parse


def _close_code(value: str) -> int:
    if _INTEGER.fullmatch(value) and any(low <= int(value) <= high for low, high in CLOSE_CODES):
        return int(value)
    ranges = ", ".join(f"{low}-{high}" for low, high in CLOSE_CODES)
    raise InvalidBehaviour(
        f"close must be a close code a server may send ({ranges}), got {value!r}"
    )


def _reason(value: str) -> str:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_CLOSE_REASON_BYTES:
        raise InvalidBehaviour(
            f"reason must be at most {MAX_CLOSE_REASON_BYTES} bytes of UTF-8, got {size}"
        )
    return value


def _headers(value: str) -> bool:
    if value not in ("0", "1"):
        raise InvalidBehaviour(f"headers must be 0 or 1, got {value!r}")
    return value == "1"


#: Each parameter's parser, in the order of the documentation's table.
PARSERS: dict[str, Callable[[str], object]] = {
    "fragment": _integer("fragment", *FRAGMENT_BYTES, " bytes"),
    "delay": _integer("delay", *DELAY_MS, " ms"),
    "ping": _decimal("ping", *PING_S, " s"),
    "pong_timeout": _decimal("pong_timeout", *PONG_TIMEOUT_S, " s"),
    "close": _close_code,
    "reason": _reason,
    "close_after": _integer("close_after", *CLOSE_AFTER_ECHOES, " echoes"),
    "close_in": _integer("close_in", *CLOSE_IN_MS, " ms"),
    "drop_after": _integer("drop_after", *DROP_AFTER_ECHOES, " echoes"),
    "push": _integer("push", *PUSH_MESSAGES, " messages"),
    "push_size": _integer("push_size", *PUSH_BYTES, " bytes"),
    "push_rate": _decimal("push_rate", *PUSH_RATE, " messages/s"),
    "push_type": _choice("push_type", PUSH_TYPES),
    "compress": _choice("compress", COMPRESS),
    "headers": _headers,
}


@dataclass(frozen=True, slots=True)
class Behaviours:
    """What one ``/ws/test/`` connection was asked to do; the defaults are a plain echo."""

    fragment: int | None = None
    delay: int = 0
    ping: float | None = None
    pong_timeout: float | None = None
    close: int | None = None
    reason: str = ""
    close_after: int | None = None
    close_in: int | None = None
    drop_after: int | None = None
    push: int = 0
    push_size: int = 0
    push_rate: float = DEFAULT_PUSH_RATE
    push_type: str = "text"
    compress: str = "auto"
    headers: bool = False

    @classmethod
    def from_query(cls, query: bytes | str) -> Behaviours:
        """Parse a query string; ``InvalidBehaviour`` for anything unknown, repeated or out of
        range, and for parameters that need one they lack."""
        if isinstance(query, bytes):
            query = query.decode("latin-1")
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise InvalidBehaviour("the query string is not UTF-8") from None
        values: dict[str, object] = {}
        for name, value in pairs:
            if name in PASSED_THROUGH:
                continue
            if name not in PARSERS:
                known = ", ".join(PARSERS)
                raise InvalidBehaviour(f"unknown parameter {name!r} (the parameters: {known})")
            if name in values:
                raise InvalidBehaviour(f"{name} is given more than once")
            values[name] = PARSERS[name](value)
        behaviours = cls(**values)  # type: ignore[arg-type]
        behaviours._check_together(set(values))
        return behaviours

    def _check_together(self, given: set[str]) -> None:
        for name, needs in (
            ("pong_timeout", "ping"),
            ("reason", "close"),
            ("close_after", "close"),
            ("close_in", "close"),
            ("push_size", "push"),
            ("push_rate", "push"),
            ("push_type", "push"),
        ):
            if name in given and needs not in given:
                raise InvalidBehaviour(f"{name} needs {needs}")
        if self.push_type == "bytes" and self.push and self.push_size < PUSH_HEADER_BYTES:
            raise InvalidBehaviour(
                f"push_size must be at least {PUSH_HEADER_BYTES} for push_type=bytes (its header)"
            )
        if self.push_total > PUSH_TOTAL_BYTES:
            raise InvalidBehaviour(
                f"push x push_size must be at most {PUSH_TOTAL_BYTES:,} bytes (64 MiB), got"
                f" {self.push_total:,}"
            )

    @property
    def push_total(self) -> int:
        """Bytes of payload this connection's pushes send in all."""
        return self.push * self.push_size

    @property
    def push_bytes_per_second(self) -> float:
        """What the pushes send a second at most (a text push under its header counts 32 bytes,
        about the header's size)."""
        return max(self.push_size, 32) * self.push_rate if self.push else 0.0

    def needs_extension(self) -> list[str]:
        """The parameters given that only a server with ``x-behaviours`` can carry out."""
        return [
            name
            for name in NEEDS_EXTENSION
            if getattr(self, name) != _DEFAULTS[name]
            and not (name == "compress" and self.compress == "auto")
        ]

    def refusal(self, features: ServerFeatures, *, extension: dict | None) -> str | None:
        """Why this server cannot do what was asked (None: it can). ``extension``: the scope's
        ``x-behaviours`` entry, None where the server has none."""
        if extension is None and (missing := self.needs_extension()):
            return (
                f"{', '.join(missing)} need(s) a server with the x-behaviours ASGI extension"
                " (the project's uvicorn, manage.py serve); this one has none"
            )
        if extension is not None and self.compress != "auto" and not extension.get("deflate"):
            return f"compress={self.compress} needs permessage-deflate negotiated; it was not"
        if self.close is not None and features.close_code(self.close) != self.close:
            return f"close={self.close}: this server cannot send codes 1001-2999"
        if self.reason and not features.close_reason:
            return "reason: this server cannot send a close reason"
        return None


_DEFAULTS = {field.name: field.default for field in fields(Behaviours)}
