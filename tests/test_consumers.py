"""Every event of the seed's table, for both echo consumers, through the whole ASGI stack."""

from __future__ import annotations

import logging

import pytest
from django.test import override_settings

from app.protocol import CloseCode

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

CONSUMERS = ["sync", "async"]


def echo_path(kind: str) -> str:
    return f"/ws/echo/{kind}/"


@pytest.fixture(params=CONSUMERS)
def kind(request) -> str:
    return request.param


async def connected(factory, kind, **kwargs):
    communicator = factory(echo_path(kind), **kwargs)
    accepted, subprotocol = await communicator.connect()
    assert accepted, f"handshake refused with {subprotocol}"
    return communicator, subprotocol


# --- websocket.connect -> websocket.accept --------------------------------------------------


async def test_accept_names_the_consumer_in_a_header(communicator_factory, kind):
    communicator, _ = await connected(communicator_factory, kind)
    assert (b"x-echo-consumer", kind.encode()) in communicator.response_headers
    await communicator.disconnect()


async def test_offered_and_supported_subprotocol_is_chosen(communicator_factory, kind):
    _, subprotocol = await connected(
        communicator_factory, kind, subprotocols=["chat.v9", "echo.v1"]
    )
    assert subprotocol == "echo.v1"


async def test_no_subprotocol_offered_accepts_with_none(communicator_factory, kind):
    _, subprotocol = await connected(communicator_factory, kind)
    assert subprotocol is None


async def test_offered_but_unsupported_subprotocol_is_never_accepted(communicator_factory, kind):
    _, subprotocol = await connected(communicator_factory, kind, subprotocols=["chat.v9"])
    assert subprotocol is None


@override_settings(ECHO_SUBPROTOCOLS=["echo.v2", "echo.v1"])
async def test_client_order_decides_among_supported_subprotocols(communicator_factory, kind):
    _, subprotocol = await connected(
        communicator_factory, kind, subprotocols=["echo.v1", "echo.v2"]
    )
    assert subprotocol == "echo.v1"


# --- websocket.receive -> websocket.send ----------------------------------------------------


@pytest.mark.parametrize(
    "text", ["hello", "a" * 1000, "\U0001f600 non-BMP \U00010348", "\u00e9\u4e2d"]
)
async def test_text_echoes_as_text(communicator_factory, kind, text):
    communicator, _ = await connected(communicator_factory, kind)
    await communicator.send_to(text_data=text)
    assert await communicator.receive_output() == {"type": "websocket.send", "text": text}
    await communicator.disconnect()


@pytest.mark.parametrize("data", [b"\x00\x01\xff", bytes(range(256)) * 64])
async def test_bytes_echo_as_bytes(communicator_factory, kind, data):
    communicator, _ = await connected(communicator_factory, kind)
    await communicator.send_to(bytes_data=data)
    assert await communicator.receive_output() == {"type": "websocket.send", "bytes": data}
    await communicator.disconnect()


@pytest.mark.parametrize("key, empty", [("text", ""), ("bytes", b"")])
async def test_empty_messages_round_trip_with_their_type(communicator_factory, kind, key, empty):
    communicator, _ = await connected(communicator_factory, kind)
    await communicator.send_input({"type": "websocket.receive", key: empty})
    assert await communicator.receive_output() == {"type": "websocket.send", key: empty}
    await communicator.disconnect()


async def test_many_messages_come_back_in_order(communicator_factory, kind):
    communicator, _ = await connected(communicator_factory, kind)
    sent = [f"message {i}" if i % 2 else f"bytes {i}".encode() for i in range(300)]
    for item in sent:
        key = "text" if isinstance(item, str) else "bytes"
        await communicator.send_input({"type": "websocket.receive", key: item})
    received = [await communicator.receive_from() for _ in sent]
    assert received == sent
    await communicator.disconnect()


async def test_a_message_at_the_limit_is_echoed(communicator_factory, kind, settings):
    communicator, _ = await connected(communicator_factory, kind)
    data = b"x" * settings.ECHO_MAX_MESSAGE_BYTES
    await communicator.send_to(bytes_data=data)
    assert await communicator.receive_from() == data
    await communicator.disconnect()


# --- server-initiated websocket.close -------------------------------------------------------


