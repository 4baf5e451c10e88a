"""Soak and hostile peers: the server over time, against many and against the worst clients.

Soak: rounds of hundreds of clients connect, talk (every byte and line
checked) and leave in mixed ways (close, half-close, reset).  After each round
the server tree's descriptors, threads and processes are back where they
started, and after the first round -- which pays for one-off allocations --
its USS stays flat.

Hostile peers: slowloris clients dribbling a line a byte at a time, a client
sending one endless line (chat) or flooding without ever reading (echo), and a
connect storm, all at once beside a steady talker.  The steady clients are
still served, the slow lines arrive whole, memory stays bounded, the endless
line costs its sender the connection with one log line, and nothing is left.

`make test` runs a few rounds on representative models; `make soak` (-m slow)
runs every model and protocol with long rounds and a byte a second.
"""

from __future__ import annotations

import random
import socket
import time

import pytest

from servers.models import MODELS
from tests.fuzz_support import (
    Peer,
    Snapshot,
    close_all,
    drive,
    join,
    reset,
    settle,
    snapshot,
    unclear_log_lines,
    warm_baseline,
)
from tests.support import model_params, serve, wait_for

EVERY = model_params((m, p) for m in MODELS for p in ("echo", "chat"))
# One of each way of serving: a readiness loop, select's fd bitmaps, threads, processes, asyncio.
REPRESENTATIVE = model_params([("epoll", "echo"), ("select", "chat"), ("thread", "chat"),
                               ("fork", "chat"), ("asyncio", "echo")])
TIMEOUT = 120.0  # per phase; generous because the machine is shared, and still a bound
# After the first round, USS may move by allocator noise, not by anything per client.
USS_SLACK = 4 * 1024 * 1024
# Memory a hostile peer may cost the server at most (the output and line limits are far below).
HOSTILE_BOUND = 32 * 1024 * 1024


# ---- soak -----------------------------------------------------------------------------


def soak_round(server, protocol: str, clients: int, rng: random.Random) -> None:
    """`clients` connect, talk (checked), and leave every way a client can."""
    if protocol == "chat":
        socks = join(server, clients, TIMEOUT)
        lines = [b"%d:%d\n" % (i, rng.randrange(1 << 30)) for i in range(clients)]
        peers = [Peer(s, [line]) for s, line in zip(socks, lines, strict=True)]
        expected = sorted(lines)
        total = sum(map(len, lines))
    else:
        peers = [Peer(server.connect(timeout=TIMEOUT),
                      [rng.randbytes(rng.randint(1, 4096)) for _ in range(rng.randint(1, 5))])
                 for _ in range(clients)]
    try:
        if protocol == "chat":
            assert drive(peers, lambda: all(len(p.received) >= total for p in peers), TIMEOUT)
            for peer in peers:
                assert sorted(bytes(peer.received).splitlines(keepends=True)) == expected
        else:
            sizes = {p: sum(map(len, p.chunks)) for p in peers}
            assert drive(peers, lambda: all(len(p.received) >= sizes[p] for p in peers),
                         TIMEOUT)
            for peer in peers:
                assert bytes(peer.received) == b"".join(peer.chunks)
        for peer in peers:
            leave(peer.sock, rng.choice(("close", "half_close", "reset")))
    finally:
        close_all(peers)


def leave(sock, how: str) -> None:
    if how == "reset":
        reset(sock)
    elif how == "half_close":
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
        sock.shutdown(socket.SHUT_WR)  # the server flushes (nothing is pending) and closes
        assert sock.recv(1) == b""
    sock.close()


def soak(model: str, protocol: str, rounds: int, clients: int) -> None:
    with serve(model, protocol) as server:
        baseline = warm_baseline(server)
        rng = random.Random(f"soak/{model}/{protocol}")
        uss: list[int] = []
        for n in range(rounds):
            soak_round(server, protocol, clients, rng)
            after = settle(server.proc.pid, baseline)
            assert after.counts() == baseline.counts(), (
                f"round {n}: (fds, threads, procs) {after.counts()}, "
                f"{baseline.counts()} before any client")
            uss.append(after.uss)
        growth = max(uss[1:]) - uss[0]
        print(f"soak {model}/{protocol}: {rounds} rounds x {clients} clients, USS after "
              f"round 1 {uss[0] / 2**20:.1f} MiB, growth since {growth / 2**20:+.2f} MiB, "
              f"processes left {after.procs - baseline.procs}")
        assert growth < USS_SLACK, [f"{r / 2**20:.1f}" for r in uss]
        assert unclear_log_lines(server.log(), model) == []


