"""Channel layers: which failures mean "the layer is unavailable", and an in-memory layer that
is bounded in bytes, says when it drops a message, and stays linear in a group's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis
import redis.sentinel
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer
from django.conf import settings
from redis.exceptions import RedisError

from app import metrics
from app.logs import Throttled

logger = logging.getLogger("app.layers")

#: What a channel layer raises when it cannot carry a message (Redis down, unreachable, slow).
LAYER_ERRORS = (OSError, asyncio.TimeoutError, RedisError, ChannelFull)


def error_text(error: BaseException) -> str:
    """An exception as one log-line fragment: ``ConnectionError: Connection refused``."""
    return f"{type(error).__name__}: {error}"


def ping_redis(*, timeout: float) -> None:
    """PING the settings' Redis (REDIS_URL, or the master REDIS_SENTINELS name) on a fresh
    connection; raises RedisError, OSError or ValueError."""
    limits = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if settings.REDIS_SENTINELS:
        sentinel = redis.sentinel.Sentinel(settings.REDIS_SENTINELS, sentinel_kwargs=limits)
        client = sentinel.master_for(settings.REDIS_SENTINEL_MASTER, **limits)
    else:
        client = redis.Redis.from_url(settings.REDIS_URL, **limits)
    try:
        client.ping()
    finally:
        client.close()


def message_bytes(message: dict) -> int:
    """What a queued message holds, roughly: its text or bytes plus a fixed overhead."""
    size = 200  # the dict, its keys and the queue entry
    for value in message.values():
        if isinstance(value, str | bytes | bytearray):
            size += len(value)
    return size


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
    """

    def __init__(self, *, capacity_bytes: int = 16 * 1024 * 1024, **kwargs) -> None:
        super().__init__(**kwargs)
        self.capacity_bytes = capacity_bytes
        self.queued_bytes: dict[str, int] = {}
        self.dropped: dict[str, int] = {}  # messages dropped for each channel, not yet told
        self.drops = Throttled(logger)
        self.next_sweep = 0.0

    async def send(self, channel: str, message: dict) -> None:
        size = message_bytes(message)
        queued = self.queued_bytes.get(channel, 0)
        if queued + size > self.capacity_bytes:
            self._dropped(channel, message, f"{queued} bytes queued, limit {self.capacity_bytes}")
            raise ChannelFull(channel)
        try:
            await super().send(channel, message)
        except ChannelFull:
            self._dropped(channel, message, f"{self.get_capacity(channel)} messages queued")
            raise
        self.queued_bytes[channel] = queued + size

    def _dropped(self, channel: str, message: dict, why: str) -> None:
        self.dropped[channel] = self.dropped.get(channel, 0) + 1
        metrics.layer_dropped.labels("full").inc()
        self.drops.warning(
            "dropped a %s for %s: channel full (%s)", message.get("type"), channel, why
        )

    def take_drops(self, channel: str) -> int:
        """How many messages were dropped for ``channel`` since the last call (0: none)."""
        return self.dropped.pop(channel, 0) if self.dropped else 0

    async def receive(self, channel: str) -> dict:
        self.require_valid_channel_name(channel)
        self._sweep()
        if queue := self.channels.get(channel):
            self._drop_expired(channel, queue)
        queue = self.channels.setdefault(channel, asyncio.Queue(maxsize=self.get_capacity(channel)))
        try:
            _, message = await queue.get()
        finally:
            if queue.empty():
                self.channels.pop(channel, None)
        remaining = self.queued_bytes.get(channel, 0) - message_bytes(message)
        if remaining > 0 and channel in self.channels:
            self.queued_bytes[channel] = remaining
        else:
            self.queued_bytes.pop(channel, None)
        return message

    async def group_send(self, group: str, message: dict) -> None:
        self.require_valid_group_name(group)
        self._sweep()
        for channel in list(self.groups.get(group, {})):
            with contextlib.suppress(ChannelFull):  # logged by send, seen by the member
                await self.send(channel, message)

    def _drop_expired(self, channel: str, queue: asyncio.Queue) -> None:
        now = time.time()
        expired = 0
        while not queue.empty() and queue._queue[0][0] < now:  # (expiry, message), oldest first
            _, message = queue.get_nowait()
            self.queued_bytes[channel] = self.queued_bytes.get(channel, 0) - message_bytes(message)
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
        if queue.empty() and not queue._getters:  # forget it only if no receive waits on it
            self.channels.pop(channel, None)
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
