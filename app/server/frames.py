"""Frame policy: what the server accepts frame by frame, before the application sees a message.

Every frame, pings and continuation frames included, takes a token from a per-connection bucket
(``WEBSOCKET_FRAME_RATE`` / ``_BURST``; past it, 1008): uvicorn answers each ping without a
limit. A message has at most ``WEBSOCKET_MAX_FRAGMENTS`` fragments (past it, 1009): uvicorn
keeps each fragment as its own ``bytes``. Invalid UTF-8 in a text message is closed with 1007
and one WARNING line (uvicorn: an ERROR with a traceback).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from app.protocol import CloseCode


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
            super().handle_text(event)

    def handle_bytes(self, event: Any) -> None:
        if self._frame_allowed():
            super().handle_bytes(event)

    def handle_cont(self, event: Any) -> None:
        if not self._frame_allowed():
            return
        if len(self.frames) >= settings.WEBSOCKET_MAX_FRAGMENTS:
            limit = settings.WEBSOCKET_MAX_FRAGMENTS
            self._fail(CloseCode.MESSAGE_TOO_BIG, f"message in more than {limit} fragments")
            return
        super().handle_cont(event)

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
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return None  # past websocket.close: discarded, as uvicorn does
        if self.curr_msg_data_type == "text":
            try:
                message = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError as error:
                self.conn.send_close(CloseCode.INVALID_PAYLOAD, "invalid UTF-8")
                self._log_closing(
                    CloseCode.INVALID_PAYLOAD, f"text message is not UTF-8 ({error.reason})"
                )
                super().handle_parser_exception()  # logged here, with the decoder's reason
                self._mark_server_closed()
                return None
        else:
            message = {"type": "websocket.receive", "bytes": data}
        self.queue.put_nowait(message)
        if not self.read_paused and len(self.queue) > 1:
            self.read_paused = True
            self.transport.pause_reading()
        return None
