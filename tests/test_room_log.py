"""The rooms.v1 protocol's pieces without I/O: since, frames, the history's bounds, and what one
member does with each offset (app/room_log.py)."""

from __future__ import annotations

import base64
import json

import pytest

from app.room_log import (
    EPOCH,
    Gap,
    History,
    HistoryLimits,
    InvalidSince,
    Joined,
    Member,
    Since,
    new_epoch,
    new_member_id,
    parse_since,
    payload,
    room_event,
)


def event(offset: int, text: str | None = None) -> dict:
    return room_event(offset, payload("m", {"text": text if text is not None else f"#{offset}"}))


def test_since_is_epoch_colon_offset():
    assert parse_since(b"since=abc_-9:0") == Since("abc_-9", 0)
    assert parse_since("x=1&since=E:9223372036854775807") == Since("E", 2**63 - 1)
    assert parse_since(b"") is None
    assert parse_since(b"other=1") is None


@pytest.mark.parametrize(
    "query", ["since=", "since=e", "since=:1", "since=e:", "since=e:x", "since=e:-1", "since=e:+1",
              "since=e%3A1%3A2", "since=e:%C2%B2", "since=e:9223372036854775808", "since=a:1&since=a:2",
              "since=" + "e" * 65 + ":1"],
)  # fmt: skip
def test_a_malformed_since_is_refused(query):
    with pytest.raises(InvalidSince):
        parse_since(query)


def test_epochs_and_member_ids_are_short_random_tokens():
    epochs = {new_epoch() for _ in range(100)}
    assert len(epochs) == 100 and all(EPOCH.fullmatch(e) and len(e) == 12 for e in epochs)
    members = {new_member_id() for _ in range(100)}
    assert len(members) == 100 and all(len(m) == 16 for m in members)


def test_a_message_frame_is_made_once_from_the_payload():
    text = event(7, 'h\u00e9 "quoted"')
    assert json.loads(text["envelope"]) == {
        "type": "message",
        "offset": 7,
        "from": "m",
        "text": 'h\u00e9 "quoted"',
    }
    assert text["text"] == 'h\u00e9 "quoted"' and "bytes" not in text
    binary = room_event(8, payload("m", {"bytes": b"\x00\xff"}))
    assert json.loads(binary["envelope"])["bytes"] == base64.b64encode(b"\x00\xff").decode()
    assert binary["bytes"] == b"\x00\xff"


def test_the_history_keeps_the_last_size_messages():
    history = History(HistoryLimits(size=3, ttl=60, max_bytes=10**9))
    for offset in range(1, 6):
        history.append(event(offset))
    assert history.last == 5
    assert [e["offset"] for e in history.after(2)] == [3, 4, 5]
    assert history.after(1) is None  # 2 is gone
    assert [e["offset"] for e in history.after(3, 4)] == [4]
    assert history.after(5) == []
    assert history.after(4, 6) is None  # beyond the last


def test_the_history_keeps_at_most_max_bytes():
    history = History(HistoryLimits(size=100, ttl=60, max_bytes=5000))
    for offset in range(1, 11):
        history.append(event(offset, "x" * 1000))  # about 2,250 bytes each (frame and text)
    assert len(history.entries) == 2 and history.held <= 5000
    assert [e["offset"] for e in history.after(8)] == [9, 10]


def test_the_history_forgets_what_is_older_than_its_ttl(monkeypatch):
    import app.room_log

    now = [1000.0]
    monkeypatch.setattr(app.room_log.time, "monotonic", lambda: now[0])
    history = History(HistoryLimits(size=100, ttl=10, max_bytes=10**9))
    history.append(event(1))
    now[0] += 5
    history.append(event(2))
    assert [e["offset"] for e in history.after(0)] == [1, 2]
    now[0] += 6  # 1 is 11 s old
    assert history.after(0) is None
    assert [e["offset"] for e in history.after(1)] == [2]
    history.sweep()
    assert [entry[0] for entry in history.entries] == [2]


def test_history_off_keeps_the_offset_only():
    for limits in (HistoryLimits(0, 60, 100), HistoryLimits(10, 0, 100), HistoryLimits(10, 60, 0)):
        history = History(limits)
        history.append(event(1))
        assert history.last == 1 and not history.entries and history.after(0) is None


def test_a_member_takes_each_offset_once_in_order():
    member = Member("r", "me", v1=True)
    frames = member.joined(Joined("E", 4, None, [], 4))
    assert json.loads(frames[0]["text"]) == {
        "type": "welcome",
        "room": "r",
        "member": "me",
        "epoch": "E",
        "offset": 4,
    }
    assert member.take(event(3)) == []  # before the welcome's offset: had (or not its to have)
    assert [json.loads(f["text"])["offset"] for f in member.take(event(5))] == [5]
    assert member.take(event(5)) == []  # had
    gap = member.take(event(8))
    assert gap == Gap(5, event(8))
    mended = member.mend(gap, [event(6), event(7)], 7)
    assert [json.loads(f["text"])["offset"] for f in mended] == [6, 7, 8]
    assert member.last == 8


def test_a_gap_the_history_lost_is_counted():
    member = Member("r", "me", v1=False)
    member.joined(Joined("E", 0, None, [], 0))
    assert member.take(event(1, "one")) == [{"type": "websocket.send", "text": "one"}]
    gap = member.take(event(5))
    assert member.mend(gap, None, 4) == 3
    assert member.mend(Gap(1, None), None, 9) == 8  # drops at the tail: up to the room's last


def test_a_resumed_welcome_says_recovered_and_brings_the_missed_messages():
    member = Member("r", "me", v1=True)
    frames = member.joined(Joined("E", 7, True, [event(6), event(7)], 7))
    assert json.loads(frames[0]["text"])["recovered"] is True
    assert [json.loads(f["text"])["offset"] for f in frames[1:]] == [6, 7]
    assert member.take(event(7)) == [] and len(member.take(event(8))) == 1
