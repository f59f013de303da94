"""The page's room mode speaks rooms.v1 (issue 30, "The page"): each message with its offset and
its sender, and an auto-reconnect that resumes with ``since`` across a server restart, saying
what the resume recovered ("resumed: N missed messages recovered") or that it could not ("not
recovered: history lost"). Headless Chromium against ``manage.py serve`` processes restarted on
the same port, in memory (a restart loses the room's history) and on Redis (it keeps it)."""

from __future__ import annotations

import json
import re
import uuid
from contextlib import contextmanager
from unittest import mock

import pytest

from tests import servers
from tests.browser import chromium_missing, entries, page_on, send_text
from tests.conftest import assert_clean_log
from tests.servers import LiveServer
from tests.test_redis import broadcast_command

pytestmark = [pytest.mark.browser, pytest.mark.server]

if reason := chromium_missing():
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Page, expect  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

#: The page's reconnects back off 0.5 s, 1 s, 2 s, 4 s, 8 s: a restart of a few seconds on a
#: busy 2-core machine is met by one of them well within this (ms).
RECONNECT = 30_000
#: What Chromium prints for each reconnect refused while the server is down.


def new_room() -> str:
    return f"page-{uuid.uuid4().hex[:10]}"


def join(page: Page, room: str, *, reconnect: bool = True, kind: str = "async") -> None:
    page.select_option("#mode", "room")
    page.fill("#room", room)
    expect(page.locator("#rooms-v1")).to_be_checked()  # room mode speaks rooms.v1 by default
    page.set_checked("#reconnect", reconnect)
    page.select_option("#consumer", kind)
    page.click("#connect")
    expect(page.locator("#state")).to_have_text("open")
    expect(entries(page, "connecting").last).to_contain_text("offering rooms.v1")
    expect(entries(page, "open").last).to_contain_text(
        f"connected to the {kind} consumer in room {room}; subprotocol: rooms.v1"
    )


def position(page: Page) -> dict:
    """Where the page would resume from: {room, epoch, offset}."""
    return page.evaluate(
        "() => { const r = echoClient.connection.lastRoom;"
        " return r && { room: r.room, member: r.member, ...r.position }; }"
    )


def message_entry(offset: int, sender: str, text: str) -> str:
    return f"offset {offset} from {sender}: text, {len(text.encode())} bytes"


def expect_messages(page: Page, first: int, sender: str, texts: list[str]) -> None:
    """The page's newest received entries are ``texts`` at offsets ``first``... from ``sender``."""
    received = entries(page, "received")
    for i, text in enumerate(texts):
        entry = received.filter(has_text=f"offset {first + i} from ")
        expect(entry).to_have_count(1)
        expect(entry).to_contain_text(message_entry(first + i, sender, text))
        expect(entry.locator(".detail")).to_have_text(text)


def violations(page: Page):
    """The page's entries for a breach of rooms.v1 by the server (rooms.js): none expected.
    (A reconnect refused while the server is down is an error entry too, of its own.)"""
    return entries(page, "error").filter(has_text="rooms.v1:")


def restart(server: LiveServer, env: dict[str, str]) -> LiveServer:
    """SIGTERM ``server`` (its members get 1012), its log checked, and a new process on the
    same port: the page reconnects to the address it was loaded from."""
    port = server.port
    server.stop()
    assert_clean_log(server.log())
    with mock.patch.object(servers, "free_port", return_value=port):
        return LiveServer("uvicorn", env=env).wait_ready()


def expect_restart_seen(page: Page) -> None:
    """The page was told of the restart (1012) and waits to reconnect."""
    expect(entries(page, "close").filter(has_text="code 1012 (Service Restart)")).to_have_count(1)
    expect(entries(page, "reconnect").first).to_contain_text("reconnecting in 0.5 s (attempt 1)")


class Member:
    """A rooms.v1 client in Python (websockets): its welcome, and the messages it sends."""

    def __init__(self, ws) -> None:
        self.ws = ws
        assert ws.subprotocol == "rooms.v1"
        self.welcome = json.loads(ws.recv(timeout=10))
        assert self.welcome["type"] == "welcome", self.welcome

    def say(self, texts: list[str]) -> list[int]:
        """Sends each text and returns the offsets it came back with (the sender gets its own);
        the room's other frames (others' messages, join and leave) pass."""
        for text in texts:
            self.ws.send(text)
        offsets = []
        while len(offsets) < len(texts):
            frame = json.loads(self.ws.recv(timeout=10))
            if frame["type"] == "message" and frame["from"] == self.welcome["member"]:
                assert frame["text"] == texts[len(offsets)], frame
                offsets.append(frame["offset"])
        return offsets


@contextmanager
def member(url: str):
    with ws_connect(url, subprotocols=["rooms.v1"], open_timeout=10) as ws:
        yield Member(ws)


