"""A client that knows only the page: docs/rooms.md, read at test time, held against a live server.

What a client needs is taken from the page, not from the code: the endpoint, the subprotocol and
the form of ``since`` from the protocol's table, the fields and their JSON types from the page's
examples, the malformed ``since`` values from its list, and the Python client from its code
block, run as written. Change the page and these tests ask the server for what it now says; a
field the server sends and the page's examples leave out fails them, and so does the reverse.
One live ``manage.py serve`` per engine: ``memory``, then ``redis`` on a private redis-server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import re
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.conftest import clean_processes
from tests.servers import ROOT, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.asyncio]

PAGE_PATH = ROOT / "docs" / "rooms.md"
#: How long any one frame may take to come: a bound on a failure, never a wait on success.
FRAME_TIMEOUT = 5


@dataclass(frozen=True)
class Page:
    """What docs/rooms.md tells a client."""

    endpoints: tuple[str, ...]  # "/ws/broadcast/async/<room>/", ...
    subprotocol: str  # "rooms.v1"
    resume: str  # "?since=<epoch>:<offset>"
    welcome: dict[str, Any]  # the example welcome of a first connection
    resumed_welcome: dict[str, Any]  # the example welcome of a resume
    text_message: dict[str, Any]
    bytes_message: dict[str, Any]
    malformed_since: tuple[str, ...]  # the values the page calls malformed
    client: str  # the Python client, as printed

    def path(self, room: str, kind: int = 0) -> str:
        """The endpoint of ``room``; ``kind`` picks among the page's endpoints (sync, async)."""
        return self.endpoints[kind % len(self.endpoints)].replace("<room>", room)

    def url(self, server: LiveServer, room: str, kind: int = 0) -> str:
        return server.ws_url + self.path(room, kind)

    def since(self, epoch: str, offset: int | str) -> str:
        query = self.resume.replace("<epoch>", epoch).replace("<offset>", str(offset))
        return urllib.parse.quote(query, safe="?=:&")


def protocol_row(text: str, name: str) -> list[str]:
    """The code spans of the row ``name`` in the page's protocol table."""
    match = re.search(rf"^\| {re.escape(name)} \|(.*)\|$", text, re.M)
    assert match, f"docs/rooms.md: no '{name}' row in the protocol's table"
    return re.findall(r"`([^`]+)`", match.group(1))


