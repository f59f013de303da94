"""Presence's join storm: N ``rooms.v1`` members join one room as fast as the client can open
them, across two ``manage.py serve`` processes on one Redis, at several
``ROOM_PRESENCE_EVENTS_MAX`` (0: no join or leave frames). Issue 31 asks for the bound to be
set from this measurement.

    .venv/bin/python -m bench.presence --out-dir /tmp/presence        # 1,000 and 10,000 members
    .venv/bin/python -m bench.presence --members 50 --events 0 10 --idle 0 --out-dir /tmp/p

A member that joins while the room has at most the bound gets announced: every member already
there receives a ``join`` frame. A storm into a room of N members under a bound M therefore
sends at least K(K-1)/2 join frames, K = min(N, M), whatever N is past M; the welcome's
snapshot (the ``ARRIVE`` script) runs at every join either way. For each cell, fresh servers
and a fresh Redis, and:

- the seconds until every member has its welcome, and until the join frames stopped (the
  last one received; the client waits until the frame count has not grown for 0.5 s, which
  measures when the traffic stopped and synchronises nothing);
- the join frames received, against the least the rule implies: a member whose welcome says
  count c gets the joins of members c+1 .. K (one may get more: a join published just before
  its own, which reached its process after it began to watch), and each frame's lag after its
  member's own welcome (p99);
- whether the welcomes' counts are 1 .. N, each once (each welcome's count is its join's place
  in Redis' order), how many welcomes reached the client after one with a higher count, and
  the room's count in Redis after the storm and after the idle window;
- the servers' CPU seconds (both processes, /proc) and Redis' over the storm, the servers'
  RSS before and their peak (VmHWM) after it;
- then, with every member still there, the CPU a second of an idle room costs (each process
  renews its members' entries every third of ``ROOM_PRESENCE_TIMEOUT``), and the CPU of the
  room emptying at once (a leave frame to those left, while within the bound).

The client is bench/fanout.py's: its ``Member``, its ``RoomsV1`` adapter (with a subclass that
reads the welcome's ``presence`` and counts the frames) and ``open_members`` (bench/client.py's
``open_many``, 200 handshakes at a time, members alternating between the two processes).

``--presence-timeout`` sets ``ROOM_PRESENCE_TIMEOUT`` (renewals every third of it) for the
servers. Writes ``presence-storm.md`` to ``--out-dir`` (default ``docs/``) and the run record
``runs/presence-storm.json`` under it, and prints a recommended ``ROOM_PRESENCE_EVENTS_MAX``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.fanout import Member, RoomsV1, Run, open_members, quiet, settle

RECORD = "runs/presence-storm.json"
PAGE = "presence-storm.md"
ROOM_PATH = "/ws/broadcast/async/{room}/"
#: The recommendation's budget: join frames may cost the servers at most this share of CPU on
#: top of the same storm without them (presence at most doubles a join storm's cost) ...
EVENTS_SHARE = 1.0
#: ... and 99 % of the join frames arrive within this many seconds of the joiner's welcome:
#: half of issue 31's "within 1 s", for a host busier than this one (and the lag past the
#: largest bound measured is extrapolated).
EVENTS_LAG_S = 0.5
#: The bounds the recommendation picks from.
ROUND = (50, 100, 200, 250, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 10_000)


# --- the client (a process of its own) ------------------------------------------------------


class Watcher(Member):
    """A member of the storm: when its welcome came, the count it said, the frames after."""

    def __init__(self, run: Run, index: int) -> None:
        super().__init__(run, index)
        self.welcomed_at = self.last_frame = 0.0
        self.count = self.joins = self.leaves = 0
        self.name = ""
        self.joined_names: list[str] = []  # whom each join frame was about
        self.joined_times: list[float] = []  # and when it came


class Storm(RoomsV1):
    """``rooms.v1``, reading the welcome's ``presence`` and timing the join and leave frames."""

    def welcomed(self, member: Watcher, welcome: dict) -> None:
        member.welcomed_at = time.perf_counter()
        member.count = welcome["presence"]["count"]
        member.name = welcome["member"]

    def other(self, member: Watcher, kind: str, envelope: dict) -> None:
        if kind == "join":
            member.joins += 1
            member.joined_names.append(envelope["member"]["member"])
            member.joined_times.append(time.perf_counter())
        elif kind == "leave":
            member.leaves += 1
        member.last_frame = time.perf_counter()


