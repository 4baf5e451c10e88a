"""Helpers for the fuzz, soak and hostile-peer tests: many sockets, one thread, real servers.

`drive()` runs any number of scripted clients at once from a single selector
loop, so a test never deadlocks on a full socket buffer (every client keeps
reading while it writes) and never needs a thread per client.  `snapshot()`
measures a server's whole process tree, which is what "leaves nothing behind"
is checked against.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import random
import re
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from tests.support import join_room, recv_exactly

ENDINGS = ("stay", "half_close", "reset", "close")


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def split(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    """data cut at up to `pieces - 1` random points (empty pieces dropped)."""
    cuts = sorted({rng.randrange(len(data) + 1) for _ in range(pieces - 1)} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def pauses(rng: random.Random, n: int, burst: float = 0.7) -> list[float]:
    """Mostly back-to-back writes (bursts), now and then a short gap."""
    return [0.0 if rng.random() < burst else rng.uniform(0.001, 0.02) for _ in range(n)]


@dataclass(eq=False)
class Peer:
    """One scripted client: send `chunks` (after `gaps`), then end as `ending` says.

    stay: keep reading; half_close: shutdown(SHUT_WR) and read to EOF; reset:
    RST (SO_LINGER 0); close: plain close without reading what is still coming.
    A reset or close after `stop_after` chunks ends the client mid-stream.
    """

    sock: socket.socket
    chunks: list[bytes]
    ending: str = "stay"
    gaps: list[float] | None = None
    stop_after: int | None = None
    reads: bool = True  # False: never reads, however much the server sends
    received: bytearray = field(default_factory=bytearray)
    sent_chunks: int = 0
    eof: bool = False
    error: str | None = None
    ended: bool = False  # our side is closed: nothing more to read or write
    fd: int = -1
    _pending: memoryview | None = None
    _ready_at: float = 0.0

    def __post_init__(self) -> None:
        self.sock.setblocking(False)
        # Registered by number: the socket may be closed (reset) mid-loop.
        self.fd = self.sock.fileno()
        if self.stop_after is None:
            self.stop_after = len(self.chunks)

    @property
    def sent(self) -> bytes:
        """What the server has been handed (whole chunks only; the last may be partial)."""
        return b"".join(self.chunks[: self.sent_chunks])

    @property
    def sending(self) -> bool:
        return not self.ended and self.error is None and (
            self._pending is not None or self.sent_chunks < self.stop_after)

    @property
    def reading(self) -> bool:
        return self.reads and not self.ended and not self.eof and self.error is None

    def _step_send(self, now: float) -> None:
        if self._pending is None:
            if now < self._ready_at:
                return
            self._pending = memoryview(self.chunks[self.sent_chunks])
        try:
            n = self.sock.send(self._pending)
        except BlockingIOError:
            return
        except OSError as exc:  # the server dropped us (EPIPE, ECONNRESET)
            self.error = errno_name(exc)
            return
        self._pending = self._pending[n:] if n < len(self._pending) else None
        if self._pending is None:
            self.sent_chunks += 1
            if self.gaps and self.sent_chunks < len(self.gaps):
                self._ready_at = now + self.gaps[self.sent_chunks]
        if not self.sending:
            self._end()

    def _end(self) -> None:
        if self.ending == "half_close":
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        elif self.ending == "reset":
            reset(self.sock)
            self.ended = True
        elif self.ending == "close":
            self.sock.close()
            self.ended = True

    def _step_recv(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.error = errno_name(exc)
            return
        if data:
            self.received += data
        else:
            self.eof = True

    def next_wake(self, now: float) -> float | None:
        if self._pending is None and self.sending and self._ready_at > now:
            return self._ready_at - now
        return None


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def drive(peers: list[Peer], until: Callable[[], bool], timeout: float) -> bool:
    """Run every peer until `until()` holds (True) or `timeout` passes (False)."""
    for peer in peers:
        if not peer.sending and not peer.ended:
            peer._end()  # nothing to send at all: end at once
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        while not until():
            now = time.monotonic()
            if now >= deadline:
                return False
            wakes = [0.2]
            for peer in peers:
                events = ((selectors.EVENT_READ if peer.reading else 0)
                          | (selectors.EVENT_WRITE if peer.sending else 0))
                _interest(sel, peer, events)
                wake = peer.next_wake(now)
                if wake is not None:
                    wakes.append(wake)
            for key, mask in sel.select(min(wakes)):
                peer = key.data
                if mask & selectors.EVENT_WRITE and peer.sending:
                    peer._step_send(time.monotonic())
                if mask & selectors.EVENT_READ and peer.reading:
                    peer._step_recv()
            now = time.monotonic()
            for peer in peers:  # a gap that expired needs no readiness report to start
                if peer.sending and peer._pending is None and peer._ready_at <= now:
                    peer._step_send(now)
        return True


def _interest(sel: selectors.BaseSelector, peer: Peer, events: int) -> None:
    key = sel.get_map().get(peer.fd)
    if key is None:
        if events:
            sel.register(peer.fd, events, peer)
    elif not events:
        sel.unregister(peer.fd)  # a closed fd left epoll by itself; this forgets it
    elif key.events != events:
        sel.modify(peer.fd, events, peer)


def join(server, n: int, timeout: float) -> list[socket.socket]:
    """n chat members, all known to be in the room (tests.support.join_room)."""
    return join_room(server, n, lambda i: server.connect(timeout=timeout))


def close_all(peers: list[Peer]) -> None:
    for peer in peers:
        peer.sock.close()


# ---- the server's process tree --------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    # USS summed over the tree (bytes): the pages only this process holds.  Summed
    # RSS would count the pages forked children share with the parent once per
    # child, and PSS moves whenever any other process on the machine maps the same
    # libraries; a leak is private memory, which USS counts exactly once.
    uss: int
    fds: int
    threads: int
    procs: int

    def counts(self) -> tuple[int, int, int]:
        return self.fds, self.threads, self.procs


def live_tree(root: psutil.Process) -> list[psutil.Process]:
    """root and its descendants, zombies left out (they hold no memory)."""
    tree = [root]
    with contextlib.suppress(psutil.NoSuchProcess):
        tree += root.children(recursive=True)
    live = []
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
    return live


def snapshot(pid: int, tries: int = 20) -> Snapshot:
    """USS, descriptors, threads and processes of pid and all its live descendants.

    Read again until the tree holds still across the reading (a tree that
    never does, `tries` times over, gets its last reading).  A forked child
    shares its parent's pages copy-on-write until it exits, and a shared page
    is no one's USS: a child that ended between the parent's reading and its
    own would leave the parent looking megabytes smaller, and the tree's
    counts looking settled.
    """
    root = psutil.Process(pid)
    taken = None
    for _ in range(tries):
        tree = live_tree(root)
        uss = fds = threads = 0
        try:
            for proc in tree:
                with proc.oneshot():
                    uss += proc.memory_full_info().uss
                    fds += proc.num_fds()
                    threads += proc.num_threads()
        except psutil.NoSuchProcess:
            if not root.is_running():
                raise
            continue
        taken = Snapshot(uss, fds, threads, len(tree))
        if {proc.pid for proc in live_tree(root)} == {proc.pid for proc in tree}:
            return taken
    if taken is None:
        raise RuntimeError(f"the process tree of {pid} changed during every reading")
    return taken


def warm_baseline(server, timeout: float = 15.0) -> Snapshot:
    """The tree's resting state once it has served one client.

    The ready line is printed before the serving loop starts (asyncio creates
    its loop, and its descriptors, after it), so a snapshot taken at once would
    count those as leaks; one exchange proves the loop is up.
    """
    with server.connect(timeout=timeout) as sock:
        sock.sendall(b"warm\n")
        assert recv_exactly(sock, 5) == b"warm\n"
    previous, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = snapshot(server.proc.pid)
        if previous is not None and now.counts() == previous.counts():
            return now
        previous = now
        time.sleep(0.2)
    return previous


def settle(pid: int, baseline: Snapshot, timeout: float = 15.0) -> Snapshot:
    """Wait until the tree's fds, threads and processes are back at `baseline`;
    the last snapshot either way (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while True:
        now = snapshot(pid)
        if now.counts() == baseline.counts() or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def connections(pid: int) -> list[str]:
    """The tree's TCP sockets as 'local->remote STATE' (what a leak report needs)."""
    root = psutil.Process(pid)
    out = []
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            out += [f"{c.laddr.port}->{c.raddr.port if c.raddr else '-'} {c.status}"
                    for c in proc.net_connections("tcp")]
    return out


# ---- the server's log -----------------------------------------------------------------


def unclear_log_lines(log: str, model: str) -> list[str]:
    """Log lines that are not one clear `muxbench serve[MODEL]: ...` line (tracebacks etc.)."""
    prefix = re.compile(rf"^muxbench serve\[{re.escape(model)}\]: \S")
    return [line for line in log.splitlines() if not prefix.match(line)]
