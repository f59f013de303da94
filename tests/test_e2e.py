"""Real sockets: the project under uvicorn and under daphne, through the websockets client.

Where daphne cannot do something, the test asserts what daphne actually does (``tests.compat``),
so the day daphne changes, a test says so.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.protocol import CloseCode
from tests.compat import BEHAVIOUR

pytestmark = [pytest.mark.server, pytest.mark.asyncio]

LIMIT = 256 * 1024


@pytest.fixture(params=["sync", "async"])
def kind(request) -> str:
    return request.param


def echo_url(server, kind: str) -> str:
    return f"{server.ws_url}/ws/echo/{kind}/"


async def test_subprotocol_and_accept_headers(asgi_server, kind):
    expected = BEHAVIOUR[asgi_server.kind]
    async with connect(echo_url(asgi_server, kind), subprotocols=["chat.v9", "echo.v1"]) as ws:
        assert ws.subprotocol == "echo.v1"
        header = ws.response.headers.get("x-echo-consumer")
        assert header == (kind if expected.accept_headers else None)


async def test_no_subprotocol_offered(asgi_server, kind):
    async with connect(echo_url(asgi_server, kind)) as ws:
        assert ws.subprotocol is None


async def test_text_bytes_and_a_200_kib_message_echo(asgi_server, kind):
    big_text = "\U0001f600" * (200 * 1024 // 4)
    messages = ["hello", b"\x00\xff" * 10, big_text, bytes(200 * 1024)]
    async with connect(echo_url(asgi_server, kind), max_size=2**20) as ws:
        for message in messages:
            await ws.send(message)
            assert await ws.recv() == message


async def test_a_thousand_messages_in_order(asgi_server, kind):
    async with connect(echo_url(asgi_server, kind)) as ws:
        sent = [f"#{i}" if i % 3 else f"#{i}".encode() for i in range(1000)]

        async def send_all():
            for message in sent:
                await ws.send(message)

        sender = asyncio.create_task(send_all())
        received = [await asyncio.wait_for(ws.recv(), 10) for _ in sent]
        await sender
        assert received == sent


async def test_empty_messages(asgi_server, kind):
    async with connect(echo_url(asgi_server, kind)) as ws:
        await ws.send("")
        await ws.send(b"")
        await ws.send("marker")
        got = [await asyncio.wait_for(ws.recv(), 5)]
        if BEHAVIOUR[asgi_server.kind].empty_messages:
            got += [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)]
            assert got == ["", b"", "marker"]
        else:
            assert got == ["marker"]  # daphne dropped both empty sends


async def test_oversize_message_closes_with_code_and_reason(asgi_server, kind):
    expected = BEHAVIOUR[asgi_server.kind]
    async with connect(echo_url(asgi_server, kind), max_size=2**21) as ws:
        await ws.send(b"x" * (LIMIT + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    frame = closed.value.rcvd
    assert frame is not None, "the server dropped the connection without a close frame"
    assert frame.code == expected.too_big_code
    reason = f"message of {LIMIT + 1} bytes exceeds the {LIMIT}-byte limit"
    assert frame.reason == (reason if expected.close_reason else "")
    asgi_server.wait_for_log(re.escape(f"closing {expected.too_big_code} "))


async def test_client_close_code_and_reason_reach_websocket_disconnect(asgi_server, kind):
    async with connect(echo_url(asgi_server, kind)) as ws:
        await ws.send("hello")
        await ws.recv()
        local = ws.local_address[1]
        await ws.close(code=4000, reason="done here")
    expected = BEHAVIOUR[asgi_server.kind]
    reason = "done here" if expected.disconnect_reason else ""
    code = CloseCode.describe(expected.disconnect_code)
    asgi_server.wait_for_log(
        re.escape(
            f"{kind} 127.0.0.1:{local} /ws/echo/{kind}/] disconnected code={code} reason={reason!r}"
        )
    )


async def test_unknown_path_is_refused_at_the_handshake(asgi_server):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{asgi_server.ws_url}/ws/nope/"):
            pass
    assert refused.value.response.status_code == BEHAVIOUR[asgi_server.kind].unknown_path_status
    asgi_server.wait_for_log(re.escape("/ws/nope/: 404 no WebSocket route at this path"))


async def test_foreign_origin_is_refused_at_the_handshake(asgi_server, kind):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(echo_url(asgi_server, kind), origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    asgi_server.wait_for_log(re.escape("403 Origin 'http://evil.example' is not allowed"))
