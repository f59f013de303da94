"""Channel layers: which failures mean "the layer is unavailable", and an in-memory layer that
is bounded in bytes, says when it drops a message, and stays linear in a group's size.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import redis
import redis.sentinel
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer
from django.conf import settings
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from app import metrics
from app.logs import Throttled

logger = logging.getLogger("app.layers")

#: What a channel layer raises when it cannot carry a message (Redis down, unreachable, slow).
LAYER_ERRORS = (OSError, asyncio.TimeoutError, RedisError, ChannelFull)


def closed_transport(error: BaseException) -> bool:
    """uvloop's RuntimeError for a write on a transport that has closed. redis-py 8 meets it when
    the Redis it connects to dies mid-handshake (a Sentinel failover, tests/test_sentinel.py:
    1 run in 4): the layer failed, like any ConnectionError, not the application."""
    return isinstance(error, RuntimeError) and str(error).startswith(
        "unable to perform operation on"
    )


def error_text(error: BaseException) -> str:
    """An exception as one log-line fragment: ``ConnectionError: Connection refused``."""
    return f"{type(error).__name__}: {error}"


def redis_clients(timeout: float, *, url: str | None = None, **options) -> list[redis.Redis]:
    """Clients of the settings' Redis: ``url``, or every one of REDIS_URL's shards, or the
    master REDIS_SENTINELS name, each waiting at most ``timeout`` to connect and to answer."""
    limits = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if settings.REDIS_SENTINELS and url is None:
        sentinel = redis.sentinel.Sentinel(settings.REDIS_SENTINELS, sentinel_kwargs=limits)
        return [sentinel.master_for(settings.REDIS_SENTINEL_MASTER, **limits, **options)]
    urls = [url] if url is not None else settings.REDIS_URLS
    return [redis.Redis.from_url(each, **limits, **options) for each in urls]


def ping_redis(*, timeout: float, url: str | None = None) -> None:
    """PING the settings' Redis on a fresh connection (``redis_clients``), once, as ``serve``
    does at start; raises RedisError, OSError or ValueError."""
    clients = redis_clients(timeout, url=url)
    try:
        for client in clients:
            client.ping()
    finally:
        for client in clients:
            client.close()


class RedisHealth:
    """Whether the settings' Redis answers, for ``/healthz`` and ``/handshake-check``: both are
    public, and each used to PING on a new connection, so a client could make a process open a
    Redis connection per request (200 checks: 201 connections, 300 sockets left in TIME_WAIT)
    and, with Redis hung, hold a thread and a Redis socket per request for the timeout.

    Here a process keeps one client per Redis (one connection each, ``HEALTH_CHECK_TIMEOUT``
    to connect and to answer), runs at most one PING at a time, and reuses its answer for
    ``HEALTH_CHECK_INTERVAL`` seconds. A check that finds a PING under way answers with the last
    answer at once instead of waiting for it (only the very first waits, at most the timeout):
    with Redis hung, checks still answer within milliseconds, ``degraded`` from the first
    timeout on.
    """

    def __init__(self, *, interval: float, timeout: float) -> None:
        self.interval, self.timeout = interval, timeout
        self.lock = threading.Lock()  # held by the one PING under way
        self.answer: bool | None = None  # None: never asked yet
        self.fresh_until = 0.0
        self.clients: list[redis.Redis] | None = None

    def reachable(self) -> bool:
        """The last answer while it is fresh; else a new PING, unless one is under way."""
        if time.monotonic() < self.fresh_until and self.answer is not None:
            return self.answer
        first = self.answer is None
        if not (self.lock.acquire(timeout=2 * self.timeout) if first else self.lock.acquire(False)):
            return bool(self.answer)  # a PING is under way: the last answer, without waiting
        try:
            if time.monotonic() < self.fresh_until and self.answer is not None:
                return self.answer  # another thread asked while this one waited
            try:
                for client in self.connect():
                    client.ping()
            except (RedisError, OSError, ValueError) as error:
                if self.answer is not False:
                    logger.warning("Redis unreachable for /healthz: %s", error_text(error))
                self.answer = False
            else:
                self.answer = True
            self.fresh_until = time.monotonic() + self.interval
            return self.answer
        finally:
            self.lock.release()

    def connect(self) -> list[redis.Redis]:
        """The kept clients (made on first use): one pooled connection to each Redis."""
        if self.clients is None:
            # No retries: redis-py's default retries three times, 4x the timeout in all.
            self.clients = redis_clients(
                self.timeout, max_connections=1, retry=Retry(NoBackoff(), 0)
            )
        return self.clients


_health: dict[tuple, RedisHealth] = {}


def redis_health() -> RedisHealth:
    """This process's ``RedisHealth`` for the Redis the settings name now (tests change them)."""
    key = (
        tuple(settings.REDIS_URLS),
        tuple(settings.REDIS_SENTINELS),
        settings.REDIS_SENTINEL_MASTER,
        settings.HEALTH_CHECK_INTERVAL,
        settings.HEALTH_CHECK_TIMEOUT,
    )
    health = _health.get(key)
    if health is None:
        health = _health.setdefault(
            key,
            RedisHealth(
                interval=settings.HEALTH_CHECK_INTERVAL, timeout=settings.HEALTH_CHECK_TIMEOUT
            ),
        )
    return health


