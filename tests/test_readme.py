"""The README and the documentation pages state facts the tests establish: keep them in step.

Each check points at the page that now holds its claim: the compatibility matrix lives in
docs/servers.md, the two commands in the README, test names on every page that cites them.
"""

import re
from pathlib import Path

from tests.compat import matrix_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
#: Every page of the site, and the README (the front page).
PAGES = {"README.md": README} | {
    f"docs/{path.relative_to(DOCS)}": path.read_text() for path in sorted(DOCS.rglob("*.md"))
}
#: The pages that state what the project does; each names the tests behind its claims.
CLAIM_PAGES = [
    "getting-started.md",
    "consumers.md",
    "rooms.md",
    "testing-your-client.md",
    "servers.md",
    "production.md",
    "limits.md",
    "conformance-overview.md",
]


def test_readme_compatibility_matrix_matches_the_tested_behaviour():
    servers = (DOCS / "servers.md").read_text()
    assert matrix_markdown() in servers, (
        "docs/servers.md's matrix is stale: paste `python -m tests.compat`"
    )


def test_readme_names_the_two_commands_ci_relies_on():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in README and "make run" in README
    assert "make test" in ci


def test_every_test_the_readme_names_exists():
    """The pages back each claim with a test by name: the names must be real."""
    names = {name for text in PAGES.values() for name in re.findall(r"`(test_\w+)`", text)}
    assert names, "no page names a test"
    sources = "".join(path.read_text() for path in Path(__file__).parent.glob("test_*.py"))
    missing = sorted(name for name in names if f"def {name}(" not in sources)
    assert not missing, f"pages name tests that do not exist: {missing}"


def test_every_page_that_states_claims_names_its_tests():
    for page in CLAIM_PAGES:
        text = (DOCS / page).read_text()
        assert re.search(r"`(test_\w+)`", text), f"docs/{page} names no test behind its claims"


def test_the_readmes_consumer_is_the_one_in_app_consumers():
    """The front page shows the async echo consumer whole: it must be the shipped code."""
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    assert code.strip() in (ROOT / "app" / "consumers.py").read_text()
