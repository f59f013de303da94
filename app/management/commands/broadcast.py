"""``python manage.py broadcast ROOM MESSAGE``: server push from outside any consumer."""

from __future__ import annotations

import uuid

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.management.base import BaseCommand, CommandError

from app import protocol
from app.layers import LAYER_ERRORS, error_text
from app.rooms import InvalidRoom, Publisher, Room


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
        layer = get_channel_layer()
        if layer is None or isinstance(layer, InMemoryChannelLayer):
            raise CommandError(
                "neither REDIS_URL nor REDIS_SENTINELS is set: the in-memory channel layer lives inside each server process, "
                "so a command cannot reach it"
            )
        try:
            event = Publisher(f"broadcast-{uuid.uuid4().hex}").event(protocol.send_text(message))
            async_to_sync(layer.group_send)(target.group, event)
        except LAYER_ERRORS as error:
            raise CommandError(f"channel layer unavailable: {error_text(error)}") from None
        self.stdout.write(f"sent {len(message.encode())} bytes to room {target.name}")
