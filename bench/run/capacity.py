"""What fits on this box: the points a model cannot hold, refused before they run.

A C100K point asks a model for N connections.  Some cannot be had at all --
more descriptors than one process may open, more tasks than the kernel has
ids for, more memory than is free, select's descriptors past 1023, more
connections from one source address than it has ephemeral ports -- and some
are found in the run, when the model holds fewer than it was asked for (its
log says why) or the run does not end in time.  Either way the trial is
"stopped", with the reason, and is no failure of the run: it is where the
model breaks.  A model stopped at N is not tried past N in any scenario of the
same family (at N itself neither, when it ran out of time).

The box's limits are read when a point is judged, so that a machine with a
higher RLIMIT_NOFILE, more pids or more memory goes further by itself.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass

from muxbench import limits
from servers.models import MODELS

# Descriptors a process needs beside its connections (listener, pipes, epoll, logs).
SPARE_FDS = 64
# What one connection costs at most, for the memory check (server side, by approach);
# rough upper figures from docs/c100k.md, not measurements of this run.
PER_CONN_BYTES = {"processes": 1 << 20, "threads": 96 << 10}
PER_CONN_DEFAULT = 8 << 10
# Both ends' kernel sockets and the generator's own book-keeping, per connection.
PER_CONN_FIXED = 24 << 10
MEMORY_SHARE = 0.5  # of MemAvailable a point may plan to use
PID_SHARE = 0.9  # of the free task ids a point may plan to use
SELECT_LIMIT = 1024  # FD_SETSIZE
PORTS_SHARE = 0.9  # of a source's ephemeral ports a point may plan to use
# connect(2) searches for a free port, and the search slows as the range fills:
# 100,000 connections took 118 s over 4 sources (89 % of each one's ports) and
# 9.9 s over 8 (44 %) here.  The harness spreads them thinner still.
SOURCE_SHARE = 0.25
LAST_SOURCE = 250  # 127.0.0.2 ... 127.0.0.250


@dataclass(frozen=True)
class Box:
    nofile: int  # descriptors a process may raise its soft limit to
    pid_max: int
    threads_max: int
    tasks: int  # tasks (threads) alive now
    mem_available: int  # bytes
    ports: int  # ephemeral ports per source address and destination

    @classmethod
    def read(cls) -> Box:
        low, high = limits.port_range()
        return cls(nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
                   pid_max=limits.pid_max(), threads_max=limits.threads_max(),
                   tasks=limits.tasks_now(), mem_available=limits.mem_available(),
                   ports=high - low + 1)


def size(point: dict) -> int:
    """A point's N: its idle connections (sparse) or its clients."""
    return int(point.get("idle", point.get("clients", 0)))


def generator_procs(connections: int, box: Box, cpus: int) -> int:
    """Load-generator processes: one per CPU, more when one would pass its descriptors."""
    return max(cpus, math.ceil(connections / (box.nofile - SPARE_FDS)))


def sources(connections: int, box: Box) -> str | None:
    """`--source` for the generator: loopback addresses enough that each uses at most
    SOURCE_SHARE of its ephemeral ports (None: one address is enough)."""
    count = math.ceil(connections / (box.ports * SOURCE_SHARE))
    if count <= 1:
        return None
    if count > LAST_SOURCE - 1:
        raise ValueError(f"{connections:,} connections need {count} loopback sources")
    return f"127.0.0.2-127.0.0.{count + 1}"


