"""Rooms that lose nothing (issue 30): ``rooms.v1`` members through the faults production meets.

Each test runs a bounded stream (tens to a few hundred messages) from publishers on both
processes, to sync and async members on both, breaks something on the way, and then holds every
member to the contract with ``tests.room_client.check_streams``: from its welcome to the room's
final offset, every offset once and in order across each resume that said ``recovered: true``; a
``recovered: false`` resume starts again at its welcome; one offset carries one message in every
member; and each test says which resumes must have recovered. No sleep stands for a wait: a
test waits on a member reaching an offset, a publisher's window, a log line, a process exiting.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import socket
import time
import uuid
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
import pytest_asyncio
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import assert_clean_log
from tests.redis_server import RedisServer, redis_missing
from tests.room_client import (
    ROOMS_V1,
    Member,
    Traffic,
    check_streams,
    finish,
    mark_end,
    new_room,
)
from tests.servers import LiveServer
from tests.test_redis import broadcast_command
from tests.test_sentinel import cluster, master_port, wait_until  # noqa: F401 (cluster: a fixture)

pytestmark = [pytest.mark.server, pytest.mark.redis, pytest.mark.asyncio]

#: Small queues, so that a member that stops reading falls behind within a few hundred messages:
#: 50 messages queued for it in the process, and its sends wait past 4 x 16 KiB unsent. The
#: kernel still holds ~2.8 MB for it (the server's socket's send buffer grows to 4 MiB), so the
#: slow member's test sends 16 KiB messages, and history holds that many bytes.
SMALL_QUEUES = {
    "CHANNEL_CAPACITY": "50",
    "WEBSOCKET_WRITE_BUFFER_BYTES": "16384",
    "ROOM_HISTORY_BYTES": str(64 * 1024 * 1024),
    "WEBSOCKET_SEND_TIMEOUT": "30",  # a paused member is not dropped (1008) on a slow machine
}
#: The server's line for an event dropped for a member whose queue was full (a room message,
#: or a presence frame that found the queue full first).
DROPPED = r"WARNING app\.layers\S* dropped a room\.\w+ for \S+: channel full"
KINDS = ("sync", "async")
FELL_PAST_HISTORY = re.compile(
    r"fell behind past the room's history: \d+ message\(s\) lost, resume"
)


@pytest_asyncio.fixture(autouse=True)
async def _members_leave():
    """A test that fails midway leaves members running: they leave here."""
    yield
    await asyncio.gather(*(m.stop() for m in list(Member.live)), return_exceptions=True)


class Cluster:
    """``manage.py serve`` processes; ``restart`` brings one back on its own port. Every log,
    of the processes stopped on the way too, must be clean at the end."""

    def __init__(self, env: dict[str, str], count: int = 2, extra: tuple[str, ...] = ()):
        self.env, self.extra = env, extra
        self.servers = [LiveServer("uvicorn", env=env, extra=extra) for _ in range(count)]
        self.retired: list[LiveServer] = []
        for server in self.servers:
            server.wait_ready()

    @property
    def urls(self) -> list[str]:
        return [server.ws_url for server in self.servers]

    def restart(self, index: int, sig: int = signal.SIGTERM) -> None:
        """``sig`` to one process, wait for it to exit, and start it again on the same port."""
        old = self.servers[index]
        os.kill(old.process.pid, sig)
        old.process.wait(20)
        old.stop()
        self.retired.append(old)
        with mock.patch("tests.servers.free_port", return_value=old.port):
            new = LiveServer("uvicorn", env=self.env, extra=self.extra)
        self.servers[index] = new.wait_ready()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def logs(self) -> list[str]:
        return [server.log() for server in [*self.retired, *self.servers]]

    def assert_clean(self) -> None:
        for log in self.logs():
            assert_clean_log(log)


def cluster_fixture(env: dict[str, str], **kwargs):
    servers = Cluster(env, **kwargs)
    try:
        yield servers
    finally:
        servers.stop()
    servers.assert_clean()


@pytest.fixture(scope="module")
def pair(redis_server, server_env):
    """Two ``serve`` processes on one Redis (the default engine there), small queues."""
    yield from cluster_fixture({**server_env, **SMALL_QUEUES, "REDIS_URL": redis_server.url})


@pytest.fixture(scope="module")
def workers(redis_server, server_env):
    """``serve --workers 2`` on one Redis."""
    env = {**server_env, **SMALL_QUEUES, "REDIS_URL": redis_server.url}
    yield from cluster_fixture(env, count=1, extra=("--workers", "2"))


@pytest.fixture(scope="module")
def memory(server_env):
    """One ``serve`` process on the in-memory engine, small queues."""
    env = {**server_env, **SMALL_QUEUES, "REDIS_URL": "", "REDIS_SENTINELS": ""}
    yield from cluster_fixture(env, count=1)


async def join(urls: list[str], room: str, *, each: int = 2, **kwargs) -> list[Member]:
    """``each`` members of each kind on each server, joined together; the first of each
    (server, kind) publishes (``publishers``)."""
    members = [
        Member(urls, room, kind, name=f"p{home}-{kind}-{i}", home=home, **kwargs)
        for home in range(len(urls))
        for kind in KINDS
        for i in range(each)
    ]
    await asyncio.gather(*(member.start() for member in members))
    return members


def publishers(members: list[Member]) -> list[Member]:
    return [m for m in members if m.name.endswith("-0")]


async def progress(watcher: Member, messages: int) -> None:
    """Until ``watcher`` has ``messages`` more than now: the room moved on."""
    await watcher.reach(watcher.last + messages, timeout=20)


def closes_before_the_end(members: list[Member]) -> collections.Counter:
    """How each member's connections ended, but the last one (the test's own close)."""
    return collections.Counter(c.close[0] for m in members for c in m.connections[:-1])


# --- restarts -------------------------------------------------------------------------------


async def test_a_rolling_restart_of_two_processes_loses_nothing(pair, redis_server):
    """SIGTERM to one process, then start it again on its port; then the other. Members are
    closed 1012, come back with ``since`` (on the other process while theirs is down) and every
    resume recovers: each stream is whole. ``manage.py broadcast`` publishes meanwhile, through
    the same path: its message has an offset like the others."""
    room = new_room()
    pushed = f"pushed during the restart {uuid.uuid4().hex}"
    async with asyncio.timeout(60):
        members = await join(pair.urls, room)
        watcher = members[1]
        traffic = Traffic(publishers(members), interval=0.04).start()
        await progress(watcher, 30)
        _, result = await asyncio.gather(
            asyncio.to_thread(pair.restart, 0),
            asyncio.to_thread(broadcast_command, redis_server.url, room, pushed),
        )
        assert result.returncode == 0, result.stderr
        await progress(watcher, 30)
        await asyncio.to_thread(pair.restart, 1)
        await progress(watcher, 30)
        await traffic.stop()
        final = await finish(members, closer=members[1])
    summary = check_streams(members, final=final, recovered=True)
    print(summary)
    assert all(member.resumes for member in members), "every member was on a restarted process"
    assert set(closes_before_the_end(members)) == {1012}, closes_before_the_end(members)
    for member in members:
        got = [c for c in member.connections for _, c in c.messages if c[2] == pushed]
        assert got == [("broadcast", "text", pushed)], member.story()


def worker_of(server: LiveServer, member: Member) -> int:
    """The pid of the worker that accepted ``member``'s current connection."""
    port = member.connections[-1].local_port
    pattern = rf"app\.ws\[(\d+)\] \[ws#\d+ \w+ 127\.0\.0\.1:{port} \S+\] accepted"
    return int(server.wait_for_log(pattern).group(1))


