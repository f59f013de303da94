"""Load: many connections each pipelining numbered messages; every echo must come back, in order.

    .venv/bin/python -m bench.load --url ws://127.0.0.1:8000/ws/echo/async/ \
        --connections 1000 --messages 1000 [--window 100] [--deadline 300]

Each connection keeps at most ``--window`` messages in flight (a client that reads what it
asked for, as a real one does) and checks that echo k is message k. Prints one JSON object:
messages sent and received, lost, reordered, seconds, messages/s. Loopback only; bounded by
``--deadline``. The abrupt mode opens connections and drops them without a close frame. A run
that a page cites is kept as ``docs/runs/load-<connections>x<messages>-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport

from bench.client import check_loopback, open_many, raise_fd_limit


class Numbered(WSListener):
    def __init__(self, count: int, window: int, done: asyncio.Future):
        self.count, self.window, self.done = count, window, done
        self.sent = self.received = self.reordered = 0

    def start(self, transport: WSTransport) -> None:
        self.transport = transport
        self._fill()

    def _fill(self) -> None:
        while self.sent < self.count and self.sent - self.received < self.window:
            self.transport.send(WSMsgType.TEXT, str(self.sent).encode())
            self.sent += 1

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            if not self.done.done():
                self.done.set_exception(
                    ConnectionError(f"closed by the server: {frame.get_close_code()}")
                )
            return
        if frame.get_payload_as_ascii_text() != str(self.received):
            self.reordered += 1
        self.received += 1
        if self.received == self.count:
            if not self.done.done():
                self.done.set_result(None)
        else:
            self._fill()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("disconnected"))


async def load(url: str, connections: int, messages: int, window: int, deadline: float) -> dict:
    loop = asyncio.get_running_loop()
    dones = [loop.create_future() for _ in range(connections)]
    pairs = await open_many(url, connections, lambda i: Numbered(messages, window, dones[i]))
    started = time.perf_counter()
    for transport, listener in pairs:
        listener.start(transport)
    finished, pending = await asyncio.wait(dones, timeout=deadline)
    elapsed = time.perf_counter() - started
    errors = sorted({str(f.exception()) for f in finished if f.exception()})
    for transport, _ in pairs:
        transport.send_close()
        transport.disconnect()
    sent = sum(listener.sent for _, listener in pairs)
    received = sum(listener.received for _, listener in pairs)
    return {
        "url": url,
        "connections": connections,
        "messages_per_connection": messages,
        "sent": sent,
        "received": received,
        "lost": connections * messages - received,
        "reordered": sum(listener.reordered for _, listener in pairs),
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(received / elapsed) if elapsed else 0,
        "timed_out": bool(pending),
        "errors": errors[:5],
    }


async def abrupt(url: str, connections: int) -> dict:
    """Open connections, then close their TCP sockets with no close frame (RST, as a crash does)."""
    pairs = await open_many(url, connections, lambda i: WSListener(), concurrency=100)
    for transport, _ in pairs:
        sock = transport.underlying_transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.underlying_transport.abort()
    return {"opened": len(pairs), "dropped": len(pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument(
        "--abrupt", action="store_true", help="drop connections without a close frame"
    )
    args = parser.parse_args()
    check_loopback(args.url)
    raise_fd_limit()
    if args.abrupt:
        print(json.dumps(uvloop.run(abrupt(args.url, args.connections))))
    else:
        print(
            json.dumps(
                uvloop.run(
                    load(args.url, args.connections, args.messages, args.window, args.deadline)
                )
            )
        )


if __name__ == "__main__":
    main()
