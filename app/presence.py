"""Who is in a room, apart from any I/O: the entries, the frames, and one process's count of
connections per member name.

A member is a name (a token's member, a signed-in user's username, or an anonymous id). One
name with several connections is one member with several connections, as in Phoenix: it joins
with its first connection and leaves with its last. The welcome carries a snapshot (``count``,
everyone, and the first ``ROOM_PRESENCE_LIST`` members); the other members get ``join`` and
``leave`` frames while the room has at most ``ROOM_PRESENCE_EVENTS_MAX`` members. The engines
(app/room_engine.py, app/room_redis.py) keep the count in the process or in Redis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Who:
    """A member: its name, and the Django user behind it (None: no signed-in user)."""

    member: str
    user: str | None = None

    def entry(self) -> dict:
        return {"member": self.member, "user": self.user}


def frame(kind: str, who: Who) -> str:
    """A ``join`` or ``leave`` frame, as every other ``rooms.v1`` member gets it."""
    return json.dumps({"type": kind, "member": who.entry()}, separators=(",", ":"))


def snapshot(count: int, listed: list[Who]) -> dict:
    """The welcome's ``presence``: the whole room's count, and some of its members."""
    return {"count": count, "members": [who.entry() for who in listed]}


def about(presence_frame: str) -> str:
    """The member name a ``join`` or ``leave`` frame is about (its own connections skip it)."""
    return json.loads(presence_frame)["member"]["member"]


class Names:
    """One process's connections per member name in one room, and each name's user."""

    def __init__(self) -> None:
        self.connections: dict[str, int] = {}
        self.users: dict[str, str | None] = {}

    def add(self, who: Who) -> bool:
        """Count a connection; True for the name's first here."""
        count = self.connections.get(who.member, 0)
        self.connections[who.member] = count + 1
        self.users[who.member] = who.user
        return count == 0

    def remove(self, who: Who) -> bool:
        """Uncount a connection; True for the name's last here."""
        count = self.connections.get(who.member, 0) - 1
        if count > 0:
            self.connections[who.member] = count
            return False
        self.connections.pop(who.member, None)
        self.users.pop(who.member, None)
        return count == 0

    def __len__(self) -> int:
        return len(self.connections)

    def first(self, limit: int) -> list[Who]:
        listed = []
        for name in self.connections:
            if len(listed) >= limit:
                break
            listed.append(Who(name, self.users.get(name)))
        return listed