@pytest.mark.parametrize(("model", "protocol"), REPRESENTATIVE)
def test_soak_short(model: str, protocol: str) -> None:
    soak(model, protocol, rounds=3, clients=100)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "protocol"), EVERY)
def test_soak_long(model: str, protocol: str) -> None:
    soak(model, protocol, rounds=10, clients=300)


# ---- hostile peers ----------------------------------------------------------------------


class Peak:
    """Largest tree USS seen, sampled at most every `every` seconds from a drive loop."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every, self.uss, self.last = pid, every, 0, 0.0

    def sample(self) -> None:
        if time.monotonic() - self.last >= self.every:
            self.uss = max(self.uss, snapshot(self.pid).uss)
            self.last = time.monotonic()


def hostile(model: str, protocol: str, tick: float) -> None:
    chat = protocol == "chat"
    with serve(model, protocol) as server:
        baseline: Snapshot = warm_baseline(server)
        socks = join(server, 7, TIMEOUT) if chat else [server.connect() for _ in range(7)]
        talk = [b"t:%d\n" % i for i in range(50)]
        lines = [b"s%d:slow line\n" % i for i in range(len(socks) - 2)]
        listener, talker = Peer(socks[0], []), Peer(socks[1], talk, gaps=[0.01] * len(talk))
        peers = [listener, talker]
        peers += [Peer(s, [bytes([b]) for b in line], gaps=[tick] * len(line))
                  for s, line in zip(socks[2:], lines, strict=True)]
        # Chat: one endless line, which the line limit must end.  Echo: a flood that is
        # never read, which backpressure must hold.  64 MiB either way: bounded, and
        # far more than the server may keep.
        flood = Peer(server.connect(), [b"x" * 65536] * 1024, reads=chat)
        # The listener gets every talker and slow line (chat); each talker its own (echo).
        want = ({listener: sum(map(len, talk + lines))} if chat
                else {p: sum(map(len, p.chunks)) for p in peers})
        peak = Peak(server.proc.pid)

        def done() -> bool:
            peak.sample()
            return (all(len(p.received) >= n for p, n in want.items())
                    and (not chat or bool(flood.eof or flood.error)))

        storm: list[Peer] = []
        try:
            assert drive([*peers, flood], done, TIMEOUT + tick * 20), (
                f"listener {len(listener.received)} bytes, flood eof={flood.eof} "
                f"error={flood.error}; log:\n{server.log()}")
            grown = peak.uss - baseline.uss
            print(f"hostile {model}/{protocol}: peak USS {grown / 2**20:+.1f} MiB over "
                  f"baseline, flood sent {len(flood.sent) / 2**20:.1f} MiB")
            assert grown < HOSTILE_BOUND, f"server grew {grown / 2**20:.1f} MiB"
            if chat:
                got = bytes(listener.received).split(b"\n")
                assert sorted(line + b"\n" for line in got if line) == sorted(talk + lines)
            else:
                for peer in want:
                    assert bytes(peer.received) == b"".join(peer.chunks)
            # A connect storm (each leaves at once, mid-line, by FIN or RST); the steady
            # pair is still served after it.
            storm = [Peer(server.connect(timeout=TIMEOUT), [b"half a li"],
                          ending=random.Random(i).choice(("reset", "close")))
                     for i in range(300)]
            after_storm = Peer(talker.sock, [b"t:after the storm\n"])
            target = listener if chat else after_storm
            need = len(target.received) + len(after_storm.chunks[0])
            assert drive([*storm, after_storm, *([listener] if chat else [])],
                         lambda: len(target.received) >= need, TIMEOUT)
            assert bytes(target.received).endswith(b"t:after the storm\n")
            assert server.proc.poll() is None
        finally:
            close_all([*peers, flood, *storm])
        if chat:
            assert wait_for(lambda: server.log().count("line longer than") == 1, 10), (
                server.log())
        after = settle(server.proc.pid, baseline)
        assert after.counts() == baseline.counts(), (after.counts(), baseline.counts())
        assert unclear_log_lines(server.log(), model) == []


HOSTILE_FAST = model_params([("epoll", "chat"), ("thread", "chat"), ("fork", "chat"),
                             ("asyncio", "echo"), ("sigio", "echo")])


@pytest.mark.parametrize(("model", "protocol"), HOSTILE_FAST)
def test_hostile_peers_fast(model: str, protocol: str) -> None:
    hostile(model, protocol, tick=0.05)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "protocol"), EVERY)
def test_hostile_peers_a_byte_a_second(model: str, protocol: str) -> None:
    hostile(model, protocol, tick=1.0)
