"""The applications the benchmark compares with the project's consumers.

- ``ceiling``: a raw ASGI echo with no Django and no Channels, the most a server can do.
- ``fanout_ceiling``: a room by hand on the raw ASGI interface, what a user writing rooms
  without Channels gets: each room a set of its members' ``send``, every message sent to all
  of them in one loop. The ceiling for the project's rooms (bench/fanout.py).
- ``starlette``: a Starlette WebSocket echo, as its documentation writes one: the peer a user
  would pick instead of Channels.
- ``stock``: Channels' ``AsyncConsumer`` and ``SyncConsumer`` written as the Channels
  documentation shows them, routed as the documentation routes them.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from channels.consumer import AsyncConsumer, SyncConsumer  # noqa: E402
from channels.exceptions import StopConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


async def ceiling(scope, receive, send) -> None:
    """Echo straight on the ASGI interface."""
    assert scope["type"] == "websocket"
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            return


#: Each room's members, by the path they connected to: their ``send`` callables.
ROOMS: dict[str, set] = {}


async def fanout_ceiling(scope, receive, send) -> None:
    """A room on the raw ASGI interface: every text received goes to every member, in a loop."""
    assert scope["type"] == "websocket"
    members = ROOMS.setdefault(scope["path"], set())
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
            members.add(send)
        elif message["type"] == "websocket.receive":
            outgoing = {"type": "websocket.send", "text": message.get("text")}
            for member in list(members):
                try:
                    await member(outgoing)
                except Exception:
                    members.discard(member)
        else:
            members.discard(send)
            return


class StockAsyncEcho(AsyncConsumer):
    async def websocket_connect(self, event):
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, event):
        await self.send({"type": "websocket.send", "text": event["text"]})

    async def websocket_disconnect(self, event):
        raise StopConsumer()


class StockSyncEcho(SyncConsumer):
    def websocket_connect(self, event):
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event):
        self.send({"type": "websocket.send", "text": event["text"]})

    def websocket_disconnect(self, event):
        raise StopConsumer()


stock = ProtocolTypeRouter(
    {
        "websocket": URLRouter(
            [
                path("ws/echo/sync/", StockSyncEcho.as_asgi()),
                path("ws/echo/async/", StockAsyncEcho.as_asgi()),
            ]
        )
    }
)


async def starlette_echo(websocket) -> None:
    """Starlette's WebSocket endpoint: accept, then echo text as text and bytes as bytes."""
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await websocket.send_text(message["text"])
        else:
            await websocket.send_bytes(message["bytes"])


def _starlette():
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    return Starlette(routes=[WebSocketRoute("/ws/echo/async/", starlette_echo)])


starlette = _starlette()
