"""HTTP views: the demo page, health, trace tokens, and a clear answer to plain HTTP on /ws/."""

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST, require_safe
from redis.exceptions import RedisError

from app.dispatch import live
from app.layers import ping_redis
from app.tracing import issue_token


@require_safe
@ensure_csrf_cookie  # the page's JS sends it back when it asks for a trace token
def index(request: HttpRequest) -> HttpResponse:
    """The browser test client for the echo consumers."""
    return render(
        request,
        "index.html",
        {
            "max_message_bytes": settings.ECHO_MAX_MESSAGE_BYTES,
            "subprotocols": settings.ECHO_SUBPROTOCOLS,
        },
    )


def websocket_only(request: HttpRequest) -> HttpResponse:
    """``/ws/...`` over plain HTTP: 426 Upgrade Required, instead of a 404 page or a 500."""
    response = HttpResponse(
        "This path speaks WebSocket only: connect with a WebSocket client.\n",
        status=426,
        content_type="text/plain; charset=utf-8",
    )
    response["Upgrade"] = "websocket"
    return response


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers: always 200 while the process serves; ``status`` says how well.

    ``degraded`` means the channel layer (Redis) is unreachable: echo still works, rooms do not.
    ``websocket_connections`` counts this process only.
    """
    layer = get_channel_layer()
    reachable = channel_layer_reachable(layer)
    return JsonResponse(
        {
            "status": "ok" if reachable else "degraded",
            "websocket_connections": live.count,
            "channel_layer": {"backend": type(layer).__name__, "reachable": reachable},
        }
    )


def channel_layer_reachable(layer) -> bool:
    """True for the in-memory layer; for Redis, whether REDIS_URL answers a PING within 1 s."""
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return True
    try:
        ping_redis(settings.REDIS_URL, timeout=1)
    except (RedisError, OSError, ValueError):
        return False
    return True


@require_POST
def trace_token(request: HttpRequest) -> JsonResponse:
    """A trace token bound to this browser's session (app/tracing.py says how it is used)."""
    token, ttl = issue_token(request.session)
    return JsonResponse({"token": token, "expires_in": ttl})
