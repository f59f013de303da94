"""The benchmark harness cannot rot: a few-second run of it, asserting shape and one ordering."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.server


def test_quick_benchmark_runs_and_the_project_beats_stock_channels(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.echo", "--quick", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "[2/2] uvicorn" in result.stderr  # the progress line
    report = json.loads((tmp_path / "runs" / "benchmarks.json").read_text())
    cells = {cell["target"]: cell for cell in report["cells"]}
    assert set(cells) == {"stock-async", "project-async"}
    for cell in cells.values():
        assert cell["messages"] == 3_000 and not cell["timed_out"] and not cell["errors"]
        assert cell["mismatches"] == 0
        assert 0 < cell["p50_ms"] <= cell["p99_ms"] <= cell["max_ms"]
    # Same run, same machine, alternating order: a ratio, never an absolute time.
    assert cells["project-async"]["msgs_per_s"] > cells["stock-async"]["msgs_per_s"]
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000
    page = (tmp_path / "benchmarks.md").read_text()
    assert "| 10 | 16 B | project-async |" in page
    assert "](runs/benchmarks.json)" in page  # the page links its record where it is


def test_ab_counts_the_cpu_of_the_servers_worker_processes():
    """granian serves from a worker process: bench.ab's CPU per message must include it."""
    from bench.echo import cpu_seconds

    burn = "import sys, time\nwhile time.process_time() < 0.3: pass\nprint('done', flush=True)\nsys.stdin.read()"
    before = cpu_seconds(os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "done\n"  # it has spent its 0.3 s and still runs
        assert cpu_seconds(os.getpid()) - before >= 0.28  # ours and the child's
    finally:
        child.communicate("")


def test_quick_fanout_runs_against_the_raw_asgi_room_ceiling_and_a_peer(tmp_path):
    """The room bench: the hand-written raw ASGI room first, then the project with plain and
    rooms.v1 members, then python-socketio (Engine.IO over the same client), each row with its
    ratio to the ceiling of the same shape, nothing lost, idle memory per member measured."""
    layers = ["ceiling", "memory", "memory-v1", "socketio"]
    result = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--layers", *layers, "--members", "20",
         "--senders", "1", "--big-room", "0", "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "runs" / "fanout.json").read_text())["rows"]
    assert [row["layer"] for row in rows] == layers
    assert [row["protocol"] for row in rows] == ["plain", "plain", "rooms.v1", "socketio"]
    assert rows[0]["ratio_to_ceiling"] == 1.0
    for row in rows:
        assert row["lost"] == 0 and row["duplicates"] == 0 and not row["timed_out"]
        assert row["out_of_order"] == 0  # rooms.v1: every offset the one after the last
        assert row["delivered"] == 20 * 300
        assert row["idle_kib_per_member"] > 0
    for row in rows[1:]:
        assert 0 < row["ratio_to_ceiling"] < 5
    assert rows[1]["engine"]["engine"] == "memory"  # what /healthz says the project ran on
    page = (tmp_path / "fanout.md").read_text()
    assert "| memory | 1 | 20 | 1 |" in page and "| socketio | 1 | 20 | 1 |" in page
    assert (
        "- rooms.v1 vs plain in one process (`memory-v1` / `memory`), members x senders: 20 x 1:"
        in page
    )
    assert "](runs/fanout.json)" in page


def test_fanout_page_states_each_goal_with_its_figure():
    """The page's summary from a made-up run: the history and rooms.v1 ratios, and each goal
    with its figure and verdict, at the largest room below the big room."""
    from bench.fanout import markdown

    def row(layer, members, senders, rate, p99, ratio=None, p99_ratio=None, **extra):
        return {"layer": layer, "processes": 2, "members": members, "senders": senders,
                "delivered": 1, "deliveries_per_s": rate, "ratio_to_ceiling": ratio,
                "p99_to_ceiling": p99_ratio, "ratio_to_echo": 1.0, "p50_ms": 1.0, "p99_ms": p99,
                "lost": 0, "duplicates": 0, "out_of_order": 0, "timed_out": False,
                "idle_kib_per_member": 10.0, **extra}  # fmt: skip

    rows = [
        row("ceiling", 1000, 10, 100_000, 100.0, 1.0, 1.0),
        row("ceiling", 1000, 1, 100_000, 20.0, 1.0, 1.0),
        row("redis", 1000, 10, 70_000, 150.0, 0.7, 1.5),
        row("redis", 1000, 1, 40_000, 30.0, 0.4, 1.5),
        row("redis-no-history", 1000, 10, 70_000, 150.0),
        row("redis-no-history", 1000, 1, 50_000, 30.0),
        row("redis-v1", 1000, 10, 66_500, 150.0),
        row("redis-v1-no-presence-events", 1000, 10, 68_000, 150.0),
        row("socketio-redis", 1000, 10, 50_000, 200.0),
        row("socketio-redis", 1000, 1, 45_000, 25.0),
        row("redis", 10_000, 1, 40_000, 300.0, idle_kib_per_member=18.0),
    ]
    page = markdown(
        {"date": "now", "echo_ceiling_msgs_per_s": 1.0, "big_room": 10_000, "rows": rows}
    )
    assert (
        "history on vs off (`redis` / `redis-no-history`), members x senders: 1,000 x 1: 0.80, 1,000 x 10: 1.00"
        in page
    )
    assert "on Redis (`redis-v1` / `redis`), members x senders: 1,000 x 10: 0.95" in page
    assert "at 1,000 members, two processes" in page
    assert "p99 <= 2x: 0.70x, p99 1.50x: met" in page
    assert ">= 0.5x the ceiling's deliveries/s: 0.40x: **not met**" in page
    assert (
        "history on costs <= 10 % of deliveries/s: 1 sender(s) 0.80, 10 sender(s) 1.00: **not met**"
        in page
    )
    assert "1 of 2 rows: **not met** (behind: `redis` vs `socketio-redis` at 1,000 x 1)" in page
    assert "0 lost, 18.0 KiB a member: met" in page
    assert (
        "presence on vs off (`redis-v1` / `redis-v1-no-presence-events`), members x senders:"
        " 1,000 x 10: 0.98" in page
    )
    assert "costs <= 5 % of deliveries/s (issue 31): 10 sender(s) 0.98: met" in page


def test_quick_deflate_bench_measures_memory_and_cost(tmp_path):
    """bench.deflate: every memory row, and both payload sizes echoed compressed; the page's
    hand-written part is kept, what the last run wrote is replaced."""
    from bench.deflate import HAND_WRITTEN

    (tmp_path / "deflate.md").write_text(f"stale table\n\n{HAND_WRITTEN}\n\nkept by hand\n")
    result = subprocess.run(
        [sys.executable, "-m", "bench.deflate", "--connections", "50", "--rounds", "1",
         "--messages", "1000", "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "runs" / "deflate.json").read_text())
    assert len(report["memory"]) == 4
    for size in ("16 B", "4096 B"):
        (run,) = report["cost"]["rounds"][size]["deflate"]
        assert run["compressed_echoes"] == 1000  # every echo came back with RSV1 set
    page = (tmp_path / "deflate.md").read_text()
    assert "| 16 B |" in page and "stale table" not in page
    assert page.endswith(f"{HAND_WRITTEN}\n\nkept by hand\n")


@pytest.mark.redis
def test_quick_presence_storm_counts_every_join_and_frame(tmp_path):
    """bench.presence on two processes and one Redis: 30 members, no events and a bound of 10.
    Every welcome's count is its place in Redis' order (1 .. 30, each once); under the bound
    every member gets the join of each member after it up to the bound, and none without it;
    the CPU, memory and the room emptying are measured; the page and a recommendation."""
    from tests.redis_server import redis_missing

    if reason := redis_missing():
        pytest.skip(reason)
    result = subprocess.run(
        [sys.executable, "-m", "bench.presence", "--members", "30", "--events", "0", "10",
         "--idle", "0.5", "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "runs" / "presence-storm.json").read_text())
    off, on = report["rows"]
    assert (off["bound"], on["bound"]) == (0, 10)
    for row in (off, on):
        assert row["members"] == 30 and row["processes"] == 2
        assert row["counts_exact"] and row["max_count"] == 30 and not row["closes"]
        assert row["redis_names"] == row["redis_names_idle"] == 30
        assert row["missing_join_frames"] == 0 and row["duplicate_join_frames"] == 0
        assert row["server_cpu_s"] > 0 and row["peak_rss_mib"] >= row["rss_before_mib"] > 0
        assert 0 < row["welcomed_s"] < 60 and row["emptied_s"] < 60
    assert off["join_frames"] == off["least_join_frames"] == 0 and off["frames_s"] is None
    assert on["least_join_frames"] == 10 * 9 // 2  # the joins after each of the first ten
    assert on["join_frames"] == on["least_join_frames"] + on["stale_join_frames"]
    page = (tmp_path / "presence-storm.md").read_text()
    assert "| 30 | 0 |" in page and "| 30 | 10 |" in page
    assert "](runs/presence-storm.json)" in page
    assert "ROOM_PRESENCE_EVENTS_MAX = " in result.stderr


def test_presence_recommendation_is_the_largest_bound_within_the_budget():
    """From made-up storms: the join frames' cost fitted per join and per frame owed, and the
    largest round bound whose frames at most double the no-event storm's server CPU and arrive
    within 1 s."""
    from bench.presence import recommend

    def row(bound, cpu, lag=None):
        return {"members": 10_000, "bound": bound, "server_cpu_s": cpu, "join_lag_p99_s": lag}

    # 20 s with no events; 1 ms a join announced, 20 us a frame owed.
    rows = [
        row(0, 20.0),
        row(100, 20.0 + 0.1 + 99 * 50 * 20e-6, 0.01),
        row(1000, 20.0 + 1.0 + 999 * 500 * 20e-6, 0.2),
    ]
    advice = recommend(rows)
    assert abs(advice["cpu_per_join_s"] - 1e-3) < 1e-9
    assert abs(advice["cpu_per_frame_s"] - 20e-6) < 1e-12
    # 1,000: 11 s; 1,500: 1.5 + 22.5 = 24 s > 20 s.
    assert advice["bound"] == 1000
    assert "ROOM_PRESENCE_EVENTS_MAX = 1000" in advice["text"]
    # Frames that came 0.3 s late at 1,000 would come 0.68 s late at 1,500: past the 0.5 s
    # allowed, whatever the CPU.
    rows[2]["join_lag_p99_s"], rows[2]["server_cpu_s"] = 0.3, 20.0 + 0.5 + 999 * 500 * 5e-6
    assert recommend(rows)["bound"] == 1000
    rows[2]["join_lag_p99_s"] = 0.6  # late at the bound measured: below it, nothing is known
    assert recommend(rows)["bound"] is None
