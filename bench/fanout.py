"""The room (fan-out) benchmark: one room of 10, 100 and 1,000 members, one sender and ten, on
the project's rooms in one process and on two through Redis, against the raw ASGI room (the
ceiling) and the peers a Python user would pick (python-socketio, stock Channels), all with the
same client, the same members and the same run. Deliveries per second, p50/p99 delivery
latency, losses and duplicates.

    .venv/bin/python -m bench.fanout                   # part of `make bench`
    .venv/bin/python -m bench.fanout --members 10 100 --out-dir /tmp/bench
    .venv/bin/python -m bench.fanout --layers ceiling socketio --members 100 --big-room 0

Each sender sends its next message when its previous one has come back to it through the
room, so the load clocks itself (no queue grows without bound) and every member receives
every message: members x senders x messages deliveries. The members, on picows and uvloop,
run in one client process; with two server processes they alternate between them, so half of
every delivery crosses processes. A member speaks its layer's protocol through a small adapter
(``Plain``, ``RoomsV1``, ``SocketIO``): how it knows it is in the room, how a message is
wrapped and unwrapped; the rest of the client is one. The echo ceiling (a raw ASGI echo under
plain uvicorn, 100 connections, 16 B) is measured in the same run, for the ratio.

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
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from picows import WSListener, WSMsgType

from bench.client import open_many, raise_fd_limit

#: The run record, under ``--out-dir`` (docs/ by default): docs/runs/, beside the other runs.
RECORD = "runs/fanout.json"
OURS = "project.asgi:application"
ROOM_PATH = "/ws/broadcast/async/{room}/"
PEER_ENV = {"DJANGO_SETTINGS_MODULE": "bench.peer_settings"}


@dataclass(frozen=True)
class Layer:
    """One row kind: the server (a ``LiveServer`` kind and ASGI application), how many processes,
    how many Redis servers they share (0, 1, or 2 as shards), what the members speak."""

    server: str
    app: str
    processes: int = 1
    redis: int = 0
    env: dict[str, str] = field(default_factory=dict)
    protocol: str = "plain"  # plain, rooms.v1 or socketio
    path: str = ROOM_PATH

    @property
    def ours(self) -> bool:
        return self.app == OURS


LAYERS: dict[str, Layer] = {
    # A room written by hand on the raw ASGI interface (bench/apps.py).
    "ceiling": Layer("uvicorn-plain", "bench.apps:fanout_ceiling"),
    # The project: `manage.py serve`, the room engine its settings pick (memory, or Redis when
    # REDIS_URL is set), members plain or speaking rooms.v1.
    "memory": Layer("uvicorn", OURS),
    "memory-v1": Layer("uvicorn", OURS, protocol="rooms.v1"),
    "redis": Layer("uvicorn", OURS, 2, redis=1),
    "redis-v1": Layer("uvicorn", OURS, 2, redis=1, protocol="rooms.v1"),
    # Presence without its join and leave frames: the welcome's snapshot (the ARRIVE script at
    # each join) and the renewal still run; only the events are off.
    "redis-v1-no-presence-events": Layer(
        "uvicorn", OURS, 2, redis=1, protocol="rooms.v1", env={"ROOM_PRESENCE_EVENTS_MAX": "0"},
    ),
    "redis-no-history": Layer("uvicorn", OURS, 2, redis=1, env={"ROOM_HISTORY_SIZE": "0"}),
    "redis-2-shards": Layer("uvicorn", OURS, 2, redis=2),
    # The peers (bench/peers.py), under plain uvicorn with their defaults.
    "socketio": Layer(
        "uvicorn-plain", "bench.peers:socketio_room", env=PEER_ENV, protocol="socketio",
        path="/socket.io/?EIO=4&transport=websocket&room={room}",
    ),
    "socketio-redis": Layer(
        "uvicorn-plain", "bench.peers:socketio_room", 2, redis=1, env=PEER_ENV,
        protocol="socketio", path="/socket.io/?EIO=4&transport=websocket&room={room}",
    ),
    "channels-core": Layer(
        "uvicorn-plain", "bench.peers:channels_chat", 2, redis=1, env=PEER_ENV,
        path="/ws/chat/{room}/",
    ),
}  # fmt: skip
#: The layers the 10,000-member room runs on: the ceiling, and two processes on Redis.
BIG_ROOM_LAYERS = ("ceiling", "redis")


# --- the client (a process of its own) ------------------------------------------------------


class Plain:
    """The project's plain rooms, the ceiling's and stock Channels': a member is in the room once
    its handshake is done, and every text frame is a message's body, as sent."""

    headers: dict[str, str] = {}
    subprotocol: str | None = None

    def opened(self, member) -> None:
        member.in_room()

    def wrap(self, body: str) -> bytes:
        return body.encode()

    def unwrap(self, member, text: str) -> str | None:
        return text