def refusal(model: str, point: dict, connections: int, workers: int | None, box: Box,
            generator_sources: bool) -> str | None:
    """Why the point cannot run on `box`, or None.  `generator_sources`: the load
    generator can spread its connections over source addresses (--source)."""
    n = size(point)
    spec = MODELS.get(model)
    approach = spec.approach if spec else ""
    if model == "select" and n >= SELECT_LIMIT:
        return (f"refused by design: select(2) takes no descriptor >= {SELECT_LIMIT}, "
                f"and {n:,} connections need them")
    # A point at exactly the limit runs: it shows how many the model holds there.
    per_process = math.ceil(n / workers) if workers and approach == "worker processes" else n
    if approach != "processes" and per_process > box.nofile:
        return (f"descriptor limit {box.nofile:,} per process: {per_process:,} connections "
                f"in one process" + (f" ({workers} workers)" if workers else ""))
    if approach in ("processes", "threads"):
        free = box.pid_max - box.tasks
        if n > PID_SHARE * free or n > box.threads_max - box.tasks:
            return (f"pids: a task per connection needs {n:,}; pid_max {box.pid_max:,} with "
                    f"{box.tasks:,} tasks alive leaves {free:,}")
    need = connections * (PER_CONN_BYTES.get(approach, PER_CONN_DEFAULT) + PER_CONN_FIXED)
    if need > MEMORY_SHARE * box.mem_available:
        return (f"memory: about {need / (1 << 30):.1f} GiB for {connections:,} connections, "
                f"{box.mem_available / (1 << 30):.1f} GiB available")
    if not generator_sources and connections > PORTS_SHARE * box.ports:
        return (f"ports: {connections:,} connections from one source address to one port; "
                f"it has {box.ports:,} ephemeral ports (the load generator has no --source)")
    return None


@dataclass(frozen=True)
class Stop:
    at: int  # the N at which the model stopped
    why: str
    inclusive: bool  # N itself is not tried again either (it ran out of time)

    def text(self) -> str:
        return f"stopped at {self.at:,}: {self.why}"


class Limits:
    """Where each model stopped, per scenario family, as the run finds out."""

    def __init__(self) -> None:
        self.stops: dict[tuple[str, str], Stop] = {}

    def record(self, family: str, model: str, n: int, why: str, inclusive: bool) -> Stop:
        stop = Stop(n, why, inclusive)
        known = self.stops.get((family, model))
        if known is None or n < known.at or (n == known.at and inclusive):
            self.stops[(family, model)] = stop
        return stop

    def past(self, family: str, model: str, n: int) -> Stop | None:
        """Where the model stopped, when it is not to be tried at `n`."""
        stop = self.stops.get((family, model))
        if stop is None or n < stop.at or (n == stop.at and not stop.inclusive):
            return None
        return stop


def generator_has(option: str) -> bool:
    """Whether `muxbench load` takes `option` (an older generator lacks --source)."""
    import argparse

    from loadgen.cli import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    return any(option in action.option_strings for action in parser._actions)


# What a server's log says when it turns connections away, and what that means.
LOG_REASONS = (
    (("fd_setsize", "filedescriptor out of range"), "refused by design"),
    (("too many open files", "emfile", "out of file descriptors"), "descriptor limit"),
    (("--max-clients",), "its own limit (--max-clients)"),
    (("can't start new thread", "resource temporarily unavailable", "eagain"), "pids"),
    (("cannot allocate memory", "enomem"), "memory"),
)


def in_run_reason(trial: dict, server_log: str, box: Box) -> tuple[str, bool] | None:
    """(why, inclusive) when a finished trial shows its model stopped short of its
    point, else None: the generator ran out of time, or it held fewer than wanted."""
    load = trial.get("load") or {}
    if trial["status"] == "failed" and "did not finish within" in (trial.get("reason") or ""):
        return f"time-out: {trial['reason']}", True
    if not load:
        # The generator's own refusal before it connected (exit status 2, no results).
        said = trial.get("reason") or ""
        if "exited with status 2 and no results" in said:
            return f"load generator: {said.split(': ', 1)[-1]}", True
        return None
    connect = load.get("connect") or {}
    wanted = connect.get("wanted", load.get("clients"))
    held = connect.get("held", load.get("connected"))
    if wanted is None or held is None or held >= wanted:
        return None
    said = (connect.get("reason") or "") + " " + server_log
    kind = next((name for words, name in LOG_REASONS
                 if any(w in said.lower() for w in words)), None)
    if kind is None:
        kind = f"descriptor limit {box.nofile:,} per process" if held >= 0.99 * min(
            wanted, box.nofile) and wanted >= box.nofile else "connections turned away"
    # The server's last word, without its "muxbench serve[model]: " prefix and afterthoughts.
    last = server_log.split(" | ")[-1].split("]: ", 1)[-1].split("; ")[0] if server_log else ""
    detail = last or connect.get("reason") or ""
    return f"{kind}: held {held:,} of {wanted:,}" + (f" ({detail})" if detail else ""), False


# The load generator spreads its connections over processes and source addresses
# by itself when it has --source; an older one is given --procs and held to one
# address's ports.
GENERATOR_SPREADS = generator_has("--source")
