"""A send to a connection that is already closed: the client's doing, never an ERROR (issue 23).

Two layers. The project's server (``app/server/``) raises an ``OSError`` for a send after it
failed a connection itself, where plain uvicorn raises ``RuntimeError``. The base classes
(``app/dispatch.py``, ``app/client_gone.py``) turn what each server raises there (``SERVER_SEND_GONE``, measured per
server) into one ``ClientGone``, end the consumer with one INFO line, and still run its
``websocket_disconnect``, so a room member leaves its group. Every place a consumer sends on
its own initiative is covered: the echo, a room's message, a member told it fell behind,
messages the layer dropped, the layer failing, a traced connection's sink, and the sync
Outbox's writes after its handler returned.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from autobahn.exception import Disconnected
from channels.layers import get_channel_layer
from uvicorn.protocols.utils import ClientDisconnected

from app.dispatch import LeanAsyncConsumer, LeanSyncConsumer
from tests.conftest import make_communicator
from tests.test_tracing import new_session, with_cookie
from tests.uvicorn_protocol import drive

GONE = "client gone before a send could reach it"

#: What each server's send raises for a closed connection (app/client_gone.py, SERVER_SEND_GONE).
SERVER_ERRORS = {
    "uvicorn": lambda: ClientDisconnected(),
    "daphne": lambda: Disconnected("Attempt to send on a closed protocol"),
    "asgi-spec": lambda: BrokenPipeError(32, "Broken pipe"),  # "a subclass of OSError"
}


def gone_after_accept(app, error, *, types=("websocket.send", "websocket.close")):
    """``app`` behind a server whose connection closed once the accept went out: every later
    send of ``types`` raises ``error()``. Returns (the wrapped app, the sends that raised)."""
    raised: list[str] = []

    async def server(scope, receive, send):
        async def closed_send(message):
            if message["type"] in types:
                raised.append(message["type"])
                raise error()
            await send(message)

        await app(scope, receive, closed_send)

    return server, raised


async def ends_quietly(communicator, raised, caplog) -> None:
    """The consumer met a closed connection, logged one INFO line, handled the server's
    disconnect, and ended with no exception and no ERROR."""
    await wait_until(lambda: raised)
    await communicator.send_input({"type": "websocket.disconnect", "code": 1002})
    await communicator.wait(timeout=5)
    assert communicator.future.exception() is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    # The one WARNING a member may get is the news it was closed for (fell behind, layer lost).
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) <= 1
    assert [r for r in caplog.records if GONE in r.getMessage()] != []
    assert sum(GONE in r.getMessage() for r in caplog.records) == 1


async def wait_until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)  # poll interval of an in-process condition


@pytest.fixture(params=list(SERVER_ERRORS))
def server_error(request):
    return SERVER_ERRORS[request.param]


@pytest.fixture(params=["sync", "async"])
def kind(request) -> str:
    return request.param


# --- the project's server ------------------------------------------------------------------


#: A masked text frame with RSV1 set, which no extension negotiated: a protocol error (1002).
RSV1_FRAME = bytes([0xC1, 0x80]) + b"\x00\x00\x00\x00"


async def send_after_the_server_failed_the_connection(protocol_class, *, app_closes_first=False):
    """What a send raises once the client's protocol error made the server fail the
    connection (the socket is not yet lost: the race a room member's queued message meets)."""
    ready, failed, outcome = asyncio.Event(), asyncio.Event(), {}

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        if app_closes_first:
            await send({"type": "websocket.close", "code": 1000})
        # As a room member: one task waits for the client (so the server has nothing left for
        # the application to answer, and closes at once), another sends what the room sent.
        waiting = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        ready.set()
        await failed.wait()
        try:
            await send({"type": "websocket.send", "text": "queued for the room"})
            outcome["error"] = None
        except Exception as error:
            outcome["error"] = error
        waiting.cancel()

    protocol, _ = drive(protocol_class, app)
    await asyncio.wait_for(ready.wait(), 5)
    protocol.data_received(RSV1_FRAME)
    assert protocol.close_sent  # failed by the server, connection not lost yet
    failed.set()
    await asyncio.wait_for(asyncio.gather(*protocol.tasks), 5)
    protocol.connection_lost(None)
    return outcome["error"]


@pytest.mark.asyncio
async def test_the_servers_send_after_it_failed_the_connection_raises_an_oserror():
    from app.server import WebSocketProtocol

    error = await send_after_the_server_failed_the_connection(WebSocketProtocol)
    assert isinstance(error, ClientDisconnected) and isinstance(error, OSError), repr(error)


@pytest.mark.asyncio
async def test_plain_uvicorn_still_raises_runtimeerror_there_so_the_override_is_needed():
    """When this fails, uvicorn raises an OSError itself: drop ``WebSocketProtocol.send``'s
    first branch (and ``app_closed``)."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    error = await send_after_the_server_failed_the_connection(WebSocketsSansIOProtocol)
    assert isinstance(error, RuntimeError) and "after sending 'websocket.close'" in str(error)


@pytest.mark.asyncio
async def test_a_send_after_the_applications_own_close_is_still_its_own_error():
    from app.server import WebSocketProtocol

    error = await send_after_the_server_failed_the_connection(
        WebSocketProtocol, app_closes_first=True
    )
    assert isinstance(error, RuntimeError) and not isinstance(error, OSError), repr(error)


# --- the base classes ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_echo_to_a_closed_connection_ends_quietly(kind, server_error, caplog):
    from project.asgi import application

    app, raised = gone_after_accept(application, server_error)
    communicator = make_communicator(f"/ws/echo/{kind}/", app=app)
    assert (await communicator.connect())[0]
    with caplog.at_level(logging.INFO):
        await communicator.send_to(text_data="echo me")
        await ends_quietly(communicator, raised, caplog)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_traced_echo_to_a_closed_connection_ends_quietly(kind, server_error, caplog):
    """The trace sink sits between the consumer and the server's send."""
    from project.asgi import application

    session_key, token = await new_session()
    app, raised = gone_after_accept(application, server_error)
    communicator = with_cookie(
        make_communicator(f"/ws/echo/{kind}/?trace={token}", app=app), session_key
    )
    assert (await communicator.connect())[0]
    with caplog.at_level(logging.INFO):
        await communicator.send_to(text_data="echo me")
        await ends_quietly(communicator, raised, caplog)


def room_event(offset: int, text: str) -> dict:
    from app.room_log import payload, room_event

    return room_event(offset, payload("s", {"text": text}))


#: Events a room member gets on its channel, and the first send each makes: (events, types
#: whose send finds the connection closed). A member told it fell behind sends a close; one told
#: the layer dropped messages for it sends them from the room's history.
ROOM_EVENTS = {
    "room_message": ([room_event(1, "hi")], None),
    "fell_behind": ([room_event(1, "1"), room_event(5, "5")], ("websocket.close",)),
    "layer_dropped": ([{"type": "layer.dropped", "count": 1}], None),
    "layer_unavailable": ([{"type": "layer.unavailable", "error": "boom"}], None),
    "room_lost": ([{"type": "room.lost", "reason": "room history lost, resume"}], None),
}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("event", list(ROOM_EVENTS))
async def test_a_room_member_whose_connection_closed_ends_quietly_and_leaves_its_room(
    kind, server_error, event, caplog
):
    from project.asgi import application

    events, types = ROOM_EVENTS[event]
    room = f"gone-{uuid.uuid4().hex[:8]}"
    app, raised = gone_after_accept(
        application, server_error, types=types or ("websocket.send", "websocket.close")
    )
    communicator = make_communicator(f"/ws/broadcast/{kind}/{room}/", app=app)
    assert (await communicator.connect())[0]
    layer = get_channel_layer("rooms")
    state = layer.rooms[room]
    [channel] = state.members
    state.history.append(room_event(1, "kept"))  # what a dropped message is mended from
    with caplog.at_level(logging.INFO):
        for message in events:
            await layer.send(channel, message)
        await ends_quietly(communicator, raised, caplog)
    assert channel not in state.members, "the member did not leave its room"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_closed_connection_with_no_disconnect_from_the_server_still_ends(
    monkeypatch, caplog
):
    """A server that never sends ``websocket.disconnect``: the consumer handles a 1006 of its
    own after ``DISCONNECT_WAIT`` and ends."""
    from app import client_gone
    from project.asgi import application

    monkeypatch.setattr(client_gone, "DISCONNECT_WAIT", 0.2)
    room = f"gone-{uuid.uuid4().hex[:8]}"
    app, raised = gone_after_accept(application, SERVER_ERRORS["uvicorn"])
    communicator = make_communicator(f"/ws/broadcast/async/{room}/", app=app)
    assert (await communicator.connect())[0]
    layer = get_channel_layer("rooms")
    state = layer.rooms[room]
    with caplog.at_level(logging.INFO):
        await communicator.send_to(text_data="to the room")
        await communicator.wait(timeout=5)
    assert raised and communicator.future.exception() is None
    assert not state.members
    assert "1006" in caplog.text


class RaisesOSError:
    """A handler whose own code raises an OSError: not a closed connection."""

    uses_database = False

    def websocket_connect(self, event):
        raise FileNotFoundError(2, "No such file", "/nonexistent")


class AsyncRaisesOSError(RaisesOSError, LeanAsyncConsumer):
    async def websocket_connect(self, event):
        RaisesOSError.websocket_connect(self, event)


class SyncRaisesOSError(RaisesOSError, LeanSyncConsumer):
    pass


@pytest.mark.asyncio
@pytest.mark.parametrize("consumer", [AsyncRaisesOSError, SyncRaisesOSError])
async def test_an_oserror_of_the_handlers_own_still_propagates_as_with_channels(consumer):
    from channels.testing import WebsocketCommunicator

    communicator = WebsocketCommunicator(consumer.as_asgi(), "/")
    accepted, _ = await communicator.connect()  # the client is told: 1011 (4011 here)
    assert not accepted
    with pytest.raises(FileNotFoundError):
        await communicator.wait(timeout=5)


class SendsOnDisconnect(LeanAsyncConsumer):
    """A consumer whose disconnect handler sends (a goodbye): it finds the client gone."""

    uses_database = False
    disconnects = 0

    async def websocket_connect(self, event):
        await self.send({"type": "websocket.accept"})

    async def websocket_disconnect(self, event):
        type(self).disconnects += 1
        await self.send({"type": "websocket.send", "text": "goodbye"})


@pytest.mark.asyncio
async def test_a_disconnect_handler_that_finds_the_client_gone_runs_once(caplog):
    from channels.testing import WebsocketCommunicator

    app, raised = gone_after_accept(SendsOnDisconnect.as_asgi(), SERVER_ERRORS["uvicorn"])
    communicator = WebsocketCommunicator(app, "/")
    assert (await communicator.connect())[0]
    with caplog.at_level(logging.INFO):
        await communicator.send_input({"type": "websocket.disconnect", "code": 1001})
        await communicator.wait(timeout=2)  # not DISCONNECT_WAIT: nothing more is awaited
    assert raised == ["websocket.send"]
    assert SendsOnDisconnect.disconnects == 1
    assert communicator.future.exception() is None
