"""Log lines a client cannot forge, and warnings a flood cannot multiply.

Client-controlled text reaches log lines in many places: the path (percent-decoded, so ``%0A``
is a newline), the Origin, subprotocols, close reasons, room names. Rather than escaping at each
call site, every formatter the project configures (Django's ``LOGGING`` and uvicorn's own
``log_config``) escapes control characters in the formatted message: no client text can start a
log line of its own or carry terminal escapes. Tracebacks are added after the message and keep
their newlines. The same formatters redact trace tokens and any ``token=`` query value.
"""

from __future__ import annotations

import logging
import re
import time

import uvicorn.logging

#: C0 and C1 controls, DEL, and the Unicode line and paragraph separators, as ``\xNN``/``\uNNNN``.
_CONTROLS = {
    code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in (*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape: one line, no terminal codes."""
    return text.translate(_CONTROLS)


#: Secrets that ride in a URL: a ``trace=`` or any ``...token=`` query value (a room token,
#: app/room_access.py), also percent-encoded inside another parameter (``/handshake-check?path=
#: ...%3Ftoken%3D...``), and the token in a trace socket's path (``/ws/trace/<token>/``). Whoever
#: reads the log must not be able to attach to a page's trace, or join a room, with them.
_SECRETS = re.compile(
    r"(?P<name>(?:(?<![A-Za-z0-9])|(?<=%3F)|(?<=%26))(?:trace|[A-Za-z0-9_.-]*token)(?:=|%3D))"
    r"[^&\s\"'#]+"
    r"|(?P<path>(?:/|%2F)ws(?:/|%2F)trace(?:/|%2F))[^/?%&\s\"']+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the values ``_SECRETS`` names written ``(redacted)``."""
    if "=" not in text and "trace" not in text and "%3" not in text:
        return text  # nearly every line: no regex
    return _SECRETS.sub(lambda m: (m["name"] or m["path"]) + "(redacted)", text)


class EscapingFormatterMixin:
    """Escapes control characters in the message part of each line (not in the traceback), and
    redacts tokens (``redact``) from the whole line, uvicorn's access line included."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return redact(super().formatMessage(record))  # type: ignore[misc]


class EscapingFormatter(EscapingFormatterMixin, logging.Formatter):
    """The project's formatter (``LOGGING`` in settings)."""


class EscapingDefaultFormatter(EscapingFormatterMixin, uvicorn.logging.DefaultFormatter):
    """uvicorn's ``default`` formatter, escaping."""


class EscapingAccessFormatter(EscapingFormatterMixin, uvicorn.logging.AccessFormatter):
    """uvicorn's ``access`` formatter, escaping."""


def uvicorn_log_config() -> dict:
    """uvicorn's own ``LOGGING_CONFIG`` with its two formatters made escaping."""
    from uvicorn.config import LOGGING_CONFIG

    config = {**LOGGING_CONFIG, "formatters": {**LOGGING_CONFIG["formatters"]}}
    config["formatters"]["default"] = {
        **config["formatters"]["default"],
        "()": f"{__name__}.EscapingDefaultFormatter",
    }
    config["formatters"]["access"] = {
        **config["formatters"]["access"],
        "()": f"{__name__}.EscapingAccessFormatter",
    }
    return config


class Throttled:
    """One WARNING for the first of a burst of like events, then at most one per ``interval``.

    For refusals that a flood repeats thousands of times a second (connections past a cap):
    the log says what happens and how often, without growing with the attack.
    """

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self.last = -interval
        self.suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        more = (
            f" ({self.suppressed} more like it in the last {self.interval:g} s)"
            if self.suppressed
            else ""
        )
        self.logger.warning(message + more, *args)
        self.last, self.suppressed = now, 0


class ClientFault(logging.Filter):
    """Logs a record at WARNING that Django logs at ERROR for what a client sent.

    Django reports a ``Host`` header outside ``ALLOWED_HOSTS`` on
    ``django.security.DisallowedHost`` at ERROR, with the 400 it answers: the client's doing,
    which the project logs at INFO or WARNING, keeping ERROR for its own faults (README,
    Logging). Django adds the exception's traceback, 20 lines about our own code for what is
    one line about the client's request: dropped, the message says it all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True
