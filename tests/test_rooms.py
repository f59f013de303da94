"""Broadcast rooms through WebsocketCommunicator and the in-memory channel layer."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from app.layers import message_bytes
from app.rooms import MAX_ROOM_NAME_LENGTH
from tests.conftest import refused_handshake

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


#: A room message sent by the test after the others: a member's next message must be this one
#: if nothing else was queued for it (instead of waiting a fixed time for nothing to come).
LAST = {"type": "websocket.send", "text": "last, from the test"}


def rooms() -> object:
    """The rooms engine (the ``rooms`` channel layer alias): in memory in these tests."""
    return get_channel_layer("rooms")


async def publish(room: str, message: dict) -> None:
    await rooms().publish(room, "the-test", message)


def new_room() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def member(factory, room: str, kind: str = "async"):
    communicator = factory(f"/ws/broadcast/{kind}/{room}/")
    accepted, _ = await communicator.connect()
    assert accepted
    return communicator


@pytest.fixture(params=["sync", "async"])
def kind(request) -> str:
    return request.param


async def test_join_and_leave_the_room(communicator_factory, kind):
    room = new_room()
    communicator = await member(communicator_factory, room, kind)
    assert len(rooms().rooms[room].members) == 1
    await communicator.disconnect()
    assert room not in rooms().rooms  # nothing kept, nothing to come back to: forgotten


async def test_every_member_gets_every_message_sender_included(communicator_factory, kind):
    room = new_room()
    members = [await member(communicator_factory, room, kind) for _ in range(5)]
    await members[2].send_to(text_data="to everyone")
    await members[0].send_to(bytes_data=b"\x00bytes\xff")
    orders = []
    for communicator in members:
        orders.append((await communicator.receive_from(), await communicator.receive_from()))
    await publish(room, LAST)
    for communicator in members:
        assert await communicator.receive_from() == LAST["text"]  # nothing else before it
        await communicator.disconnect()
    # Two senders on two connections: no order between them, but one order for the whole room.
    assert set(orders[0]) == {"to everyone", b"\x00bytes\xff"}
    assert orders == [orders[0]] * len(members)


async def test_sync_and_async_members_share_a_room(communicator_factory):
    room = new_room()
    sync_member = await member(communicator_factory, room, "sync")
    async_member = await member(communicator_factory, room, "async")
    await sync_member.send_to(text_data="from sync")
    await async_member.send_to(text_data="from async")
    for communicator in (sync_member, async_member):
        # Two senders: each one's order holds, not an order between them.
        assert sorted([await communicator.receive_from() for _ in range(2)]) == [
            "from async",
            "from sync",
        ]
        await communicator.disconnect()


async def test_a_custom_event_reaches_its_named_handler(communicator_factory, kind):
    """A message published from outside any consumer comes as a ``room.message`` event,
    handled by ``room_message``."""
    room = new_room()
    communicator = await member(communicator_factory, room, kind)
    await publish(room, {"type": "websocket.send", "text": "pushed"})
    assert await communicator.receive_from() == "pushed"
    await communicator.disconnect()


async def test_members_of_other_rooms_hear_nothing(communicator_factory):
    other_room = new_room()
    here, elsewhere = (
        await member(communicator_factory, new_room()),
        await member(communicator_factory, other_room),
    )
    await here.send_to(text_data="only here")
    assert await here.receive_from() == "only here"
    # Delivered to "here", so queued for every member of its room by now. "elsewhere"'s next
    # message is one sent to its own room afterwards: nothing of the other room came first.
    await publish(other_room, LAST)
    assert await elsewhere.receive_from() == LAST["text"]


async def test_oversize_message_in_a_room_closes_with_1009(communicator_factory, kind, settings):
    communicator = await member(communicator_factory, new_room(), kind)
    await communicator.send_to(bytes_data=b"x" * (settings.ECHO_MAX_MESSAGE_BYTES + 1))
    close = await communicator.receive_output()
    assert (close["type"], close["code"]) == ("websocket.close", 1009)


@pytest.mark.parametrize(
    "room, why",
    [
        ("bad name!", "room name may hold only ASCII letters, digits, '-', '_' and '.'"),
        ("caf\u00e9", "room name may hold only ASCII letters, digits, '-', '_' and '.'"),
        (
            "r" * (MAX_ROOM_NAME_LENGTH + 1),
            f"room name must be 1 to {MAX_ROOM_NAME_LENGTH} characters, not 81",
        ),
        ("", f"room name must be 1 to {MAX_ROOM_NAME_LENGTH} characters, not 0"),
    ],
)
async def test_bad_room_names_are_refused_at_the_handshake(
    communicator_factory, kind, room, why, caplog
):
    communicator = communicator_factory(
        f"/ws/broadcast/{kind}/{room}/", extensions={"websocket.http.response": {}}
    )
    with caplog.at_level(logging.WARNING):
        await communicator.send_input({"type": "websocket.connect"})
        start = await communicator.receive_output()
        body = await communicator.receive_output()
        await communicator.wait()
    assert start["status"] == 400
    assert body["body"].decode() == f"400 Bad Request: {why}\n"
    assert communicator.future.exception() is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]


@pytest.mark.parametrize(
    "since, why",
    [
        ("nocolon", "since must be <epoch>:<offset>, the epoch 1 to 64 of A-Z a-z 0-9 - _"),
        (":5", "since must be <epoch>:<offset>, the epoch 1 to 64 of A-Z a-z 0-9 - _"),
        ("ep%20och:5", "since must be <epoch>:<offset>, the epoch 1 to 64 of A-Z a-z 0-9 - _"),
        ("epoch:-1", "since's offset must be an integer from 0 to 2**63-1"),
        ("epoch:1.5", "since's offset must be an integer from 0 to 2**63-1"),
        ("epoch:", "since's offset must be an integer from 0 to 2**63-1"),
        (f"epoch:{2**63}", "since's offset must be an integer from 0 to 2**63-1"),
        ("a:1&since=a:2", "since given more than once"),
    ],
)
async def test_a_malformed_since_is_refused_at_the_handshake(communicator_factory, since, why):
    communicator = communicator_factory(
        f"/ws/broadcast/async/{new_room()}/?since={since}",
        subprotocols=["rooms.v1"],
        extensions={"websocket.http.response": {}},
    )
    assert await refused_handshake(communicator) == (400, f"400 Bad Request: {why}\n")


async def test_a_room_name_of_the_maximum_length_is_fine(communicator_factory):
    communicator = await member(communicator_factory, "r" * MAX_ROOM_NAME_LENGTH)
    await communicator.disconnect()


async def test_a_full_channel_is_logged_not_silently_dropped(
    communicator_factory, settings, caplog
):
    """A member that does not read fills its channel; the layer's drop is a WARNING line."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "app.layers.BoundedInMemoryChannelLayer", "CONFIG": {"capacity": 3}}
    }
    channel_layers.backends.pop("default", None)
    try:
        room = new_room()
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(f"room.{room}", channel)
        with caplog.at_level(logging.WARNING, logger="app.layers"):
            for i in range(5):
                await layer.group_send(f"room.{room}", {"type": "room.message", "text": str(i)})
        assert [await layer.receive(channel) for _ in range(3)] == [
            {"type": "room.message", "text": str(i)} for i in range(3)
        ]
        drops = [r.getMessage() for r in caplog.records]
        # The first drop is a line; the next ones are counted into one line every 10 s.
        assert drops == [f"dropped a room.message for {channel}: channel full (3 messages queued)"]
        assert layer.drops.suppressed == 1
    finally:
        channel_layers.backends.pop("default", None)


