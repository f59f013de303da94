"""Why a WebSocket handshake would be refused: the consumers' own rules, asked over HTTP.

A browser tells a page nothing about a refused handshake: the ``error`` event has no detail and
the ``close`` event says 1006 whatever the cause (a 403, a 404, a 400, a subprotocol the server
did not pick). The page asks ``/handshake-check`` instead, which runs the same checks the
handshake runs, in the same order, with the same functions, and says which one refuses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from http import HTTPStatus

from django.conf import settings

from app.behaviours import Behaviours, InvalidBehaviour
from app.handshake import allowed_hosts_origin_validator
from app.room_access import EXPIRED, NO_TOKEN, OTHER_ROOM, TAMPERED, AccessRefused, grant_for
from app.room_log import ROOMS_V1, InvalidSince, parse_since
from app.rooms import InvalidRoom, Room
from app.session import choose_subprotocol
from app.tracing import listeners, token_valid, trace_group


@dataclass(frozen=True)
class Verdict:
    """What the handshake would answer: ``ok``, or the ``rule`` that refuses and why."""

    ok: bool
    status: int  # the HTTP status of the refusal (101 when accepted)
    rule: str  # route, origin, room, since, token, layer, behaviour, trace_token,
    # trace_listeners, subprotocol, or ""
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


#: What to do about each refusal of app/room_access.py.
TOKEN_HELP = {
    NO_TOKEN: "room {room} is private (ROOMS_PRIVATE): connect with ?token=, issued by"
    " POST /rooms/{room}/token to a signed-in user with a grant, or by manage.py room-token",
    TAMPERED: "the token's signature does not hold (altered, cut short, or signed with another"
    " secret): ask for a new one",
    EXPIRED: "the token has expired: ask for a new one",
    OTHER_ROOM: "the token was issued for another room: a token opens one room",
}


def refused(status: HTTPStatus | int, rule: str, reason: str) -> Verdict:
    return Verdict(ok=False, status=int(status), rule=rule, reason=reason)


def explain(
    *,
    path: str,
    origin: str | None,
    subprotocols: list[str],
    session,
    layer_reachable,
    user=None,
    host: str | None = None,
    secure: bool = False,
) -> Verdict:
    """The verdict on a handshake to ``path``, checked in the order the stack checks it:
    Origin (project/asgi.py's validator), route (app/routing.py), room name and ``since``
    (app/room_log.py), the room's access (``user``: the session's, app/room_access.py), channel
    layer,
    a trace socket's token and its listeners, then the subprotocol the consumer would pick.

    ``host`` and ``secure``: the ``Host`` and the scheme the handshake would come with; the page
    asks from its own origin, so the check's own request has the same."""
    from app.routing import websocket_urlpatterns

    validator = allowed_hosts_origin_validator(None)
    if origin is not None and not validator.policy.allows(origin, host=host, secure=secure):
        return refused(
            HTTPStatus.FORBIDDEN,
            "origin",
            f"the Origin {origin!r} is not allowed: the server allows {validator.policy.describe()}",
        )
    path, _, query = path.partition("?")
    route = resolve(websocket_urlpatterns, path)
    if route is None:
        return refused(
            HTTPStatus.NOT_FOUND,
            "route",
            f"no WebSocket route at {path}: the routes are /ws/echo/sync/, /ws/echo/async/,"
            " /ws/broadcast/sync/ROOM/, /ws/broadcast/async/ROOM/ and /ws/test/",
        )
    name, kwargs = route
    if "room" in kwargs:
        try:
            Room.named(kwargs["room"])
        except InvalidRoom as error:
            return refused(HTTPStatus.BAD_REQUEST, "room", f"invalid room name: {error}")
        try:
            parse_since(query)
        except InvalidSince as error:
            return refused(HTTPStatus.BAD_REQUEST, "since", f"invalid since: {error}")
        try:
            grant_for({"query_string": query.encode(), "user": user}, kwargs["room"])
        except AccessRefused as error:
            why = TOKEN_HELP[error.reason].format(room=kwargs["room"])
            return refused(HTTPStatus.FORBIDDEN, "token", f"{error.reason}: {why}")
        if not layer_reachable():
            return refused(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "layer",
                "the channel layer (Redis) is unreachable: rooms are refused until it is back;"
                " echo still works",
            )
    if name == "test":  # the behaviours asked for in the query (app/behaviours.py)
        try:
            Behaviours.from_query(query)
        except InvalidBehaviour as error:
            return refused(HTTPStatus.BAD_REQUEST, "behaviour", str(error))
    if name == "trace" and not token_valid(session, kwargs["token"]):
        return refused(
            HTTPStatus.FORBIDDEN,
            "trace_token",
            "the trace token was not issued to this browser session, or has expired:"
            " connect again with Trace ticked for a new one",
        )
    if name == "trace" and listeners.full(trace_group(kwargs["token"])):
        return refused(
            HTTPStatus.TOO_MANY_REQUESTS,
            "trace_listeners",
            f"this trace token already has {settings.TRACE_LISTENERS_PER_TOKEN} trace socket(s)"
            " open (TRACE_LISTENERS_PER_TOKEN): close one, or connect again for a new token",
        )
    supported = [*([ROOMS_V1] if "room" in kwargs else []), *settings.ECHO_SUBPROTOCOLS]
    if name != "trace" and subprotocols and choose_subprotocol(subprotocols, supported) is None:
        return refused(
            HTTPStatus.SWITCHING_PROTOCOLS,
            "subprotocol",
            f"the server speaks {', '.join(supported) or 'no subprotocol'} and none of"
            f" {', '.join(subprotocols)}: it accepts without a subprotocol, and a browser that"
            " offered some fails such a handshake. Offer one it speaks, or none",
        )
    return Verdict(
        ok=True,
        status=int(HTTPStatus.SWITCHING_PROTOCOLS),
        rule="",
        reason="the server's rules accept this handshake; if it still failed, something between"
        " (a proxy, the network) or a limit (connections per process or per address) refused it",
    )


def resolve(patterns, path: str) -> tuple[str, dict[str, str]] | None:
    """The name and keyword arguments of the route ``path`` reaches, as URLRouter matches it;
    None for the catch-all (``unknown_route``)."""
    relative = path.lstrip("/")
    for pattern in patterns:
        match = pattern.pattern.match(relative)
        if match and pattern.name:
            _, _, kwargs = match
            return pattern.name, kwargs
    return None
