"""The echo consumers: one ``SyncConsumer`` and one ``AsyncConsumer``, handler for handler.

Channels calls the method named after each message type (``websocket.connect`` ->
``websocket_connect``). Both consumers hand the event to an ``EchoSession``, which holds
the rules, and send what it returns; read either class top to bottom to follow the spec.
"""

from __future__ import annotations

from channels.consumer import AsyncConsumer, SyncConsumer
from channels.exceptions import StopConsumer

from app.echo import EchoSession
from app.protocol import Message


class EchoSyncConsumer(SyncConsumer):
    """Echo in plain blocking code; Channels runs the handlers in a worker thread."""

    channel_layer_alias = None  # echo needs no channel layer, so it pays for none

    def websocket_connect(self, event: Message) -> None:
        self.echo = EchoSession.from_settings(self.scope, consumer="sync")
        self.send(self.echo.accept())

    def websocket_receive(self, event: Message) -> None:
        if reply := self.echo.reply(event):
            self.send(reply)

    def websocket_disconnect(self, event: Message) -> None:
        self.echo.disconnected(event)
        raise StopConsumer()


class EchoAsyncConsumer(AsyncConsumer):
    """The same echo as coroutines, on the server's event loop."""

    channel_layer_alias = None

    async def websocket_connect(self, event: Message) -> None:
        self.echo = EchoSession.from_settings(self.scope, consumer="async")
        await self.send(self.echo.accept())

    async def websocket_receive(self, event: Message) -> None:
        if reply := self.echo.reply(event):
            await self.send(reply)

    async def websocket_disconnect(self, event: Message) -> None:
        self.echo.disconnected(event)
        raise StopConsumer()
