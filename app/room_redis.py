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

logger = logging.getLogger("app.rooms")

#: KEYS: meta, log. ARGV: pubsub channel, an epoch for a new room, payload, size, bytes, TTL,
#: meta TTL. The room's epoch is made here, with an empty log, if Redis has none (a new room, or
#: a Redis that lost it) or if another Redis server made it (``r``, the server's run id): after a
#: failover the new master holds only what reached it, and going on under the old epoch would
#: hand out again offsets the old master gave to other messages. The offset is the meta's ``o``
#: plus one; the log holds ``p``ayload and ``t``ime, trimmed to the size and bytes; then the
#: PUBLISH. One script: a message is in the history before any member can see it, and offsets
#: are consecutive.
PUBLISH = """
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch or redis.call('HGET', KEYS[1], 'r') ~= run then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', epoch, 'r', run, 'o', 0, 'b', 0)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local size, max_bytes, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if size > 0 and max_bytes > 0 and ttl > 0 then
  if redis.call('XLEN', KEYS[2]) == 0 then redis.call('HSET', KEYS[1], 'b', 0) end
  redis.call('XADD', KEYS[2], offset .. '-0', 't', redis.call('TIME')[1], 'p', ARGV[3])
  local held = redis.call('HINCRBY', KEYS[1], 'b', #ARGV[3])
  local n = redis.call('XLEN', KEYS[2])
  while n > size or (held > max_bytes and n > 1) do
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', KEYS[2], first[1])
    held = redis.call('HINCRBY', KEYS[1], 'b', -#first[2][4])
    n = n - 1
  end
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. offset .. ':' .. ARGV[3])
return {epoch, offset}
"""

#: KEYS: meta, log. ARGV: an epoch for a new room, meta TTL. The room's epoch and last offset.
POSITION = """
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch or redis.call('HGET', KEYS[1], 'r') ~= run then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 'r', run, 'o', 0, 'b', 0)
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {epoch, redis.call('HGET', KEYS[1], 'o') or 0}
"""

#: Presence, per room: ``conns`` (a sorted set of ``<process>|<name>``, scored by the time by
#: which its process must renew it), ``names`` (a hash: each member name's count of processes),
#: ``users`` (each name's user, "" for none). LEAVE is shared: an entry removed, its name
#: counted down, and at zero the ``leave`` frame PUBLISHed (``!`` and the frame) while the room
#: is within ARGV[1] members. KEYS: conns, names, users.
LEAVE = """
local function leave(entry, channel, events)
  if redis.call('ZREM', KEYS[1], entry) == 0 then return end
  local name = string.sub(entry, string.find(entry, '|', 1, true) + 1)
  if redis.call('HINCRBY', KEYS[2], name, -1) > 0 then return end
  local user = redis.call('HGET', KEYS[3], name)
  redis.call('HDEL', KEYS[2], name)
  redis.call('HDEL', KEYS[3], name)
  if redis.call('HLEN', KEYS[2]) < events then
    user = (user and user ~= '') and cjson.encode(user) or 'null'
    redis.call('PUBLISH', channel, '!{"type":"leave","member":{"member":' .. cjson.encode(name)
      .. ',"user":' .. user .. '}}')
  end
end
local function reap(now, channel, events)
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
    leave(entry, channel, events)
  end
end
"""

#: ARGV: events max, pubsub channel, now, entry, name, user, deadline, list size, join frame,
#: TTL. Reaps the entries their processes stopped renewing, adds this one (a name new to the
#: room is announced), and returns the count and the first names with their users.
ARRIVE = (
    LEAVE
    + """
local events = tonumber(ARGV[1])
reap(ARGV[3], ARGV[2], events)
if redis.call('ZADD', KEYS[1], ARGV[7], ARGV[4]) == 1 then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
  if redis.call('HINCRBY', KEYS[2], ARGV[5], 1) == 1 and redis.call('HLEN', KEYS[2]) <= events then
    redis.call('PUBLISH', ARGV[2], '!' .. ARGV[9])
  end
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[10]) end
local names = {}
local scan = redis.call('HSCAN', KEYS[2], 0, 'COUNT', ARGV[8])[2]
for i = 1, #scan, 2 do
  if #names < tonumber(ARGV[8]) then names[#names + 1] = scan[i] end
end
local users = #names > 0 and redis.call('HMGET', KEYS[3], unpack(names)) or {}
return {redis.call('HLEN', KEYS[2]), names, users}
"""
)

#: ARGV: events max, pubsub channel, entry. The last connection of a name in a process.
DEPART = LEAVE + "leave(ARGV[3], ARGV[2], tonumber(ARGV[1]))"

#: ARGV: events max, pubsub channel, now, TTL, then deadline and entry pairs: renews this
#: process's entries and reaps the ones nobody renewed (a process that died without a word).
RENEW = (
    LEAVE
    + """
for i = 5, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
reap(ARGV[3], ARGV[2], tonumber(ARGV[1]))
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
"""
)

#: How long a room's epoch and offset outlive its last message: a week. Past it, the room
#: starts again on a new epoch (its history, ``ROOM_HISTORY_TTL``, went long before).
META_TTL = 7 * 24 * 3600


def presence_keys(room: str) -> list[str]:
    """The room's presence: ``conns``, ``names``, ``users`` (``ARRIVE``), on the room's shard."""
    return [f"rooms:{{{room}}}:conns", f"rooms:{{{room}}}:names", f"rooms:{{{room}}}:users"]


def keys(room: str) -> tuple[str, str, str]:
    """The room's meta hash, log stream and pubsub channel: one hash tag, so one shard."""
    return f"rooms:{{{room}}}:meta", f"rooms:{{{room}}}:log", f"rooms:{{{room}}}"


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

    async def arrive(self, room: str, state: RoomState, who: Who) -> dict:
        """Counted in Redis, on every process: the snapshot is the whole room's."""
        count, names, users = await self.shard(room).arrive_script(
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
        listed = [
            Who(name.decode(), user.decode() or None if user is not None else None)
            for name, user in zip(names, users, strict=True)
        ]
        return snapshot(count, listed)

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
        if data[:1] == b"!":  # a join or leave frame
            presence_frame = data[1:].decode()
            self.announce(state, presence_frame, about(presence_frame))
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
