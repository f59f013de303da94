"""The consumers: one ``SyncConsumer`` and one ``AsyncConsumer`` of each, handler for handler.

Channels calls the method named after each message type (``websocket.connect`` ->
``websocket_connect``). Both consumers hand the event to a ``Session``, which holds
the rules, and send what it returns; read either class top to bottom to follow the spec.
``LeanSyncConsumer`` and ``LeanAsyncConsumer`` (``app/dispatch.py``) are Channels' own base
classes with the per-message overhead taken out; the handlers are exactly as Channels calls them.
"""

from __future__ import annotations

import contextlib
from http import HTTPStatus

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from django.conf import settings

from app import metrics, protocol
from app.dispatch import LeanAsyncConsumer, LeanSyncConsumer
from app.handshake import denial
from app.layers import LAYER_ERRORS
from app.presence import Who
from app.protocol import ConnectionState, Message, Scope
from app.room_access import AccessRefused, grant_for
from app.room_access import refusal as access_refusal
from app.room_log import ROOMS_V1, Gap, InvalidSince, Member, Since, new_member_id, parse_since
from app.rooms import InvalidRoom, Room
from app.session import Session, choose_subprotocol
from app.tracing import listeners, token_valid, trace_group


class EchoSyncConsumer(LeanSyncConsumer):
    """Echo in plain blocking code; the handlers run in a worker thread."""

    channel_layer_alias = None  # echo needs no channel layer, so it pays for none
    uses_database = False
    traceable = True  # ?trace=<token> shows its events on the page (app/tracing.py)

    def websocket_connect(self, event: Message) -> None:
        self.session = Session.from_settings(self.scope, consumer="sync")
        self.send(self.session.accept())

    def websocket_receive(self, event: Message) -> None:
        if reply := self.session.reply(event):
            self.send(reply)

    def websocket_disconnect(self, event: Message) -> None:
        self.session.disconnected(event)
        raise StopConsumer()


class EchoAsyncConsumer(LeanAsyncConsumer):
    """The same echo as coroutines, on the server's event loop."""

    channel_layer_alias = None
    uses_database = False
    traceable = True

    async def websocket_connect(self, event: Message) -> None:
        self.session = Session.from_settings(self.scope, consumer="async")
        await self.send(self.session.accept())

    async def websocket_receive(self, event: Message) -> None:
        if reply := self.session.reply(event):
            await self.send(reply)

    async def websocket_disconnect(self, event: Message) -> None:
        self.session.disconnected(event)
        raise StopConsumer()


class BroadcastSyncConsumer(LeanSyncConsumer):
    """A room member in blocking code: what it receives goes to the whole room, itself included.

    A client that offers ``rooms.v1`` gets JSON frames with offsets and can resume
    (docs/rooms.md); the room's engine is the ``rooms`` channel layer (app/room_engine.py).
    """

    channel_layer_alias = "rooms"
    uses_database = False
    traceable = True
    room_member = True

    def websocket_connect(self, event: Message) -> None:
        self.session = Session.from_settings(self.scope, consumer="sync", subprotocols=[ROOMS_V1])
        try:
            self.room, self.member, since, who = join_request(self.scope, self.session)
            joined = async_to_sync(self.channel_layer.join)(
                self.room.name,
                self.channel_name,
                since,
                who,
                watch=self.member.v1,
            )
        except (InvalidRoom, InvalidSince, AccessRefused, *LAYER_ERRORS) as error:
            for message in room_refusal(self.scope, error):
                self.send(message)
            raise StopConsumer() from None
        for message in [self.session.accept(), *self.member.joined(joined)]:
            self.send(message)

    def websocket_receive(self, event: Message) -> None:
        reply = self.session.reply(event)  # the echo, a close, or None
        if reply and reply["type"] == "websocket.send":
            # To the room instead (a close if that fails, or if the member may only read).
            reply = self.publish(reply) if self.member.publish else self.session.read_only()
        if reply:
            self.send(reply)

    def room_message(self, event: Message) -> None:
        if self.session.state is ConnectionState.OPEN:
            sends = self.member.take(event)
            for message in self.mend(sends) if isinstance(sends, Gap) else sends:
                self.send(message)

    def room_presence(self, event: Message) -> None:
        if self.session.state is ConnectionState.OPEN and self.member.v1:
            self.send(protocol.send_text(event["frame"]))  # a join or leave frame

    def room_lost(self, event: Message) -> None:
        if self.session.state is ConnectionState.OPEN:
            self.send(self.session.room_lost(event["reason"]))

    def layer_unavailable(self, event: Message) -> None:
        if close := self.session.layer_lost(event["error"]):
            self.send(close)

    def layer_dropped(self, event: Message) -> None:
        if self.session.state is ConnectionState.OPEN:
            for message in self.mend(Gap(self.member.last, None)):
                self.send(message)

    def websocket_disconnect(self, event: Message) -> None:
        self.session.disconnected(event)
        if hasattr(self, "member"):
            with contextlib.suppress(*LAYER_ERRORS):
                async_to_sync(self.channel_layer.leave)(self.room.name, self.channel_name)
        raise StopConsumer()

    def publish(self, message: Message) -> Message | None:
        try:
            async_to_sync(self.channel_layer.publish)(self.room.name, self.member.id, message)
        except LAYER_ERRORS as error:
            metrics.layer_errors.labels("group_send").inc()
            return self.session.layer_lost(error)
        return None

    def mend(self, gap: Gap) -> list[Message]:
        """The messages the member missed, from the room's history, or its close."""
        upto = mend_upto(self.channel_layer, self.room, gap)
        try:
            kept = async_to_sync(self.channel_layer.history)(self.room.name, gap.after, upto)
        except LAYER_ERRORS:
            kept = None
        return mended(self.session, self.member, gap, kept, upto)


