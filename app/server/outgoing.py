"""Outgoing data frames: a message sent to many connections is framed (and compressed) once,
and what is sent during a turn of the event loop is written at its end.

A server's frames are not masked, so the bytes of a message's frame are the same for every
connection whose framing is the same: none, or deflate without context takeover with the same
parameters. A room message goes to each member in turn, and uvicorn encoded its text,
serialized its frame and, with deflate, compressed it once per member; here the last frame made
is kept, and reused while the same message goes out. A connection whose framing keeps state
(deflate with context takeover) has each frame made for it.
"""

from __future__ import annotations

import weakref
from typing import Any

from websockets.frames import Frame, Opcode

from app.protocol import Message
from app.server.deflate import Deflate

#: The last frame made: (framing, opcode, payload as the application gave it, frame bytes).
_last: tuple[Any, Opcode, Any, bytes] | None = None


def framing(extensions: list) -> tuple | None:
    """What a frame's bytes depend on beyond its payload, for a connection with these
    extensions; None when they keep state from message to message (not to be shared)."""
    if not extensions:
        return ()
    if len(extensions) == 1 and type(extensions[0]) is Deflate:
        return extensions[0].framing  # reckoned once, at the handshake
    return None


def data_frame(message: Message, extensions: list) -> bytes | None:
    """The bytes of the frame carrying ``message`` (a ``websocket.send``), made once for a run
    of connections with the same framing: what websockets' ``send_text`` or ``send_binary``
    would have written. None for a message with neither text nor bytes (uvicorn sends nothing
    for it; its own path says so)."""
    global _last
    payload = message.get("bytes")
    if payload is not None:
        opcode = Opcode.BINARY
    elif (payload := message.get("text")) is not None:
        opcode = Opcode.TEXT
    else:
        return None
    # Shared only for immutable payloads: a bytearray changed in place is another message.
    shape = framing(extensions) if type(payload) in (str, bytes) else None
    last = _last
    if (
        shape is not None
        and last is not None
        and last[1] is opcode
        and last[0] == shape
        and (last[2] is payload or last[2] == payload)
    ):
        return last[3]
    data = payload.encode() if opcode is Opcode.TEXT else payload
    frame = Frame(opcode, data).serialize(mask=False, extensions=extensions)
    if shape is not None:
        _last = (shape, opcode, payload, frame)
    return frame


class WriteBatch:
    """The frames the applications send during one turn of the event loop, written together at
    its end, one write per connection.

    A room message goes out as its members' handlers run, one after another, each with work of
    its own between two writes: a client process on the same machine had caught up by the next
    write and was woken for each (the kernel's wake-up, in the server's write, was an eighth of
    its time in a 1,000-member room, profiled). Written together, the writes follow one
    another; a connection sent several messages in the turn gets them in one write.

    Order on a connection is kept: whatever else writes to it (a close, the answer to a
    handshake, uvicorn's own frames while it reads) first takes its frames out (``flush_one``).
    """

    def __init__(self) -> None:
        self.pending: dict[Any, list[bytes]] = {}

    def add(self, loop: Any, transport: Any, frame: bytes) -> None:
        # ``loop`` is passed, not kept: a batch holding its loop would keep the loop alive
        # through ``_batches``, whose keys are weak.
        pending = self.pending
        if not pending:
            loop.call_soon(self.flush)
        frames = pending.get(transport)
        if frames is None:
            pending[transport] = [frame]
        else:
            frames.append(frame)

    def flush_one(self, transport: Any) -> None:
        """Write ``transport``'s frames now, before something else is written to it."""
        if self.pending and (frames := self.pending.pop(transport, None)):
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def drop(self, transport: Any) -> None:
        """Forget the frames of a connection that is gone."""
        self.pending.pop(transport, None)

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for transport, frames in pending.items():
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


_batches: weakref.WeakKeyDictionary[Any, WriteBatch] = weakref.WeakKeyDictionary()


def batch_for(loop: Any) -> WriteBatch:
    """The batch of ``loop`` (a server runs one; tests run several, one per thread)."""
    batch = _batches.get(loop)
    if batch is None:
        batch = _batches[loop] = WriteBatch()
    return batch
