"""The page's room mode shows who is here (issue 31, "The page"): the member list and the count
from the welcome's ``presence``, kept current by ``join`` and ``leave`` frames, each also a log
entry; and a room token field whose token travels as ``?token=`` and is never shown in clear
nor kept. Headless Chromium, two pages and a websockets client in one room of a live
``manage.py serve``; and axe-core on room mode with the list shown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from urllib.parse import quote

import pytest

from tests.browser import chromium_missing, entries, page_on
from tests.conftest import assert_clean_log
from tests.servers import ROOT, LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.server]

if reason := chromium_missing():
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Page, expect  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

from tests.test_browser_client import axe_violations  # noqa: E402

#: A handshake the server refuses (a private room without a token) is the browser's console
#: error, expected where a test asks for one.


def new_room(prefix: str = "presence") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def server(server_env):
    live = LiveServer("uvicorn", env={**server_env, "ROOM_ENGINE": "memory"}).wait_ready()
    yield live
    live.stop()
    assert_clean_log(live.log())


def join(page: Page, room: str, token: str | None = None) -> str:
    """Joins ``room`` speaking rooms.v1; returns the member name the welcome gave."""
    page.select_option("#mode", "room")
    page.fill("#room", room)
    if token is not None:
        page.fill("#room-token", token)
    page.click("#connect")
    expect(page.locator("#state")).to_have_text("open")
    welcome = entries(page, "welcome").last
    expect(welcome).to_contain_text(f"welcome to room {room}: you are member ")
    return re.search(r"you are member (.+?); epoch", welcome.inner_text()).group(1)


def members(page: Page):
    return page.locator("#presence-list li")


def expect_members(page: Page, names: list[str], count: int | None = None) -> None:
    """The list shows exactly ``names`` (the page's own marked "(you)", first), and the count."""
    count = len(names) if count is None else count
    expect(page.locator("#presence-count")).to_have_text(
        f"{count} {'member' if count == 1 else 'members'}"
    )
    expect(members(page)).to_have_text(names)


def close(page: Page) -> None:
    page.click("#close")
    expect(page.locator("#state")).to_have_text("closed")


# --- two pages and a websockets client in one room ---------------------------------------------


def test_two_pages_see_each_other_and_a_client_join_and_leave(browser, server):
    room = new_room()
    with page_on(browser, server) as first, page_on(browser, server) as second:
        expect(first.locator("#presence")).to_be_hidden()  # echo mode: no room, no list
        first.select_option("#mode", "room")
        expect(first.locator("#presence")).to_be_visible()
        expect(first.locator("#presence-note")).to_have_text("Not in a room: press Connect.")
        a = join(first, room)
        expect_members(first, [f"{a} (you)"])
        expect(entries(first, "presence").last).to_have_text(
            re.compile(rf"1 member in room {room}, you included$")
        )

        b = join(second, room)
        expect_members(second, [a, f"{b} (you)"])
        expect_members(first, [f"{a} (you)", b])
        expect(entries(first, "presence").last).to_contain_text(f"{b} joined; 2 members")
        expect(first.locator("#presence-announcer")).to_have_text(f"2 members in room {room}")

        # A client of its own, in Python, speaking rooms.v1: both pages see it come and go.
        url = f"{server.ws_url}/ws/broadcast/sync/{room}/"
        with ws_connect(url, subprotocols=["rooms.v1"], open_timeout=10) as ws:
            welcome = json.loads(ws.recv(timeout=10))
            c = welcome["member"]
            assert welcome["presence"]["count"] == 3
            assert {m["member"] for m in welcome["presence"]["members"]} == {a, b, c}
            for page, me in ((first, a), (second, b)):
                shown = [f"{a} (you)" if me == a else a, f"{b} (you)" if me == b else b, c]
                expect_members(page, shown)
                expect(entries(page, "presence").last).to_contain_text(f"{c} joined; 3 members")
            # It hears the second page leave: one leave frame, about the second page.
            close(second)
            assert json.loads(ws.recv(timeout=10)) == {
                "type": "leave",
                "member": {"member": b, "user": None},
            }
            expect_members(first, [f"{a} (you)", c])
            expect(entries(first, "presence").last).to_contain_text(f"{b} left; 2 members")
        expect_members(first, [f"{a} (you)"])
        expect(entries(first, "presence").last).to_contain_text(f"{c} left; 1 member")
        expect(first.locator("#presence-announcer")).to_have_text(f"1 member in room {room}")
        # Joins and leaves have a filter of their own, and are not errors.
        first.select_option("#filter", "presence")
        expect(entries(first, "presence")).to_have_count(5)  # the welcome's, 2 joins, 2 leaves
        expect(first.locator("#log li")).to_have_count(5)
        expect(entries(first, "error")).to_have_count(0)

        # The second page, back: a fresh welcome lists who is here now.
        second.click("#connect")
        expect(second.locator("#state")).to_have_text("open")
        expect(entries(second, "welcome")).to_have_count(2)  # drawn: .last is the new one
        b2 = re.search(
            r"you are member (.+?); epoch", entries(second, "welcome").last.inner_text()
        ).group(1)
        expect_members(second, [a, f"{b2} (you)"])
        expect_members(first, [f"{a} (you)", b2])
        close(second)
        expect(second.locator("#presence-note")).to_have_text("Not in a room: press Connect.")
        expect(members(second)).to_have_count(0)
        expect_members(first, [f"{a} (you)"])


def test_a_plain_connection_has_no_list_and_counts_for_the_others(browser, server):
    room = new_room()
    with page_on(browser, server) as first, page_on(browser, server) as plain:
        a = join(first, room)
        plain.select_option("#mode", "room")
        plain.fill("#room", room)
        plain.uncheck("#rooms-v1")
        plain.click("#connect")
        expect(plain.locator("#state")).to_have_text("open")
        expect(plain.locator("#presence-note")).to_have_text(
            "This connection does not speak rooms.v1: no member list."
        )
        expect(members(plain)).to_have_count(0)
        expect(first.locator("#presence-count")).to_have_text("2 members")
        expect(members(first)).to_have_count(2)
        expect(members(first).first).to_have_text(f"{a} (you)")


# --- the list's bounds and its model -------------------------------------------------------------

#: Feeds frames to the page's own rooms.v1 reader and draws its presence into the page's list.
FEED = """async (frames) => {
    const { RoomSession } = await import("/static/js/rooms.js");
    const session = new RoomSession("r", null);
    const out = [];
    for (const frame of frames) {
        const data = JSON.stringify(frame);
        for (const e of session.receive(data, data.length)) out.push(`${e.kind}: ${e.summary}`);
    }
    document.getElementById("presence").hidden = false;
    echoClient.members.show(session.presence, session.member, "r", "");
    const p = session.presence;
    return { entries: out, count: p.count, known: p.members.size };
}"""


def who(name: str, user: str | None = None) -> dict:
    return {"member": name, "user": user}


def welcome(count: int, listed: list[dict]) -> dict:
    return {
        "type": "welcome",
        "room": "r",
        "member": "me",
        "epoch": "E1",
        "offset": 0,
        "presence": {"count": count, "members": listed},
    }


def test_the_list_shows_at_most_100_names_and_how_many_more(page):
    listed = [who("me")] + [who(f"m{i:03}") for i in range(1, 100)]
    got = page.evaluate(
        FEED,
        [
            welcome(250, listed),
            {"type": "join", "member": who("late", "someone")},
            {"type": "leave", "member": who("m001")},
            {"type": "leave", "member": who("unlisted")},
        ],
    )
    assert got["entries"] == [
        "welcome: welcome to room r: you are member me; epoch E1, offset 0",
        "presence: 250 members in room r, you included; the first 100 listed",
        "presence: late (user someone) joined; 251 members",
        "presence: m001 left; 250 members",
        "presence: unlisted left; 249 members",
    ]
    assert (got["count"], got["known"]) == (249, 100)
    expect(page.locator("#presence-count")).to_have_text("249 members")
    expect(members(page)).to_have_count(100)
    expect(members(page).first).to_have_text("me (you)")
    expect(members(page).last).to_have_text("late (user someone)")
    expect(page.locator("#presence-more")).to_have_text("and 149 more")


def test_joins_and_leaves_are_idempotent_and_malformed_ones_are_named(page):
    got = page.evaluate(
        FEED,
        [
            welcome(2, [who("me"), who("bob", "bob")]),
            {"type": "join", "member": who("bob", "bob")},  # already here: no double count
            {"type": "leave", "member": who("ghost")},  # never here, the list whole: ignored
            {"type": "leave", "member": who("bob", "bob")},
            {"type": "join", "member": {"user": "x"}},
        ],
    )
    assert got["entries"] == [
        "welcome: welcome to room r: you are member me; epoch E1, offset 0",
        "presence: 2 members in room r, you included",
        "presence: bob joined (already here)",
        "presence: ghost left (was not here)",
        "presence: bob left; 1 member",
        "error: rooms.v1: the server sent a join without a member",
    ]
    assert got["count"] == 1
    expect(members(page)).to_have_text(["me (you)"])
    expect(page.locator("#presence-more")).to_be_hidden()
    bad = page.evaluate(
        FEED.replace("const p = session.presence;", "const p = {members: {}};"),
        [
            {"type": "join", "member": who("early")},
            welcome(1, [who("me")]) | {"presence": {"count": -1, "members": []}},
        ],
    )["entries"]
    assert bad[0] == "error: rooms.v1: the server sent a join before the welcome"
    assert "error: rooms.v1: the welcome's presence is not a count and a list of members" in bad


# --- accessibility ---------------------------------------------------------------------------------


def test_axe_finds_no_violations_in_room_mode_with_the_member_list(browser, server):
    room = new_room()
    with page_on(browser, server) as first, page_on(browser, server) as second:
        first.select_option("#mode", "room")
        found = {"room mode, not connected": axe_violations(first)}
        a = join(first, room)
        b = join(second, room)
        expect_members(first, [f"{a} (you)", b])
        expect(first.locator("#presence-announcer")).to_have_text(f"2 members in room {room}")
        found["room mode, two members listed"] = axe_violations(first)
        first.set_viewport_size({"width": 390, "height": 844})
        found["room mode, phone"] = axe_violations(first)
    assert found == {state: [] for state in found}


# --- the room token ------------------------------------------------------------------------------


def test_a_room_token_travels_in_the_url_and_is_never_shown_or_kept(browser, server):
    room = new_room()
    token = "not-a-real-token:sig"  # any token will do: what is checked is where it goes
    with page_on(browser, server, refused=True) as page:
        page.select_option("#mode", "room")
        expect(page.locator("#room-token")).to_be_visible()
        expect(page.locator("#room-token")).to_have_attribute("type", "password")
        expect(page.locator("#get-token")).to_be_hidden()  # not signed in: nothing to ask for
        expect(page.locator("#token-rule a")).to_have_attribute("href", "/accounts/login/")
        urls: list[str] = []
        page.on("websocket", lambda ws: urls.append(ws.url))
        page.fill("#room", room)
        page.fill("#room-token", token)
        page.click("#connect")
        connecting = entries(page, "connecting").last
        expect(connecting).to_contain_text(f"/ws/broadcast/async/{room}/?token=\u2026 offering")
        assert urls == [f"{server.ws_url}/ws/broadcast/async/{room}/?token=not-a-real-token%3Asig"]
        # The token reaches neither the log (its export included) nor storage.
        assert token not in page.locator("#log").inner_text()
        assert "not-a-real-token" not in json.dumps(page.evaluate("() => echoClient.log.toJSON()"))
        stored = page.evaluate("() => JSON.stringify({...localStorage, ...sessionStorage})")
        assert "not-a-real-token" not in stored
        # Refused (a token that is not valid is refused even on an open room), and the page
        # asks /handshake-check why, with the token, and says which rule, not the token.
        expect(entries(page, "explain").last).to_contain_text(
            "why: refused by the token rule (403): tampered token"
        )
        expect(page.locator("#state")).to_have_text("closed")
        assert token not in page.locator("#log").inner_text()
        # A private room without a token: refused, and told where a token comes from.
        page.fill("#room", "private.board")
        page.fill("#room-token", "")
        page.click("#connect")
        expect(entries(page, "connecting").last).to_contain_text("/private.board/ offering")
        expect(entries(page, "explain").last).to_contain_text(
            "why: refused by the token rule (403): no token: room private.board is private"
        )
        # Echo mode sends no token.
        page.fill("#room-token", token)
        page.select_option("#mode", "echo")
        page.click("#connect")
        expect(page.locator("#state")).to_have_text("open")
        assert "token" not in urls[-1]


def add_user(server_env: dict[str, str], username: str, password: str, rooms: str) -> None:
    """A user holding a grant for ``rooms`` (read and publish), in the server's database."""
    code = f"""
from django.contrib.auth import get_user_model
from app.models import RoomGrant
user = get_user_model().objects.create_user({username!r}, password={password!r})
RoomGrant.objects.create(user=user, rooms={rooms!r}, publish=True)
"""
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**os.environ, **server_env},
        check=True,
    )