class BroadcastAsyncConsumer(LeanAsyncConsumer):
    """The same room member as coroutines."""

    channel_layer_alias = "rooms"
    uses_database = False
    traceable = True
    room_member = True

    async def websocket_connect(self, event: Message) -> None:
        self.session = Session.from_settings(self.scope, consumer="async", subprotocols=[ROOMS_V1])
        try:
            self.room, self.member, since, who = join_request(self.scope, self.session)
            joined = await self.channel_layer.join(
                self.room.name,
                self.channel_name,
                since,
                who,
                watch=self.member.v1,
            )
        except (InvalidRoom, InvalidSince, AccessRefused, *LAYER_ERRORS) as error:
            for message in room_refusal(self.scope, error):
                await self.send(message)
            raise StopConsumer() from None
        for message in [self.session.accept(), *self.member.joined(joined)]:
            await self.send(message)

    async def websocket_receive(self, event: Message) -> None:
        reply = self.session.reply(event)
        if reply and reply["type"] == "websocket.send":
            reply = await self.publish(reply) if self.member.publish else self.session.read_only()
        if reply:
            await self.send(reply)

    async def room_message(self, event: Message) -> None:
        if self.session.state is ConnectionState.OPEN:
            sends = self.member.take(event)
            for message in await self.mend(sends) if isinstance(sends, Gap) else sends:
                await self.send(message)

    async def room_presence(self, event: Message) -> None:
        if self.session.state is ConnectionState.OPEN and self.member.v1:
            await self.send(protocol.send_text(event["frame"]))

    async def room_lost(self, event: Message) -> None:
        if self.session.state is ConnectionState.OPEN:
            await self.send(self.session.room_lost(event["reason"]))

    async def layer_unavailable(self, event: Message) -> None:
        if close := self.session.layer_lost(event["error"]):
            await self.send(close)

    async def layer_dropped(self, event: Message) -> None:
        if self.session.state is ConnectionState.OPEN:
            for message in await self.mend(Gap(self.member.last, None)):
                await self.send(message)

    async def websocket_disconnect(self, event: Message) -> None:
        self.session.disconnected(event)
        if hasattr(self, "member"):
            with contextlib.suppress(*LAYER_ERRORS):
                await self.channel_layer.leave(self.room.name, self.channel_name)
        raise StopConsumer()

    async def publish(self, message: Message) -> Message | None:
        try:
            await self.channel_layer.publish(self.room.name, self.member.id, message)
        except LAYER_ERRORS as error:
            metrics.layer_errors.labels("group_send").inc()
            return self.session.layer_lost(error)
        return None

    async def mend(self, gap: Gap) -> list[Message]:
        upto = mend_upto(self.channel_layer, self.room, gap)
        try:
            kept = await self.channel_layer.history(self.room.name, gap.after, upto)
        except LAYER_ERRORS:
            kept = None
        return mended(self.session, self.member, gap, kept, upto)


