"""Access to rooms (issue 31, "Access"): private rooms, signed room tokens, their refusals, the
``room-token`` command, the ``/rooms/<room>/token`` endpoint, and tokens kept out of every log.

app/room_access.py is the module under test; the consumers call its ``grant_for``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from unittest import mock

import pytest
from channels.auth import UserLazyObject
from django.contrib.auth.models import Group, User
from django.core import signing
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from app import room_access
from app.logs import EscapingFormatter
from app.models import RoomGrant, room_rights
from app.room_access import (
    EXPIRED,
    NO_TOKEN,
    OTHER_ROOM,
    REASONS,
    SALT,
    TAMPERED,
    AccessRefused,
    Grant,
    agrant_for,
    grant_for,
    make_token,
    read_token,
    refusal,
)
from app.tracing import scope_summary


def scope(token: str | None = None, *, query: str | None = None, user=None) -> dict:
    """A handshake's scope as the consumer sees it: ``?token=`` and maybe a user."""
    if query is None:
        query = f"token={token}" if token is not None else ""
    made = {
        "type": "websocket",
        "path": "/ws/broadcast/async/x/",
        "query_string": query.encode("latin-1"),
        "client": ("127.0.0.1", 50000),
        "extensions": {"websocket.http.response": {}},
    }
    if user is not None:
        made["user"] = user
    return made


def refused(scope: dict, room: str) -> str:
    with pytest.raises(AccessRefused) as caught:
        grant_for(scope, room)
    assert caught.value.reason in REASONS
    return caught.value.reason


class FakeUser:
    """A resolved ``scope["user"]`` (what Channels' AuthMiddleware leaves there)."""

    def __init__(self, username: str | None) -> None:
        self.username = username
        self.is_authenticated = username is not None

    def get_username(self) -> str:
        return self.username or ""


# --- private rooms and tokens ---------------------------------------------------------------


def test_private_rooms_are_private_dot_anything_by_default_and_rooms_private_changes_them():
    assert room_access.is_private("private.team-a")
    assert not room_access.is_private("private.")  # "private." and one character at least
    assert not room_access.is_private("lobby")
    assert not room_access.is_private("xprivate.a")  # the whole name matches, not a part
    with override_settings(ROOMS_PRIVATE=r".*"):
        assert room_access.is_private("lobby")
    with override_settings(ROOMS_PRIVATE=r"staff-.+"):
        assert room_access.is_private("staff-1") and not room_access.is_private("private.a")


def test_a_token_lets_its_member_into_its_private_room_with_publish():
    token = make_token("private.a", "alice")
    assert grant_for(scope(token), "private.a") == Grant(member="alice", user=None, publish=True)


def test_a_read_only_token_grants_read_only():
    token = make_token("private.a", "bob", publish=False)
    assert grant_for(scope(token), "private.a") == Grant(member="bob", user=None, publish=False)


def test_a_token_is_compact_url_safe_and_carries_room_member_rights_and_expiry():
    before = int(time.time())
    token = make_token("private.a", "alice", publish=False, ttl=60)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:")
    payload = signing.Signer(salt=SALT).unsign_object(token)
    assert payload["r"] == "private.a" and payload["m"] == "alice" and payload["p"] == 0
    assert before + 60 <= payload["e"] <= int(time.time()) + 60
    assert len(token) < 120


def test_no_token_on_a_private_room_is_refused_no_token():
    assert refused(scope(), "private.a") == NO_TOKEN
    assert refused(scope(query="token="), "private.a") == NO_TOKEN  # an empty field: none
    assert refused(scope(user=FakeUser("carol")), "private.a") == NO_TOKEN  # signed in: still


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the signature
        lambda t: ("e" if t[0] != "e" else "f") + t[1:],  # the payload
        lambda t: t.split(":")[0],  # no signature
        lambda t: "not-a-token",
        lambda t: t + ":x",
    ],
    ids=["signature", "payload", "unsigned", "garbage", "extra-part"],
)
def test_a_tampered_token_is_refused_tampered(tamper):
    token = make_token("private.a", "alice")
    assert refused(scope(tamper(token)), "private.a") == TAMPERED


