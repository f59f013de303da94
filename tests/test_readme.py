"""The README states facts the tests establish: keep the two in step."""

from pathlib import Path

from tests.compat import matrix_markdown

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_compatibility_matrix_matches_the_tested_behaviour():
    assert matrix_markdown() in README, "README's matrix is stale: paste `python -m tests.compat`"


def test_readme_names_the_two_commands_ci_relies_on():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make test" in README and "make run" in README
    assert "make test" in ci


def test_every_test_the_readme_names_exists():
    """The production section backs each claim with a test by name: the names must be real."""
    import re

    names = set(re.findall(r"`(test_\w+)`", README))
    assert names, "the README names no test"
    sources = "".join(path.read_text() for path in Path(__file__).parent.glob("test_*.py"))
    missing = sorted(name for name in names if f"def {name}(" not in sources)
    assert not missing, f"README names tests that do not exist: {missing}"