@pytest.fixture
def small_layer(settings):
    """The project's in-memory layer with small bounds, fresh for one test."""
    from channels.layers import channel_layers

    def make(**config):
        settings.CHANNEL_LAYERS = {
            "default": {"BACKEND": "app.layers.BoundedInMemoryChannelLayer", "CONFIG": config}
        }
        channel_layers.backends.pop("default", None)
        return get_channel_layer()

    yield make
    channel_layers.backends.pop("default", None)


async def test_a_channel_holds_at_most_capacity_bytes(small_layer):
    layer = small_layer(capacity=100, capacity_bytes=2_000)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "x", "text": "a" * 1_000})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "x", "text": "b" * 1_000})  # 2 x 1,201 > 2,000
    assert (await layer.receive(channel))["text"] == "a" * 1_000
    await layer.send(channel, {"type": "x", "text": "c" * 1_000})  # room again once read
    assert layer.queued_bytes[channel] == message_bytes({"type": "x", "text": "c" * 1_000})


async def test_an_expired_message_is_dropped_and_logged_and_the_member_stays_in_its_groups(
    small_layer, caplog
):
    layer = small_layer(expiry=0)  # every message has expired by the time it is read
    channel = await layer.new_channel()
    await layer.group_add("room.x", channel)
    with caplog.at_level(logging.WARNING, logger="app.layers"):
        await layer.group_send("room.x", {"type": "room.message", "text": "late"})
        await layer.send(channel, {"type": "room.message", "text": "later"})
        layer.expiry = 60
        await layer.send(channel, {"type": "room.message", "text": "fresh"})
        assert (await layer.receive(channel))["text"] == "fresh"
    assert "dropped 2 message(s) for" in caplog.text and "(expiry)" in caplog.text
    assert channel in layer.groups["room.x"]  # Channels' own layer would have removed it


