"""Soak: a steady echo load for ``--minutes``, sampling the server's memory, with connection churn.

    .venv/bin/python -m bench.soak [--minutes 10] [--connections 200] [--rate 10]

Starts the project under uvicorn (``manage.py serve``), opens ``--connections`` connections
(half to each echo consumer), each sending ``--rate`` messages a second and checking every echo;
every 10 s a tenth of them close and reconnect. The server's RSS is sampled every 5 s. Writes
``docs/runs/soak.json`` and ``docs/soak.png`` and prints the growth from minute 2 to the end, which
should stay under 5%. Loopback only; the run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django

django.setup()

from bench.client import raise_fd_limit  # noqa: E402
from bench.echo import rss_kib  # noqa: E402
from tests.servers import ROOT, LiveServer  # noqa: E402

#: The run record, under ``--out-dir`` (docs/ by default): docs/runs/, beside the other runs.
RECORD = "runs/soak.json"


class Paced(WSListener):
    """Sends a numbered message every 1/rate s and checks each echo in order."""

    def __init__(self, rate: float, stats: dict):
        self.interval, self.stats = 1.0 / rate, stats
        self.sent = self.expected = 0
        self.handle: asyncio.TimerHandle | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self._tick()

    def _tick(self) -> None:
        self.transport.send(WSMsgType.TEXT, str(self.sent).encode())
        self.sent += 1
        self.stats["sent"] += 1
        self.handle = self.loop.call_later(self.interval, self._tick)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        self.stats["received"] += 1
        if frame.get_payload_as_ascii_text() != str(self.expected):
            self.stats["reordered"] += 1
        self.expected += 1

    def stop(self) -> None:
        if self.handle:
            self.handle.cancel()
        self.stats["unanswered"] += self.sent - self.expected
        self.transport.send_close()
        self.transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.handle:
            self.handle.cancel()


async def soak(server: LiveServer, minutes: float, connections: int, rate: float) -> dict:
    stats = {"sent": 0, "received": 0, "reordered": 0, "unanswered": 0, "reconnects": 0}
    urls = [f"{server.ws_url}/ws/echo/{('sync', 'async')[i % 2]}/" for i in range(connections)]

    async def open_one(i: int):
        _, listener = await ws_connect(lambda: Paced(rate, stats), urls[i])
        return listener

    listeners = [await open_one(i) for i in range(connections)]
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    end = started + minutes * 60
    next_sample = next_churn = started
    churn_index = 0
    while (now := time.monotonic()) < end:
        if now >= next_sample:
            samples.append((now - started, rss_kib(server.process.pid)))
            print(f"\r{(now - started) / 60:5.1f} min  rss {samples[-1][1] / 1024:7.1f} MiB  "
                  f"echoes {stats['received']:,}", end="", file=sys.stderr, flush=True)  # fmt: skip
            next_sample += 5
        if now >= next_churn:
            for _ in range(max(1, connections // 10)):
                i = churn_index % connections
                listeners[i].stop()
                listeners[i] = await open_one(i)
                stats["reconnects"] += 1
                churn_index += 1
            next_churn += 10
        await asyncio.sleep(0.2)  # the soak's own pace, not a synchronisation
    for listener in listeners:
        listener.stop()
    print(file=sys.stderr)
    return {"stats": stats, "samples": samples}


def growth(samples: list[tuple[float, int]], from_s: float = 120.0) -> float:
    after = [rss for t, rss in samples if t >= from_s]
    return (after[-1] - after[0]) / after[0] if len(after) >= 2 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="messages a second per connection")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    raise_fd_limit()
    with LiveServer("uvicorn", env={"LOG_LEVEL": "WARNING"}) as server:
        result = uvloop.run(soak(server, args.minutes, args.connections, args.rate))
    result.update(
        minutes=args.minutes,
        connections=args.connections,
        rate=args.rate,
        growth_from_minute_2=growth(result["samples"]),
    )
    (args.out_dir / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (args.out_dir / RECORD).write_text(json.dumps(result, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([t / 60 for t, _ in result["samples"]], [rss / 1024 for _, rss in result["samples"]])
    ax.axvline(2, linestyle="--", color="grey")
    ax.set_xlabel("minutes")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title(f"soak: {args.connections} connections x {args.rate:g} msg/s, 10% churn every 10 s; "
                 f"growth after minute 2: {result['growth_from_minute_2']:+.1%}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(args.out_dir / "soak.png", dpi=110)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))


if __name__ == "__main__":
    main()
