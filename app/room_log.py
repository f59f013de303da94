"""The ``rooms.v1`` protocol apart from any I/O: ``since``, epochs, member ids, the JSON frames,
a room's bounded history, and what one member does with each room message.

The contract is written down in docs/rooms.md; this module is its code. A room's messages carry
consecutive offsets from 1 under an epoch; the epoch changes whenever the room's history is lost,
so an offset is never reused under one epoch. A member that knows the last ``epoch:offset`` it got
can ask for what came after (``since``) and is told whether it got all of it (``recovered``).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from app import protocol
from app.protocol import Message

#: The subprotocol a client offers to get JSON frames with offsets instead of plain forwarding.
ROOMS_V1 = "rooms.v1"
#: An epoch is a short token of ASCII letters, digits, ``-`` and ``_``.
EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Offsets are Redis integers: at most 2**63 - 1.
MAX_OFFSET = 2**63 - 1
#: The sender named in a message published from outside any member (``manage.py broadcast``).
BROADCAST_SENDER = "broadcast"


class InvalidSince(ValueError):
    """A ``since`` that is not ``<epoch>:<offset>``; the message says why (HTTP 400)."""


@dataclass(frozen=True)
class Since:
    """Where a resuming member left off: the last offset it got under ``epoch``."""

    epoch: str
    offset: int


def parse_since(query_string: bytes | str) -> Since | None:
    """The ``since`` of a handshake's query string, None if absent; raises ``InvalidSince``."""
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    values = parse_qs(query_string, keep_blank_values=True).get("since")
    if values is None:
        return None
    if len(values) != 1:
        raise InvalidSince("since given more than once")
    epoch, colon, offset = values[0].rpartition(":")
    if not colon or not EPOCH.fullmatch(epoch):
        raise InvalidSince("since must be <epoch>:<offset>, the epoch 1 to 64 of A-Z a-z 0-9 - _")
    if not offset.isascii() or not offset.isdigit() or len(offset) > 19 or int(offset) > MAX_OFFSET:
        raise InvalidSince("since's offset must be an integer from 0 to 2**63-1")
    return Since(epoch, int(offset))


def new_epoch() -> str:
    """A fresh epoch: 12 characters, 72 random bits."""
    return secrets.token_urlsafe(9)


def new_member_id() -> str:
    """A member's id: 16 characters, 96 random bits; never its channel name."""
    return secrets.token_urlsafe(12)


def payload(sender: str, message: Message) -> str:
    """What is published for a ``websocket.send``-shaped message: JSON ``from`` and ``text``, or
    ``bytes`` in base64. Made once by the publisher; every process builds its frames from it."""
    if message.get("bytes") is not None:
        body = {"from": sender, "bytes": base64.b64encode(message["bytes"]).decode("ascii")}
    else:
        body = {"from": sender, "text": message["text"]}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def room_event(offset: int, published: str) -> Message:
    """The ``room.message`` event for a published payload at ``offset``: the ``rooms.v1`` frame
    (``envelope``, the same text for every member, made once per process) and the plain
    message's ``text`` or ``bytes``."""
    body = json.loads(published)
    event: Message = {
        "type": "room.message",
        "offset": offset,
        "envelope": f'{{"type":"message","offset":{offset},{published[1:]}',
    }
    if "bytes" in body:
        event["bytes"] = base64.b64decode(body["bytes"])
    else:
        event["text"] = body["text"]
    return event


def welcome(
    room: str,
    member: str,
    epoch: str,
    offset: int,
    recovered: bool | None,
    presence: dict | None = None,
) -> Message:
    """The first frame a ``rooms.v1`` member gets."""
    frame: dict = {
        "type": "welcome",
        "room": room,
        "member": member,
        "epoch": epoch,
        "offset": offset,
    }
    if recovered is not None:
        frame["recovered"] = recovered
    if presence is not None:
        frame["presence"] = presence
    return protocol.send_text(json.dumps(frame, separators=(",", ":")))


@dataclass(frozen=True)
class Joined:
    """What a member learns when it joins: the welcome's fields, the messages it missed (when
    ``recovered``), and the offset after which live delivery goes on."""

    epoch: str
    offset: int
    recovered: bool | None
    replay: list[Message]
    start: int
    presence: dict | None = None  # the welcome's: count and members


@dataclass(frozen=True)
class HistoryLimits:
    """How much of a room is kept: messages, seconds, bytes. ``0`` on any turns history off."""

    size: int
    ttl: float
    max_bytes: int

    @property
    def on(self) -> bool:
        return self.size > 0 and self.ttl > 0 and self.max_bytes > 0


