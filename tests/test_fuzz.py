"""Socket-level fuzzing of every model x both protocols, checked against the sans-io core.

A seeded random driver (the seed names the case, so a failure is replayed by
its test id) opens a few clients and has each send random bytes -- NUL,
invalid UTF-8, CR, anything -- cut at random points into bursts and pauses,
then end in a random way: stay, half-close, reset (RST) or close without
reading, some of them mid-stream.  What the server must send back is what the
protocol core (servers.protocol.Echo / Chat with the same Limits) produces
from the same bytes.  After every batch the server must still be alive, still
serving, with one clear log line per event, and back at the descriptors,
threads and processes it started with.

The fast cases run in `make test`; `make soak` (-m slow) runs many more.
"""

from __future__ import annotations

import random

import pytest

from servers.protocol import Chat, Echo, Limits, LineTooLong
from tests.fuzz_support import (
    ENDINGS,
    Peer,
    close_all,
    connections,
    drive,
    join,
    pauses,
    settle,
    split,
    unclear_log_lines,
    warm_baseline,
)
from tests.support import AVAILABLE, recv_exactly, serve, wait_for

MAX_LINE = 2048  # small, so that too-long lines are cheap to make
LIMITS = Limits(max_line=MAX_LINE)
FAST_SEEDS = range(3)
SLOW_SEEDS = range(100, 140)
CASE_TIMEOUT = 60.0  # generous: the machine is shared; a hang still ends


def random_size(rng: random.Random) -> int:
    return rng.choice([0, 1, rng.randint(2, 2000), rng.randint(2000, 300_000)])


# ---- echo -----------------------------------------------------------------------------


def echo_model(chunks: list[bytes]) -> bytes:
    """What the core says an echo server sends back for these chunks."""
    core = Echo(LIMITS)
    core.join("c")
    out = bytearray()
    for chunk in chunks:
        delivery = core.receive("c", chunk)
        if delivery is not None:
            out += delivery[1]
    return bytes(out)


def echo_case(server, rng: random.Random) -> int:
    peers = []
    for _ in range(rng.randint(1, 4)):
        data = rng.randbytes(random_size(rng))
        chunks = split(data, rng, rng.randint(1, 40))
        ending = rng.choice(ENDINGS)
        stop = rng.randint(0, len(chunks)) if ending in ("reset", "close") else None
        peers.append(Peer(server.connect(), chunks, ending, pauses(rng, len(chunks)), stop))
    expected = {peer: echo_model(peer.chunks) for peer in peers}
    checked = [p for p in peers if p.ending in ("stay", "half_close")]

    def done() -> bool:
        return all((len(p.received) >= len(expected[p]) and (p.ending == "stay" or p.eof))
                   or p.error for p in checked)

    try:
        assert drive(peers, done, CASE_TIMEOUT), describe(peers, expected)
        for peer in checked:
            assert peer.error is None, f"{peer.ending} client got {peer.error}"
            assert bytes(peer.received) == expected[peer], describe([peer], expected)
    finally:
        close_all(peers)
    return 0


def describe(peers: list[Peer], expected: dict) -> str:
    return "; ".join(f"{p.ending}: sent {len(p.sent)} got {len(p.received)} of "
                     f"{len(expected.get(p, b''))} eof={p.eof} error={p.error}" for p in peers)


# ---- chat -----------------------------------------------------------------------------


def chat_model(key: int, chunks: list[bytes], whole: bool) -> list[bytes]:
    """The lines the core delivers for one sender's chunks, in order.

    With whole=False the sender is cut short (reset, or dropped for a long
    line) and every receiver may see any prefix of these lines; the chunks
    are fed line by line, which gives the longest prefix the server may send
    whatever its own receive boundaries were.
    """
    core = Chat(LIMITS)
    core.join(key)
    if not whole:
        chunks = newline_split(b"".join(chunks))
    lines: list[bytes] = []
    for chunk in chunks:
        try:
            delivery = core.receive(key, chunk)
        except LineTooLong:
            break
        if delivery is not None:
            lines += newline_split(delivery[1])
    core.leave(key)  # an unterminated tail is never a line
    return lines


def chat_stream(rng: random.Random, key: int, ending: str) -> bytes:
    lines = [b"%d:%d:" % (key, n)
             + rng.randbytes(rng.choice([0, rng.randint(1, 50), rng.randint(50, 1500)]))
             .replace(b"\n", b"") + b"\n"
             for n in range(rng.randint(0, 30))]
    if ending == "long":
        lines.insert(rng.randint(0, len(lines)),
                     b"%d:long:" % key + b"x" * (MAX_LINE + rng.randint(1, 3000)) + b"\n")
    if ending in ("stay", "half_close"):
        lines.append(b"%d:END\n" % key)
    tail = rng.randbytes(rng.randint(1, 1000)).replace(b"\n", b"")
    return b"".join(lines) + (tail if ending in ("half_close", "reset") else b"")


