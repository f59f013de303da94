"""A/B: the project's echo at a git ref against the working tree, in one run, alternating.

    .venv/bin/python -m bench.ab --before HEAD~1 [--server uvicorn] [--connections 100] [--rounds 6]

Checks the ref out into a temporary worktree, serves both trees side by side (uvicorn through
``manage.py serve`` as the project ships, or another server's plain command, tests/servers.py),
and runs the same ping-pong on each echo route in alternating order, so that a change can be
shown to be within noise (used for tracing: untraced echo must pay nothing). Prints JSON; a run
that a page cites is kept as ``docs/runs/<what>-vs-<ref>-<date>.json``.

Two figures per run: throughput (msg/s), and the server process's CPU time per message (user
plus system, from /proc). On a shared machine throughput moves with the neighbours' load (one
run here spread 12,600-25,400 msg/s on one commit); the CPU a message costs the server moves far
less, so it is the figure for a per-message cost of a few percent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django

django.setup()

from bench.echo import cpu_seconds, run_client  # noqa: E402
from tests.servers import ROOT, SERVERS, LiveServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref to compare the working tree with")
    parser.add_argument("--server", choices=SERVERS, default="uvicorn")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--size", type=int, default=16, help="message size in bytes")
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        before_tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), args.before], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            env = {"LOG_LEVEL": "WARNING"}
            servers = {
                # Each server imports the project from its own tree (its working directory).
                "before": LiveServer(args.server, env=env, cwd=before_tree),
                "after": LiveServer(args.server, env=env),
            }
            results: dict[str, dict[str, list[float]]] = {
                name: {"sync": [], "async": []} for name in servers
            }
            cpu_results: dict[str, dict[str, list[float]]] = {
                name: {"sync": [], "async": []} for name in servers
            }
            try:
                for server in servers.values():
                    server.wait_ready()
                for round_ in range(args.rounds):
                    order = list(servers) if round_ % 2 == 0 else list(servers)[::-1]
                    for name in order:
                        for kind in ("async", "sync"):
                            url = f"{servers[name].ws_url}/ws/echo/{kind}/"
                            cpu = cpu_seconds(servers[name].process.pid)
                            figures = run_client("pingpong", "--url", url, "--connections", str(args.connections),
                                                 "--messages", str(args.messages), "--size", str(args.size),
                                                 timeout=300)  # fmt: skip
                            cpu_us = (
                                (cpu_seconds(servers[name].process.pid) - cpu)
                                / figures["messages"]
                                * 1e6
                            )
                            results[name][kind].append(figures["msgs_per_s"])
                            cpu_results[name][kind].append(cpu_us)
                            print(f"round {round_ + 1} {name:6} {kind:5}: {figures['msgs_per_s']:,.0f} msg/s, "
                                  f"{cpu_us:.1f} us CPU/msg", file=sys.stderr, flush=True)  # fmt: skip
            finally:
                for server in servers.values():
                    server.stop()
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before_tree)],
                cwd=ROOT,
                capture_output=True,
            )
    summary = {}
    for kind in ("async", "sync"):
        before, after = results["before"][kind], results["after"][kind]
        summary[kind] = {
            "before_median": statistics.median(before),
            "after_median": statistics.median(after),
            "ratio": statistics.median(after) / statistics.median(before),
            "before_spread": (min(before), max(before)),
            "after_spread": (min(after), max(after)),
        }
        cpu_before, cpu_after = cpu_results["before"][kind], cpu_results["after"][kind]
        summary[kind]["cpu_us_per_message"] = {
            "before_median": statistics.median(cpu_before),
            "after_median": statistics.median(cpu_after),
            "ratio": statistics.median(cpu_after) / statistics.median(cpu_before),
        }
    print(json.dumps({"before": args.before, "server": args.server, "connections": args.connections,
                      "size": args.size, "rounds": args.rounds,
                      "results": results, "cpu_us_per_message": cpu_results, "summary": summary},
                     indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
