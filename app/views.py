"""HTTP views: the demo page, health, trace tokens, and a clear answer to plain HTTP on /ws/."""

import hmac
import logging

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST, require_safe

from app import metrics
from app.dispatch import live
from app.explain import explain
from app.layers import redis_health
from app.middleware import is_loopback
from app.tracing import issue_token

logger = logging.getLogger("app.views")


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
            "client_conformance_url": settings.CLIENT_CONFORMANCE_URL,
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
    # The server's access line already says it: Django would log every 4xx once more, at
    # WARNING (django.request), for what is only a client that did not upgrade.
    response._has_been_logged = True
    return response


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers: always 200 while the process serves; ``status`` says how well.

    ``degraded`` means the channel layer (Redis) is unreachable: echo still works, rooms do not.
    That is all a client elsewhere is told (``/healthz`` is public through nginx): the detail,
    ``websocket_connections`` (this process only) and the layer's backend, is for loopback
    clients, as ``/metrics`` is (behind a proxy the forwarded address counts).
    """
    layer = get_channel_layer()
    reachable = channel_layer_reachable(layer)
    answer: dict = {"status": "ok" if reachable else "degraded"}
    if is_loopback(request.META.get("REMOTE_ADDR", "")):
        answer["websocket_connections"] = live.count
        answer["channel_layer"] = {"backend": type(layer).__name__, "reachable": reachable}
        answer["rooms"] = get_channel_layer("rooms").describe()  # the engine (docs/rooms.md)
    return JsonResponse(answer)


def channel_layer_reachable(layer) -> bool:
    """True for the in-memory layer; for Redis, whether it answered a PING within
    ``HEALTH_CHECK_TIMEOUT`` (1 s) at the last check, at most ``HEALTH_CHECK_INTERVAL`` (1 s)
    ago: one kept connection and one PING at a time per process (``RedisHealth``)."""
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return True
    return redis_health().reachable()


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics of every worker (app/metrics.py), to whom ``METRICS_ACCESS`` allows."""
    if settings.METRICS_ACCESS == "off":
        raise Http404("metrics are off (METRICS_ACCESS=off)")
    if settings.METRICS_ACCESS == "token":
        offered = request.headers.get("Authorization", "")
        expected = f"Bearer {settings.METRICS_TOKEN}"
        if not hmac.compare_digest(offered.encode(), expected.encode()):
            logger.warning(
                "refused /metrics to %s: no valid bearer token", request.META.get("REMOTE_ADDR")
            )
            response = HttpResponse("401 Unauthorized: a bearer token is required\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    elif not is_loopback(request.META.get("REMOTE_ADDR", "")):
        logger.warning(
            "refused /metrics to %s: not a loopback address", request.META.get("REMOTE_ADDR")
        )
        return HttpResponse(
            "403 Forbidden: /metrics answers loopback clients only (METRICS_ACCESS)\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)


@require_safe
def handshake_check(request: HttpRequest) -> JsonResponse:
    """Which of the handshake's rules would refuse ``?path=...&subprotocols=a,b&origin=...``
    (app/explain.py): the page asks when a connection fails before it opens."""
    path = request.GET.get("path", "")
    if not path.startswith("/"):
        return JsonResponse({"error": "path must be an absolute path, /ws/..."}, status=400)
    verdict = explain(
        path=path,
        origin=request.GET.get("origin") or None,
        # The page asks from its own origin: the handshake comes with this Host and scheme.
        host=request.META.get("HTTP_HOST"),
        secure=request.is_secure(),
        subprotocols=[
            p.strip() for p in request.GET.get("subprotocols", "").split(",") if p.strip()
        ],
        session=request.session,
        layer_reachable=lambda: channel_layer_reachable(get_channel_layer()),
    )
    return JsonResponse(verdict.as_dict())


@require_POST
def trace_token(request: HttpRequest) -> JsonResponse:
    """A trace token bound to this browser's session (app/tracing.py says how it is used)."""
    token, ttl = issue_token(request.session)
    return JsonResponse({"token": token, "expires_in": ttl})