def room_url(server: LiveServer, room: str, kind: str = "async") -> str:
    return f"{server.ws_url}/ws/broadcast/{kind}/{room}/"


# --- in memory: a restart loses the room's history, and the page says so ----------------------


def test_offsets_and_senders_then_a_restart_in_memory_is_not_recovered(browser, server_env):
    env = {**server_env, "ROOM_ENGINE": "memory"}
    room = new_room()
    server = LiveServer("uvicorn", env=env).wait_ready()
    try:
        with page_on(browser, server, refused=True) as page:
            join(page, room)
            expect(entries(page, "welcome")).to_contain_text(
                re.compile(rf"welcome to room {room}: you are member [A-Za-z0-9_-]{{16}}; "
                           r"epoch [A-Za-z0-9_-]+, offset 0$")
            )  # fmt: skip
            before = position(page)
            assert before["offset"] == 0 and before["room"] == room
            for text in ("one", "two", "three"):
                send_text(page, text)
            expect_messages(page, 1, "you", ["one", "two", "three"])
            with member(room_url(server, room, "sync")) as other:
                assert other.welcome["offset"] == 3 and "recovered" not in other.welcome
                assert other.say(["from another"]) == [4]
            expect_messages(page, 4, other.welcome["member"], ["from another"])
            assert position(page) == {**before, "offset": 4}

            server = restart(server, env)
            expect_restart_seen(page)
            expect(page.locator("#state")).to_have_text("open", timeout=RECONNECT)
            expect(entries(page, "connecting").last).to_contain_text(
                f"/ws/broadcast/async/{room}/?since={before['epoch']}:4 offering rooms.v1"
            )
            welcome = entries(page, "welcome").nth(1)
            expect(welcome).to_contain_text("offset 0; recovered: false")
            lost = entries(page, "lost")
            expect(lost).to_have_count(1)
            expect(lost).to_contain_text("not recovered: history lost: the room's history is gone")
            expect(entries(page, "resumed")).to_have_count(0)
            after = position(page)
            assert after["epoch"] != before["epoch"] and after["offset"] == 0

            send_text(page, "after the restart")
            expect(entries(page, "received").last).to_contain_text(
                message_entry(1, "you", "after the restart")
            )
            expect(violations(page)).to_have_count(0)  # no gap, no duplicate, nothing malformed

            # Closed by the page: the next Connect is a fresh join, not a resume.
            page.click("#close")
            expect(page.locator("#state")).to_have_text("closed")
            page.click("#connect")
            expect(page.locator("#state")).to_have_text("open")
            expect(entries(page, "connecting").last).not_to_contain_text("since=")
            expect(entries(page, "welcome").last).to_contain_text(
                re.compile(r"offset 1$")
            )  # no "recovered"
    finally:
        server.stop()
    assert_clean_log(server.log())


# --- on Redis: the history outlives the process, and the page gets what it missed ------------


@pytest.mark.redis
def test_a_restart_on_redis_resumes_with_every_missed_message(browser, server_env, redis_server):
    env = {**server_env, "REDIS_URL": redis_server.url, "ROOM_ENGINE": "redis"}
    room = new_room()
    other_server = LiveServer("uvicorn", env=env)
    server = LiveServer("uvicorn", env=env)
    other_server.wait_ready()
    server.wait_ready()
    try:
        with page_on(browser, server, refused=True) as page:
            join(page, room, kind="sync")
            for text in ("one", "two"):
                send_text(page, text)
            expect_messages(page, 1, "you", ["one", "two"])
            before = position(page)
            assert before["offset"] == 2

            port = server.port
            server.stop()
            assert_clean_log(server.log())
            expect_restart_seen(page)
            # While the page is away, another member on the other process sends three, and
            # manage.py broadcast one.
            missed = ["missed 1", "missed 2", "missed \U0001f600"]
            with member(room_url(other_server, room)) as other:
                assert other.say(missed) == [3, 4, 5]
                pushed = broadcast_command(redis_server.url, room, "pushed while away")
                assert pushed.returncode == 0, pushed.stderr
                with mock.patch.object(servers, "free_port", return_value=port):
                    server = LiveServer("uvicorn", env=env).wait_ready()
                expect(page.locator("#state")).to_have_text("open", timeout=RECONNECT)
                expect(entries(page, "connecting").last).to_contain_text(
                    f"?since={before['epoch']}:2 offering rooms.v1"
                )
                expect(entries(page, "welcome").nth(1)).to_contain_text(
                    f"epoch {before['epoch']}, offset 6; recovered: true"
                )
                resumed = entries(page, "resumed")
                expect(resumed).to_have_text(
                    re.compile(r"resumed: 4 missed messages recovered \(offsets 3-6\)")
                )
                expect_messages(page, 3, other.welcome["member"], missed)
                expect_messages(page, 6, "broadcast", ["pushed while away"])
                expect(entries(page, "lost")).to_have_count(0)

                # Live again: the page's own message, then the other member's.
                send_text(page, "back")
                expect_messages(page, 7, "you", ["back"])
                assert other.say(["welcome back"]) == [8]
            expect_messages(page, 8, other.welcome["member"], ["welcome back"])
            expect(violations(page)).to_have_count(0)
            # The summary follows the last replayed message and precedes the live ones.
            kinds = page.evaluate(
                "() => echoClient.log.entries.filter((e) => e.offset !== undefined"
                " || e.kind === 'resumed').map((e) => e.kind === 'resumed' ? 'R' : e.offset)"
            )
            assert kinds == [1, 2, 3, 4, 5, 6, "R", 7, 8]
    finally:
        server.stop()
        other_server.stop()
    assert_clean_log(server.log())
    assert_clean_log(other_server.log())


