"""Room engines: what orders a room's messages, keeps its history and fans it out to members.

A room member's channel layer (the ``rooms`` alias of ``CHANNEL_LAYERS``) is one of these. Its
members' queues live in the process, bounded like ``BoundedInMemoryChannelLayer``'s; what differs
is where a room's order and history live:

- ``MemoryRooms``: in the process. One process only; a restart starts a new epoch.
- ``RedisRooms`` (app/room_redis.py): in Redis, so across processes, one publish per message.

Either way a member gets a ``room.message`` event through Channels' handler dispatch, with the
room's offset; the consumer (``app.room_log.Member``) mends a gap from ``history`` or closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from django.conf import settings

from app.layers import LAYER_ERRORS, BoundedInMemoryChannelLayer, ChannelQueue
from app.logs import Throttled
from app.presence import Names, Who, frame, snapshot
from app.protocol import Message
from app.room_log import (
    History,
    HistoryLimits,
    Joined,
    Since,
    event_bytes,
    new_epoch,
    payload,
    room_event,
)

logger = logging.getLogger("app.rooms")


@dataclass
class RoomState:
    """A room as this process sees it: its epoch, its history (or the recent part of it), and
    the channels of its members here."""

    name: str
    epoch: str
    history: History
    members: dict[str, Who] = field(default_factory=dict)  # channel: who
    names: Names = field(default_factory=Names)  # connections per member name, here
    #: The channels that get join and leave frames, each with the ``seq`` of its snapshot
    #: (frames numbered up to it are in its welcome already), or the frames held for it until
    #: its snapshot is known (a list of ``(seq, frame)``).
    watchers: dict[str, int | list] = field(default_factory=dict)
    ready: asyncio.Future | None = None  # RedisRooms: set once subscribed and positioned
    early: list[tuple[str, int, str]] = field(default_factory=list)  # arrived before ready


def limits_from_settings() -> HistoryLimits:
    return HistoryLimits(
        size=settings.ROOM_HISTORY_SIZE,
        ttl=settings.ROOM_HISTORY_TTL,
        max_bytes=settings.ROOM_HISTORY_BYTES,
    )


class Rooms(BoundedInMemoryChannelLayer):
    """What both engines share: members' queues in the process, delivery, and resume."""

    engine = ""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.limits = limits_from_settings()
        self.rooms: dict[str, RoomState] = {}
        #: Bytes of history the process holds, all rooms together, at most ``total``: past it
        #: the histories of the rooms written to least recently are forgotten (``kept``'s order).
        self.held, self.total = 0, settings.ROOM_HISTORY_TOTAL_BYTES
        self.kept: OrderedDict[str, RoomState] = OrderedDict()
        self.evictions = Throttled(logger)
        self.presence_list = settings.ROOM_PRESENCE_LIST
        self.presence_events = settings.ROOM_PRESENCE_EVENTS_MAX

    # --- what a consumer calls ------------------------------------------------------------

    async def join(
        self, room: str, channel: str, since: Since | None, who: Who, *, watch: bool = False
    ) -> Joined:
        """Add ``channel`` (member ``who``) to ``room``: live delivery starts after the
        welcome's offset, or after ``since`` when the history holds everything after it
        (``replay``); ``presence`` counts the member in. ``watch``: the channel gets the join
        and leave frames (``rooms.v1`` members; plain ones have no use for them)."""
        state = await self.open(room)
        state.members[channel] = who  # no await since open(): nothing delivered in between
        state.names.add(who)
        if watch:
            state.watchers[channel] = []
        try:
            joined = await self.resume(room, state, since)
            presence, seq = await self.arrive(room, state, who)
            self.watching(state, channel, seq)
            return replace(joined, presence=presence)
        except BaseException:
            with contextlib.suppress(*LAYER_ERRORS):
                await self.leave(room, channel)
            raise

    async def resume(self, room: str, state: RoomState, since: Since | None) -> Joined:
        """Where a new member starts: the welcome's offset, and what it missed since ``since``."""
        epoch, last = state.epoch, state.history.last
        if since is None:
            return Joined(epoch, last, None, [], last)
        if since.epoch == epoch:
            if since.offset >= last:
                if since.offset == last or since.offset <= await self.room_last(room, state):
                    # Ahead of this process (it got it from another): live after it.
                    return Joined(epoch, last, True, [], since.offset)
            else:
                kept = await self.history(room, since.offset, last)
                if kept is not None:
                    return Joined(epoch, last, True, kept, last)
        return Joined(epoch, last, False, [], last)

    async def leave(self, room: str, channel: str) -> None:
        state = self.rooms.get(room)
        if state is None:
            return
        who = state.members.pop(channel, None)
        state.watchers.pop(channel, None)
        try:
            if who is not None and state.names.remove(who):
                await self.depart(room, state, who)
        finally:
            if not state.members:
                await self.emptied(room, state)

    async def presence(self, room: str) -> dict:
        """Who is in ``room``, as a welcome's ``presence`` says it."""
        state = self.rooms.get(room)
        if state is None:
            return snapshot(0, [])
        return snapshot(len(state.names), state.names.first(self.presence_list))

    async def publish(self, room: str, sender: str, message: Message) -> None:
        """Send a ``websocket.send``-shaped message (text or bytes) to the room."""
        raise NotImplementedError

    async def history(self, room: str, after: int, upto: int | None = None) -> list[Message] | None:
        """The room's messages after ``after`` up to ``upto`` (default: the last this process
        has delivered), or None when the history no longer holds all of them."""
        state = self.rooms.get(room)
        if state is None:
            return None
        return state.history.after(after, upto)

    def last_offset(self, room: str) -> int:
        """The last offset this process has delivered in ``room`` (0: none)."""
        state = self.rooms.get(room)
        return state.history.last if state is not None else 0

    # --- what the engines share -----------------------------------------------------------

    async def open(self, room: str) -> RoomState:
        raise NotImplementedError

    async def emptied(self, room: str, state: RoomState) -> None:
        """The room has no member left in this process."""

    async def arrive(self, room: str, state: RoomState, who: Who) -> tuple[dict, int]:
        """Count ``who``'s connection in (``state.names`` has it): the others are told of a
        member new to the room; the snapshot for its welcome, and the number of the last join
        or leave frame it covers (here, in one process, frames are not numbered: 0)."""
        names = state.names
        if names.connections[who.member] == 1 and len(names) <= self.presence_events:
            self.announce(state, frame("join", who), who.member)
        return snapshot(len(names), names.first(self.presence_list)), 0

    async def depart(self, room: str, state: RoomState, who: Who) -> None:
        """``who``'s last connection here has gone: the others are told it left."""
        if len(state.names) < self.presence_events:
            self.announce(state, frame("leave", who), who.member)

    def watching(self, state: RoomState, channel: str, seq: int) -> None:
        """``channel``'s snapshot covers frames up to ``seq``: the later ones held for it go."""
        held = state.watchers.get(channel)
        if isinstance(held, list):
            state.watchers[channel] = seq
            for number, presence_frame in held:
                if number > seq:
                    self.queue_frame(channel, presence_frame)

    def announce(
        self, state: RoomState, presence_frame: str, name: str, seq: int | None = None
    ) -> None:
        """Queue a ``join`` or ``leave`` frame (numbered ``seq`` by Redis) for every member here
        that watches but ``name``'s own connections, and not for one whose snapshot has it
        (best effort: a full queue drops it, as Phoenix's presence diffs)."""
        members = state.members
        for channel, since in list(state.watchers.items()):
            if members[channel].member == name:
                continue
            if isinstance(since, list):
                since.append((seq or 0, presence_frame))  # its snapshot is on its way
            elif seq is None or seq > since:
                self.queue_frame(channel, presence_frame)

    def queue_frame(self, channel: str, presence_frame: str) -> None:
        event = {"type": "room.presence", "frame": presence_frame}
        self._put(channel, event, dict, 200 + len(presence_frame), time.time())

    async def room_last(self, room: str, state: RoomState) -> int:
        """The room's last offset wherever it is kept (a process may lag Redis)."""
        return state.history.last

    def deliver(self, state: RoomState, event: Message) -> None:
        """Keep ``event`` and queue it for every member here (dropped, counted and logged for
        a full queue: the member mends the gap from the history)."""
        history, size = state.history, event_bytes(event)  # reckoned once, for both
        held = history.held
        history.append(event, size)
        if history.held != held:
            self.held += history.held - held
            self.kept[state.name] = state
            self.kept.move_to_end(state.name)
            if self.held > self.total:
                self.evict()
        if state.members:
            now = time.time()
            for channel in list(state.members):
                self._put(channel, event, dict, size, now)

    def evict(self) -> None:
        """Forget the oldest-written rooms' histories until the process holds ``total`` bytes:
        their members go on live; a resume into what was forgotten is told ``recovered: false``."""
        while self.held > self.total and self.kept:
            room, state = self.kept.popitem(last=False)
            self.held -= state.history.held
            state.history.forget()
            self.evictions.warning(
                "room %s: history forgotten, the process holds ROOM_HISTORY_TOTAL_BYTES (%d)",
                room,
                self.total,
            )

    def tell(self, channels: Iterable[str], event: Message) -> None:
        """Queue ``event`` for each channel past its bounds: a close the member must get."""
        for channel in channels:
            queue = self.channels.get(channel)
            if queue is None:
                queue = self.channels[channel] = ChannelQueue(self.get_capacity(channel))
            queue.put((math.inf, 0, dict(event)))

    def lose(self, room: str, state: RoomState, reason: str) -> None:
        """The room's order or history is gone for this process: close every member here
        (each resumes), and forget the room."""
        self.tell(state.members, {"type": "room.lost", "reason": reason})
        self.forget(room, state)

    def forget(self, room: str, state: RoomState) -> None:
        """Forget a room (its members, if any, were told to go); joins waiting on it start
        again."""
        state.members.clear()
        state.names, state.watchers = Names(), {}
        if self.rooms.get(room) is state:
            del self.rooms[room]
            self.kept.pop(room, None)
            self.held -= state.history.held
        if state.ready is not None and not state.ready.done():
            state.ready.set_result(None)

    def describe(self) -> dict:
        """For ``/healthz``: the engine and what this process holds."""
        return {
            "engine": self.engine,
            "rooms": len(self.rooms),
            "history": {
                "size": self.limits.size,
                "ttl": self.limits.ttl,
                "bytes": self.limits.max_bytes,
            },
        }


class MemoryRooms(Rooms):
    """Rooms in one process: the process numbers each room's messages and keeps its history.

    A room with no member is kept while its history is (``ROOM_HISTORY_TTL``), so a member that
    was the last to leave can come back to it; a restart starts every room on a new epoch.
    """

    engine = "memory"

    async def open(self, room: str) -> RoomState:
        state = self.rooms.get(room)
        if state is None:
            state = self.rooms[room] = RoomState(room, new_epoch(), History(self.limits))
        return state

    async def emptied(self, room: str, state: RoomState) -> None:
        if not state.history.entries and self.rooms.get(room) is state:
            self.forget(room, state)  # nothing to come back to

    async def publish(self, room: str, sender: str, message: Message) -> None:
        state = await self.open(room)
        self.deliver(state, room_event(state.history.last + 1, payload(sender, message)))

    def _sweep(self) -> None:
        due = time.monotonic() >= self.next_sweep
        super()._sweep()
        if due:
            for room, state in list(self.rooms.items()):
                held = state.history.held
                state.history.sweep()
                self.held -= held - state.history.held
                if not state.members and not state.history.entries:
                    self.forget(room, state)
