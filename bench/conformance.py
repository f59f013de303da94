"""``make conformance``: the Autobahn TestSuite (through kosoku) against the project under every
server, and against the peers, in one run; writes docs/conformance.md, docs/runs/conformance.json and docs/conformance/
(kosoku's HTML report of the project under ``manage.py serve``).

Each target runs sections 1-7 and 10 as it starts by default, then 9 (big messages) with the
message limit raised to 16 MiB where the target has one (the project's ``ECHO_MAX_MESSAGE_BYTES``;
daphne's command line takes ``SERVER_MAX_MESSAGE_BYTES``), then 12-13 (permessage-deflate) as it
starts by default: UNIMPLEMENTED where the server does not negotiate deflate. About 25 minutes.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django

django.setup()

from django.conf import settings  # noqa: E402
from django.test import override_settings  # noqa: E402

from tests.servers import ROOT, LiveServer  # noqa: E402

DOCS = ROOT / "docs"
RECORD = DOCS / "runs" / "conformance.json"  # the run record, beside the other runs
BIG = {"ECHO_MAX_MESSAGE_BYTES": str(16 * 2**20), "SERVER_MAX_MESSAGE_BYTES": str(64 * 2**20)}
LABELS = ["OK", "INFORMATIONAL", "NON-STRICT", "FAILED", "UNIMPLEMENTED", "ERROR"]

#: (row, server kind, app, path): the project under each server, then the peers.
TARGETS = [
    ("project, `manage.py serve` (uvicorn), async", "uvicorn", "project.asgi:application", "/ws/echo/async/"),
    ("project, `manage.py serve` (uvicorn), sync", "uvicorn", "project.asgi:application", "/ws/echo/sync/"),
    ("project under daphne, async", "daphne", "project.asgi:application", "/ws/echo/async/"),
    ("project under hypercorn, async", "hypercorn", "project.asgi:application", "/ws/echo/async/"),
    ("project under granian, async", "granian", "project.asgi:application", "/ws/echo/async/"),
    ("peer: raw ASGI echo, plain uvicorn", "uvicorn-plain", "bench.apps:ceiling", "/"),
    ("peer: Starlette echo, plain uvicorn", "uvicorn-plain", "bench.apps:starlette", "/ws/echo/async/"),
    ("peer: stock Channels, daphne", "daphne", "bench.apps:stock", "/ws/echo/async/"),
]  # fmt: skip


def run(url: str, *, cases: str, report: Path | None = None) -> dict[str, str]:
    """Every case's label, from kosoku in a process of its own (tests/conformance.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "labels.json"
        args = [sys.executable, "-m", "tests.conformance", url, "--json", str(labels)]
        args += ["--cases", cases]
        if report is not None:
            args += ["--report", str(report)]
        subprocess.run(args, cwd=ROOT, timeout=900, check=False, capture_output=True)
        return json.loads(labels.read_text()) if labels.exists() else {}


def main() -> None:
    rows = []
    for name, kind, app, path in TARGETS:
        labels: dict[str, str] = {}
        for cases in ("default", "big", "deflate"):
            big = cases == "big"
            env = {**os.environ, **(BIG if big else {})}
            limit = (
                int(BIG["SERVER_MAX_MESSAGE_BYTES"]) if big else settings.SERVER_MAX_MESSAGE_BYTES
            )
            with (
                override_settings(SERVER_MAX_MESSAGE_BYTES=limit),
                LiveServer(kind, app=app, env=env) as server,
            ):
                report = (
                    DOCS / f"conformance/{cases}"
                    if (name.endswith("async") and kind == "uvicorn")
                    else None
                )
                labels.update(run(server.ws_url + path, cases=cases, report=report))
            print(name, cases, collections.Counter(labels.values()), flush=True)
        rows.append((name, labels))
    write(rows)


def write(rows: list[tuple[str, dict[str, str]]]) -> None:
    lines = [
        "# Conformance: the Autobahn TestSuite",
        "",
        "Written by `make conformance` (bench/conformance.py): Autobahn's case files through",
        "`kosoku`, sections 1-7, 9 (messages up to 16 MiB, the limit raised by its setting), 10,",
        "12 and 13 (permessage-deflate), against the project under each server and against the",
        "peers, on this machine. OK and INFORMATIONAL pass; NON-STRICT, FAILED, UNIMPLEMENTED",
        "(deflate not offered) and ERROR do not. `make test` runs the same cases against",
        "`manage.py serve` and fails on any that does not pass (tests/test_conformance.py; the",
        "sync consumer there runs the deflate cases up to 64 KiB). kosoku's HTML reports of the",
        "project's async echo (written beside this file, not kept in the repository):",
        "docs/conformance/{default,big,deflate}/index.html.",
        "",
        *table(rows),
    ]
    (DOCS / "conformance.md").write_text("\n".join(lines) + "\n")
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(dict(rows), indent=1, sort_keys=True))


def failing(labels: dict[str, str]) -> list[str]:
    """The cases that did not pass (not OK or INFORMATIONAL), in Autobahn's order."""
    return sorted(
        (case for case, label in labels.items() if label not in ("OK", "INFORMATIONAL")),
        key=lambda c: [int(p) for p in c.split(".")],
    )


def table(rows: list[tuple[str, dict[str, str]]], first: str = "target") -> list[str]:
    """The Markdown table of label counts, one row per ``(name, {case: label})``: shared by
    docs/conformance.md and docs/client-conformance.md (bench/client_conformance.py)."""
    lines = [
        f"| {first} | " + " | ".join(LABELS) + " | not passing |",
        "|---|" + "---|" * (len(LABELS) + 1),
    ]
    for name, labels in rows:
        counts = collections.Counter(labels.values())
        cases = failing(labels)
        shown = ", ".join(cases[:12]) + (f", and {len(cases) - 12} more" if len(cases) > 12 else "")
        lines.append(
            f"| {name} | "
            + " | ".join(str(counts.get(label, 0)) for label in LABELS)
            + f" | {shown or '-'} |"
        )
    return lines


if __name__ == "__main__":
    main()
