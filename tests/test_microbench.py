"""Micro-benchmarks of the hot paths, run by pytest-benchmark.

In `make test` they run once each as smoke tests (`--benchmark-disable` in the
pytest options), so machine noise can never fail a build; every one still
checks its result.  `make microbench` times them for real and saves
results/microbench.json (`--benchmark-json`).
"""

from __future__ import annotations

import socket
from collections import deque

import pytest

from loadgen.integrity import COUNTED, DUE, SEQ, Pattern, Tally, settle_mismatch
from loadgen.record import as_numpy, hdr_encode, new_samples, summarize
from servers.protocol import Chat
from tests.support import recv_exactly, serve

# -- protocol framing: Chat.receive on typical traffic ---------------------------------

MEMBERS = 20
LINE = b"alice 12345 1732896000123456789 3f2a9c1b " + b"x" * 22 + b"\n"  # 64 bytes
# How recv() hands lines over in practice: one whole line, several at once, and
# a line cut in two across reads.
CHUNKS = (LINE, LINE * 4, LINE[:23], LINE[23:] + LINE, LINE * 16)


def _chat_room() -> Chat:
    chat = Chat()
    for key in range(MEMBERS):
        chat.join(key)
    return chat


def feed_chat(chat: Chat) -> int:
    """Bytes delivered to the room for one pass over CHUNKS from one sender."""
    delivered = 0
    for chunk in CHUNKS:
        out = chat.receive(0, chunk)
        if out is not None:
            delivered += len(out[1])
    return delivered


def test_chat_receive_framing(benchmark):
    chat = _chat_room()
    delivered = benchmark(feed_chat, chat)
    assert delivered == len(b"".join(CHUNKS))
    assert chat.receive(0, LINE) == (tuple(range(MEMBERS)), LINE)


# -- the load generator's record path ------------------------------------------------

MESSAGES = 2_000
SIZE = 64


def _inflight(pattern: Pattern) -> list[tuple[int, bytes, int, int, bool]]:
    # (seq, frame, due_ns, sent_ns, counted), as the echo worker keeps them
    return [(seq, pattern.frame(seq), 1_000 * seq, 1_000 * seq + 5, True)
            for seq in range(MESSAGES)]


def record_replies(pending: list, replies: list[bytes], pattern: Pattern) -> tuple[Tally, bytes]:
    """What the echo worker (loadgen/echo.py) does per reply: match it against the next
    frame in flight (the slow path only on a mismatch), count it if it is one of the
    window's messages, and append its latency to the raw array."""
    inflight, missing, tally = deque(pending), {}, Tally()
    samples = new_samples()
    record = samples.append
    for t, frame in enumerate(replies, start=MESSAGES * 1_000):
        if inflight and frame == inflight[0][1]:
            entry = inflight.popleft()
        else:
            entry = settle_mismatch(frame, pattern, inflight, missing, tally)
            if entry is None:
                continue
        if entry[COUNTED]:
            tally.received += 1
            record(t - entry[DUE])
    return tally, samples.tobytes()


def test_record_path_in_order(benchmark):
    pattern = Pattern(cid=7, size=SIZE, seed=1)
    pending = _inflight(pattern)
    replies = [entry[1] for entry in pending]
    tally, raw = benchmark(record_replies, pending, replies, pattern)
    assert tally.as_dict() == {"sent": 0, "received": MESSAGES, "lost": 0, "corrupted": 0,
                               "duplicated": 0, "reordered": 0}
    assert summarize(as_numpy([raw]))["count"] == MESSAGES


def test_record_path_with_every_tenth_reply_swapped(benchmark):
    # The slow path: a later frame first (the skipped one is parked), then the late one.
    pattern = Pattern(cid=7, size=SIZE, seed=1)
    pending = _inflight(pattern)
    replies = [entry[1] for entry in pending]
    for i in range(0, MESSAGES, 10):
        replies[i], replies[i + 1] = replies[i + 1], replies[i]
    tally, raw = benchmark(record_replies, pending, replies, pattern)
    assert (tally.received, tally.reordered) == (MESSAGES, MESSAGES // 10)
    assert len(raw) == MESSAGES * 8 and pending[0][SEQ] == 0


def summarize_window(raw: bytes) -> tuple[dict, str | None]:
    """After the window: exact percentiles with numpy, and the mergeable histogram."""
    values = as_numpy([raw])
    return summarize(values), hdr_encode(values)


def test_record_path_summary(benchmark):
    samples = new_samples()
    samples.extend(range(1_000, 1_000 + 100_000 * 10, 10))  # 1 µs to ~1 ms, every 10 ns
    summary, encoded = benchmark(summarize_window, samples.tobytes())
    assert summary["count"] == 100_000
    assert summary["p50"] == pytest.approx(500.995, rel=1e-3)  # µs
    assert summary["max"] == pytest.approx(1000.99)
    assert encoded


# -- one echo round trip against a real epoll server ---------------------------------

@pytest.fixture(scope="module")
def echo_conn():
    with serve("epoll") as server, server.connect() as sock:
        yield sock


def round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def test_echo_round_trip_epoll(benchmark, echo_conn):
    payload = bytes(range(64))
    assert benchmark(round_trip, echo_conn, payload) == payload


# -- the price of EAGAIN: what an edge-triggered loop pays once per report -------------


def failed_recv(sock: socket.socket) -> bool:
    """One recv on an empty non-blocking socket, as a drain loop ends; True if it failed."""
    try:
        sock.recv(65536)
    except BlockingIOError:
        return True
    return False


def test_recv_that_fails_with_eagain(benchmark):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        assert benchmark(failed_recv, a)
