"""Refusals before ``websocket.accept``: a foreign Origin, an unknown path.

Stock Channels refuses a foreign Origin silently (channels#2062) and answers an unknown
path with a ``ValueError`` (HTTP 500 and a traceback). Here each refusal is an HTTP status
with a one-line body where the server supports the ``websocket.http.response`` extension
(uvicorn), a plain 403 where it does not (daphne), and always one WARNING log line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from http import HTTPStatus
from urllib.parse import urlparse

from channels.security.websocket import OriginValidator
from django.conf import settings

from app import metrics
from app.protocol import ASGIApp, Message, Receive, Scope, Send, ServerFeatures, header, peer

logger = logging.getLogger("app.handshake")


def denial(scope: Scope, status: HTTPStatus, why: str, *, reason: str) -> list[Message]:
    """The messages that refuse a handshake with ``status``, logged once with ``why``.

    Sent in answer to ``websocket.connect``, before any ``websocket.accept``; counted in
    ``channels_echo_refusals_total`` under ``reason`` (one of ``metrics.REFUSAL_REASONS``).
    """
    metrics.refused(reason)
    logger.warning(
        "refused %s %s: %d %s", peer(scope.get("client")), scope.get("path"), status, why
    )
    if not ServerFeatures.from_scope(scope).denial_response:
        return [{"type": "websocket.close"}]  # the server answers 403
    body = f"{status} {status.phrase}: {why}\n".encode()
    return [
        {
            "type": "websocket.http.response.start",
            "status": int(status),
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        },
        {"type": "websocket.http.response.body", "body": body},
    ]


async def refuse(
    scope: Scope, receive: Receive, send: Send, status: HTTPStatus, why: str, *, reason: str
) -> None:
    """An ASGI app's refusal: wait for ``websocket.connect``, then send the ``denial``."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client left before the handshake finished
    for reply in denial(scope, status, why, reason=reason):
        await send(reply)


async def unknown_route(scope: Scope, receive: Receive, send: Send) -> None:
    """The last WebSocket route: anything no other route matched gets a 404."""
    await refuse(
        scope,
        receive,
        send,
        HTTPStatus.NOT_FOUND,
        "no WebSocket route at this path",
        reason="route",
    )


class LoggedOriginValidator(OriginValidator):
    """Channels' ``OriginValidator``, saying why it refuses, with a policy for no Origin at all.

    Browsers always send ``Origin`` on a WebSocket handshake, and a foreign one is how a
    cross-site page would hijack a user's session: refused with 403. A handshake with no
    ``Origin`` comes from a non-browser client (a script, a load tester) that could send any
    Origin it liked, so refusing it protects nothing; ``WEBSOCKET_ALLOW_MISSING_ORIGIN``
    (default True) lets it in.
    """

    def __init__(
        self, application: ASGIApp, allowed_origins: list[str], *, allow_missing: bool = True
    ):
        super().__init__(application, allowed_origins)
        self.allow_missing = allow_missing

    #: ``__call__`` returns the inner application's coroutine instead of awaiting it, so that an
    #: open connection holds no frame of this class; asgiref must not take it for ASGI 2.
    _asgi_single_callable = True

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        raw = header(scope, b"origin")
        if raw is None and self.allow_missing:
            return self.application(scope, receive, send)
        origin = raw.decode("latin-1") if raw is not None else None
        if origin is not None and self.allows(origin):
            return self.application(scope, receive, send)
        why = f"Origin {origin!r} is not allowed" if origin is not None else "no Origin header"
        return refuse(scope, receive, send, HTTPStatus.FORBIDDEN, why, reason="origin")

    def allows(self, origin: str) -> bool:
        """Whether ``origin`` (the header's value) is one of the allowed Origins."""
        try:
            return self.valid_origin(urlparse(origin))
        except ValueError:  # "http://[", a port out of range: not a URL, so not allowed
            return False


def allowed_hosts_origin_validator(application: ASGIApp) -> LoggedOriginValidator:
    """Like Channels' ``AllowedHostsOriginValidator``: the allowed Origins are ``ALLOWED_HOSTS``."""
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return LoggedOriginValidator(
        application, allowed_hosts, allow_missing=settings.WEBSOCKET_ALLOW_MISSING_ORIGIN
    )
