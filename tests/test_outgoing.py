"""The room path made cheap (issue 24): frames made once for a run of connections, writes
batched at the end of a turn of the event loop, and the in-memory layer's channel queue.

The protocol runs in process on a mock transport, as uvicorn drives it (tests/uvicorn_protocol.py);
what it writes is read back frame by frame.
"""

from __future__ import annotations

import asyncio
import random
import string
import zlib

import pytest
from websockets.frames import Frame, Opcode

from app.layers import ChannelQueue
from app.server.deflate import DeflateFactory
from app.server.outgoing import data_frame, framing
from tests.uvicorn_protocol import drive


def deflate(window_bits: int, *, takeover: bool = False):
    factory = DeflateFactory(
        server_no_context_takeover=not takeover,
        client_no_context_takeover=not takeover,
        server_max_window_bits=window_bits,
        compress_settings={"level": 1, "memLevel": 5},
        min_bytes=256,
    )
    return factory.process_request_params([], [])[1]


# --- frames made once -----------------------------------------------------------------------


@pytest.mark.parametrize("extensions", [[], "deflate"], ids=["plain", "deflate"])
def test_a_frame_is_what_websockets_would_write_and_is_reused_for_the_same_message(extensions):
    extensions = [deflate(12)] if extensions else []
    text = "room message " * 40
    message = {"type": "websocket.send", "text": text}
    first = data_frame(message, extensions)
    expected = Frame(Opcode.TEXT, text.encode()).serialize(
        mask=False, extensions=[deflate(12)] if extensions else []
    )
    assert first == expected
    # The next member's copy of the event holds the same text: the same bytes object comes back.
    assert data_frame({"type": "websocket.send", "text": text}, extensions) is first
    assert data_frame({"type": "websocket.send", "text": text + "!"}, extensions) is not first


def test_frames_are_not_shared_across_framings_that_differ():
    # Its repeat is 2,000 bytes back: within a 4 KiB window (12 bits), beyond a 1 KiB one (10).
    block = "".join(random.choices(string.ascii_letters, k=2000))
    text = block * 2
    message = {"type": "websocket.send", "text": text}
    at_12 = data_frame(message, [deflate(12)])
    at_10 = data_frame(message, [deflate(10)])
    plain = data_frame(message, [])
    assert len({at_12, at_10, plain}) == 3
    assert zlib.decompressobj(-10).decompress(at_10[4:] + b"\x00\x00\xff\xff") == text.encode()


def test_a_connection_that_keeps_deflate_context_has_each_frame_made_for_it():
    assert framing([deflate(12, takeover=True)]) is None
    takeover = [deflate(12, takeover=True)]
    text = "y" * 1000
    first = data_frame({"type": "websocket.send", "text": text}, takeover)
    second = data_frame({"type": "websocket.send", "text": text}, takeover)
    assert first != second  # the second refers back to the first: shorter


def test_a_bytearray_changed_in_place_is_framed_again():
    data = bytearray(b"before")
    first = data_frame({"type": "websocket.send", "bytes": data}, [])
    data[:] = b"after!"
    assert data_frame({"type": "websocket.send", "bytes": data}, []) != first


# --- writes batched per turn ----------------------------------------------------------------


def frames_written(transport) -> list[tuple[int, bytes]]:
    """Every server frame written to the mock transport after the handshake, with its write."""
    out = []
    for index, call in enumerate(transport.write.call_args_list[1:], start=1):
        data = call.args[0]
        while data:
            length = data[1] & 0x7F
            start = 2 + {126: 2, 127: 8}.get(length, 0)
            if length >= 126:
                length = int.from_bytes(data[2:start], "big")
            out.append((index, bytes([data[0] & 0x0F]) + data[start : start + length]))
            data = data[start + length :]
    return out


async def echo_app(scope, receive, send):
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        for _ in range(3):  # three messages in one turn
            await send({"type": "websocket.send", "text": message["text"]})


