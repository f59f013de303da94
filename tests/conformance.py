"""The Autobahn TestSuite's cases (through kosoku) against a live server: the runner shared by
``tests/test_conformance.py`` and ``make conformance`` (``python -m tests.conformance``).

A case passes when its message exchange is OK or INFORMATIONAL (Autobahn's own labels);
NON-STRICT, FAILED, UNIMPLEMENTED and ERROR do not. Big-message cases (9.x) run against a server
started with the message limit raised to 16 MiB by its setting, as the issue that added them asks.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
from pathlib import Path

#: Autobahn's sections the project runs: framing, pings, reserved bits, opcodes, fragments,
#: UTF-8, closing, limits of size and count, and autobahn's misc.
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
BIG_CASES = ["9.*"]
#: permessage-deflate (RFC 7692): 1,000 messages of each size from 16 B to 128 KiB (12.x), then
#: the same under each negotiation offer (13.x). 216 cases, about 2.5 minutes at parallelism 4.
DEFLATE_CASES = ["12.*", "13.*"]
#: The deflate cases up to 64 KiB messages (12.x.1 to 12.x.9 and the same of 13.x): 108 cases in
#: a quarter of the time; the other 108 are the same sizes fragmented, and 128 KiB.
DEFLATE_CASES_TO_64_KIB = [
    f"{section}.{group}.{case}"
    for section, groups in ((12, 5), (13, 7))
    for group in range(1, groups + 1)
    for case in range(1, 10)
]
SECTIONS = {"default": CASES, "big": BIG_CASES, "deflate": DEFLATE_CASES,
            "deflate-to-64-kib": DEFLATE_CASES_TO_64_KIB}  # fmt: skip
#: The environment for the big-message cases: a 16 MiB message limit, by its setting.
BIG_ENV = {"ECHO_MAX_MESSAGE_BYTES": str(16 * 1024 * 1024)}
PASSING = {"OK", "INFORMATIONAL"}
PARALLELISM = 4
#: kosoku gives a case 20 s. The deflate cases of 128 KiB in 256-byte fragments (12.x.15) take
#: about 12 s at 2 cases at a time, 16 s at 4 (sharing the server's one core): 2 keeps a margin.
PARALLELISM_FOR = {"deflate": 2}


def run_cases(url: str, cases: list[str], *, parallelism: int = PARALLELISM) -> list:
    """kosoku's results for ``cases`` against the WebSocket ``url`` (every case, passed or not)."""
    from kosoku import FailureError, run_fuzzingclient

    async def run() -> list:
        try:
            return await run_fuzzingclient(url, cases=cases, concurrency=parallelism)
        except FailureError as failure:  # raised when any case did not pass; it has them all
            return list(failure.results)

    return asyncio.run(run())


def verdicts(results: list) -> dict[str, str]:
    """``{case id: Autobahn's label for the message exchange}``."""
    return {result.case_id: result.behavior.value for result in results}


def not_passing(results: list) -> dict[str, str]:
    return {case: label for case, label in verdicts(results).items() if label not in PASSING}


def reasons(results: list) -> dict[str, str]:
    """``{case id: Autobahn's result text}`` for the cases that did not pass."""
    return {
        result.case_id: f"{result.result} / close: {result.result_close}"
        for result in results
        if result.behavior.value not in PASSING
    }


def summary(results: list) -> dict[str, int]:
    return dict(collections.Counter(verdicts(results).values()))


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Autobahn cases against a live server")
    parser.add_argument("url", help="ws://host:port/path of the echo to test")
    parser.add_argument(
        "--cases", choices=SECTIONS, default="default", help="1-7 and 10 (default), 9, or 12-13"
    )
    parser.add_argument("--json", type=Path, help="write every case's label here")
    parser.add_argument("--report", type=Path, help="write kosoku's HTML report here")
    args = parser.parse_args()
    results = run_cases(
        args.url, SECTIONS[args.cases], parallelism=PARALLELISM_FOR.get(args.cases, PARALLELISM)
    )
    if args.report:
        from kosoku._report import write_reports

        write_reports(results, str(args.report))
    print(json.dumps({"summary": summary(results), "not passing": not_passing(results)}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(verdicts(results), indent=1))
        # What Autobahn said about each case that did not pass, beside the labels.
        args.json.with_suffix(".why.json").write_text(json.dumps(reasons(results), indent=1))
    sys.exit(1 if not_passing(results) else 0)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    main()
