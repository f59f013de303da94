"""Prometheus metrics, truthful across ``--workers`` and cheap on the message path.

``prometheus_client`` in multiprocess mode keeps every value in a memory-mapped file per
process, so that ``/metrics``, answered by whichever worker the scrape reaches, reports all
of them (``serve`` sets ``PROMETHEUS_MULTIPROC_DIR``; without it, one process reports its own).
A value written that way costs 2-5 us (measured: ``inc`` 2.3 us, ``observe`` 5.1 us), as much as
a tenth of an echo's whole cost, so the per-message figures (messages, bytes, handler time) are
added up in plain integers on the event loop and written once a second (``flush``) and at exit.
Everything else (connections, closes, refusals, layer events) happens once per connection or
less and is written at once.

Labels have bounded values: consumer class names, close codes, refusal reasons from a fixed set.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from app.protocol import Message

PREFIX = "channels_echo"
FLUSH_INTERVAL = (
    1.0  # seconds between writes of the per-message sums; /metrics lags by at most this
)

#: Why a handshake or a request was refused before any consumer ran (label ``reason``).
REFUSAL_REASONS = (
    "origin",  # a foreign Origin (403)
    "route",  # no WebSocket route at the path (404)
    "room",  # an invalid room name (400)
    "trace_token",  # a trace token not of this session (403)
    "room_access",  # a private room without a token, or a token not valid for the room (403)
    "trace_listeners",  # a trace token with TRACE_LISTENERS_PER_TOKEN sockets open already (429)
    "layer_unavailable",  # the channel layer is down (503)
    "connection_cap",  # WEBSOCKET_MAX_CONNECTIONS (503)
    "client_cap",  # WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT (503)
    "header_too_large",  # HTTP_MAX_HEADER_BYTES, HTTP_MAX_HEADERS, websockets' own limits (431, 414)
    "header_timeout",  # HTTP_HEADER_TIMEOUT (408)
    "bad_handshake",  # a handshake websockets cannot parse (400)
    "behaviour",  # /ws/test/: a parameter unknown, repeated, out of range, or not on this server (400)
    "push_budget",  # /ws/test/: pushes over TEST_PUSH_BYTES_PER_CLIENT for the address (429)
)

#: Handler time buckets in seconds: an echo takes tens of microseconds, a slow handler seconds.
HANDLER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0)

connections = Gauge(
    f"{PREFIX}_websocket_connections",
    "Open WebSocket connections, by consumer.",
    ["consumer"],
    multiprocess_mode="livesum",
)
accepted = Counter(
    f"{PREFIX}_websocket_accepted_total", "WebSocket connections accepted.", ["consumer"]
)
messages_received = Counter(
    f"{PREFIX}_websocket_messages_received_total",
    "websocket.receive events handled.",
    ["consumer"],
)
messages_sent = Counter(
    f"{PREFIX}_websocket_messages_sent_total", "websocket.send messages sent.", ["consumer"]
)
bytes_received = Counter(
    f"{PREFIX}_websocket_received_bytes_total",
    "Payload bytes received (text as UTF-8).",
    ["consumer"],
)
bytes_sent = Counter(
    f"{PREFIX}_websocket_sent_bytes_total", "Payload bytes sent (text as UTF-8).", ["consumer"]
)
closes = Counter(
    f"{PREFIX}_websocket_closes_total",
    "Closed WebSocket connections, by close code and by who closed first.",
    ["consumer", "code", "initiator"],
)
refusals = Counter(
    f"{PREFIX}_refusals_total",
    "Handshakes and requests refused before a consumer accepted them, by reason.",
    ["reason"],
)
handler_seconds = Histogram(
    f"{PREFIX}_handler_seconds",
    "Time from a message's arrival at the consumer to its handler's end.",
    ["consumer"],
    buckets=HANDLER_BUCKETS,
)
room_members = Gauge(
    f"{PREFIX}_room_members",
    "Room members connected (all rooms).",
    ["consumer"],
    multiprocess_mode="livesum",
)
layer_dropped = Counter(
    f"{PREFIX}_layer_messages_dropped_total",
    "Channel-layer messages the in-memory layer dropped (full) or evicted (expired).",
    ["reason"],
)
room_messages_lost = Counter(
    f"{PREFIX}_room_messages_lost_total",
    "Room messages members found missing (gaps in the sequence), on any layer.",
)
layer_errors = Counter(
    f"{PREFIX}_layer_errors_total", "Channel-layer operations that failed.", ["operation"]
)


def refused(reason: str) -> None:
    """Count a refusal (one of ``REFUSAL_REASONS``)."""
    refusals.labels(reason).inc()


def payload_bytes(message: Message) -> int:
    """A message's payload size: text as UTF-8 (encoded only when not ASCII; ``isascii`` is
    O(1)), or bytes. A malformed event counts 0: the consumer refuses it, counting must not fail."""
    text = message.get("text")
    if type(text) is str:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    data = message.get("bytes")
    return len(data) if isinstance(data, bytes | bytearray) else 0


class ConsumerStats:
    """One consumer class's per-message sums in this process, between two flushes.

    Changed only on the event loop's thread (sync consumers' sends are counted where the loop
    delivers them), so plain integers need no lock.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "handler_counts",
        "handler_total",
        "label",
        "messages_in",
        "messages_out",
        "room",
    )

    def __init__(self, label: str, *, room: bool = False) -> None:
        self.label = label
        self.room = room
        self._reset()

    def _reset(self) -> None:
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.handler_total = 0.0
        self.handler_counts = [0] * (len(HANDLER_BUCKETS) + 1)  # the last one is +Inf

    def flush(self) -> None:
        """Write the sums to the shared metrics and start again from zero."""
        if self.messages_in:
            messages_received.labels(self.label).inc(self.messages_in)
            bytes_received.labels(self.label).inc(self.bytes_in)
        if self.messages_out:
            messages_sent.labels(self.label).inc(self.messages_out)
            bytes_sent.labels(self.label).inc(self.bytes_out)
        if any(self.handler_counts):
            observe_many(
                handler_seconds.labels(self.label), self.handler_counts, self.handler_total
            )
        self._reset()