#: Values a receiver cannot change in place: a message holding only these is copied shallowly.
IMMUTABLE = (str, bytes, int, float, bool, type(None))


def copier(message: dict) -> Callable[[dict], dict]:
    """How to give each receiver its own copy of ``message``: ``dict`` where every value is
    immutable (a room message: text or bytes and its number), else ``deepcopy`` as Channels."""
    return dict if all(isinstance(v, IMMUTABLE) for v in message.values()) else copy.deepcopy


def message_bytes(message: dict) -> int:
    """What a queued message holds, roughly: its text or bytes plus a fixed overhead."""
    size = 200  # the dict, its keys and the queue entry
    for value in message.values():
        if isinstance(value, str | bytes | bytearray):
            size += len(value)
    return size


class ChannelQueue:
    """One channel's messages: ``(expiry, size, message)`` entries, and the receives waiting.

    ``asyncio.Queue`` does what a channel needs and more, at a price paid once per member per
    room message: a ``put`` checks ``full``, wakes a getter through ``_wakeup_next``, and a
    ``get`` loops over ``empty``, ``_get_loop`` and ``get_nowait`` (a fifth of the in-memory
    layer's time in a 1,000-member room, profiled). Here a ``put`` wakes a waiting receive's
    future directly, and a ``get`` with an entry queued returns it without a suspension.
    """

    __slots__ = ("entries", "getters", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.entries: deque[tuple[float, int, dict]] = deque()
        self.getters: deque[asyncio.Future] = deque()
        self.maxsize = maxsize

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self.entries)

    def put(self, entry: tuple[float, int, dict]) -> None:
        self.entries.append(entry)  # counted against maxsize until its receive takes it
        if self.getters:
            self.wake_one()

    async def get(self) -> tuple[float, int, dict]:
        while not self.entries:
            getter = asyncio.get_running_loop().create_future()
            self.getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                if getter in self.getters:
                    self.getters.remove(getter)
                elif self.entries:  # woken, then cancelled: the next receive is woken instead
                    self.wake_one()
                raise
        return self.entries.popleft()

    def wake_one(self) -> None:
        while self.getters:
            getter = self.getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def empty(self) -> bool:
        return not self.entries