@pytest.mark.asyncio
async def test_messages_sent_in_one_turn_go_in_one_write_and_before_the_answer_to_a_close():
    from app.server import WebSocketProtocol
    from tests.attacks import CLOSE, TEXT, frame

    protocol, transport = drive(WebSocketProtocol, echo_app)
    while not protocol.handshake_complete:
        await asyncio.sleep(0)  # the handshake's turn
    protocol.data_received(frame(TEXT, b"hi"))
    await asyncio.sleep(0)  # the application's turn: its three echoes wait for the turn's end
    assert frames_written(transport) == []
    # The client's close arrives before the batch is written: uvicorn answers it at once, and
    # the echoes go first.
    protocol.data_received(frame(CLOSE, b"\x03\xe8"))
    await asyncio.wait_for(asyncio.gather(*protocol.tasks), 5)
    written = frames_written(transport)
    assert [payload for _, payload in written] == [b"\x01hi"] * 3 + [b"\x08\x03\xe8"]
    assert len({index for index, _ in written[:3]}) == 1  # the three in one write
    protocol.connection_lost(None)


async def goodbye_app(scope, receive, send):
    """Answers a message with two messages and its own close, in one turn."""
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    await send({"type": "websocket.send", "text": "one"})
    await send({"type": "websocket.send", "text": "two"})
    await send({"type": "websocket.close", "code": 4000})
    await receive()


async def open_connection(app):
    from app.server import WebSocketProtocol

    protocol, transport = drive(WebSocketProtocol, app)
    while not protocol.handshake_complete:
        await asyncio.sleep(0)  # the handshake's turn
    return protocol, transport


@pytest.mark.asyncio
async def test_messages_then_the_applications_close_in_one_turn_arrive_in_that_order():
    from tests.attacks import TEXT, frame

    protocol, transport = await open_connection(goodbye_app)
    protocol.data_received(frame(TEXT, b"bye?"))
    await asyncio.sleep(0)
    payloads = [payload for _, payload in frames_written(transport)]
    assert payloads == [b"\x01one", b"\x01two", b"\x08\x0f\xa0"]
    protocol.connection_lost(None)


@pytest.mark.asyncio
@pytest.mark.parametrize("closer", ["shutdown", "frame rate"])
async def test_messages_batched_go_before_a_close_of_the_servers(closer):
    from app.protocol import CloseCode
    from tests.attacks import TEXT, frame

    protocol, transport = await open_connection(echo_app)
    protocol.data_received(frame(TEXT, b"hi"))
    await asyncio.sleep(0)  # the echoes wait for the turn's end
    if closer == "shutdown":
        protocol.shutdown()  # uvicorn's 1012 on SIGTERM
    else:
        protocol._fail(CloseCode.POLICY_VIOLATION, "rate limit", "frame rate limit")
    payloads = [payload for _, payload in frames_written(transport)]
    assert payloads[:3] == [b"\x01hi"] * 3
    assert payloads[3][:1] == b"\x08"
    protocol.connection_lost(None)


# --- the in-memory layer's channel queue ----------------------------------------------------


@pytest.mark.asyncio
async def test_a_queued_entry_is_taken_without_waiting_and_a_waiting_get_is_woken():
    queue = ChannelQueue(maxsize=2)
    queue.put((0.0, 1, {"n": 1}))
    assert await queue.get() == (0.0, 1, {"n": 1})
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert queue.getters  # it waits
    queue.put((0.0, 1, {"n": 2}))
    assert (await asyncio.wait_for(waiting, 1))[2] == {"n": 2}
    queue.put((0.0, 1, {"n": 3}))
    queue.put((0.0, 1, {"n": 4}))
    assert queue.full()


@pytest.mark.asyncio
async def test_a_get_cancelled_after_it_was_woken_leaves_the_entry_to_the_next():
    queue = ChannelQueue(maxsize=10)
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put((0.0, 1, {"n": 1}))  # wakes the first...
    first.cancel()  # ...which is cancelled before it runs
    assert (await asyncio.wait_for(second, 1))[2] == {"n": 1}
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not queue.getters and not queue.entries
