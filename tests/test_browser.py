"""The demo page in headless Chromium against the project under uvicorn, for both consumers."""

from __future__ import annotations

import re

import pytest

from tests.browser import chromium_missing

pytestmark = pytest.mark.browser

if reason := chromium_missing():
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Page, expect  # noqa: E402

from tests.browser import connect, entries, send_text  # noqa: E402

LIMIT = 256 * 1024


@pytest.fixture(params=["sync", "async"])
def kind(request) -> str:
    return request.param


def test_connect_shows_the_negotiated_subprotocol_and_extensions(page, kind):
    connect(page, kind)
    # Chromium's own offer ("permessage-deflate; client_max_window_bits"), as the server answers
    # it: no context takeover either way (app/server/deflate.py).
    expect(entries(page, "open").last).to_contain_text(
        f"connected to the {kind} consumer; subprotocol: (none); extensions: permessage-deflate;"
        " server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"
    )
    # Compressed both ways: Chromium deflates what it sends, the server what it echoes.
    send_text(page, '{"k": "value"} ' * 400)
    expect(entries(page, "received").last).to_contain_text(re.compile(r"text, 6000 bytes in"))
    page.click("#close")
    expect(page.locator("#state")).to_have_text("closed")
    connect(page, kind, "chat.v9, echo.v1")
    expect(entries(page, "open").last).to_contain_text("subprotocol: echo.v1")


def test_text_echoes_with_round_trip_time_and_in_order(page, kind):
    connect(page, kind)
    send_text(page, "hello \U0001f600")
    received = entries(page, "received")
    expect(received.first).to_contain_text(re.compile(r"text, 10 bytes in \d+\.\d ms"))
    expect(received.first.locator(".detail")).to_have_text("hello \U0001f600")
    for i in range(5):
        send_text(page, f"quick {i}")
    expect(received).to_have_count(6)
    assert received.locator(".detail").all_inner_texts()[1:] == [f"quick {i}" for i in range(5)]


def test_binary_of_a_chosen_size_echoes_with_its_length(page, kind):
    connect(page, kind)
    page.fill("#binary-size", "1234")
    page.click("#send-binary")
    expect(entries(page, "received").last).to_contain_text(
        re.compile(r"binary, 1234 bytes in \d+\.\d ms")
    )


def test_over_the_limit_shows_the_servers_1009_close(page, kind):
    connect(page, kind)
    page.click("#send-oversize")
    expect(entries(page, "close").last).to_contain_text(
        f'code 1009 (Message Too Big) reason "message of {LIMIT + 1} bytes exceeds the {LIMIT}-byte limit", wasClean true'
    )
    expect(page.locator("#state")).to_have_text("closed")


def test_close_from_the_page_with_4000_reaches_the_server_and_reconnects(
    page, kind, uvicorn_server
):
    connect(page, kind)
    page.fill("#close-code", "4000")
    page.fill("#close-reason", "bye from the page")
    page.click("#close")
    expect(entries(page, "close").last).to_contain_text(
        'code 4000 (application) reason "bye from the page", wasClean true'
    )
    uvicorn_server.wait_for_log(
        re.escape("disconnected code=4000 application-defined reason='bye from the page'")
    )
    # Reconnect on the same page, no reload.
    connect(page, kind)
    send_text(page, "again")
    expect(entries(page, "received").last.locator(".detail")).to_have_text("again")
    expect(entries(page, "open")).to_have_count(2)


@pytest.mark.parametrize(
    "payload", ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=1</script>"]
)
def test_echoed_markup_is_shown_as_text_and_never_runs(page, kind, payload):
    connect(page, kind)
    send_text(page, payload)
    expect(entries(page, "received").last.locator(".detail")).to_have_text(payload)
    assert page.locator("#log img, #log script").count() == 0
    assert page.evaluate("window.__xss") is None


def test_clear_log_empties_it(page):
    connect(page, "async")
    expect(page.locator("#log li")).not_to_have_count(0)
    page.click("#clear-log")
    expect(page.locator("#log li")).to_have_count(0)
    expect(page.locator("#state")).to_have_text("open")  # clearing the log keeps the connection


def test_controls_follow_the_connection_state(page):
    expect(page.locator("#state")).to_have_text("closed")
    expect(page.locator("#send-text")).to_be_disabled()
    connect(page, "sync")
    expect(page.locator("#send-text")).to_be_enabled()
    expect(page.locator("#connect")).to_be_disabled()


