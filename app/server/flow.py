"""Flow control: a client that does not read is not read from, then dropped.

While more than ``WEBSOCKET_WRITE_BUFFER_BYTES`` wait to be written to a client, reading from
it pauses (so its pings cannot queue pongs without end), and if that lasts
``WEBSOCKET_SEND_TIMEOUT`` the client is closed with 1008 and the socket dropped: uvicorn
otherwise keeps a non-reading client forever. The application's ``send`` waits only past
``WRITE_BUFFER_HARD_LIMIT`` times the mark (uvicorn's waits from the mark on): with reading
paused at the mark, an echo's reply fits below it, so a sync handler answering a client that
does not read does not hold its lane. Reading also pauses once a second message waits for the
application (``receive`` resumes it), not after every message as uvicorn does.
"""

from __future__ import annotations

import asyncio

from django.conf import settings

from app.protocol import CloseCode, Message

#: Past this many times ``WEBSOCKET_WRITE_BUFFER_BYTES`` unsent, the application's send waits.
WRITE_BUFFER_HARD_LIMIT = 4


class FlowControl:
    """``WebSocketProtocol``'s part that pauses reading and drops clients that do not read."""

    write_paused = False
    stall_timer: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        self.write_paused = True  # not uvicorn's: its send would wait from here on
        self.transport.pause_reading()
        if self.stall_timer is None:
            self.stall_timer = self.loop.call_later(settings.WEBSOCKET_SEND_TIMEOUT, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_paused = False
        self._cancel_stall()
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def _cancel_stall(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    def _stalled(self) -> None:
        self.stall_timer = None
        if self.transport.is_closing():
            return
        unsent = settings.WEBSOCKET_WRITE_BUFFER_BYTES
        detail = f"client not reading (over {unsent} bytes unsent for {settings.WEBSOCKET_SEND_TIMEOUT} s)"
        self._closing(CloseCode.POLICY_VIOLATION, "client not reading", detail)
        self.transport.abort()  # a close frame would wait behind what it never read

    async def receive(self) -> Message:  # type: ignore[override]
        """uvicorn's ``receive``, except that reading stays paused while writing is.

        ``MessageQueue.get``'s wait, written out: a message of a ping-pong nearly always finds
        the queue empty, and calling ``get`` would add a coroutine to each one (in process,
        per message: ``asyncio.Queue`` 6.4 us, ``MessageQueue.get`` 6.0, this 5.0).
        """
        queue = self.queue
        while not queue:
            await queue.arrival(self.loop)
        message = queue.popleft()
        if self.close_after_answers is not None and message["type"] == "websocket.disconnect":
            self.close_now()  # it has answered what came before: the waiting close goes
        if self.read_paused and not queue:
            self.read_paused = False
            if not self.write_paused:
                self.transport.resume_reading()
        return message

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_stall()
        super().connection_lost(exc)
