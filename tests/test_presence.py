"""Who is here (issue 31): the welcome's snapshot, join and leave frames, one member with several
connections, the bounds, and a process killed without a word (on Redis, two processes)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid

import pytest
from channels.layers import get_channel_layer
from websockets.asyncio.client import connect

from app.presence import Who
from tests.conftest import clean_processes

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def new_room() -> str:
    return f"presence-{uuid.uuid4().hex[:10]}"


async def v1(factory, room: str, kind: str = "async"):
    communicator = factory(f"/ws/broadcast/{kind}/{room}/", subprotocols=["rooms.v1"])
    assert (await communicator.connect())[0]
    return communicator, json.loads(await communicator.receive_from())


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_the_welcome_counts_everyone_and_the_others_see_joins_and_leaves(
    communicator_factory, kind
):
    room = new_room()
    first, welcome = await v1(communicator_factory, room, kind)
    me = welcome["member"]
    assert welcome["presence"] == {"count": 1, "members": [{"member": me, "user": None}]}
    second, other = await v1(communicator_factory, room, kind)
    assert other["presence"]["count"] == 2
    assert {m["member"] for m in other["presence"]["members"]} == {me, other["member"]}
    joined = json.loads(await first.receive_from())
    assert joined == {"type": "join", "member": {"member": other["member"], "user": None}}
    await first.send_to(text_data="hi")
    assert json.loads(await second.receive_from())["type"] == "message"  # not its own join
    assert json.loads(await first.receive_from())["text"] == "hi"
    plain = communicator_factory(f"/ws/broadcast/{kind}/{room}/")  # no frames of presence
    assert (await plain.connect())[0]
    assert json.loads(await first.receive_from())["type"] == "join"
    await second.disconnect()
    left = json.loads(await first.receive_from())
    assert left == {"type": "leave", "member": {"member": other["member"], "user": None}}
    await plain.send_to(text_data="after")
    assert await plain.receive_from() == "after"  # the plain member got no join or leave
    for communicator in (first, plain):
        await communicator.disconnect()


async def test_one_name_with_several_connections_is_one_member():
    layer = get_channel_layer("rooms")
    room, who, other = new_room(), Who("ana", "ana"), Who("bo")
    watcher = await layer.new_channel()
    await layer.join(room, watcher, None, other, watch=True)
    channels = [await layer.new_channel() for _ in range(2)]
    first = await layer.join(room, channels[0], None, who)
    second = await layer.join(room, channels[1], None, who)
    assert first.presence["count"] == second.presence["count"] == 2
    events = [await layer.receive(watcher)]
    await layer.leave(room, channels[0])  # ana still has a connection: still here
    await layer.leave(room, channels[1])
    events.append(await layer.receive(watcher))
    frames = [json.loads(event["frame"]) for event in events]
    assert frames == [
        {"type": "join", "member": {"member": "ana", "user": "ana"}},
        {"type": "leave", "member": {"member": "ana", "user": "ana"}},
    ]
    assert not layer.queued(watcher)  # one join, one leave: nothing else
    await layer.leave(room, watcher)


async def test_the_welcome_lists_at_most_the_list_size_and_events_stop_past_the_bound(settings):
    from channels.layers import channel_layers

    settings.ROOM_PRESENCE_LIST, settings.ROOM_PRESENCE_EVENTS_MAX = 2, 3
    channel_layers.backends.pop("rooms", None)
    try:
        layer = get_channel_layer("rooms")
        room = new_room()
        watcher = await layer.new_channel()
        await layer.join(room, watcher, None, Who("w"), watch=True)
        joins = []
        for number in range(4):
            joined = await layer.join(room, await layer.new_channel(), None, Who(f"m{number}"))
            joins.append(joined.presence)
        assert [p["count"] for p in joins] == [2, 3, 4, 5]  # always the whole room
        assert all(len(p["members"]) == 2 for p in joins)
        told = []
        while layer.queued(watcher):
            told.append(json.loads((await layer.receive(watcher))["frame"])["member"]["member"])
        assert told == ["m0", "m1"]  # the room had 4 and 5 members at the next joins
    finally:
        channel_layers.backends.pop("rooms", None)


# --- on Redis, across two processes ---------------------------------------------------------


@pytest.fixture
def presence_servers(redis_server, server_env):
    env = {**server_env, "REDIS_URL": redis_server.url, "ROOM_PRESENCE_TIMEOUT": "3"}
    yield from clean_processes(env, count=2)


async def recv_json(ws, timeout: float = 5) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


@pytest.mark.redis
@pytest.mark.server
async def test_presence_across_processes_and_a_killed_process_leaves_no_ghosts(presence_servers):
    a, b = presence_servers
    room = new_room()
    url = "{}/ws/broadcast/{}/" + room + "/"
    async with connect(url.format(a.ws_url, "async"), subprotocols=["rooms.v1"]) as here:
        mine = (await recv_json(here))["member"]
        there = await connect(url.format(b.ws_url, "sync"), subprotocols=["rooms.v1"])
        welcome = await recv_json(there)
        assert welcome["presence"]["count"] == 2
        assert (await recv_json(here))["member"]["member"] == welcome["member"]
        await there.close()
        assert (await recv_json(here))["type"] == "leave"
        ghosts = [
            await connect(url.format(b.ws_url, "async"), subprotocols=["rooms.v1"])
            for _ in range(3)
        ]
        names = {(await recv_json(ws))["member"] for ws in ghosts}
        assert {(await recv_json(here))["member"]["member"] for _ in ghosts} == names
        b.process.kill()  # no close, no leave script: its entries stop being renewed
        killed = time.monotonic()
        left = {(await recv_json(here, 15))["member"]["member"] for _ in ghosts}
        took = time.monotonic() - killed
        assert left == names
        assert took < 3 * 4 / 3 + 2, took  # within the timeout and a third of it (3 s here)
        joined_later = await connect(url.format(a.ws_url, "async"), subprotocols=["rooms.v1"])
        presence = (await recv_json(joined_later))["presence"]
        assert [m["member"] for m in presence["members"]].count(mine) == 1
        assert presence["count"] == 2  # the killed process's members are gone
        with urllib.request.urlopen(f"{a.http_url}/rooms/{room}/presence", timeout=5) as answer:
            assert json.load(answer) == presence  # the operators' view of the same
        await joined_later.close()


async def test_the_rooms_presence_answers_operators_as_metrics_does(communicator_factory, settings):
    from asgiref.sync import sync_to_async
    from django.test import Client

    def get(path: str, **defaults):
        return sync_to_async(Client(**defaults).get)(path)

    room = new_room()
    member, welcome = await v1(communicator_factory, room)
    assert (await get(f"/rooms/{room}/presence")).json() == welcome["presence"]
    assert (await get(f"/rooms/{room}/presence", REMOTE_ADDR="203.0.113.9")).status_code == 403
    assert (await get("/rooms/bad%20name/presence")).status_code == 400
    settings.METRICS_ACCESS, settings.METRICS_TOKEN = "token", "s3cret"
    assert (await get(f"/rooms/{room}/presence")).status_code == 401
    bearer = await get(f"/rooms/{room}/presence", HTTP_AUTHORIZATION="Bearer s3cret")
    assert bearer.json()["count"] == 1
    await member.disconnect()


async def test_a_frame_its_snapshot_covers_is_not_sent_and_a_later_one_held_meanwhile_is():
    """On Redis a join published before a member's snapshot can reach its process after the
    member registered, and one published after it can come before the snapshot's reply: the
    frames are numbered, and each watcher gets those after its snapshot's number, once."""
    from app.presence import frame

    layer = get_channel_layer("rooms")
    room, watcher = new_room(), await layer.new_channel()
    state = await layer.open(room)
    state.members[watcher] = Who("w")
    state.watchers[watcher] = []  # registered; its snapshot not known yet
    covered, later = frame("join", Who("old")), frame("join", Who("new"))
    layer.announce(state, covered, "old", 7)
    layer.announce(state, later, "new", 8)
    layer.watching(state, watcher, 7)  # the snapshot counted "old"
    layer.announce(state, frame("leave", Who("old")), "old", 6)  # before the snapshot: stale
    layer.announce(state, frame("leave", Who("new")), "new", 9)
    told = []
    while layer.queued(watcher):
        told.append(json.loads((await layer.receive(watcher))["frame"]))
    assert [(f["type"], f["member"]["member"]) for f in told] == [("join", "new"), ("leave", "new")]
    del state.members[watcher], state.watchers[watcher]
