"""Worker processes: fork them, start them together, bound them in time, merge what they saw.

The parent does no network I/O.  It forks `procs` workers, each with a share
of the connections, waits until all have connected (or given up), then gives
them one common start time and measurement window.  It prints the window
markers at the moments the window opens and closes, relays the chat drain
barrier, and collects each worker's counters and raw samples.  Every worker
dies with the parent (PR_SET_PDEATHSIG) and is SIGKILLed and reaped in
`finally` -- after a hard time cap, an error or Ctrl-C alike.  Ctrl-C inside
the window (KeyboardInterrupt) first cuts the window short and still
collects the results.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from loadgen.connect import CONNECT_BATCH
from loadgen.integrity import Window
from loadgen.timer import sleep_until
from loadgen.worker import Go, Plan
from muxbench import markers
from muxbench.lifetime import die_with_parent
from muxbench.limits import memory_of

# Slack on top of connect time + warm-up + duration + drain before everything is killed.
GRACE_S = 5.0
# Time between a message to the workers and the instant it names (the start,
# or the end of a window cut short), so that every worker has it by then.
LEAD_NS = 30_000_000


@dataclass
class Config:
    workload: str
    host: str
    port: int
    clients: int
    size: int
    rate: float | None
    arrival: str
    depth: int
    duration: float
    warmup: float
    procs: int
    active: int
    connect_timeout: float
    drain: float
    seed: int
    cpus: list[int] | None
    start_at_ns: int | None = None  # time.time_ns() at which the window must open
    sources: list[str] = field(default_factory=list)  # local addresses, spread by cid
    connect_rate: float | None = None                 # connects per second, all workers
    nofile_limit: int | None = None                   # each worker's RLIMIT_NOFILE


@dataclass
class Outcome:
    """What the parent learned: per-worker results plus run-level facts."""

    results: list[dict]
    connected: int
    window: Window | None            # None when the run never started
    clock_offset: float               # time.time() - perf_counter at the start
    missing_workers: int              # workers that died or timed out without a result
    procs: int
    interrupted: bool = False         # Ctrl-C or SIGTERM cut the window short
    ready: list[dict] = field(default_factory=list)  # each worker's report once connected
    connect_s: float = 0.0            # from the first fork to the last worker ready
    parent_memory: tuple[int, int] = (0, 0)  # (PSS, USS) of the parent, then

    @property
    def duration_s(self) -> float:
        """Length of the measurement window as it was run (0 when it never opened)."""
        return 0.0 if self.window is None else (self.window.end - self.window.start) / 1e9


def _worker_class(workload: str) -> type:
    if workload == "chat":
        from loadgen.chat import ChatWorker
        return ChatWorker
    if workload == "churn":
        from loadgen.churn import ChurnWorker
        return ChurnWorker
    from loadgen.echo import EchoWorker
    return EchoWorker


def _plans(cfg: Config, family: int, host: str, procs: int) -> list[Plan]:
    sources = cfg.sources
    if not sources and cfg.workload == "churn" and family == socket.AF_INET and \
            host.startswith("127."):
        # Many source addresses: each has its own ~28k ephemeral ports, so
        # TIME_WAIT from a fast connect/close loop cannot exhaust them.
        sources = [f"127.0.0.{i}" for i in range(2, 255)]
    # Churn gives each worker addresses of its own; held connections take
    # theirs by connection id, so that every address carries an equal share.
    return [
        Plan(workload=cfg.workload, host=host, port=cfg.port, family=family,
             cids=list(range(i, cfg.clients, procs)), clients=cfg.clients, size=cfg.size,
             depth=cfg.depth, rate=cfg.rate, arrival=cfg.arrival, seed=cfg.seed,
             connect_timeout=cfg.connect_timeout, drain_s=cfg.drain,
             active=set(range(cfg.active)) if cfg.workload == "sparse" else set(),
             sources=(sources[i::procs] or sources) if cfg.workload == "churn" else sources,
             procs=procs, connect_rate=cfg.connect_rate)
        for i in range(procs)
    ]


def _child(index: int, plan: Plan, chan: Connection, cls: type, parent: int,
           cpus: list[int] | None) -> None:
    """Body of a forked worker; never returns."""
    code = 1
    try:
        # Forked by the parent's main thread, which lives as long as the parent.
        die_with_parent(signal.SIGKILL, parent)
        # The parent handles Ctrl-C and SIGTERM, sent to the whole group or
        # not: it cuts the window short, collects the results, then kills us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if cpus:
            os.sched_setaffinity(0, {cpus[index % len(cpus)]})
        # The hot loops make no reference cycles; a collector pass in the
        # middle of a round trip would only show up as latency that is ours.
        gc.disable()
        cls(plan, chan).main()
        code = 0
    except (EOFError, BrokenPipeError):
        pass  # the parent went away; nothing to report to
    except BaseException as exc:
        print(f"muxbench load: worker {index} failed: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
    finally:
        os._exit(code)


def _window_start(cfg: Config, t0: int, clock_offset: float) -> int:
    """When the window opens (perf_counter ns): after the warm-up, or at
    cfg.start_at_ns when given, so that generators on several hosts share one
    window -- never before the warm-up is over, so a host that connected too
    late opens late, and its recorded window says so."""
    start = t0 + int(cfg.warmup * 1e9)
    if cfg.start_at_ns is None:
        return start
    return max(start, cfg.start_at_ns - int(clock_offset * 1e9))


class Workers:
    """The forked workers and their channels; always reaped by close()."""

    def __init__(self, cfg: Config, plans: list[Plan]) -> None:
        self.pids: list[int] = []
        self.chans: list[Connection] = []
        cls = _worker_class(cfg.workload)
        parent = os.getpid()
        for index, plan in enumerate(plans):
            ours, theirs = socket.socketpair()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                ours.close()
                for chan in self.chans:
                    chan.close()
                _child(index, plan, Connection(theirs.detach()), cls, parent, cfg.cpus)
            theirs.close()
            self.pids.append(pid)
            self.chans.append(Connection(ours.detach()))
        self.live = set(range(len(plans)))

    def gather(self, kind: str, deadline: float) -> dict[int, object]:
        """One message of `kind` from every live worker, until the deadline."""
        got: dict[int, object] = {}
        waiting = {self.chans[i]: i for i in self.live}
        while waiting:
            ready = wait(list(waiting), max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for chan in ready:
                index = waiting.pop(chan)
                try:
                    message = chan.recv()
                except (EOFError, OSError):
                    self.live.discard(index)
                    continue
                if message[0] == kind:
                    got[index] = message[1:]
        for index in waiting.values():  # silent past the deadline: given up on
            self.live.discard(index)
        return got

    def send(self, message: tuple) -> None:
        for index in list(self.live):
            try:
                self.chans[index].send(message)
            except OSError:
                self.live.discard(index)

    def close(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for chan in self.chans:
            chan.close()


def run(cfg: Config, family: int, host: str, marker: Callable[[str], None]) -> Outcome:
    """Run the workload; `marker` is called with markers.WARMUP_START once every
    connection is up and the load begins, then WINDOW_START and WINDOW_END on time."""
    procs = max(1, min(cfg.procs, cfg.clients))
    plans = _plans(cfg, family, host, procs)
    per_worker = -(-cfg.clients // procs)
    # Each connection may be retried; a paced start takes clients / rate on its own.
    connect_budget = (cfg.connect_timeout * -(-per_worker // CONNECT_BATCH) * 2
                      + (cfg.clients / cfg.connect_rate if cfg.connect_rate else 0.0))
    started = time.monotonic()
    held = max(0, (cfg.start_at_ns or 0) - time.time_ns()) / 1e9  # --start-at's wait
    hard_cap = (started + connect_budget + cfg.warmup + held + cfg.duration + cfg.drain
                + GRACE_S)
    clock_offset = time.time() - time.perf_counter_ns() / 1e9
    workers = Workers(cfg, plans)
    try:
        ready = workers.gather("ready", started + connect_budget + GRACE_S)
        reports = [r[0] for _, r in sorted(ready.items())]
        connect_s = time.monotonic() - started
        parent_memory = memory_of()
        connected = sum(r["held"] for r in reports)
        window, interrupted = None, False
        if connected or cfg.workload == "churn":
            t0 = time.perf_counter_ns() + LEAD_NS
            start = _window_start(cfg, t0, clock_offset)
            window = Window(start, start + int(cfg.duration * 1e9))
            workers.send(("go", Go(t0, window)))
            marker(markers.WARMUP_START)
            sleep_until(window.start)
            marker(markers.WINDOW_START)
            try:
                sleep_until(window.end)
            except KeyboardInterrupt:
                # Ctrl-C or SIGTERM inside the window: close it early, in
                # every worker at the same instant, and report what it saw.
                # A second one (during the drain, say) abandons the run.
                end = time.perf_counter_ns() + LEAD_NS
                if end < window.end:
                    workers.send(("cut", end))
                    window, interrupted = Window(window.start, end), True
                sleep_until(window.end)
            marker(markers.WINDOW_END)
            if cfg.workload == "chat":
                sent = workers.gather("sent", hard_cap)
                workers.send(("total", sum(s[0] for s in sent.values())))
        else:
            workers.send(("stop",))
        results = workers.gather("result", hard_cap)
        return Outcome([r[0] for _, r in sorted(results.items())], connected, window,
                       clock_offset, procs - len(results), procs, interrupted,
                       reports, connect_s, parent_memory)
    finally:
        workers.close()
