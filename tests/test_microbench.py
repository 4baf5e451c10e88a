"""Micro-benchmarks of the hot paths, run by pytest-benchmark.

In `make test` they run once each as smoke tests (`--benchmark-disable` in the
pytest options), so machine noise can never fail a build; every one still
checks its result.  `make microbench` times them for real and saves
results/microbench.json (`--benchmark-json`).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection

import pytest

from loadgen.echo import EchoWorker
from loadgen.integrity import Window
from loadgen.record import as_numpy, hdr_encode, new_samples, summarize
from loadgen.worker import IN, Go, Plan
from servers.protocol import Chat
from tests.support import kill_group, recv_exactly, serve, spawn

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


# -- the load generator's hot loop, driven over a real socket ---------------------------

ROUND_TRIPS = 2_000
SIZE = 64
# An echo peer in a process of its own, at the far end of a socketpair.  Once it has
# echoed ROUND_TRIPS frames it cuts the window through the worker's channel, as the
# generator's parent does on Ctrl-C, so each round times a fixed amount of work.  The cut
# goes out *before* the echo that completes the count: the worker then finds it with that
# echo or earlier, and a depth-1 worker sends at most one more counted frame, whatever
# the scheduler does.  With a swap interval it returns the frame after every Nth one
# first, reading it if need be: at depth 2 or more the worker has already sent it, or
# sends it on the echo before, so the wait always ends; it never swaps across the cut.
# It prints how many pairs it swapped.
PEER = textwrap.dedent("""
    import socket, sys, time
    from multiprocessing.connection import Connection
    sock, chan = socket.socket(fileno=int(sys.argv[1])), Connection(int(sys.argv[2]))
    rounds, size, every = (int(arg) for arg in sys.argv[3:6])
    frames = sock.makefile("rb")
    echoed = swapped = 0
    while frame := frames.read(size):
        out = [frame]
        if every and echoed % every == every - 1 and echoed + 2 < rounds:
            out.insert(0, frames.read(size))
            swapped += 1
        if echoed < rounds <= echoed + len(out):
            chan.send(("cut", time.perf_counter_ns()))
        sock.sendall(b"".join(out))
        echoed += len(out)
    print(swapped, flush=True)
""")


@dataclass
class Loop:
    """One EchoWorker over one connection to a PEER, ready to run."""

    worker: EchoWorker
    go: Go
    peer: subprocess.Popen
    chan: Connection


@pytest.fixture
def loops() -> Iterator[Callable[[int, int], tuple[tuple, dict]]]:
    """A pytest-benchmark setup: a fresh worker and peer for every round; all stopped at
    the end."""
    made: list[Loop] = []

    def setup(depth: int, swap_every: int) -> tuple[tuple, dict]:
        mine, theirs = socket.socketpair()
        chan, peer_chan = Pipe()
        with theirs, peer_chan:  # the peer's ends: ours closed once it has them
            peer = spawn([sys.executable, "-c", PEER, str(theirs.fileno()),
                          str(peer_chan.fileno()), str(ROUND_TRIPS), str(SIZE), str(swap_every)],
                         pass_fds=(theirs.fileno(), peer_chan.fileno()), stdout=subprocess.PIPE,
                         text=True)
            plan = Plan("echo", "", 0, socket.AF_UNIX, cids=[0], clients=1, size=SIZE,
                        depth=depth, rate=None, arrival="constant", seed=1, connect_timeout=5.0,
                        drain_s=5.0)
            worker = EchoWorker(plan, chan)
            worker.adopt({0: mine})
        # As Worker.main() does before run(): the parent's channel is how a cut arrives.
        worker.ep.register(chan.fileno(), IN)
        now = time.perf_counter_ns()
        made.append(Loop(worker, Go(now, Window(now, now + 30 * 10**9)), peer, chan))
        return (made[-1],), {}

    yield setup
    for loop in made:
        kill_group(loop.peer)
        loop.peer.stdout.close()
        loop.worker.ep.close()
        loop.chan.close()


def drive(loop: Loop) -> Loop:
    """EchoWorker.run, the generator's own loop, until the peer cuts its window."""
    loop.worker.run(loop.go)
    return loop


def swaps(loop: Loop) -> int:
    """How many pairs the peer swapped (it says once the worker has closed the socket)."""
    out, _ = loop.peer.communicate(timeout=10)
    return int(out)


def test_echo_loop_in_order(benchmark, loops):
    loop = benchmark.pedantic(drive, setup=lambda: loops(1, 0), rounds=5)
    tally, worker = loop.worker.tally, loop.worker
    assert ROUND_TRIPS <= tally.received == tally.sent <= ROUND_TRIPS + 1
    assert (tally.lost, tally.corrupted, tally.duplicated, tally.reordered) == (0, 0, 0, 0)
    assert not worker.errors and len(worker.latency) == tally.received
    assert swaps(loop) == 0


def test_echo_loop_with_every_tenth_reply_swapped(benchmark, loops):
    # The slow path: a later frame first (the skipped one is parked), then the late one.
    loop = benchmark.pedantic(drive, setup=lambda: loops(2, 10), rounds=5)
    tally = loop.worker.tally
    assert tally.received == tally.sent >= ROUND_TRIPS
    assert (tally.lost, tally.corrupted, tally.duplicated) == (0, 0, 0)
    assert tally.reordered == swaps(loop) > 0
    assert not loop.worker.errors and len(loop.worker.latency) == tally.received


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
