"""The documentation site builds strict: a broken link or anchor, a page left out of the
navigation, or any other warning fails `make test` as it fails `make docs`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    site = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # A proxy that answers nothing: a build that reached for the network would fail or warn.
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", no_proxy="")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, site


def test_the_site_builds_strict_without_a_warning(build):
    result, site = build
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if re.match(r"(WARNING|ERROR)\b", line)]
    assert not warnings, "\n".join(warnings)
    assert (site / "index.html").is_file()


def test_the_site_loads_nothing_from_elsewhere(build):
    """No web fonts, no scripts or styles from a CDN: the pages work offline."""
    result, site = build
    assert result.returncode == 0, result.stderr
    pages = sorted(site.glob("*.html"))
    assert len(pages) > 10
    loads = re.compile(r"<(?:script|link|img|iframe)\b[^>]*(?:src|href)=\"(?:https?:)?//", re.I)
    remote = [page.name for page in pages if loads.search(page.read_text())]
    assert not remote, f"pages that load something from elsewhere: {remote}"


def test_every_run_record_is_cited_by_a_page():
    """docs/runs/ holds the records the pages cite, and the benches' own; nothing else."""
    pages = "".join(path.read_text() for path in (ROOT / "docs").glob("*.md"))
    written_by_benches = {"benchmarks.json", "fanout.json", "deflate.json", "conformance.json"}
    records = {path.name for path in (ROOT / "docs" / "runs").glob("*.json")}
    uncited = sorted(name for name in records - written_by_benches if f"runs/{name}" not in pages)
    assert not uncited, f"run records no page cites (delete them: git keeps them): {uncited}"
