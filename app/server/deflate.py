"""permessage-deflate (RFC 7692): websockets' implementation and negotiation, made cheap for an
idle connection and for small messages.

uvicorn's ``ws_per_message_deflate`` offers websockets' extension with context takeover both
ways: each connection then keeps a zlib compressor and decompressor for its whole life (+22 KiB
an idle connection, measured: docs/performance.md) and runs every message through zlib, 16 B
ones included (0.78x the echo rate). Here, by default:

- **No context takeover, either way.** The server answers ``server_no_context_takeover`` and
  ``client_no_context_takeover`` whatever the offer (RFC 7692 7.1.1.1 and 7.1.2.1 let it add
  both), so each message is compressed and inflated on its own, by a zlib stream made for it and
  freed after it: an idle connection holds none. ``WEBSOCKET_DEFLATE_CONTEXT_TAKEOVER`` turns
  takeover back on (better ratios for streams of similar messages, one zlib stream each way per
  connection).
- **What does not shrink is not run through zlib.** A message under
  ``WEBSOCKET_DEFLATE_MIN_BYTES`` goes out as a stored DEFLATE block (RFC 7692 7.2.3.3:
  compressed, RSV1 set, 6 bytes of framing), for which deflate could save a few bytes at the
  price of a zlib stream; so do most messages after one that deflate shrank by less than a
  fifth. It is not
  sent
  uncompressed (RSV1 clear, which RFC 7692 also allows): the Autobahn runner the project is
  tested with (kosoku 0.1.0) hands such a message to its case as ``str`` and errors (24 cases).
- **A small compressed message is inflated in one call** (``zlib.decompress``), not through a
  decompressor object, when its size bounds what it can inflate to (deflate's ratio is at most
  1,032:1) within the message limit.
- The client's ``server_max_window_bits`` and ``client_max_window_bits`` are honoured
  (websockets' negotiation); the server's window is at most ``WEBSOCKET_DEFLATE_WINDOW_BITS``.

A compressed message is inflated only up to the server's message limit (websockets'
``max_size``): a compression bomb is closed with 1009 at the limit, never inflated whole. And
what one connection may have inflated is bounded in bytes a second
(``WEBSOCKET_INFLATE_RATE``): 271 bytes inflate to 256 KiB, so 6,000 such frames (1.6 MiB on the
wire) cost a process 4.6 s of CPU and held ``/healthz`` for 4.3 s. Past the bound the
connection is closed with 1008, "compression rate limit", and the rest of what was read is not
inflated.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from django.conf import settings
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CTRL_OPCODES, Frame, Opcode

from app.protocol import CloseCode
from app.session import TokenBucket

#: Deflate's largest ratio of inflated to compressed bytes (258 bytes from 2 bits).
MAX_RATIO = 1032
#: What a message's payload lacks (RFC 7692 7.2.2), then an empty final block, so that one
#: ``zlib.decompress`` call finds the stream complete.
_TAIL_AND_END = b"\x00\x00\xff\xff\x03\x00"
_STORED_LENGTHS = struct.Struct("<HH")
#: After a message deflate shrank by less than a fifth, one in this many is compressed (the
#: others stored).
RECHECK_EVERY = 16


def stored_blocks(data: bytes) -> bytes:
    """``data`` as a message's DEFLATE payload without compression (RFC 7692 7.2.3.3): stored
    blocks of at most 65,535 bytes, and the first byte of the empty block that the receiver
    completes."""
    if len(data) <= 0xFFFF:  # nearly always: one block
        return b"\x00" + _STORED_LENGTHS.pack(len(data), len(data) ^ 0xFFFF) + data + b"\x00"
    parts = []
    for start in range(0, len(data), 0xFFFF):
        chunk = data[start : start + 0xFFFF]
        parts += (b"\x00", _STORED_LENGTHS.pack(len(chunk), len(chunk) ^ 0xFFFF), chunk)
    parts.append(b"\x00")
    return b"".join(parts)


class InflateRateExceeded(ProtocolError):
    """A connection had more inflated than ``WEBSOCKET_INFLATE_RATE`` allows. Raised in
    websockets' frame parser, which stops there; ``frames.ServerProtocol.fail`` closes with
    ``close_code`` instead of the 1002 websockets gives any ``ProtocolError``."""

    close_code = CloseCode.POLICY_VIOLATION

    def __init__(self) -> None:
        super().__init__("compression rate limit")


class Deflate(PerMessageDeflate):
    """websockets' extension, with small messages kept out of zlib's streams both ways, what
    does not shrink sent stored, and what a connection inflates bounded in bytes a second."""

    min_bytes = 0
    framing: tuple | None = None
    #: Bytes this connection may still inflate (``WEBSOCKET_INFLATE_RATE``); None: no bound.
    inflate_budget: TokenBucket | None = None
    #: Messages still to send stored since one did not shrink (see ``encode``).
    stored_streak = 0

    # Both methods change the frame websockets has just made for this message (parsed, or to
    # be sent) in place: a new Frame each way was a tenth of a small message's added cost.

    def encode(self, frame: Frame) -> Frame:
        """Compress an outgoing message, unless deflate would not pay.

        - Under ``min_bytes``: a stored block, no zlib stream made.
        - After a message that deflate shrank by less than a fifth (an image, a PDF, bytes
          already compressed), the next ``RECHECK_EVERY - 1`` go stored, and the one after is
          tried again. zlib at level 1 took 4 ms for 128 KiB of a bitmap to save a tenth of it,
          and 8 ms for a PDF to save nothing (Autobahn 12.2.x and 12.5.x: 18 s a case, against
          the runner's 20 s); JSON and text shrink to between a sixth and a third.

        Only without context takeover: with it, the client's window would hold bytes the
        server's compressor never saw.
        """
        if frame.opcode in CTRL_OPCODES:
            return frame
        if (
            frame.fin
            and frame.opcode is not Opcode.CONT  # the server sends whole messages (uvicorn)
            and self.local_no_context_takeover
        ):
            size = len(frame.data)
            if size < self.min_bytes or self.stored_streak:
                if size >= self.min_bytes:
                    self.stored_streak -= 1
                frame.data = stored_blocks(frame.data)
                frame.rsv1 = True
                return frame
            frame = super().encode(frame)
            if len(frame.data) * 5 > size * 4:
                self.stored_streak = RECHECK_EVERY - 1
            return frame
        return super().encode(frame)

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        """Inflate a compressed frame (one ``zlib.decompress`` call when that is safe), and
        charge what it inflated to the connection's budget."""
        if (
            frame.rsv1
            and frame.fin
            and max_size is not None
            and len(frame.data) * MAX_RATIO <= max_size
            and self.remote_no_context_takeover
            and frame.opcode is not Opcode.CONT
        ):
            try:
                data = zlib.decompress(frame.data + _TAIL_AND_END, -self.remote_max_window_bits)
            except zlib.error:
                pass  # websockets' own path says why (a ProtocolError: 1002)
            else:
                if len(data) > max_size:
                    raise PayloadTooBig(len(data), max_size)
                frame.data = data
                frame.rsv1 = False
                self._charge(len(data))
                return frame
        compressed = frame.rsv1 or (frame.opcode is Opcode.CONT and self.decode_cont_data)
        frame = super().decode(frame, max_size=max_size)
        if compressed:
            self._charge(len(frame.data))
        return frame

    def _charge(self, inflated: int) -> None:
        if self.inflate_budget is not None and not self.inflate_budget.spend(inflated):
            raise InflateRateExceeded()


class DeflateFactory(ServerPerMessageDeflateFactory):
    """websockets' negotiation, building ``Deflate``."""

    def __init__(
        self, *, min_bytes: int, inflate_rate: int = 0, inflate_burst: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.min_bytes = min_bytes
        self.inflate_rate, self.inflate_burst = inflate_rate, inflate_burst

    def process_request_params(self, params: Any, accepted_extensions: Any) -> tuple[list, Any]:
        response, extension = super().process_request_params(params, accepted_extensions)
        extension.__class__ = Deflate  # two methods more, and two attributes
        extension.min_bytes = self.min_bytes
        if self.inflate_rate > 0:
            extension.inflate_budget = TokenBucket(self.inflate_rate, self.inflate_burst)
        # What its frames' bytes depend on, beyond their payloads (outgoing.data_frame shares a
        # frame between connections that agree on it); None: its frames depend on the last.
        zlib_settings = self.compress_settings or {}
        extension.framing = (
            (
                extension.local_max_window_bits,
                zlib_settings.get("level"),
                zlib_settings.get("memLevel"),
                self.min_bytes,
            )
            if extension.local_no_context_takeover
            else None
        )
        return response, extension


def deflate_extensions() -> list[ServerExtensionFactory]:
    """The extensions the server accepts, from the settings: deflate, or none when turned off."""
    if not settings.WEBSOCKET_DEFLATE:
        return []
    no_takeover = not settings.WEBSOCKET_DEFLATE_CONTEXT_TAKEOVER
    return [
        DeflateFactory(
            server_no_context_takeover=no_takeover,
            client_no_context_takeover=no_takeover,
            server_max_window_bits=settings.WEBSOCKET_DEFLATE_WINDOW_BITS,
            compress_settings={
                "level": settings.WEBSOCKET_DEFLATE_LEVEL,
                "memLevel": settings.WEBSOCKET_DEFLATE_MEM_LEVEL,
            },
            min_bytes=min(settings.WEBSOCKET_DEFLATE_MIN_BYTES, 0xFFFF),
            inflate_rate=settings.WEBSOCKET_INFLATE_RATE,
            inflate_burst=max(settings.WEBSOCKET_INFLATE_BURST, settings.SERVER_MAX_MESSAGE_BYTES),
        )
    ]
