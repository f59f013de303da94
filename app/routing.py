"""WebSocket routes. Unmatched paths fall through to ``unknown_route``: a 404, not a 500."""

from django.urls import path, re_path

from app.consumers import (
    BroadcastAsyncConsumer,
    BroadcastSyncConsumer,
    EchoAsyncConsumer,
    EchoSyncConsumer,
    TraceConsumer,
)
from app.handshake import unknown_route

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
    re_path(r"^ws/trace/(?P<token>[A-Za-z0-9_-]{1,64})/$", TraceConsumer.as_asgi(), name="trace"),
    re_path(r"", unknown_route),
]
