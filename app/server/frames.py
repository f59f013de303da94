"""Frame policy: what the server accepts frame by frame, before the application sees a message.

Every frame, pings and continuation frames included, takes a token from a per-connection bucket
(``WEBSOCKET_FRAME_RATE`` / ``_BURST``; past it, 1008): uvicorn answers each ping without a
limit. A fragmented message is joined into one buffer as it comes, so it holds no more than its
size (websockets closes it with 1009 past the message limit), and its fragments cost no more CPU
than the frame rate allows: 65,536 fragments of 64 bytes make a 4 MiB message, a flood of empty
ones meets the rate. Invalid UTF-8 in a text message is closed with 1007 and one WARNING line
(uvicorn: an ERROR with a traceback), at the fragment where it becomes invalid.
"""

from __future__ import annotations

import codecs
import sys
from typing import Any

import websockets.server
from websockets.frames import Frame, Opcode
from websockets.utils import apply_mask

from app.protocol import CloseCode
from app.server.deflate import InflateRateExceeded

UTF8Decoder = codecs.getincrementaldecoder("utf-8")
#: The code of websockets' frame parser, to find it among the parser's generators.
FRAME_PARSE = Frame.parse.__func__.__code__


class ServerProtocol(websockets.server.ServerProtocol):
    """websockets' server protocol, with a close frame between the fragments of a message
    taken as a close.

    RFC 6455 5.4 allows control frames between fragments, and a close is answered with a close
    (5.5.1). websockets 17.4 fails the connection there instead, with 1002 "incomplete
    fragmented message" (Autobahn 7.1.5: FAILED, for plain uvicorn and Starlette too). Here the
    unfinished message is dropped and the close answered as any other.
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE and self.current_size is not None:
            self.current_size = None  # the unfinished message goes with the connection
        super().recv_frame(frame)

    def fail(self, code: int, reason: str = "") -> None:
        """websockets' ``fail``, with the close code a parser error names for itself.

        websockets' parser fails the connection with 1002 for any ``ProtocolError``, calling
        this from its ``except`` clause; a bound of the server's that stops the parser
        (``deflate.InflateRateExceeded``, 1008) says which code it closes with.
        """
        error = sys.exc_info()[1]
        super().fail(error.close_code if isinstance(error, InflateRateExceeded) else code, reason)


class FramePolicy:
    """``WebSocketProtocol``'s part that counts frames and turns them into messages."""

    def _frame_allowed(self) -> bool:
        if self.frame_budget.take():
            return True
        self._fail(CloseCode.POLICY_VIOLATION, "rate limit", "frame rate limit")
        return False

    def handle_ping(self) -> None:
        if self._frame_allowed():
            super().handle_ping()

    def handle_pong(self, event: Any) -> None:
        if self._frame_allowed():
            super().handle_pong(event)

    def handle_text(self, event: Any) -> None:
        if self._frame_allowed():
            if not event.fin:  # fragmented: its UTF-8 is checked fragment by fragment
                self.utf8 = UTF8Decoder()
                if not self._valid_utf8(event.data, final=False):
                    return
            super().handle_text(event)
            if not event.fin:
                self.frames = [bytearray(event.data)]  # one buffer for all the fragments

    def handle_bytes(self, event: Any) -> None:
        if self._frame_allowed():
            super().handle_bytes(event)
            if not event.fin:
                self.frames = [bytearray(event.data)]

    def handle_cont(self, event: Any) -> None:
        """uvicorn's, with the fragments joined into one buffer as they come (uvicorn keeps
        each as its own ``bytes``, about 100 bytes apiece for a 1-byte fragment): what a
        fragmented message holds is its size, bounded by the message limit, and its frames by
        the frame rate. A text fragment that makes the message invalid UTF-8 closes it now
        (1007), not after the last fragment (Autobahn 6.4.x)."""
        if self.close_sent or not self._frame_allowed():
            return  # closing already (a bound, bad UTF-8): the rest of the read is dropped
        if self.curr_msg_data_type == "text" and not self._valid_utf8(event.data, event.fin):
            return
        self.frames[0] += event.data
        if event.fin:
            self.send_receive_event_to_app()

    def _valid_utf8(self, data: bytes, final: bool) -> bool:
        try:
            self.utf8.decode(data, final)
        except UnicodeDecodeError as error:
            self._invalid_utf8(error)
            return False
        return True

    #: While a text frame's payload is arriving: [websockets' parser of that frame, bytes of it
    #: checked, the UTF-8 decoder that checked them]; None otherwise.
    partial_text: list | None = None

    def check_partial_text(self) -> None:
        """Check the part of a text frame that has arrived, before the rest does.

        websockets hands a frame over only once its whole payload is read, so invalid UTF-8 in
        a frame that arrives in pieces was found only at its end (Autobahn 6.4.3 and 6.4.4,
        NON-STRICT: "fail fast"). While its parser waits for the payload, the payload received
        so far is what its reader holds; each byte is unmasked and checked once, with the
        message's decoder state carried over. (The parser's header fields are read from its
        suspended frame: ``tests/test_conformance.py`` fails if websockets changes them.)
        """
        frame_parser = self.conn.parser  # ServerProtocol.parse -> Protocol.parse -> Frame.parse
        while frame_parser is not None and frame_parser.gi_code is not FRAME_PARSE:
            frame_parser = getattr(frame_parser, "gi_yieldfrom", None)
        fields = frame_parser.gi_frame.f_locals if frame_parser is not None else {}
        if "mask_bytes" not in fields:  # between frames, or still in a header
            self.partial_text = None
            return
        opcode = fields["opcode"]
        if opcode is not Opcode.TEXT and not (
            opcode is Opcode.CONT and self.curr_msg_data_type == "text" and self.frames
        ):
            return
        if fields["rsv1"] or (opcode is Opcode.CONT and self._compressed_message()):
            return  # compressed (permessage-deflate): its text is checked once inflated
        if self.partial_text is None or self.partial_text[0] is not frame_parser:
            decoder = UTF8Decoder()
            if opcode is Opcode.CONT:
                decoder.setstate(self.utf8.getstate())
            self.partial_text = [frame_parser, 0, decoder]
        _, checked, decoder = self.partial_text
        arrived = self.conn.reader.buffer
        if len(arrived) <= checked:
            return
        mask = fields["mask_bytes"]
        mask = mask[checked % 4 :] + mask[: checked % 4]
        try:
            decoder.decode(apply_mask(bytes(arrived[checked:]), mask), False)
        except UnicodeDecodeError as error:
            self.partial_text = None
            self._invalid_utf8(error)
            return
        self.partial_text[1] = len(arrived)

    def _compressed_message(self) -> bool:
        """Whether the fragmented message arriving is compressed (websockets' deflate flag)."""
        return any(getattr(ext, "decode_cont_data", False) for ext in self.conn.extensions)

    def _invalid_utf8(self, error: UnicodeDecodeError) -> None:
        """1007, one WARNING line (uvicorn: an ERROR with a traceback)."""
        self.frames = []
        if self.close_sent:
            return  # closing already: the frames after that are read, but nothing is said
        self.conn.send_close(
            CloseCode.INVALID_PAYLOAD, f"text message is not UTF-8 ({error.reason})"
        )
        self.handle_parser_exception()

    def send_receive_event_to_app(self) -> None:
        """uvicorn's own method, but for two things.

        - Invalid UTF-8 in a text message is logged as one WARNING line (uvicorn: an ERROR with
          a traceback).
        - Reading pauses once a second message waits for the application, not at the first:
          uvicorn pauses after every message and resumes when the application takes it, two
          calls into the event loop's poller per message of a ping-pong (0.96 of plain
          uvicorn's throughput for Starlette's echo, measured; docs/performance.md). The bound
          moves by one message: what one read from the socket held, plus one.
        """
        data = self.frames[0]  # one frame, or the buffer of a fragmented message
        self.frames = []
        if self.close_sent:
            return None  # past websocket.close: discarded, as uvicorn does
        if self.curr_msg_data_type == "text":
            try:
                message = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError as error:
                self._invalid_utf8(error)
                return None
        else:
            message = {"type": "websocket.receive", "bytes": bytes(data)}
        self.queue.put_nowait(message)
        if not self.read_paused and len(self.queue) > 1:
            self.read_paused = True
            self.transport.pause_reading()
        return None
