"""The load generator against servers that misbehave on purpose, and against real ones.

The misbehaving servers (below) are deliberately simple -- a thread per
connection, blocking sockets -- and message-aware: they read whole messages of
a known size, so they can drop, damage, repeat, swap or delay exactly one of
them, and each test demands that `muxbench load` report exactly that.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from loadgen.integrity import Pattern, chat_line, parse_chat_line
from tests.support import MUXBENCH, ROOT, kill_group, recv_exactly


@dataclass
class LoadRun:
    status: int
    out: dict | None
    stdout: str
    stderr: str


def run_load(port: int, *args: str, timeout: float = 60.0, json_out: bool = True) -> LoadRun:
    """Run `muxbench load` against 127.0.0.1:port; parse its JSON when asked for."""
    argv = [*MUXBENCH, "load", "--port", str(port), *args] + (["--json"] if json_out else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    parsed = json.loads(stdout) if json_out and stdout.strip() else None
    return LoadRun(proc.returncode, parsed, stdout, stderr)


# A fault: called with (connection index, message index, message) -> what to send back
# (a list of byte strings, possibly empty; it may sleep first), or None: die now.
Fault = Callable[[int, int, bytes], list[bytes] | None]


@dataclass
class FaultyServer:
    """An echo server (message size `size`) that applies `fault` to what it echoes."""

    size: int
    fault: Fault
    probe: bool = True  # echo workloads open with a one-byte probe; churn does not
    listener: socket.socket = field(init=False)
    peers: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _socks: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.listener.settimeout(0.05)
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                sock, addr = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._socks.append(sock)
                self.peers.append(addr[0])
            self._spawn(self._serve, sock, index)
            index += 1

    def _serve(self, sock: socket.socket, conn: int) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        seq = 0
        with contextlib.suppress(OSError):
            if self.probe:
                sock.sendall(recv_exactly(sock, 1))
            while not self._stop.is_set():
                message = recv_exactly(sock, self.size)
                if len(message) < self.size:
                    break
                reply = self.fault(conn, seq, message)
                if reply is None:
                    self.close_all()
                    break
                for chunk in reply:
                    sock.sendall(chunk)
                seq += 1
        with contextlib.suppress(OSError):
            sock.close()

    def close_all(self) -> None:
        """Die mid-run: stop listening and reset every connection."""
        self._stop.set()
        self.listener.close()
        with self._lock:
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.close_all()
        for thread in self._threads:
            thread.join(5)


@contextlib.contextmanager
def faulty_server(size: int, fault: Fault) -> Iterator[FaultyServer]:
    server = FaultyServer(size, fault)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


SIZE = 64
FAST = ("--warmup", "0", "--drain", "0.5", "--procs", "1")


def echo(conn: int, seq: int, message: bytes) -> list[bytes]:
    return [message]


def at(target: int, then: Callable[[bytes], list[bytes] | None]) -> Fault:
    """Apply `then` to message `target` of the first connection; echo everything else."""
    def fault(conn: int, seq: int, message: bytes) -> list[bytes] | None:
        return then(message) if (conn, seq) == (0, target) else [message]
    return fault


def flipping(position: int) -> Callable[[bytes], list[bytes]]:
    def flip(message: bytes) -> list[bytes]:
        damaged = bytearray(message)
        damaged[position] ^= 0x01
        return [bytes(damaged)]
    return flip


MARKERS = ("muxbench load: window start", "muxbench load: window end")


def problem_lines(run: LoadRun) -> list[str]:
    """stderr without the two window markers: the one-line diagnosis, if any."""
    lines = [line for line in run.stderr.splitlines() if line not in MARKERS]
    assert all(line.startswith("muxbench load: ") for line in lines), run.stderr
    return lines


def assert_clean_exit(run: LoadRun) -> None:
    """Exit 0, unless the run was only flagged invalid (a busy shared machine can
    saturate the generator; that is reported, and is not what these tests check)."""
    assert run.status == (0 if run.out["valid"] else 1), run.stderr


def counts(out: dict) -> dict:
    return {k: out[k] for k in ("lost", "corrupted", "duplicated", "reordered", "errors")}


def assert_identity(out: dict) -> None:
    assert out["sent"] == out["received"] + out["corrupted"] + out["lost"], out


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
    assert run.status == 1
    assert "integrity: lost 1" in run.stderr


@pytest.mark.parametrize("position", [2, 40])  # in the sequence number; in the body
def test_flipped_byte_is_exactly_one_corrupted(position: int) -> None:
    with faulty_server(SIZE, at(7, flipping(position))) as server:
        run = run_load(server.port, "--clients", "3", "--duration", "0.6", *FAST)
    out = run.out
    assert counts(out) == dict(lost=0, corrupted=1, duplicated=0, reordered=0, errors=0)
    assert_identity(out)
    assert run.status == 1


def test_repeated_message_is_exactly_one_duplicate() -> None:
    with faulty_server(SIZE, at(9, lambda m: [m, m])) as server:
        run = run_load(server.port, "--clients", "2", "--depth", "2", "--duration", "0.6",
                       *FAST)
    out = run.out
    assert counts(out) == dict(lost=0, corrupted=0, duplicated=1, reordered=0, errors=0)
    assert out["sent"] == out["received"]


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
