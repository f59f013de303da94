"""The Redis room engine: rooms across processes, ordered and kept by Redis.

One Lua script per room message appends it to the room's stream (its history), trims the stream
and PUBLISHes it: one publish per room message, not one write per member (channels-redis
``core``'s cost, docs/channel-layers.md). Each process subscribes once to each room it has
members in (``Shard``), and hands each message to its members in offset order, mending a gap
from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections import OrderedDict

import redis.asyncio
import redis.asyncio.sentinel
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.layers import LAYER_ERRORS, error_text
from app.logs import Throttled
from app.presence import Who, about, frame, snapshot
from app.protocol import Message
from app.room_engine import Rooms, RoomState
from app.room_log import History, new_epoch, payload, room_event
from app.room_scripts import (
    ARRIVE,
    DEPART,
    META_TTL,
    POSITION,
    PRESENCE,
    PUBLISH,
    RENEW,
    keys,
    presence_keys,
)

logger = logging.getLogger("app.rooms")


class Shard:
    """One Redis (of ``REDIS_URL``'s shards, or Sentinel's master): its client, and this
    process's one subscription to it, read by one task."""

    def __init__(self, rooms: RedisRooms, client: redis.asyncio.Redis, subscriber) -> None:
        self.rooms, self.client, self.subscriber = rooms, client, subscriber
        self.publish_script = client.register_script(PUBLISH)
        self.position_script = client.register_script(POSITION)
        self.arrive_script = client.register_script(ARRIVE)
        self.depart_script = client.register_script(DEPART)
        self.renew_script = client.register_script(RENEW)
        self.presence_script = client.register_script(PRESENCE)
        self.pubsub = None
        self.reader: asyncio.Task | None = None
        self.confirmed: dict[bytes, asyncio.Future] = {}

    async def subscribe(self, channel: str) -> None:
        """Subscribe, and return once Redis has confirmed it: from then on every message
        published to ``channel`` reaches this process."""
        confirmed = asyncio.get_running_loop().create_future()
        self.confirmed[channel.encode()] = confirmed
        if self.pubsub is None:
            self.pubsub = self.subscriber.pubsub()
        await self.pubsub.subscribe(channel)
        if self.reader is None or self.reader.done():
            self.reader = asyncio.create_task(self.read(self.pubsub))
        await asyncio.wait_for(confirmed, settings.ROOM_REDIS_TIMEOUT)

    async def unsubscribe(self, channel: str) -> None:
        if self.pubsub is not None:
            await self.pubsub.unsubscribe(channel)

    async def read(self, pubsub) -> None:
        """Hand each message to the rooms; when the subscription fails, every member of every
        room on this shard is told (1013) and the next join subscribes again."""
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "message":
                    self.rooms.arrived(message["channel"], message["data"])
                elif kind == "subscribe":
                    confirmed = self.confirmed.pop(message["channel"], None)
                    if confirmed is not None and not confirmed.done():
                        confirmed.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # any failure of the connection
            self.failed(pubsub, error)

    def failed(self, pubsub, error: BaseException) -> None:
        if self.pubsub is pubsub:
            self.pubsub, self.reader = None, None
        for confirmed in self.confirmed.values():
            if not confirmed.done():
                confirmed.set_exception(ConnectionError(error_text(error)))
                confirmed.exception()  # retrieved: the joiner sees its own timeout or error
        self.confirmed.clear()
        self.rooms.shard_failed(self, error)
        asyncio.get_running_loop().create_task(close_quietly(pubsub))


async def close_quietly(pubsub) -> None:
    with contextlib.suppress(Exception):  # it failed already; this only frees the socket
        await pubsub.aclose()