def event_bytes(event: Message) -> int:
    """What one room event holds, kept or queued, roughly: its frame, its body and a fixed
    overhead."""
    body = event.get("text") if event.get("text") is not None else event.get("bytes") or b""
    return 200 + len(event["envelope"]) + len(body)


@dataclass
class History:
    """A room's last messages, oldest first, bounded by ``limits``; ``last`` is the room's last
    offset whether or not history is on."""

    limits: HistoryLimits
    last: int = 0
    entries: deque = field(default_factory=deque)  # (offset, monotonic time, bytes, event)
    held: int = 0

    def append(self, event: Message, size: int | None = None) -> None:
        """Keep ``event``, whose offset is ``last + 1`` and which holds ``size`` bytes (default
        ``event_bytes``), dropping what falls out of the limits."""
        self.last = event["offset"]
        if not self.limits.on:
            return
        size = event_bytes(event) if size is None else size
        self.entries.append((self.last, time.monotonic(), size, event))
        self.held += size
        while len(self.entries) > self.limits.size or (
            self.held > self.limits.max_bytes and len(self.entries) > 1
        ):
            self.held -= self.entries.popleft()[2]

    def after(self, offset: int, upto: int | None = None) -> list[Message] | None:
        """The kept messages after ``offset`` up to ``upto`` (default ``last``), or None when
        any of them is no longer kept (trimmed, or older than the TTL)."""
        upto = self.last if upto is None else upto
        if offset >= upto:
            return []
        if not self.entries:
            return None
        first = self.entries[0][0]
        if offset + 1 < first or upto > self.last:
            return None
        start = offset + 1 - first
        wanted = [self.entries[i] for i in range(start, start + upto - offset)]
        if wanted[0][1] < time.monotonic() - self.limits.ttl:
            return None
        return [entry[3] for entry in wanted]

    def forget(self) -> None:
        """Forget every kept message (``last`` stays: offsets go on)."""
        self.entries.clear()
        self.held = 0

    def sweep(self) -> None:
        """Forget what is older than the TTL."""
        oldest = time.monotonic() - self.limits.ttl
        while self.entries and self.entries[0][1] < oldest:
            self.held -= self.entries.popleft()[2]


@dataclass
class Gap:
    """Messages a member must get from the history before ``then`` (None: up to the room's
    last): those after ``after``."""

    after: int
    then: Message | None


@dataclass
class Member:
    """One member's side of the guarantee: the offsets it has had, the frames it is sent.

    ``take`` answers a room event with the sends it makes, or a ``Gap`` to mend first
    (``mend``): after its welcome a member gets every offset once, in order, or is closed.
    """

    room: str
    id: str
    v1: bool
    last: int = 0
    publish: bool = True  # False: a read-only member (its token says so)

    def joined(self, joined: Joined) -> list[Message]:
        """The welcome (``rooms.v1`` only) and the messages recovered; live delivery goes on
        after ``joined.start``."""
        self.last = joined.start
        frames = [self.frame(event) for event in joined.replay]
        if not self.v1:
            return frames
        first = welcome(
            self.room, self.id, joined.epoch, joined.offset, joined.recovered, joined.presence
        )
        return [first, *frames]

    def frame(self, event: Message) -> Message:
        if self.v1:
            return protocol.send_text(event["envelope"])
        if event.get("bytes") is not None:
            return protocol.send_bytes(event["bytes"])
        return protocol.send_text(event["text"])

    def take(self, event: Message) -> list[Message] | Gap:
        """The sends for a ``room.message`` event: none for one had already, a ``Gap`` for one
        that skips offsets."""
        offset = event["offset"]
        if offset <= self.last:
            return []
        if offset > self.last + 1:
            return Gap(self.last, event)
        self.last = offset
        return [self.frame(event)]

    def mend(self, gap: Gap, kept: list[Message] | None, upto: int) -> list[Message] | int:
        """The sends that fill ``gap`` from ``kept`` (the history's messages after ``gap.after``
        up to ``upto``), then ``gap.then``; or how many messages are lost when the history no
        longer holds them."""
        if kept is None:
            return max(1, upto - gap.after)
        sends: list[Message] = []
        for event in [*kept, *([gap.then] if gap.then is not None else [])]:
            taken = self.take(event)  # kept is consecutive from gap.after + 1: never a Gap
            sends += taken if isinstance(taken, list) else []
        return sends