def test_a_token_signed_with_another_secret_is_refused_tampered():
    with override_settings(SECRET_KEY="another-secret-" + secrets.token_urlsafe(32)):
        foreign = make_token("private.a", "mallory")
    assert refused(scope(foreign), "private.a") == TAMPERED


def test_a_token_signed_with_a_key_being_rotated_out_still_holds():
    old_key = "the-old-secret-" + secrets.token_urlsafe(32)
    with override_settings(SECRET_KEY=old_key):
        token = make_token("private.a", "alice")
    with override_settings(SECRET_KEY_FALLBACKS=[old_key]):
        assert grant_for(scope(token), "private.a").member == "alice"


def test_something_else_signed_with_the_projects_secret_is_no_room_token():
    payload = {"r": "private.a", "m": "alice", "p": 1, "e": int(time.time()) + 60}
    other_salt = signing.Signer(salt="django.contrib.sessions").sign_object(payload)
    assert refused(scope(other_salt), "private.a") == TAMPERED
    assert refused(scope(signing.dumps(payload)), "private.a") == TAMPERED  # no salt
    for odd in (  # signed with the salt, yet not what make_token writes
        {**payload, "p": 2},
        {**payload, "e": "soon"},
        {**payload, "m": ""},
        {**payload, "m": "a\nWARNING forged"},
        {**payload, "extra": 1},
        ["private.a", "alice"],
    ):
        token = signing.Signer(salt=SALT).sign_object(odd)
        assert refused(scope(token), "private.a") == TAMPERED, odd


def test_an_expired_token_is_refused_expired():
    assert refused(scope(make_token("private.a", "alice", ttl=-1)), "private.a") == EXPIRED
    token = make_token("private.a", "alice", ttl=60)
    assert grant_for(scope(token), "private.a").member == "alice"
    later = time.time() + 61
    with mock.patch("app.room_access.time.time", return_value=later):
        assert refused(scope(token), "private.a") == EXPIRED


def test_a_token_for_room_a_is_refused_on_room_b():
    token = make_token("private.a", "alice")
    assert refused(scope(token), "private.b") == OTHER_ROOM
    assert refused(scope(token), "lobby") == OTHER_ROOM  # on an open room too
    assert refused(scope(make_token("lobby", "alice")), "private.a") == OTHER_ROOM


def test_a_token_given_twice_is_refused_tampered():
    token = make_token("private.a", "alice")
    assert refused(scope(query=f"token={token}&token={token}"), "private.a") == TAMPERED


def test_the_token_is_read_among_other_parameters_and_percent_encoded():
    token = make_token("private.a", "alice")
    query = f"since=e1:5&token={token.replace(':', '%3A')}&x=1"
    assert grant_for(scope(query=query), "private.a").member == "alice"


def test_make_token_refuses_impossible_rooms_and_member_names():
    with pytest.raises(ValueError):
        make_token("no spaces", "alice")
    with pytest.raises(ValueError):
        make_token("private.a", "")
    with pytest.raises(ValueError):
        make_token("private.a", "a\r\nb")
    with pytest.raises(ValueError):
        make_token("private.a", "x" * 151)


def test_read_token_says_what_a_token_holds():
    token = make_token("private.a", "alice", publish=False, ttl=30)
    claims = read_token(token, "private.a")
    assert (claims.room, claims.member, claims.publish) == ("private.a", "alice", False)


# --- open rooms and names -------------------------------------------------------------------


def test_a_valid_token_on_an_open_room_gives_the_member_its_name_and_rights():
    token = make_token("lobby", "dora", publish=False)
    assert grant_for(scope(token), "lobby") == Grant(member="dora", user=None, publish=False)


@pytest.mark.parametrize("kind", ["tampered", "expired", "other room"])
def test_a_token_that_is_not_valid_is_refused_even_on_an_open_room(kind):
    token = {
        "tampered": make_token("lobby", "dora")[:-2] + "xx",
        "expired": make_token("lobby", "dora", ttl=-1),
        "other room": make_token("lobby2", "dora"),
    }[kind]
    assert (
        refused(scope(token), "lobby")
        == {
            "tampered": TAMPERED,
            "expired": EXPIRED,
            "other room": OTHER_ROOM,
        }[kind]
    )


