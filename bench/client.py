"""The benchmark client, run in its own process: ping-pong echo load, or many idle connections.

It uses picows, a Cython WebSocket client whose per-message cost is a fraction of a pure-Python
client's, so that on a 2-core machine the client is not what gets measured. It runs on uvloop,
targets loopback only, and bounds its run time with ``--deadline``.

    python -m bench.client pingpong --url ws://127.0.0.1:8000/ws/echo/async/ --connections 100 \
        --size 16 --messages 20000
    python -m bench.client idle --url ... --connections 10000

``pingpong`` prints one JSON object. ``idle`` prints one JSON line once every connection is open,
holds them until its standard input closes, then prints a second line and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlparse

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class PingPong(WSListener):
    """One connection: send, wait for the echo, record the round trip, send again."""

    def __init__(self, payload: bytes, count: int, rtts: list[float], done: asyncio.Future):
        self.payload, self.remaining, self.rtts, self.done = payload, count, rtts, done
        self.sent_at = 0.0
        self.mismatches = 0

    def start(self, transport: WSTransport) -> None:
        self.transport = transport
        self.sent_at = time.perf_counter()
        transport.send(WSMsgType.TEXT, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            if not self.done.done():
                self.done.set_exception(
                    ConnectionError(f"server closed with {frame.get_close_code()}")
                )
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        self.rtts.append(time.perf_counter() - self.sent_at)
        if frame.payload_size != len(self.payload):
            self.mismatches += 1
        self.remaining -= 1
        if self.remaining > 0:
            self.sent_at = time.perf_counter()
            transport.send(WSMsgType.TEXT, self.payload)
        elif not self.done.done():
            self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("disconnected before the last echo"))


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"refusing to load {host}: the benchmark targets loopback only")


async def open_many(url: str, count: int, factory, concurrency: int = 200) -> list:
    """Open ``count`` connections, at most ``concurrency`` handshakes at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int):
        async with gate:
            transport, listener = await ws_connect(lambda: factory(i), url, max_frame_size=2**21)
            return transport, listener

    return await asyncio.gather(*(one(i) for i in range(count)))


async def pingpong(url: str, connections: int, size: int, messages: int, deadline: float) -> dict:
    loop = asyncio.get_running_loop()
    per_connection = max(1, messages // connections)
    payload = b"x" * size
    rtts: list[float] = []
    dones = [loop.create_future() for _ in range(connections)]
    pairs = await open_many(
        url, connections, lambda i: PingPong(payload, per_connection, rtts, dones[i])
    )
    started = time.perf_counter()
    for transport, listener in pairs:
        listener.start(transport)
    finished, pending = await asyncio.wait(dones, timeout=deadline)
    elapsed = time.perf_counter() - started
    errors = [str(f.exception()) for f in finished if f.exception()]
    for transport, _ in pairs:
        transport.send_close()
        transport.disconnect()
    rtts.sort()
    n = len(rtts)
    return {
        "connections": connections,
        "size": size,
        "messages": n,
        "seconds": elapsed,
        "msgs_per_s": n / elapsed if elapsed else 0.0,
        "p50_ms": rtts[n // 2] * 1000 if n else None,
        "p99_ms": rtts[min(n - 1, int(n * 0.99))] * 1000 if n else None,
        "max_ms": rtts[-1] * 1000 if n else None,
        "timed_out": bool(pending),
        "errors": errors[:3],
        "mismatches": sum(listener.mismatches for _, listener in pairs),
    }


class Idle(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        pass


async def idle(url: str, connections: int) -> None:
    started = time.perf_counter()
    pairs = await open_many(url, connections, lambda i: Idle(), concurrency=100)
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {"open": len(pairs), "seconds": elapsed, "connects_per_s": len(pairs) / elapsed}
        ),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # hold until told
    for transport, _ in pairs:
        transport.send_close()
        transport.disconnect()
    print(json.dumps({"closed": len(pairs)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["pingpong", "idle"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument(
        "--deadline", type=float, default=60.0, help="seconds before a run gives up"
    )
    args = parser.parse_args()
    check_loopback(args.url)
    raise_fd_limit()
    if args.mode == "pingpong":
        result = uvloop.run(
            pingpong(args.url, args.connections, args.size, args.messages, args.deadline)
        )
        print(json.dumps(result))
    else:
        uvloop.run(idle(args.url, args.connections))


if __name__ == "__main__":
    main()
