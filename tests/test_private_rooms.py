"""Who may join, through the consumers (issue 31): each refusal at the handshake, a token's
name in the welcome, read-only members, and a signed-in user's name on an open room."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from asgiref.sync import sync_to_async

from app.room_access import make_token
from tests.conftest import refused_handshake

pytestmark = [pytest.mark.django_db(transaction=True)]


def private_room() -> str:
    return f"private.{uuid.uuid4().hex[:8]}"


async def refused(factory, path: str) -> tuple[int, str]:
    communicator = factory(
        path, subprotocols=["rooms.v1"], extensions={"websocket.http.response": {}}
    )
    return await refused_handshake(communicator)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_each_refusal_is_a_403_that_says_which(communicator_factory, kind, caplog):
    room = private_room()
    expired = make_token(room, "ana", ttl=-1)
    other = make_token(private_room(), "ana")
    tampered = make_token(room, "ana")[:-2] + "xx"
    cases = {
        "": "no token",
        f"?token={tampered}": "tampered token",
        f"?token={expired}": "expired token",
        f"?token={other}": "token for another room",
    }
    with caplog.at_level(logging.WARNING):
        for query, reason in cases.items():
            status, body = await refused(
                communicator_factory, f"/ws/broadcast/{kind}/{room}/{query}"
            )
            assert (status, body) == (403, f"403 Forbidden: {reason}\n")
    assert not any(token in caplog.text for token in (expired, other, tampered))
    # An invalid token is refused on an open room too.
    status, _ = await refused(
        communicator_factory, f"/ws/broadcast/{kind}/open-x/?token={tampered}"
    )
    assert status == 403


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_token_names_the_member_and_a_read_only_one_reads_but_may_not_send(
    communicator_factory, kind
):
    room = private_room()
    writer = communicator_factory(
        f"/ws/broadcast/{kind}/{room}/?token={make_token(room, 'ana')}", subprotocols=["rooms.v1"]
    )
    reader = communicator_factory(
        f"/ws/broadcast/{kind}/{room}/?token={make_token(room, 'bo', publish=False)}",
        subprotocols=["rooms.v1"],
    )
    assert (await writer.connect())[0] and (await reader.connect())[0]
    assert json.loads(await writer.receive_from())["member"] == "ana"
    assert json.loads(await reader.receive_from())["member"] == "bo"
    assert json.loads(await writer.receive_from())["type"] == "join"
    await writer.send_to(text_data="from ana")
    for communicator in (writer, reader):
        frame = json.loads(await communicator.receive_from())
        assert (frame["from"], frame["text"]) == ("ana", "from ana")
    await reader.send_to(text_data="from bo")
    close = await reader.receive_output()
    assert close == {"type": "websocket.close", "code": 1008, "reason": "read-only member"}
    await reader.disconnect()
    left = json.loads(await writer.receive_from())  # bo's message never reached the room
    assert left == {"type": "leave", "member": {"member": "bo", "user": None}}


@pytest.mark.asyncio
async def test_an_open_room_names_a_signed_in_member_after_its_user(communicator_factory):
    from django.contrib.auth.models import User
    from django.test import Client

    await sync_to_async(User.objects.create_user)("carol", password="pw")
    client = Client()
    await sync_to_async(client.login)(username="carol", password="pw")
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    member = communicator_factory(
        f"/ws/broadcast/async/open-{uuid.uuid4().hex[:6]}/", subprotocols=["rooms.v1"]
    )
    member.scope["headers"].append((b"cookie", cookie))
    assert (await member.connect())[0]
    welcome = json.loads(await member.receive_from())
    assert welcome["member"] == "carol"
    assert welcome["presence"]["members"] == [{"member": "carol", "user": "carol"}]


def sign_in_and_grant(name: str, rooms: str, *, read_only: bool = False):
    """A user made, granted through ``manage.py room-grant``, and signed in through the login
    page, as an operator and a user would."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    User.objects.create_user(name, password="pw")
    call_command("room-grant", name, rooms, *(["--read-only"] if read_only else []))
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    signed_in = client.post(
        "/accounts/login/",
        {"username": name, "password": "pw", "csrfmiddlewaretoken": page.context["csrf_token"]},
    )
    assert signed_in.status_code == 302
    return client


def test_a_granted_user_signs_in_and_is_issued_a_token_that_opens_its_room():
    from app.room_access import grant_for

    client = sign_in_and_grant("dora", r"private\.team-.*", read_only=True)
    csrf = client.get("/").cookies["csrftoken"].value
    issued = client.post("/rooms/private.team-a/token", HTTP_X_CSRFTOKEN=csrf)
    assert issued.status_code == 200, issued.content
    token = issued.json()["token"]
    grant = grant_for({"query_string": f"token={token}".encode()}, "private.team-a")
    assert (grant.member, grant.publish) == ("dora", False)
    refused = client.post("/rooms/private.other/token", HTTP_X_CSRFTOKEN=csrf)
    assert refused.status_code == 403