class TraceConsumer(LeanAsyncConsumer):
    """Forwards a token's trace records (``trace.record`` events) to the page that asked for them."""

    uses_database = False  # the one query, at connect, goes through database_sync_to_async

    async def websocket_connect(self, event: Message) -> None:
        token = self.scope["url_route"]["kwargs"]["token"]
        if not await database_sync_to_async(token_valid)(self.scope.get("session"), token):
            why = "trace token not issued to this session, or expired"
            for message in denial(self.scope, HTTPStatus.FORBIDDEN, why, reason="trace_token"):
                await self.send(message)
            raise StopConsumer()
        group = trace_group(token)
        if not listeners.join(group):  # TRACE_LISTENERS_PER_TOKEN, in this process
            why = (
                f"trace token has {settings.TRACE_LISTENERS_PER_TOKEN} trace socket(s) open"
                " already (TRACE_LISTENERS_PER_TOKEN)"
            )
            for message in denial(
                self.scope, HTTPStatus.TOO_MANY_REQUESTS, why, reason="trace_listeners"
            ):
                await self.send(message)
            raise StopConsumer()
        try:
            await self.channel_layer.group_add(group, self.channel_name)
        except BaseException:
            listeners.leave(group)
            raise
        self.group = group  # counted until websocket_disconnect
        await self.send(protocol.accept())

    async def websocket_receive(self, event: Message) -> None:
        pass  # the page only listens on this socket

    async def trace_record(self, event: Message) -> None:
        await self.send(protocol.send_text(event["text"]))  # serialised once, by the tracer

    async def websocket_disconnect(self, event: Message) -> None:
        if hasattr(self, "group"):
            listeners.leave(self.group)
            with contextlib.suppress(*LAYER_ERRORS):
                await self.channel_layer.group_discard(self.group, self.channel_name)
        raise StopConsumer()


def join_request(scope: Scope, session: Session) -> tuple[Room, Member, Since | None, Who]:
    """The room a handshake asks for, its member, where a ``rooms.v1`` member resumes, and who
    it is in the room's presence; raises ``InvalidRoom`` or ``InvalidSince`` (400: a malformed
    ``since`` is refused on either protocol), then ``AccessRefused`` (403, app/room_access.py)."""
    room = Room.from_scope(scope)
    since = parse_since(scope.get("query_string", b""))
    grant = grant_for(scope, room.name)
    offered = scope.get("subprotocols") or ()
    v1 = choose_subprotocol(offered, session.supported_subprotocols) == ROOMS_V1
    who = Who(grant.member or new_member_id(), grant.user)
    member = Member(room.name, who.member, v1, publish=grant.publish)
    return room, member, since if v1 else None, who


def mend_upto(layer, room: Room, gap: Gap) -> int:
    """The last offset a gap's mending reaches: just before the message that revealed it, or
    the room's last here (drops revealed after the fact)."""
    return gap.then["offset"] - 1 if gap.then is not None else layer.last_offset(room.name)


def mended(
    session: Session, member: Member, gap: Gap, kept: list[Message] | None, upto: int
) -> list[Message]:
    """The sends that fill ``gap`` from ``kept``, or the close when the history lost them."""
    sends = member.mend(gap, kept, upto)
    return [session.fell_behind(sends)] if isinstance(sends, int) else sends


def room_refusal(scope: Scope, error: Exception) -> list[Message]:
    """The handshake refusal for a bad room name or ``since`` (400), no access (403), or an
    unreachable channel layer (503)."""
    if isinstance(error, AccessRefused):
        return access_refusal(scope, error)
    if isinstance(error, InvalidRoom | InvalidSince):
        return denial(scope, HTTPStatus.BAD_REQUEST, str(error), reason="room")
    metrics.layer_errors.labels("group_add").inc()
    why = f"channel layer unavailable: {error}"
    return denial(scope, HTTPStatus.SERVICE_UNAVAILABLE, why, reason="layer_unavailable")
