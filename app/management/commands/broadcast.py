"""``python manage.py broadcast ROOM MESSAGE``: server push from outside any consumer."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.management.base import BaseCommand, CommandError

from app import protocol
from app.layers import LAYER_ERRORS, error_text
from app.room_log import BROADCAST_SENDER
from app.room_redis import RedisRooms
from app.rooms import InvalidRoom, Room


class Command(BaseCommand):
    help = "Send MESSAGE (text) to every client in ROOM, on every server process sharing REDIS_URL."

    def add_arguments(self, parser):
        parser.add_argument("room")
        parser.add_argument("message")

    def handle(self, *args, room: str, message: str, **options):
        try:
            target = Room.named(room)
        except InvalidRoom as error:
            raise CommandError(str(error)) from None
        layer = get_channel_layer("rooms")
        if not isinstance(layer, RedisRooms):
            raise CommandError(
                "ROOM_ENGINE is memory (neither REDIS_URL nor REDIS_SENTINELS is set): each "
                "server process keeps its rooms to itself, so a command cannot reach them"
            )
        try:
            # Through the engine: the message gets the room's next offset and is kept.
            async_to_sync(layer.publish)(target.name, BROADCAST_SENDER, protocol.send_text(message))
        except LAYER_ERRORS as error:
            raise CommandError(f"channel layer unavailable: {error_text(error)}") from None
        self.stdout.write(f"sent {len(message.encode())} bytes to room {target.name}")