def audit(listeners: list[Watcher], bound: int) -> dict:
    """Each member's join frames against the rule: a member whose welcome said count c is owed
    the join of every member whose count is c+1 .. K (K = min(members, bound)); a join about a
    member whose count is below c is stale (that member is in c already: its join ran in Redis
    before this one's, its frame reached the process after this member began to watch)."""
    count_of = {m.name: m.count for m in listeners}
    welcome_of = {m.name: m.welcomed_at for m in listeners}
    lags = sorted(
        at - welcome_of[name]
        for m in listeners
        for name, at in zip(m.joined_names, m.joined_times, strict=True)
        if name in welcome_of
    )
    by_count = {m.count: m.name for m in listeners}
    k = min(bound, len(listeners))
    owed = short = missing = stale = duplicates = 0
    for m in listeners:
        got = set(m.joined_names)
        duplicates += len(m.joined_names) - len(got)
        stale += sum(count_of.get(name, 0) < m.count for name in got)
        due = [by_count[c] for c in range(m.count + 1, k + 1) if c in by_count]
        owed += len(due)
        lacking = sum(name not in got for name in due)
        missing += lacking
        short += lacking > 0
    return {
        "least_join_frames": owed,
        "short_members": short,
        "missing_join_frames": missing,
        "stale_join_frames": stale,
        "duplicate_join_frames": duplicates,
        # A join frame's lag: when it came, after its member's own welcome came (negative: before).
        "join_lag_p50_s": lags[len(lags) // 2] if lags else None,
        "join_lag_p99_s": lags[int(len(lags) * 0.99)] if lags else None,
        "join_lag_max_s": lags[-1] if lags else None,
    }


async def storm_client(urls: list[str], members: int, bound: int, deadline: float) -> None:
    from bench.client import raise_fd_limit

    raise_fd_limit()
    loop = asyncio.get_running_loop()
    run = Run(Storm(), members)
    print(json.dumps({"ready": True}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the driver has read the CPU: go
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    pairs = await open_members(urls, run, Watcher)
    opened = time.perf_counter() - start
    listeners: list[Watcher] = [listener for _, listener in pairs]
    await asyncio.wait_for(asyncio.gather(*(m.joined for m in listeners)), deadline)
    welcomed = max(m.welcomed_at for m in listeners) - start
    await quiet(lambda: sum(m.presence_frames for m in listeners))
    used = resource.getrusage(resource.RUSAGE_SELF)
    last_frame = max(m.last_frame for m in listeners)
    counts = [m.count for m in sorted(listeners, key=lambda m: m.welcomed_at)]
    print(
        json.dumps(
            {
                "opened_s": opened,
                "welcomed_s": welcomed,
                "frames_s": last_frame - start if last_frame else None,
                "join_frames": sum(m.joins for m in listeners),
                "leave_frames": sum(m.leaves for m in listeners),
                **audit(listeners, bound),
                "counts_exact": sorted(counts) == list(range(1, members + 1)),
                "last_count": counts[-1],
                "max_count": max(counts),
                "welcomes_after_higher": sum(
                    later < earlier for earlier, later in itertools.pairwise(counts)
                ),
                "closes": run.closes,
                "client_cpu_s": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime,
            }
        ),
        flush=True,
    )
    await loop.run_in_executor(None, sys.stdin.readline)  # the driver has measured: leave
    for transport, _ in pairs:
        transport.disconnect()
    print(json.dumps({"closed": len(pairs)}), flush=True)


# --- the driver -----------------------------------------------------------------------------


def presence_in(redis_url: str, room: str) -> tuple[int, int]:
    """The room's presence in Redis: its member names (the count every welcome says) and its
    entries (one per process and name)."""
    import redis

    from app.room_scripts import presence_keys

    conns, names = presence_keys(room)[:2]
    client = redis.Redis.from_url(redis_url)
    try:
        return client.hlen(names), client.zcard(conns)
    finally:
        client.close()


def storm(members: int, bound: int, args) -> dict:
    """One cell: two fresh server processes on a fresh Redis, the storm, the idle room, the
    room emptied."""
    from bench.echo import cpu_seconds, rss_kib
    from tests.redis_server import RedisServer
    from tests.servers import ROOT, LiveServer

    redis_server = RedisServer().start()
    env = {
        "LOG_LEVEL": "WARNING",
        # Every member comes from 127.0.0.1: the per-address cap (2,000) is lifted.
        "WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT": "0",
        "REDIS_URL": redis_server.url,
        "ROOM_PRESENCE_EVENTS_MAX": str(bound),
    }
    if args.presence_timeout:
        env["ROOM_PRESENCE_TIMEOUT"] = str(args.presence_timeout)
    servers = [LiveServer("uvicorn", env=env) for _ in range(2)]
    client = None
    try:
        for server in servers:
            server.wait_ready()
        pids = [server.process.pid for server in servers]
        settle(pids)  # started, imported, idle

        def cpu() -> tuple[float, float]:
            return sum(cpu_seconds(pid) for pid in pids), cpu_seconds(redis_server.process.pid)

        room = f"storm_{members}_{bound}_{time.monotonic_ns()}"
        urls = [f"{server.ws_url}{ROOM_PATH.format(room=room)}" for server in servers]
        client = subprocess.Popen(
            [sys.executable, "-m", "bench.presence", "client", "--urls", *urls,
             "--members", str(members), "--bound", str(bound), "--deadline", str(args.deadline)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

        def read() -> dict:
            line = client.stdout.readline()
            if not line:
                client.kill()
                raise RuntimeError(f"storm client failed: {client.stderr.read()[-2000:]}")
            return json.loads(line)

        def say(word: str) -> None:
            client.stdin.write(word + "\n")
            client.stdin.flush()

        read()  # ready
        rss_before = sum(rss_kib(pid) for pid in pids)
        servers_before, redis_before = cpu()
        say("go")
        row = read()
        servers_storm, redis_storm = cpu()
        peak = sum(rss_kib(pid, "VmHWM") for pid in pids)
        row["redis_names"], row["redis_entries"] = presence_in(redis_server.url, room)
        time.sleep(args.idle)  # a window to measure, not a synchronisation
        servers_idle, redis_idle = cpu()
        row["redis_names_idle"], _ = presence_in(redis_server.url, room)
        say("leave")
        read()  # closed
        left = time.monotonic()
        while presence_in(redis_server.url, room)[0] and time.monotonic() - left < 120:
            time.sleep(0.1)  # polling Redis until the room is empty
        emptied = time.monotonic() - left
        settle(pids)  # the last leave frames sent (to members already gone)
        servers_left, redis_left = cpu()
        client.communicate(timeout=30)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        for server in servers:
            server.stop()
        redis_server.stop()
    row.update(
        members=members,
        bound=bound,
        processes=len(servers),
        server_cpu_s=servers_storm - servers_before,
        redis_cpu_s=redis_storm - redis_before,
        rss_before_mib=rss_before / 1024,
        peak_rss_mib=peak / 1024,
        idle_s=args.idle,
        idle_cpu_per_s=(servers_idle - servers_storm + redis_idle - redis_storm) / args.idle
        if args.idle
        else None,
        emptied_s=emptied,
        leave_server_cpu_s=servers_left - servers_idle,
        leave_redis_cpu_s=redis_left - redis_idle,
    )
    return row


def main_driver(args) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from tests.redis_server import redis_missing

    if reason := redis_missing():
        raise SystemExit(reason)
    rows = []
    for members in args.members:
        for bound in args.events:
            row = storm(members, bound, args)
            rows.append(row)
            print(line_of(row), file=sys.stderr, flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    report["recommendation"] = recommend(rows)
    (args.out_dir / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (args.out_dir / RECORD).write_text(json.dumps(report, indent=1) + "\n")
    (args.out_dir / PAGE).write_text(markdown(report) + "\n")
    print(report["recommendation"]["text"], file=sys.stderr)
    print(f"wrote {args.out_dir}/{RECORD}, {PAGE}", file=sys.stderr)


def line_of(row: dict) -> str:
    frames = f"{row['frames_s']:.2f} s" if row["frames_s"] is not None else "-"
    return (
        f"{row['members']:>6,} members, bound {row['bound']:>5}: welcomes {row['welcomed_s']:.2f} s, "
        f"frames {frames}, {row['join_frames']:,} join frames ({row['least_join_frames']:,} "
        f"owed, {row['missing_join_frames']} missing, {row['stale_join_frames']:,} stale), "
        f"servers {row['server_cpu_s']:.1f} s CPU, "
        f"Redis {row['redis_cpu_s']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB, "
        f"counts 1..N {'yes' if row['counts_exact'] else 'NO'} (last {row['last_count']:,}, "
        f"highest {row['max_count']:,}), in Redis {row['redis_names']:,}"
    )


# --- the recommendation and the page -----------------------------------------------------


def pairs(bound: int, members: int) -> int:
    """The join frames a storm of ``members`` owes under ``bound``: K(K-1)/2."""
    k = min(bound, members)
    return k * (k - 1) // 2


def fit(cells: list[dict], base: dict) -> tuple[float, float]:
    """Servers' CPU over the no-event storm as ``a`` x K + ``b`` x K(K-1)/2, K = min(N, bound):
    a per announced join (its PUBLISH, and the frames to members still joining, the stale
    ones), b per join frame owed. Two cells give both; one gives b alone."""
    points = [
        (min(r["bound"], r["members"]), max(0.0, r["server_cpu_s"] - base["server_cpu_s"]))
        for r in cells
    ]
    if len(points) >= 2:
        (k1, c1), (k2, c2) = points[-2], points[-1]
        p1, p2 = k1 * (k1 - 1) / 2, k2 * (k2 - 1) / 2
        det = k1 * p2 - k2 * p1
        if det:
            a, b = (c1 * p2 - c2 * p1) / det, (k1 * c2 - k2 * c1) / det
            if a >= 0 and b >= 0:
                return a, b
    k, cost = points[-1]
    return 0.0, cost / (k * (k - 1) / 2) if k > 1 else 0.0


def recommend(rows: list[dict]) -> dict:
    """The largest bound (of ``ROUND``) whose join frames, in the largest room measured, cost
    the servers at most ``EVENTS_SHARE`` of the same storm without them (``fit``), and whose
    frames arrive, 99 % of them, within ``EVENTS_LAG_S`` of their member's welcome: the lag
    measured at the largest bound, taken to grow with the frames owed past it."""
    members = max(r["members"] for r in rows)
    cells = {r["bound"]: r for r in rows if r["members"] == members}
    base = cells.get(0)
    measured = [r for b, r in sorted(cells.items()) if b > 1 and min(b, members) > 1]
    if base is None or not measured:
        return {"bound": None, "text": "no recommendation: needs a cell at 0 and one with frames"}
    a, b = fit(measured, base)
    top = measured[-1]
    lag = max(0.0, top["join_lag_p99_s"] or 0.0)
    budget = EVENTS_SHARE * base["server_cpu_s"]

    def cost(bound: int) -> float:
        return a * min(bound, members) + b * pairs(bound, members)

    def late(bound: int) -> float:
        return lag * max(1.0, pairs(bound, members) / pairs(top["bound"], members))

    fits = [bound for bound in ROUND if cost(bound) <= budget and late(bound) <= EVENTS_LAG_S]
    bound = max(fits, default=None)
    measured_text = "; ".join(
        f"bound {r['bound']:,}: {r['server_cpu_s']:.1f} s, join frames' p99 lag "
        f"{(r['join_lag_p99_s'] or 0) * 1e3:.0f} ms"
        for r in measured
    )
    at_bound = [r for r in rows if r["members"] == r["bound"] and r["members"] != members]
    zero = {r["members"]: r for r in rows if r["bound"] == 0}
    caveat = "".join(
        f" A room of exactly the bound is where the frames weigh most: {r['members']:,} members"
        f" under a bound of {r['bound']:,} cost {r['server_cpu_s']:.1f} s against"
        f" {zero[r['members']]['server_cpu_s']:.1f} s with none."
        for r in at_bound
        if r["members"] in zero
    )
    text = (
        f"ROOM_PRESENCE_EVENTS_MAX = {bound if bound is not None else 'below ' + str(ROUND[0])}. "
        f"The {members:,}-member storm cost the servers {base['server_cpu_s']:.1f} s of CPU "
        f"with no events ({measured_text}). Fitted: {a * 1e3:.2f} ms a join announced and "
        f"{b * 1e6:.1f} us a join frame owed (B(B-1)/2 under a bound B). The largest bound of "
        f"{', '.join(f'{r:,}' for r in ROUND)} whose frames add at most {EVENTS_SHARE:.0%} to "
        f"that storm's server CPU (<= {budget:.1f} s) and arrive, 99 % of them, within "
        f"{EVENTS_LAG_S:g} s of their member's welcome (half the issue's 1 s: headroom for a "
        f"busier host)." + caveat
    )
    return {
        "bound": bound,
        "members": members,
        "cpu_per_join_s": a,
        "cpu_per_frame_s": b,
        "budget_cpu_s": budget,
        "predicted_cpu_s": {str(r): cost(r) for r in ROUND},
        "predicted_p99_lag_s": {str(r): late(r) for r in ROUND},
        "text": text,
    }


def markdown(report: dict) -> str:
    lines = [
        "# Presence: a join storm",
        "",
        "Generated by `python -m bench.presence`; every figure is also in",
        f"[presence-storm.json]({RECORD}). N `rooms.v1` members join one room as fast as one",
        "client (picows on uvloop, 200 handshakes at a time) can open them, alternating between",
        "two `manage.py serve` processes on one Redis; fresh servers and Redis for each row.",
        "`bound` is `ROOM_PRESENCE_EVENTS_MAX` (0: no join or leave frames; 1,000: the default).",
        "Every join while the room is within the bound is announced to everyone already there:",
        "at least K(K-1)/2 join frames, K = min(N, bound), however large N grows past the bound.",
        "The welcome's snapshot (the `ARRIVE` script) runs at every join, whatever the bound.",
        "",
        "- welcomes: seconds from the first handshake until every member had its welcome;",
        "  frames: until the last join frame arrived (the client waits until its frame count",
        "  has not grown for 0.5 s).",
        "- lag p99: 99 % of the join frames came at most this long after their member's own",
        "  welcome came (a frame can come first: the welcome leaves after the PUBLISH).",
        "- join frames: received in all; owed: what the rule implies (a member whose welcome",
        "  said count c is owed the joins of the members whose counts are c+1 .. K); missing:",
        "  owed and not received (a full queue drops them), and the members short of one;",
        "  stale: joins about a member already in the receiver's count (its join ran in Redis",
        "  first, its frame reached the process after the receiver began to watch).",
        "- counts 1..N: the welcomes' `presence.count` are 1 .. N, each once: each is its",
        "  join's place in Redis' order. Out of order: welcomes that reached the client after",
        "  one with a higher count (two processes answer concurrently). In Redis: the room's",
        "  count (its `names`) once the storm is over, and after the idle window; N when every",
        "  member is counted.",
        "- CPU: user + system seconds over the storm (/proc), both server processes, and Redis.",
        "  Peak RSS: both processes' VmHWM after the storm (before it, in brackets).",
        "- idle: CPU a second (servers and Redis) with everyone still in the room (each process",
        "  renews its members' entries every third of `ROOM_PRESENCE_TIMEOUT`); emptied: every",
        "  member closes at once, seconds until Redis' presence is empty and the servers' CPU",
        "  over it (leave frames to those left while within the bound).",
        "",
        f"- Date: {report['date']}",
        f"- Recommendation: {report['recommendation']['text']}",
        "",
        "| members | bound | welcomes s | frames s | lag p99 ms | join frames | owed | missing (members) "
        "| stale | "
        "counts 1..N | out of order | in Redis | servers CPU s | Redis CPU s | client CPU s | "
        "peak RSS MiB | idle CPU/s | emptied s | emptied servers CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        frames = f"{r['frames_s']:.2f}" if r["frames_s"] is not None else "-"
        idle = f"{r['idle_cpu_per_s']:.3f}" if r["idle_cpu_per_s"] is not None else "-"
        lag = f"{r['join_lag_p99_s'] * 1e3:.0f}" if r["join_lag_p99_s"] is not None else "-"
        lines.append(
            f"| {r['members']:,} | {r['bound']:,} | {r['welcomed_s']:.2f} | {frames} | {lag} "
            f"| {r['join_frames']:,} | {r['least_join_frames']:,} "
            f"| {r['missing_join_frames']:,} ({r['short_members']}) | {r['stale_join_frames']:,} "
            f"| {'yes' if r['counts_exact'] else '**no**'} (last {r['last_count']:,}) "
            f"| {r['welcomes_after_higher']:,} "
            f"| {r['redis_names']:,} / {r['redis_names_idle']:,} | {r['server_cpu_s']:.2f} | {r['redis_cpu_s']:.2f} "
            f"| {r['client_cpu_s']:.2f} | {r['peak_rss_mib']:.0f} ({r['rss_before_mib']:.0f}) "
            f"| {idle} | {r['emptied_s']:.2f} | {r['leave_server_cpu_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="the storm's client (run by the driver)")
    client.add_argument("--urls", nargs="+", required=True)
    client.add_argument("--members", type=int, required=True)
    client.add_argument("--bound", type=int, required=True)
    client.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--members", nargs="+", type=int, default=[1000, 10_000])
    parser.add_argument(
        "--events", nargs="+", type=int, default=[0, 100, 1000], help="ROOM_PRESENCE_EVENTS_MAX"
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle room")
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument(
        "--presence-timeout", type=int, default=0, help="ROOM_PRESENCE_TIMEOUT (0: the default)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "docs"
    )
    args = parser.parse_args()
    if args.command == "client":
        import uvloop

        from bench.client import check_loopback

        for url in args.urls:
            check_loopback(url)
        uvloop.run(storm_client(args.urls, args.members, args.bound, args.deadline))
        return
    main_driver(args)


if __name__ == "__main__":
    main()
