"""The WebSocket standard's own conformance suite (Autobahn's cases, through kosoku) against
``manage.py serve``, both consumers: every case OK or INFORMATIONAL, none NON-STRICT.

Sections 1-7, 10, 12 and 13 (permessage-deflate) run against the server as shipped; 9 (messages
up to 16 MiB, in up to 65,536 fragments) against one started with ``ECHO_MAX_MESSAGE_BYTES`` at
16 MiB. The server's log must hold no traceback and no
ERROR: every case is a client misbehaving on purpose. ``make conformance`` writes the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance import BIG_ENV, PASSING
from tests.conftest import clean_processes
from tests.servers import ROOT

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def shipped_server(server_env):
    yield from clean_processes(server_env)


@pytest.fixture(scope="module")
def big_message_server(server_env):
    yield from clean_processes({**server_env, **BIG_ENV})


# Deflate is the server's: a consumer sees the inflated message, so the sync consumer runs the
# deflate cases up to 64 KiB (108 of 216, a quarter of the time); ``make conformance`` runs all
# of them for both.
@pytest.mark.parametrize(
    ("server_fixture", "cases", "kind", "count"),
    [
        ("shipped_server", "default", "async", 247),
        ("shipped_server", "default", "sync", 247),
        ("big_message_server", "big", "async", 54),
        ("big_message_server", "big", "sync", 54),
        ("shipped_server", "deflate", "async", 216),
        ("shipped_server", "deflate-to-64-kib", "sync", 108),
    ],
)
def test_every_autobahn_case_is_ok_or_informational(
    request, server_fixture, cases, kind, count, tmp_path
):
    [server] = request.getfixturevalue(server_fixture)
    labels = run_in_subprocess(f"{server.ws_url}/ws/echo/{kind}/", cases, out=tmp_path)
    assert len(labels) == count, len(labels)
    why = json.loads((tmp_path / "labels.why.json").read_text())
    assert {case: label for case, label in labels.items() if label not in PASSING} == {}, why


def run_in_subprocess(url: str, cases: str, *, out: Path) -> dict[str, str]:
    """kosoku in a process of its own: its case files bring a module named ``autobahn`` that
    daphne's real one (imported here with Django's apps) would shadow."""
    report = out / "labels.json"
    args = [sys.executable, "-m", "tests.conformance", url, "--cases", cases]
    subprocess.run([*args, "--json", str(report)], cwd=ROOT, timeout=900, check=False)
    return json.loads(report.read_text())


def test_websockets_still_fails_a_close_between_fragments_so_the_override_is_needed():
    """Autobahn 7.1.5 with websockets' own protocol: 1002. When this fails, websockets answers
    the close itself: drop ``app.server.frames.ServerProtocol``."""
    from websockets.server import ServerProtocol as Upstream

    from app.server.frames import ServerProtocol
    from tests.attacks import CLOSE, CONT, TEXT, frame

    for protocol_class, expected in ((Upstream, 1002), (ServerProtocol, 1000)):
        protocol = protocol_class(state=_open_state())
        protocol.receive_data(
            frame(TEXT, b"frag", fin=False) + frame(CLOSE, b"\x03\xe8") + frame(CONT, b"end")
        )
        assert protocol.close_sent is not None and protocol.close_sent.code == expected


def _open_state():
    from websockets.protocol import State

    return State.OPEN


def test_websockets_frame_parser_still_has_the_fields_the_fail_fast_check_reads():
    """``FramePolicy.check_partial_text`` reads the suspended parser's ``opcode`` and
    ``rsv1`` and ``mask_bytes``, and the payload from its reader's buffer."""
    from websockets.frames import Frame

    from app.server.frames import FRAME_PARSE

    assert FRAME_PARSE is Frame.parse.__func__.__code__
    assert {"opcode", "rsv1", "mask_bytes", "length"} <= set(FRAME_PARSE.co_varnames)