async def join_both_workers(server: LiveServer, room: str) -> tuple[list[Member], dict]:
    """Members joined one at a time (the kernel picks the worker that accepts) until each
    worker holds a sync and an async one, and there are at least 6; {name: worker pid}."""
    members: list[Member] = []
    where: dict[str, int] = {}
    for i in range(60):
        kind = KINDS[i // 2 % 2]  # not in step with the workers, which may take turns
        member = await Member([server.ws_url], room, kind, name=f"w{i}-{kind}").start()
        members.append(member)
        where[member.name] = await asyncio.to_thread(worker_of, server, member)
        spread = {(where[m.name], m.kind) for m in members}
        if len(spread) == 4 and len(members) >= 6:
            return members, where
    raise AssertionError(f"60 members did not reach both workers with both kinds: {where}")


def one_per_worker_and_kind(members: list[Member], where: dict) -> list[Member]:
    chosen: dict[tuple[int, str], Member] = {}
    for member in members:
        chosen.setdefault((where[member.name], member.kind), member)
    return list(chosen.values())


async def test_sighup_to_serve_with_two_workers_replaces_both_and_loses_nothing(workers):
    """uvicorn's SIGHUP starts a new worker, then stops an old one (SIGTERM: 1012), one at a
    time; members come back through the same port to whichever worker accepts, and recover."""
    (server,) = workers.servers
    room = new_room()
    async with asyncio.timeout(60):
        members, before = await join_both_workers(server, room)
        print(f"members per worker: {collections.Counter(before.values())}")
        watcher = members[1]
        traffic = Traffic(one_per_worker_and_kind(members, before), interval=0.04).start()
        await progress(watcher, 30)
        os.kill(server.process.pid, signal.SIGHUP)
        await asyncio.to_thread(
            server.wait_for_log,
            r"Terminated child process \[\d+\][\s\S]*Terminated child process \[\d+\]",
            30,
        )
        await progress(watcher, 30)
        await traffic.stop()
        final = await finish(members, closer=members[1])
    summary = check_streams(members, final=final, recovered=True)
    print(summary)
    assert all(member.resumes for member in members), "both workers were replaced"
    assert set(closes_before_the_end(members)) == {1012}, closes_before_the_end(members)


async def test_sigkill_of_one_worker_its_members_resume_elsewhere_and_recover(workers):
    """SIGKILL to the worker holding most members: no close frame, the TCP connection drops;
    they come back through the port (the other worker, or uvicorn's replacement) and recover."""
    (server,) = workers.servers
    room = new_room()
    async with asyncio.timeout(60):
        members, where = await join_both_workers(server, room)
        victim, _ = collections.Counter(where.values()).most_common(1)[0]
        print(f"members per worker: {collections.Counter(where.values())}; killing {victim}")
        watcher = next(m for m in members if where[m.name] != victim)
        traffic = Traffic(one_per_worker_and_kind(members, where), interval=0.04).start()
        await progress(watcher, 30)
        doomed = [m for m in members if where[m.name] == victim]
        os.kill(victim, signal.SIGKILL)
        for member in doomed:
            await member.wait_until(
                lambda m=member: len(m.connections) >= 2 and m.ws is not None, 20, "a resume"
            )
        await progress(watcher, 30)
        await traffic.stop()
        final = await finish(members, closer=watcher)
        await asyncio.to_thread(server.wait_for_log, rf"Child process \[{victim}\] died", 10)
    summary = check_streams(members, final=final, recovered=True)
    print(summary)
    assert all(m.resumes for m in doomed)
    assert set(closes_before_the_end(doomed)) == {None}, closes_before_the_end(doomed)


async def test_sigkill_of_one_of_two_processes_and_its_restart_loses_nothing(pair):
    room = new_room()
    async with asyncio.timeout(60):
        members = await join(pair.urls, room)
        watcher = members[-1]  # on the process that lives
        traffic = Traffic(publishers(members), interval=0.04).start()
        await progress(watcher, 30)
        await asyncio.to_thread(pair.restart, 0, signal.SIGKILL)
        await progress(watcher, 30)
        await traffic.stop()
        final = await finish(members, closer=members[-1])
    summary = check_streams(members, final=final, recovered=True)
    print(summary)
    killed = [m for m in members if m.home == 0]
    assert all(m.resumes for m in killed)
    assert set(closes_before_the_end(killed)) == {None}, closes_before_the_end(killed)


# --- a member that stops reading --------------------------------------------------------------


class PlainReader:
    """A member that does not offer ``rooms.v1`` (today's plain forwarding): what it reads,
    and how it was closed. It has no offsets: what it got must be a run of consecutive offsets
    of the room, as the ``rooms.v1`` members saw them."""

    def __init__(self) -> None:
        self.got: list[str | bytes] = []
        self.close: int | str | None = "open"
        self.end: str | bytes | None = None
        self.done = asyncio.Event()  # it got ``end``, or was closed

    async def start(self, server: str, room: str, kind: str, *, rcvbuf: int) -> PlainReader:
        address = urlsplit(server)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (address.hostname, address.port))
        self.ws = await connect(
            f"{server}/ws/broadcast/{kind}/{room}/", sock=sock, ping_interval=None, max_queue=None
        )
        self.task = asyncio.create_task(self.read())
        return self

    async def read(self) -> None:
        try:
            async for message in self.ws:
                self.got.append(message)
                if message == self.end:
                    self.done.set()
        except ConnectionClosed as closed:
            self.close = closed.rcvd.code if closed.rcvd else None
        else:
            self.close = self.ws.close_code
        self.done.set()

    async def until_end(self, end: str | bytes, timeout: float = 20) -> None:
        self.end = end
        if end in self.got:
            self.done.set()
        await asyncio.wait_for(self.done.wait(), timeout)

    async def stop(self) -> None:
        await self.ws.close()
        await self.task

    def offsets(self, members: list[Member]) -> list[int]:
        """The offsets of what it got, from what the ``rooms.v1`` members got."""
        offset_of = {
            content[2]: offset
            for member in members
            for connection in member.connections
            for offset, content in connection.messages
        }
        return [offset_of[message] for message in self.got]


