"""A worker's share of the connections: dialled at a pace, retried when refused.

Connections go out at most CONNECT_BATCH at a time in SYN state, and, with a
connect rate, no faster than the worker's share of it.  A connect the server
could not take yet -- refused, reset, or timed out, which is how an
overflowing listen backlog shows -- is tried again after a back-off that
doubles, up to RETRIES times; every retry is counted, and a connection that
never gets through is counted as failed, by the kind of its last error.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections import Counter, deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadgen.worker import Plan

# Connections a worker has in SYN state at once: connecting thousands at the
# same instant overflows the server's accept queue and shows up as 1 s / 3 s
# SYN-retransmit outliers that are the generator's fault, not the server's.
CONNECT_BATCH = 64

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

OUT = select.EPOLLOUT
RETRIES = 6
BACKOFF_S = 0.05
# What an overflowing accept queue (or a server between accepts) looks like.
RETRYABLE = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EAGAIN}


def error_kind(exc: BaseException | int | str) -> str:
    """A short stable name for an error: the errno symbol when there is one."""
    if isinstance(exc, str):
        return exc
    code = exc if isinstance(exc, int) else getattr(exc, "errno", None)
    if code:
        return errno.errorcode.get(code, f"errno {code}")
    return type(exc).__name__


def dial(family: int, address: tuple,
         source: str | None = None) -> tuple[socket.socket | None, int]:
    """Start a non-blocking connect: (socket, 0 or EINPROGRESS), or (None, errno)
    after closing the socket (out of descriptors, refused at once, ...)."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return None, exc.errno or errno.EIO
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            # Let connect() pick the port per destination: bind() alone would
            # reserve a port per source address, as if for a listener.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        err = sock.connect_ex(address)
    except OSError as exc:
        err = exc.errno or errno.EIO
    if err in (0, errno.EINPROGRESS):
        return sock, err
    sock.close()
    return None, err


class Connector:
    """Connects `plan.cids`; `run()` -> {cid: socket}, with retries and failures counted."""

    def __init__(self, plan: Plan, ep: select.epoll, errors: Counter[str]) -> None:
        self.plan = plan
        self.ep = ep
        self.errors = errors
        self.address = (plan.host, plan.port)
        self.retries = 0
        self.failed = 0
        # Seconds between two connects of this worker (0: as fast as the batch allows).
        self.gap = plan.procs / plan.connect_rate if plan.connect_rate else 0.0

    def source(self, cid: int) -> str | None:
        sources = self.plan.sources
        return sources[cid % len(sources)] if sources else None

    def run(self) -> dict[int, socket.socket]:
        todo = deque((cid, 0) for cid in self.plan.cids)
        later: deque[tuple[float, int, int]] = deque()  # (when, cid, attempt), in time order
        pending: dict[int, tuple[int, int, socket.socket, float]] = {}
        ready: dict[int, socket.socket] = {}
        timeout = self.plan.connect_timeout
        next_dial = time.monotonic()
        while todo or later or pending:
            now = time.monotonic()
            while later and later[0][0] <= now:
                todo.appendleft(later.popleft()[1:])
            while todo and len(pending) < CONNECT_BATCH and next_dial <= now:
                cid, attempt = todo.popleft()
                next_dial = max(next_dial + self.gap, now - 1.0)  # no burst to catch up
                sock, err = dial(self.plan.family, self.address, self.source(cid))
                if sock is None:
                    self.settle(cid, attempt, err, later)
                    continue
                pending[sock.fileno()] = (cid, attempt, sock, now + timeout)
                self.ep.register(sock.fileno(), OUT)
            wake = [deadline for *_, deadline in pending.values()]
            if later:
                wake.append(later[0][0])
            if todo and len(pending) < CONNECT_BATCH:
                wake.append(next_dial)
            if not wake:
                continue
            for fd, _ in self.ep.poll(max(0.0, min(wake) - time.monotonic())):
                cid, attempt, sock, _ = pending.pop(fd)
                self.ep.unregister(fd)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sock.close()
                    self.settle(cid, attempt, err, later)
                else:
                    ready[cid] = sock
            now = time.monotonic()
            for fd, (cid, attempt, sock, deadline) in list(pending.items()):
                if deadline <= now:
                    del pending[fd]
                    self.ep.unregister(fd)
                    sock.close()
                    self.settle(cid, attempt, errno.ETIMEDOUT, later)
        return ready

    def settle(self, cid: int, attempt: int, err: int, later: deque) -> None:
        """A connect failed: try again after a back-off, or give the connection up."""
        if err in RETRYABLE and attempt < RETRIES:
            self.retries += 1
            when = time.monotonic() + BACKOFF_S * (2 ** attempt)
            # Back-offs differ by attempt, so keep `later` in time order.
            index = len(later)
            while index and later[index - 1][0] > when:
                index -= 1
            later.insert(index, (when, cid, attempt + 1))
            return
        self.failed += 1
        self.errors[error_kind(err)] += 1
