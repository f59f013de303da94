"""uvicorn's WebSocket protocol driven in process, as uvicorn drives it, on a mock transport."""

from __future__ import annotations


def drive(protocol_class, app):
    """uvicorn's WebSocket protocol on a mock transport, as uvicorn drives it, through the
    handshake; returns (protocol, transport)."""
    from unittest import mock

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    protocol = protocol_class(Config(app, ws=protocol_class, lifespan="off"), ServerState(), {})
    transport = mock.Mock()
    transport.get_extra_info.side_effect = {"peername": ("127.0.0.1", 1234)}.get
    transport.get_write_buffer_size.return_value = 0
    transport.is_closing.return_value = False
    protocol.connection_made(transport)
    protocol.data_received(
        b"GET /ws/echo/async/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return protocol, transport
