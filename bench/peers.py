"""The peers of the room benchmark (bench/fanout.py): what a Python user would pick for rooms
instead of this project, each written as its documentation shows and run under plain uvicorn
with its defaults.

- ``socketio_room``: python-socketio's ``AsyncServer`` (``async_mode="asgi"``) in
  ``socketio.ASGIApp``. A client joins the room its query names (``?room=``) when it connects;
  each ``message`` event it sends is emitted to the room (the sender included). With
  ``REDIS_URL`` set, the server's client manager is ``socketio.AsyncRedisManager`` on it, so rooms
  span processes; otherwise it is the default, in memory.
- ``channels_chat``: stock Channels, the tutorial's chat consumer (``AsyncWebsocketConsumer``:
  ``group_add`` on connect, ``group_send`` of a ``chat.message`` event on receive,
  ``chat_message`` sends it) on the layer of bench/peer_settings.py (channels-redis'
  ``RedisChannelLayer``, its defaults but for the two connection options redis-py 8 needs for
  it to run at all: ``socket_timeout`` and ``max_connections``). It forwards the text as it came, where the tutorial
  wraps it in JSON (``{"message": ...}``), so that the benchmark's members send and read the
  same frames as on the project's plain rooms; the tutorial's session and origin middleware,
  which act only at the handshake, are left out.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

import django
import socketio

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peer_settings")
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

# --- python-socketio ------------------------------------------------------------------------

_redis_url = os.environ.get("REDIS_URL", "").strip()
sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=socketio.AsyncRedisManager(_redis_url) if _redis_url else None,
)
#: Each connected client's room, by its sid.
ROOM_OF: dict[str, str] = {}


@sio.event
async def connect(sid, environ, auth=None):
    room = parse_qs(environ.get("QUERY_STRING", "")).get("room", ["lobby"])[0]
    ROOM_OF[sid] = room
    await sio.enter_room(sid, room)


@sio.event
async def message(sid, data):
    await sio.emit("message", data, to=ROOM_OF[sid])


@sio.event
async def disconnect(sid, reason=None):
    ROOM_OF.pop(sid, None)


socketio_room = socketio.ASGIApp(sio)


# --- stock Channels: the tutorial's chat consumer -------------------------------------------


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        await self.channel_layer.group_send(
            self.room_group_name, {"type": "chat.message", "message": text_data}
        )

    async def chat_message(self, event):
        await self.send(text_data=event["message"])


channels_chat = ProtocolTypeRouter(
    {"websocket": URLRouter([re_path(r"ws/chat/(?P<room_name>\w+)/$", ChatConsumer.as_asgi())])}
)
