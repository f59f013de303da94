"""The ASGI-event inspector: records of each event, redaction, and the token rules."""

from __future__ import annotations

import json
import logging
import time
from importlib import import_module

import pytest
from asgiref.sync import sync_to_async
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from app.dispatch import LeanAsyncConsumer
from app.middleware import auth_middleware_stack
from app.tracing import SESSION_KEY, issue_token, preview, trace_group
from tests.conftest import make_communicator

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def session_store() -> type:
    """The configured engine's ``SessionStore`` (signed cookies: no database row)."""
    return import_module(settings.SESSION_ENGINE).SessionStore


@sync_to_async
def new_session() -> tuple[str, str]:
    """A saved session holding one trace token: (session key, token)."""
    session = session_store()()
    token, _ = issue_token(session)
    session.save()
    return session.session_key, token


def with_cookie(communicator, session_key: str, extra: str = "; theme=dark"):
    communicator.scope["headers"].append((b"cookie", f"sessionid={session_key}{extra}".encode()))
    return communicator


async def records(channel: str, count: int) -> list[dict]:
    """The next ``count`` records a listener's channel gets (each serialised once, as text)."""
    layer = get_channel_layer()
    return [json.loads((await layer.receive(channel))["text"]) for _ in range(count)]


@pytest.fixture(params=["sync", "async"])
def kind(request) -> str:
    return request.param


async def test_every_event_of_a_traced_echo_is_recorded_field_by_field(kind):
    session_key, token = await new_session()
    layer = get_channel_layer()
    listener = await layer.new_channel()
    await layer.group_add(trace_group(token), listener)

    echo = with_cookie(
        make_communicator(f"/ws/echo/{kind}/?trace={token}", subprotocols=["echo.v1"]), session_key
    )
    assert (await echo.connect())[0]
    await echo.send_to(text_data="hi")
    assert await echo.receive_from() == "hi"
    await echo.send_to(bytes_data=bytes(range(40)))
    await echo.receive_from()
    await echo.send_input({"type": "websocket.disconnect", "code": 4000, "reason": "bye"})
    await echo.wait()

    got = await records(listener, 7)
    assert [(r["direction"], r["type"]) for r in got] == [
        ("received", "websocket.connect"),
        ("sent", "websocket.accept"),
        ("received", "websocket.receive"),
        ("sent", "websocket.send"),
        ("received", "websocket.receive"),
        ("sent", "websocket.send"),
        ("received", "websocket.disconnect"),
    ]
    connect, accept, text_in, text_out, bytes_in, bytes_out, disconnect = got
    assert {r["consumer"] for r in got} == {kind}
    assert (
        connect["handler"] == "websocket_connect"
        and disconnect["handler"] == "websocket_disconnect"
    )
    assert connect["scope"]["path"] == f"/ws/echo/{kind}/"
    assert connect["scope"]["subprotocols"] == ["echo.v1"]
    assert connect["scope"]["query_string"] == "trace=(token)"  # the token is not repeated
    assert ["cookie", "(redacted)"] in connect["scope"]["headers"]
    assert token not in json.dumps(got) and session_key not in json.dumps(got)
    assert accept["fields"] == {"subprotocol": "echo.v1", "headers": [["x-echo-consumer", kind]]}
    assert text_in["fields"] == {"text": "hi"} and text_out["fields"] == {"text": "hi"}
    assert bytes_in["fields"]["bytes"] == {"bytes": 40, "hex": bytes(range(32)).hex(" ") + " ..."}
    assert bytes_out["fields"] == bytes_in["fields"]
    assert disconnect["fields"] == {"code": 4000, "reason": "bye"}
    assert [r["t"] for r in got] == sorted(r["t"] for r in got)  # monotonic timestamps


async def test_the_servers_close_is_recorded_with_code_and_reason(kind, settings):
    session_key, token = await new_session()
    layer = get_channel_layer()
    listener = await layer.new_channel()
    await layer.group_add(trace_group(token), listener)
    echo = with_cookie(make_communicator(f"/ws/echo/{kind}/?trace={token}"), session_key)
    assert (await echo.connect())[0]
    await echo.send_to(text_data="x" * (settings.ECHO_MAX_MESSAGE_BYTES + 1))
    assert (await echo.receive_output())["code"] == 1009
    got = await records(listener, 4)
    close = got[-1]
    assert (close["direction"], close["type"]) == ("sent", "websocket.close")
    assert close["fields"]["code"] == 1009 and "exceeds" in close["fields"]["reason"]
    assert got[-2]["fields"]["text"]["length"] == settings.ECHO_MAX_MESSAGE_BYTES + 1  # a preview
    await echo.disconnect()


async def test_the_trace_consumer_forwards_records_to_its_own_session():
    session_key, token = await new_session()
    trace = with_cookie(make_communicator(f"/ws/trace/{token}/"), session_key)
    assert (await trace.connect())[0]
    echo = with_cookie(make_communicator(f"/ws/echo/async/?trace={token}"), session_key)
    assert (await echo.connect())[0]
    first = json.loads(await trace.receive_from())
    assert first["type"] == "websocket.connect" and first["direction"] == "received"
    assert json.loads(await trace.receive_from())["type"] == "websocket.accept"
    await echo.disconnect()
    await trace.disconnect()


async def test_a_second_session_cannot_attach_to_a_token(caplog):
    _, token = await new_session()
    other_session, _ = await new_session()
    trace = with_cookie(
        make_communicator(f"/ws/trace/{token}/", extensions={"websocket.http.response": {}}),
        other_session,
    )
    with caplog.at_level(logging.WARNING):
        await trace.send_input({"type": "websocket.connect"})
        start = await trace.receive_output()
    assert start["status"] == 403
    assert "trace token not issued to this session, or expired" in caplog.text