def test_a_signed_in_user_gets_its_token_from_the_server(browser, server, server_env):
    username, password = f"user-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    room = new_room("private.team")
    add_user(server_env, username, password, r"private\.team-.+")
    with page_on(browser, server, refused=True) as page:
        # Signed in through the project's login page, which comes back to the page.
        page.goto(server.http_url + "/accounts/login/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        expect(page).to_have_url(server.http_url + "/")
        page.select_option("#mode", "room")
        expect(page.locator("#get-token")).to_be_visible()
        expect(page.locator("#token-rule")).to_contain_text(f"Signed in as {username}")
        urls: list[str] = []
        page.on("websocket", lambda ws: urls.append(ws.url))
        # Connect with the field empty: the page asks the server for a token first.
        assert join(page, room) == username
        token = page.input_value("#room-token")
        assert token and urls[-1].endswith(f"/{room}/?token={quote(token, safe='')}")
        expect(entries(page, "note").last).to_contain_text(
            f"a token for room {room}: member {username}, read and publish, until "
        )
        expect(entries(page, "connecting").last).to_contain_text(f"/{room}/?token=\u2026 offering")
        assert token not in json.dumps(page.evaluate("() => echoClient.log.toJSON()"))
        assert token not in page.evaluate("() => JSON.stringify({...localStorage})")
        expect_members(page, [f"{username} (you)"])
        # Another room: the issued token was for this one, so it is forgotten.
        page.fill("#room", new_room("private.team"))
        expect(page.locator("#room-token")).to_have_value("")
        # The button asks for one; a room with no grant is refused with the server's reason.
        page.fill("#room", "private.board")
        page.click("#get-token")
        expect(page.locator("#alert")).to_contain_text(
            "no token for room private.board: no grant for room 'private.board' (HTTP 403)"
        )
        expect(page.locator("#room-token")).to_have_value("")


#: A join storm through the page's own connection path (Connection.received, as a socket's
#: frames arrive): how long the frames took in script, and how often the list was redrawn.
STORM = """async (n) => {
    const { RoomSession } = await import("/static/js/rooms.js");
    const { connection } = echoClient;
    const session = new RoomSession("storm", null);
    connection.options = { mode: "room", room: "storm" };
    connection.roomSession = session;
    document.getElementById("presence").hidden = false;
    const list = document.getElementById("presence-list");
    let draws = 0;
    new MutationObserver((records) => { draws += records.length; }).observe(list, { childList: true });
    const frames = [JSON.stringify({ type: "welcome", room: "storm", member: "me", epoch: "E1", offset: 0,
        presence: { count: 1, members: [{ member: "me", user: null }] } })];
    for (let i = 0; i < n; i++) frames.push(JSON.stringify({ type: "join", member: { member: `m${i}`, user: null } }));
    const started = performance.now();
    for (const frame of frames) connection.received(frame);
    const took = performance.now() - started;
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    connection.roomSession = null;
    return { took, draws, shown: list.childElementCount };
}"""


def test_a_join_storm_is_drawn_once_a_frame_and_capped(page):
    got = page.evaluate(STORM, 5000)
    expect(page.locator("#presence-count")).to_have_text("5,001 members")
    expect(page.locator("#presence-more")).to_have_text("and 4,901 more")
    expect(entries(page, "presence")).to_have_count(100)  # the log draws its newest, as ever
    assert page.evaluate("() => echoClient.log.entries.length") >= 5001
    assert got["shown"] == 100
    assert got["draws"] <= 2, got  # one list for 5,000 frames, not one per frame
    print(f"5,000 join frames in {got['took']:.0f} ms of script")
