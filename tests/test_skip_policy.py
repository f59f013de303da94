"""REQUIRE_ALL_TESTS=1 (what CI sets) turns every skip into a failure, module-level ones too."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.servers import ROOT


def run_pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_module_skipped_at_collection_fails_under_require_all_tests():
    """The browser modules skip at import when there is no Chromium: about 50 tests that
    would vanish from a CI run with nothing but a "skipped" to show for it."""
    target = "tests/test_browser_client.py"
    relaxed = run_pytest(
        target, "--collect-only", CHROMIUM_PATH="/nonexistent", REQUIRE_ALL_TESTS="0"
    )
    assert relaxed.returncode in (0, 5), relaxed.stdout  # skipped, or nothing collected
    assert "SKIPPED" in relaxed.stdout, relaxed.stdout
    strict = run_pytest(
        target, "--collect-only", CHROMIUM_PATH="/nonexistent", REQUIRE_ALL_TESTS="1"
    )
    assert strict.returncode not in (0, 5), strict.stdout
    assert "REQUIRE_ALL_TESTS=1 forbids skips" in strict.stdout, strict.stdout