async def test_a_room_message_costs_one_look_at_each_member_not_at_every_channel(
    small_layer, monkeypatch
):
    """Channels' layer scans every channel of the process on every receive: N^2 per message."""
    layer = small_layer()
    members = [await layer.new_channel() for _ in range(300)]
    for channel in members:
        await layer.group_add("room.big", channel)
    looks = []
    original = layer._drop_expired
    monkeypatch.setattr(layer, "_drop_expired", lambda c, q: looks.append(c) or original(c, q))
    layer.next_sweep = float("inf")  # the once-a-second scan is not due in this test
    await layer.group_send("room.big", {"type": "room.message", "text": "hi"})
    for channel in members:
        assert (await layer.receive(channel))["text"] == "hi"
    assert len(looks) == len(members)  # one per receive: linear in the room's size


async def test_a_gap_the_history_cannot_mend_closes_1013_with_the_count(
    communicator_factory, kind, caplog
):
    room = new_room()
    communicator = await member(communicator_factory, room, kind)
    with caplog.at_level(logging.WARNING):
        await communicator.send_input(room_event(1, "1"))
        assert await communicator.receive_from() == "1"
        await communicator.send_input(room_event(4, "4"))  # 2 and 3 are in no history
        close = await communicator.receive_output()
    reason = "fell behind past the room's history: 2 message(s) lost, resume"
    assert close == {"type": "websocket.close", "code": 1013, "reason": reason}
    assert f"closing 1013 TRY_AGAIN_LATER: {reason}" in caplog.text


def room_event(offset: int, text: str) -> dict:
    from app.room_log import payload
    from app.room_log import room_event as event

    return event(offset, payload("someone", {"text": text}))


async def test_a_message_had_already_is_not_forwarded_again(communicator_factory):
    member = communicator_factory(f"/ws/broadcast/async/{new_room()}/")
    assert (await member.connect())[0]
    for _ in range(2):
        await member.send_input(room_event(1, "once"))
    await member.send_input(room_event(2, "next"))
    assert await member.receive_from() == "once"
    assert await member.receive_from() == "next"
    await member.disconnect()


async def test_a_rooms_offsets_are_consecutive_from_1(communicator_factory):
    room = new_room()
    v1 = communicator_factory(f"/ws/broadcast/async/{room}/", subprotocols=["rooms.v1"])
    assert (await v1.connect())[0]
    assert json.loads(await v1.receive_from())["offset"] == 0
    for text in "abc":
        await publish(room, {"type": "websocket.send", "text": text})
    frames = [json.loads(await v1.receive_from()) for _ in range(3)]
    assert [(f["offset"], f["text"], f["from"]) for f in frames] == [
        (1, "a", "the-test"),
        (2, "b", "the-test"),
        (3, "c", "the-test"),
    ]
    await v1.disconnect()


@pytest.fixture
def small_rooms(settings):
    """The in-memory rooms engine with small bounds, fresh for one test."""
    from channels.layers import channel_layers

    def make(*, history: int = 2000, total: int = 256 * 1024 * 1024, **config):
        settings.ROOM_HISTORY_SIZE = history
        settings.ROOM_HISTORY_TOTAL_BYTES = total
        settings.CHANNEL_LAYERS = {
            **settings.CHANNEL_LAYERS,
            "rooms": {"BACKEND": "app.room_engine.MemoryRooms", "CONFIG": config},
        }
        channel_layers.backends.pop("rooms", None)
        return rooms()

    yield make
    channel_layers.backends.pop("rooms", None)


