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
    disconnect_reason: bool  # the client's close reason reaches websocket_disconnect
    unknown_path_status: int  # HTTP status for an unknown WebSocket path
    shutdown_close_code: int | None  # close code every client gets on SIGTERM (None: no frame)
    invalid_utf8_close_code: (
        int | None
    )  # close code for invalid UTF-8 in a text frame (None: dropped)


BEHAVIOUR = {
    "uvicorn": ServerBehaviour(
        accept_headers=True,
        close_reason=True,
        too_big_code=1009,
        empty_messages=True,
        disconnect_reason=True,
        unknown_path_status=404,
        shutdown_close_code=1012,
        invalid_utf8_close_code=1007,
    ),
    "daphne": ServerBehaviour(
        accept_headers=False,
        close_reason=False,
        too_big_code=4009,
        empty_messages=False,
        disconnect_reason=False,
        unknown_path_status=403,
        shutdown_close_code=None,
        invalid_utf8_close_code=None,
    ),
}

NOTES = {
    "accept_headers": ("`websocket.accept` headers reach the client", "dropped (daphne#326)"),
    "close_reason": ("server close `reason` reaches the client", "dropped (daphne#374)"),
    "too_big_code": (
        "oversize message: close code the client sees",
        "autobahn refuses 1009; the app sends 4009",
    ),
    "empty_messages": ("empty text and bytes echo", "silently dropped"),
    "disconnect_reason": ("client close `reason` in `websocket.disconnect`", "code only"),
    "unknown_path_status": (
        "unknown path: HTTP status",
        "no `websocket.http.response`: 403 for every refusal",
    ),
    "shutdown_close_code": (
        "SIGTERM: close frame to every client",
        "connections dropped without a close frame",
    ),
    "invalid_utf8_close_code": (
        "invalid UTF-8 in a text frame: close code",
        "TCP connection dropped (autobahn's failByDrop)",
    ),
}

COMMON = [
    ("subprotocol negotiated (`echo.v1`)", "yes", "yes"),
    ("text and bytes echo, 200 KiB, 1,000 messages in order", "yes", "yes"),
    ("foreign `Origin`: HTTP status", "403", "403"),
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
    rows = ["| feature | uvicorn | daphne |", "|---|---|---|"]
    rows += [f"| {feature} | {u} | {d} |" for feature, u, d in COMMON]
    for name, (feature, daphne_note) in NOTES.items():
        uvicorn = getattr(BEHAVIOUR["uvicorn"], name)
        daphne = getattr(BEHAVIOUR["daphne"], name)
        rows.append(f"| {feature} | {_cell(uvicorn, None)} | {_cell(daphne, daphne_note)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(matrix_markdown())
