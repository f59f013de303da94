"""/metrics: what each metric counts (in process, through the whole stack), who may read it,
and the one place that writes prometheus_client's values directly.

Across ``--workers``, tests/test_nginx.py checks that every scrape reports all workers.
"""

from __future__ import annotations

import contextlib
import http.client
import time

import pytest
from django.test import Client, override_settings
from prometheus_client import REGISTRY, Histogram
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from tests.attacks import PING, TEXT, close_code, frame, read_until_closed, websocket

pytestmark = pytest.mark.django_db


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Samples now, by a short name, to compare with later (the test process's registry).

    ``Delta(opened=("channels_echo_websocket_connections", {"consumer": "X"}))``
    """

    def __init__(self, **samples: tuple[str, dict[str, str]]) -> None:
        self.samples = samples
        self.before = self._values()

    def _values(self) -> dict[str, float]:
        return {alias: value(name, **labels) for alias, (name, labels) in self.samples.items()}

    def __call__(self) -> dict[str, float]:
        """What changed since, after the per-message sums were flushed."""
        metrics.flush()
        return {alias: now - self.before[alias] for alias, now in self._values().items()}


def test_observe_many_writes_what_observe_would():
    """A guard on prometheus_client's internals (``_sum``, ``_buckets``) that observe_many uses."""
    one, many = (
        Histogram(f"guard_{name}_seconds", "guard", buckets=metrics.HANDLER_BUCKETS, registry=None)
        for name in ("one", "many")
    )
    durations = [0.00005, 0.0003, 0.0003, 0.002, 0.7, 9.0]
    for duration in durations:
        one.observe(duration)
    counts = [0] * (len(metrics.HANDLER_BUCKETS) + 1)
    for duration in durations:
        counts[next(
            (i for i, bound in enumerate(metrics.HANDLER_BUCKETS) if duration <= bound),
            len(metrics.HANDLER_BUCKETS),
        )] += 1  # fmt: skip
    metrics.observe_many(many, counts, sum(durations))

    def samples(histogram):
        return [
            (s.name.split("_seconds")[1], s.labels, s.value)
            for s in histogram.collect()[0].samples
            if not s.name.endswith("_created")
        ]

    assert samples(one) == samples(many)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_messages_bytes_handler_time_connections_and_closes_are_counted(
    communicator_factory, kind
):
    consumer = "EchoSyncConsumer" if kind == "sync" else "EchoAsyncConsumer"
    c = {"consumer": consumer}
    p = "channels_echo_websocket_"
    delta = Delta(
        open=(p + "connections", c),
        accepted=(p + "accepted_total", c),
        received=(p + "messages_received_total", c),
        sent=(p + "messages_sent_total", c),
        bytes_received=(p + "received_bytes_total", c),
        bytes_sent=(p + "sent_bytes_total", c),
        handled=("channels_echo_handler_seconds_count", c),
        client_4000=(p + "closes_total", {**c, "code": "4000", "initiator": "client"}),
        server_1009=(p + "closes_total", {**c, "code": "1009", "initiator": "server"}),
    )
    communicator = communicator_factory(f"/ws/echo/{kind}/")
    assert (await communicator.connect())[0]
    await communicator.send_to(text_data="héllo")  # 6 bytes in UTF-8
    await communicator.receive_from()
    await communicator.send_to(bytes_data=b"\x00" * 10)
    await communicator.receive_from()
    assert delta()["open"] == 1
    await communicator.disconnect(code=4000)
    second = communicator_factory(f"/ws/echo/{kind}/")
    assert (await second.connect())[0]
    await second.send_to(text_data="x" * (256 * 1024 + 1))  # over the limit: the server's 1009
    assert (await second.receive_output())["code"] == 1009
    await second.send_input({"type": "websocket.disconnect", "code": 1009})
    await second.wait()
    assert delta() == {
        "open": 0,
        "accepted": 2,
        "received": 3,
        "sent": 2,
        "bytes_received": 16 + 256 * 1024 + 1,
        "bytes_sent": 16,
        "handled": 3 + 2 + 2,  # receives, connects, disconnects
        "client_4000": 1,
        "server_1009": 1,  # the client's 1009 answering it is not a second close
    }


@pytest.mark.asyncio
async def test_refusals_are_counted_by_reason(communicator_factory):
    reasons = ("origin", "route", "room")
    before = {r: value("channels_echo_refusals_total", reason=r) for r in reasons}
    for path, origin in (
        ("/ws/echo/async/", "https://evil.example"),
        ("/ws/nowhere/", "http://127.0.0.1:8000"),
        ("/ws/broadcast/async/" + "x" * 81 + "/", "http://127.0.0.1:8000"),
    ):
        communicator = communicator_factory(path, origin=origin)
        connected, _ = await communicator.connect()
        assert not connected
    assert {r: value("channels_echo_refusals_total", reason=r) - before[r] for r in reasons} == {
        r: 1 for r in reasons
    }


@pytest.mark.asyncio
async def test_room_members_are_counted_while_connected(communicator_factory):
    delta = Delta(members=("channels_echo_room_members", {"consumer": "BroadcastAsyncConsumer"}))
    joined = [communicator_factory("/ws/broadcast/async/counted/") for _ in range(3)]
    for communicator in joined:
        assert (await communicator.connect())[0]
    assert delta()["members"] == 3
    for communicator in joined:
        await communicator.disconnect()
    assert delta()["members"] == 0


def scrape(client: Client, **headers) -> tuple[int, str]:
    response = client.get("/metrics", **headers)
    return response.status_code, response.content.decode()


def test_metrics_answer_loopback_clients_by_default_in_the_text_format():
    status, body = scrape(Client(REMOTE_ADDR="127.0.0.1"))
    assert status == 200
    names = {family.name for family in text_string_to_metric_families(body)}
    assert {
        "channels_echo_websocket_connections",
        "channels_echo_websocket_messages_received",  # the parser drops the _total
        "channels_echo_handler_seconds",
        "channels_echo_refusals",
        "channels_echo_room_members",
        "channels_echo_layer_messages_dropped",
        "channels_echo_layer_errors",
    } <= names


def test_metrics_refuse_other_addresses_with_a_log_line(caplog):
    status, body = scrape(Client(REMOTE_ADDR="203.0.113.9"))
    assert status == 403 and "loopback" in body
    assert "refused /metrics to 203.0.113.9: not a loopback address" in caplog.text


@override_settings(METRICS_ACCESS="token", METRICS_TOKEN="s3cret-token-0123456789")
def test_metrics_with_a_bearer_token_from_anywhere():
    client = Client(REMOTE_ADDR="203.0.113.9")
    assert scrape(client)[0] == 401
    assert scrape(client, HTTP_AUTHORIZATION="Bearer wrong-token-0123456789")[0] == 401
    status, _ = scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-token-0123456789")
    assert status == 200


@override_settings(METRICS_ACCESS="off")
def test_metrics_can_be_turned_off():
    assert scrape(Client(REMOTE_ADDR="127.0.0.1"))[0] == 404


@pytest.mark.server
def scraped_text(port: int) -> str:
    """A live server's ``/metrics``, as Prometheus asks for it on the upstream port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    assert response.status == 200, response.status
    return response.read().decode()


def scraped(port: int, name: str, labels: dict[str, str]) -> float:
    """One sample of a live server's ``/metrics`` (0 where it has none yet)."""
    for family in text_string_to_metric_families(scraped_text(port)):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_a_servers_own_refusal_is_counted(uvicorn_server):
    """The 431 that app/server/ answers before any consumer runs, in the live server."""
    refusals = ("channels_echo_refusals_total", {"reason": "header_too_large"})
    before = scraped(uvicorn_server.port, *refusals)
    connection = http.client.HTTPConnection("127.0.0.1", uvicorn_server.port, timeout=5)
    connection.request("GET", "/", headers={"X-Big": "x" * 20_000})
    assert connection.getresponse().status == 431
    assert scraped(uvicorn_server.port, *refusals) == before + 1


@pytest.mark.parametrize(
    ("code", "frames"),
    [
        (1002, lambda: bytes([0xC1, 0x80, 0, 0, 0, 0])),  # RSV1 set, no extension negotiated
        (1007, lambda: frame(TEXT, b"\xff\xfe")),  # invalid UTF-8
        (1008, lambda: frame(PING) * 40_000),  # past the frame rate's burst
        (1009, lambda: bytes([0x82, 0xFF]) + (2**20 + 1).to_bytes(8, "big") + bytes(4)),
    ],
    ids=["protocol-error", "invalid-utf8", "frame-rate", "frame-over-server-limit"],
)
def test_closes_the_server_makes_are_counted_as_the_servers(uvicorn_server, code, frames):
    """A close the server layer makes (not the application, not the client) is ``server``:
    before, every close the application did not send counted as the client's."""
    closes = "channels_echo_websocket_closes_total"
    labels = {"consumer": "EchoAsyncConsumer", "code": str(code)}
    before = {
        who: scraped(uvicorn_server.port, closes, {**labels, "initiator": who})
        for who in ("server", "client")
    }
    sock = websocket(uvicorn_server.port, "/ws/echo/async/")
    with sock, contextlib.suppress(OSError):
        sock.sendall(frames())
        assert close_code(read_until_closed(sock)) == code
    deadline = time.monotonic() + 5
    while (
        scraped(uvicorn_server.port, closes, {**labels, "initiator": "server"}) == before["server"]
    ):
        assert time.monotonic() < deadline, "the server's close was not counted as the server's"
        time.sleep(0.05)  # poll interval of the live server's metrics
    assert (
        scraped(uvicorn_server.port, closes, {**labels, "initiator": "client"}) == before["client"]
    )
    uvicorn_server.wait_for_log(rf"closing {code} \S+ for 127\.0\.0\.1:\d+ /ws/echo/async/: ")


@pytest.mark.asyncio
async def test_layer_drops_and_the_losses_members_find_are_counted():
    from app.layers import BoundedInMemoryChannelLayer
    from app.session import Session

    delta = Delta(
        full=("channels_echo_layer_messages_dropped_total", {"reason": "full"}),
        lost=("channels_echo_room_messages_lost_total", {}),
    )
    layer = BoundedInMemoryChannelLayer(capacity=1)
    channel = await layer.new_channel()
    await layer.group_add("room.counted", channel)
    for _ in range(3):  # one fits; group_send drops the others, as Channels' layer does
        await layer.group_send("room.counted", {"type": "room.message", "text": "x"})
    Session(consumer="async", scope={"type": "websocket"}).fell_behind(2)
    assert delta() == {"full": 2, "lost": 2}


def test_the_production_recipe_serves_local_scrapes_and_health_checks(server_env):
    """The README's production environment, word for word: Prometheus scrapes the upstream port
    over plain HTTP with ``Host: 127.0.0.1:PORT``; so does a local health check. (Before: 301 to
    an https port that speaks HTTP, then 400 for a Host not in ``DJANGO_ALLOWED_HOSTS``.) A
    foreign Host from a non-local client is still refused."""
    import secrets

    from tests.servers import LiveServer

    production = {
        **server_env,
        "DJANGO_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "echo.example.com",
        "BEHIND_PROXY": "1",
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    with LiveServer("uvicorn", env=production) as server:
        for path, type_ in (("/metrics", "text/plain"), ("/healthz", "application/json")):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            connection.request("GET", path)
            response = connection.getresponse()
            assert (response.status, response.getheader("Location")) == (200, None), path
            assert response.getheader("Content-Type").startswith(type_)
        assert "channels_echo_websocket_connections" in scraped_text(server.port)
        # Through the proxy (a forwarded, non-local address), the Host check still holds.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request(
            "GET",
            "/healthz",
            headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
        )
        assert connection.getresponse().status == 400
