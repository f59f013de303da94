"""A send to a connection that is already closed: what each server raises, mapped to one error.

A room message queued for a member whose connection the server has just failed, or an echo of
a message read just before the client left: the server's ``send`` then raises, and each server
raises something else. The base classes (``app/dispatch.py``) turn each into ``ClientGone``,
only when it comes from the server's ``send``, so that an ``OSError`` of a handler's own still
propagates as with Channels.
"""

from __future__ import annotations

try:  # what uvicorn raises for a send to a client that has left
    from uvicorn.protocols.utils import ClientDisconnected
except ImportError:  # pragma: no cover - uvicorn is a dependency

    class ClientDisconnected(OSError):
        pass


try:  # what daphne raises for a send while its closing handshake runs
    from autobahn.exception import Disconnected
except ImportError:  # pragma: no cover - daphne is a dependency

    class Disconnected(RuntimeError):
        pass


#: What a server's ``send`` raises for a connection that it has closed, or that the client
#: left (measured in issue 23: a send every millisecond while the client sends a frame with
#: RSV1 set, a close frame, or a reset):
#:
#: - uvicorn: ``ClientDisconnected``, an ``OSError`` as the ASGI spec asks. (Plain uvicorn
#:   raises ``RuntimeError`` between failing a connection and losing it; ``app/server/``
#:   raises ``ClientDisconnected`` there too.)
#: - daphne: autobahn's ``Disconnected``, a ``RuntimeError``, while the closing handshake
#:   runs; once the connection is gone the send is dropped.
#: - hypercorn and granian: nothing; the send is dropped.
SERVER_SEND_GONE = (OSError, Disconnected)


class ClientGone(ClientDisconnected):
    """The server's ``send`` found the connection closed: the client left, or the server
    closed it for something the client did. Raised in place of whatever that server raises
    (``SERVER_SEND_GONE``), only from the server's ``send``, so that an ``OSError`` of the
    application's own still propagates as with Channels. The consumer ends with one INFO line.
    """


def from_server_send(error: Exception) -> Exception:
    """What the consumer raises for ``error`` from the server's ``send``: ``ClientGone`` for a
    closed connection, anything else as it is."""
    if isinstance(error, SERVER_SEND_GONE) and not isinstance(error, ClientGone):
        gone = ClientGone(f"{type(error).__name__}: {error}")
        gone.__cause__ = error
        return gone
    return error


#: Seconds a consumer whose send found the client gone waits for the server's
#: ``websocket.disconnect`` (uvicorn has queued it already; daphne sends it once its closing
#: handshake ends) before it handles a 1006 of its own.
DISCONNECT_WAIT = 5.0
