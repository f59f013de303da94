"""The Autobahn TestSuite's fuzzing server for WebSocket *clients* (``manage.py fuzzingserver``):
kosoku's cases behind Autobahn's own client API, so a browser can show each verdict as it comes.

kosoku 0.1.0's ``run_fuzzingserver`` answers ``/getCaseCount``, ``/runCase?case=N&agent=X`` and
``/updateReports``, and hands back its verdicts only when the run is over. A page wants each case's
verdict as soon as the case ends, and its description before it starts (Autobahn's fuzzing server
had ``/getCaseInfo`` and ``/getCaseStatus`` for that). So this front answers those itself, and runs
each ``/runCase`` on a kosoku server of its own serving that one case: the client's bytes are piped
to it unchanged (only the request line's ``case=`` is renumbered), and its verdict is kept for
``/getCaseStatus``. Runs without Django: kosoku's case files bring a module named ``autobahn`` that
daphne's real one would shadow (``manage.py fuzzingserver`` execs this module).

Every answer of the front is one WebSocket text message of JSON, then a close, as Autobahn's were.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

#: The client suite's sections: framing, pings, reserved bits, opcodes, fragments, UTF-8, closing,
#: big messages, autobahn's misc, and permessage-deflate (Autobahn's 8 and 11 do not exist).
SECTIONS = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*", "12.*", "13.*"]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: A case's own limit is kosoku's 20 s; a connection still piped after this is cut.
CASE_BOUND = 120.0
#: How long ``/getCaseStatus`` waits for a case that is still running.
STATUS_WAIT = 150.0


def select(include: list[str], exclude: list[str] | None = None) -> list[str]:
    """The case ids matching the globs ``include`` and none of ``exclude``, in Autobahn's order."""
    from kosoku.cases import CASES

    return [
        case
        for case in CASES
        if any(fnmatch.fnmatchcase(case, glob) for glob in include)
        and not any(fnmatch.fnmatchcase(case, glob) for glob in exclude or [])
    ]


def verdict(result: Any) -> dict[str, Any]:
    """What the page and the run record keep of a kosoku ``CaseResult``."""
    return {
        "behavior": result.behavior.value,
        "behaviorClose": result.behavior_close.value,
        "result": result.result,
        "resultClose": result.result_close,
        "remoteCloseCode": result.remote_close_code,
        "duration": result.duration,
    }