def json_examples(text: str) -> list[dict[str, Any]]:
    """Every JSON object on a line of its own in the page's code blocks: the examples."""
    examples = []
    for block in re.findall(r"^```\w*\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            if "{" in line:
                with contextlib.suppress(json.JSONDecodeError):
                    example = json.loads(line[line.index("{") :])
                    if isinstance(example, dict) and "type" in example:
                        examples.append(example)
    return examples


def the_one(examples: list[dict], what: str, test: Callable[[dict], bool]) -> dict[str, Any]:
    found = [example for example in examples if test(example)]
    assert found, f"docs/rooms.md shows no example of {what}"
    assert all(example.keys() == found[0].keys() for example in found), (
        f"docs/rooms.md's examples of {what} disagree on the fields: {found}"
    )
    return found[0]


@functools.cache
def page() -> Page:
    text = PAGE_PATH.read_text()
    examples = json_examples(text)
    (subprotocol, *_) = protocol_row(text, "subprotocol")
    (resume, *_) = protocol_row(text, "resume")
    assert "<epoch>" in resume and "<offset>" in resume, resume
    malformed = re.search(r"^A malformed `since`.*?(?=\n\n)", text, re.M | re.S)
    assert malformed, "docs/rooms.md: no paragraph on a malformed since"
    client = re.search(r"^```python\n(.*?async def follow\(.*?)^```", text, re.M | re.S)
    assert client, "docs/rooms.md: no Python client (async def follow)"
    return Page(
        endpoints=tuple(e for e in protocol_row(text, "endpoint") if "<room>" in e),
        subprotocol=subprotocol,
        resume=resume,
        welcome=the_one(
            examples, "a welcome", lambda e: e["type"] == "welcome" and "recovered" not in e
        ),
        resumed_welcome=the_one(
            examples, "a resume's welcome", lambda e: e["type"] == "welcome" and "recovered" in e
        ),
        text_message=the_one(examples, "a text message", lambda e: "text" in e),
        bytes_message=the_one(examples, "a binary message", lambda e: "bytes" in e),
        malformed_since=tuple(re.findall(r"`since=([^`]*)`", malformed.group(0))),
        client=client.group(1),
    )


def assert_like(frame: dict[str, Any], example: dict[str, Any]) -> None:
    """The same fields as the page's example, each of the same JSON type (a bool is no int)."""
    assert frame.keys() == example.keys(), f"{frame} has not the fields of the page's {example}"
    for field, value in example.items():
        assert type(frame[field]) is type(value), f"{field}: {frame[field]!r} is not like {value!r}"


def new_room() -> str:
    return f"docs-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def server(request, server_env):
    """One ``manage.py serve`` on the engine; its log must be clean at the end."""
    env = {**server_env, "ROOM_ENGINE": request.param}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    processes = clean_processes(env)
    (process,) = next(processes)
    yield process
    next(processes, None)


async def frame(ws: ClientConnection) -> dict[str, Any]:
    """The next frame: JSON text, as the page promises."""
    data = await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT)
    assert isinstance(data, str), f"a binary frame from the server: {data!r}"
    return json.loads(data)


async def join(
    server: LiveServer, room: str, *, since: str = "", kind: int = 0
) -> tuple[ClientConnection, dict[str, Any]]:
    """A member of ``room`` and its welcome."""
    ws = await connect(page().url(server, room, kind) + since, subprotocols=[page().subprotocol])
    assert ws.subprotocol == page().subprotocol
    welcome = await frame(ws)
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


async def messages(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` messages; frames of other types (presence) are skipped, as the page
    tells a client to do with a type it does not handle."""
    received = []
    while len(received) < count:
        got = await frame(ws)
        if got["type"] == page().text_message["type"]:
            assert_like(got, page().text_message if "text" in got else page().bytes_message)
            received.append(got)
    return received


async def test_the_welcome_has_the_pages_fields_and_types(server):
    room = new_room()
    first, welcome = await join(server, room)
    second, other = await join(server, room, kind=1)
    try:
        for got in (welcome, other):
            assert_like(got, page().welcome)
            assert got["room"] == room
            assert got["offset"] == 0  # a room never written to
            # The page's example ids show the alphabet and the length.
            for field in ("member", "epoch"):
                assert re.fullmatch(r"[A-Za-z0-9_-]+", got[field]), got
                assert len(got[field]) == len(page().welcome[field]), got
        assert welcome["member"] != other["member"]
        assert welcome["epoch"] == other["epoch"]  # one room, one history
        await first.send("one message")
        for ws in (first, second):
            (message,) = await messages(ws, 1)
            assert message["offset"] == 1
        third, later = await join(server, room, since=page().since(welcome["epoch"], 1))
        assert_like(later, page().resumed_welcome)
        assert later["offset"] == 1 and later["recovered"] is True
        await third.close()
    finally:
        await first.close()
        await second.close()


async def test_messages_have_the_pages_fields_and_consecutive_offsets(server):
    """Text as sent, bytes in base64, ``from`` the sender's member id, offsets one by one from
    the welcome's, and the same sequence for every member, sync or async."""
    example = page().bytes_message["bytes"]
    assert base64.b64encode(base64.b64decode(example, validate=True)).decode() == example
    room = new_room()
    a, welcome_a = await join(server, room, kind=0)
    b, welcome_b = await join(server, room, kind=1)
    sent = {
        welcome_a["member"]: ["from a \U0001f4e3", b"\x00a\xff", "é", b"", "last of a"],
        welcome_b["member"]: [b"\x00\x01\xff" * 100, "from b", "", b"b", "last of b"],
    }
    try:
        for ws, member in ((a, welcome_a["member"]), (b, welcome_b["member"])):
            for body in sent[member]:
                await ws.send(body)
        seen = [await messages(ws, 10) for ws in (a, b)]
    finally:
        await a.close()
        await b.close()
    assert seen[0] == seen[1]  # one room, one order
    first = welcome_a["offset"] + 1
    assert [m["offset"] for m in seen[0]] == list(range(first, first + 10))
    for member, bodies in sent.items():
        got = [
            m["text"] if "text" in m else base64.b64decode(m["bytes"], validate=True)
            for m in seen[0]
            if m["from"] == member
        ]
        assert got == bodies  # each sender's in the order it sent them, text and bytes apart


async def test_a_resume_gets_exactly_the_missed_messages_then_live_ones(server):
    """Away while another member sends 5: the resume says recovered and brings exactly those 5,
    in order, then the live ones, with nothing twice at the seam."""
    room = new_room()
    other, _ = await join(server, room, kind=1)
    away, welcome = await join(server, room)
    try:
        await other.send("before")
        (last,) = await messages(away, 1)
        await away.close()
        for n in range(5):
            await other.send(f"missed {n}")
        before_and_missed = await messages(other, 6)  # in the room, each with its offset
        back, resumed = await join(
            server, room, since=page().since(welcome["epoch"], last["offset"])
        )
        assert_like(resumed, page().resumed_welcome)
        assert resumed["recovered"] is True
        assert resumed["epoch"] == welcome["epoch"]
        assert resumed["offset"] == before_and_missed[-1]["offset"]
        assert await messages(back, 5) == before_and_missed[1:]
        await other.send("live")
        (live,) = await messages(back, 1)
        assert live["text"] == "live" and live["offset"] == resumed["offset"] + 1
        await back.close()
    finally:
        await other.close()


async def test_a_resume_the_room_cannot_honour_says_not_recovered(server):
    """An epoch that is not the room's, or an offset beyond the room's last (the largest the
    page allows): ``recovered: false``, nothing replayed, live messages from the welcome's
    offset on."""
    room = new_room()
    other, welcome = await join(server, room, kind=1)
    try:
        for n in range(3):
            await other.send(f"before {n}")
        await messages(other, 3)
        epoch = welcome["epoch"]
        unknown = ("A" if epoch[0] != "A" else "B") + epoch[1:]  # one character off
        for since in (page().since(unknown, 3), page().since(epoch, 2**63 - 1)):
            ws, resumed = await join(server, room, since=since)
            assert_like(resumed, page().resumed_welcome)
            assert resumed["recovered"] is False, since
            assert resumed["epoch"] == epoch and resumed["offset"] >= 3
            await other.send("live")
            await messages(other, 1)
            (live,) = await messages(ws, 1)
            assert live["text"] == "live" and live["offset"] == resumed["offset"] + 1
            await ws.close()
    finally:
        await other.close()


async def test_a_malformed_since_is_refused_with_400(server):
    """The page's malformed values, and the edges of its rule: refused at the handshake with
    HTTP 400 and the reason."""
    room = new_room()
    edges = ["x" * 65 + ":1", "x:" + str(2**63), "x:1:2", "x:+1", "x: 1", "x:0x1", ":1", "x:"]
    assert page().malformed_since, "docs/rooms.md lists no malformed since"
    for value in [*page().malformed_since, *edges]:
        url = page().url(server, room) + "?since=" + urllib.parse.quote(value, safe=":")
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, subprotocols=[page().subprotocol]):
                pass
        assert refused.value.response.status_code == 400, value
        assert b"since" in refused.value.response.body, (value, refused.value.response.body)


class CuttableProxy:
    """A TCP relay to the server that the test can cut (a phone changing networks) and hold
    shut (the client's reconnects wait at the door until ``open()``)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.links: list[asyncio.StreamWriter] = []  # both ends of the relayed connections
        self.clients: list[asyncio.StreamWriter] = []  # every connection from the client
        self.requests: list[bytes] = []  # each connection's first bytes: its request line
        self.upgraded = asyncio.Event()  # the current connection's 101 has reached the client
        self.door = asyncio.Event()
        self.door.set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.relay, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def relay(self, client_r, client_w) -> None:
        self.clients.append(client_w)
        await self.door.wait()
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        self.links += [client_w, server_w]

        async def pump(reader, writer, on_first: Callable[[bytes], None]) -> None:
            with contextlib.suppress(OSError):
                if data := await reader.read(65536):
                    on_first(data)
                while data:
                    writer.write(data)
                    await writer.drain()
                    data = await reader.read(65536)
            writer.transport.abort()

        def upgraded(data: bytes) -> None:
            if data.startswith(b"HTTP/1.1 101"):
                self.upgraded.set()

        await asyncio.gather(
            pump(client_r, server_w, self.requests.append), pump(server_r, client_w, upgraded)
        )

    def cut(self) -> None:
        """Drop every connection without a close frame, and keep new ones at the door."""
        self.door.clear()
        self.upgraded.clear()
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()

    def open(self) -> None:
        self.door.set()

    async def stop(self) -> None:
        self.cut()
        for writer in self.clients:  # those held at the door too
            writer.transport.abort()
        self.server.close()
        await self.server.wait_closed()


async def test_the_pages_client_resumes_after_its_connection_is_cut(server):
    """The page's ``follow``, run as printed, through a connection the test cuts: it handles
    every message once, in order, those sent while it was away included."""
    namespace: dict[str, Any] = {"__name__": "rooms_page_client"}
    exec(compile(page().client, str(PAGE_PATH), "exec"), namespace)
    room = new_room()
    proxy = CuttableProxy(server.port)
    url = await proxy.start() + page().path(room)
    handled: list[dict[str, Any]] = []
    enough = asyncio.Event()
    wanted = 0

    def handle(message: dict[str, Any]) -> None:
        handled.append(message)
        if len(handled) >= wanted:
            enough.set()

    async def handled_up_to(count: int) -> None:
        nonlocal wanted
        wanted = count
        enough.clear()
        if len(handled) < count:
            await asyncio.wait_for(enough.wait(), FRAME_TIMEOUT)

    other, welcome = await join(server, room, kind=1)
    follower = asyncio.create_task(namespace["follow"](url, handle, retry=0.01))
    try:
        # The 101 reached the client: it is a member, and all that follows is after its welcome.
        await asyncio.wait_for(proxy.upgraded.wait(), FRAME_TIMEOUT)
        sent = [f"message {n}" for n in range(15)]
        for body in sent[:5]:
            await other.send(body)
        await handled_up_to(5)
        proxy.cut()
        for body in sent[5:10]:
            await other.send(body)
        room_view = await messages(other, 10)
        proxy.open()
        await asyncio.wait_for(proxy.upgraded.wait(), FRAME_TIMEOUT)
        for body in sent[10:]:
            await other.send(body)
        room_view += await messages(other, 5)
        await handled_up_to(15)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower  # raises what the page's client raised, if it did
        await proxy.stop()
        await other.close()
    assert handled == room_view  # each once, in order, with the room's offsets and senders
    assert [m["text"] for m in handled] == sent
    # It came back with the epoch and offset of the last message it had handled.
    resume = page().since(welcome["epoch"], handled[4]["offset"]).encode()
    assert len(proxy.requests) >= 2
    assert resume in proxy.requests[-1].split(b"\r\n")[0], proxy.requests
