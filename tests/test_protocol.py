"""The sans-io core, exhaustively and without a network."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servers.protocol import (
    Chat,
    Echo,
    Limits,
    LineTooLong,
    Outbox,
    OutputLimitExceeded,
    Throttle,
)

chunks = st.binary(max_size=200)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(chunks, max_size=20))
def test_echo_returns_every_byte_to_its_sender(pieces):
    echo = Echo()
    echo.join("a")
    out = bytearray()
    for piece in pieces:
        keys, data = echo.receive("a", piece)
        assert keys == ("a",)
        out += data
    assert bytes(out) == b"".join(pieces)


line_text = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))


@given(st.lists(line_text, max_size=15), line_text,
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_chat_lines_arrive_whole_whatever_the_split(lines, tail, cuts):
    stream = b"".join(line + b"\n" for line in lines) + tail
    chat = Chat()
    chat.join("a")
    delivered = bytearray()
    for piece in split_at(stream, cuts):
        result = chat.receive("a", piece)
        if result is not None:
            keys, data = result
            assert keys == ("a",)
            assert data.endswith(b"\n"), "a delivery always ends on a line boundary"
            delivered += data
    # Every complete line exactly once, in order; the unterminated tail never.
    assert bytes(delivered) == b"".join(line + b"\n" for line in lines)


@settings(max_examples=200)
@given(st.data())
def test_chat_room_delivers_every_line_to_every_member_in_sender_order(data):
    senders = ["a", "b", "c"]
    chat = Chat()
    for key in senders:
        chat.join(key)
    pending = {k: data.draw(st.lists(line_text, max_size=6)) for k in senders}
    streams = {k: b"".join(b"%s:%s\n" % (k.encode(), ln) for ln in v) for k, v in pending.items()}
    received = {k: bytearray() for k in senders}
    offsets = dict.fromkeys(senders, 0)
    while any(offsets[k] < len(streams[k]) for k in senders):
        key = data.draw(st.sampled_from([k for k in senders if offsets[k] < len(streams[k])]))
        n = data.draw(st.integers(min_value=1, max_value=len(streams[key]) - offsets[key]))
        piece = streams[key][offsets[key]: offsets[key] + n]
        offsets[key] += n
        result = chat.receive(key, piece)
        if result is not None:
            keys, lines = result
            assert set(keys) == set(senders), "the sender is a recipient too"
            for k in keys:
                received[k] += lines
    for member in senders:
        lines = bytes(received[member]).split(b"\n")[:-1]
        for sender in senders:
            mine = [ln for ln in lines if ln.startswith(sender.encode() + b":")]
            assert mine == [b"%s:%s" % (sender.encode(), ln) for ln in pending[sender]]


def test_chat_words_are_data_not_commands():
    chat = Chat()
    chat.join(1)
    lines = b"exit\n/quit\nplease exit now\n"
    assert chat.receive(1, lines) == ((1,), lines)


def test_chat_member_that_left_gets_nothing_and_its_tail_is_dropped():
    chat = Chat()
    chat.join(1)
    chat.join(2)
    assert chat.receive(2, b"half a li") is None
    chat.leave(2)
    keys, data = chat.receive(1, b"hello\n")
    assert keys == (1,) and data == b"hello\n"


@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=600),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=10), st.booleans())
def test_chat_max_line_is_exact_whatever_the_split(max_line, length, cuts, terminated):
    chat = Chat(Limits(max_line=max_line))
    chat.join(1)
    stream = b"x" * length + (b"\n" if terminated else b"")
    delivered = bytearray()
    try:
        for piece in split_at(stream, cuts):
            result = chat.receive(1, piece)
            if result:
                delivered += result[1]
    except LineTooLong:
        assert length > max_line
    else:
        assert length <= max_line
        assert bytes(delivered) == (stream if terminated else b"")


def test_chat_long_line_among_short_ones_in_one_chunk_is_caught():
    chat = Chat(Limits(max_line=10))
    chat.join(1)
    with pytest.raises(LineTooLong):
        chat.receive(1, b"short\n" + b"y" * 11 + b"\nshort\n")


@given(st.integers(min_value=1, max_value=1000), st.lists(st.binary(max_size=300), max_size=20),
       st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_outbox_keeps_order_and_enforces_its_limit(limit, pushes, consumes):
    box = Outbox(limit)
    model = bytearray()
    for i, data in enumerate(pushes):
        try:
            box.push(data)
        except OutputLimitExceeded:
            assert len(model) + len(data) > limit
            return
        model += data
        assert len(model) <= limit
        if i < len(consumes):
            n = min(consumes[i], len(model))
            assert bytes(box[:n]) == bytes(model[:n])
            box.consume(n)
            del model[:n]
        assert bytes(box) == bytes(model)
        assert len(box) == len(model)


class Clock:
    """A clock the test moves by hand: the throttle's rule is about time, not timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def throttle(max_output: int = 100, max_stall: float = 2.0) -> tuple[Throttle, Clock]:
    clock = Clock()
    return Throttle(Limits(max_output=max_output, max_stall=max_stall), clock), clock


def test_throttle_holds_the_room_from_half_the_limit_down_to_a_quarter():
    room, _ = throttle(max_output=100)
    assert not room.note("a", 50) and not room.paused  # at the high water mark: not yet
    assert room.note("a", 51) and room.paused  # past it: the room pauses
    assert not room.note("a", 30) and room.paused  # below high, above low: still behind
    assert room.note("a", 25) and not room.paused  # at the low water mark: caught up
    assert not room.note("a", 40) and not room.paused  # rising again, under high


def test_throttle_drops_only_a_member_that_takes_nothing_for_max_stall():
    room, clock = throttle(max_stall=2.0)
    room.note("reads", 90)
    room.note("idle", 90)
    assert room.wait_time() == 2.0
    clock.now = 1.5
    room.note("reads", 80)  # took 10 bytes: its clock restarts
    room.note("idle", 95)  # grew (lines read before the pause): no progress
    clock.now = 2.0
    assert [key for key, _ in room.overdue()] == ["idle"]
    assert room.wait_time() == 0.0
    (_, reason), = room.overdue()
    assert "output backlog 95 bytes" in reason and "nothing taken for 2 s" in reason
    assert not room.forget("idle")  # "reads" still holds the room
    assert room.wait_time() == 1.5
    clock.now = 3.4
    assert room.overdue() == []
    clock.now = 3.5
    assert [key for key, _ in room.overdue()] == ["reads"]


def test_throttle_forgets_a_member_that_leaves_the_room():
    chat = Chat(Limits(max_output=100), clock=Clock())
    for key in (1, 2):
        chat.join(key)
        chat.throttle.note(key, 99)
    chat.leave(1)
    assert chat.throttle.paused and list(chat.throttle.behind) == [2]
    chat.leave(2)
    assert not chat.throttle.paused and chat.throttle.wait_time() is None
    assert Echo.throttle is None  # echo pauses only the client whose answers wait


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(min_value=0, max_value=120)),
                max_size=40))
def test_throttle_reports_exactly_the_notes_that_pause_or_resume_the_room(notes):
    room, _ = throttle(max_output=100)
    for key, backlog in notes:
        was = room.paused
        assert room.note(key, backlog) == (room.paused != was)
        # Behind exactly when past high, or not yet back down to low.
        if backlog > 50:
            assert key in room.behind
        elif backlog <= 25:
            assert key not in room.behind
