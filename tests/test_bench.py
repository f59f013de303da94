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
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    cells = {cell["target"]: cell for cell in report["cells"]}
    assert set(cells) == {"stock-async", "project-async"}
    for cell in cells.values():
        assert cell["messages"] == 3_000 and not cell["timed_out"] and not cell["errors"]
        assert cell["mismatches"] == 0
        assert 0 < cell["p50_ms"] <= cell["p99_ms"] <= cell["max_ms"]
    # Same run, same machine, alternating order: a ratio, never an absolute time.
    assert cells["project-async"]["msgs_per_s"] > cells["stock-async"]["msgs_per_s"]
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000
    assert "| 10 | 16 B | project-async |" in (tmp_path / "benchmarks.md").read_text()


def test_ab_counts_the_cpu_of_the_servers_worker_processes():
    """granian serves from a worker process: bench.ab's CPU per message must include it."""
    from bench.ab import cpu_seconds

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