def observe_many(histogram: Histogram, counts: list[int], total: float) -> None:
    """Add ``counts[i]`` observations to bucket ``i`` and ``total`` to the sum, in one write each.

    prometheus_client has only ``observe`` (one value, two file writes); this writes its two
    kinds of values directly. tests/test_metrics.py checks it against ``observe``, so a change
    in prometheus_client's internals fails there.
    """
    histogram._sum.inc(total)
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


class Connection:
    """What one connection adds to the metrics: each message handled or sent, and its end.

    The consumer calls ``handled`` after each handler and ``sent`` before each send, on the
    event loop: ``sent`` is not a wrapper around ``send``, which would cost a coroutine per
    message (measured: 0.6 us, a third of the whole per-message cost of the metrics).
    """

    __slots__ = ("closed_by_server", "disconnect_handled", "open", "stats")

    def __init__(self, stats: ConsumerStats) -> None:
        self.stats = stats
        self.open = False
        self.closed_by_server = False
        self.disconnect_handled = False  # read by the consumer that found its client gone

    def handled(self, message: Message, started: float) -> None:
        """Count a message whose handler began at ``started`` (``perf_counter``) and has ended."""
        elapsed = perf_counter() - started
        stats = self.stats
        stats.handler_total += elapsed
        stats.handler_counts[bisect_left(HANDLER_BUCKETS, elapsed)] += 1
        kind = message["type"]
        if kind == "websocket.receive":
            stats.messages_in += 1
            stats.bytes_in += payload_bytes(message)
        elif kind == "websocket.disconnect":
            self.disconnect_handled = True
            self.disconnected(message)

    def sent(self, message: Message) -> None:
        """Count what leaves: messages and their bytes, the accept, the server's close."""
        kind = message["type"]
        if kind == "websocket.send":
            stats = self.stats
            stats.messages_out += 1
            stats.bytes_out += payload_bytes(message)
        elif kind == "websocket.accept":
            self._opened()
        elif kind == "websocket.close" and self.open and not self.closed_by_server:
            self.closed_by_server = True
            closes.labels(self.stats.label, str(message.get("code", 1000)), "server").inc()

    def _opened(self) -> None:
        self.open = True
        accepted.labels(self.stats.label).inc()
        connections.labels(self.stats.label).inc()
        if self.stats.room:
            room_members.labels(self.stats.label).inc()

    def disconnected(self, message: Message) -> None:
        """A ``websocket.disconnect``: the client's close, unless the application closed first
        or the server says it closed the connection itself (``initiator``, app/server/)."""
        if self.open and not self.closed_by_server:
            self.closed_by_server = True  # counted once
            initiator = message.get("initiator", "client")
            closes.labels(self.stats.label, str(message.get("code", 1005)), initiator).inc()

    def ended(self) -> None:
        if self.open:
            self.open = False
            connections.labels(self.stats.label).dec()
            if self.stats.room:
                room_members.labels(self.stats.label).dec()


_stats: dict[str, ConsumerStats] = {}
_flushing: asyncio.AbstractEventLoop | None = None


def consumer_stats(label: str, *, room: bool = False) -> ConsumerStats:
    """The process's sums for consumer ``label``; also makes sure they are flushed each second."""
    _keep_flushing()
    stats = _stats.get(label)
    if stats is None:
        stats = _stats[label] = ConsumerStats(label, room=room)
    return stats


def flush() -> None:
    for stats in _stats.values():
        stats.flush()


def _keep_flushing() -> None:
    """A timer on the running loop, once per loop: ``flush`` every ``FLUSH_INTERVAL``."""
    global _flushing
    loop = asyncio.get_running_loop()
    if _flushing is loop:
        return
    _flushing = loop

    def tick() -> None:
        flush()
        if _flushing is loop:
            loop.call_later(FLUSH_INTERVAL, tick)

    loop.call_later(FLUSH_INTERVAL, tick)


atexit.register(flush)  # the last second's sums, when a worker stops


def multiprocess_dir() -> Path | None:
    """Where this process's values live, if it writes them to files (multiprocess mode).

    Decided when prometheus_client was imported: a process that imported it before
    ``PROMETHEUS_MULTIPROC_DIR`` was set keeps its values in memory (and reports only them).
    """
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not value or values.ValueClass is values.MutexValue:
        return None
    return Path(value)


@contextlib.contextmanager
def multiprocess_dir_for_serving() -> Iterator[Path]:
    """For ``serve``: ``PROMETHEUS_MULTIPROC_DIR`` set and emptied, as prometheus_client
    requires between runs; a temporary folder, removed afterwards, where it was not set.
    The server's processes inherit it."""
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = Path(value) if value else Path(tempfile.mkdtemp(prefix="channels-echo-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for file in directory.glob("*.db"):
        file.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    try:
        yield directory
    finally:
        if not value:
            shutil.rmtree(directory, ignore_errors=True)


_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db")


def forget_dead_processes(directory: Path) -> None:
    """Live gauges (open connections, room members) of workers that died without exiting."""
    for file in directory.glob("gauge_live*.db"):
        match = _LIVE_FILE.fullmatch(file.name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exposition() -> tuple[bytes, str]:
    """The text format for a scrape: every worker's values in multiprocess mode."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    forget_dead_processes(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry), CONTENT_TYPE_LATEST
