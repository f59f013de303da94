"""What permessage-deflate costs ``manage.py serve``, in one run; writes docs/deflate.md, docs/runs/deflate.json.

    .venv/bin/python -m bench.deflate [--connections 10000] [--rounds 4] [--out-dir docs]

- **Memory**: server RSS per idle connection at ``--connections``, each having echoed one 1 KiB
  JSON message, without deflate and with Chromium's offer; a fresh server for each. As a
  reference, plain uvicorn (its deflate: websockets' with context takeover) the same way.
- **Cost**: the ping-pong echo (100 connections, JSON payloads of 16 B and 4 KiB), the client
  offering deflate as Chromium does and sending compressed as Chromium does, against the same
  client without the offer, on one server, in alternating rounds: throughput, and the server's
  CPU per message (the figure that moves least with the machine's other load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django

django.setup()

from bench.echo import cpu_seconds, idle_memory, machine, run_client, versions  # noqa: E402
from tests.servers import ROOT, LiveServer  # noqa: E402

DOCS = ROOT / "docs"
#: The run record, under ``--out-dir`` (docs/ by default): docs/runs/, beside the other runs.
RECORD = "runs/deflate.json"
ECHO = ("--echo", "1024")
#: 10,000 connections come from one address: the per-address cap (2,000) is lifted.
ENV = {"LOG_LEVEL": "WARNING", "WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT": "0"}


def memory(connections: int) -> dict:
    rows = {}
    for name, kind, args in (
        ("serve, no deflate", "uvicorn", ECHO),
        ("serve, deflate (Chromium's offer)", "uvicorn", ("--deflate", *ECHO)),
        ("plain uvicorn, no deflate", "uvicorn-plain", ECHO),
        ("plain uvicorn, deflate (Chromium's offer)", "uvicorn-plain", ("--deflate", *ECHO)),
    ):
        with LiveServer(kind, env=ENV) as server:
            rows[name] = idle_memory(server, "/ws/echo/async/", connections, 300, args)
        print(name, round(rows[name]["kib_per_connection"], 2), "KiB", flush=True)
    return rows


def cost(rounds: int, messages: int) -> dict:
    results: dict[str, dict[str, list]] = {}
    with LiveServer("uvicorn", env=ENV) as server:
        url = f"{server.ws_url}/ws/echo/async/"
        for _ in range(rounds):
            for size in (16, 4096):
                for deflate in (False, True):
                    before = cpu_seconds(server.process.pid)
                    out = run_client(
                        "pingpong", "--url", url, "--connections", "100", "--json",
                        "--size", str(size), "--messages", str(messages),
                        *(["--deflate"] if deflate else []), timeout=300,
                    )  # fmt: skip
                    spent = cpu_seconds(server.process.pid) - before
                    assert out["mismatches"] == 0 and not out["errors"], out
                    row = results.setdefault(f"{size} B", {"plain": [], "deflate": []})
                    row["deflate" if deflate else "plain"].append(
                        {
                            "msgs_per_s": out["msgs_per_s"],
                            "cpu_us_per_msg": spent / out["messages"] * 1e6,
                            "compressed_echoes": out["compressed_echoes"],
                        }
                    )
    summary = {}
    for size, row in results.items():
        rate = {k: statistics.median(r["msgs_per_s"] for r in v) for k, v in row.items()}
        cpu = {k: statistics.median(r["cpu_us_per_msg"] for r in v) for k, v in row.items()}
        summary[size] = {
            "msgs_per_s": rate,
            "cpu_us_per_msg": cpu,
            "rate_ratio": rate["deflate"] / rate["plain"],
            "cpu_ratio": cpu["plain"] / cpu["deflate"],
        }
        print(size, json.dumps(summary[size]), flush=True)
    return {"rounds": results, "summary": summary}


#: Where the page's hand-written part begins: a run rewrites what is above it and keeps the rest.
HAND_WRITTEN = "## A bound on what a connection inflates"


def write(result: dict, out_dir: Path = DOCS) -> None:
    (out_dir / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / RECORD).write_text(json.dumps(result, indent=1))
    memory_rows = result["memory"]
    base = {
        "serve": memory_rows["serve, no deflate"]["kib_per_connection"],
        "plain uvicorn": memory_rows["plain uvicorn, no deflate"]["kib_per_connection"],
    }
    lines = [
        "# permessage-deflate: what it costs",
        "",
        "Written by `python -m bench.deflate` (bench/deflate.py) on this machine "
        f"({result['machine']['cpu']}, {result['machine']['cores']} cores).",
        "",
        f"## Memory: {result['connections']:,} idle connections, each after one 1 KiB JSON echo",
        "",
        "| server | KiB per connection | more than without deflate |",
        "|---|---|---|",
    ]
    for name, row in memory_rows.items():
        server = "serve" if name.startswith("serve") else "plain uvicorn"
        extra = row["kib_per_connection"] - base[server]
        shown = "-" if "no deflate" in name else f"{extra:+.1f} KiB"
        lines.append(f"| {name} | {row['kib_per_connection']:.1f} | {shown} |")
    lines += [
        "",
        "## Cost: echo, 100 connections, JSON payloads; the client sends compressed as Chromium",
        "",
        "| payload | msg/s without / with | ratio | server CPU per message without / with | ratio |",
        "|---|---|---|---|---|",
    ]
    for size, row in result["cost"]["summary"].items():
        rate, cpu = row["msgs_per_s"], row["cpu_us_per_msg"]
        lines.append(
            f"| {size} | {rate['plain']:,.0f} / {rate['deflate']:,.0f} | {row['rate_ratio']:.2f}x"
            f" | {cpu['plain']:.1f} / {cpu['deflate']:.1f} us | {row['cpu_ratio']:.2f}x |"
        )
    page = out_dir / "deflate.md"
    kept = page.read_text().partition(HAND_WRITTEN)[1:] if page.exists() else ("", "")
    page.write_text("\n".join(lines) + "\n" + ("\n" + "".join(kept) if kept[0] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--out-dir", type=Path, default=DOCS)
    args = parser.parse_args()
    result = {
        "machine": machine(),
        "versions": versions(),
        "connections": args.connections,
        "memory": memory(args.connections),
        "cost": cost(args.rounds, args.messages),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write(result, args.out_dir)


if __name__ == "__main__":
    main()
