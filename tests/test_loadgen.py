"""The load generator against servers that misbehave on purpose, and against real ones.

Each misbehaving server (tests/faulty_servers.py) drops, damages, repeats,
swaps or delays exactly one message, and each test demands that `muxbench
load` report exactly that.
"""

from __future__ import annotations

import time

import pytest

from loadgen.integrity import (
    HEADER,
    Pattern,
    Window,
    chat_line,
    connection_key,
    parse_chat_line,
)
from loadgen.worker import Phases
from tests.faulty_servers import at, echo, faulty_server, flipping
from tests.support import FAST, LoadRun, assert_clean_exit, problem_lines, run_load

SIZE = 64


def counts(out: dict) -> dict:
    return {k: out[k] for k in ("lost", "corrupted", "duplicated", "reordered", "errors")}


def assert_identity(out: dict) -> None:
    assert out["sent"] == out["received"] + out["corrupted"] + out["lost"], out


def assert_integrity_failure(run: LoadRun, found: str) -> None:
    """A run that saw a damaged stream exits 1 and says what it saw, in one line."""
    assert run.status == 1, run.stderr
    [line] = problem_lines(run)
    assert f"integrity: {found}" in line, line


def test_clean_server_exact_counts() -> None:
    with faulty_server(SIZE, echo) as server:
        run = run_load(server.port, "--clients", "4", "--duration", "0.6", *FAST)
    out = run.out
    assert_clean_exit(run)
    assert counts(out) == dict(lost=0, corrupted=0, duplicated=0, reordered=0, errors=0)
    assert out["sent"] == out["received"] > 0
    assert out["latency_us"]["count"] == out["received"]


@pytest.mark.parametrize(("depth", "unanswered"), [("1", 1), ("4", 0)])
def test_dropped_message_is_exactly_one_lost(depth: str, unanswered: int) -> None:
    with faulty_server(SIZE, at(5, lambda m: [])) as server:
        run = run_load(server.port, "--clients", "4", "--depth", depth, "--duration", "0.6",
                       *FAST)
    out = run.out
    # Depth 1: the connection waits for the dropped message till the drain
    # ends, and the run says it got no reply.  Depth 4: the next messages
    # come back without it, which is a gap, counted as it is seen.
    assert counts(out) == dict(lost=1, corrupted=0, duplicated=0, reordered=0,
                               errors=unanswered)
    if unanswered:
        assert out["errors_by_kind"] == {"no reply by drain end": 1}
    assert_identity(out)
    assert_integrity_failure(run, "lost 1")


@pytest.mark.parametrize("position", [2, 40])  # in the sequence number; in the body
def test_flipped_byte_is_exactly_one_corrupted(position: int) -> None:
    with faulty_server(SIZE, at(7, flipping(position))) as server:
        run = run_load(server.port, "--clients", "3", "--duration", "0.6", *FAST)
    out = run.out
    assert counts(out) == dict(lost=0, corrupted=1, duplicated=0, reordered=0, errors=0)
    assert_identity(out)
    assert_integrity_failure(run, "corrupted 1")


def test_repeated_message_is_exactly_one_duplicate() -> None:
    with faulty_server(SIZE, at(9, lambda m: [m, m])) as server:
        run = run_load(server.port, "--clients", "2", "--depth", "2", "--duration", "0.6",
                       *FAST)
    out = run.out
    assert counts(out) == dict(lost=0, corrupted=0, duplicated=1, reordered=0, errors=0)
    assert out["sent"] == out["received"]
    assert_integrity_failure(run, "duplicated 1")


def test_swapped_messages_are_exactly_one_reordered() -> None:
    held: list[bytes] = []

    def swap(conn: int, seq: int, message: bytes) -> list[bytes]:
        if conn == 0 and seq == 10:
            held.append(message)
            return []
        if conn == 0 and seq == 11:
            return [message, held.pop()]
        return [message]

    with faulty_server(SIZE, swap) as server:
        run = run_load(server.port, "--clients", "2", "--depth", "4", "--duration", "0.6",
                       *FAST)
    out = run.out
    assert counts(out) == dict(lost=0, corrupted=0, duplicated=0, reordered=1, errors=0)
    assert out["sent"] == out["received"]
    assert_integrity_failure(run, "reordered 1")


def test_open_loop_stall_shows_in_response_time_not_service_time() -> None:
    def stall(message: bytes) -> list[bytes]:
        time.sleep(0.2)
        return [message]

    with faulty_server(SIZE, at(30, stall)) as server:
        run = run_load(server.port, "--clients", "2", "--rate", "400", "--duration", "1.5",
                       *FAST)
    out = run.out
    assert out["mode"] == "open"
    assert counts(out) == dict(lost=0, corrupted=0, duplicated=0, reordered=0, errors=0)
    response, service = out["latency_us"], out["service_time_us"]
    # ~40 messages of the stalled connection fell due during the stall and
    # waited for it: the top 1 % of response times are all stall.
    assert response["p99"] > 150_000
    assert response["max"] >= 190_000
    # Only the one stalled message itself took long to be served.
    assert service["p99"] < 100_000 and service["p99"] < response["p99"] / 2
    assert service["max"] >= 190_000
    assert out["late_sends"] >= 20
    assert out["max_send_lag_us"] >= 150_000
    assert out["sent"] == out["received"] == response["count"] == service["count"]