class BoundedInMemoryChannelLayer(InMemoryChannelLayer):
    """Channels' in-memory layer, bounded in bytes, logged, and linear in a group's size.

    Channels' own, measured with one room of 300-1,000 members:

    - ``capacity`` counts messages: 10,000 messages of 256 KiB queued for one member that does
      not read held 2.5 GiB. Here a channel also holds at most ``capacity_bytes``.
    - ``group_send`` swallows ``ChannelFull`` (``except ChannelFull: pass``): every drop is
      silent. Here the first drop is logged, then one line every 10 s with the count
      (``app.logs.Throttled``), and each channel's drops are counted for ``take_drops``: a
      consumer with a ``layer_dropped`` handler is told after its next message (app/dispatch.py),
      and a room member closes with 1013.
    - A message past ``expiry`` is discarded and its channel removed from every group, without
      a word: a slow member went deaf for good. Here the expired message is dropped and counted
      like any other drop, and the member stays in its groups (so it sees the gap, and says so).
    - ``receive`` and ``group_send`` scan every channel of the process for expired messages, on
      every call: one room message to 1,000 members took 0.59 s. Here a channel's expired
      messages are dropped when it is read, and the whole scan runs at most once a second.
    - ``group_send`` creates a task per member; here the sends are a plain loop (``send`` never
      waits).
    - Each channel is an ``asyncio.Queue``; here a ``ChannelQueue``, and a message's size is
      reckoned once, when it is queued.
    """

    def __init__(self, *, capacity_bytes: int = 16 * 1024 * 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.capacity_bytes = capacity_bytes
        self.queued_bytes: dict[str, int] = {}
        self.dropped: dict[str, int] = {}  # messages dropped for each channel, not yet told
        self.drops = Throttled(logger)
        self.next_sweep = 0.0

    async def send(self, channel: str, message: dict) -> None:
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        if not self._put(channel, message, copier(message), message_bytes(message), time.time()):
            raise ChannelFull(channel)

    def _put(self, channel: str, message: dict, copy, size: int, now: float) -> bool:
        """Queue a copy of ``message`` for ``channel``; False (counted and logged) if full.

        The channel's queue is made once and kept while the channel is read (Channels makes a
        new ``asyncio.Queue`` on every ``send`` and ``receive`` and drops it whenever it is
        empty: 10 % of a room's time); the sweep forgets queues nobody waits on.
        """
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = ChannelQueue(self.get_capacity(channel))
        queued = self.queued_bytes.get(channel, 0)
        if queued + size > self.capacity_bytes:
            self._dropped(channel, message, f"{queued} bytes queued, limit {self.capacity_bytes}")
            return False
        if queue.full():
            self._dropped(channel, message, f"{queue.maxsize} messages queued")
            return False
        self.queued_bytes[channel] = queued + size
        queue.put((now + self.expiry, size, copy(message)))
        return True

    def _dropped(self, channel: str, message: dict, why: str) -> None:
        self.dropped[channel] = self.dropped.get(channel, 0) + 1
        metrics.layer_dropped.labels("full").inc()
        self.drops.warning(
            "dropped a %s for %s: channel full (%s)", message.get("type"), channel, why
        )

    def queued(self, channel: str) -> bool:
        """Whether messages wait in ``channel``'s queue."""
        queue = self.channels.get(channel)
        return queue is not None and bool(queue.entries)

    def take_drops(self, channel: str) -> int:
        """How many messages were dropped for ``channel`` since the last call (0: none)."""
        return self.dropped.pop(channel, 0) if self.dropped else 0

    async def receive(self, channel: str) -> dict:
        if channel not in self.channels:  # a known channel's name was checked when first seen
            self.require_valid_channel_name(channel)
        self._sweep()
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = ChannelQueue(self.get_capacity(channel))
        elif queue.entries:
            self._drop_expired(channel, queue)
            queue = self.channels.setdefault(channel, queue)  # emptied and forgotten: keep it
        try:
            # Queued already (a room's burst): taken without a coroutine of the queue's.
            entry = queue.entries.popleft() if queue.entries else await queue.get()
        except asyncio.CancelledError:  # its consumer has ended: forget the queue, as Channels
            self._forget_if_idle(channel, queue)
            raise
        _, size, message = entry
        remaining = self.queued_bytes.get(channel, 0) - size
        if remaining > 0:
            self.queued_bytes[channel] = remaining
        else:
            self.queued_bytes.pop(channel, None)
        return message

    async def group_send(self, group: str, message: dict) -> None:
        self.require_valid_group_name(group)
        self._sweep()
        members = self.groups.get(group)
        if not members:
            return
        # One copier, size and clock read for the whole room; a drop is logged by _put and seen
        # by the member (Channels swallows ChannelFull here without a word).
        copy, size, now = copier(message), message_bytes(message), time.time()
        for channel in list(members):
            self._put(channel, message, copy, size, now)

    def _drop_expired(self, channel: str, queue: ChannelQueue) -> None:
        now = time.time()
        expired = 0
        entries = queue.entries
        while entries and entries[0][0] < now:  # (expiry, size, message), oldest first
            _, size, _message = entries.popleft()
            self.queued_bytes[channel] = self.queued_bytes.get(channel, 0) - size
            expired += 1
        if expired:
            self.dropped[channel] = self.dropped.get(channel, 0) + expired
            metrics.layer_dropped.labels("expired").inc(expired)
            self.drops.warning(
                "dropped %d message(s) for %s: unread for %d s (expiry)",
                expired,
                channel,
                self.expiry,
            )
        self._forget_if_idle(channel, queue)

    def _forget_if_idle(self, channel: str, queue: ChannelQueue) -> None:
        """Forget ``channel``'s queue if it is empty and no receive waits on it (the next send
        or receive makes a new one)."""
        if not queue.entries and not queue.getters and self.channels.get(channel) is queue:
            del self.channels[channel]
            self.queued_bytes.pop(channel, None)

    def _sweep(self) -> None:
        """Channels' whole expiry scan, at most once a second instead of on every call."""
        now = time.monotonic()
        if now < self.next_sweep:
            return
        self.next_sweep = now + 1.0
        for channel, queue in list(self.channels.items()):
            self._drop_expired(channel, queue)
        timeout = int(time.time()) - self.group_expiry
        for channels in self.groups.values():
            for name, joined in list(channels.items()):
                if joined and joined < timeout:
                    channels.pop(name, None)

    async def flush(self) -> None:
        await super().flush()
        self.queued_bytes, self.dropped = {}, {}