def test_no_token_on_an_open_room_names_the_signed_in_user_else_nobody():
    assert grant_for(scope(), "lobby") == Grant(member=None, user=None, publish=True)
    assert grant_for(scope(user=FakeUser(None)), "lobby") == Grant(None, None, True)
    assert grant_for(scope(user=FakeUser("erin")), "lobby") == Grant("erin", "erin", True)


def test_a_token_names_the_member_and_the_session_names_the_user():
    token = make_token("private.a", "alice-bot", publish=False)
    assert grant_for(scope(token, user=FakeUser("erin")), "private.a") == Grant(
        member="alice-bot", user="erin", publish=False
    )


def test_an_unresolved_lazy_user_is_a_wiring_error_for_grant_for():
    with pytest.raises(RuntimeError, match="agrant_for"):
        grant_for(scope(user=UserLazyObject()), "lobby")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_agrant_for_resolves_a_lazy_user_from_the_session():
    def signed_in_session():
        user = User.objects.create_user("frank", password="pw-" + secrets.token_hex(8))
        client = Client()
        client.force_login(user)
        return client.session

    session = await asyncio.to_thread(signed_in_session)
    made = {**scope(), "session": session, "user": UserLazyObject()}
    assert await agrant_for(made, "lobby") == Grant("frank", "frank", True)
    anonymous = {**scope(), "session": Client().session, "user": UserLazyObject()}
    assert await agrant_for(anonymous, "lobby") == Grant(None, None, True)


# --- refusals -------------------------------------------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch):
    """No earlier refusal in this process counts (the throttles are the process's)."""
    from app.logs import Throttled

    fresh = {reason: Throttled(room_access.logger) for reason in REASONS}
    monkeypatch.setattr(room_access, "_warnings", fresh)


def test_a_refusal_is_a_403_naming_the_reason_with_one_warning_without_the_token(
    caplog, fresh_warnings
):
    token = make_token("private.a", "alice", ttl=-1)
    with caplog.at_level(logging.WARNING, logger="app.room_access"):
        try:
            grant_for(scope(token), "private.a")
        except AccessRefused as error:
            messages = refusal(scope(token), error)
    start, body = messages
    assert start["type"] == "websocket.http.response.start" and start["status"] == 403
    assert body["body"] == b"403 Forbidden: expired token\n"
    [record] = [r for r in caplog.records if r.name == "app.room_access"]
    line = EscapingFormatter("%(levelname)s %(name)s %(message)s").format(record)
    assert line == (
        "WARNING app.room_access refused 127.0.0.1:50000 /ws/broadcast/async/x/: 403 expired token"
    )
    assert token not in line


def test_refusals_are_throttled_per_reason_under_a_flood(caplog, fresh_warnings):
    with caplog.at_level(logging.WARNING, logger="app.room_access"):
        for _ in range(500):
            refusal(scope(), AccessRefused(NO_TOKEN))
        refusal(scope(), AccessRefused(TAMPERED))  # another reason is not hidden by the flood
    lines = [r.getMessage() for r in caplog.records if r.name == "app.room_access"]
    assert len(lines) == 2, lines
    assert lines[0].endswith("403 no token") and lines[1].endswith("403 tampered token")


def test_a_refusal_without_the_denial_extension_is_a_close_which_the_server_answers_403():
    bare = {**scope(), "extensions": {}}
    assert refusal(bare, AccessRefused(OTHER_ROOM)) == [{"type": "websocket.close"}]


def test_access_refused_takes_only_the_four_reasons():
    assert REASONS == ("no token", "tampered token", "expired token", "token for another room")
    with pytest.raises(ValueError):
        AccessRefused("nope")


def test_a_traced_connection_does_not_repeat_a_room_token_into_its_records():
    token = make_token("private.a", "alice")
    summary = scope_summary({"query_string": f"since=e:1&token={token}&trace=abc".encode()})
    assert summary["query_string"] == "since=e:1&token=(token)&trace=(token)"


# --- manage.py room-token -------------------------------------------------------------------


def run_command(*args: str) -> str:
    out = io.StringIO()
    call_command("room-token", *args, stdout=out)
    return out.getvalue().strip()


def test_the_room_token_command_prints_a_valid_token():
    token = run_command("private.ops", "--member", "deploy-bot")
    assert grant_for(scope(token), "private.ops") == Grant("deploy-bot", None, True)


