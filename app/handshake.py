"""Refusals before ``websocket.accept``: a foreign Origin, an unknown path.

Stock Channels refuses a foreign Origin silently (channels#2062) and answers an unknown
path with a ``ValueError`` (HTTP 500 and a traceback). Here each refusal is an HTTP status
with a one-line body where the server supports the ``websocket.http.response`` extension
(uvicorn), a plain 403 where it does not (daphne), and always one WARNING log line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from app import metrics
from app.protocol import ASGIApp, Message, Receive, Scope, Send, ServerFeatures, header, peer

logger = logging.getLogger("app.handshake")


def denial(
    scope: Scope,
    status: HTTPStatus,
    why: str,
    *,
    reason: str,
    warn: Callable[..., None] | None = None,
) -> list[Message]:
    """The messages that refuse a handshake with ``status``, logged once with ``why``.

    Sent in answer to ``websocket.connect``, before any ``websocket.accept``; counted in
    ``channels_echo_refusals_total`` under ``reason`` (one of ``metrics.REFUSAL_REASONS``).
    ``warn`` logs the line instead of ``app.handshake``'s WARNING: a ``Throttled.warning``
    for refusals a flood repeats (app/room_access.py).
    """
    metrics.refused(reason)
    (warn or logger.warning)(
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


class OriginPolicy:
    """Which ``Origin`` may open a WebSocket: a scheme, a host and a port, as Django's CSRF
    check reads ``CSRF_TRUSTED_ORIGINS`` (the host alone let any port and either scheme in).

    - Production: ``https://<host>`` on the default port (443) for each ``ALLOWED_HOSTS``
      entry (``.example.com`` covers its subdomains; ``*`` names no site and allows nothing),
      plus each of ``CSRF_TRUSTED_ORIGINS`` (``https://*.example.com`` covers subdomains, on
      the port written, as Django does).
    - Development: the origin served, ``http://<Host header>`` (``https://`` when the handshake
      came over TLS, or through a proxy that said so), its host in ``ALLOWED_HOSTS``: a page at
      ``http://127.0.0.1:8000`` may open ``ws://127.0.0.1:8000``, one at ``:9999`` may not.
      Plus ``CSRF_TRUSTED_ORIGINS``. A handshake without a ``Host`` is no browser's (a browser
      always sends one), so only the Origin's host is checked against ``ALLOWED_HOSTS`` then.

    An Origin must be a serialised origin, ``scheme://host[:port]`` and nothing else: ``null``,
    ``file://``, extensions' schemes, user info, a path, a port out of range, are refused.
    """

    def __init__(
        self, *, allowed_hosts: list[str], trusted_origins: list[str], production: bool
    ) -> None:
        self.allowed_hosts = list(allowed_hosts)
        self.production = production
        self.trusted_exact: set[str] = set()
        self.trusted_subdomains: list[tuple[str, str]] = []  # (scheme, ".example.com[:port]")
        for entry in trusted_origins:
            scheme, _, netloc = entry.lower().partition("://")
            if netloc.startswith("*"):
                self.trusted_subdomains.append((scheme, netloc[1:]))
            elif (normal := normalise(entry)) is not None:
                self.trusted_exact.add(normal)

    @classmethod
    def from_settings(cls) -> OriginPolicy:
        allowed_hosts = settings.ALLOWED_HOSTS
        if settings.DEBUG and not allowed_hosts:
            allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]  # as Django's own host check
        return cls(
            allowed_hosts=allowed_hosts,
            trusted_origins=settings.CSRF_TRUSTED_ORIGINS,
            production=settings.PRODUCTION,
        )

    def allows(self, origin: str, *, host: str | None, secure: bool) -> bool:
        """Whether a handshake with ``Origin: origin`` and ``Host: host`` (None: no Host
        header), over TLS or not (``secure``), comes from this site's own pages."""
        normal = normalise(origin)
        if normal is None:
            return False
        if normal in self.trusted_exact:
            return True
        scheme, _, netloc = normal.partition("://")
        if any(
            scheme == trusted and is_same_domain(origin_netloc(origin), pattern)
            for trusted, pattern in self.trusted_subdomains
        ):
            return True
        name, port = netloc.rsplit(":", 1)
        if self.production:
            return (scheme, port) == ("https", "443") and self.host_allowed(name, exact=True)
        if host is None:  # not a browser: the Origin's host alone, as Channels checks it
            return self.host_allowed(name, exact=False)
        served = normalise(f"{'https' if secure else 'http'}://{host}")
        domain, _ = split_domain_port(host)
        return normal == served and bool(domain) and validate_host(domain, self.allowed_hosts)

    def host_allowed(self, name: str, *, exact: bool) -> bool:
        """``name`` matches an ``ALLOWED_HOSTS`` entry (``*`` too unless ``exact``)."""
        return any(
            (pattern == "*" and not exact) or is_same_domain(name, pattern.lower())
            for pattern in self.allowed_hosts
        )

    def describe(self) -> str:
        """The allowed Origins in words, for the refusal ``/handshake-check`` explains."""
        if self.production:
            sites = [f"https://{host}" for host in self.allowed_hosts if host != "*"]
            rule = f"https:// on the default port for each allowed host ({', '.join(sites)})"
        else:
            rule = "the page's own origin: the scheme, host and port this server was reached at"
        trusted = sorted(self.trusted_exact) + [
            f"{scheme}://*{pattern}" for scheme, pattern in self.trusted_subdomains
        ]
        return f"{rule}, and DJANGO_CSRF_TRUSTED_ORIGINS ({', '.join(trusted) or 'none'})"


DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise(origin: str) -> str | None:
    """``scheme://host:port``, lower case, with the scheme's default port written out; None for
    anything that is not a serialised http(s) origin."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:  # "http://[", a port out of range or not a number
        return None
    if (
        parts.scheme not in DEFAULT_PORTS
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or origin != origin.strip()
    ):
        return None
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{name}:{DEFAULT_PORTS[parts.scheme] if port is None else port}"


def origin_netloc(origin: str) -> str:
    """The ``host[:port]`` of an Origin as written (lower case), as Django's CSRF check reads it."""
    return urlsplit(origin.lower()).netloc


class LoggedOriginValidator:
    """Refuses a WebSocket handshake from another site's page, saying why (403, one WARNING);
    ``OriginPolicy`` holds the rules, and ``/handshake-check`` asks the same ones.

    Browsers always send ``Origin`` on a WebSocket handshake, and a foreign one is how a
    cross-site page would hijack a user's session: refused with 403. A handshake with no
    ``Origin`` comes from a non-browser client (a script, a load tester) that could send any
    Origin it liked, so refusing it protects nothing; ``WEBSOCKET_ALLOW_MISSING_ORIGIN``
    (default True) lets it in.
    """

    def __init__(
        self, application: ASGIApp, policy: OriginPolicy, *, allow_missing: bool = True
    ) -> None:
        self.application = application
        self.policy = policy
        self.allow_missing = allow_missing

    #: ``__call__`` returns the inner application's coroutine instead of awaiting it, so that an
    #: open connection holds no frame of this class; asgiref must not take it for ASGI 2.
    _asgi_single_callable = True

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        raw = header(scope, b"origin")
        if raw is None and self.allow_missing:
            return self.application(scope, receive, send)
        origin = raw.decode("latin-1") if raw is not None else None
        if origin is not None and self.allows(origin, scope):
            return self.application(scope, receive, send)
        why = f"Origin {origin!r} is not allowed" if origin is not None else "no Origin header"
        return refuse(scope, receive, send, HTTPStatus.FORBIDDEN, why, reason="origin")

    def allows(self, origin: str, scope: Scope) -> bool:
        """Whether ``origin`` may open this handshake (``scope``: its Host and scheme)."""
        host = header(scope, b"host")
        return self.policy.allows(
            origin,
            host=host.decode("latin-1") if host is not None else None,
            secure=scope.get("scheme") in ("wss", "https"),
        )


def allowed_hosts_origin_validator(application: ASGIApp) -> LoggedOriginValidator:
    """Like Channels' ``AllowedHostsOriginValidator``, with scheme and port (``OriginPolicy``)."""
    return LoggedOriginValidator(
        application,
        OriginPolicy.from_settings(),
        allow_missing=settings.WEBSOCKET_ALLOW_MISSING_ORIGIN,
    )
