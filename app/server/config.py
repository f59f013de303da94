"""uvicorn's configuration for ``manage.py serve``: every choice deliberate."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from app.logs import uvicorn_log_config
from app.server.http import HttpProtocol
from app.server.websocket import WebSocketProtocol


def uvicorn_config(
    *, host: str = "127.0.0.1", port: int = 8000, reload: bool = False, workers: int | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``, every choice deliberate.

    - ``http``: h11 with ``HttpProtocol``'s bounds (see the module's table).
    - ``ws_max_size`` is the server's frame limit, set above the application's
      ``ECHO_MAX_MESSAGE_BYTES`` so that the application, which can say why, refuses first.
    - ``timeout_graceful_shutdown``: on SIGTERM uvicorn sends every WebSocket 1012 SERVICE_RESTART
      and waits at most this long for the consumers to finish.
    - ``log_config``: uvicorn's, with formatters that escape client text (``app/logs.py``).
    """
    return {
        "app": "project.asgi:application",
        "host": host,
        "port": port,
        "reload": reload,
        "reload_dirs": [str(settings.BASE_DIR / "app"), str(settings.BASE_DIR / "project")]
        if reload
        else None,
        "workers": workers,
        "http": HttpProtocol,
        "h11_max_incomplete_event_size": settings.HTTP_MAX_HEADER_BYTES,
        "ws": WebSocketProtocol,
        "ws_max_size": settings.SERVER_MAX_MESSAGE_BYTES,
        "ws_ping_interval": settings.WEBSOCKET_PING_INTERVAL,
        # permessage-deflate is deflate.py's, installed by WebSocketProtocol: uvicorn's keeps two
        # zlib streams for each connection's life and compresses even a 16 B message.
        "ws_per_message_deflate": False,
        "lifespan": "off",  # Channels' ProtocolTypeRouter has no lifespan handler
        "timeout_graceful_shutdown": 5,
        "proxy_headers": settings.BEHIND_PROXY,
        "forwarded_allow_ips": settings.FORWARDED_ALLOW_IPS,
        "log_level": settings.LOG_LEVEL.lower(),
        "log_config": uvicorn_log_config(),
    }
