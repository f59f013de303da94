"""The benchmark client, run in its own process: ping-pong echo load, or many idle connections.

It uses picows, a Cython WebSocket client whose per-message cost is a fraction of a pure-Python
client's, so that on a 2-core machine the client is not what gets measured. It runs on uvloop,
targets loopback only, and bounds its run time with ``--deadline``.

    python -m bench.client pingpong --url ws://127.0.0.1:8000/ws/echo/async/ --connections 100 \
        --size 16 --messages 20000
    python -m bench.client idle --url ... --connections 10000

``--deflate`` offers permessage-deflate as Chromium does (``permessage-deflate;
client_max_window_bits``), fails unless the server accepts it, and then sends every message
compressed as Chromium would (the payload deflated once, RSV1 set) and inflates each compressed
echo to check it. ``--json`` makes the payload a JSON document of ``--size`` bytes (``x`` repeated
otherwise, which deflate would shrink to nothing). With ``idle``, ``--echo`` bytes of JSON are
echoed once on each connection before it goes idle.

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
import zlib
from urllib.parse import urlparse

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

#: Chromium's permessage-deflate offer, word for word.
CHROMIUM_DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"


def json_payload(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes (at least 8), shaped like an application's
    messages: records with numbers, names and tags, padded to the size by a string."""

    def encode(document: dict) -> bytes:
        return json.dumps(document, separators=(",", ":")).encode()

    records: list[dict] = []
    while True:
        i = len(records)
        record = {"id": i, "name": f"user{i}", "tags": ["a", "b"], "score": i * 1.5}
        if len(encode({"p": "", "items": [*records, record]})) > size:
            break
        records.append(record)
    document: dict = {"p": "", "items": records} if records else {"p": ""}
    document["p"] = "p" * (size - len(encode(document)))
    return encode(document)


class Deflate:
    """The client's half of permessage-deflate, no context takeover: what Chromium sends.
    (tests/test_deflate.py uses it too, with other windows and levels.)"""

    TAIL = b"\x00\x00\xff\xff"

    @staticmethod
    def compress(payload: bytes, wbits: int = 15, level: int = -1) -> bytes:
        """One raw DEFLATE stream for the message, its tail removed (RFC 7692 7.2.1)."""
        compressor = zlib.compressobj(level, zlib.DEFLATED, -wbits)
        return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]

    @staticmethod
    def inflate(data: bytes, wbits: int = 15) -> bytes:
        """A message inflated by a fresh decompressor (the sender takes no context over)."""
        return zlib.decompressobj(wbits=-wbits).decompress(data + Deflate.TAIL)


def negotiated_deflate(response) -> bool:
    return "permessage-deflate" in (response.headers.get("sec-websocket-extensions") or "")


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class PingPong(WSListener):
    """One connection: send, wait for the echo, record the round trip, send again."""

    def __init__(
        self,
        payload: bytes,
        count: int,
        rtts: list[float],
        done: asyncio.Future,
        *,
        deflate: bool = False,
    ):
        self.payload, self.remaining, self.rtts, self.done = payload, count, rtts, done
        self.deflate = deflate
        self.wire = Deflate.compress(payload) if deflate else payload
        self.sent_at = 0.0
        self.mismatches = 0
        self.compressed_echoes = 0

    def start(self, transport: WSTransport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        self.sent_at = time.perf_counter()
        self.transport.send(WSMsgType.TEXT, self.wire, rsv1=self.deflate)

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
        if frame.rsv1:
            self.compressed_echoes += 1
            if Deflate.inflate(frame.get_payload_as_bytes()) != self.payload:
                self.mismatches += 1
        elif frame.payload_size != len(self.payload):
            self.mismatches += 1
        self.remaining -= 1
        if self.remaining > 0:
            self.send()
        elif not self.done.done():
            self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("disconnected before the last echo"))


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"refusing to load {host}: the benchmark targets loopback only")