def test_phone_width_keeps_the_controls_on_screen(browser, uvicorn_server):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(uvicorn_server.http_url + "/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at phone width ({width}px)"
    for control in ("#connect", "#send-text", "#clear-log"):
        box = page.locator(control).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, control
    context.close()


def join_room(page: Page, room: str, kind: str) -> None:
    page.select_option("#mode", "room")
    page.fill("#room", room)
    connect(page, kind)
    expect(entries(page, "open").last).to_contain_text(
        f"connected to the {kind} consumer in room {room}"
    )


def test_room_mode_shows_the_messages_of_others(browser, uvicorn_server):
    """A sync member and an async member of one room, each on its own page."""
    pages = []
    for _ in range(2):
        context = browser.new_context()
        pages.append(context.new_page())
        pages[-1].goto(uvicorn_server.http_url + "/")
    alice, bob = pages
    join_room(alice, "browser-room", "sync")
    join_room(bob, "browser-room", "async")
    send_text(alice, "hi from alice")
    for page in pages:
        expect(entries(page, "received").last.locator(".detail")).to_have_text("hi from alice")
    expect(entries(bob, "received").last).not_to_contain_text(" ms")  # no round trip in a room
    for page in pages:
        page.context.close()


def test_room_mode_shows_what_the_broadcast_command_pushes(browser, redis_server, server_env):
    from tests.servers import LiveServer
    from tests.test_redis import broadcast_command

    with LiveServer("uvicorn", env={**server_env, "REDIS_URL": redis_server.url}) as server:
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.http_url + "/")
        join_room(page, "pushed-room", "async")
        result = broadcast_command(redis_server.url, "pushed-room", "news from the server")
        assert result.returncode == 0, result.stderr
        expect(entries(page, "received").last.locator(".detail")).to_have_text(
            "news from the server"
        )
        context.close()


def test_tracing_fills_the_server_column_with_every_event(page, kind):
    page.check("#trace")
    connect(page, kind)
    expect(page.locator("#columns")).to_be_visible()
    expect(entries(page, "connecting").last).to_contain_text(f"/ws/echo/{kind}/?trace=(token)")
    server = page.locator("#log li[data-side='server']")
    expect(server.filter(has_text="websocket.accept")).to_have_count(1)
    send_text(page, "traced text")
    page.fill("#binary-size", "48")
    page.click("#send-binary")
    expect(entries(page, "received")).to_have_count(2)
    page.fill("#close-code", "4001")
    page.fill("#close-reason", "done tracing")
    page.click("#close")
    disconnect = server.filter(has_text="websocket.disconnect")
    expect(disconnect).to_have_count(1)
    expected = [
        ("received", "websocket.connect \u2192 websocket_connect()"),
        ("sent", "websocket.accept"),
        ("received", "websocket.receive \u2192 websocket_receive()"),
        ("sent", "websocket.send"),
        ("received", "websocket.receive \u2192 websocket_receive()"),
        ("sent", "websocket.send"),
        ("received", "websocket.disconnect \u2192 websocket_disconnect()"),
    ]
    rows = [
        (r.locator(".kind").inner_text(), r.locator(".summary").inner_text()) for r in server.all()
    ]
    assert rows == expected
    # Clicking a server event shows its whole message dict.
    disconnect.locator("summary").click()
    detail = disconnect.locator("pre")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text('"code": 4001')
    expect(detail).to_contain_text('"reason": "done tracing"')
    connect_row = server.first
    connect_row.locator("summary").click()
    expect(connect_row.locator("pre")).to_contain_text(f'"path": "/ws/echo/{kind}/"')
    expect(connect_row.locator("pre")).to_contain_text('"(redacted)"')  # the session cookie
    binary_in = server.nth(4)
    binary_in.locator("summary").click()
    expect(binary_in.locator("pre")).to_contain_text('"bytes": 48')
    expect(page.locator("#stats")).to_contain_text("sent 2 msgs, 59 B")


def test_a_trace_token_does_not_work_in_another_browser_session(browser, uvicorn_server):
    owner = browser.new_context()
    stranger = browser.new_context()
    try:
        page = owner.new_page()
        page.goto(uvicorn_server.http_url + "/")
        token = page.evaluate(
            """async () => {
                const csrf = document.cookie.match(/csrftoken=([^;]+)/)[1];
                const r = await fetch('/trace/token', {method: 'POST', headers: {'X-CSRFToken': csrf}});
                return (await r.json()).token;
            }"""
        )
        other = stranger.new_page()
        other.goto(uvicorn_server.http_url + "/")
        outcome = other.evaluate(
            """(token) => new Promise((resolve) => {
                const ws = new WebSocket(`ws://${location.host}/ws/trace/${token}/`);
                ws.onopen = () => resolve('open');
                ws.onclose = (e) => resolve('closed ' + e.code);
            })""",
            token,
        )
        assert outcome == "closed 1006"  # the handshake was refused (403)
        uvicorn_server.wait_for_log(r"403 trace token not issued to this session, or expired")
    finally:
        owner.close()
        stranger.close()
