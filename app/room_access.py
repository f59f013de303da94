"""Who may join a room: private rooms, signed room tokens, and the member's name (issue 31).

No I/O here besides Django's signing and the user already in the scope; the consumers call
``grant_for`` in ``websocket_connect`` and refuse with ``refusal`` (docs/rooms.md).

- **Private rooms.** ``ROOMS_PRIVATE`` is a regular expression matched against the whole room
  name (default ``private\\..+``; ``.*`` makes every room private). Every other room is open.
- **A grant is a signed room token**: ``django.core.signing.Signer.sign_object`` (as
  ``signing.dumps``, without its timestamp: the expiry is in the payload) with the project's
  secret (``SECRET_KEY``, and ``SECRET_KEY_FALLBACKS`` while a key rotates) and a salt of its
  own, over the compact JSON ``{"r": room, "m": member, "p": 0|1, "e": expiry}``: one exact
  room, the member's name, the rights (``p``: 1 for read + publish, 0 for read only) and the
  expiry in Unix seconds, checked here so that a refusal can say "expired". ``make_token``
  issues one; so do ``manage.py room-token`` and ``POST /rooms/<room>/token``.
- **How it travels**: ``?token=`` on the room's URL (a browser cannot set headers on a
  WebSocket). Every formatter the project configures redacts ``token=`` values
  (``app.logs.redact``), and so does the nginx access log of deploy/nginx.conf.
- **Refusals**: ``AccessRefused.reason`` is one of ``REASONS``; ``refusal`` turns it into a 403
  with that reason and one WARNING line, throttled per reason under a flood.
- **Names**: the token's member name; with no token on an open room, the signed-in user's
  username; otherwise None, and the consumer makes an anonymous id (``new_member_id``).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.core import signing
from django.utils.functional import LazyObject, empty

from app.handshake import denial
from app.logs import Throttled
from app.protocol import Message, Scope
from app.rooms import Room

logger = logging.getLogger("app.room_access")

#: Room names that need a grant unless ``settings.ROOMS_PRIVATE`` says otherwise.
DEFAULT_ROOMS_PRIVATE = r"private\..+"
#: Seconds a token lives unless ``settings.ROOM_TOKEN_TTL`` or the caller says otherwise.
DEFAULT_ROOM_TOKEN_TTL = 3600
#: The signing salt: a token signed for anything else in the project (sessions, cookies,
#: ``signing.dumps`` elsewhere) is not a room token, and a room token is nothing else.
SALT = "app.room_access.v1"
#: A member name: 1 to 150 characters (Django's username length), no control characters.
MAX_MEMBER_LENGTH = 150
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

NO_TOKEN = "no token"
TAMPERED = "tampered token"
EXPIRED = "expired token"
OTHER_ROOM = "token for another room"
#: Every ``AccessRefused.reason``, and nothing else.
REASONS = (NO_TOKEN, TAMPERED, EXPIRED, OTHER_ROOM)


class AccessRefused(Exception):
    """A handshake this module refuses (HTTP 403); ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"not a refusal reason: {reason!r}")
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """What a member may do in a room, and who it is.

    ``member``: the token's member name, else the signed-in user's username on an open room,
    else None (the consumer makes an anonymous id). ``user``: the username of the Django user
    signed in on this connection's session (``scope["user"]``), None when anonymous or when
    the scope has no user; a token does not change it. ``publish``: whether the member may
    send to the room (a read-only token: False).
    """

    member: str | None
    user: str | None
    publish: bool


def rooms_private() -> str:
    return getattr(settings, "ROOMS_PRIVATE", DEFAULT_ROOMS_PRIVATE)


@functools.lru_cache(maxsize=8)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def is_private(room: str) -> bool:
    """Whether ``room`` needs a grant: ``ROOMS_PRIVATE`` matches its whole name."""
    return _compiled(rooms_private()).fullmatch(room) is not None


def token_ttl() -> int:
    return getattr(settings, "ROOM_TOKEN_TTL", DEFAULT_ROOM_TOKEN_TTL)


def check_member(member: str) -> str:
    """``member`` if it can be a member's name; raises ``ValueError`` saying why not."""
    if not isinstance(member, str) or not 1 <= len(member) <= MAX_MEMBER_LENGTH:
        raise ValueError(f"a member name is 1 to {MAX_MEMBER_LENGTH} characters")
    if _CONTROL.search(member):
        raise ValueError("a member name holds no control characters")
    return member


def make_token(room: str, member: str, *, publish: bool = True, ttl: int | None = None) -> str:
    """A signed token letting ``member`` into ``room`` (that exact name) for ``ttl`` seconds
    (default ``ROOM_TOKEN_TTL``, 3600), to read and, unless ``publish`` is False, to send.

    Raises ``app.rooms.InvalidRoom`` (a ``ValueError``) for a name no room can have, and
    ``ValueError`` for an impossible member name. The token is URL-safe: base64url and ``:``.
    """
    return issue(room, member, publish=publish, ttl=ttl)[0]


def issue(
    room: str, member: str, *, publish: bool = True, ttl: int | None = None
) -> tuple[str, TokenClaims]:
    """``make_token``'s token, and what it says (its ``expires`` for the HTTP endpoint)."""
    Room.named(room)
    check_member(member)
    expires = int(time.time()) + (token_ttl() if ttl is None else int(ttl))
    claims = TokenClaims(room, member, bool(publish), expires)
    payload = {"r": room, "m": member, "p": 1 if publish else 0, "e": expires}
    return signing.Signer(salt=SALT).sign_object(payload), claims


