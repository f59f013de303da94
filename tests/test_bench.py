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


def test_quick_fanout_runs_against_the_raw_asgi_room_ceiling(tmp_path):
    """The room bench: the hand-written raw ASGI room first, then the project, each row with its
    ratio to the ceiling of the same shape, nothing lost, idle memory per member measured."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--layers", "ceiling", "memory", "--members", "20",
         "--senders", "1", "--big-room", "0", "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "runs" / "fanout.json").read_text())["rows"]
    assert [row["layer"] for row in rows] == ["ceiling", "memory"]
    assert rows[0]["ratio_to_ceiling"] == 1.0
    for row in rows:
        assert row["lost"] == 0 and row["duplicates"] == 0 and not row["timed_out"]
        assert row["delivered"] == 20 * 300
        assert row["idle_kib_per_member"] > 0
    assert 0 < rows[1]["ratio_to_ceiling"] < 5
    page = (tmp_path / "fanout.md").read_text()
    assert "| memory | 1 | 20 | 1 |" in page
    assert "](runs/fanout.json)" in page


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
