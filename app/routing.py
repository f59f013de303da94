"""WebSocket routes, and the router that matches them. Unmatched paths fall through to
``unknown_route``: a 404, not a 500."""

from __future__ import annotations

from collections.abc import Awaitable

import channels.routing
from django.urls import Resolver404, path, re_path

from app.consumers import (
    BroadcastAsyncConsumer,
    BroadcastSyncConsumer,
    EchoAsyncConsumer,
    EchoSyncConsumer,
    TraceConsumer,
)
from app.handshake import unknown_route
from app.protocol import Receive, Scope, Send
from app.test_server import BehavioursConsumer


class URLRouter(channels.routing.URLRouter):
    """Channels' ``URLRouter``, returning the routed application's awaitable instead of
    awaiting it in a coroutine of its own: an open connection holds no frame of the router, nor
    the locals it kept (the match, the route's arguments): 0.7 KiB of an idle connection
    (docs/performance.md). Channels' own routing tests run against it
    (tests/test_channels_suite.py).

    The routing is Channels', step by step. Channels also catches a ``Resolver404`` raised
    while the routed application runs: a nested router behind middleware finds nothing only
    then. A router with a nested one (a route to anything with ``_path_routing``) is therefore
    Channels' own, frame and all; for the rest, a ``Resolver404`` from a running consumer
    propagates instead of sending the routing on to the next route with the connection half used.
    """

    _asgi_single_callable = True  # an ASGI 3 application: asgiref must not wrap it as ASGI 2

    def __init__(self, routes: list) -> None:
        super().__init__(routes)
        self.nested = any(getattr(route.callback, "_path_routing", False) for route in routes)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if self.nested:
            return super().__call__(scope, receive, send)
        path = scope.get("path_remaining", scope.get("path", None))
        if path is None:
            raise ValueError("No 'path' key in connection scope, cannot route URLs")
        if "path_remaining" not in scope:  # the outermost router: strip root_path
            root_path = scope.get("root_path", "")
            if root_path and not path.startswith(root_path):
                raise ValueError(f"No route found for path {path!r}.")
            path = path[len(root_path) :]
        path = path.lstrip("/")  # as Django matches
        for route in self.routes:
            try:
                match = route.pattern.match(path)
                if match:
                    new_path, args, kwargs = match
                    kwargs.update(route.default_args)
                    outer = scope.get("url_route", {})
                    url_route = {
                        "args": outer.get("args", ()) + args,
                        "kwargs": {**outer.get("kwargs", {}), **kwargs},
                    }
                    inner = dict(scope, path_remaining=new_path, url_route=url_route)
                    return route.callback(inner, receive, send)
            except Resolver404:  # as Channels: a pattern's converter refused the value
                pass
        if "path_remaining" in scope:
            raise Resolver404(f"No route found for path {path!r}.")
        raise ValueError(f"No route found for path {path!r}.")


websocket_urlpatterns = [
    path("ws/echo/sync/", EchoSyncConsumer.as_asgi(), name="echo-sync"),
    path("ws/echo/async/", EchoAsyncConsumer.as_asgi(), name="echo-async"),
    # Any room segment reaches the consumer, which refuses a bad name with a reason (400).
    re_path(
        r"^ws/broadcast/sync/(?P<room>[^/]*)/$",
        BroadcastSyncConsumer.as_asgi(),
        name="broadcast-sync",
    ),
    re_path(
        r"^ws/broadcast/async/(?P<room>[^/]*)/$",
        BroadcastAsyncConsumer.as_asgi(),
        name="broadcast-async",
    ),
    path("ws/test/", BehavioursConsumer.as_asgi(), name="test"),
    re_path(r"^ws/trace/(?P<token>[A-Za-z0-9_-]{1,64})/$", TraceConsumer.as_asgi(), name="trace"),
    re_path(r"", unknown_route),
]