class RoomsV1(Plain):
    """``rooms.v1``: the subprotocol offered (and required back); the member is in the room at
    its welcome; each message is a JSON envelope, parsed, whose offset must follow the last.
    ``join`` and ``leave`` frames (presence) are counted (``presence_frames``); a subclass sees
    the welcome and each other frame (``welcomed``, ``other``): bench/presence.py's join storm."""

    headers = {"Sec-WebSocket-Protocol": "rooms.v1"}
    subprotocol = "rooms.v1"

    def opened(self, member) -> None:
        pass  # in the room at the welcome

    def unwrap(self, member, text: str) -> str | None:
        envelope = orjson.loads(text)
        kind = envelope["type"]
        if kind == "message":
            if envelope["offset"] != member.offset + 1:
                member.out_of_order += 1
            member.offset = envelope["offset"]
            return envelope["text"]
        if kind == "welcome":
            member.offset = envelope["offset"]
            self.welcomed(member, envelope)
            member.in_room()
        else:
            member.presence_frames += kind in ("join", "leave")
            self.other(member, kind, envelope)
        return None

    def welcomed(self, member, welcome: dict) -> None:
        """The member's welcome (its ``presence`` snapshot, say)."""

    def other(self, member, kind: str, envelope: dict) -> None:
        """A frame that is neither a message nor the welcome: ``join``, ``leave``."""


class SocketIO(Plain):
    """Socket.IO 5 on Engine.IO 4, WebSocket transport only: the server's open packet (``0{...}``)
    is answered with a connect to the default namespace (``40``), which the server acknowledges
    (``40{...}``) once its connect handler has put the member in the room; pings (``2``) are
    answered (``3``); a message is the event ``42["message","<body>"]``, parsed as JSON."""

    def opened(self, member) -> None:
        pass  # in the room at the namespace's acknowledgement

    def wrap(self, body: str) -> bytes:
        return f'42["message","{body}"]'.encode()

    def unwrap(self, member, text: str) -> str | None:
        if text.startswith("42"):
            event, body = orjson.loads(text[2:])
            return body if event == "message" else None
        if text.startswith("0{"):
            member.send_raw(b"40")
        elif text.startswith("40"):
            member.in_room()
        elif text == "2":
            member.send_raw(b"3")
        elif text.startswith(("41", "44", "1")):
            raise ConnectionError(f"Socket.IO refused or ended the connection: {text[:200]}")
        return None


PROTOCOLS = {"plain": Plain(), "rooms.v1": RoomsV1(), "socketio": SocketIO()}


class Run:
    """What one client run's members share: the adapter, what each member must receive
    (``senders`` x ``messages``), the latencies and close codes, and a future set once every
    member has received everything."""

    def __init__(self, adapter: Plain, members: int, senders: int = 0, messages: int = 0):
        self.adapter, self.members, self.messages = adapter, members, messages
        self.expected = senders * messages
        self.latencies: list[float] = []
        self.closes: list[int] = []
        self.complete = 0
        self.everyone_done = asyncio.get_running_loop().create_future()


