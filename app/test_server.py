"""``/ws/test/``: an echo that misbehaves on demand, for testing WebSocket clients.

It echoes as the echo consumers do (the same ``Session``: subprotocol, size limit, rate limit)
and does what its query parameters ask (``app/behaviours.py`` parses them; the table is in
docs/testing-your-client.md). Fragments, pings, RSV1 per message and a drop without a close
frame are the server's to do: they go through the ``x-behaviours`` ASGI extension
(``app/server/behaviours.py``), and a server without it refuses them at the handshake. Delays,
closes, pushes and the handshake report are plain ASGI and work on every server.

Everything a client can make a connection hold is bounded: pushes per connection (64 MiB) and
per client address (``TEST_PUSH_BYTES_PER_CLIENT`` bytes a second, in this process), delayed
echoes per connection (``TEST_DELAY_BACKLOG_BYTES``), timers by the parameters' ranges, and
connections by the server's own caps.
"""

from __future__ import annotations

import asyncio
import collections
import json
import struct
import time
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

from channels.exceptions import StopConsumer
from django.conf import settings

from app import protocol
from app.behaviours import Behaviours, InvalidBehaviour
from app.client_gone import ClientGone
from app.dispatch import LeanAsyncConsumer
from app.handshake import denial
from app.metrics import payload_bytes
from app.protocol import CloseCode, ConnectionState, Message, Receive, Scope, Send, peer
from app.server.behaviours import EXTENSION, X_DROP, X_PING, X_SEND
from app.session import Session

#: What a delayed echo costs beyond its payload, in the backlog's count (its entry, its message).
HELD_OVERHEAD = 200
#: ``compress=`` as ``websocket.x.send``'s ``compress`` key (alternate: see ``_compress``).
COMPRESS_KEY = {"auto": None, "never": False, "always": True}


class PushBudget:
    """Bytes a second of pushes running per client address, in this process."""

    def __init__(self) -> None:
        self.running: collections.Counter[str] = collections.Counter()

    def take(self, host: str, rate: float, *, limit: int) -> tuple[HTTPStatus, str] | None:
        """Reserve ``rate`` for ``host``; else the refusal's status and reason."""
        if rate > limit:
            return HTTPStatus.BAD_REQUEST, (
                f"push_size x push_rate is {rate:,.0f} bytes/s, over the {limit:,} bytes/s one"
                " address may be pushed (TEST_PUSH_BYTES_PER_CLIENT)"
            )
        if self.running[host] + rate > limit:
            return HTTPStatus.TOO_MANY_REQUESTS, (
                f"pushes of {self.running[host]:,.0f} bytes/s run for this address already;"
                f" {rate:,.0f} more is over TEST_PUSH_BYTES_PER_CLIENT ({limit:,} bytes/s)"
            )
        self.running[host] += rate
        return None

    def give_back(self, host: str, rate: float) -> None:
        self.running[host] -= rate
        if self.running[host] <= 0.5:  # float sums: gone, not 1e-12
            del self.running[host]


push_budget = PushBudget()


async def sleep_until(deadline: float) -> None:
    """Until ``time.monotonic()`` reaches ``deadline``, never less: uvloop's timers keep
    milliseconds and fire up to one early (a delay of 400 ms measured 399.85)."""
    while (wait := deadline - time.monotonic()) > 0:
        await asyncio.sleep(wait)


def push_message(number: int, behaviours: Behaviours) -> Message:
    """Push ``number``: its number and the server's wall-clock time (ms) as it is sent.

    Text: ``push <n> <t>`` padded with spaces to ``push_size`` bytes; bytes: 8 bytes of ``n``
    and an 8-byte IEEE double ``t``, big-endian, then zero bytes to ``push_size``.
    """
    now = time.time() * 1000
    size = behaviours.push_size
    if behaviours.push_type == "bytes":
        head = struct.pack("!Qd", number, now)
        return protocol.send_bytes(head + bytes(size - len(head)))
    return protocol.send_text(f"push {number} {now:.3f}".ljust(size))


def handshake_report(scope: Scope) -> dict[str, Any]:
    """``headers=1``'s first message: the handshake as the server received it."""
    target = scope.get("raw_path") or scope.get("path", "").encode()
    if query := scope.get("query_string", b""):
        target += b"?" + query
    headers = [
        [name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]
    ]
    offered = [
        offer.strip()
        for name, value in headers
        if name.lower() == "sec-websocket-extensions"
        for offer in value.split(",")
        if offer.strip()
    ]
    return {
        "request_line": f"GET {target.decode('latin-1')} HTTP/{scope.get('http_version', '1.1')}",
        "headers": headers,
        "subprotocols": list(scope.get("subprotocols") or ()),
        "extensions": offered,
        "client": peer(scope.get("client"), None),
    }


