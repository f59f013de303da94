"""Connection caps: how many WebSockets the process, and one client address, may hold open.

Past ``WEBSOCKET_MAX_CONNECTIONS`` (or the open-file limit less ``FD_RESERVE``) in the process,
or ``WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT`` from one address, a handshake is refused with 503
and one WARNING line per burst.
"""

from __future__ import annotations

import logging
import resource
from collections import Counter
from typing import Any

from django.conf import settings

from app import metrics
from app.logs import Throttled
from app.protocol import peer

logger = logging.getLogger("app.server")

#: File descriptors kept free of WebSockets for the listening socket, HTTP, Redis and the database.
FD_RESERVE = 1_000


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit; the connection cap below follows it
    return soft


def connection_cap() -> int:
    """``WEBSOCKET_MAX_CONNECTIONS``, or the fd limit less ``FD_RESERVE``, whichever is lower."""
    by_fds = max(1, raise_fd_limit() - FD_RESERVE)
    configured = settings.WEBSOCKET_MAX_CONNECTIONS
    return min(configured, by_fds) if configured > 0 else by_fds


class ConnectionCaps:
    """``WebSocketProtocol``'s part that counts open connections and refuses past the caps."""

    #: Open (or opening) WebSockets of this process, in all and by client host.
    open_count = 0
    open_by_host: Counter[str] = Counter()
    cap: int | None = None
    refusals = Throttled(logger)

    counted = False

    def handle_connect(self, event: Any) -> None:
        host = self.client[0] if self.client else "-"
        cls = type(self)
        if cls.cap is None:
            cls.cap = connection_cap()
        per_client = settings.WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT
        if cls.open_count >= cls.cap:
            why = f"{cls.open_count} WebSockets open, the process limit is {cls.cap}"
            metrics.refused("connection_cap")
        elif per_client > 0 and cls.open_by_host[host] >= per_client:
            why = f"{cls.open_by_host[host]} WebSockets open from {host}, the limit is {per_client}"
            metrics.refused("client_cap")
        else:
            self.counted = True
            cls.open_count += 1
            cls.open_by_host[host] += 1
            return super().handle_connect(event)
        cls.refusals.warning("refused %s: 503 %s", peer(self.client), why)
        self.handshake_initiated = self.handshake_complete = self.close_sent = True
        response = self.conn.reject(503, f"Service Unavailable: {why}\n")
        self.conn.send_response(response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            cls = type(self)
            cls.open_count -= 1
            host = self.client[0] if self.client else "-"
            cls.open_by_host[host] -= 1
            if cls.open_by_host[host] <= 0:
                del cls.open_by_host[host]
            self.counted = False
        super().connection_lost(exc)