def test_server_dying_mid_run_reports_partial_results() -> None:
    total = [0]

    def die(conn: int, seq: int, message: bytes) -> list[bytes] | None:
        total[0] += 1
        return None if total[0] > 200 else [message]

    with faulty_server(SIZE, die) as server:
        run = run_load(server.port, "--clients", "4", "--duration", "1", *FAST)
    out = run.out
    assert run.status == 1
    assert out["received"] > 0
    assert out["errors"] >= 1 and set(out["errors_by_kind"]) <= {"EOF", "ECONNRESET", "EPIPE"}
    assert_identity(out)
    assert problem_lines(run) == [problem_lines(run)[0]]
    assert "errors:" in problem_lines(run)[0]


def test_open_loop_constant_rate_sends_exactly_on_schedule() -> None:
    # 5 connections x 100 msg/s, offset within the period: message k of
    # connection c is due at t0 + (k + c/5) * 10 ms, so exactly 100 each fall
    # due inside a 1 s window that opens at t0.
    with faulty_server(SIZE, echo) as server:
        run = run_load(server.port, "--clients", "5", "--rate", "500", "--duration", "1",
                       *FAST)
    out = run.out
    assert out["sent"] == out["received"] == 500
    assert out["throughput_msgs_s"] == pytest.approx(500)
    assert counts(out)["errors"] == 0


def test_open_loop_poisson_schedule_is_seeded() -> None:
    sent = []
    with faulty_server(SIZE, echo) as server:
        for seed in ("7", "7"):
            run = run_load(server.port, "--clients", "4", "--rate", "400", "--arrival",
                           "poisson", "--seed", seed, "--duration", "0.5", *FAST)
            assert run.out["received"] == run.out["sent"]
            sent.append(run.out["sent"])
    # The same seed gives the same arrivals; about rate x duration of them.
    assert sent[0] == sent[1]
    assert 100 <= sent[0] <= 300


def test_chat_line_any_damaged_byte_is_rejected() -> None:
    line = chat_line(12, 345, 6_789_012_345, 80)
    assert len(line) == 80 and line.endswith(b"\n")
    body = line[:-1]
    assert parse_chat_line(body, 80) == (12, 345, 6_789_012_345)
    for i in range(len(body)):
        for mask in range(1, 256):
            damaged = bytearray(body)
            damaged[i] ^= mask
            if damaged[i] != ord("\n"):
                assert parse_chat_line(bytes(damaged), 80) is None, (i, mask)
    assert parse_chat_line(body[:-1], 80) is None  # a cut line


def test_echo_frame_any_damaged_byte_is_rejected() -> None:
    pattern = Pattern(3, SIZE, seed=1)
    frame = pattern.frame(41)
    assert pattern.seq_of(frame) == 41
    assert Pattern(4, SIZE, seed=1).seq_of(frame) is None  # another connection's
    for i in range(len(frame)):
        damaged = bytearray(frame)
        damaged[i] ^= 0x20
        assert pattern.seq_of(bytes(damaged)) is None, i


def test_echo_frames_are_header_then_body_and_keys_never_collide() -> None:
    pattern = Pattern(3, SIZE, seed=1)
    for seq in (0, 1, 41, (1 << 30) - 1, 1 << 40):  # past 2**30 the key only costs more
        frame = pattern.frame(seq)
        assert frame == HEADER.pack(seq, seq ^ pattern.key) + pattern.body
        assert len(frame) == SIZE and pattern.seq_of(frame) == seq
    keys = [connection_key(cid) for cid in range(200_000)]
    assert len(set(keys)) == len(keys) and max(keys) < 1 << 30


class MarkLog:
    """What a worker hears from its Phases, written down."""

    def __init__(self) -> None:
        self.window_end: int | None = None
        self.calls: list[str] = []

    def cpu_mark(self) -> None:
        self.calls.append("cpu")

    def stop_sending(self) -> None:
        self.calls.append("stop")


S = 1_000_000_000


def test_a_cut_moves_the_window_end_and_the_drain_with_it() -> None:
    now = time.perf_counter_ns()
    log = MarkLog()
    phases = Phases(log, Window(now + S, now + 10 * S), drain_s=2)
    phases.cut(now + 3 * S)  # heard before the window opened: only its end moves
    assert phases.next == now + S
    assert list(phases.marks) == [now + S, now + 3 * S, now + 5 * S]
    assert log.window_end == now + 3 * S
    assert not phases.inside
    assert phases.advance(now + S) and phases.sending and log.calls == ["cpu"]
    assert phases.inside  # what the closed loop sends from here on is counted
    assert phases.advance(now + 3 * S) and not phases.sending and not phases.inside
    assert log.calls == ["cpu", "cpu", "stop"]
    assert phases.advance(now + 5 * S - 1) and not phases.advance(now + 5 * S)


def test_a_cut_never_shortens_the_window_below_now_nor_lengthens_it() -> None:
    now = time.perf_counter_ns()
    log = MarkLog()
    phases = Phases(log, Window(now - S, now + 10 * S), drain_s=1)
    phases.advance(now)
    phases.cut(now + 20 * S)  # past the planned end: the window stays as it was
    assert (list(phases.marks), log.window_end) == ([now + 10 * S, now + 11 * S], None)
    # An end already gone by when the cut is heard: messages were counted
    # against the window until now, so it may end no earlier than now.
    phases.cut(now - S // 2)
    assert now <= log.window_end <= time.perf_counter_ns()
    end = log.window_end
    assert list(phases.marks) == [end, end + S] and phases.next == end


def test_a_cut_after_the_window_closed_changes_nothing() -> None:
    now = time.perf_counter_ns()
    log = MarkLog()
    phases = Phases(log, Window(now - 2 * S, now - S), drain_s=5)
    phases.advance(now)
    phases.advance(now)
    assert not phases.sending
    phases.cut(now)
    assert (list(phases.marks), phases.next, log.window_end) == ([now + 4 * S], now + 4 * S, None)