def test_the_room_token_command_read_only_and_ttl():
    token = run_command("private.ops", "--member", "watcher", "--read-only", "--ttl", "5")
    claims = read_token(token, "private.ops")
    assert claims.publish is False and claims.expires <= time.time() + 5
    with mock.patch("app.room_access.time.time", return_value=time.time() + 6):
        assert refused(scope(token), "private.ops") == EXPIRED


def test_the_room_token_command_refuses_a_bad_room_or_member():
    with pytest.raises(CommandError, match="room name"):
        run_command("bad room", "--member", "x")
    with pytest.raises(CommandError, match="member name"):
        run_command("private.ops", "--member", "")


def test_manage_py_room_token_runs_by_its_hyphenated_name():
    import subprocess
    import sys

    from tests.servers import ROOT

    done = subprocess.run(
        [sys.executable, "manage.py", "room-token", "private.x", "--member", "ops"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert read_token(done.stdout.strip(), "private.x").member == "ops"


# --- POST /rooms/<room>/token ---------------------------------------------------------------


def signed_in(username: str, **extra) -> tuple[Client, User]:
    user = User.objects.create_user(username, password="pw-" + secrets.token_hex(8), **extra)
    client = Client()
    client.force_login(user)
    return client, user


@pytest.mark.django_db
def test_a_user_with_a_grant_is_issued_a_token_for_the_room():
    client, user = signed_in("alice")
    RoomGrant.objects.create(user=user, rooms=r"private\.team-.+", publish=True)
    response = client.post("/rooms/private.team-a/token")
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["room"] == "private.team-a" and answer["member"] == "alice"
    assert answer["publish"] is True and answer["expires_in"] == 3600
    assert abs(answer["expires"] - (time.time() + 3600)) < 5
    assert "no-store" in response["Cache-Control"]
    grant = grant_for(scope(answer["token"]), "private.team-a")
    assert grant == Grant("alice", None, True)
    assert read_token(answer["token"], "private.team-a").expires == answer["expires"]


@pytest.mark.django_db
def test_a_read_only_grant_gives_a_read_only_token_and_a_group_grant_counts():
    client, user = signed_in("bob")
    team = Group.objects.create(name="team")
    user.groups.add(team)
    RoomGrant.objects.create(group=team, rooms=r"private\.team", publish=False)
    answer = client.post("/rooms/private.team/token").json()
    assert answer["publish"] is False
    assert grant_for(scope(answer["token"]), "private.team").publish is False
    RoomGrant.objects.create(user=user, rooms=r"private\..+", publish=True)  # the widest wins
    assert client.post("/rooms/private.team/token").json()["publish"] is True


@pytest.mark.django_db
def test_a_user_without_a_grant_for_the_room_is_refused_403(caplog):
    client, user = signed_in("carol")
    RoomGrant.objects.create(user=user, rooms=r"private\.other")
    RoomGrant.objects.create(user=user, rooms=r"private\.(")  # does not compile: covers nothing
    with caplog.at_level(logging.WARNING):
        response = client.post("/rooms/private.team-a/token")
    assert response.status_code == 403
    assert response.json() == {"error": "no grant for room 'private.team-a'"}
    assert "token" not in response.json()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) <= 1, lines  # one throttled line; not django.request's "Forbidden" too


@pytest.mark.django_db
def test_an_anonymous_client_is_refused_403():
    response = Client().post("/rooms/private.a/token")
    assert response.status_code == 403
    assert "not signed in" in response.json()["error"]
    assert Client().post("/rooms/lobby/token").status_code == 403


@pytest.mark.django_db
def test_an_inactive_user_holds_no_grant_and_a_superuser_holds_every_one():
    admin = User.objects.create_superuser("root", password="pw-" + secrets.token_hex(8))
    assert room_rights(admin, "private.anything") is True
    admin.is_active = False
    assert room_rights(admin, "private.anything") is None
    client, _ = signed_in("boss", is_superuser=True)
    assert client.post("/rooms/private.board/token").json()["publish"] is True


@pytest.mark.django_db
def test_any_signed_in_user_gets_a_token_for_an_open_room_named_after_itself():
    client, _ = signed_in("dora")
    answer = client.post("/rooms/lobby/token").json()
    assert (answer["member"], answer["publish"]) == ("dora", True)
    assert grant_for(scope(answer["token"]), "lobby").member == "dora"


@pytest.mark.django_db
def test_the_endpoint_refuses_a_bad_room_name_get_and_a_missing_csrf_token():
    client, user = signed_in("erin")
    RoomGrant.objects.create(user=user, rooms=".*")
    assert client.post("/rooms/bad%20room/token").status_code == 400
    assert client.get("/rooms/private.a/token").status_code == 405  # POST: it issues a credential
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post("/rooms/private.a/token").status_code == 403  # no CSRF token
    csrf = strict.get("/").cookies["csrftoken"].value
    own = strict.post("/rooms/private.a/token", HTTP_X_CSRFTOKEN=csrf)
    assert own.status_code == 200 and own.json()["token"]


@pytest.mark.django_db
@override_settings(ROOM_TOKEN_TTL=120)
def test_the_endpoints_tokens_live_room_token_ttl():
    client, _ = signed_in("gus")
    assert client.post("/rooms/lobby/token").json()["expires_in"] == 120


@pytest.mark.django_db
def test_a_grant_is_held_by_a_user_or_a_group_not_both():
    from django.db import IntegrityError, transaction

    user = User.objects.create_user("hal")
    group = Group.objects.create(name="g")
    with pytest.raises(IntegrityError), transaction.atomic():
        RoomGrant.objects.create(user=user, group=group, rooms="x")
    with pytest.raises(IntegrityError), transaction.atomic():
        RoomGrant.objects.create(rooms="x")


# --- no token in a log line -----------------------------------------------------------------


def test_the_projects_formatter_redacts_a_room_token_in_any_query():
    token = make_token("private.a", "alice")
    encoded = token.replace(":", "%3A")
    ours = EscapingFormatter("%(message)s")
    for text in (
        f"/ws/broadcast/async/private.a/?token={token}",
        f"/ws/broadcast/async/private.a/?since=e:1&token={token}&x=1",
        f"/ws/broadcast/async/private.a/?TOKEN={encoded}",
        # what the page asks /handshake-check when a room refuses it: the socket's URL, encoded
        f"/handshake-check?path=%2Fws%2Fbroadcast%2Fasync%2Fprivate.a%2F%3Ftoken%3D{encoded}",
        f"/handshake-check?path=%2Fws%2Fb%2Fasync%2Fp.a%2F%3Fsince%3De%3A1%26token%3D{encoded}",
        f"/handshake-check?path=%2fws%2fb%2fasync%2fp.a%2f%3ftoken%3d{encoded}",
    ):
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, "%s", (text,), None)
        line = ours.format(record)
        assert "(redacted)" in line, line
        for part in (token, encoded, *token.split(":")):
            assert part not in line, line


