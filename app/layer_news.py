"""The channel layer's news, for the consumers that opt in to it.

A consumer with a ``layer_unavailable`` handler is told once, by a ``layer.unavailable`` event,
that the layer failed (any other consumer gets the layer's exception, as with Channels); one with
a ``layer_dropped`` handler is told, by a ``layer.dropped`` event with the count, when the layer
dropped messages meant for it (``take_drops``, app/layers.py), once it has read what was queued. A consumer that opts in to
neither reads the layer's own ``receive`` and pays nothing for this.
"""

from __future__ import annotations

import asyncio

from app import metrics
from app.layers import LAYER_ERRORS, closed_transport, error_text
from app.protocol import Message, Receive


def wants_news(consumer: object) -> bool:
    """Whether ``consumer`` has a handler for either event."""
    return hasattr(consumer, "layer_unavailable") or hasattr(consumer, "layer_dropped")


class LayerNews:
    """A channel's ``receive`` that turns the layer's failures and drops into events."""

    def __init__(self, layer: object, channel_name: str, receive: Receive, *, drops: bool) -> None:
        self.layer, self.channel_name, self.channel_receive = layer, channel_name, receive
        #: Whether to ask the layer for drops (the consumer has ``layer_dropped``, and the layer
        #: counts them and says what is queued).
        self.drops = drops and hasattr(layer, "take_drops") and hasattr(layer, "queued")
        self.news: list[Message] = []
        self.failed = False

    async def receive(self) -> Message:
        """The next message, a ``layer.dropped`` event after the message that revealed drops,
        or one ``layer.unavailable`` event when the layer fails (and nothing after it)."""
        if self.news:
            return self.news.pop()
        if self.failed:
            await asyncio.Future()  # told the consumer once; it is closing, so wait for nothing
        for attempt in (1, 2):
            try:
                message = await self.channel_receive()
                # Told once the channel's queue is empty: then every message dropped for it
                # is behind it, and what it missed is exactly what it has not had.
                if (
                    self.drops
                    and not self.layer.queued(self.channel_name)
                    and (lost := self.layer.take_drops(self.channel_name))
                ):
                    self.news.append({"type": "layer.dropped", "count": lost})
                return message
            except (*LAYER_ERRORS, RuntimeError) as error:
                if isinstance(error, RuntimeError) and not closed_transport(error):
                    raise
                # Once more: after Redis restarts, the first command on a pooled connection fails.
                if attempt == 2:
                    metrics.layer_errors.labels("receive").inc()
                    self.failed = True
                    return {"type": "layer.unavailable", "error": error_text(error)}
        raise AssertionError("unreachable")
