"""A ``rooms.v1`` client for tests: members that resume, publishers, and the checker of streams.

A ``Member`` joins ``/ws/broadcast/{sync,async}/<room>/`` offering ``rooms.v1``, reads the
welcome, records ``offset -> content`` for every message, and when the server closes it with
1012 or 1013, or its TCP connection drops, connects again with ``?since=<epoch>:<last offset>``
(its home server first, then the others) and records the new welcome. ``check_streams``
then holds every member to the contract (docs/rooms.md, the ``rooms.v1`` protocol):

- within a run of connections joined by ``recovered: true`` resumes (a *segment*), the offsets
  are consecutive from the segment's first welcome, each once, in order;
- a ``recovered: false`` welcome starts a new segment at that welcome's offset;
- one ``(epoch, offset)`` carries the same message (sender and content) in every member;
- each member ends holding the room's final offset, in the final epoch;
- and, per test, which resumes must say recovered.

Waiting is on conditions (a member's offset, a publisher's window), never a fixed sleep; the
only sleeps are a client's retry interval and a publisher's pace.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import json
import re
import secrets
import socket
import struct
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

ROOMS_V1 = "rooms.v1"
#: Close codes after which a member resumes: service restart, try again later.
RESUMABLE = frozenset({1012, 1013})
EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}")
MEMBER_ID = re.compile(r"[A-Za-z0-9_-]{16}")
#: Frames about who is in the room, outside the offsets (presence, issue 31).
PRESENCE = frozenset({"join", "leave"})
#: What a member got at one offset: (sender's member id, "text" or "bytes", the content).
Content = tuple[str, str, str | bytes]


def new_room(prefix: str = "faults") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Connection:
    """One WebSocket of a member: how it began (``since``), what it got, how it ended."""

    server: str
    since: str | None
    welcome: dict
    local_port: int
    messages: list[tuple[int, Content]] = field(default_factory=list)
    close: tuple[int | None, str] | None = None  # (code, reason); code None: no close frame
    cut: bool = False  # the test cut its TCP connection
    presence: list[dict] = field(default_factory=list)  # join and leave frames

    @property
    def recovered(self) -> bool | None:
        return self.welcome.get("recovered") if self.since is not None else None


class Member:
    """One room member that resumes; ``servers`` are base URLs (``ws://127.0.0.1:port``)."""

    #: Members not yet stopped: a test that fails midway leaves them to its teardown.
    live: ClassVar[weakref.WeakSet[Member]] = weakref.WeakSet()

    def __init__(
        self,
        servers: Sequence[str],
        room: str,
        kind: str,
        *,
        name: str,
        home: int = 0,
        rcvbuf: int | None = None,
        reconnect_within: float = 20.0,
    ) -> None:
        self.servers, self.room, self.kind, self.name = list(servers), room, kind, name
        self.home, self.rcvbuf, self.reconnect_within = home, rcvbuf, reconnect_within
        self.connections: list[Connection] = []
        self.errors: list[str] = []
        self.epoch: str | None = None
        self.last: int | None = None  # the last offset of the current segment (or its welcome's)
        self.seen: dict[str | bytes, tuple[str, int]] = {}  # content -> (epoch, offset)
        self.ws: ClientConnection | None = None
        self.generation = 0  # connections opened so far
        self.stopping = False
        self.task: asyncio.Task | None = None
        self._waiters: list[tuple[Callable[[], object], asyncio.Future]] = []
        Member.live.add(self)

    def __repr__(self) -> str:
        return f"<Member {self.name} {self.kind} epoch={self.epoch} last={self.last}>"

    # --- the run ----------------------------------------------------------------------------

    async def start(self, since: str | None = None) -> Member:
        """Join (with ``since``, a first connection that resumes); returns once welcomed."""
        ws = await self._connect(since)
        self.task = asyncio.create_task(self._run(ws), name=f"member {self.name}")
        return self

    async def stop(self) -> None:
        self.stopping = True
        Member.live.discard(self)
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self.task is not None:
            if not self.task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(self.task), 5)
                except TimeoutError:
                    self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self, ws: ClientConnection) -> None:
        try:
            while True:
                connection = self.connections[-1]
                try:
                    while True:
                        self._on_frame(connection, await ws.recv())
                except ConnectionClosed as closed:
                    rcvd = closed.rcvd
                    connection.close = (rcvd.code, rcvd.reason) if rcvd else (None, "")
                self.ws = None
                self._changed()
                if self.stopping:
                    return
                code = connection.close[0]
                if code is not None and code not in RESUMABLE:
                    self.errors.append(f"closed with {connection.close}, not 1012/1013")
                    return
                ws = await self._connect(f"{self.epoch}:{self.last}")
        except Exception as error:  # recorded for the checker, which fails the test with it
            if not self.stopping:  # a reconnection the test's own stop cut short is no error
                self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            self._changed()

    async def _connect(self, since: str | None) -> ClientConnection:
        """A welcomed connection (with ``since``): the home server first, then each other, a
        client's retry interval between rounds, until ``reconnect_within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_within
        attempt, failures = 0, []
        while True:
            server = self.servers[(self.home + attempt) % len(self.servers)]
            try:
                return await self._open(server, since)
            except InvalidStatus as error:
                if error.response.status_code != 503:  # 503: channel layer unavailable
                    raise
                failures.append(f"503 {error.response.body[:80]!r}")
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as error:
                failures.append(f"{type(error).__name__}: {error}")
            attempt += 1
            if self.stopping or loop.time() > deadline:
                raise TimeoutError(f"no welcome in {self.reconnect_within} s: {failures[-3:]}")
            if attempt % len(self.servers) == 0:
                await asyncio.sleep(min(0.05 * attempt, 0.3))  # a client's retry interval

    async def _open(self, server: str, since: str | None) -> ClientConnection:
        url = f"{server}/ws/broadcast/{self.kind}/{self.room}/"
        if since is not None:
            url += f"?since={since}"
        sock = None
        if self.rcvbuf is not None:  # a small receive buffer: a paused reader looks full soon
            address = urlsplit(server)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(
                    sock, (address.hostname, address.port)
                )
            except OSError:
                sock.close()
                raise
        ws = await connect(
            url,
            subprotocols=[ROOMS_V1],
            sock=sock,
            open_timeout=10,
            close_timeout=3,
            ping_interval=None,  # the server pings; a paused member must not be closed by ours
            max_queue=None,  # only the test pauses reading (``pause``), never the library
            max_size=2**22,
        )
        try:
            if ws.subprotocol != ROOMS_V1:
                raise AssertionError(f"subprotocol {ws.subprotocol!r}, not {ROOMS_V1}")
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except BaseException:
            ws.transport.abort()
            raise
        self._welcomed(server, since, welcome, ws)
        return ws

    def _welcomed(self, server: str, since: str | None, welcome: dict, ws) -> None:
        problems = welcome_problems(welcome, self.room, resumed=since is not None)
        if problems:
            self.errors.append(f"welcome {welcome}: {problems}")
        connection = Connection(server, since, welcome, ws.local_address[1])
        self.connections.append(connection)
        if since is not None and welcome.get("recovered") is True:
            epoch, _, offset = since.rpartition(":")
            self.epoch, self.last = epoch, int(offset)  # the stream goes on from since
        else:
            self.epoch, self.last = welcome.get("epoch"), welcome.get("offset")
        self.ws = ws
        self.generation += 1
        self._changed()

    def _on_frame(self, connection: Connection, raw: str | bytes) -> None:
        if not isinstance(raw, str):
            self.errors.append(f"a binary frame from the server: {raw[:40]!r}")
            return
        try:
            message = json.loads(raw)
            if message.get("type") in PRESENCE:  # who joined or left (issue 31): no offset
                connection.presence.append(message)
                return
            assert message["type"] == "message", message
            offset = message["offset"]
            assert type(offset) is int, message
            sender = message["from"]
            if "text" in message:
                content: Content = (sender, "text", message["text"])
            else:
                content = (sender, "bytes", base64.b64decode(message["bytes"], validate=True))
        except (ValueError, KeyError, AssertionError, TypeError, binascii.Error) as error:
            self.errors.append(f"not a rooms.v1 message: {raw[:200]!r} ({error!r})")
            return
        connection.messages.append((offset, content))
        self.last = offset
        self.seen.setdefault(content[2], (self.epoch, offset))
        self._changed()

    # --- what a test does with it -----------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.task is not None and self.task.done()

    def _changed(self) -> None:
        for condition, future in self._waiters:
            if not future.done() and (self.ended or condition()):
                future.set_result(None)

    async def wait_until(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Until ``condition()`` holds; fails after ``timeout`` s, or at once if the member ended."""
        if condition():
            return
        future = asyncio.get_running_loop().create_future()
        waiter = (condition, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: {what} not within {timeout} s; {self.story()}"
            ) from None
        finally:
            self._waiters.remove(waiter)
        if not condition():
            raise AssertionError(f"{self.name} ended before {what}: {self.story()}")

    async def reach(self, offset: int, epoch: str | None = None, timeout: float = 20) -> None:
        """Until the member holds ``offset`` (in ``epoch``)."""
        await self.wait_until(
            lambda: (
                self.last is not None
                and self.last >= offset
                and (epoch is None or self.epoch == epoch)
            ),
            timeout,
            f"offset {offset} (epoch {epoch})",
        )

    async def send(self, data: str | bytes, timeout: float = 20) -> bool:
        """Send on the current connection (waiting for one); False if it closed meanwhile."""
        await self.wait_until(lambda: self.ws is not None, timeout, "a connection to send on")
        try:
            await self.ws.send(data)
        except ConnectionClosed:
            return False
        return True

    def cut(self, *, reset: bool = False) -> None:
        """Cut the TCP connection without a WebSocket close (``reset``: with an RST)."""
        assert self.ws is not None, f"{self.name} is not connected"
        self.connections[-1].cut = True
        if reset:
            sock = self.ws.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.transport.abort()

    def pause(self) -> None:
        """Stop reading from the socket: the server's writes back up, as to a stalled phone."""
        assert self.ws is not None, f"{self.name} is not connected"
        self.ws.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.ws is not None:
            self.ws.transport.resume_reading()

    @property
    def closes(self) -> list[tuple[int | None, str]]:
        return [c.close for c in self.connections if c.close is not None]

    @property
    def resumes(self) -> list[Connection]:
        return [c for c in self.connections if c.since is not None]

    def story(self) -> str:
        """The member's connections, in one line each, for a failure message."""
        lines = [f"{self.name} ({self.kind}) errors={self.errors[:3]}"]
        for c in self.connections[-8:]:
            offsets = [o for o, _ in c.messages]
            span = f"{offsets[0]}..{offsets[-1]} ({len(offsets)})" if offsets else "none"
            lines.append(
                f"  {c.server} since={c.since} welcome={c.welcome} got {span} close={c.close}"
                f"{' cut' if c.cut else ''}"
            )
        return "\n".join(lines)


