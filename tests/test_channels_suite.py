"""Channels' own test suite, run with the project's base classes in Channels' place.

The suite of the installed Channels version lives beside the project, in
``../shared/upstream/channels-<version>-tests/`` (BSD; not copied into this repository). It
runs twice from a temporary copy, in two processes at once: as released, and with
``tests/upstream/lean_bases.py`` putting ``LeanAsyncConsumer``/``LeanSyncConsumer`` in
``channels.consumer`` and the project's ``URLRouter`` in ``channels.routing`` before anything
imports them, with no settings added. Every test that
passes with stock Channels must pass with the project's classes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import channels
import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.upstream

SUITE = ROOT.parent / "shared" / "upstream" / f"channels-{channels.__version__}-tests"
PLUGINS = ROOT / "tests" / "upstream"


def start_suite(copy: Path, report: Path, *plugins: str) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        # The plugins, then this checkout (its ``app``, whatever the venv's editable install
        # points at); the copy's own ``tests`` still comes first, from the working directory.
        "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT)]),
        "LEAN_BASES_RECORD": str(report.with_suffix(".lean.json")),
    }
    # --reruns 1: the two runs go side by side, each driving Chromium through Selenium, on a
    # shared 2-core machine; Channels' real-time Selenium tests then miss an update now and then
    # (stock Channels' test_real_time_delete_message, '0' != '1', in one clean-clone run). A test
    # still has to pass, and both runs are held to it alike.
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--reruns", "1",
            f"--junitxml={report}"]  # fmt: skip
    for plugin in ("chromium_as_root", *plugins):
        args += ["-p", plugin]
    return subprocess.Popen(
        args, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def outcomes(report: Path) -> dict[str, str]:
    """``{test id: passed | failed | skipped}`` from a JUnit XML report."""
    result = {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        result[name] = "failed" if failed else "skipped" if skipped else "passed"
    return result


@pytest.fixture(scope="module")
def suite_results(tmp_path_factory) -> dict:
    if not SUITE.is_dir():
        pytest.skip(f"Channels' test suite is not at {SUITE}")
    if not (shutil.which("chromedriver") and shutil.which("chromium")):
        pytest.skip("Channels' Selenium tests need Debian's chromium and chromium-driver")
    runs = {}
    for name, plugins in (("stock", ()), ("lean", ("lean_bases",))):
        copy = tmp_path_factory.mktemp(f"channels-{name}") / "suite"
        shutil.copytree(SUITE, copy)
        report = copy.parent / "report.xml"
        runs[name] = (start_suite(copy, report, *plugins), report)
    results = {}
    for name, (process, report) in runs.items():
        output, _ = process.communicate(timeout=300)
        assert report.exists(), output
        results[name] = (outcomes(report), output)
    results["lean_record"] = runs["lean"][1].with_suffix(".lean.json")
    return results


def test_stock_channels_passes_its_whole_suite_here(suite_results):
    """The baseline: every test of the suite runs and passes on this machine, Selenium included."""
    stock, output = suite_results["stock"]
    assert len(stock) >= 80, output
    assert {name for name, outcome in stock.items() if outcome != "passed"} == set(), output
    assert any("test_selenium" in name for name in stock), "the Selenium tests did not run"


def test_every_test_that_passes_with_stock_channels_passes_with_the_lean_bases(suite_results):
    stock, _ = suite_results["stock"]
    lean, output = suite_results["lean"]
    regressed = sorted(
        name
        for name, outcome in stock.items()
        if outcome == "passed" and lean.get(name) != "passed"
    )
    assert regressed == [], output


def test_the_lean_run_really_used_this_checkouts_classes(suite_results):
    """A plugin that substituted nothing, or substituted another checkout's classes, would pass
    trivially: the lean run itself records what it ran on."""
    import json

    record = json.loads(suite_results["lean_record"].read_text())
    assert record["swapped"] is True
    assert Path(record["dispatch"]).resolve() == (ROOT / "app" / "dispatch.py").resolve()