class Member(WSListener):
    """One room member: in the room when its adapter says so (``joined``), it counts what it
    receives, and a sender sends its next message when its last one came back."""

    def __init__(self, run: Run, index: int) -> None:
        self.run, self.index, self.received, self.seen = run, index, 0, set()
        self.duplicates = self.out_of_order = self.offset = self.presence_frames = 0
        self.transport = None
        self.sent = 0
        self.joined = asyncio.get_running_loop().create_future()

    def in_room(self) -> None:
        if not self.joined.done():
            self.joined.set_result(None)

    def send_raw(self, data: bytes) -> None:
        self.transport.send(WSMsgType.TEXT, data)

    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        self.run.adapter.opened(self)

    def on_ws_disconnected(self, transport) -> None:
        if not self.joined.done():
            self.joined.set_exception(ConnectionError("disconnected before joining the room"))

    def send_next(self) -> None:
        self.sent += 1
        body = f"{self.index}:{self.sent}:{time.perf_counter_ns()}"
        self.transport.send(WSMsgType.TEXT, self.run.adapter.wrap(body))

    def on_ws_frame(self, transport, frame) -> None:
        run = self.run
        if frame.msg_type == WSMsgType.CLOSE:
            run.closes.append(frame.get_close_code())
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        body = run.adapter.unwrap(self, frame.get_payload_as_ascii_text())
        if body is None:
            return
        sender, seq, sent_ns = body.split(":")
        run.latencies.append((time.perf_counter_ns() - int(sent_ns)) / 1e6)
        key = (sender, seq)
        if key in self.seen:
            self.duplicates += 1
        self.seen.add(key)
        self.received += 1
        if int(sender) == self.index and self.sent < run.messages:
            self.send_next()  # our own message came back: the next one
        if self.received == run.expected:
            run.complete += 1
            if run.complete == run.members and not run.everyone_done.done():
                run.everyone_done.set_result(None)


async def open_members(urls: list[str], run: Run, factory=Member) -> list:
    """``run.members`` members, alternating between the server processes' URLs, 200
    handshakes at a time: (transport, member) pairs."""
    adapter = run.adapter
    return await open_many(
        urls,
        run.members,
        lambda index: factory(run, index),
        headers=adapter.headers,
        subprotocol=adapter.subprotocol,
    )


async def quiet(count, period: float = 0.5) -> int:
    """Wait until ``count()`` has not grown for ``period`` seconds (a measurement of when the
    traffic stopped, not a synchronisation), and return it."""
    last = count()
    while True:
        await asyncio.sleep(period)
        now = count()
        if now == last:
            return now
        last = now