def welcome_problems(welcome: dict, room: str, *, resumed: bool) -> list[str]:
    problems = []
    if welcome.get("type") != "welcome":
        problems.append("type is not welcome")
    if welcome.get("room") != room:
        problems.append(f"room is not {room}")
    if not (isinstance(welcome.get("member"), str) and MEMBER_ID.fullmatch(welcome["member"])):
        problems.append("member is not 16 of [A-Za-z0-9_-]")
    if not (isinstance(welcome.get("epoch"), str) and EPOCH.fullmatch(welcome["epoch"])):
        problems.append("epoch is not [A-Za-z0-9_-]")
    if not (type(welcome.get("offset")) is int and welcome["offset"] >= 0):
        problems.append("offset is not a non-negative integer")
    if resumed and type(welcome.get("recovered")) is not bool:
        problems.append("a resume's welcome without recovered: true|false")
    if not resumed and "recovered" in welcome:
        problems.append("recovered without since")
    return problems


# --- publishing -----------------------------------------------------------------------------


class Traffic:
    """Publishers (members) each sending ``name:n`` messages, every fifth as bytes, at a pace,
    with at most ``window`` of its own not yet heard back, until ``stop()`` or ``most`` each.

    A message whose connection closed before it came back may or may not be in the room: the
    publisher forgets it (it was either published, with an offset, or never was)."""

    def __init__(
        self,
        publishers: Iterable[Member],
        *,
        interval: float = 0.02,
        most: int = 300,
        window: int = 8,
        pad: int = 0,
    ) -> None:
        self.publishers = list(publishers)
        self.interval, self.most, self.window, self.pad = interval, most, window, pad
        self.sent = 0
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    def start(self) -> Traffic:
        tag = uuid.uuid4().hex[:6]
        self.tasks = [
            asyncio.create_task(self._publish(member, f"{tag}-{member.name}"))
            for member in self.publishers
        ]
        return self

    async def _publish(self, member: Member, name: str) -> None:
        pending: list[str | bytes] = []
        generation = member.generation

        def room_in_window() -> bool:
            nonlocal pending, generation
            if member.generation != generation:  # reconnected: what was in flight is settled
                pending, generation = [], member.generation
            pending = [data for data in pending if data not in member.seen]
            return len(pending) < self.window

        for n in range(self.most):
            if self.stopping.is_set():
                break
            text = f"{name}:{n}:{secrets.token_urlsafe(self.pad * 3 // 4)}"  # not compressible
            data: str | bytes = text.encode() if n % 5 == 4 else text
            await member.wait_until(room_in_window, 30, f"{name}'s window")
            if await member.send(data):
                pending.append(data)
                self.sent += 1
            if self.interval:
                await asyncio.sleep(self.interval)  # the publisher's pace, not a wait for anything
        # Settled: everything it sent has come back, or its connection changed since.
        await member.wait_until(
            lambda: room_in_window() and not pending, 30, f"{name}'s last messages back"
        )

    async def stop(self) -> int:
        """Stop publishing; returns once every publisher's messages are settled."""
        self.stopping.set()
        await asyncio.gather(*self.tasks)
        return self.sent

    async def done(self) -> int:
        """Each publisher's ``most`` sent and settled."""
        await asyncio.gather(*self.tasks)
        return self.sent


