"""What every worker process shares: its plan, its epoll, connecting, errors, CPU.

A worker is a forked child that owns a share of the connections and runs one
epoll loop over them.  It talks to the parent over a socketpair in three
steps: it reports `ready` once its connections are up, waits for `go` (the
common start time and measurement window, as CLOCK_MONOTONIC nanoseconds,
which every process on the machine shares), then returns its `result`.  On
Ctrl-C or SIGTERM the parent sends `cut`, a nearer end of the window: the
worker stops sending there, drains as usual and reports what the shorter
window saw.
"""

from __future__ import annotations

import select
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from loadgen.connect import Connector, error_kind
from loadgen.integrity import Tally, Window
from loadgen.record import new_samples
from muxbench.limits import memory_of

IN = select.EPOLLIN | select.EPOLLRDHUP
OUT = select.EPOLLOUT


@dataclass
class Plan:
    """Everything one worker needs to know before the run starts."""

    workload: str
    host: str
    port: int
    family: int
    cids: list[int]               # global ids of this worker's connections
    clients: int                  # connections over all workers
    size: int
    depth: int
    rate: float | None            # total msgs/s over all connections
    arrival: str
    seed: int
    connect_timeout: float
    drain_s: float
    active: set[int] = field(default_factory=set)   # sparse: cids that ping-pong
    sources: list[str] = field(default_factory=list)  # local addresses to bind, by cid
    procs: int = 1                # workers sharing the connect rate
    connect_rate: float | None = None  # connects per second over all workers


@dataclass
class Go:
    """The parent's start signal: common start and measurement window (ns)."""

    t0: int
    window: Window


class Phases:
    """The marks a worker's loop passes: window start, window end, end of the drain.

    `advance(now)` is called on every loop iteration (one comparison, cheap);
    it snapshots the worker's CPU time as the window opens and closes, stops
    new sends at the window's end, and returns False once the drain is over.
    `inside` says whether the loop has passed the window's start and not yet
    its end: the closed loop counts what it sends meanwhile, so its messages
    and its CPU time are those of one and the same span.
    """

    __slots__ = ("drain_ns", "inside", "marks", "next", "sending", "worker")

    def __init__(self, worker: Worker, window: Window, drain_s: float) -> None:
        self.worker = worker
        self.drain_ns = int(drain_s * 1e9)
        self.marks = deque([window.start, window.end, window.end + self.drain_ns])
        self.next = window.start
        self.sending = True
        self.inside = False

    def advance(self, now: int) -> bool:
        if now < self.next:
            return True
        self.marks.popleft()
        if not self.marks:
            return False
        self.worker.cpu_mark()
        self.inside = len(self.marks) == 2
        if len(self.marks) == 1:
            self.sending = False
            self.worker.stop_sending()
        self.next = self.marks[0]
        return True

    def cut(self, end: int) -> None:
        """Ctrl-C or SIGTERM: close the window at `end` (ns) if it is still open then.

        Never earlier than now: every message stamped so far was counted
        against the window as it stood, so the new end must still hold them
        all -- sent, received and lost keep adding up.  The drain that follows
        is as long as it would have been.
        """
        if len(self.marks) < 2:
            return  # the window has closed already
        end = max(end, time.perf_counter_ns())
        if end >= self.marks[-2]:
            return
        self.marks[-2], self.marks[-1] = end, end + self.drain_ns
        self.next = self.marks[0]
        self.worker.window_end = end

    def timeout(self, now: int) -> float:
        """Seconds until the next mark, for epoll."""
        return max(0.0, (self.next - now) / 1e9)


