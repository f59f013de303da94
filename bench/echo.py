"""The echo benchmark: the project's consumers against the ASGI ceiling and stock Channels.

    make bench                      # the full grid, about 45 minutes on 2 cores
    .venv/bin/python -m bench.echo --quick --out-dir /tmp/bench   # the CI smoke, seconds

For each server (uvicorn, daphne, hypercorn, granian) three server processes run side by side: the raw ASGI echo
(the ceiling), stock Channels consumers as the Channels docs write them, and this project.
Every cell of the grid (connections x message size) runs each target once, in alternating
order, with the client (``bench/client.py``, picows) in its own process. Then idle memory per
connection and the connect rate at ``--idle-connections`` open connections.

Writes ``benchmarks.md`` (tables, targets, machine, versions, command) and ``benchmarks.png``
(plot) to ``--out-dir`` (default ``docs/``), and the run record ``runs/benchmarks.json`` (every
figure) under it.
Loopback only; every client run is bounded by ``--deadline``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django

django.setup()

from tests.servers import ROOT, SERVERS, LiveServer  # noqa: E402

APPS = {
    "ceiling": "bench.apps:ceiling",
    "starlette": "bench.apps:starlette",
    "stock": "bench.apps:stock",
    "project": "project.asgi:application",
}

#: How each application is served. Everything but the project runs under the server's plain
#: command with its defaults, as a user would type it (on uvicorn: ``uvicorn APP``, httptools
#: and websockets); the project runs as it ships, under ``manage.py serve`` on uvicorn. An
#: earlier ceiling ran on the project's own uvicorn subclass, which is slower than plain uvicorn,
#: and flattered every ratio to it.
PLAIN = {"uvicorn": "uvicorn-plain"}


def server_kind(server: str, app: str) -> str:
    return server if app == "project" else PLAIN.get(server, server)


@dataclass(frozen=True)
class Target:
    name: str  # e.g. "project-async"
    app: str  # key of APPS
    path: str  # the echo route on that app


TARGETS = [
    Target("ceiling", "ceiling", "/ws/echo/async/"),
    Target("starlette", "starlette", "/ws/echo/async/"),
    Target("stock-async", "stock", "/ws/echo/async/"),
    Target("project-async", "project", "/ws/echo/async/"),
    Target("stock-sync", "stock", "/ws/echo/sync/"),
    Target("project-sync", "project", "/ws/echo/sync/"),
]

#: Messages per cell, by size: enough for a stable rate, few enough to bound the run. At many
#: connections each gets at least PER_CONNECTION, so that the opening burst does not dominate.
MESSAGES = {16: 60_000, 4096: 60_000, 65536: 10_000}
PER_CONNECTION = 60
#: The run record, under ``--out-dir`` (docs/ by default): docs/runs/, beside the other runs.
RECORD = "runs/benchmarks.json"

#: The cells of the peer goal (project-async against Starlette's echo, on these servers and
#: sizes) run ``--rounds`` times, alternating, and report their median run: one run of a cell
#: here moves by up to 30 % with the neighbours' load, more than the 5 % the goal allows.
PEER_SERVERS = ("uvicorn", "granian")
PEER_SIZES = (16, 4096)
PEER_TARGETS = ("starlette", "project-async")


def run_client(*args: str, timeout: float) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "bench.client", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"client failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of ``pid`` and its descendants: hypercorn (and granian) serve from a
    child process, so the parent's alone measured nothing (0.0 KiB a connection). ``field``:
    ``VmHWM`` for the peak since each process started."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            total += int(line.split()[1])
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += rss_kib(int(child), field)
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time so far of process ``pid`` and the processes under it (granian
    serves from a worker process; /proc/PID/stat, fields 14 and 15)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            stats[int(entry.name)] = fields
    tree, seconds = {pid}, 0.0
    while True:  # parents before children is not guaranteed: grow the tree to a fixed point
        grown = tree | {child for child, fields in stats.items() if int(fields[1]) in tree}
        if grown == tree:
            break
        tree = grown
    for member in tree:
        fields = stats[member]
        seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def idle_memory(
    server: LiveServer,
    path: str,
    connections: int,
    deadline: float,
    client_args: tuple[str, ...] = (),
) -> dict:
    """Server RSS growth per open idle connection, and the rate connections opened at.
    ``client_args`` go to both the warm-up and the idle client (``--deflate``, ``--echo``)."""
    url = f"{server.ws_url}{path}"
    # Warm up first, so that what is imported and cached on first use is not counted.
    warm_up = [arg for arg in client_args if arg == "--deflate"]
    run_client("pingpong", "--url", url, "--connections", "100", "--messages", "100",
               "--deadline", str(deadline), *warm_up, timeout=deadline + 30)  # fmt: skip
    before = rss_kib(server.process.pid)
    client = subprocess.Popen(
        [sys.executable, "-m", "bench.client", "idle", "--url", url,
         "--connections", str(connections), *client_args],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        opened = json.loads(client.stdout.readline())
        after = rss_kib(server.process.pid)
    finally:
        client.stdin.close()
        client.wait(deadline)
    return {
        "connections": opened["open"],
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (after - before) / max(1, opened["open"]),
        "connects_per_s": opened["connects_per_s"],
    }


def machine() -> dict:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = (
        int(Path("/proc/meminfo").read_text().split()[1]) if Path("/proc/meminfo").exists() else 0
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict:
    return {
        name: version(name)
        for name in (
            "Django",
            "channels",
            "uvicorn",
            "daphne",
            "hypercorn",
            "granian",
            "websockets",
            "picows",
            "uvloop",
        )
    }


def ratio(
    cells: list[dict],
    server: str,
    target: str,
    connections: int,
    size: int,
    key: str = "msgs_per_s",
    baseline: str = "ceiling",
):
    def find(name):
        for cell in cells:
            if (cell["server"], cell["target"], cell["connections"], cell["size"]) == (
                server,
                name,
                connections,
                size,
            ):
                return cell
        return None

    mine, ceiling = find(target), find(baseline)
    if not mine or not ceiling or not ceiling.get(key) or mine.get(key) is None:
        return None
    return mine[key] / ceiling[key]


def targets_report(cells: list[dict], idle: list[dict]) -> list[dict]:
    """The goals, as ratios to the peer or the ceiling measured in the same run (every cell)."""
    rows = []
    for server in ("uvicorn", "granian"):
        for connections in (1, 100, 1000):
            for size in (16, 4096):
                value = ratio(
                    cells, server, "project-async", connections, size, baseline="starlette"
                )
                if value is None:
                    continue
                rows.append({"target": f"{server}: project-async msg/s / Starlette's, {connections:,} connections, {size:,} B",
                             "goal": ">= 0.95", "value": value, "met": value >= 0.95})  # fmt: skip
    for server in SERVERS:
        value = ratio(cells, server, "project-sync", 100, 16)
        if value is not None:
            rows.append({"target": f"{server}: project-sync msg/s / ceiling, 100 connections, 16 B", "goal": ">= 0.40",
                         "value": value, "met": value >= 0.40})  # fmt: skip
    for target in ("project-async", "project-sync"):
        value = ratio(cells, "uvicorn", target, 1000, 16, key="p99_ms")
        rows.append({"target": f"{target} p99 at 1,000 connections, 16 B, / ceiling's p99", "goal": "<= 2",
                     "value": value, "met": value is not None and value <= 2})  # fmt: skip
    for row in idle:
        if row["server"] == "uvicorn" and row["target"] == "project-async":
            value = row["kib_per_connection"]
            rows.append({"target": f"project-async idle memory per connection at {row['connections']:,} connections",
                         "goal": "<= 20 KiB", "value": value, "met": value <= 20})  # fmt: skip
    return rows


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench.echo`); every figure is also in",
        f"[benchmarks.json]({RECORD}). Why the project's consumers are faster, and where a",
        "target is missed: [performance.md](performance.md).",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['memory_gib']} GiB, Linux {meta['machine']['kernel']}, Python {meta['machine']['python']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- Command: `{meta['command']}`",
        "- Client: picows on uvloop, in its own process, ping-pong (each connection sends, waits "
        "for the echo, sends again), text messages; server and client share the machine's cores.",
        "- Targets: `ceiling` is a raw ASGI echo (no Django, no Channels) and `starlette` a Starlette"
        " WebSocket echo, both under the server's plain command with its defaults (on uvicorn,"
        " `uvicorn APP`: httptools, websockets); `stock-*` are Channels'"
        " `AsyncConsumer`/`SyncConsumer` as its docs write them; `project-*` are `app/consumers.py`"
        " behind the project's whole stack (`project/asgi.py`), served as it ships (on uvicorn,"
        " `manage.py serve`; stock Channels runs under the plain command, as its docs deploy it).",
        f"- Rounds: each cell runs every target once; the peer goal's cells (`starlette` and"
        f" `project-async` on {' and '.join(PEER_SERVERS)}, {' B and '.join(map(str, PEER_SIZES))} B)"
        f" run {meta.get('rounds', 1)} times, alternating, and show their median run (every run"
        " in the JSON, `runs_msgs_per_s`): one run moves by up to 30 % on this shared machine.",
        "",
        "## Goals (every cell named, same run)",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for row in report["targets"]:
        lines.append(
            f"| {row['target']} | {row['goal']} | {fmt(row['value'])} | {'yes' if row['met'] else '**no**'} |"
        )
    lines += ["", "![messages per second by server, size and connections](benchmarks.png)", ""]
    for server in meta["servers"]:
        lines += [f"## {server}", "", "| connections | size | target | msg/s | / ceiling | / Starlette | p50 ms | p99 ms | max ms |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for cell in report["cells"]:
            if cell["server"] != server:
                continue
            r = ratio(report["cells"], server, cell["target"], cell["connections"], cell["size"])
            peer = ratio(report["cells"], server, cell["target"], cell["connections"], cell["size"],
                         baseline="starlette")  # fmt: skip
            flag = " (timed out)" if cell.get("timed_out") else ""
            lines.append(
                f"| {cell['connections']:,} | {cell['size']:,} B | {cell['target']} | {fmt(cell['msgs_per_s'], 0)}{flag} "
                f"| {fmt(r)} | {fmt(peer)} | {fmt(cell['p50_ms'])} | {fmt(cell['p99_ms'])} | {fmt(cell['max_ms'])} |"
            )
        lines.append("")
    if report["idle"]:
        lines += [
            "## Idle connections",
            "",
            "| server | target | open | KiB per connection | connects/s |",
            "|---|---|---|---|---|",
        ]
        for row in report["idle"]:
            lines.append(
                f"| {row['server']} | {row['target']} | {row['connections']:,} | {fmt(row['kib_per_connection'], 1)} | {fmt(row['connects_per_s'], 0)} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers, sizes = report["meta"]["servers"], report["meta"]["sizes"]
    connections = report["meta"]["connections"]
    names = [t.name for t in TARGETS]
    fig, axes = plt.subplots(
        len(servers), len(sizes), figsize=(4.2 * len(sizes), 3.4 * len(servers)), squeeze=False
    )
    width = 0.8 / len(names)
    for row, server in enumerate(servers):
        for col, size in enumerate(sizes):
            ax = axes[row][col]
            for i, name in enumerate(names):
                values = []
                for c in connections:
                    cell = next(
                        (
                            x
                            for x in report["cells"]
                            if (x["server"], x["target"], x["connections"], x["size"])
                            == (server, name, c, size)
                        ),
                        None,
                    )
                    values.append(cell["msgs_per_s"] if cell else 0)
                ax.bar([j + i * width for j in range(len(connections))], values, width, label=name)
            ax.set_xticks(
                [j + 0.4 - width / 2 for j in range(len(connections))],
                [f"{c:,}" for c in connections],
            )
            ax.set_title(f"{server}, {size:,} B")
            ax.set_xlabel("connections")
            ax.set_ylabel("messages/s")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke: uvicorn, 10 connections, 16 B, two targets"
    )
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--connections", nargs="+", type=int, default=[1, 100, 1000])
    parser.add_argument("--sizes", nargs="+", type=int, default=[16, 4096, 65536])
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each peer-goal cell (median reported)"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    targets = TARGETS
    messages = dict(MESSAGES)
    if args.quick:
        args.servers, args.connections, args.sizes, args.idle_connections = (
            ["uvicorn"],
            [10],
            [16],
            0,
        )
        targets = [t for t in TARGETS if t.name in ("stock-async", "project-async")]
        messages = {16: 3_000}

    def schedule(server: str, size: int, order: list[Target]) -> list[Target]:
        """Every target once, then the peer goal's targets again, alternating, for ``--rounds``."""
        peers = [t for t in order if t.name in PEER_TARGETS]
        if server not in PEER_SERVERS or size not in PEER_SIZES or len(peers) < 2:
            return order
        return order + [t for r in range(1, args.rounds) for t in (peers[::-1] if r % 2 else peers)]

    cells: list[dict] = []
    idle: list[dict] = []
    total = sum(
        len(schedule(server, size, targets))
        for server in args.servers
        for _ in args.connections
        for size in args.sizes
    )
    done = 0
    # One loopback client stands for 10,000 clients: the per-address cap (2,000) would refuse it.
    env = {"LOG_LEVEL": "WARNING", "WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT": "0"}
    for server in args.servers:
        needed = {t.app for t in targets}
        servers = {
            name: LiveServer(server_kind(server, name), env=env, app=APPS[name]) for name in needed
        }
        try:
            for live in servers.values():
                live.wait_ready()
            for cell_index, (connections, size) in enumerate(
                (c, s) for c in args.connections for s in args.sizes
            ):
                order = (
                    targets if cell_index % 2 == 0 else targets[::-1]
                )  # alternate, so drift evens out
                runs: dict[str, list[dict]] = {}
                for target in schedule(server, size, order):
                    done += 1
                    url = f"{servers[target.app].ws_url}{target.path}"
                    result = run_client("pingpong", "--url", url, "--connections", str(connections), "--size", str(size),
                                        "--messages", str(max(messages[size], PER_CONNECTION * connections)), "--deadline", str(args.deadline),
                                        timeout=args.deadline + 60)  # fmt: skip
                    runs.setdefault(target.name, []).append(result)
                    print(f"[{done}/{total}] {server:9} {target.name:13} {connections:>5} conns {size:>6} B: "
                          f"{result['msgs_per_s']:>9,.0f} msg/s  p99 {fmt(result['p99_ms'])} ms"
                          f"{'  TIMED OUT' if result['timed_out'] else ''}", file=sys.stderr, flush=True)  # fmt: skip
                for target in order:
                    results = sorted(runs[target.name], key=lambda r: r["msgs_per_s"])
                    cell = {**results[len(results) // 2], "server": server, "target": target.name}
                    if len(results) > 1:  # the median run, and every run's rate
                        cell["runs_msgs_per_s"] = [r["msgs_per_s"] for r in runs[target.name]]
                    cells.append(cell)
        finally:
            for live in servers.values():
                live.stop()
        if args.idle_connections:
            # Each on a fresh process: memory freed by an earlier run would hide the next one's.
            for target in [
                t
                for t in targets
                if t.name
                in ("ceiling", "starlette", "stock-async", "project-async", "project-sync")
            ]:
                print(
                    f"idle: {server} {target.name} {args.idle_connections:,} connections ...",
                    file=sys.stderr,
                    flush=True,
                )
                with LiveServer(
                    server_kind(server, target.app), env=env, app=APPS[target.app]
                ) as live:
                    row = idle_memory(live, target.path, args.idle_connections, args.deadline * 3)
                row.update(server=server, target=target.name)
                idle.append(row)
                print(
                    f"  {row['kib_per_connection']:.1f} KiB/connection, {row['connects_per_s']:,.0f} connects/s",
                    file=sys.stderr,
                    flush=True,
                )
    # A run with other arguments (a targeted re-run of some cells) says so in its report.
    command = " ".join(["python -m bench.echo", *sys.argv[1:]]) if sys.argv[1:] else "make bench"
    report = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
            "versions": versions(),
            "command": command,
            "servers": args.servers,
            "connections": args.connections,
            "sizes": args.sizes,
            "messages": messages,
            "rounds": args.rounds,
        },
        "cells": cells,
        "idle": idle,
        "targets": targets_report(cells, idle),
    }
    (args.out_dir / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (args.out_dir / RECORD).write_text(json.dumps(report, indent=1) + "\n")
    (args.out_dir / "benchmarks.md").write_text(markdown(report) + "\n")
    plot(report, args.out_dir / "benchmarks.png")
    print(f"wrote {args.out_dir}/{RECORD}, benchmarks.md, benchmarks.png", file=sys.stderr)


if __name__ == "__main__":
    main()