class RedisRooms(Rooms):
    """Rooms across processes, ordered and kept by Redis (module docstring)."""

    engine = "redis"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shards: list[Shard] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.channel_rooms: dict[bytes, str] = {}
        self.failures = Throttled(logger)
        self.tasks: set[asyncio.Task] = set()  # mends under way, and the presence renewal
        #: This process in the rooms' presence entries (``<process>|<name>``).
        self.process = new_epoch()
        self.presence_timeout = settings.ROOM_PRESENCE_TIMEOUT

    def shard(self, room: str) -> Shard:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # clients belong to one event loop (tests run several)
            self.loop, self.rooms, self.channel_rooms = loop, {}, {}
            self.held, self.kept = 0, OrderedDict()
            self.shards = [Shard(self, *pair) for pair in redis_clients()]
            self.background(self.renew())
        return self.shards[zlib.crc32(room.encode()) % len(self.shards)]

    def background(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- presence -------------------------------------------------------------------------

    def presence_args(self, room: str) -> list:
        return [self.presence_events, keys(room)[2], time.time()]

    async def arrive(self, room: str, state: RoomState, who: Who) -> tuple[dict, int]:
        """Counted in Redis, on every process: the snapshot is the whole room's."""
        count, names, users, seq = await self.shard(room).arrive_script(
            keys=presence_keys(room),
            args=[
                *self.presence_args(room),
                f"{self.process}|{who.member}",
                who.member,
                who.user or "",
                time.time() + self.presence_timeout,
                self.presence_list,
                frame("join", who),
                3 * self.presence_timeout,
            ],
        )
        return snapshot(count, listed(names, users)), seq

    async def presence(self, room: str) -> dict:
        """The whole room's, from Redis (``PRESENCE``)."""
        count, names, users = await self.shard(room).presence_script(
            keys=presence_keys(room), args=[*self.presence_args(room), self.presence_list]
        )
        return snapshot(count, listed(names, users))

    async def depart(self, room: str, state: RoomState, who: Who) -> None:
        await self.shard(room).depart_script(
            keys=presence_keys(room),
            args=[self.presence_events, keys(room)[2], f"{self.process}|{who.member}"],
        )

    async def renew(self) -> None:
        """Every third of ``ROOM_PRESENCE_TIMEOUT``: renew this process's presence entries, and
        reap those of a process that stopped renewing (killed: its members leave, with ``leave``
        frames, within the timeout and a third)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.presence_timeout / 3)  # a period, not a synchronisation
            if self.loop is not loop:
                return
            deadline = time.time() + self.presence_timeout
            for room, state in list(self.rooms.items()):
                if not state.names or (state.ready is not None and not state.ready.done()):
                    continue
                pairs = []
                for name in state.names.connections:
                    pairs += [deadline, f"{self.process}|{name}"]
                try:
                    await self.shard(room).renew_script(
                        keys=presence_keys(room),
                        args=[*self.presence_args(room), 3 * self.presence_timeout, *pairs],
                    )
                except LAYER_ERRORS as error:
                    self.failures.warning("presence not renewed: %s", error_text(error))

    async def open(self, room: str) -> RoomState:
        """The room, subscribed to and positioned (its epoch and last offset read after the
        subscription began, so nothing falls between them); joins of one room share this."""
        state = self.rooms.get(room)
        if state is not None and state.ready is not None:
            await asyncio.shield(state.ready)
            if self.rooms.get(room) is state:
                return state
            return await self.open(room)  # lost while this join waited: start again
        shard = self.shard(room)
        meta, log, channel = keys(room)
        state = self.rooms[room] = RoomState(room, "", History(self.limits))
        state.ready = asyncio.get_running_loop().create_future()
        self.channel_rooms[channel.encode()] = room
        try:
            await shard.subscribe(channel)
            epoch, last = await shard.position_script(
                keys=[meta, log], args=[new_epoch(), META_TTL]
            )
        except BaseException as error:
            ready, state.ready = state.ready, None
            self.forget(room, state)
            ready.set_exception(error if isinstance(error, Exception) else ConnectionError())
            ready.exception()
            raise
        state.epoch, state.history.last = epoch.decode(), int(last)
        early, state.early = state.early, []
        for item in early:
            self.position(room, state, *item)
        state.ready.set_result(None)
        return state

    async def emptied(self, room: str, state: RoomState) -> None:
        if self.rooms.get(room) is state and (state.ready is None or state.ready.done()):
            self.forget(room, state)
            channel = keys(room)[2]
            self.channel_rooms.pop(channel.encode(), None)
            with contextlib.suppress(*LAYER_ERRORS):  # failed: the reader has told everyone
                await self.shard(room).unsubscribe(channel)
                if room in self.rooms:  # joined again meanwhile: its SUBSCRIBE may have gone first
                    await self.shard(room).pubsub.subscribe(channel)

    async def publish(self, room: str, sender: str, message: Message) -> None:
        meta, log, channel = keys(room)
        limits = self.limits
        await self.shard(room).publish_script(
            keys=[meta, log],
            args=[
                channel,
                new_epoch(),
                payload(sender, message),
                limits.size,
                limits.max_bytes,
                math.ceil(limits.ttl),
                META_TTL,
            ],
        )

    async def history(self, room: str, after: int, upto: int | None = None) -> list[Message] | None:
        """What this process kept, else the room's stream in Redis."""
        state = self.rooms.get(room)
        if state is None:
            return None
        upto = state.history.last if upto is None else upto
        kept = state.history.after(after, upto)
        if kept is not None or not self.limits.on or after >= upto:
            return kept
        return await self.stream(room, after, upto)

    async def stream(self, room: str, after: int, upto: int) -> list[Message] | None:
        log = keys(room)[1]
        entries = await self.shard(room).client.xrange(log, f"{after + 1}-0", f"{upto}-0")
        oldest = time.time() - self.limits.ttl
        if len(entries) != upto - after:
            return None
        events = []
        for number, (entry_id, fields) in enumerate(entries, start=after + 1):
            if int(entry_id.split(b"-")[0]) != number or int(fields[b"t"]) < oldest:
                return None
            events.append(room_event(number, fields[b"p"].decode()))
        return events

    async def room_last(self, room: str, state: RoomState) -> int:
        meta = keys(room)[0]
        epoch, last = await self.shard(room).client.hmget(meta, "e", "o")
        if epoch is None or epoch.decode() != state.epoch:
            return state.history.last
        return int(last or 0)

    def arrived(self, channel: bytes, data: bytes) -> None:
        """A message from the subscription: ``epoch:offset:payload``."""
        room = self.channel_rooms.get(channel)
        state = self.rooms.get(room) if room is not None else None
        if state is None:
            return  # unsubscribed since
        if data[:1] == b"!":  # a join or leave frame: !<seq>:<frame>
            seq, presence_frame = data[1:].decode().split(":", 1)
            self.announce(state, presence_frame, about(presence_frame), int(seq))
            return
        epoch, offset, published = data.decode().split(":", 2)
        if state.ready is not None and not state.ready.done():
            state.early.append((epoch, int(offset), published))
            return
        self.position(room, state, epoch, int(offset), published)

    def position(
        self, room: str, state: RoomState, epoch: str, offset: int, published: str
    ) -> None:
        """Deliver a message in offset order: skip one had already, mend a gap from the stream,
        and close every member here when the room's epoch changed under them."""
        if epoch != state.epoch:
            self.failures.warning(
                "room %s: history lost (epoch %s, now %s): its members here are closed",
                room,
                state.epoch,
                epoch,
            )
            self.lose(room, state, "room history lost, resume")
            return
        last = state.history.last
        if offset <= last:
            return
        if offset > last + 1:  # held, with what follows, until mended; joins wait too
            if state.ready is None or state.ready.done():
                state.ready = asyncio.get_running_loop().create_future()
            state.early.append((epoch, offset, published))
            task = asyncio.get_running_loop().create_task(self.mend(room, state))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        self.deliver(state, room_event(offset, published))

    async def mend(self, room: str, state: RoomState) -> None:
        """Messages after the last one here never reached this process (a subscription that
        lived through a failover): from the stream, else every member here is closed."""
        last, offset = state.history.last, state.early[0][1]
        try:
            kept = await self.stream(room, last, offset - 1)
        except LAYER_ERRORS:
            kept = None
        if kept is None:
            lost = offset - 1 - last
            self.failures.warning("room %s: %d message(s) missed, not in the history", room, lost)
            self.lose(
                room, state, f"fell behind past the room's history: {lost} message(s) lost, resume"
            )
        else:
            for event in kept:
                self.deliver(state, event)
            early, state.early = state.early, []
            for item in early:
                if state.early:  # a second gap: held again
                    state.early.append(item)
                else:
                    self.position(room, state, *item)
        if state.ready is not None and not state.ready.done() and not state.early:
            state.ready.set_result(None)

    def shard_failed(self, shard: Shard, error: BaseException) -> None:
        self.failures.warning(
            "Redis subscription failed: %s; room members closed", error_text(error)
        )
        for room, state in list(self.rooms.items()):
            if self.shards and self.shard(room) is shard:
                self.tell(state.members, {"type": "layer.unavailable", "error": error_text(error)})
                self.forget(room, state)
                self.channel_rooms.pop(keys(room)[2].encode(), None)

    def describe(self) -> dict:
        return {**super().describe(), "shards": max(1, len(settings.REDIS_URLS))}


def listed(names: list[bytes], users: list[bytes | None]) -> list[Who]:
    """The members a presence script listed, with their users ("" for none)."""
    return [
        Who(name.decode(), user.decode() or None if user is not None else None)
        for name, user in zip(names, users, strict=True)
    ]


def redis_clients() -> list[tuple[redis.asyncio.Redis, redis.asyncio.Redis]]:
    """For each Redis (``REDIS_URL``'s shards, or Sentinel's master): a client for commands,
    and one for the subscription that never retries, so that its failure is seen at once."""
    timeout = settings.ROOM_REDIS_TIMEOUT
    common = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    no_retry = {"retry": Retry(NoBackoff(), 0)}
    if settings.REDIS_SENTINELS:
        sentinel = redis.asyncio.sentinel.Sentinel(
            settings.REDIS_SENTINELS,
            sentinel_kwargs={"socket_timeout": 2, "socket_connect_timeout": 2},
        )
        name = settings.REDIS_SENTINEL_MASTER
        return [
            (
                sentinel.master_for(name, max_connections=settings.REDIS_MAX_CONNECTIONS, **common),
                sentinel.master_for(name, **common, **no_retry),
            )
        ]
    return [
        (
            redis.asyncio.Redis(
                connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
                    url, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=timeout, **common
                )
            ),
            redis.asyncio.Redis.from_url(url, **common, **no_retry),
        )
        for url in settings.REDIS_URLS
    ]
