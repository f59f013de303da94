"""Hostile and broken clients, for ``tests/test_limits.py``: raw sockets on loopback only.

Also a prober, run in its own process (``python -m tests.attacks probe --port P``) so that an
attack's load on the test process does not slow the measurement: after one unmeasured round
(a process's first request is slow), it prints ``ready``; then every ``--interval`` it asks
``/healthz`` and echoes one message on a fresh connection (async and sync routes), and on
stdin's end prints the slowest answer of each, and when each round began, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

from websockets.utils import apply_mask

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade_request(path: str, port: int, *, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


def connect(port: int, *, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    """A TCP connection to the server; ``rcvbuf`` small makes a client that reads slowly look full."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def websocket(port: int, path: str = "/ws/echo/async/", **kwargs) -> socket.socket:
    """An open WebSocket on a raw socket: the handshake done, nothing else read."""
    return open_websocket(port, path, **kwargs)[0]


def open_websocket(
    port: int, path: str = "/ws/echo/async/", *, extra: str = "", **kwargs
) -> tuple[socket.socket, bytes]:
    """``websocket``, with ``extra`` header lines in the request; also returns the response's
    head."""
    sock = connect(port, **kwargs)
    sock.sendall(upgrade_request(path, port, extra=extra))
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)  # byte by byte: nothing after the head is consumed
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {response!r}")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        raise ConnectionRefusedError(response.split(b"\r\n", 1)[0].decode())
    return sock, response


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame of any size (``rsv1``: a compressed message's first frame)."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if len(payload) < 126:
        length = bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    return bytes([first]) + length + mask + apply_mask(payload, mask)


TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[int, bool, bool, bytes]:
    """One server frame: (opcode, FIN, RSV1, payload)."""
    first, second = read_exactly(sock, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read_exactly(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read_exactly(sock, 8))
    return first & 0x0F, bool(first & 0x80), bool(first & 0x40), read_exactly(sock, length)


def read_until_closed(sock: socket.socket, *, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded by ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (chunk := sock.recv(65536)):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def close_code(data: bytes) -> int | None:
    """The code of the first close frame in server output ``data`` (None if there is none)."""
    index = 0
    while index + 2 <= len(data):
        opcode, length = data[index] & 0x0F, data[index + 1] & 0x7F
        header = 2
        if length == 126:
            length, header = struct.unpack("!H", data[index + 2 : index + 4])[0], 4
        elif length == 127:
            length, header = struct.unpack("!Q", data[index + 2 : index + 10])[0], 10
        if opcode == CLOSE:
            payload = data[index + header : index + header + length]
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        index += header + length
    return None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads for {pid}")


def python_threads(pid: int) -> int:
    """The process's threads less uvloop's ``libuv-worker`` pool: libuv starts all four of
    those at once, at the first DNS look-up or file operation, whenever that comes, so they say
    nothing of what a request holds. A thread that ends while they are read is not counted."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # the thread ended after the listing
            count += (task / "comm").read_text().strip() != "libuv-worker"
    return count


class RssWatch:
    """The server's peak RSS growth, and its peak thread count, over a block, sampled every
    20 ms by a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.growth_mib = 0.0
        self.threads_peak = 0

    def __enter__(self) -> RssWatch:
        import threading

        self.before = rss_mib(self.pid)
        self.threads_before = self.threads_peak = threads(self.pid)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            self.growth_mib = max(self.growth_mib, rss_mib(self.pid) - self.before)
            self.threads_peak = max(self.threads_peak, threads(self.pid))

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def sustained(attack, *, seconds: float = 1.5, most: int = 200) -> list:
    """``attack()`` again and again for ``seconds`` (at most ``most`` times), so that the prober
    measures while it runs: one endless header block is over in 3 ms. Returns each outcome."""
    outcomes = []
    started = time.monotonic()
    while time.monotonic() - started < seconds and len(outcomes) < most:
        outcomes.append(attack())
    return outcomes


# --- the prober ------------------------------------------------------------------------------


async def _healthz(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    )
    response = await reader.read()
    writer.close()
    if not response.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"/healthz answered {response[:40]!r}")


async def _echo(port: int, kind: str) -> None:
    from websockets.asyncio.client import connect as ws_connect

    async with ws_connect(f"ws://127.0.0.1:{port}/ws/echo/{kind}/") as ws:
        await ws.send("probe")
        if await ws.recv() != "probe":
            raise RuntimeError("wrong echo")


async def probe(port: int, interval: float) -> dict:
    checks = {
        "healthz": lambda: _healthz(port),
        "echo_async": lambda: _echo(port, "async"),
        "echo_sync": lambda: _echo(port, "sync"),
    }
    slowest = dict.fromkeys(checks, 0.0)
    failures: list[str] = []
    for check in checks.values():  # warm up, unmeasured: a process's first request is slow
        await asyncio.wait_for(check(), 10)
    stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    rounds: list[float] = []  # when each round began (time.monotonic: one clock for the machine)
    print("ready", flush=True)  # Prober starts the attack on this line
    while not stop.done():
        rounds.append(time.monotonic())
        for name, check in checks.items():
            started = time.monotonic()
            try:
                await asyncio.wait_for(check(), 5)
            except Exception as error:
                failures.append(f"{name}: {type(error).__name__}: {error}")
            slowest[name] = max(slowest[name], time.monotonic() - started)
        await asyncio.wait([stop], timeout=interval)
    return {"slowest_s": slowest, "failures": failures, "rounds": rounds}


class Prober:
    """The prober process around an attack: ``with Prober(port) as prober: ...; prober.result``."""

    def __init__(self, port: int, interval: float = 0.1) -> None:
        self.port, self.interval = port, interval
        self.result: dict | None = None

    def __enter__(self) -> Prober:
        import subprocess

        from tests.servers import ROOT

        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.attacks", "probe", "--port", str(self.port),
             "--interval", str(self.interval)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        # The attack starts once the prober measures: its first line comes after the warm-up.
        ready = self.process.stdout.readline()
        if ready.strip() != "ready":
            self.process.kill()
            raise RuntimeError(f"the prober did not start: {ready!r}")
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = time.monotonic()
        output, _ = self.process.communicate(input="", timeout=30)
        self.result = json.loads(output)

    def rounds_inside(self) -> int:
        """Probe rounds that began while the attack ran (between enter and exit)."""
        assert self.result is not None
        return sum(self.started <= began <= self.ended for began in self.result["rounds"])

    def assert_responsive(self, within: float = 0.5, *, rounds: int = 2) -> None:
        """At least ``rounds`` probe rounds began during the attack, and every probe answered,
        each within ``within`` seconds."""
        assert self.result is not None
        assert self.rounds_inside() >= rounds, (self.rounds_inside(), self.ended - self.started)
        assert self.result["failures"] == [], self.result
        assert max(self.result["slowest_s"].values()) < within, self.result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["probe"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(probe(args.port, args.interval))))


if __name__ == "__main__":
    main()
