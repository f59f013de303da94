"""How this project runs under uvicorn: the one server that carries the whole ASGI WebSocket spec.

``python manage.py serve`` uses ``uvicorn_config``; tests and benchmarks start the same
command, so what is tested is what runs.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.protocol import CloseCode, Message, peer


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol, with two client errors kept out of the ERROR log.

    - A refused handshake (a 403 or 404 sent through the ``websocket.http.response``
      extension) also logs "ASGI callable returned without completing handshake" at ERROR
      (uvicorn PR #3138, open at the time of writing): the handshake is marked done.
    - Invalid UTF-8 in a text frame is closed with 1007 as before, but logged as one WARNING
      line instead of an ERROR with a traceback: it is the client's fault, not the server's.
    """

    async def send(self, message: Message) -> None:  # type: ignore[override]
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True

    def send_receive_event_to_app(self) -> None:
        """uvicorn's own method for a text message, but for the log line of invalid UTF-8."""
        if self.curr_msg_data_type != "text" or self.close_sent:
            return super().send_receive_event_to_app()
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        try:
            text = data.decode()
        except UnicodeDecodeError as error:
            self.logger.warning(
                "closing 1007 for %s: text message is not UTF-8 (%s)",
                peer(self.client),
                error.reason,
            )
            self.conn.send_close(CloseCode.INVALID_PAYLOAD, "invalid UTF-8")
            self.handle_parser_exception()
            return None
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        return None


def uvicorn_config(
    *, host: str = "127.0.0.1", port: int = 8000, reload: bool = False, workers: int | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``, every choice deliberate.

    - ``ws_max_size`` is the server's frame limit, set above the application's
      ``ECHO_MAX_MESSAGE_BYTES`` so that the application, which can say why, refuses first.
    - ``timeout_graceful_shutdown``: on SIGTERM uvicorn sends every WebSocket 1012 SERVICE_RESTART
      and waits at most this long for the consumers to finish.
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
        "ws": WebSocketProtocol,
        "ws_max_size": settings.SERVER_MAX_MESSAGE_BYTES,
        "ws_per_message_deflate": False,  # echo payloads are the client's; compressing them only costs CPU
        "lifespan": "off",  # Channels' ProtocolTypeRouter has no lifespan handler
        "timeout_graceful_shutdown": 5,
        "proxy_headers": settings.BEHIND_PROXY,
        "forwarded_allow_ips": settings.FORWARDED_ALLOW_IPS,
        "log_level": settings.LOG_LEVEL.lower(),
    }