async def room_client(
    urls: list[str], protocol: str, members: int, senders: int, messages: int, deadline: float
) -> dict:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    run = Run(PROTOCOLS[protocol], members, senders, messages)
    pairs = await open_members(urls, run)
    listeners = [listener for _, listener in pairs]
    await asyncio.wait_for(asyncio.gather(*(m.joined for m in listeners)), 120)
    # rooms.v1 members get join frames while the room fills (ROOM_PRESENCE_EVENTS_MAX): the
    # messages start once they have stopped, so no row counts the join storm's tail.
    presence_frames = 0
    if isinstance(run.adapter, RoomsV1):
        presence_frames = await quiet(lambda: sum(m.presence_frames for m in listeners))
    # Every member is in the room: the driver measures the servers' memory, then says go.
    print(json.dumps({"joined": len(listeners)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    start = time.perf_counter()
    for member in listeners[:senders]:
        member.send_next()
    timed_out = False
    try:
        await asyncio.wait_for(run.everyone_done, deadline)
    except TimeoutError:
        timed_out = True
    elapsed = time.perf_counter() - start
    delivered = sum(member.received for member in listeners)
    expected = run.expected
    for transport, _ in pairs:
        transport.disconnect()
    latencies = sorted(run.latencies)
    return {
        "protocol": protocol,
        "members": members,
        "senders": senders,
        "messages_per_sender": messages,
        "expected": members * expected,
        "delivered": delivered,
        "lost": members * expected - delivered,
        "duplicates": sum(member.duplicates for member in listeners),
        "out_of_order": sum(member.out_of_order for member in listeners),
        "presence_frames": presence_frames,
        "closes": run.closes,
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
    urls: list[str], protocol: str, members: int, senders: int, deadline: float, servers: list
) -> dict:
    """The room client in its own process; once every member has joined, the servers' RSS
    growth per member is measured (``idle_kib_per_member``), then the messages go, and the
    servers' CPU time from the go to the client's report is divided by the deliveries
    (``server_cpu_us_per_delivery``: what the servers spent, apart from the client's share of
    the cores)."""
    from bench.echo import cpu_seconds, rss_kib
    from tests.servers import ROOT

    before = sum(rss_kib(server.process.pid) for server in servers)
    client = subprocess.Popen(
        [sys.executable, "-m", "bench.fanout", "client", "--urls", *urls, "--protocol", protocol,
         "--members", str(members), "--senders", str(senders),
         "--messages", str(messages_for(members, senders)), "--deadline", str(deadline)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        joined = client.stdout.readline()
        if not joined:
            raise RuntimeError(f"room client failed: {client.stderr.read()[-2000:]}")
        grown = sum(rss_kib(server.process.pid) for server in servers) - before
        cpu = sum(cpu_seconds(server.process.pid) for server in servers)
        output, errors = client.communicate("go\n", timeout=deadline + 120)
        cpu = sum(cpu_seconds(server.process.pid) for server in servers) - cpu
    finally:
        client.kill()
    if client.returncode != 0:
        raise RuntimeError(f"room client failed: {errors[-2000:]}")
    row = json.loads(output)
    row["server_cpu_us_per_delivery"] = cpu / row["delivered"] * 1e6 if row["delivered"] else None
    return {**row, "idle_kib_per_member": grown / members}


def settle(pids: list[int], period: float = 0.5, limit: float = 60.0) -> float:
    """Wait until the processes ``pids`` spend under a tenth of a core over ``period`` (what a
    row left behind, a room of members leaving say, is not counted in the next), at most
    ``limit`` seconds; the seconds waited."""
    from bench.echo import cpu_seconds

    started = time.monotonic()
    last = sum(cpu_seconds(pid) for pid in pids)
    while time.monotonic() - started < limit:
        time.sleep(period)  # a sampling period, not a synchronisation
        now = sum(cpu_seconds(pid) for pid in pids)
        if now - last < 0.1 * period:
            break
        last = now
    return time.monotonic() - started


def servers_for(name: str, redis_urls: list[str], env: dict) -> list:
    """The layer's server processes, each on ``REDIS_URL`` (empty without Redis; comma-separated
    shards with two)."""
    from tests.servers import LiveServer

    layer = LAYERS[name]
    layer_env = {**env, "REDIS_URL": ",".join(redis_urls[: layer.redis]), **layer.env}
    return [LiveServer(layer.server, env=layer_env, app=layer.app) for _ in range(layer.processes)]


def engine_of(server) -> dict | None:
    """What the project's ``/healthz`` says of its rooms (``rooms``, else the channel layer)."""
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=10) as response:
        health = json.load(response)
    return health.get("rooms") or health.get("channel_layer")


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
    if needed := max(LAYERS[layer].redis for layer in args.layers):
        if reason := redis_missing():
            raise SystemExit(reason)
        redis_servers = [RedisServer().start() for _ in range(needed)]
    shapes = [(m, s) for m in args.members for s in args.senders]
    shapes += [(args.big_room, 1)] if args.big_room else []
    rows = []
    ceilings: dict[tuple[int, int], dict] = {}
    try:
        for layer in args.layers:
            spec = LAYERS[layer]
            servers = servers_for(layer, [r.url for r in redis_servers], env)
            try:
                for server in servers:
                    server.wait_ready()
                engine = engine_of(servers[0]) if spec.ours else None
                # One unrecorded round first, of the first shape: a process's first connections
                # and messages pay for its imports and first allocations (the first row of a
                # layer held 50-1,500 KiB a member and twice the CPU a delivery), the peers'
                # as ours.
                warm = f"bench_warm_{time.monotonic_ns()}"
                run_room_client([f"{s.ws_url}{spec.path.format(room=warm)}" for s in servers],
                                spec.protocol, *shapes[0], args.deadline, servers)  # fmt: skip
                settle([s.process.pid for s in servers])
                for members, senders in shapes:
                    if members == args.big_room and layer not in BIG_ROOM_LAYERS:
                        continue
                    room = f"bench_{members}_{senders}_{time.monotonic_ns()}"
                    urls = [f"{s.ws_url}{spec.path.format(room=room)}" for s in servers]
                    row = run_room_client(urls, spec.protocol, members, senders, args.deadline, servers)  # fmt: skip
                    settle([s.process.pid for s in servers])
                    if layer == "ceiling":
                        ceilings[members, senders] = row
                    ceiling_row = ceilings.get((members, senders))
                    row.update(
                        layer=layer,
                        processes=len(servers),
                        engine=engine,
                        ratio_to_echo=row["deliveries_per_s"] / echo["msgs_per_s"],
                        ratio_to_ceiling=row["deliveries_per_s"] / ceiling_row["deliveries_per_s"]
                        if ceiling_row else None,
                        p99_to_ceiling=row["p99_ms"] / ceiling_row["p99_ms"]
                        if ceiling_row and ceiling_row["p99_ms"] else None,
                    )  # fmt: skip
                    rows.append(row)
                    print(f"{layer:16} {len(servers)} proc {members:>5} members {senders:>2} senders: "
                          f"{row['deliveries_per_s']:>9,.0f} deliveries/s "
                          f"({(row['ratio_to_ceiling'] or 0):.2f} x ceiling) "
                          f"p99 {row['p99_ms'] or 0:.1f} ms lost {row['lost']} dup {row['duplicates']} "
                          f"idle {row['idle_kib_per_member']:.1f} KiB/member "
                          f"server {row['server_cpu_us_per_delivery'] or 0:.1f} us/delivery"
                          f"{' TIMED OUT' if row['timed_out'] else ''}", file=sys.stderr, flush=True)  # fmt: skip
            finally:
                for server in servers:
                    server.stop()
    finally:
        for redis in redis_servers:
            redis.stop()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "echo_ceiling_msgs_per_s": echo["msgs_per_s"], "big_room": args.big_room,
              "rows": rows}  # fmt: skip
    (args.out_dir / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (args.out_dir / RECORD).write_text(json.dumps(report, indent=1) + "\n")
    (args.out_dir / "fanout.md").write_text(markdown(report) + "\n")
    print(f"wrote {args.out_dir}/{RECORD}, fanout.md", file=sys.stderr)


# --- the page -------------------------------------------------------------------------------

#: The rows the goals compare: ours against each peer of the same kind (one process in memory,
#: two on Redis).
PEERS_OF = {"memory": ("socketio",), "redis": ("socketio-redis", "channels-core")}


def ratio_lines(report: dict) -> tuple[list[str], dict]:
    """Per shape, deliveries/s of one layer over another's: history on / off, rooms.v1 / plain."""
    by = {(r["layer"], r["members"], r["senders"]): r for r in report["rows"]}
    pairs = {
        "history on vs off (`redis` / `redis-no-history`)": ("redis", "redis-no-history"),
        "rooms.v1 vs plain in one process (`memory-v1` / `memory`)": ("memory-v1", "memory"),
        "rooms.v1 vs plain on Redis (`redis-v1` / `redis`)": ("redis-v1", "redis"),
        "presence on vs off (`redis-v1` / `redis-v1-no-presence-events`)": (
            "redis-v1",
            "redis-v1-no-presence-events",
        ),
    }
    ratios: dict[str, dict] = {}
    lines = []
    for title, (top, bottom) in pairs.items():
        found = {
            (m, s): by[top, m, s]["deliveries_per_s"] / by[bottom, m, s]["deliveries_per_s"]
            for (layer, m, s) in by
            if layer == top and (bottom, m, s) in by and by[bottom, m, s]["deliveries_per_s"]
        }
        ratios[top, bottom] = found
        if found:
            cells = ", ".join(
                f"{m:,} x {s}: {ratio:.2f}" for (m, s), ratio in sorted(found.items())
            )
            lines.append(f"- {title}, members x senders: {cells}")
    return lines, ratios


def goal_lines(report: dict, ratios: dict) -> list[str]:
    """The issue's goals, each with what this run measured (at the largest room of the grid
    below the big room, 1,000 members in a full run)."""
    rows = report["rows"]
    by = {(r["layer"], r["members"], r["senders"]): r for r in rows}
    members = max((r["members"] for r in rows if r["members"] != report.get("big_room")), default=0)

    def verdict(ok: bool | None) -> str:
        return "no figure in this run" if ok is None else ("met" if ok else "**not met**")

    def ceiling_goal(senders: int, floor: float, p99: float | None) -> str:
        row = by.get(("redis", members, senders))
        if not row or row.get("ratio_to_ceiling") is None:
            return verdict(None)
        ok = row["ratio_to_ceiling"] >= floor and (p99 is None or row["p99_to_ceiling"] <= p99)
        extra = f", p99 {row['p99_to_ceiling']:.2f}x" if p99 is not None else ""
        return f"{row['ratio_to_ceiling']:.2f}x{extra}: {verdict(ok)}"

    def within(pair: tuple[str, str], floor: float = 0.9) -> str:
        found = {k: v for k, v in ratios.get(pair, {}).items() if k[0] == members}
        if not found:
            return verdict(None)
        cells = ", ".join(f"{s} sender(s) {r:.2f}" for (_, s), r in sorted(found.items()))
        return f"{cells}: {verdict(all(r >= floor for r in found.values()))}"

    behind = []
    compared = 0
    for ours, peers in PEERS_OF.items():
        for peer in peers:
            for layer, m, s in by:
                if layer != peer or (ours, m, s) not in by:
                    continue
                compared += 1
                mine, theirs = by[ours, m, s], by[peer, m, s]
                if not (
                    mine["deliveries_per_s"] > theirs["deliveries_per_s"]
                    and (mine["p99_ms"] or 0) < (theirs["p99_ms"] or float("inf"))
                ):
                    behind.append(f"`{ours}` vs `{peer}` at {m:,} x {s}")
    peers = (
        verdict(None)
        if not compared
        else f"{compared - len(behind)} of {compared} rows: {verdict(not behind)}"
        + (f" (behind: {'; '.join(behind)})" if behind else "")
    )
    lossy = [f"`{r['layer']}` at {r['members']:,} x {r['senders']}" for r in rows
             if r["lost"] or r["duplicates"] or r.get("out_of_order") or r["timed_out"]]  # fmt: skip
    big = by.get(("redis", report.get("big_room"), 1))
    big_room = (
        verdict(None)
        if not big
        else f"{big['lost']} lost, {big['idle_kib_per_member']:.1f} KiB a member: "
        + verdict(not big["lost"] and big["idle_kib_per_member"] <= 20)
    )
    return [
        f"- Goals (issue 30), at {members:,} members, two processes on one Redis (`redis`):",
        f"    - 10 senders: >= 0.6x the ceiling's deliveries/s, p99 <= 2x: {ceiling_goal(10, 0.6, 2.0)}",
        f"    - 1 sender: >= 0.5x the ceiling's deliveries/s: {ceiling_goal(1, 0.5, None)}",
        f"    - `rooms.v1` within 10 % of plain: in memory {within(('memory-v1', 'memory'))};"
        f" on Redis {within(('redis-v1', 'redis'))}",
        f"    - history on costs <= 10 % of deliveries/s: {within(('redis', 'redis-no-history'))}",
        "    - presence (join and leave frames, `ROOM_PRESENCE_EVENTS_MAX` at its default) costs"
        " <= 5 % of deliveries/s (issue 31):"
        f" {within(('redis-v1', 'redis-v1-no-presence-events'), 0.95)}",
        "    - ahead of the peers in deliveries/s and p99 in every row (`memory` vs `socketio`;"
        f" `redis` vs `socketio-redis` and `channels-core`): {peers}",
        "    - nothing lost, duplicated or out of order in any row: "
        + (verdict(True) if not lossy else f"{verdict(False)} ({'; '.join(lossy)})"),
        f"    - {report.get('big_room') or 10_000:,} members on `redis` (issue 24): 0 lost, idle"
        f" memory <= 20 KiB a member: {big_room}",
    ]


def markdown(report: dict) -> str:
    summary, ratios = ratio_lines(report)
    lines = [
        "# Rooms: fan-out",
        "",
        "Generated by `python -m bench.fanout` (part of `make bench`); every figure is also in",
        f"[fanout.json]({RECORD}). One room; each sender sends its next message when its last",
        "came back through the room; every member receives every message. The same client (picows",
        "on uvloop, one process) and the same members for every row; with two server processes",
        "the members alternate between them.",
        "",
        "- `ceiling`: a room written by hand on the raw ASGI interface under plain uvicorn",
        "  (bench/apps.py, `fanout_ceiling`: each member's `send` in a set, every message sent to",
        "  all in one loop). Every row's `/ ceiling` is against the ceiling's row of the same shape.",
        "- `memory`: one `manage.py serve` process, the in-memory room engine, plain members;",
        "  `memory-v1`: the same, members speaking `rooms.v1`. The client parses every",
        "  `rooms.v1` envelope and Socket.IO event with orjson (`json.loads` took about 2 µs a",
        "  delivery that plain members do not spend, on the two cores the servers share).",
        "- `redis`: two `manage.py serve` processes on one Redis (`REDIS_URL`, the default room",
        "  engine); `redis-v1`: members speaking `rooms.v1`; `redis-v1-no-presence-events`:",
        "  the same with `ROOM_PRESENCE_EVENTS_MAX=0`, no join or leave frames (the welcome's",
        "  presence snapshot is still made at each join, and each process still renews its",
        "  members' entries); `redis-no-history`: `ROOM_HISTORY_SIZE=0`; `redis-2-shards`:",
        "  `REDIS_URL` with two Redis servers. `rooms.v1` members get a join frame for each",
        "  member who joins after them while the room is within the bound (1,000 by default):",
        "  the messages start once those have stopped, and the next row once the servers are",
        "  idle again (a room of 1,000 leaving sends as many leave frames).",
        "- Peers, under plain uvicorn with their defaults (bench/peers.py): `socketio`,",
        "  python-socketio's `AsyncServer` in one process (Socket.IO over a WebSocket, events",
        "  parsed as JSON); `socketio-redis`, two processes with `AsyncRedisManager`;",
        "  `channels-core`, stock Channels, the tutorial's chat consumer (`group_send`) on",
        "  channels-redis' `RedisChannelLayer`, two processes; its config at the defaults but for",
        "  `socket_timeout` and `max_connections`, without which it drops every member after 5 s",
        "  idle and refuses a burst of joins on redis-py 8 (bench/peer_settings.py).",
        "",
        "The echo ceiling (raw ASGI echo, plain uvicorn, 100 connections, 16 B) in the same run:",
        f"{report['echo_ceiling_msgs_per_s']:,.0f} msg/s. Idle KiB/member: the servers' RSS growth",
        "once every member has joined, per member. Server µs/delivery: the servers' CPU time while",
        "the messages went, divided by the deliveries (the client's share of the cores apart).",
        "",
        f"- Date: {report['date']}",
        *summary,
        *goal_lines(report, ratios),
        "",
        "| layer | processes | members | senders | deliveries | deliveries/s | / ceiling | / echo ceiling | p50 ms | p99 ms | p99 / ceiling | lost | duplicates | idle KiB/member | server µs/delivery |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        flag = " (timed out)" if r["timed_out"] else ""
        to_ceiling = f"{r['ratio_to_ceiling']:.2f}" if r.get("ratio_to_ceiling") else "-"
        p99_ratio = f"{r['p99_to_ceiling']:.2f}" if r.get("p99_to_ceiling") else "-"
        p50 = f"{r['p50_ms']:.1f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.1f}" if r["p99_ms"] is not None else "-"
        cpu = r.get("server_cpu_us_per_delivery")
        lines.append(
            f"| {r['layer']} | {r['processes']} | {r['members']:,} | {r['senders']} | {r['delivered']:,}{flag} "
            f"| {r['deliveries_per_s']:,.0f} | {to_ceiling} | {r['ratio_to_echo']:.2f} | {p50} "
            f"| {p99} | {p99_ratio} | {r['lost']} | {r['duplicates']} "
            f"| {r['idle_kib_per_member']:.1f} | {f'{cpu:.1f}' if cpu is not None else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="the room client (run by the driver)")
    client.add_argument("--urls", nargs="+", required=True)
    client.add_argument("--protocol", choices=PROTOCOLS, default="plain")
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
            room_client(
                args.urls, args.protocol, args.members, args.senders, args.messages, args.deadline
            )
        )
        print(json.dumps(result))
        return
    main_driver(args)


if __name__ == "__main__":
    main()