class FuzzingFront:
    """Serves ``cases`` to clients under test; keeps each agent's verdicts, and writes them to
    ``record`` (JSON, ``{agent: {case id: verdict}}``) at each ``/updateReports``."""

    def __init__(self, cases: list[str], record: Path | None = None) -> None:
        from kosoku.cases import CASES

        self.cases = cases
        self.classes = {case: CASES[case] for case in cases}
        self.record = record
        self.verdicts: dict[str, dict[str, dict[str, Any]]] = {}
        self.done: dict[tuple[str, str], asyncio.Event] = {}

    def finished(self, agent: str, case: str) -> asyncio.Event:
        return self.done.setdefault((agent, case), asyncio.Event())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        try:
            await self.dispatch(head, reader, writer)
        except OSError:
            pass  # the client went away; a case's verdict says so
        finally:
            writer.close()

    async def dispatch(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        target = request_line.split(" ")[1] if request_line.count(" ") == 2 else "/"
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        url = urlsplit(target)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        key = headers.get("sec-websocket-key")
        if key is None:
            writer.write(
                b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
            return
        agent = query.get("agent") or headers.get("user-agent") or "UnknownClient"
        number = query.get("case", "")
        in_range = number.isdigit() and 0 < int(number) <= len(self.cases)
        case = self.cases[int(number) - 1] if in_range else None
        if url.path == "/runCase" and case is not None:
            await self.run_case(case, agent, head, target, reader, writer)
        elif url.path == "/getCaseCount":
            await answer(reader, writer, key, len(self.cases))
        elif url.path == "/getCaseInfo" and case is not None:
            cls = self.classes[case]
            info = {"id": case, "description": cls.DESCRIPTION, "expectation": cls.EXPECTATION}
            await answer(reader, writer, key, info)
        elif url.path == "/getCaseStatus" and case is not None:
            try:
                await asyncio.wait_for(self.finished(agent, case).wait(), STATUS_WAIT)
                status = {"id": case, **self.verdicts[agent][case]}
            except TimeoutError:
                status = {"id": case, "behavior": "UNKNOWN", "result": "case not finished"}
            await answer(reader, writer, key, status)
        elif url.path == "/updateReports":
            self.write_record()
            await answer(reader, writer, key, {"agents": sorted(self.verdicts)})
        else:
            await answer(reader, writer, key, {"error": f"unknown request {target}"})

    async def run_case(
        self,
        case: str,
        agent: str,
        head: bytes,
        target: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """The case on a kosoku server of its own: the client's bytes both ways, unchanged."""
        from kosoku import FailureError, run_fuzzingserver

        self.finished(agent, case).clear()
        results: list[Any] = []
        async with run_fuzzingserver([case], host="127.0.0.1", port=0) as inner:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", inner.port
            )
            own_target = f"/runCase?case=1&agent={quote(agent, safe='')}"
            upstream_writer.write(head.replace(target.encode("latin-1"), own_target.encode(), 1))
            try:
                await asyncio.wait_for(
                    asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer)),
                    CASE_BOUND,
                )
            except TimeoutError:
                pass
            finally:
                upstream_writer.close()
                writer.close()
            await update_reports(inner.port, agent)
            try:
                results = list(await asyncio.wait_for(inner.get_result(), CASE_BOUND))
            except FailureError as failure:
                results = list(failure.results)
            except TimeoutError:
                results = []
        self.verdicts.setdefault(agent, {})[case] = (
            verdict(results[0])
            if results
            else {"behavior": "ERROR", "behaviorClose": "", "result": "kosoku gave no verdict"}
        )
        self.finished(agent, case).set()

    def write_record(self) -> None:
        if self.record is not None:
            self.record.write_text(json.dumps(self.verdicts, indent=1, sort_keys=True))


async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Bytes from ``source`` to ``sink`` until EOF, then EOF on ``sink``: a half-close passes
    through, so who closed the TCP connection first is what kosoku sees."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except OSError:
        sink.close()


async def update_reports(port: int, agent: str) -> None:
    """``/updateReports`` to a one-case kosoku server: its run is over."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /updateReports?agent={quote(agent, safe='')} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(reader.read(1024), 10)
    writer.close()


async def answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str, payload: object
) -> None:
    """The opening handshake, one text message of JSON, a close 1000, then the client's close."""
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    writer.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
    )
    writer.write(frame(0x1, json.dumps(payload).encode()) + frame(0x8, struct.pack("!H", 1000)))
    await writer.drain()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.read(1024), 5)  # the client's close frame, or its EOF


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked final frame, as a server sends it."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 2**16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


async def serve(host: str, port: int, front: FuzzingFront) -> None:
    server = await asyncio.start_server(front.handle, host, port, limit=64 * 1024)
    bound = server.sockets[0].getsockname()
    print(
        f"fuzzingserver: {len(front.cases)} cases on ws://{host}:{bound[1]} "
        f"(set CLIENT_CONFORMANCE_URL=ws://{host}:{bound[1]} for the page)",
        flush=True,
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--cases", default=",".join(SECTIONS), help="comma-separated case globs")
    parser.add_argument("--exclude", default="", help="comma-separated case globs")
    parser.add_argument("--record", type=Path, help="write the verdicts here at /updateReports")
    args = parser.parse_args(argv)
    cases = select(args.cases.split(","), [glob for glob in args.exclude.split(",") if glob])
    if not cases:
        sys.exit(f"no case matches {args.cases!r}")
    started = time.monotonic()
    try:
        asyncio.run(serve(args.host, args.port, FuzzingFront(cases, args.record)))
    except KeyboardInterrupt:
        print(f"fuzzingserver: stopped after {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
