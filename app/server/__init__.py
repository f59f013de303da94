"""How this project runs under uvicorn: the one server that carries the whole ASGI WebSocket spec,
with every resource a client can make it hold bounded.

``python manage.py serve`` uses ``uvicorn_config``; tests and benchmarks start the same
command, so what is tested is what runs.

uvicorn's configuration covers some bounds (``ws_max_size``, the h11 parser's
``h11_max_incomplete_event_size``); the others need its protocol classes, subclassed here and
nowhere else. Each override says its cause; ``tests/test_limits.py`` attacks a real
``manage.py serve`` process for each one, so an upgrade of uvicorn that changes what an override
relies on fails a test.

| bound | setting (default) | answer |
|---|---|---|
| request head size | ``HTTP_MAX_HEADER_BYTES`` (16 KiB) | 431, socket closed |
| header lines | ``HTTP_MAX_HEADERS`` (100) | 431, socket closed |
| time to send a request head | ``HTTP_HEADER_TIMEOUT`` (10 s) | 408, socket closed |
| request line, one header line, header count, as websockets parses the handshake | websockets' own (8 KiB, 8 KiB, 128) | 414/431, socket closed |
| open WebSockets per process | ``WEBSOCKET_MAX_CONNECTIONS`` (fd limit - 1,000) | 503 |
| open WebSockets per client address | ``WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT`` (2,000) | 503 |
| frames a second, control frames and fragments included | ``WEBSOCKET_FRAME_RATE`` / ``_BURST`` (50,000 / a message at the limit in 64 B fragments, 16,384) | close 1008 |
| bytes of one message, fragments included | ``SERVER_MAX_MESSAGE_BYTES`` (uvicorn's ``ws_max_size``), the fragments in one buffer | close 1009 |
| bytes queued for a client that does not read | ``WEBSOCKET_WRITE_BUFFER_BYTES`` (256 KiB): reading from it pauses; the app's send waits past 4x | |
| time the queue stays over that mark | ``WEBSOCKET_SEND_TIMEOUT`` (10 s) | close 1008, socket dropped |
| bytes a compressed message inflates to | ``SERVER_MAX_MESSAGE_BYTES`` (inflated no further) | close 1009 |
| zlib streams an idle connection holds (permessage-deflate) | none: no context takeover either way (``WEBSOCKET_DEFLATE_CONTEXT_TAKEOVER``), a stream per message | |

The package, by subject: ``http`` (request heads), ``caps`` (connections per process and per
address), ``frames`` (frame rate, fragments, UTF-8), ``flow`` (clients that do not read, read
pausing), ``closing`` (the server's own closes, and sends after them), ``behaviours`` (the
``x-behaviours`` ASGI extension: fragments, RSV1 per message, pings and a drop on demand, for
``/ws/test/``), ``queue`` (one
connection's messages), ``deflate`` (permessage-deflate), ``outgoing`` (a frame made once for
the connections a message goes to, writes batched per turn of the event loop), ``websocket``
(the protocol class that composes them) and ``config`` (``uvicorn_config``).
"""

from app.server.caps import FD_RESERVE, connection_cap, raise_fd_limit
from app.server.closing import SERVER_CLOSED
from app.server.config import uvicorn_config
from app.server.http import HttpProtocol, http_refusal
from app.server.queue import MessageQueue
from app.server.websocket import WebSocketProtocol

__all__ = [
    "FD_RESERVE",
    "SERVER_CLOSED",
    "HttpProtocol",
    "MessageQueue",
    "WebSocketProtocol",
    "connection_cap",
    "http_refusal",
    "raise_fd_limit",
    "uvicorn_config",
]
