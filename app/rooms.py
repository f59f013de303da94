"""Broadcast rooms, apart from any I/O: names, group names and the custom ``room.message`` event.

A room is a channel-layer group. Every message a member sends becomes one ``room.message``
event to the group; Channels calls each member's ``room_message`` handler with it (the seed's
rule: ``.`` becomes ``_``), which forwards it to that member's socket.

A member that falls behind is never left to lose messages unknowingly. Every layer drops
messages for a member whose queue is full (``capacity``, and bytes in memory) or that waited
past ``expiry``. So each publisher numbers its messages (``Publisher``), each member checks the
numbers (``Gaps``), and a member that finds a gap is closed with 1013 and a WARNING line saying
how many it lost: it is told, and can reconnect. The other members are not slowed by it: each has
its own queue. This is the policy of Phoenix and Centrifugo (close the slow subscriber), and it
works the same on the in-memory layer and on channels-redis.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from django.conf import settings

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


class Publisher:
    """Numbers what one sender (a member, or one ``manage.py broadcast``) publishes: 1, 2, 3..."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.numbers = itertools.count(1)

    def event(self, message: Message) -> Message:
        """The ``room.message`` group event carrying a ``websocket.send``'s text or bytes."""
        return {**message, "type": "room.message", "sender": self.sender, "seq": next(self.numbers)}


class Gaps:
    """What one member has received of each sender: a jump in a sender's numbers is a loss, and
    a number seen already is a duplicate (``DUPLICATE``), not to be delivered again: after a
    Redis failover, a message the old master handed out may still be queued on the new one.

    Counting starts at the first message from each sender after joining. At most
    ``ROOM_GAP_SENDERS`` senders (128) are remembered, the least recently heard forgotten
    first: each costs a member about 160 bytes for as long as it lives (2,000 one-message
    senders held 270 KiB per member under the old bound of 4,096; 19 KiB now: issue 32). A forgotten sender's next message starts its count again,
    so a gap or a duplicate just before that message goes unseen. What loses messages (a
    member's full or expired queue, a failover) loses them from every sender at once, and the
    senders heard most recently, which such a loss hits, are the ones remembered.
    """

    DUPLICATE = -1

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.max_senders: int = settings.ROOM_GAP_SENDERS

    def lost(self, event: Message) -> int:
        """How many of this sender's messages were lost just before ``event`` (0: none), or
        ``DUPLICATE``."""
        sender, seq = event.get("sender"), event.get("seq")
        if sender is None or not isinstance(seq, int):
            return 0  # not numbered (sent by other code): nothing to check
        previous = self.last.pop(sender, None)
        if previous is not None and seq <= previous:
            self.last[sender] = previous
            return self.DUPLICATE
        self.last[sender] = seq
        if len(self.last) > self.max_senders:
            del self.last[next(iter(self.last))]
        return seq - previous - 1 if previous is not None and seq > previous + 1 else 0


def forward(event: Message) -> Message:
    """The ``websocket.send`` that delivers a ``room.message`` event to one member."""
    if event.get("bytes") is not None:
        return protocol.send_bytes(event["bytes"])
    return protocol.send_text(event["text"])