async def test_a_member_whose_queue_overflowed_gets_the_rest_from_the_history(
    communicator_factory, small_rooms, kind
):
    """Messages dropped from a full queue, even at the tail with nothing after them to show
    the gap, are mended from the room's history, in order, once."""
    small_rooms(capacity=2)
    room = new_room()
    communicator = await member(communicator_factory, room, kind)
    for i in range(5):  # no await yields to the member in between: 3 of 5 find its queue full
        await publish(room, {"type": "websocket.send", "text": str(i)})
    assert [await communicator.receive_from() for _ in range(5)] == ["0", "1", "2", "3", "4"]
    await publish(room, LAST)
    assert await communicator.receive_from() == LAST["text"]  # nothing twice before it


async def test_a_member_that_fell_past_the_history_is_closed_1013_with_the_count(
    communicator_factory, small_rooms, kind
):
    small_rooms(capacity=2, history=2)
    room = new_room()
    communicator = await member(communicator_factory, room, kind)
    for i in range(5):  # 2 queued, 3 dropped for it; the history holds only the last 2
        await publish(room, {"type": "websocket.send", "text": str(i)})
    assert [await communicator.receive_from() for _ in range(2)] == ["0", "1"]  # queued
    assert await communicator.receive_output() == {
        "type": "websocket.close",
        "code": 1013,
        "reason": "fell behind past the room's history: 3 message(s) lost, resume",
    }


async def test_the_once_a_second_sweep_leaves_a_waiting_member_its_channel(small_layer):
    """A member idle in ``receive`` waits on its queue: the sweep must not forget that queue."""
    layer = small_layer()
    channel = await layer.new_channel()
    await layer.group_add("room.quiet", channel)
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)  # let it reach its wait on the (empty) queue
    layer.next_sweep = 0.0  # the sweep is due at the next call
    await layer.group_send("room.quiet", {"type": "room.message", "text": "after a quiet while"})
    assert (await asyncio.wait_for(waiting, 1))["text"] == "after a quiet while"


async def test_a_receive_cancelled_with_its_consumer_forgets_the_channel(small_layer):
    """Queues are kept while read, not across consumers: a queue outliving its consumer would
    be bound to that consumer's event loop (hypothesis, reseeding ``random``, reuses names)."""
    layer = small_layer()
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)  # let it reach its wait on the (empty) queue
    assert channel in layer.channels
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert channel not in layer.channels


async def test_a_layer_whose_transport_closed_under_it_is_unavailable_not_a_bug(
    communicator_factory, monkeypatch
):
    """redis-py 8 raises uvloop's RuntimeError when the Redis it connects to dies mid-handshake
    (a Sentinel failover): a 1013 like any layer failure, not a 1011. Any other RuntimeError of
    the layer stays the application's error."""
    room = new_room()
    layer = rooms()
    receive, armed = layer.receive, []

    async def closed_when_armed(channel):
        if armed:
            raise RuntimeError(
                "unable to perform operation on <TCPTransport closed=True>; the handler is closed"
            )
        return await receive(channel)

    monkeypatch.setattr(layer, "receive", closed_when_armed)
    communicator = await member(communicator_factory, room)
    armed.append(True)
    await publish(room, LAST)  # the receive under way returns it; the next fails
    assert await communicator.receive_from() == LAST["text"]
    close = await communicator.receive_output(timeout=5)
    assert (close["type"], close["code"]) == ("websocket.close", 1013)


async def v1_member(factory, room: str, since: str | None = None, kind: str = "async"):
    query = f"?since={since}" if since is not None else ""
    communicator = factory(f"/ws/broadcast/{kind}/{room}/{query}", subprotocols=["rooms.v1"])
    accepted, subprotocol = await communicator.connect()
    assert accepted and subprotocol == "rooms.v1"
    return communicator, json.loads(await communicator.receive_from())


