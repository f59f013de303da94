"""What each server does with the seed's events: the data behind the README's matrix.

The end-to-end tests assert every entry against a real server process, and
``test_readme_matrix_matches`` checks that the README shows exactly this table
(``python -m tests.compat`` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerBehaviour:
    accept_headers: bool  # websocket.accept headers reach the client
    close_reason: bool  # the server's close reason reaches the client
    too_big_code: int  # what the client sees for an oversize message
    empty_messages: bool  # empty text and bytes are sent, not dropped
    disconnect_code: int  # code in websocket.disconnect when the client closes with 4000
    disconnect_reason: bool  # the client's close reason reaches websocket_disconnect
    unknown_path_status: int  # HTTP status for an unknown WebSocket path
    shutdown_close_code: int | None  # close code every client gets on SIGTERM (None: no frame)
    shutdown_quiet: bool  # SIGTERM with clients connected leaves no traceback in the server's log
    invalid_utf8_close_code: (
        int | None
    )  # close code for invalid UTF-8 in a text frame (None: dropped)
    test_server_behaviours: bool  # /ws/test/: fragment, ping, compress, drop_after are done
    test_refusal_status: int | None  # /ws/test/: HTTP status of one it cannot do (None: none)
    test_header_case: bool  # /ws/test/?headers=1: header names as the client wrote them


BEHAVIOUR = {
    "uvicorn": ServerBehaviour(
        accept_headers=True,
        close_reason=True,
        too_big_code=1009,
        empty_messages=True,
        disconnect_code=4000,
        disconnect_reason=True,
        unknown_path_status=404,
        shutdown_close_code=1012,
        shutdown_quiet=True,
        invalid_utf8_close_code=1007,
        test_server_behaviours=True,
        test_refusal_status=None,
        test_header_case=False,
    ),
    "daphne": ServerBehaviour(
        accept_headers=False,
        close_reason=False,
        too_big_code=4009,
        empty_messages=False,
        disconnect_code=4000,
        disconnect_reason=False,
        unknown_path_status=403,
        shutdown_close_code=None,
        shutdown_quiet=True,
        invalid_utf8_close_code=None,
        test_server_behaviours=False,
        test_refusal_status=403,
        test_header_case=False,
    ),
    "hypercorn": ServerBehaviour(
        accept_headers=True,
        close_reason=True,
        too_big_code=1009,
        empty_messages=True,
        disconnect_code=1006,
        disconnect_reason=False,
        unknown_path_status=404,
        shutdown_close_code=1011,
        shutdown_quiet=False,
        invalid_utf8_close_code=None,
        test_server_behaviours=False,
        test_refusal_status=400,
        test_header_case=False,
    ),
    "granian": ServerBehaviour(
        accept_headers=False,
        close_reason=True,
        too_big_code=1009,
        empty_messages=True,
        disconnect_code=4000,
        disconnect_reason=False,
        unknown_path_status=404,
        shutdown_close_code=None,
        shutdown_quiet=True,
        invalid_utf8_close_code=1005,
        test_server_behaviours=False,
        test_refusal_status=400,
        test_header_case=False,
    ),
}

#: The matrix's rows: a field of ``ServerBehaviour`` and what it means.
FEATURES = {
    "accept_headers": "`websocket.accept` headers reach the client",
    "close_reason": "server close `reason` reaches the client",
    "too_big_code": "oversize message: close code the client sees",
    "empty_messages": "empty text and bytes echo",
    "disconnect_code": "client closes with 4000: code in `websocket.disconnect`",
    "disconnect_reason": "client close `reason` in `websocket.disconnect`",
    "unknown_path_status": "unknown path: HTTP status",
    "shutdown_close_code": "SIGTERM: close frame to every client",
    "shutdown_quiet": "SIGTERM with clients connected: no traceback logged",
    "invalid_utf8_close_code": "invalid UTF-8 in a text frame: close code",
    "test_server_behaviours": "`/ws/test/`: `fragment`, `ping`, `pong_timeout`, `compress`, `drop_after` (the `x-behaviours` extension)",
    "test_refusal_status": "`/ws/test/`: a behaviour the server cannot do: HTTP status",
    "test_header_case": "`/ws/test/?headers=1`: header names as the client wrote them",
}

#: Why a server's cell differs from what the spec asks, where we know.
CAVEATS = {
    ("daphne", "accept_headers"): "dropped (daphne#326)",
    ("daphne", "close_reason"): "dropped (daphne#374)",
    ("daphne", "too_big_code"): "autobahn refuses 1009; the app sends 4009",
    ("daphne", "empty_messages"): "silently dropped",
    ("daphne", "disconnect_reason"): "code only",
    ("daphne", "unknown_path_status"): "no `websocket.http.response`: 403 for every refusal",
    ("daphne", "shutdown_close_code"): "connections dropped without a close frame",
    ("daphne", "invalid_utf8_close_code"): "TCP connection dropped (autobahn's failByDrop)",
    ("hypercorn", "disconnect_code"): "the close frame is not passed on: 1006 when the socket ends",
    ("hypercorn", "disconnect_reason"): "neither code nor reason",
    ("hypercorn", "shutdown_close_code"): "the cancelled application's 1011, not 1001/1012",
    ("hypercorn", "shutdown_quiet"): "asyncio logs a CancelledError traceback per connection",
    ("hypercorn", "invalid_utf8_close_code"): "TCP connection dropped",
    ("granian", "accept_headers"): "dropped",
    ("granian", "disconnect_reason"): "code only",
    ("granian", "shutdown_close_code"): "connections dropped without a close frame",
    ("granian", "invalid_utf8_close_code"): "a close frame without a code",
    ("uvicorn", "test_refusal_status"): "it does them all",
    ("uvicorn", "test_header_case"): "lower-cased by uvicorn's h11 protocol before the upgrade",
    ("daphne", "test_server_behaviours"): "refused at the handshake",
    (
        "daphne",
        "test_refusal_status",
    ): "no `websocket.http.response`; `close=1001`-`2999` and `reason=` refused too",
    ("daphne", "test_header_case"): "lower-cased",
    ("hypercorn", "test_server_behaviours"): "refused at the handshake, with the reason",
    ("hypercorn", "test_header_case"): "lower-cased",
    ("granian", "test_server_behaviours"): "refused at the handshake, with the reason",
    ("granian", "test_header_case"): "lower-cased",
}

#: Rows every server passes, each asserted by an end-to-end test.
COMMON = [
    "subprotocol negotiated (`echo.v1`)",
    "text and bytes echo, 200 KiB, 1,000 messages in order",
    "a raising handler: client gets a close with 1011 (4011 on daphne), one traceback logged",
    "foreign `Origin`: HTTP status 403",
    "`/ws/test/`: `delay`, `push`, `close` after an echo, `headers=1` (plain ASGI)",
]


def _cell(value: object, note: str | None) -> str:
    if value is True:
        text = "yes"
    elif value is False:
        text = "no"
    elif value is None:
        text = "none"
    else:
        text = str(value)
    return f"{text}: {note}" if note else text


def matrix_markdown() -> str:
    """The README's compatibility matrix, rendered from ``BEHAVIOUR``."""
    servers = list(BEHAVIOUR)
    rows = ["| feature | " + " | ".join(servers) + " |", "|---" * (len(servers) + 1) + "|"]
    rows += [f"| {feature} |" + " yes |" * len(servers) for feature in COMMON]
    for name, feature in FEATURES.items():
        cells = [
            _cell(getattr(BEHAVIOUR[server], name), CAVEATS.get((server, name)))
            for server in servers
        ]
        rows.append(f"| {feature} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(matrix_markdown())