class BehavioursConsumer(LeanAsyncConsumer):
    """Echo, with the behaviours the query string asks for."""

    channel_layer_alias = None
    uses_database = False
    traceable = True  # ?trace=<token> is the page's, as on the echo routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.tasks: list[asyncio.Task] = []
        self.pushing = 0.0  # bytes a second reserved in push_budget, until the pushes end
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stop_tasks()
            self._pushes_ended()

    async def websocket_connect(self, event: Message) -> None:
        self.session = Session.from_settings(self.scope, consumer="test")
        extension = (self.scope.get("extensions") or {}).get(EXTENSION)
        try:
            wanted = Behaviours.from_query(self.scope.get("query_string", b""))
            why = wanted.refusal(self.session.features, extension=extension)
        except InvalidBehaviour as error:
            why = str(error)
        status, label = HTTPStatus.BAD_REQUEST, "behaviour"
        if why is None and wanted.push:
            self.push_host = (self.scope.get("client") or ("-",))[0]
            refused = push_budget.take(
                self.push_host,
                wanted.push_bytes_per_second,
                limit=settings.TEST_PUSH_BYTES_PER_CLIENT,
            )
            if refused is None:
                self.pushing = wanted.push_bytes_per_second
            else:
                (status, why), label = refused, "push_budget"
        if why is not None:
            for message in denial(self.scope, status, why, reason=label):
                await self.send(message)
            raise StopConsumer()
        self.behaviours = wanted
        self.echoes = 0
        self.backlog: collections.deque[tuple[float, Message, int]] = collections.deque()
        self.held = 0
        self.drained = asyncio.Event()
        self.delayer: asyncio.Task | None = None
        await self.send(self.session.accept())
        await self._begin()

    async def _begin(self) -> None:
        """What happens at accept: the handshake report, a close or drop at once, timers."""
        wanted = self.behaviours
        if wanted.headers:
            await self.send(protocol.send_text(json.dumps(handshake_report(self.scope))))
        if wanted.close is not None and (
            (wanted.close_after is None and wanted.close_in is None) or wanted.close_after == 0
        ):
            return await self._close()
        if wanted.drop_after == 0:
            return await self._drop()
        if wanted.close_in is not None:
            self._spawn(self._close_in(wanted.close_in / 1000))
        if wanted.ping is not None:
            self._spawn(self._pinger(wanted.ping, wanted.pong_timeout))
        if wanted.push:
            self._spawn(self._pusher())

    async def websocket_receive(self, event: Message) -> None:
        reply = self.session.reply(event)  # the echo, a close, or None
        if reply is None:
            return
        if reply["type"] != "websocket.send":
            self._stop_tasks()
            await self.send(reply)
        elif self.behaviours.delay:
            await self._hold(reply)
        else:
            await self._echo(reply)

    async def websocket_x_pong(self, event: Message) -> None:
        """A pong for one of our pings (``x-behaviours``); its payload is the ping's number."""
        number = int(event["data"])
        if number > self.answered:
            self.answered = number
            sent = self.ping_sent.get(number)
            waited = (asyncio.get_running_loop().time() - sent) * 1000 if sent else float("nan")
            self.session.log.info("pong %d came back after %.1f ms", number, waited)
        self.ping_sent = {n: t for n, t in self.ping_sent.items() if n > self.answered}

    async def websocket_disconnect(self, event: Message) -> None:
        self.session.disconnected(event)
        raise StopConsumer()

    # --- echoes --------------------------------------------------------------------------

    async def _echo(self, reply: Message) -> None:
        """Send one echo as asked (fragments, compression), then a close or drop it counts to."""
        if self.session.state is not ConnectionState.OPEN:
            return  # closed while it waited
        self.echoes += 1
        wanted = self.behaviours
        if wanted.fragment is not None or wanted.compress != "auto":
            self._metrics.sent(reply)  # counted as the echo it is (a websocket.x.send is not)
            reply = {**reply, "type": X_SEND, "fragment": wanted.fragment}
            reply["compress"] = self._compress()
        await self.send(reply)
        if wanted.close is not None and wanted.close_after == self.echoes:
            await self._close()
        elif wanted.drop_after == self.echoes:
            await self._drop()

    def _compress(self) -> bool | None:
        """``compress=``: alternate compresses the 1st, 3rd, 5th... echo, not the others."""
        mode = self.behaviours.compress
        return self.echoes % 2 == 1 if mode == "alternate" else COMPRESS_KEY[mode]

    async def _hold(self, reply: Message) -> None:
        """Queue an echo for ``delay`` ms after its arrival; past ``TEST_DELAY_BACKLOG_BYTES``
        held, wait (taking no more messages) until the oldest has gone."""
        size = payload_bytes(reply) + HELD_OVERHEAD
        limit = settings.TEST_DELAY_BACKLOG_BYTES
        if self.held and self.held + size > limit:
            self.session.log.info(
                "delay backlog full (%d bytes held, TEST_DELAY_BACKLOG_BYTES %d): reading waits",
                self.held,
                limit,
            )
            while self.held and self.held + size > limit:
                if self.delayer is None or self.delayer.done():
                    return  # closing, or the client is gone: the echo has nowhere to go
                self.drained.clear()
                await self.drained.wait()
        self.held += size
        self.backlog.append((time.monotonic() + self.behaviours.delay / 1000, reply, size))
        if self.delayer is None or self.delayer.done():
            self.delayer = self._spawn(self._release_delayed())

    async def _release_delayed(self) -> None:
        while self.backlog:
            due, reply, size = self.backlog[0]
            await sleep_until(due)
            self.backlog.popleft()
            self.held -= size
            self.drained.set()
            await self._echo(reply)

    # --- what the server does of its own accord --------------------------------------------

    async def _close(self) -> None:
        self._stop_tasks()
        wanted = self.behaviours
        await self.send(self.session.close(wanted.close, wanted.reason))

    async def _close_in(self, seconds: float) -> None:
        await sleep_until(time.monotonic() + seconds)
        await self._close()

    async def _drop(self) -> None:
        self._stop_tasks()
        self.session.state = ConnectionState.CLOSING
        self.session.log.info("dropping the TCP connection after %d echoes", self.echoes)
        await self.send({"type": X_DROP})

    async def _pinger(self, interval: float, timeout: float | None) -> None:
        """A ping every ``interval`` s, numbered; the log says whether each pong came back. With
        ``timeout``, a ping unanswered that long closes 1011 ``pong timeout`` (a pong answers
        its ping and those before it, as RFC 6455 lets a client answer only the latest)."""
        loop = asyncio.get_running_loop()
        self.answered, self.ping_sent = 0, {}
        number, next_ping = 0, loop.time() + interval
        deadlines: collections.deque[tuple[float, int]] = collections.deque()
        while True:
            wake = min(next_ping, deadlines[0][0]) if deadlines else next_ping
            await asyncio.sleep(max(0.0, wake - loop.time()))
            now = loop.time()
            while deadlines and deadlines[0][0] <= now:
                _, due = deadlines.popleft()
                if self.answered < due:
                    self.session.log.info("pong %d did not come back within %g s", due, timeout)
                    self._stop_tasks()
                    await self.send(self.session.close(CloseCode.INTERNAL_ERROR, "pong timeout"))
                    return
            if now >= next_ping:
                if number > self.answered and timeout is None:
                    self.session.log.info("pong %d did not come back before the next ping", number)
                number += 1
                self.ping_sent[number] = now
                await self.send({"type": X_PING, "data": str(number).encode()})
                if timeout is not None:
                    deadlines.append((now + timeout, number))
                next_ping = now + interval

    async def _pusher(self) -> None:
        """``push`` messages at ``push_rate`` a second from accept, as well as the echoes."""
        wanted = self.behaviours
        loop = asyncio.get_running_loop()
        started, sent = loop.time(), 0
        try:
            while sent < wanted.push:
                due = min(wanted.push, int((loop.time() - started) * wanted.push_rate) + 1)
                while sent < due:
                    sent += 1
                    await self.send(push_message(sent, wanted))
                if sent < wanted.push:
                    await asyncio.sleep(max(0.0, started + sent / wanted.push_rate - loop.time()))
        finally:
            self._pushes_ended()
        self.session.log.info("pushed %d messages", sent)

    def _pushes_ended(self) -> None:
        """Give the pushes' bytes a second back to the address's budget, once."""
        if self.pushing:
            push_budget.give_back(self.push_host, self.pushing)
            self.pushing = 0.0

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self.tasks.append(task)
        return task

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        """A task's work; a client gone ends it quietly (the consumer hears the disconnect)."""
        try:
            await work
        except ClientGone:
            pass
        finally:
            self.drained.set()  # a handler waiting on the delay backlog looks again

    def _stop_tasks(self) -> None:
        """Stop the timers, pings and pushes (the one calling this runs on to its end)."""
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.tasks = [task for task in self.tasks if task is current]
