"""``x-behaviours``: an ASGI extension for what a test server does on purpose and plain ASGI
cannot say: fragment a message, pick RSV1 per message, ping, drop the TCP connection.

The ``/ws/test/`` consumer (``app/test_server.py``) uses it; on a server without it (daphne,
hypercorn, granian) those behaviours are refused at the handshake instead.

**Advertised** in the scope: ``scope["extensions"]["x-behaviours"] = {"deflate": bool}``,
``deflate`` saying whether permessage-deflate was negotiated on this connection.

**Messages the application may send**, once it has accepted:

- ``{"type": "websocket.x.send", "text" | "bytes": ..., "fragment": int | None, "compress":
  bool | None}``: a message, as ``websocket.send``, with
  - ``fragment``: the message's payload (as it goes on the wire, compressed or not) cut into
    frames of this many bytes, the last one shorter (default None: one frame);
  - ``compress`` (permessage-deflate negotiated): None, as the connection compresses any
    message (small or incompressible ones as stored DEFLATE blocks, ``deflate.py``); True, run
    through zlib whatever its size; False, a plain frame with RSV1 clear (RFC 7692 lets a
    sender leave any message uncompressed), *not* a stored block. True without deflate
    negotiated is a ``ValueError``.
- ``{"type": "websocket.x.ping", "data": bytes}``: a ping frame with this payload (at most 125
  bytes). When a pong with the same payload arrives, the application receives
  ``{"type": "websocket.x.pong", "data": bytes}``. The last ``PINGS_REMEMBERED`` payloads are
  remembered; a pong for an older one, or one the application did not ask for, is dropped, as
  uvicorn drops a pong for no ping of its own.
- ``{"type": "websocket.x.drop"}``: what was sent before is written, then the TCP connection
  is closed without a close frame (the client sees 1006); the application receives
  ``websocket.disconnect`` with code 1006, and a send after it raises ``ClientDisconnected``.

A ``websocket.x.*`` message on a closed connection raises ``ClientDisconnected``. Written in
order with the connection's other frames (``outgoing.WriteBatch``), and waiting, as
``websocket.send`` does, while over 4x ``WEBSOCKET_WRITE_BUFFER_BYTES`` is unsent.

**Cost to everything else: none per message.** ``websocket.send`` keeps its fast path
(``websocket.py``): a ``websocket.x.*`` type fails its first test, and only the slow path looks
for these types. A pong passes one more method (``handle_pong``), a handshake adds one key.

**What it relies on**, and the test that fails if uvicorn changes it: uvicorn's
``handle_connect`` builds the scope before the application runs (extended here to add the key;
``test_behaviours_the_server_must_do_are_refused_where_it_cannot`` fails on uvicorn without
it), and its ``handle_pong`` receives every pong frame
(``test_ping_sends_pings_and_the_log_says_each_pong_came_back``); ``writable``, ``close_sent``
and ``stop_keepalive`` as ``websocket.py`` and ``flow.py`` use them. Nothing of websockets' is
overridden: frames are serialised by ``x_frames`` below (websockets' ``Frame.serialize``
refuses RSV1 before its extensions run, and writes a message as one frame), and deflate is
websockets' own ``PerMessageDeflate.encode`` (``compress=True``) or the connection's.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from django.conf import settings
from uvicorn.protocols.utils import ClientDisconnected
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from app.protocol import CloseCode, Message, peer
from app.server.closing import SERVER_CLOSED

logger = logging.getLogger("app.server")

EXTENSION = "x-behaviours"
X_SEND, X_PING, X_PONG, X_DROP = (
    "websocket.x.send",
    "websocket.x.ping",
    "websocket.x.pong",
    "websocket.x.drop",
)
#: The messages ``WebSocketProtocol.send`` hands to ``ServerBehaviours.x_message``.
X_MESSAGES = frozenset({X_SEND, X_PING, X_DROP})
#: Ping payloads an application may have outstanding; the oldest is forgotten past this.
PINGS_REMEMBERED = 16
#: What the scope says, one dict per answer (not one per connection): the application must not
#: change it.
_ADVERTISED = {True: {"deflate": True}, False: {"deflate": False}}


def _head(opcode: int, length: int, *, fin: bool, rsv1: bool) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def x_frames(message: Message, extensions: list) -> bytes:
    """The frames of a ``websocket.x.send`` (server frames: unmasked), as bytes to write."""
    if (text := message.get("text")) is not None:
        opcode, payload = Opcode.TEXT, text.encode()
    elif (data := message.get("bytes")) is not None:
        opcode, payload = Opcode.BINARY, bytes(data)
    else:
        raise ValueError("websocket.x.send needs text or bytes")
    compress = message.get("compress")
    deflate = next((ext for ext in extensions if isinstance(ext, PerMessageDeflate)), None)
    rsv1 = False
    if deflate is not None and compress is not False:
        frame = Frame(opcode, payload)
        # None: the connection's own choice (deflate.Deflate: stored when it would not pay);
        # True: websockets' deflate, always through zlib.
        frame = PerMessageDeflate.encode(deflate, frame) if compress else deflate.encode(frame)
        payload, rsv1 = bytes(frame.data), frame.rsv1
    elif compress:
        raise ValueError("compress=True: permessage-deflate was not negotiated")
    step = message.get("fragment") or max(len(payload), 1)
    if type(step) is not int or step < 1:
        raise ValueError(f"fragment must be a positive int, got {step!r}")
    return fragments(opcode, payload, step, rsv1=rsv1)


def fragments(opcode: Opcode, payload: bytes, step: int, *, rsv1: bool = False) -> bytes:
    """``payload`` as one message in frames of ``step`` bytes (the last one shorter), RSV1 on
    the first frame only (RFC 7692 6.1).

    Frames under 126 bytes are laid out with slice assignments, a few per byte of ``step``
    rather than a Python loop per frame: 256 KiB in 1-byte frames is 262,144 frames, which a
    loop builds in tens of milliseconds of the event loop, this in about one.
    """
    size = len(payload)
    if size <= step:
        return _head(opcode, size, fin=True, rsv1=rsv1) + payload
    whole = (size - 1) // step  # frames before the last, each of exactly ``step`` bytes
    last = payload[whole * step :]
    tail = _head(Opcode.CONT, len(last), fin=True, rsv1=False) + last
    if step >= 126:  # at most size / 126 frames: a loop will do
        parts = [
            _head(Opcode.CONT, step, fin=False, rsv1=False) + payload[i * step : (i + 1) * step]
            for i in range(whole)
        ]
        parts[0] = _head(opcode, step, fin=False, rsv1=rsv1) + payload[:step]
        return b"".join(parts) + tail
    width = step + 2
    body = bytearray(whole * width)
    body[0::width] = bytes([Opcode.CONT]) * whole
    body[1::width] = bytes([step]) * whole
    for k in range(step):
        body[2 + k :: width] = payload[k : whole * step : step]
    body[0] = opcode | (0x40 if rsv1 else 0)
    return bytes(body) + tail


class ServerBehaviours:
    """``WebSocketProtocol``'s part that carries the ``x-behaviours`` extension."""

    #: The application's outstanding ping payloads, oldest first; None until its first ping.
    x_pings: dict[bytes, None] | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the handshake was refused
        if scope is not None and not self.close_sent:
            scope["extensions"][EXTENSION] = _ADVERTISED[bool(self.conn.extensions)]

    def handle_pong(self, event: Any) -> None:
        pings = self.x_pings
        if pings and (data := bytes(event.data)) in pings:
            del pings[data]
            if not self.close_sent:
                self.queue.put_nowait({"type": X_PONG, "data": data})
            return
        super().handle_pong(event)

    async def x_message(self, message: Message) -> None:
        """A ``websocket.x.*`` message (see the module); ``WebSocketProtocol.send`` calls this
        on its slow path, after writing what the batch held for this connection."""
        await self.writable.wait()  # past the hard limit (flow.py), as uvicorn's send waits
        if not self.handshake_complete or self.initial_response is not None:
            raise RuntimeError(f"{message['type']} before websocket.accept")
        if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
            raise ClientDisconnected("the connection is closed")
        kind = message["type"]
        if kind == X_SEND:
            self.batch.add(self.loop, self.transport, x_frames(message, self.conn.extensions))
        elif kind == X_PING:
            data = bytes(message.get("data", b""))
            if len(data) > 125:
                raise ValueError(f"a ping carries at most 125 bytes, not {len(data)}")
            pings = self.x_pings
            if pings is None:
                pings = self.x_pings = {}
            if len(pings) >= PINGS_REMEMBERED:
                del pings[next(iter(pings))]
            pings[data] = None
            self.batch.add(
                self.loop,
                self.transport,
                _head(Opcode.PING, len(data), fin=True, rsv1=False) + data,
            )
        else:  # X_DROP
            self.x_drop()

    def x_drop(self) -> None:
        """Close the TCP connection without a close frame, at the application's request."""
        logger.info(
            "dropping %s %s without a close frame, as the application asked",
            peer(self.client),
            self.scope.get("path", ""),
        )
        self.batch.flush_one(self.transport)
        self.stop_keepalive()
        self.close_sent = True  # a send from now on: ClientDisconnected (websocket.py)
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL_CLOSURE, **SERVER_CLOSED}
        )
        self.transport.close()  # what was written goes first, then a FIN and no close frame
        # close() waits for the buffer to drain: a client that reads nothing is dropped later.
        self.loop.call_later(settings.WEBSOCKET_SEND_TIMEOUT, self.transport.abort)