async def test_a_resume_within_the_history_recovers_exactly_what_was_missed(
    communicator_factory, kind
):
    room = new_room()
    first, welcome = await v1_member(communicator_factory, room, kind=kind)
    assert welcome["offset"] == 0 and "recovered" not in welcome
    await publish(room, {"type": "websocket.send", "text": "seen"})
    assert json.loads(await first.receive_from())["offset"] == 1
    await first.disconnect()
    for text in ("missed 1", "missed 2"):
        await publish(room, {"type": "websocket.send", "text": text})
    again, resumed = await v1_member(communicator_factory, room, f"{welcome['epoch']}:1", kind)
    assert (resumed["recovered"], resumed["epoch"], resumed["offset"]) == (
        True,
        welcome["epoch"],
        3,
    )
    await publish(room, {"type": "websocket.send", "text": "live"})
    frames = [json.loads(await again.receive_from()) for _ in range(3)]
    assert [(f["offset"], f["text"]) for f in frames] == [
        (2, "missed 1"),
        (3, "missed 2"),
        (4, "live"),
    ]
    await publish(room, LAST)
    assert json.loads(await again.receive_from())["text"] == LAST["text"]  # nothing twice
    await again.disconnect()


@pytest.mark.parametrize(
    "since, why",
    [
        ("other-epoch:1", "another epoch"),
        ("{epoch}:99", "beyond the room's last offset"),
        ("{epoch}:1000000000000000000", "a huge offset"),
    ],
)
async def test_a_resume_that_cannot_be_served_says_not_recovered(communicator_factory, since, why):
    room = new_room()
    keeper, welcome = await v1_member(communicator_factory, room)
    await publish(room, {"type": "websocket.send", "text": "one"})
    since = since.format(epoch=welcome["epoch"])
    member, resumed = await v1_member(communicator_factory, room, since)
    assert (resumed["recovered"], resumed["epoch"], resumed["offset"]) == (
        False,
        welcome["epoch"],
        1,
    ), why
    await publish(room, {"type": "websocket.send", "text": "two"})
    assert json.loads(await member.receive_from())["offset"] == 2  # live from the welcome on
    for communicator in (keeper, member):
        await communicator.disconnect()


async def test_with_history_off_a_resume_is_never_recovered(communicator_factory, small_rooms):
    small_rooms(history=0)
    room = new_room()
    _keeper, welcome = await v1_member(communicator_factory, room)
    await publish(room, {"type": "websocket.send", "text": "one"})
    await publish(room, {"type": "websocket.send", "text": "two"})
    _, resumed = await v1_member(communicator_factory, room, f"{welcome['epoch']}:1")
    assert (resumed["recovered"], resumed["offset"]) == (False, 2)
    assert not rooms().rooms[room].history.entries


async def test_the_last_member_leaving_keeps_the_room_to_come_back_to(communicator_factory):
    room = new_room()
    member, welcome = await v1_member(communicator_factory, room)
    await member.send_to(text_data="mine")
    assert json.loads(await member.receive_from())["offset"] == 1
    await member.disconnect()
    _, resumed = await v1_member(communicator_factory, room, f"{welcome['epoch']}:0")
    assert resumed["recovered"] is True and resumed["epoch"] == welcome["epoch"]


async def test_the_process_keeps_at_most_the_total_history_bytes(
    communicator_factory, small_rooms, caplog
):
    """Rooms a client fills and leaves: past ``ROOM_HISTORY_TOTAL_BYTES`` the least recently
    written room's history goes first, with one line; a resume into it is not recovered."""
    layer = small_rooms(total=20_000)
    old, new = new_room(), new_room()
    member, welcome = await v1_member(communicator_factory, old)
    await publish(old, {"type": "websocket.send", "text": "x" * 5000})
    with caplog.at_level(logging.WARNING, logger="app.rooms"):
        for _ in range(3):
            await publish(new, {"type": "websocket.send", "text": "y" * 5000})
    assert layer.held <= 20_000
    assert not layer.rooms[old].history.entries and len(layer.rooms[new].history.entries) == 1
    assert f"room {old}: history forgotten" in caplog.text
    _, resumed = await v1_member(communicator_factory, old, f"{welcome['epoch']}:0")
    assert resumed["recovered"] is False
    await member.disconnect()