@pytest.mark.parametrize("key", ["text", "bytes"])
async def test_oversize_message_closes_with_1009_and_the_limit(
    communicator_factory, kind, key, settings
):
    communicator, _ = await connected(communicator_factory, kind)
    limit = settings.ECHO_MAX_MESSAGE_BYTES
    payload = "\u00e9" * (limit // 2 + 1) if key == "text" else b"x" * (limit + 1)
    await communicator.send_input({"type": "websocket.receive", key: payload})
    close = await communicator.receive_output()
    assert close["type"] == "websocket.close"
    assert close["code"] == CloseCode.MESSAGE_TOO_BIG == 1009
    assert (
        close["reason"]
        == f"message of {limit + 2 if key == 'text' else limit + 1} bytes exceeds the {limit}-byte limit"
    )
    await communicator.send_input({"type": "websocket.disconnect", "code": 1009})
    await communicator.wait()


async def test_daphne_gets_an_application_close_code_it_can_send(
    communicator_factory, kind, settings
):
    """daphne declares no spec_version and refuses 1009 (autobahn): it gets 4009, never 1011."""
    communicator, _ = await connected(communicator_factory, kind, spec_version=None)
    await communicator.send_to(bytes_data=b"x" * (settings.ECHO_MAX_MESSAGE_BYTES + 1))
    close = await communicator.receive_output()
    assert close["code"] == 4009
    assert "exceeds" in close["reason"]
    await communicator.disconnect()


@override_settings(ECHO_MAX_MESSAGE_BYTES=16)
async def test_the_limit_is_a_setting(communicator_factory, kind):
    communicator, _ = await connected(communicator_factory, kind)
    await communicator.send_to(text_data="x" * 16)
    assert await communicator.receive_from() == "x" * 16
    await communicator.send_to(text_data="x" * 17)
    close = await communicator.receive_output()
    assert (close["code"], close["reason"]) == (
        1009,
        "message of 17 bytes exceeds the 16-byte limit",
    )
    await communicator.disconnect()


async def test_nothing_is_echoed_after_the_server_closed(communicator_factory, kind, settings):
    communicator, _ = await connected(communicator_factory, kind)
    await communicator.send_to(bytes_data=b"x" * (settings.ECHO_MAX_MESSAGE_BYTES + 1))
    assert (await communicator.receive_output())["type"] == "websocket.close"
    await communicator.send_to(text_data="sent while the server was closing")
    await communicator.send_input({"type": "websocket.disconnect", "code": 1009})
    await communicator.wait(timeout=5)  # it handled both, in order, and ended
    assert communicator.output_queue.empty()


# --- websocket.disconnect -------------------------------------------------------------------


async def test_client_disconnect_ends_the_consumer_and_logs_the_code(
    communicator_factory, kind, caplog
):
    communicator, _ = await connected(communicator_factory, kind)
    with caplog.at_level(logging.INFO, logger="app.ws"):
        await communicator.send_input(
            {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}
        )
        await communicator.wait(timeout=2)
    assert communicator.future.done() and communicator.future.exception() is None
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1
    assert "code=4000 application-defined reason='bye'" in lines[0]
    assert f" {kind} " in lines[0]


# --- refused before accept ------------------------------------------------------------------


async def test_unknown_path_is_refused_with_a_log_line_not_a_traceback(
    communicator_factory, caplog
):
    communicator = communicator_factory("/ws/nope/")
    with caplog.at_level(logging.WARNING):
        accepted, _ = await communicator.connect()
        await communicator.wait()
    assert not accepted
    assert communicator.future.exception() is None
    assert [r.getMessage() for r in caplog.records] == [
        "refused - /ws/nope/: 404 no WebSocket route at this path"
    ]


async def test_unknown_path_gets_404_where_the_server_can_say_so(communicator_factory):
    communicator = communicator_factory("/ws/nope/", extensions={"websocket.http.response": {}})
    await communicator.send_input({"type": "websocket.connect"})
    start = await communicator.receive_output()
    body = await communicator.receive_output()
    assert start["type"] == "websocket.http.response.start" and start["status"] == 404
    assert body["body"] == b"404 Not Found: no WebSocket route at this path\n"


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1.evil.example"])
async def test_foreign_origin_is_refused_with_403(communicator_factory, kind, origin, caplog):
    communicator = communicator_factory(
        echo_path(kind), origin=origin, extensions={"websocket.http.response": {}}
    )
    with caplog.at_level(logging.WARNING):
        await communicator.send_input({"type": "websocket.connect"})
        start = await communicator.receive_output()
    assert start["status"] == 403
    assert f"403 Origin {origin!r} is not allowed" in caplog.text


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:8000", "http://localhost:5555", "https://localhost"]
)
async def test_allowed_origins_connect(communicator_factory, kind, origin):
    await connected(communicator_factory, kind, origin=origin)


async def test_missing_origin_is_allowed_by_default(communicator_factory, kind):
    await connected(communicator_factory, kind, origin=None)


@override_settings(WEBSOCKET_ALLOW_MISSING_ORIGIN=False)
async def test_missing_origin_can_be_refused(communicator_factory, kind):
    from channels.routing import URLRouter

    from app.handshake import allowed_hosts_origin_validator
    from app.routing import websocket_urlpatterns

    app = allowed_hosts_origin_validator(URLRouter(websocket_urlpatterns))
    communicator = communicator_factory(echo_path(kind), origin=None, app=app)
    accepted, _ = await communicator.connect()
    assert not accepted
