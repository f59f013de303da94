"""Room names, apart from any I/O.

A room is named in its URL (``/ws/broadcast/{sync,async}/<room>/``). What orders its messages,
keeps its history and fans them out is its engine (app/room_engine.py); what one member does
with each message is app/room_log.py; the contract is docs/rooms.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.protocol import Scope

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