async def mark_end(member: Member, timeout: float = 20) -> tuple[str, int]:
    """Publish an end mark through ``member`` and return its (epoch, offset): the room's final
    message once the test's publishers have stopped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        mark = f"end:{uuid.uuid4().hex}"
        generation = member.generation
        if await member.send(mark, timeout=max(deadline - loop.time(), 0.1)):
            await member.wait_until(
                lambda: mark in member.seen or member.generation != generation,  # noqa: B023
                max(deadline - loop.time(), 0.1),
                "the end mark back",
            )
            if mark in member.seen:
                return member.seen[mark]
        assert loop.time() < deadline, f"no end mark through {member.name} in {timeout} s"


async def finish(members: Sequence[Member], closer: Member, timeout: float = 20) -> tuple[str, int]:
    """The end mark, then every member holding it; then every member leaves. Returns the
    final (epoch, offset)."""
    epoch, final = await mark_end(closer, timeout)
    try:
        await asyncio.gather(*(m.reach(final, epoch, timeout) for m in members))
    finally:
        await asyncio.gather(*(m.stop() for m in members))
    return epoch, final


# --- the checker ----------------------------------------------------------------------------

#: Per resume, what its welcome must say: True, False, or None for either.
Expectation = bool | None | Callable[[Member, Connection], bool | None]


@dataclass
class Summary:
    members: int = 0
    messages: int = 0
    resumes: int = 0
    recovered: int = 0
    not_recovered: int = 0
    closes: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.members} members, {self.messages} deliveries, {self.resumes} resumes "
            f"({self.recovered} recovered, {self.not_recovered} not), closes {self.closes}"
        )


def check_streams(
    members: Sequence[Member],
    *,
    final: tuple[str, int] | None,
    recovered: Expectation = None,
) -> Summary:
    """Every member against the contract (the module's doc); raises AssertionError listing
    the problems, else returns what was seen."""
    problems: list[str] = []
    summary = Summary(members=len(members))
    contents: dict[tuple[str, int], tuple[Content, str]] = {}
    ids = collections.Counter(c.welcome.get("member") for m in members for c in m.connections)
    problems += [f"member id {i} given to {n} connections" for i, n in ids.items() if n > 1]
    for member in members:
        problems += [f"{member.name}: {error}" for error in member.errors]
        epoch: str | None = None
        expected: int | None = None  # the next offset this member must get
        for index, connection in enumerate(member.connections):
            welcome = connection.welcome
            if connection.close is not None:
                code = connection.close[0]
                summary.closes[code] = summary.closes.get(code, 0) + 1
            if connection.since is not None:
                summary.resumes += 1
                since_epoch, _, since_offset = connection.since.rpartition(":")
                if index and (since_epoch, int(since_offset)) != (epoch, expected - 1):
                    problems.append(
                        f"{member.name}: resumed with since={connection.since}, but held"
                        f" {epoch}:{expected - 1}"
                    )
                want = recovered(member, connection) if callable(recovered) else recovered
                got = welcome.get("recovered")
                if got is True:
                    summary.recovered += 1
                elif got is False:
                    summary.not_recovered += 1
                if want is not None and got is not want:
                    problems.append(
                        f"{member.name}: resume since={connection.since} said recovered={got},"
                        f" expected {want} (welcome {welcome}; before it: {member.connections[index - 1].close if index else None})"
                    )
                if got is True:
                    if welcome.get("epoch") != since_epoch:
                        problems.append(f"{member.name}: recovered true across epochs: {welcome}")
                    epoch, expected = since_epoch, int(since_offset) + 1
                else:
                    epoch, expected = welcome.get("epoch"), welcome.get("offset", 0) + 1
            else:
                epoch, expected = welcome.get("epoch"), welcome.get("offset", 0) + 1
            for offset, content in connection.messages:
                summary.messages += 1
                if offset != expected:
                    what = "a duplicate or reordering" if offset < expected else "a gap"
                    problems.append(
                        f"{member.name}: {what}: got offset {offset}, expected {expected}"
                        f" (connection {index}, since={connection.since},"
                        f" recovered={connection.recovered})"
                    )
                expected = offset + 1
                key = (epoch, offset)
                if key not in contents:
                    contents[key] = (content, member.name)
                elif contents[key][0] != content:
                    other, who = contents[key]
                    problems.append(
                        f"{member.name}: {epoch}:{offset} carries {content!r:.120},"
                        f" {who} got {other!r:.120} there"
                    )
        if final is not None and epoch != final[0]:
            problems.append(f"{member.name}: ended in epoch {epoch}, not the final {final[0]}")
        elif final is not None and (expected or 0) - 1 < final[1]:
            problems.append(
                f"{member.name}: ended at offset {(expected or 0) - 1}, short of {final[1]}"
            )
    if problems:
        stories = "\n".join(m.story() for m in members if any(m.name in p for p in problems))
        shown = "\n".join(problems[:25])
        raise AssertionError(
            f"{len(problems)} problem(s), {summary}:\n{shown}\n--- members ---\n{stories[:6000]}"
        )
    return summary