async def open_many(
    url: str | list[str],
    count: int,
    factory,
    concurrency: int = 200,
    *,
    deflate: bool = False,
    headers: dict[str, str] | None = None,
    subprotocol: str | None = None,
) -> list:
    """Open ``count`` connections, at most ``concurrency`` handshakes at a time; with
    ``deflate``, offer it as Chromium does and fail unless the server accepts. With several
    URLs the connections alternate between them (two server processes, say); ``headers`` go
    with every handshake, and with ``subprotocol`` a server that does not choose it fails."""
    urls = [url] if isinstance(url, str) else list(url)
    gate = asyncio.Semaphore(concurrency)
    headers = dict(headers or {})
    if deflate:
        headers["Sec-WebSocket-Extensions"] = CHROMIUM_DEFLATE_OFFER

    def listener(i: int, _request, response):
        if deflate and not negotiated_deflate(response):
            raise ConnectionError("the server did not accept permessage-deflate")
        if subprotocol:
            chosen = response.headers.get("sec-websocket-protocol")
            if chosen != subprotocol:
                raise ConnectionError(f"the server did not accept {subprotocol}: {chosen!r}")
        return factory(i)

    async def one(i: int):
        async with gate:
            return await ws_connect(
                lambda request, response: listener(i, request, response),
                urls[i % len(urls)],
                max_frame_size=2**21,
                extra_headers=headers,
                # A server answering a storm of joins (a room's presence frames, 1,000 members
                # joining one process) takes longer than picows' 5 s to answer the last ones.
                websocket_handshake_timeout=60,
            )

    return await asyncio.gather(*(one(i) for i in range(count)))


async def pingpong(
    url: str,
    connections: int,
    size: int,
    messages: int,
    deadline: float,
    *,
    deflate: bool = False,
    as_json: bool = False,
) -> dict:
    loop = asyncio.get_running_loop()
    per_connection = max(1, messages // connections)
    payload = json_payload(size) if as_json else b"x" * size
    rtts: list[float] = []
    dones = [loop.create_future() for _ in range(connections)]
    pairs = await open_many(
        url,
        connections,
        lambda i: PingPong(payload, per_connection, rtts, dones[i], deflate=deflate),
        deflate=deflate,
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
        "deflate": deflate,
        "compressed_echoes": sum(listener.compressed_echoes for _, listener in pairs),
    }


class Idle(WSListener):
    """A connection that echoes ``payload`` once (when given) and then says nothing."""

    def __init__(self, payload: bytes, deflate: bool, echoed: asyncio.Future | None):
        self.payload, self.deflate, self.echoed = payload, deflate, echoed

    def on_ws_connected(self, transport: WSTransport) -> None:
        if self.echoed is not None:
            wire = Deflate.compress(self.payload) if self.deflate else self.payload
            transport.send(WSMsgType.TEXT, wire, rsv1=self.deflate)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and self.echoed and not self.echoed.done():
            data = frame.get_payload_as_bytes()
            self.echoed.set_result((Deflate.inflate(data) if frame.rsv1 else data) == self.payload)


async def idle(url: str, connections: int, *, deflate: bool = False, echo: int = 0) -> None:
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    payload = json_payload(echo) if echo else b""
    echoes = [loop.create_future() for _ in range(connections)] if echo else []
    pairs = await open_many(
        url,
        connections,
        lambda i: Idle(payload, deflate, echoes[i] if echo else None),
        concurrency=100,
        deflate=deflate,
    )
    if echoes and not all(await asyncio.wait_for(asyncio.gather(*echoes), 120)):
        raise SystemExit("an echo differed from what was sent")
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
    parser.add_argument("--deflate", action="store_true", help="offer and use permessage-deflate")
    parser.add_argument("--json", action="store_true", help="a JSON payload of --size bytes")
    parser.add_argument("--echo", type=int, default=0, help="idle: echo this much JSON first")
    args = parser.parse_args()
    check_loopback(args.url)
    raise_fd_limit()
    if args.mode == "pingpong":
        result = uvloop.run(
            pingpong(
                args.url,
                args.connections,
                args.size,
                args.messages,
                args.deadline,
                deflate=args.deflate,
                as_json=args.json,
            )
        )
        print(json.dumps(result))
    else:
        uvloop.run(idle(args.url, args.connections, deflate=args.deflate, echo=args.echo))


if __name__ == "__main__":
    main()
