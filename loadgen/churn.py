"""Churn: connect, one echo, close -- again and again, `clients` cycles at a time.

The client closes first, so TIME_WAIT lands on the client's side, and each
new connection binds the next of 127.0.0.2..127.0.0.254 (each address has
its own ephemeral ports), so a fast loop cannot run out of ports.  Measured:
completed cycles per second, the connect latency (connect() to established),
and the cycle latency (connect() to the echo verified), for cycles started
inside the window.  A refused or failed connect is counted by kind and
retried after a short pause, so that a dead server is not hammered in a spin.
"""

from __future__ import annotations

import socket
import time

from loadgen.connect import dial
from loadgen.integrity import Pattern
from loadgen.record import new_samples
from loadgen.timer import sleep_until
from loadgen.worker import IN, OUT, Go, Phases, Worker
from muxbench.net import RECV_SIZE

RETRY_NS = 10_000_000
# How often connect timeouts are looked for (a scan over the slots).
SWEEP_NS = 10_000_000


class Slot:
    __slots__ = ("alive", "buf", "cid", "cycle", "deadline", "fd", "frame", "out", "pattern",
                 "sock", "started")

    def __init__(self, cid: int, pattern: Pattern) -> None:
        self.cid, self.pattern = cid, pattern
        self.cycle = 0
        self.alive = False
        self.sock: socket.socket | None = None
        self.fd = -1
        self.frame = b""         # the echo outstanding; empty while connecting
        self.buf = self.out = b""
        self.started = self.deadline = 0


class ChurnWorker(Worker):
    needs_connections = False

    def adopt(self, socks: dict[int, socket.socket]) -> None:
        plan = self.plan
        self.slots = [Slot(cid, Pattern(cid, plan.size, plan.seed)) for cid in plan.cids]
        self.conns: dict[int, Slot] = {}
        self.retry: list[tuple[int, Slot]] = []
        self.connects = new_samples()
        self.cycles = 0
        self.timeout_ns = int(plan.connect_timeout * 1e9)

    def in_window(self, s: Slot) -> bool:
        return self.window_start <= s.started < self.window_end

    def begin(self, s: Slot, now: int) -> None:
        sources = self.plan.sources
        source = sources[(s.cid + s.cycle) % len(sources)] if sources else None
        sock, err = dial(self.plan.family, self.address, source)
        s.started = now
        if sock is None:
            self.fail(err)
            self.retry.append((now + RETRY_NS, s))
            return
        s.sock, s.fd, s.alive = sock, sock.fileno(), True
        s.frame = s.buf = s.out = b""
        s.deadline = now + self.timeout_ns
        self.conns[s.fd] = s
        self.ep.register(s.fd, OUT)

    def abandon(self, s: Slot, why: BaseException | str | int, now: int) -> None:
        """The cycle failed: its echo (if one was sent) is lost; retry shortly."""
        if s.frame and self.in_window(s):
            self.tally.lost += 1
        self.drop(s, why)
        self.retry.append((now + RETRY_NS, s))

    def connected(self, s: Slot, now: int) -> None:
        err = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.abandon(s, err, now)
            return
        s.frame = s.pattern.frame(s.cycle)
        if self.in_window(s):
            self.connects.append(now - s.started)
            self.tally.sent += 1
        self.ep.modify(s.fd, IN)
        self.write(s, s.frame)

    def readable(self, s: Slot, now: int, sending: bool) -> None:
        try:
            data = s.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.abandon(s, exc, now)
            return
        if not data:
            self.abandon(s, "EOF", now)
            return
        s.buf += data
        if len(s.buf) < len(s.frame):
            return
        if self.in_window(s):
            if s.buf == s.frame:
                self.tally.received += 1
                self.latency.append(now - s.started)
                self.cycles += 1
            else:
                self.tally.corrupted += 1
        # Client closes first: the TIME_WAIT is ours, spread over source addresses.
        self.ep.unregister(s.fd)
        del self.conns[s.fd]
        s.sock.close()
        s.alive = False
        s.cycle += 1
        if sending:
            self.begin(s, now)

    def run(self, go: Go) -> None:
        self.window_start, self.window_end = go.window
        clock = time.perf_counter_ns
        sleep_until(go.t0)
        now = clock()
        for s in self.slots:
            self.begin(s, now)
        phases = Phases(self, go.window, self.plan.drain_s)
        chan_fd = self.chan.fileno()
        sweep = now + SWEEP_NS
        while phases.advance(now := clock()):
            if not phases.sending:
                self.retry.clear()
                if not self.conns:
                    break
            if self.retry and phases.sending:
                due = [item for item in self.retry if item[0] <= now]
                self.retry = [item for item in self.retry if item[0] > now]
                for _, s in due:
                    self.begin(s, now)
            if now >= sweep:
                sweep = now + SWEEP_NS
                for s in [s for s in self.conns.values() if not s.frame and s.deadline <= now]:
                    self.abandon(s, "ETIMEDOUT", now)
            timeout = min(phases.timeout(now), SWEEP_NS / 1e9)
            for fd, ev in self.ep.poll(timeout):
                s = self.conns.get(fd)
                if s is None:
                    if fd == chan_fd:
                        self.hear(phases)
                    continue
                t = clock()
                if not s.frame:
                    self.connected(s, t)
                else:
                    if ev & OUT:
                        self.flush(s)
                    if s.alive:
                        self.readable(s, t, phases.sending)
        for s in list(self.conns.values()):
            if s.frame and self.in_window(s):
                self.tally.lost += 1
            s.sock.close()

    def extra(self) -> dict:
        return {"connect": self.connects.tobytes(), "cycles": self.cycles}
