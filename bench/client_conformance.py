"""``make client-conformance``: the Autobahn TestSuite's *client* cases (sections 1-7, 9, 10, 12,
13; kosoku's fuzzing server behind ``manage.py fuzzingserver``) against WebSocket clients: Chromium
through the page's "Test this browser", and the Python clients ``websockets``, ``aiohttp`` and
``picows`` as echo clients. Writes docs/client-conformance.md and docs/runs/client-conformance.json.

Each client gets a fuzzing server of its own. The page runs one case at a time; the Python
clients two at a time (kosoku gives a case 20 s, and a case's length must not depend on the load).
No client pings on its own: kosoku 0.1.0 ends a case as "did not finish" when a keepalive ping
arrives during it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from bench.conformance import LABELS, failing, table
from tests.servers import ROOT, LiveServer, free_port, wait_for_port

DOCS = ROOT / "docs"
RECORD = DOCS / "runs" / "client-conformance.json"
SECTIONS = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.*,13.*"
#: Cases a Python client runs at once.
PARALLELISM = 2
#: The largest message of the suite is 16 MiB (9.x); the clients' limits are raised past it.
MAX_MESSAGE = 64 * 2**20

Verdicts = dict[str, dict]


class FuzzingServer:
    """``manage.py fuzzingserver`` on a free loopback port, serving ``cases``; each agent's
    verdicts are in ``record`` after its ``/updateReports``."""

    def __init__(self, cases: str = SECTIONS) -> None:
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="fuzzingserver-")
        self.record = Path(self.dir.name) / "verdicts.json"
        self.log_file = Path(self.dir.name) / "log"
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "manage.py", "fuzzingserver", "--port", str(self.port),
                    "--cases", cases, "--record", str(self.record),
                ],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def __enter__(self) -> FuzzingServer:
        wait_for_port(self.port, self.process, "fuzzingserver", timeout=30, details=self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.dir.cleanup()

    def verdicts(self, agent: str) -> Verdicts:
        """``{case id: verdict}`` the server recorded for ``agent``."""
        return json.loads(self.record.read_text()).get(agent, {}) if self.record.exists() else {}


# Python echo clients: each runs one case at ``url`` until the fuzzing server closes it.


async def websockets_case(url: str) -> None:
    from websockets.asyncio.client import connect

    with contextlib.suppress(Exception):  # a case may fail the connection on purpose
        async with connect(url, max_size=MAX_MESSAGE, ping_interval=None) as ws:
            async for message in ws:
                await ws.send(message)


async def aiohttp_case(url: str) -> None:
    import aiohttp

    with contextlib.suppress(Exception):
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(url, max_msg_size=MAX_MESSAGE, compress=15, heartbeat=None) as ws,
        ):
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(message.data)
                else:
                    break


async def picows_case(url: str) -> None:
    """picows's API is frames: each data frame is echoed as it came (fragments stay fragments);
    message assembly, UTF-8 and close-code checks are the application's, and this one has none."""
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    class Echo(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                code = frame.get_close_code()
                if code == WSCloseCode.NO_INFO:
                    transport.send_close(WSCloseCode.OK)
                else:
                    transport.send_close(code, frame.get_close_message())
                transport.disconnect()
            elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
                transport.send(frame.msg_type, frame.get_payload_as_bytes(), frame.fin)

    with contextlib.suppress(Exception):
        transport, _ = await ws_connect(Echo, url, max_frame_size=MAX_MESSAGE)
        await transport.wait_disconnected()


async def ask(url: str) -> object:
    """One JSON answer from the fuzzing server's API."""
    from websockets.asyncio.client import connect

    async with connect(url, ping_interval=None) as ws:
        return json.loads(await ws.recv())


async def drive(base: str, agent: str, run_case: Callable[[str], Awaitable[None]]) -> None:
    """Autobahn's client protocol: every case, ``PARALLELISM`` at a time, then the report."""
    count = await ask(f"{base}/getCaseCount")
    assert isinstance(count, int)
    slots = asyncio.Semaphore(PARALLELISM)

    async def one(n: int) -> None:
        async with slots:
            await asyncio.wait_for(run_case(f"{base}/runCase?case={n}&agent={agent}"), 120)
            await ask(f"{base}/getCaseStatus?case={n}&agent={agent}")

    await asyncio.gather(*(one(n) for n in range(1, count + 1)))
    await ask(f"{base}/updateReports?agent={agent}")


def chromium(server: FuzzingServer, cases: str = SECTIONS, timeout: float = 3600) -> Verdicts:
    """The page's "Test this browser" in Debian's Chromium, against ``server``."""
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    env = {"CLIENT_CONFORMANCE_URL": server.url, "LOG_LEVEL": "WARNING"}
    with LiveServer("uvicorn", env=env) as site, sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        page.goto(site.http_url + "/")
        run_in_page(page, timeout)
        agent = page.get_attribute("#conformance", "data-agent")
        browser.close()
    return server.verdicts(agent)


def run_in_page(page, timeout: float) -> None:  # page: playwright's Page
    """Open the section, press "Test this browser", wait for the last verdict."""
    page.click("#conformance-details > summary")
    page.click("#conformance-run")
    page.wait_for_selector("#conformance[data-state='done']", timeout=timeout * 1000)


def version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def chromium_version() -> str:
    from tests.browser import CHROMIUM

    out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


#: (row name, client's version, how to run it): the Python clients.
PYTHON_CLIENTS: list[tuple[str, str, Callable[[str], Awaitable[None]]]] = [
    ("websockets", "websockets", websockets_case),
    ("aiohttp", "aiohttp", aiohttp_case),
    ("picows", "picows", picows_case),
]


@contextlib.contextmanager
def timed(name: str, durations: dict[str, float]) -> Iterator[None]:
    started = time.monotonic()
    yield
    durations[name] = round(time.monotonic() - started, 1)


def main() -> None:
    runs: dict[str, Verdicts] = {}
    versions: dict[str, str] = {}
    durations: dict[str, float] = {}
    with timed("Chromium, through the page", durations), FuzzingServer() as server:
        runs["Chromium, through the page"] = chromium(server)
    versions["Chromium, through the page"] = chromium_version()
    print("Chromium", summary(runs["Chromium, through the page"]), flush=True)
    for name, distribution, run_case in PYTHON_CLIENTS:
        with timed(name, durations), FuzzingServer() as server:
            asyncio.run(drive(server.url, name, run_case))
            runs[name] = server.verdicts(name)
        versions[name] = f"{distribution} {version(distribution)}"
        print(name, summary(runs[name]), flush=True)
    write(runs, versions, durations)


def summary(verdicts: Verdicts) -> dict[str, int]:
    return dict(collections.Counter(v["behavior"] for v in verdicts.values()))


def write(
    runs: dict[str, Verdicts],
    versions: dict[str, str],
    durations: dict[str, float],
    today: str | None = None,
) -> None:
    today = today or datetime.datetime.now(datetime.UTC).date().isoformat()
    rows = [(name, {case: v["behavior"] for case, v in verdicts.items()}) for name, verdicts in runs.items()]  # fmt: skip
    lines = [
        "# Client conformance: the Autobahn TestSuite's client cases",
        "",
        "Written by `make client-conformance` (bench/client_conformance.py) on this machine on",
        f"{today} ({platform.machine()}, {os.cpu_count()} cores): Autobahn's client cases (sections",
        "1-7, 9, 10, 12 and 13), served by `manage.py fuzzingserver` (kosoku's fuzzing server),",
        "against each client as an echo client. OK and INFORMATIONAL pass; NON-STRICT, FAILED,",
        "UNIMPLEMENTED (permessage-deflate not offered) and ERROR do not. The page's own connection",
        "code is the browser's WebSocket, so Chromium's row is the page's too. Each verdict, with",
        "Autobahn's reasons, is in the run's record, `docs/runs/client-conformance.json`. How to",
        "run it, and what the page's control does:",
        "[Testing your client](testing-your-client.md#client-conformance).",
        "",
        *table(rows, first="client"),
        "",
        "| client | version | duration |",
        "|---|---|---|",
        *(f"| {name} | {versions[name]} | {durations[name]:.0f} s |" for name in runs),
        "",
        "The Python clients run as echo clients with their message limits raised to 64 MiB and",
        "their own keepalive pings off; `websockets` and `aiohttp` offer permessage-deflate,",
        "picows has none. picows's API is frames, so its echo sends each frame back as it came:",
        "UTF-8 and close-code checks are left to the application, and this one has none.",
        "",
        "## Cases each client does not pass, with Autobahn's reason",
    ]
    for name, verdicts in runs.items():
        cases = failing({case: v["behavior"] for case, v in verdicts.items()})
        lines += ["", f"### {name}", ""]
        if not cases:
            lines.append("Every case passes.")
            continue
        unimplemented = [case for case in cases if verdicts[case]["behavior"] == "UNIMPLEMENTED"]
        if unimplemented:
            groups = sorted(
                {case.rsplit(".", 1)[0] for case in unimplemented},
                key=lambda g: [int(p) for p in g.split(".")],
            )
            lines += [
                f"UNIMPLEMENTED, {len(unimplemented)} cases (every case of "
                + ", ".join(f"{group}.x" for group in groups)
                + "): permessage-deflate was not negotiated; the client made no offer the case's"
                " server accepts.",
                "",
            ]
        lines += ["| case | behaviour | close | Autobahn's reason |", "|---|---|---|---|"]
        for case in cases:
            v = verdicts[case]
            if v["behavior"] == "UNIMPLEMENTED":
                continue
            reason = f"{v.get('result', '')} Close: {v.get('resultClose', '')}".replace("|", "/")
            reason = " ".join(reason.split())
            lines.append(f"| {case} | {v['behavior']} | {v.get('behaviorClose', '')} | {reason} |")
    (DOCS / "client-conformance.md").write_text("\n".join(lines) + "\n")
    RECORD.write_text(
        json.dumps(
            {
                "date": today,
                "labels": LABELS,
                "versions": versions,
                "durations_s": durations,
                "verdicts": runs,
            },
            indent=1,
            sort_keys=True,
        )
    )


def rewrite() -> None:
    """docs/client-conformance.md again from the run's record (``--from-record``), no run."""
    record = json.loads(RECORD.read_text())
    order = ["Chromium, through the page", *(name for name, _, _ in PYTHON_CLIENTS)]
    runs = dict(sorted(record["verdicts"].items(), key=lambda item: order.index(item[0])))
    write(runs, record["versions"], record["durations_s"], record["date"])


if __name__ == "__main__":
    if sys.argv[1:] == ["--from-record"]:
        rewrite()
    else:
        main()
