"""A send to a connection that is already closed: what each server raises, mapped to one error.

A room message queued for a member whose connection the server has just failed, or an echo of
a message read just before the client left: the server's ``send`` then raises, and each server
raises something else. The base classes (``app/dispatch.py``) turn each into ``ClientGone``,
only when it comes from the server's ``send``, so that an ``OSError`` of a handler's own still
propagates as with Channels.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from channels.exceptions import StopConsumer

from app.protocol import CloseCode, Message, Receive
from app.sources import discard

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
    application's own still propagates as with Channels. The consumer ends with one INFO line,
    after ``handle_the_rest``.
    """

    #: What the consumer's receive loop had read, or begun to read, from the server and not
    #: yet handled when this was raised: messages, and ``receive()`` awaitables (a started read
    #: on granian, an unstarted coroutine elsewhere), in order.
    leftovers: Sequence[Message | Awaitable[Message]] = ()


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


async def handle_the_rest(
    dispatch: Callable[[Message], Awaitable[None]],
    receive: Receive,
    leftovers: Sequence[Message | Awaitable[Message]],
    *,
    disconnect_handled: bool,
) -> None:
    """After a send found the client gone: handle what the server read from the client before
    it left, in order, up to and including its ``websocket.disconnect``.

    The consumer's sends go nowhere by now. A message read before the disconnect is handled as
    any other: a room member's last messages still reach the room, though their sender is no
    longer there to hear its own copy (dropping them lost 30-470 of 500 messages sent just
    before a close, issue 32). The disconnect is handled so that the consumer's clean-up runs
    (a room member leaves its group, which would otherwise keep a dead channel until the layer
    expires it: a day on Redis). A server that sends nothing for ``DISCONNECT_WAIT`` seconds is
    taken to have lost the connection (1006). A disconnect handled already (its handler sent,
    and found the client gone) is not handled twice.
    """
    pending = collections.deque(leftovers)
    try:
        while not disconnect_handled:
            item = pending.popleft() if pending else receive()
            if isinstance(item, dict):
                message = item
            else:
                try:
                    async with asyncio.timeout(DISCONNECT_WAIT):
                        message = await item
                except TimeoutError:
                    message = {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL_CLOSURE}
            if message["type"] == "websocket.disconnect":
                with contextlib.suppress(StopConsumer, ClientGone):
                    await dispatch(message)
                return
            await dispatch(message)
    finally:
        for item in pending:
            discard(item)