# --- the page's side of the contract, and plain rooms ------------------------------------------


def test_room_mode_without_rooms_v1_is_todays_plain_forwarding(page):
    room = new_room()
    page.select_option("#mode", "room")
    page.fill("#room", room)
    page.uncheck("#rooms-v1")
    page.click("#connect")
    expect(page.locator("#state")).to_have_text("open")
    expect(entries(page, "connecting").last).to_contain_text("with no subprotocol")
    expect(entries(page, "open").last).to_contain_text("subprotocol: (none)")
    send_text(page, "plain")
    expect(entries(page, "received").last).to_contain_text("text, 5 bytes")
    expect(entries(page, "received").last.locator(".detail")).to_have_text("plain")
    expect(entries(page, "welcome")).to_have_count(0)


#: Feeds frames to the page's own rooms.v1 reader (static/js/rooms.js) and returns the entries.
FEED = """async ([since, frames]) => {
    const { RoomSession } = await import("/static/js/rooms.js");
    const session = new RoomSession("r", since);
    const out = [];
    for (const frame of frames) {
        const data = typeof frame === "string" ? frame : JSON.stringify(frame);
        for (const e of session.receive(data, data.length)) out.push(`${e.kind}: ${e.summary}`);
    }
    return { entries: out, position: session.position };
}"""


def feed(page: Page, since, frames) -> dict:
    return page.evaluate(FEED, [since, frames])


def welcome(offset: int, epoch: str = "E1", **more) -> dict:
    return {
        "type": "welcome",
        "room": "r",
        "member": "me",
        "epoch": epoch,
        "offset": offset,
        **more,
    }


def message(offset: int, sender: str = "me", **content) -> dict:
    return {"type": "message", "offset": offset, "from": sender, **(content or {"text": "t"})}


def test_the_page_shows_binary_and_broadcast_senders_and_names_every_gap(page):
    got = feed(
        page,
        None,
        [
            welcome(0),
            message(1, bytes="AAEC/w=="),
            message(2, "broadcast"),
            message(4, "someone"),
            message(4, "someone"),
            "not json",
        ],
    )
    assert got["entries"] == [
        "welcome: welcome to room r: you are member me; epoch E1, offset 0",
        "received: offset 1 from you: binary, 4 bytes",
        "received: offset 2 from broadcast: text, 1 bytes",
        "error: rooms.v1: a gap: offset 3 never arrived",
        "received: offset 4 from someone: text, 1 bytes",
        "error: rooms.v1: a duplicate: offset 4 again (the last was 4)",
        "received: offset 4 from someone: text, 1 bytes",
        "error: rooms.v1: the server sent a frame that is not JSON",
    ]
    assert got["position"] == {"epoch": "E1", "offset": 4}


def test_a_resume_counts_what_it_recovered_or_says_what_it_did_not(page):
    since = {"epoch": "E1", "offset": 4}
    whole = feed(page, since, [welcome(6, recovered=True), message(5), message(6), message(7)])
    assert whole["entries"][-2:] == [
        "resumed: resumed: 2 missed messages recovered (offsets 5-6)",
        "received: offset 7 from you: text, 1 bytes",
    ]
    assert feed(page, since, [welcome(4, recovered=True)])["entries"][-1] == (
        "resumed: resumed: 0 missed messages recovered"
    )
    short = feed(page, since, [welcome(6, recovered=True), message(5), message(7)])["entries"]
    assert "error: rooms.v1: resumed, but only 1 of 2 missed messages recovered" in short[-2]
    lost = feed(page, since, [welcome(9, recovered=False)])
    assert lost["entries"][-1].startswith(
        "lost: not recovered: history lost: the room's history no longer holds offset 5"
    )
    assert lost["position"] == {"epoch": "E1", "offset": 9}
    new_epoch = feed(page, since, [welcome(0, "E2", recovered=False)])
    assert "(epoch E1 is now E2)" in new_epoch["entries"][-1]
    # Until a welcome says otherwise, a connection resumes from where the last one was.
    assert feed(page, since, [])["position"] == since
