"""Broadcast rooms, apart from any I/O: names, group names and the custom ``room.message`` event.

A room is a channel-layer group. Every message a member sends becomes one ``room.message``
event to the group; Channels calls each member's ``room_message`` handler with it (the seed's
rule: ``.`` becomes ``_``), which forwards it to that member's socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app import protocol
from app.protocol import Message, Scope

#: Channel-layer group names allow ASCII letters, digits, hyphen, underscore and period, and
#: fewer than 100 characters; "room." takes 5 of them.
ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]+")
MAX_ROOM_NAME_LENGTH = 80


class InvalidRoom(ValueError):
    """A room name a channel-layer group cannot carry; the message says why."""


@dataclass(frozen=True)
class Room:
    name: str

    @property
    def group(self) -> str:
        return f"room.{self.name}"

    @classmethod
    def from_scope(cls, scope: Scope) -> Room:
        return cls.named(scope["url_route"]["kwargs"]["room"])

    @classmethod
    def named(cls, name: str) -> Room:
        if not 1 <= len(name) <= MAX_ROOM_NAME_LENGTH:
            raise InvalidRoom(
                f"room name must be 1 to {MAX_ROOM_NAME_LENGTH} characters, not {len(name)}"
            )
        if not ROOM_NAME.fullmatch(name):
            raise InvalidRoom("room name may hold only ASCII letters, digits, '-', '_' and '.'")
        return cls(name)


def room_event(message: Message) -> Message:
    """The ``room.message`` group event carrying a ``websocket.send``'s text or bytes."""
    return {**message, "type": "room.message"}


def forward(event: Message) -> Message:
    """The ``websocket.send`` that delivers a ``room.message`` event to one member."""
    if event.get("bytes") is not None:
        return protocol.send_bytes(event["bytes"])
    return protocol.send_text(event["text"])