def newline_split(data: bytes) -> list[bytes]:
    """Complete lines, each with its newline (bytes.splitlines also splits on CR, VT...)."""
    return [line + b"\n" for line in data.split(b"\n")[:-1]]


def by_sender(received: bytes) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for line in newline_split(received):
        out.setdefault(int(line.split(b":", 1)[0]), []).append(line)
    return out


def chat_case(server, rng: random.Random) -> int:
    """One case; returns how many senders the server must have dropped for a long line."""
    n = rng.randint(2, 5)
    endings = ["stay"] + [rng.choice(("stay", "half_close", "reset", "long"))
                          for _ in range(n - 1)]
    peers, models = [], {}
    for key, (sock, ending) in enumerate(zip(join(server, n, CASE_TIMEOUT), endings, strict=True)):
        chunks = split(chat_stream(rng, key, ending), rng, rng.randint(1, 30))
        stop = rng.randint(0, len(chunks)) if ending == "reset" else None
        peer = Peer(sock, chunks, "stay" if ending == "long" else ending,
                    pauses(rng, len(chunks)), stop)
        whole = ending in ("stay", "half_close")
        models[key] = (whole, chat_model(key, chunks if whole else peer.chunks[:stop], whole))
        peers.append(peer)
    ends = sum(whole for whole, _ in models.values())
    long_peers = [p for p, e in zip(peers, endings, strict=True) if e == "long"]
    stayers = [p for p, e in zip(peers, endings, strict=True) if e == "stay"]

    def done() -> bool:
        return (all(p.received.count(b":END\n") >= ends for p in stayers)
                and all(p.eof or p.error for p in peers if p.ending == "half_close")
                and all(p.eof or p.error for p in long_peers))

    try:
        assert drive(peers, done, CASE_TIMEOUT), (
            f"endings {endings}: " + "; ".join(f"got {len(p.received)} eof={p.eof} "
                                               f"error={p.error}" for p in peers))
        for key, (peer, ending) in enumerate(zip(peers, endings, strict=True)):
            if ending in ("stay", "half_close"):
                assert peer.error is None, f"{ending} member {key} got {peer.error}"
                check_deliveries(by_sender(bytes(peer.received)), models, key,
                                 complete=ending == "stay")
    finally:
        close_all(peers)
    return len(long_peers)


def check_deliveries(got: dict[int, list[bytes]], models: dict, receiver: int,
                     complete: bool) -> None:
    assert set(got) <= set(models), f"lines from unknown senders {set(got) - set(models)}"
    for sender, (whole, lines) in models.items():
        seen = got.get(sender, [])
        exact = whole and (complete or sender == receiver)
        if exact:  # a member that stays sees all of it; a half-closer sees its own
            assert seen == lines, (f"member {receiver} got {len(seen)} of {len(lines)} lines "
                                   f"from {sender}, first difference at line "
                                   f"{first_difference(seen, lines)}")
        else:  # cut short, or this member left first: any prefix, nothing else
            assert seen == lines[: len(seen)], f"member {receiver}: lines of {sender} not a prefix"


def first_difference(a: list[bytes], b: list[bytes]) -> int:
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


# ---- the driver -----------------------------------------------------------------------


def fuzz(model: str, protocol: str, seeds: range) -> None:
    extra = ["--max-line", str(MAX_LINE)] if protocol == "chat" else []
    with serve(model, protocol, *extra) as server:
        baseline = warm_baseline(server)
        case = echo_case if protocol == "echo" else chat_case
        too_long = 0
        for seed in seeds:
            too_long += case(server, random.Random(f"{model}/{protocol}/{seed}"))
            assert server.proc.poll() is None, f"seed {seed}: server died:\n{server.log()}"
            # Every connection of the case closed on the server's side too (and no
            # late line of a reset sender can reach the next case's members).
            after = settle(server.proc.pid, baseline)
            assert after.counts() == baseline.counts(), (
                f"seed {seed}: (fds, threads, procs) {after.counts()} after the case, "
                f"{baseline.counts()} before; sockets {connections(server.proc.pid)}")
            # One log line per sender dropped for a long line, none for anyone else.
            assert wait_for(lambda n=too_long: server.log().count("line longer than") == n, 10), (
                f"seed {seed}: {too_long} too-long senders in all; log:\n{server.log()}")
        with server.connect(timeout=CASE_TIMEOUT) as probe:  # still serving
            probe.sendall(b"probe\n")
            assert recv_exactly(probe, 6) == b"probe\n"
        assert unclear_log_lines(server.log(), model) == []


@pytest.mark.parametrize("protocol", ["echo", "chat"])
@pytest.mark.parametrize("model", AVAILABLE)
def test_fuzz_fast(model: str, protocol: str) -> None:
    fuzz(model, protocol, FAST_SEEDS)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["echo", "chat"])
@pytest.mark.parametrize("model", AVAILABLE)
def test_fuzz_many(model: str, protocol: str) -> None:
    fuzz(model, protocol, SLOW_SEEDS)