class Worker:
    """Base of the workload loops: subclasses implement `run(go)`."""

    needs_connections = True

    def __init__(self, plan: Plan, chan: Connection) -> None:
        self.plan = plan
        self.chan = chan
        self.address = (plan.host, plan.port)
        self.ep = select.epoll()
        self.errors: Counter[str] = Counter()
        self.tally = Tally()
        self.latency = new_samples()
        self.service = new_samples()
        # The measurement window (ns), set by run(); until then empty, so that
        # nothing sent while preparing (chat's join lines) falls inside it.
        self.window_start = self.window_end = 0
        self.cpu_window_ns = 0
        self._cpu_mark = 0
        self.connect_stats = {"retries": 0, "failed": 0}

    # -- connecting ---------------------------------------------------------
    def open_connections(self) -> dict[int, socket.socket]:
        """Connect this worker's share (loadgen/connect.py); cid -> socket."""
        connector = Connector(self.plan, self.ep, self.errors)
        socks = connector.run()
        self.connect_stats = {"retries": connector.retries, "failed": connector.failed}
        return socks

    # -- the window -----------------------------------------------------------
    def cpu_mark(self) -> None:
        """Called when the window opens and when it closes: CPU used inside it."""
        now = time.process_time_ns()
        if self._cpu_mark:
            self.cpu_window_ns = now - self._cpu_mark
        self._cpu_mark = now

    def fail(self, kind: BaseException | str | int) -> None:
        self.errors[error_kind(kind)] += 1

    # -- connections in the loop ------------------------------------------------
    # A connection object has .sock, .fd, .out (bytes not yet taken by the
    # kernel) and .alive; self.conns maps fd -> connection for the live ones.
    def write(self, c, data: bytes) -> None:
        if c.out:
            c.out += data
            return
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.drop(c, exc)
            return
        if n < len(data):
            c.out = data[n:]
            self.ep.modify(c.fd, IN | OUT)

    def flush(self, c) -> None:
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.drop(c, exc)
            return
        c.out = c.out[n:]
        if not c.out:
            self.ep.modify(c.fd, IN)

    def drop(self, c, why: BaseException | str | int) -> None:
        """The connection failed: count why, stop watching it, close it."""
        if c.alive:
            c.alive = False
            self.fail(why)
            self.ep.unregister(c.fd)
            del self.conns[c.fd]
            c.sock.close()

    # -- lifecycle ------------------------------------------------------------
    def main(self) -> None:
        socks = self.prepare(self.open_connections()) if self.needs_connections else {}
        held = len(socks)
        self.adopt(socks)
        del socks  # what adopt() kept is all a connection costs from here on
        pss, uss = memory_of()
        self.chan.send(("ready", {"held": held, **self.connect_stats,
                                  "pss_bytes": pss, "uss_bytes": uss}))
        message = self.chan.recv()
        if message[0] == "go":
            # The parent speaks during the run only to cut the window short
            # (Ctrl-C) or, in chat, to say how many lines the drain awaits.
            self.ep.register(self.chan.fileno(), IN)
            self.run(message[1])
        # Told to stop: exiting closes the connections.
        self.chan.send(("result", self.result()))

    def prepare(self, socks: dict[int, socket.socket]) -> dict[int, socket.socket]:
        """Anything to do with the connections before reporting ready."""
        return socks

    def hear(self, phases: Phases) -> None:
        """The parent's channel is readable in the middle of the run."""
        kind, value = self.chan.recv()
        if kind == "cut":
            phases.cut(value)
        else:
            self.told(kind, value)

    def told(self, kind: str, value: object) -> None:
        """A workload-specific message from the parent."""
        raise ValueError(f"unexpected message from the parent: {kind!r}")

    def stop_sending(self) -> None:
        """The window closed: no new messages from here on (the drain begins)."""

    def adopt(self, socks: dict[int, socket.socket]) -> None:
        """Take over the connected sockets (subclasses register them)."""
        raise NotImplementedError

    def run(self, go: Go) -> None:
        raise NotImplementedError

    def extra(self) -> dict:
        """Workload-specific result fields."""
        return {}

    def result(self) -> dict:
        return {
            "tally": self.tally.as_dict(),
            "errors": dict(self.errors),
            "latency": self.latency.tobytes(),
            "service": self.service.tobytes(),
            "cpu_ns": self.cpu_window_ns,
            **self.extra(),
        }