@pytest.mark.server
@pytest.mark.asyncio
async def test_no_room_token_reaches_uvicorns_access_log_or_the_projects(uvicorn_server):
    """A ``?token=`` on a WebSocket handshake (the echo route ignores it) and on an HTTP request:
    uvicorn's access lines show ``token=(redacted)``, and no line holds the token."""
    from websockets.asyncio.client import connect as ws_connect

    from tests.test_security import raw_get

    tokens = [make_token("private.a", "alice"), make_token("lobby", "bob")]
    url = f"{uvicorn_server.ws_url}/ws/echo/async/?since=e:1&token={tokens[0]}"
    async with ws_connect(url) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
    status, _ = await asyncio.to_thread(raw_get, uvicorn_server.port, f"/healthz?token={tokens[1]}")
    assert status == 200
    for pattern in (
        r'"WebSocket /ws/echo/async/\?since=e:1&token=\(redacted\)" \[accepted\]',
        r'"GET /healthz\?token=\(redacted\) HTTP/1\.1" 200',
    ):
        uvicorn_server.wait_for_log(pattern)
    log = uvicorn_server.log()
    assert not [token for token in tokens if token in log]
    for token in tokens:  # nor the signature alone, nor the payload alone
        payload, signature = token.rsplit(":", 1)
        assert signature not in log and payload not in log
