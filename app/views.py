"""HTTP views: the demo page, health, trace and room tokens, and a clear answer to plain HTTP on
/ws/."""

import hmac
import logging

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST, require_safe

from app import metrics, room_access
from app.dispatch import live
from app.explain import explain
from app.layers import redis_health
from app.logs import Throttled
from app.middleware import is_loopback
from app.models import room_rights
from app.rooms import InvalidRoom, Room
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
        rooms = get_channel_layer("rooms")  # the engine (docs/rooms.md)
        if rooms is not None:
            answer["rooms"] = rooms.describe()
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
    if refusal := operator_refusal(request):
        return refusal
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)


def operator_refusal(request: HttpRequest) -> HttpResponse | None:
    """None when ``METRICS_ACCESS`` lets ``request`` see what is for operators (``/metrics``,
    a room's presence), else the refusal: 404 when off, 401 without the bearer token, 403 off
    loopback; one WARNING line."""
    what, peer = request.path, request.META.get("REMOTE_ADDR")
    if settings.METRICS_ACCESS == "off":
        raise Http404(f"{what} is off (METRICS_ACCESS=off)")
    if settings.METRICS_ACCESS == "token":
        offered = request.headers.get("Authorization", "")
        expected = f"Bearer {settings.METRICS_TOKEN}"
        if not hmac.compare_digest(offered.encode(), expected.encode()):
            logger.warning("refused %s to %s: no valid bearer token", what, peer)
            response = HttpResponse("401 Unauthorized: a bearer token is required\n", status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    elif not is_loopback(peer or ""):
        logger.warning("refused %s to %s: not a loopback address", what, peer)
        return HttpResponse(
            f"403 Forbidden: {what} answers loopback clients only (METRICS_ACCESS)\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    return None


@require_safe
async def room_presence(request: HttpRequest, room: str) -> HttpResponse:
    """Who is in ``room``: the welcome's ``presence`` (count, first ``ROOM_PRESENCE_LIST``
    members), for operators and other services, guarded as ``/metrics`` is."""
    if refusal := await sync_to_async(operator_refusal)(request):
        return refusal
    try:
        Room.named(room)
    except InvalidRoom as error:
        return JsonResponse({"error": str(error)}, status=400)
    return JsonResponse(await get_channel_layer("rooms").presence(room))


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
        user=request.user if request.user.is_authenticated else None,  # resolved here
    )
    return JsonResponse(verdict.as_dict())


@require_POST
def trace_token(request: HttpRequest) -> JsonResponse:
    """A trace token bound to this browser's session (app/tracing.py says how it is used)."""
    token, ttl = issue_token(request.session)
    return JsonResponse({"token": token, "expires_in": ttl})


#: Refused room-token requests: one WARNING line, then at most one per 10 s under a flood.
room_token_refusals = Throttled(logger)


@require_POST  # the CSRF check (Origin and token) holds: another site's page gets no token
@never_cache  # a credential: no cache keeps it
def room_token(request: HttpRequest, room: str) -> JsonResponse:
    """A room token (app/room_access.py) for the Django user signed in through the session.

    POST, not GET: it issues a credential, so it must pass Django's CSRF check (a cross-site
    page cannot have one issued to its visitor), and no prefetch, crawler or cache fetches one
    (``Cache-Control: no-store`` too). The page posts with the CSRF cookie, as for a trace token.

    The member name is the username. On a private room (``ROOMS_PRIVATE``) the user must hold a
    ``RoomGrant`` matching it (app/models.py says why a model and not a permission), which gives
    the rights; on an open room any signed-in user gets read and publish, what it has there
    anyway, with its name. ``{"token", "room", "member", "publish", "expires"}`` (Unix seconds)
    and ``expires_in``; otherwise 403 with ``{"error": why}``, and 400 for a room name no room
    can have.
    """
    try:
        room = Room.named(room).name
    except InvalidRoom as error:
        return refused_room_token(request, room, str(error), status=400)
    user = request.user
    if not user.is_authenticated:
        return refused_room_token(request, room, "not signed in: sign in to be issued a token")
    if room_access.is_private(room):
        publish = room_rights(user, room)
        if publish is None:
            return refused_room_token(request, room, f"no grant for room {room!r}")
    else:
        publish = True
    member = user.get_username()
    ttl = room_access.token_ttl()
    token, claims = room_access.issue(room, member, publish=publish, ttl=ttl)
    return JsonResponse(
        {
            "token": token,
            "room": room,
            "member": member,
            "publish": publish,
            "expires": claims.expires,
            "expires_in": ttl,
        }
    )


def refused_room_token(
    request: HttpRequest, room: str, why: str, *, status: int = 403
) -> JsonResponse:
    room_token_refusals.warning(
        "refused a token for room %r to %s: %d %s",
        room,
        request.META.get("REMOTE_ADDR"),
        status,
        why,
    )
    response = JsonResponse({"error": why}, status=status)
    response._has_been_logged = True  # the line above, throttled: not django.request's too
    return response
