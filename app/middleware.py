"""Middleware: Channels' ``AuthMiddlewareStack`` without a per-message cost on WebSockets,
and the Content-Security-Policy header of the HTTP pages.

Channels' ``SessionMiddleware`` wraps ``send`` so that it can save a modified session on
``http.response.start``, the only message type it saves on. A WebSocket never sends one, yet
every ``websocket.send`` still goes through the wrapper and two lazy-session lookups: on the
echo benchmark that took async echo from 0.92 to 0.57 of the raw ASGI ceiling. Here WebSocket
connections get the session and the user in their scope as before, and keep the server's own
``send``. (A WebSocket consumer that changes the session saves it itself, as with Channels.)
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable

from channels.auth import AuthMiddleware
from channels.sessions import CookieMiddleware, InstanceSessionWrapper, SessionMiddleware
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousFileOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.http.request import split_domain_port

from app.protocol import ASGIApp, Receive, Scope, Send
from app.tracing import asks_for_trace

logger = logging.getLogger("app.static")


class WebSocketSessionMiddleware(SessionMiddleware):
    """``SessionMiddleware`` that leaves a WebSocket's ``send`` unwrapped (it never saves there)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return await super().__call__(scope, receive, send)
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


def auth_middleware_stack(inner: ASGIApp) -> ASGIApp:
    """``channels.auth.AuthMiddlewareStack``: cookies, session and user, in the same order."""
    return CookieMiddleware(WebSocketSessionMiddleware(AuthMiddleware(inner)))


class SessionWhenNeeded:
    """``auth_middleware_stack`` for the handshakes that use a session, and nothing for the rest.

    Tracing reads the session (a ``trace=`` query, and the ``/ws/trace/`` sockets: a trace
    token belongs to one browser session), and so does a room member that comes with a session
    cookie (its name on an open room is its user's: app/room_access.py). Every other connection
    skips the cookie parse, the session and user objects and three copies of the scope, which
    it would hold for its whole life: about 4.8 KiB of an idle connection's 25 KiB
    (docs/performance.md). A project whose consumers read ``scope["user"]`` uses
    ``auth_middleware_stack`` directly.
    """

    #: ``__call__`` returns the inner application's coroutine instead of awaiting it, so that an
    #: open connection holds no frame of this class; asgiref must not take it for ASGI 2.
    _asgi_single_callable = True

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner
        self.with_session = auth_middleware_stack(inner)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        path = scope["path"]
        if (
            asks_for_trace(scope)
            or path.startswith("/ws/trace/")
            or (path.startswith("/ws/broadcast/") and has_session_cookie(scope))
        ):
            return self.with_session(scope, receive, send)
        return self.inner(scope, receive, send)


def has_session_cookie(scope: Scope) -> bool:
    """Whether the handshake carries Django's session cookie (a cheap look, not a parse)."""
    name = settings.SESSION_COOKIE_NAME.encode()
    return any(key == b"cookie" and name in value for key, value in scope.get("headers", ()))


class ContentSecurityPolicyMiddleware:
    """Adds ``CONTENT_SECURITY_POLICY`` to every HTTP response (Django 5.2 has no CSP of its own)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


#: Paths this host's own probes ask over plain HTTP on the upstream port: a health check and
#: Prometheus' scrape (README, Production).
LOCAL_PROBES = frozenset({"/healthz", "/metrics"})


class LocalProbesMiddleware:
    """Answers this host's own probes of ``LOCAL_PROBES`` when they name the host by address.

    Prometheus scrapes ``127.0.0.1:8000/metrics`` with ``Host: 127.0.0.1:8000``; with the
    production recipe's ``DJANGO_ALLOWED_HOSTS=echo.example.com`` Django answered it, and a local
    ``/healthz`` check, with 400 (and an ERROR line). Adding 127.0.0.1 to ``ALLOWED_HOSTS``
    instead would also let pages served from 127.0.0.1 open WebSockets (the Origin check reads
    it). Only a loopback client counts: behind nginx a request's address is the forwarded one.

    And only a ``Host`` that is an IP literal or ``localhost`` (``probe_host``), which is what
    Prometheus and a load balancer's check send: a browser on this host is a loopback client
    too, and a page at ``http://rebind.attacker.example:8000/`` whose name resolves to
    127.0.0.1 (DNS rebinding) would otherwise read ``/metrics`` from its own origin. Any other
    name goes through Django's Host check like every request (400, ``DisallowedHost``).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.path in LOCAL_PROBES
            and is_loopback(request.META.get("REMOTE_ADDR", ""))
            and probe_host(request._get_raw_host())
        ):
            request.get_host = request._get_raw_host  # the Host check, skipped for this request
        return self.get_response(request)


def probe_host(host: str) -> bool:
    """Whether ``host`` (a ``Host`` header, port and all) names no domain: an IP literal
    (``127.0.0.1:8000``, ``[::1]``) or ``localhost``, which no DNS answer can point elsewhere."""
    domain, _port = split_domain_port(host)
    if domain == "localhost":
        return True
    try:
        ipaddress.ip_address(domain.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class StaticFiles(ASGIStaticFilesHandler):
    """Django's ``ASGIStaticFilesHandler``, answering a path that leaves the static folders 404.

    uvicorn hands the path on as the client sent it (``/static/../project/settings.py``, or
    ``..%2f`` through nginx), and ``safe_join`` refuses it with ``SuspiciousFileOperation``. The
    handler catches only ``Http404``, so that was a 500, ``ERROR: Exception in ASGI
    application`` and a 60-line traceback: nothing disclosed, but any client could page the
    operator. Here it is what any missing file is, a 404, with one WARNING line.
    """

    def serve(self, request: HttpRequest) -> HttpResponse:
        try:
            return super().serve(request)
        except SuspiciousFileOperation:
            logger.warning(
                "refused static path %r from %s: outside the static folders",
                request.path,
                request.META.get("REMOTE_ADDR"),
            )
            raise Http404("no such static file") from None