async def test_no_session_at_all_cannot_attach():
    _, token = await new_session()
    accepted, _ = await make_communicator(f"/ws/trace/{token}/").connect()
    assert not accepted


async def test_an_expired_token_is_refused():
    session_key, token = await new_session()

    @sync_to_async
    def expire() -> str:
        session = session_store()(session_key=session_key)
        session[SESSION_KEY] = {token: time.time() - 1}
        session.save()
        return session.session_key  # a signed-cookie session's key is its content

    expired_key = await expire()
    accepted, _ = await with_cookie(make_communicator(f"/ws/trace/{token}/"), expired_key).connect()
    assert not accepted


async def test_a_foreign_token_on_an_echo_socket_traces_nothing(caplog):
    _, token = await new_session()
    other_session, _ = await new_session()
    layer = get_channel_layer()
    listener = await layer.new_channel()
    await layer.group_add(trace_group(token), listener)
    echo = with_cookie(make_communicator(f"/ws/echo/async/?trace={token}"), other_session)
    with caplog.at_level(logging.WARNING):
        assert (await echo.connect())[0]  # echo still works; it is just not traced
    await echo.send_to(text_data="private")
    assert await echo.receive_from() == "private"
    await echo.disconnect()
    assert "trace token refused" in caplog.text
    assert layer.channels.get(listener) is None or layer.channels[listener].empty()


class Probe(LeanAsyncConsumer):
    """Answers each message with whether this connection is traced."""

    channel_layer_alias = None
    uses_database = False
    traceable = True

    async def websocket_connect(self, event):
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, event):
        await self.send({"type": "websocket.send", "text": str(self.tracer is not None)})

    async def websocket_disconnect(self, event):
        raise StopConsumer()


@pytest.mark.parametrize("traced", [False, True])
async def test_only_a_handshake_with_its_own_token_is_traced(traced):
    session_key, token = await new_session()
    path = f"/?trace={token}" if traced else "/"
    probe = with_cookie(
        make_communicator(path, app=auth_middleware_stack(Probe.as_asgi())), session_key
    )
    assert (await probe.connect())[0]
    await probe.send_to(text_data="traced?")
    assert await probe.receive_from() == str(traced)
    await probe.disconnect()


async def test_preview_cuts_long_text_and_shows_bytes_as_hex():
    assert preview("a" * 500) == {"text": "a" * 200 + "...", "length": 500}
    assert preview(b"\x00\xff") == {"bytes": 2, "hex": "00 ff"}
    assert preview({"n": [1, None, 2.5]}) == {"n": [1, None, 2.5]}


def trace_socket(token: str, session_key: str):
    """A ``/ws/trace/<token>/`` communicator of ``session_key``'s browser, on uvicorn's terms."""
    return with_cookie(
        make_communicator(f"/ws/trace/{token}/", extensions={"websocket.http.response": {}}),
        session_key,
    )


async def test_a_token_has_at_most_trace_listeners_per_token_the_next_is_refused_429(caplog):
    """Each traced event goes to every trace socket of its token: 20 of them made 2,000 traced
    echoes cost 3.6 s of CPU. The default bound is 2 (a page and its reconnect)."""
    from prometheus_client import REGISTRY

    def refused() -> float:
        sample = ("channels_echo_refusals_total", {"reason": "trace_listeners"})
        return REGISTRY.get_sample_value(*sample) or 0.0

    assert settings.TRACE_LISTENERS_PER_TOKEN == 2
    session_key, token = await new_session()
    listeners = [trace_socket(token, session_key) for _ in range(2)]
    for listener in listeners:
        assert (await listener.connect())[0]
    refused_before = refused()
    third = trace_socket(token, session_key)
    with caplog.at_level(logging.WARNING):
        await third.send_input({"type": "websocket.connect"})
        start = await third.receive_output()
        body = await third.receive_output()
    assert start["status"] == 429
    assert b"2 trace socket(s) open already (TRACE_LISTENERS_PER_TOKEN)" in body["body"]
    assert refused() == refused_before + 1
    assert [r.levelname for r in caplog.records if r.name == "app.handshake"] == ["WARNING"]
    # A listener that leaves frees its place.
    await listeners[0].disconnect()
    again = trace_socket(token, session_key)
    assert (await again.connect())[0]
    await again.disconnect()
    await listeners[1].disconnect()


async def test_each_trace_record_is_serialised_once_whatever_the_listeners(monkeypatch):
    """The tracer sends the record's JSON text; each trace socket sends that text as it is."""
    session_key, token = await new_session()
    listeners = [trace_socket(token, session_key) for _ in range(2)]
    for listener in listeners:
        assert (await listener.connect())[0]
    dumps = json.dumps
    calls = []
    monkeypatch.setattr(json, "dumps", lambda *a, **k: calls.append(1) or dumps(*a, **k))
    echo = with_cookie(make_communicator(f"/ws/echo/async/?trace={token}"), session_key)
    assert (await echo.connect())[0]
    await echo.send_to(text_data="once")
    assert await echo.receive_from() == "once"
    await echo.disconnect()
    got = [[await listener.receive_from() for _ in range(5)] for listener in listeners]
    monkeypatch.setattr(json, "dumps", dumps)
    assert got[0] == got[1]  # the same text to each
    assert [json.loads(text)["type"] for text in got[0]] == [
        "websocket.connect", "websocket.accept", "websocket.receive", "websocket.send",
        "websocket.disconnect",
    ]  # fmt: skip
    assert len(calls) == 5  # one serialisation per record, not one per record and listener
    for listener in listeners:
        await listener.disconnect()
