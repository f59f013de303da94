"""The room (fan-out) benchmark: one room of 10, 100 and 1,000 members, one sender and ten, on
one server process with the in-memory layer and on two processes through Redis (both
channels-redis layers). Deliveries per second, p50/p99 delivery latency, and losses.

    .venv/bin/python -m bench.fanout                   # part of `make bench`
    .venv/bin/python -m bench.fanout --members 10 100 --out-dir /tmp/bench

Each sender sends its next message when its previous one has come back to it through the
room, so the load clocks itself (no queue grows without bound) and every member receives
every message: members x senders x messages deliveries. The members, on picows and uvloop,
run in one client process; with two server processes they alternate between them, so half of
every delivery crosses processes. The echo ceiling (a raw ASGI echo under plain uvicorn,
100 connections, 16 B) is measured in the same run, for the ratio.

Writes ``fanout.md`` to ``--out-dir`` (default ``docs/``) and the run record ``runs/fanout.json``
under it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LAYERS = ("ceiling", "memory", "redis-core", "redis-pubsub", "redis-pubsub-2-shards")
#: The run record, under ``--out-dir`` (docs/ by default): docs/runs/, beside the other runs.
RECORD = "runs/fanout.json"


# --- the client (a process of its own) ------------------------------------------------------


async def room_client(
    urls: list[str], members: int, senders: int, messages: int, deadline: float
) -> dict:
    import uvloop  # noqa: F401  (the event loop is set by main)
    from picows import WSListener, WSMsgType

    from bench.client import open_many, raise_fd_limit

    raise_fd_limit()
    expected = senders * messages
    latencies: list[float] = []
    closes: list[int] = []
    everyone_done = asyncio.get_running_loop().create_future()
    state = {"complete": 0}

    class Member(WSListener):
        def __init__(self, index: int) -> None:
            self.index, self.received, self.seen = index, 0, set()
            self.duplicates = 0
            self.transport = None
            self.sent = 0

        def on_ws_connected(self, transport) -> None:
            self.transport = transport

        def send_next(self) -> None:
            self.sent += 1
            body = f"{self.index}:{self.sent}:{time.perf_counter_ns()}"
            self.transport.send(WSMsgType.TEXT, body.encode())

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                closes.append(frame.get_close_code())
                return
            if frame.msg_type != WSMsgType.TEXT:
                return
            sender, seq, sent_ns = frame.get_payload_as_ascii_text().split(":")
            latencies.append((time.perf_counter_ns() - int(sent_ns)) / 1e6)
            key = (sender, seq)
            if key in self.seen:
                self.duplicates += 1
            self.seen.add(key)
            self.received += 1
            if int(sender) == self.index and self.sent < messages:
                self.send_next()  # our own message came back: the next one
            if self.received == expected:
                state["complete"] += 1
                if state["complete"] == members and not everyone_done.done():
                    everyone_done.set_result(None)

    pairs = []
    for part, url in enumerate(urls):  # members alternate between the server processes
        count = members // len(urls) + (1 if part < members % len(urls) else 0)
        base = len(pairs)
        pairs += await open_many(url, count, lambda i, base=base: Member(base + i))
    listeners = [listener for _, listener in pairs]
    for index, listener in enumerate(listeners):
        listener.index = index
    # Every member is in the room: the driver measures the servers' memory, then says go.
    print(json.dumps({"joined": len(listeners)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = time.perf_counter()
    for listener in listeners[:senders]:
        listener.send_next()
    timed_out = False
    try:
        await asyncio.wait_for(everyone_done, deadline)
    except TimeoutError:
        timed_out = True
    elapsed = time.perf_counter() - start
    delivered = sum(listener.received for listener in listeners)
    for transport, _ in pairs:
        transport.disconnect()
    latencies.sort()
    return {
        "members": members,
        "senders": senders,
        "messages_per_sender": messages,
        "expected": members * expected,
        "delivered": delivered,
        "lost": members * expected - delivered,
        "duplicates": sum(listener.duplicates for listener in listeners),
        "closes": closes,
        "seconds": elapsed,
        "deliveries_per_s": delivered / elapsed if elapsed else 0.0,
        "p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "timed_out": timed_out,
    }


# --- the driver -----------------------------------------------------------------------------


def messages_for(members: int, senders: int) -> int:
    """Messages per sender: about 30,000 deliveries a run, at least 5 and at most 300 a sender."""
    return max(5, min(300, 30_000 // (members * senders)))


def run_room_client(
    urls: list[str], members: int, senders: int, deadline: float, servers: list
) -> dict:
    """The room client in its own process; once every member has joined, the servers' RSS
    growth per member is measured (``idle_kib_per_member``), then the messages go."""
    from bench.echo import rss_kib
    from tests.servers import ROOT

    before = sum(rss_kib(server.process.pid) for server in servers)
    client = subprocess.Popen(
        [sys.executable, "-m", "bench.fanout", "client", "--urls", *urls, "--members", str(members),
         "--senders", str(senders), "--messages", str(messages_for(members, senders)),
         "--deadline", str(deadline)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        joined = client.stdout.readline()
        if not joined:
            raise RuntimeError(f"room client failed: {client.stderr.read()[-2000:]}")
        grown = sum(rss_kib(server.process.pid) for server in servers) - before
        output, errors = client.communicate("go\n", timeout=deadline + 120)
    finally:
        client.kill()
    if client.returncode != 0:
        raise RuntimeError(f"room client failed: {errors[-2000:]}")
    return {**json.loads(output), "idle_kib_per_member": grown / members}


def servers_for(layer: str, redis_urls: list[str], env: dict) -> list:
    """``ceiling``: the raw ASGI room under plain uvicorn; ``memory``: one ``manage.py serve``;
    ``redis-*``: two, on one Redis, or on two shards (``redis-pubsub-2-shards``)."""
    from tests.servers import LiveServer

    if layer == "ceiling":
        return [LiveServer("uvicorn-plain", env=env, app="bench.apps:fanout_ceiling")]
    if layer == "memory":
        return [LiveServer("uvicorn", env=env)]
    urls = redis_urls if layer.endswith("2-shards") else redis_urls[:1]
    channel_layer = layer.removeprefix("redis-").removesuffix("-2-shards")
    layer_env = {**env, "REDIS_URL": ",".join(urls), "REDIS_CHANNEL_LAYER": channel_layer}
    return [LiveServer("uvicorn", env=layer_env) for _ in range(2)]


def main_driver(args) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from bench.echo import run_client
    from tests.redis_server import RedisServer, redis_missing
    from tests.servers import LiveServer

    # Room members are not rate-limited in the benchmark; CHANNEL_CAPACITY stays as shipped.
    # All members come from 127.0.0.1: the per-address cap (2,000) is lifted.
    env = {"LOG_LEVEL": "WARNING", "WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT": "0"}
    with LiveServer("uvicorn-plain", env=env, app="bench.apps:ceiling") as ceiling:
        echo = run_client("pingpong", "--url", f"{ceiling.ws_url}/ws/echo/async/", "--connections",
                          "100", "--messages", "30000", timeout=300)  # fmt: skip
    print(f"echo ceiling: {echo['msgs_per_s']:,.0f} msg/s", file=sys.stderr, flush=True)
    redis_servers = []
    if any(layer.startswith("redis") for layer in args.layers):
        if reason := redis_missing():
            raise SystemExit(reason)
        redis_servers = [RedisServer().start() for _ in range(2)]
    shapes = [(m, s) for m in args.members for s in args.senders]
    shapes += [(args.big_room, 1)] if args.big_room else []
    rows = []
    ceilings: dict[tuple[int, int], dict] = {}
    try:
        for layer in args.layers:
            servers = servers_for(layer, [r.url for r in redis_servers], env)
            try:
                for server in servers:
                    server.wait_ready()
                for members, senders in shapes:
                    if members == args.big_room and layer not in BIG_ROOM_LAYERS:
                        continue
                    room = f"bench-{layer}-{members}-{senders}-{time.monotonic_ns()}"
                    urls = [f"{s.ws_url}/ws/broadcast/async/{room}/" for s in servers]
                    row = run_room_client(urls, members, senders, args.deadline, servers)
                    if layer == "ceiling":
                        ceilings[members, senders] = row
                    ceiling_row = ceilings.get((members, senders))
                    row.update(
                        layer=layer,
                        processes=len(servers),
                        ratio_to_echo=row["deliveries_per_s"] / echo["msgs_per_s"],
                        ratio_to_ceiling=row["deliveries_per_s"] / ceiling_row["deliveries_per_s"]
                        if ceiling_row else None,
                        p99_to_ceiling=row["p99_ms"] / ceiling_row["p99_ms"]
                        if ceiling_row and ceiling_row["p99_ms"] else None,
                    )  # fmt: skip
                    rows.append(row)
                    print(f"{layer:12} {len(servers)} proc {members:>5} members {senders:>2} senders: "
                          f"{row['deliveries_per_s']:>9,.0f} deliveries/s "
                          f"({(row['ratio_to_ceiling'] or 0):.2f} x ceiling) "
                          f"p99 {row['p99_ms']:.1f} ms lost {row['lost']} dup {row['duplicates']} "
                          f"idle {row['idle_kib_per_member']:.1f} KiB/member"
                          f"{' TIMED OUT' if row['timed_out'] else ''}", file=sys.stderr, flush=True)  # fmt: skip
            finally:
                for server in servers:
                    server.stop()
    finally:
        for redis in redis_servers:
            redis.stop()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "echo_ceiling_msgs_per_s": echo["msgs_per_s"], "rows": rows}  # fmt: skip
    (args.out_dir / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (args.out_dir / RECORD).write_text(json.dumps(report, indent=1) + "\n")
    (args.out_dir / "fanout.md").write_text(markdown(report) + "\n")
    print(f"wrote {args.out_dir}/{RECORD}, fanout.md", file=sys.stderr)


#: The layers the 10,000-member room runs on: the ceiling, and two processes on Redis pubsub.
BIG_ROOM_LAYERS = ("ceiling", "redis-pubsub")


def markdown(report: dict) -> str:
    lines = [
        "# Rooms: fan-out",
        "",
        "Generated by `python -m bench.fanout` (part of `make bench`); every figure is also in",
        f"[fanout.json]({RECORD}). One room; each sender sends its next message when its last",
        "came back through the room; every member receives every message. `ceiling`: a room",
        "written by hand on the raw ASGI interface under plain uvicorn (bench/apps.py,",
        "`fanout_ceiling`: each member's `send` in a set, every message sent to all in one loop),",
        "in the same run; `memory`: one `manage.py serve` process, the in-memory layer;",
        "`redis-*`: two processes, members alternating between them, on one Redis or on two",
        "shards (`REDIS_URL` with two URLs). The echo ceiling (raw ASGI echo, plain uvicorn, 100",
        f"connections, 16 B) in the same run: {report['echo_ceiling_msgs_per_s']:,.0f} msg/s.",
        "Idle KiB/member: the servers' RSS growth once every member has joined, per member.",
        "",
        f"- Date: {report['date']}",
        "- Goals (issue 24): 1,000 members, 1 and 10 senders, in memory and on Redis pubsub",
        "  across two processes: deliveries/s >= 0.6 x the ceiling's, p99 <= 2 x the ceiling's;",
        "  nothing lost or duplicated. 10,000 members across two processes: 0 lost, idle memory",
        "  <= 20 KiB a member.",
        "",
        "| layer | processes | members | senders | deliveries | deliveries/s | / ceiling | / echo ceiling | p50 ms | p99 ms | p99 / ceiling | lost | duplicates | idle KiB/member |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        flag = " (timed out)" if r["timed_out"] else ""
        to_ceiling = f"{r['ratio_to_ceiling']:.2f}" if r.get("ratio_to_ceiling") else "-"
        p99_ratio = f"{r['p99_to_ceiling']:.2f}" if r.get("p99_to_ceiling") else "-"
        lines.append(
            f"| {r['layer']} | {r['processes']} | {r['members']:,} | {r['senders']} | {r['delivered']:,}{flag} "
            f"| {r['deliveries_per_s']:,.0f} | {to_ceiling} | {r['ratio_to_echo']:.2f} | {r['p50_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {p99_ratio} | {r['lost']} | {r['duplicates']} "
            f"| {r['idle_kib_per_member']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="the room client (run by the driver)")
    client.add_argument("--urls", nargs="+", required=True)
    client.add_argument("--members", type=int, required=True)
    client.add_argument("--senders", type=int, required=True)
    client.add_argument("--messages", type=int, required=True)
    client.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=list(LAYERS))
    parser.add_argument("--members", nargs="+", type=int, default=[10, 100, 1000])
    parser.add_argument("--senders", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--big-room", type=int, default=10_000, help="0: no big-room row")
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument(
        "--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "docs"
    )
    args = parser.parse_args()
    if args.command == "client":
        import uvloop

        from bench.client import check_loopback

        for url in args.urls:
            check_loopback(url)
        result = uvloop.run(
            room_client(args.urls, args.members, args.senders, args.messages, args.deadline)
        )
        print(json.dumps(result))
        return
    main_driver(args)


if __name__ == "__main__":
    main()