@dataclass(frozen=True)
class TokenClaims:
    """A token's contents, once its signature holds."""

    room: str
    member: str
    publish: bool
    expires: int


def read_token(token: str, room: str, *, now: float | None = None) -> TokenClaims:
    """The claims of ``token`` if it lets its holder into ``room`` now; raises
    ``AccessRefused`` with ``TAMPERED`` (a bad signature, another secret's, another salt's, or a
    payload this module did not write), ``OTHER_ROOM`` or ``EXPIRED``, in that order."""
    try:
        payload: Any = signing.Signer(salt=SALT).unsign_object(token)
    except (signing.BadSignature, ValueError, UnicodeError):
        raise AccessRefused(TAMPERED) from None
    claims = _claims(payload)
    if claims is None:
        raise AccessRefused(TAMPERED)
    if claims.room != room:
        raise AccessRefused(OTHER_ROOM)
    if (time.time() if now is None else now) >= claims.expires:
        raise AccessRefused(EXPIRED)
    return claims


def _claims(payload: Any) -> TokenClaims | None:
    if not isinstance(payload, dict) or set(payload) != {"r", "m", "p", "e"}:
        return None
    room, member, publish, expires = payload["r"], payload["m"], payload["p"], payload["e"]
    if not (isinstance(room, str) and isinstance(member, str) and publish in (0, 1)):
        return None
    if type(expires) is not int or type(publish) is not int:
        return None
    try:
        check_member(member)
    except ValueError:
        return None
    return TokenClaims(room, member, bool(publish), expires)


def query_token(query_string: bytes | str) -> str | None:
    """The ``token`` of a handshake's query string; None when absent or blank (an empty token
    field counts as no token). Given more than once, it is the tampered token ``"\\x00"``."""
    if isinstance(query_string, bytes):
        if b"token=" not in query_string:
            return None  # nearly every handshake: no parse
        query_string = query_string.decode("latin-1")
    values = [v for v in parse_qs(query_string, keep_blank_values=True).get("token", []) if v]
    if not values:
        return None
    return values[0] if len(values) == 1 else "\x00"  # never a valid signature


def scope_username(scope: Scope) -> str | None:
    """The username of the user signed in on the scope's session; None when anonymous or when
    no auth middleware put a user in the scope.

    Channels' ``AuthMiddleware`` (``app.middleware.auth_middleware_stack``) resolves the user
    (one database query, off the event loop) before the consumer runs, so reading it here needs
    no database. A ``UserLazyObject`` left unresolved is a wiring error: ``agrant_for`` resolves
    it; ``grant_for`` raises ``RuntimeError``.
    """
    user = scope.get("user")
    if user is None:
        return None
    if isinstance(user, LazyObject) and user._wrapped is empty:
        raise RuntimeError("scope['user'] is not resolved: use agrant_for, or AuthMiddleware")
    if not getattr(user, "is_authenticated", False):
        return None
    return user.get_username()


def grant_for(scope: Scope, room: str) -> Grant:
    """Whether this handshake may join ``room``, as whom and with which rights.

    - A ``?token=`` valid for this exact room: its member name and rights, on any room.
    - A token that is not valid: refused (``TAMPERED``, ``EXPIRED``, ``OTHER_ROOM``), even on
      an open room.
    - No token on a private room: refused (``NO_TOKEN``).
    - No token on an open room: read + publish, named after the signed-in user if any.

    Raises ``AccessRefused``; the consumer answers it with ``refusal``. Synchronous and free of
    I/O (the user in the scope is resolved already by Channels' ``AuthMiddleware``): call it
    as it is from a ``SyncConsumer`` or an ``AsyncConsumer``.
    """
    user = scope_username(scope)
    token = query_token(scope.get("query_string", b""))
    if token is not None:
        claims = read_token(token, room)
        return Grant(member=claims.member, user=user, publish=claims.publish)
    if is_private(room):
        raise AccessRefused(NO_TOKEN)
    return Grant(member=user, user=user, publish=True)


async def agrant_for(scope: Scope, room: str) -> Grant:
    """``grant_for`` for a scope whose ``UserLazyObject`` may still be unresolved: resolves it
    first (Channels' ``get_user``, through ``database_sync_to_async``)."""
    user = scope.get("user")
    if isinstance(user, LazyObject) and user._wrapped is empty:
        from channels.auth import get_user

        user._wrapped = await get_user(scope)
    return grant_for(scope, room)


#: One throttle per reason: a flood of one kind of refusal does not hide the others.
_warnings = {reason: Throttled(logger) for reason in REASONS}


def refusal(scope: Scope, error: AccessRefused) -> list[Message]:
    """The handshake's 403 for ``error``, its body naming the reason, with one WARNING line
    (``app.room_access``: peer, path, reason; never the token, which rides in the query string),
    throttled per reason; counted under ``channels_echo_refusals_total{reason="room_access"}``."""
    return denial(
        scope,
        HTTPStatus.FORBIDDEN,
        error.reason,
        reason="room_access",
        warn=_warnings[error.reason].warning,
    )
