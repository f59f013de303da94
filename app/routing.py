"""WebSocket routes. Unmatched paths fall through to ``unknown_route``: a 404, not a 500."""

from django.urls import path, re_path

from app.consumers import EchoAsyncConsumer, EchoSyncConsumer
from app.handshake import unknown_route

websocket_urlpatterns = [
    path("ws/echo/sync/", EchoSyncConsumer.as_asgi(), name="echo-sync"),
    path("ws/echo/async/", EchoAsyncConsumer.as_asgi(), name="echo-async"),
    re_path(r"", unknown_route),
]