async def slow_member_run(
    servers: Cluster,
) -> tuple[list[Member], list[Member], PlainReader, tuple]:
    """Two members (one sync, one async, on different processes where there are two) stop
    reading at the socket while the others send 360 messages of 16 KiB (5.6 MiB: past what
    the sockets (~2.8 MB), the server's write buffer (64 KiB) and 50 queued messages hold); the
    others read on. A plain member (no ``rooms.v1``) stops reading with them. Then the slow ones
    read again, and everyone must reach the end mark. The server's log says it dropped messages
    for them: they did fall behind."""
    urls = servers.urls
    room = new_room()
    async with asyncio.timeout(60):
        members = await join(urls, room, each=1)
        slow = [
            Member(urls, room, kind, name=f"slow-{kind}", home=i % len(urls), rcvbuf=4096)
            for i, kind in enumerate(KINDS)
        ]
        await asyncio.gather(*(m.start() for m in slow))
        plain = await PlainReader().start(urls[-1], room, "async", rcvbuf=4096)
        plain.ws.transport.pause_reading()
        for member in slow:
            member.pause()
        await Traffic(members, interval=0, most=360 // len(members), pad=16384).start().done()
        epoch, final = await mark_end(members[0])
        await asyncio.gather(*(m.reach(final, epoch) for m in members))
        for server in servers.servers:
            await asyncio.to_thread(server.wait_for_log, DROPPED, 10)
        for member in slow:
            assert member.last < final - 100, f"{member} read while paused"
            member.resume_reading()
        plain.ws.transport.resume_reading()
        await plain.until_end(next(d for d, (_, o) in members[0].seen.items() if o == final))
        final = await finish([*members, *slow], closer=members[0])
        await plain.stop()
    return members, slow, plain, final


async def slow_member_catches_up(servers: Cluster) -> None:
    members, slow, plain, final = await slow_member_run(servers)
    summary = check_streams([*members, *slow], final=final, recovered=True)
    print(summary, [m.closes for m in slow], f"plain: {len(plain.got)} messages, {plain.close}")
    for member in slow:  # mended in place, or closed 1013 and resumed (recovered, checked above)
        assert {code for code, _ in member.closes[:-1]} <= {1013}, member.story()
    # The plain member has the same delivery rules, mended from history: every message, once.
    assert plain.offsets([*members, *slow]) == list(range(1, final[1] + 1)), plain.close


async def test_a_member_that_stops_reading_gets_everything_when_it_reads_again(pair):
    await slow_member_catches_up(pair)


async def test_a_member_that_stops_reading_in_memory_gets_everything_when_it_reads_again(memory):
    await slow_member_catches_up(memory)


async def test_a_member_that_falls_past_the_history_is_closed_and_resumes_not_recovered(
    redis_server, server_env
):
    """The same run with a history of 20 messages: the slow members missed more than that, so
    each is closed 1013 saying so, and its resume says recovered: false."""
    env = {**server_env, **SMALL_QUEUES, "REDIS_URL": redis_server.url, "ROOM_HISTORY_SIZE": "20"}
    servers = Cluster(env)
    try:
        members, slow, plain, final = await slow_member_run(servers)
    finally:
        servers.stop()
    servers.assert_clean()
    # A member that reads may fall behind too at this pace (4 publishers at full speed, 50
    # queued): closed the same way, it resumes not recovered, and is checked all the same.
    summary = check_streams(
        [*members, *slow], final=final, recovered=lambda m, c: False if m in slow else None
    )
    print(summary)
    for member in slow:
        code, reason = member.connections[0].close
        assert code == 1013 and FELL_PAST_HISTORY.fullmatch(reason), member.story()
        assert member.resumes and member.resumes[0].recovered is False, member.story()
    for member in members:
        for code, reason in member.closes[:-1]:
            assert code == 1013 and FELL_PAST_HISTORY.fullmatch(reason), member.story()
    # The plain member fell past the history as well: told, after a gap-free start.
    offsets = plain.offsets([*members, *slow])
    assert offsets == list(range(1, len(offsets) + 1)) and plain.close == 1013, plain.close


# --- a TCP connection cut without a close ----------------------------------------------------


async def cuts_resume(urls: list[str], pace: str) -> None:
    """Members on every (process, kind) have their TCP connection cut (FIN or RST, no close
    frame), twice, while publishers send; each resumes and recovers everything. ``paced``: 50
    messages a second each; ``burst``: as fast as their windows go, so that the resumes' seams
    (what is replayed, then what is live) fall inside the burst."""
    room = new_room()
    async with asyncio.timeout(60):
        members = await join(urls, room)
        victims = [m for m in members if not m.name.endswith("-0")]  # not the publishers
        watcher = publishers(members)[0]
        if pace == "paced":
            traffic = Traffic(publishers(members), interval=0.02).start()
        else:
            traffic = Traffic(publishers(members), interval=0, most=600 // len(urls)).start()
        for round_ in range(2):
            await progress(watcher, 20)
            for i, member in enumerate(victims):
                member.cut(reset=bool((i + round_) % 2))
            for member in victims:
                await member.wait_until(
                    lambda m=member: len(m.connections) >= round_ + 2 and m.ws is not None,  # noqa: B023
                    20,
                    "a resume",
                )
        if pace == "paced":
            await progress(watcher, 20)
            await traffic.stop()
        else:
            await traffic.done()
        final = await finish(members, closer=watcher)
    summary = check_streams(members, final=final, recovered=True)
    print(summary)
    assert all(len(m.resumes) == 2 for m in victims), [m.story() for m in victims]


@pytest.mark.parametrize("pace", ["paced", "burst"])
async def test_a_tcp_connection_cut_without_a_close_resumes_with_nothing_missing(pair, pace):
    await cuts_resume(pair.urls, pace)


@pytest.mark.parametrize("pace", ["paced", "burst"])
async def test_a_tcp_connection_cut_in_memory_resumes_with_nothing_missing(memory, pace):
    await cuts_resume(memory.urls, pace)


async def test_a_restart_of_the_in_memory_process_starts_a_new_epoch_and_says_not_recovered(
    memory,
):
    """The in-memory engine's history dies with its process: members closed 1012 resume into a
    new epoch, told recovered: false, and go on from there."""
    room = new_room()
    async with asyncio.timeout(60):
        members = await join(memory.urls, room)
        await Traffic(publishers(members), interval=0, most=10).start().done()
        old_epoch, before = await mark_end(members[0])
        await asyncio.gather(*(m.reach(before, old_epoch) for m in members))
        await asyncio.to_thread(memory.restart, 0)
        for member in members:
            await member.wait_until(
                lambda m=member: m.ws is not None and m.epoch != old_epoch, 20, "a resume"
            )
        await Traffic(publishers(members), interval=0, most=10).start().done()
        final = await finish(members, closer=members[0])
    summary = check_streams(members, final=final, recovered=False)
    print(summary)
    assert final[0] != old_epoch
    assert all(m.resumes for m in members)
    assert set(closes_before_the_end(members)) == {1012}, closes_before_the_end(members)


# --- bad input ------------------------------------------------------------------------------

MALFORMED_SINCE = [
    "",
    "abc",
    "abc:",
    ":5",
    "abc:-1",
    "abc:1.0",
    "abc:+1",
    "abc:0x10",
    "abc:1e3",
    "abc: 1",
    "abc:1 ",
    "ab c:1",
    "ab!c:1",
    "ab.c:1",
    "\u00e9poch:1",
    "abc:\u0661",  # an Arabic-Indic one: int() takes it, the contract does not
    "abc:\uff11",  # a fullwidth one
    "a" * 65 + ":1",
    f"abc:{2**63}",
    "abc:" + "9" * 40,
    "abc:1:2x",
]


async def test_a_malformed_since_is_refused_at_the_handshake_with_400_and_the_reason(pair):
    room = new_room()
    refused = []
    for i, since in enumerate(MALFORMED_SINCE):
        server, kind = pair.urls[i % 2], KINDS[i // 2 % 2]
        url = f"{server}/ws/broadcast/{kind}/{room}/?since={quote(since, safe='')}"
        with pytest.raises(InvalidStatus) as error:
            async with connect(url, subprotocols=[ROOMS_V1], open_timeout=10):
                pass
        response = error.value.response
        assert response.status_code == 400, (since, response.status_code, response.body)
        assert b"since" in response.body, (since, response.body)
        refused.append((since, response.body.decode()))
    print(*refused, sep="\n")
    # A since given twice is malformed too.
    with pytest.raises(InvalidStatus) as error:
        url = f"{pair.urls[0]}/ws/broadcast/async/{room}/?since=abc:1&since=abc:2"
        async with connect(url, subprotocols=[ROOMS_V1], open_timeout=10):
            pass
    assert error.value.response.status_code == 400
    for log in pair.logs():
        assert_clean_log(log)


async def test_resumes_the_room_cannot_honour_say_recovered_false_and_the_others_recover(pair):
    """A room with 5 messages. Resumes beyond its last offset, at a huge offset, at the
    largest one allowed, or under an unknown epoch say recovered: false and go on live from
    the room's last offset; resumes within it recover exactly what follows."""
    room = new_room()
    async with asyncio.timeout(30):
        first = await Member(pair.urls, room, "async", name="first").start()
        for n in range(5):
            await first.send(f"before-{n}")
        await first.reach(5)
        epoch = first.epoch
        cases = {
            "beyond": (f"{epoch}:50", False),
            "huge": (f"{epoch}:{10**18}", False),
            "largest": (f"{epoch}:{2**63 - 1}", False),
            "unknown-epoch": ("nOtAnEpOcH12:3", False),
            "long-unknown-epoch": ("Z" * 64 + ":3", False),
            "from-zero": (f"{epoch}:0", True),
            "from-three": (f"{epoch}:3", True),
            "at-last": (f"{epoch}:5", True),
        }
        resuming = {
            name: Member(pair.urls, room, KINDS[i % 2], name=name, home=i // 2 % 2)
            for i, name in enumerate(cases)
        }
        await asyncio.gather(*(m.start(since=cases[name][0]) for name, m in resuming.items()))
        final = await finish([first, *resuming.values()], closer=first)
    expected = {m.name: cases[m.name][1] for m in resuming.values()}
    check_streams([first, *resuming.values()], final=final, recovered=lambda m, c: expected[m.name])
    for name, member in resuming.items():
        welcome = member.connections[0].welcome
        assert welcome["epoch"] == epoch and welcome["offset"] == 5, (name, welcome)
    got = {name: [o for o, _ in m.connections[0].messages] for name, m in resuming.items()}
    assert got["from-zero"][:6] == [1, 2, 3, 4, 5, 6], got
    assert got["from-three"][:3] == [4, 5, 6], got
    assert got["at-last"][:1] == [6], got


async def test_a_storm_of_500_resumes_at_once_recovers_every_one(pair):
    """500 members resume together, from offsets all over a 100-message history, across both
    processes and both kinds, while publishers on both processes go on and 20 new members
    join: each recovers exactly what it missed, then every live message, within a bound."""
    room = new_room()
    async with asyncio.timeout(60):
        members = await join(pair.urls, room, each=1)
        await Traffic(members[:2], interval=0, most=50).start().done()
        await members[0].reach(100)
        epoch = members[0].epoch
        storm = [
            Member(pair.urls, room, KINDS[i % 2], name=f"storm-{i}", home=i // 2 % 2)
            for i in range(500)
        ]
        # And 20 new members joining meanwhile: each from its welcome's offset, no seam.
        fresh = [
            Member(pair.urls, room, KINDS[i % 2], name=f"fresh-{i}", home=i // 2 % 2)
            for i in range(20)
        ]
        started = time.monotonic()
        traffic = Traffic(publishers(members), interval=0.01, most=25).start()
        await asyncio.gather(
            *(m.start(since=f"{epoch}:{i % 101}") for i, m in enumerate(storm)),
            *(m.start() for m in fresh),
        )
        welcomed = time.monotonic() - started
        await traffic.done()
        final = await finish([*members, *storm, *fresh], closer=members[0])
        took = time.monotonic() - started
    print(f"500 resumes welcomed in {welcomed:.2f} s, all at the end in {took:.2f} s")
    summary = check_streams([*members, *storm, *fresh], final=final, recovered=True)
    print(summary)
    assert summary.recovered == 500 and summary.not_recovered == 0
    assert took < 30, took


# --- Redis faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("downtime", ["until-told", "none"])
async def test_redis_restarted_empty_closes_members_1013_and_resumes_say_not_recovered(
    server_env, downtime
):
    """Redis stopped under a busy room (members told 1013, no ERROR line) and started again
    with nothing in it: every resume from the old epoch says recovered: false under a new
    epoch, never recovered, and the streams go on from there. ``until-told``: started again
    once every member was closed; ``none``: at once, before the servers may have noticed (a
    client that reconnects by itself must not deliver the new epoch's offsets as the old's)."""
    if reason := redis_missing():
        pytest.fail(reason)
    store = RedisServer().start()  # its own: it is stopped under the servers
    servers = Cluster({**server_env, "REDIS_URL": store.url})
    try:
        room = new_room()
        async with asyncio.timeout(60):
            members = await join(servers.urls, room)
            old_epoch = members[0].epoch
            watcher = members[1]
            traffic = Traffic(publishers(members), interval=0.02).start()
            await progress(watcher, 30)
            await asyncio.to_thread(store.stop)
            if downtime == "until-told":
                for member in members:
                    await member.wait_until(
                        lambda m=member: any(code == 1013 for code, _ in m.closes), 20, "a 1013"
                    )
            during = servers.logs()
            await asyncio.to_thread(store.start)
            for member in members:
                await member.wait_until(
                    lambda m=member: m.ws is not None and m.epoch != old_epoch, 20, "a resume"
                )
            await progress(watcher, 30)
            await traffic.stop()
            final = await finish(members, closer=members[0])
    finally:
        servers.stop()
        store.stop()
    for log in during:
        assert_clean_log(log)
    servers.assert_clean()
    assert final[0] != old_epoch
    summary = check_streams(
        members,
        final=final,
        recovered=lambda m, c: False if c.since.startswith(f"{old_epoch}:") else None,
    )
    print(summary, collections.Counter(r for m in members for _, r in m.closes[:-1]))
    assert all(m.resumes for m in members)
    assert set(closes_before_the_end(members)) == {1013}, closes_before_the_end(members)
    for member in members:
        for resume in member.resumes:
            assert resume.welcome["epoch"] != old_epoch, member.story()


async def test_a_sentinel_failover_recovers_what_reached_the_replica_and_never_claims_more(
    cluster,  # noqa: F811 (tests/test_sentinel.py's fixture, imported above)
    server_env,
):
    """A master, a replica and a sentinel (tests/test_sentinel.py's). The replica is stopped
    (SIGSTOP) while a batch is published, so that batch reaches the master only; the master is
    killed, the replica goes on and is promoted. Members that resume must never claim a
    recovery they did not get: a resume past what the replica holds says recovered: false,
    and one offset never carries two messages (the epoch must change if offsets would be
    given again)."""
    master, replica, sentinel = cluster
    servers = Cluster({**server_env, "REDIS_SENTINELS": f"127.0.0.1:{sentinel.port}"})
    try:
        room = new_room()
        async with asyncio.timeout(60):
            members = await join(servers.urls, room, each=1, reconnect_within=40)
            await Traffic(members, interval=0, most=10).start().done()
            epoch, replicated = await mark_end(members[0])
            await asyncio.gather(*(m.reach(replicated, epoch) for m in members))
            meta = f"rooms:{{{room}}}:meta"
            await asyncio.to_thread(
                wait_until,
                lambda: int(redis.Redis(port=replica.port).hget(meta, "o") or 0) >= replicated,
                10,
                "the replica holding the first batch",
            )
            # One member leaves holding what the replica holds, and comes back after.
            away = await Member(servers.urls, room, "sync", name="away").start()
            await away.reach(replicated, epoch)
            await away.stop()
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                await Traffic(members, interval=0, most=5).start().done()
                _, unreplicated = await mark_end(members[0])
                await asyncio.gather(*(m.reach(unreplicated, epoch) for m in members))
                master.kill()
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            await asyncio.to_thread(
                wait_until,
                lambda: master_port(sentinel) == replica.port,
                30,
                "the replica promoted",
            )
            for member in members:
                await member.wait_until(
                    lambda m=member: len(m.connections) >= 2 and m.ws is not None, 20, "a resume"
                )
            back = Member(servers.urls, room, "sync", name="back", home=1)
            await back.start(since=f"{epoch}:{replicated}")
            await Traffic(members, interval=0, most=10).start().done()
            final = await finish([*members, back], closer=members[0])
    finally:
        servers.stop()
    summary = check_streams(
        [*members, back],
        final=final,
        # Past what the replica holds, a resume cannot recover: it must say so. Within it, it
        # may (or may say not, if the engine keeps no epoch across a failover).
        recovered=lambda m, c: False if int(c.since.rpartition(":")[2]) > replicated else None,
    )
    print(summary, f"replicated {replicated}, unreplicated up to {unreplicated}, final {final}")
    print(f"back after the failover from {epoch}:{replicated}: {back.connections[0].welcome}")
    servers.assert_clean()
