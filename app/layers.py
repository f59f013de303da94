"""Channel layers: which failures mean "the layer is unavailable", and an in-memory layer that
says when it drops a message instead of dropping it silently.
"""

from __future__ import annotations

import asyncio
import logging

import redis
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer
from redis.exceptions import RedisError

logger = logging.getLogger("app.layers")

#: What a channel layer raises when it cannot carry a message (Redis down, unreachable, slow).
LAYER_ERRORS = (OSError, asyncio.TimeoutError, RedisError, ChannelFull)


def error_text(error: BaseException) -> str:
    """An exception as one log-line fragment: ``ConnectionError: Connection refused``."""
    return f"{type(error).__name__}: {error}"


def ping_redis(url: str, *, timeout: float) -> None:
    """PING the Redis at ``url`` on a fresh connection; raises RedisError, OSError or ValueError."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


class LoggingInMemoryChannelLayer(InMemoryChannelLayer):
    """Channels' in-memory layer, logging each message it drops at a full channel.

    ``group_send`` swallows ``ChannelFull`` (``except ChannelFull: pass``); ``send`` raising it
    is the one place the drop can be seen, so it is logged there, once per message.
    """

    async def send(self, channel: str, message: dict) -> None:
        try:
            await super().send(channel, message)
        except ChannelFull:
            logger.warning(
                "dropped a %s for %s: channel full (capacity %d)",
                message.get("type"),
                channel,
                self.capacity,
            )
            raise
