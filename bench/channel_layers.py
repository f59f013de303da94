"""Measure channels-redis' two layers on one broadcast load, end to end.

Two uvicorn processes share a private redis-server; C clients in one room (split across the
processes, sync and async consumers alike) each send M messages as fast as they can; every
client must receive all C x M, each sender's in order. Per layer: wall time to full delivery,
deliveries per second, one-way latency percentiles, loss. Layers alternate, R rounds.

    .venv/bin/python -m bench.channel_layers [--clients 50] [--messages 100] [--rounds 2]

Loopback only; every wait is bounded. Prints JSON; a run that a page cites is kept as
``docs/runs/channel-layers-<what>-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django

django.setup()

from websockets.asyncio.client import connect  # noqa: E402

from tests.redis_server import RedisServer  # noqa: E402
from tests.servers import LiveServer  # noqa: E402

LAYERS = ("core", "pubsub")


async def one_run(servers: list[LiveServer], clients: int, messages: int) -> dict:
    room = f"bench-{uuid.uuid4().hex[:8]}"
    sockets = [
        await connect(
            f"{servers[i % 2].ws_url}/ws/broadcast/{('sync', 'async')[i // 2 % 2]}/{room}/",
            max_queue=None,
        )
        for i in range(clients)
    ]
    latencies: list[float] = []
    expected = clients * messages

    async def send_all(i, ws):
        for n in range(messages):
            await ws.send(f"{i}:{n}:{time.perf_counter()}")

    async def receive_all(ws):
        last: dict[str, int] = {}
        got = 0
        ordered = True
        for _ in range(expected):
            message = await asyncio.wait_for(ws.recv(), 30)
            sender, n, sent = message.split(":")
            latencies.append(time.perf_counter() - float(sent))
            ordered &= int(n) == last.get(sender, -1) + 1
            last[sender] = int(n)
            got += 1
        return got, ordered

    started = time.perf_counter()
    receivers = [asyncio.create_task(receive_all(ws)) for ws in sockets]
    await asyncio.gather(*(send_all(i, ws) for i, ws in enumerate(sockets)))
    try:
        results = await asyncio.wait_for(asyncio.gather(*receivers), 180)
    except (TimeoutError, Exception) as error:  # a stalled or closed receiver: record it as loss
        results = [(0, False)] * clients
        print(f"  run failed: {type(error).__name__}: {error}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    received = sum(got for got, _ in results)
    latencies.sort()
    return {
        "seconds": round(elapsed, 3),
        "deliveries": received,
        "deliveries_per_s": round(received / elapsed),
        "lost": clients * expected - received,
        "in_order": all(ordered for _, ordered in results),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 1)
        if latencies
        else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    redis = RedisServer().start()
    results: dict[str, list[dict]] = {layer: [] for layer in LAYERS}
    try:
        for round_ in range(args.rounds):
            order = LAYERS if round_ % 2 == 0 else LAYERS[::-1]
            for layer in order:
                env = {"REDIS_URL": redis.url, "REDIS_CHANNEL_LAYER": layer, "LOG_LEVEL": "WARNING"}
                servers = [LiveServer("uvicorn", env=env).wait_ready() for _ in range(2)]
                try:
                    print(
                        f"round {round_ + 1}/{args.rounds}: {layer} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    result = await one_run(servers, args.clients, args.messages)
                finally:
                    for server in servers:
                        server.stop()
                result["log_warnings"] = sum(s.log().count("WARNING") for s in servers)
                result["log_tracebacks"] = sum(s.log().count("Traceback") for s in servers)
                results[layer].append(result)
                print(f"  {layer}: {json.dumps(result)}", file=sys.stderr, flush=True)
    finally:
        redis.stop()
    print(
        json.dumps(
            {"clients": args.clients, "messages": args.messages, "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
