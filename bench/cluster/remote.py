"""What runs ON a cluster's workers: the server and its sampler, a generator's share, clean-up.

These functions are shipped to workers with `client.submit(..., workers=[...])`
and run in the worker's process, so what they start lives there: the server in
its own process group, pinned and sampled exactly as a local trial's
(bench/run/launch.py and bench/sample/, reused as they are), and `muxbench load`
for the host's share of the clients.  A worker keeps its trial's server between
the calls in `_SERVED`, by trial key.  Every process is started through
muxbench.procs, so it dies with the worker, and `cleanup()` (which the
orchestrator runs on every worker after Ctrl-C, a lost host or an error) kills
whatever is still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field

from bench.cluster.engine import CPUS_ENV
from bench.run.launch import Launched, TrialSpec
from bench.sample.environment import Placement, placement
from bench.sample.sampler import TreeSampler
from bench.sample.syscalls import SyscallCounter
from muxbench import ROOT, markers, procs

_SERVED: dict[str, _Served] = {}
_LOCK = threading.Lock()


@dataclass
class _Served:
    launched: Launched
    where: Placement
    sampler: TreeSampler | None = None
    syscalls: SyscallCounter | None = None  # when the scenario counts them
    window: threading.Thread | None = None
    held: threading.Event = field(default_factory=threading.Event)
    fds: dict[int, tuple[int, int]] = field(default_factory=dict)  # fd: (dev, inode)
    warm_at: float | None = None  # time.monotonic() when every generator was warming up


def _pin_worker(cpus: list[int]) -> None:
    """Move every thread of this worker (its heartbeats, the sampler) onto `cpus`,
    off the server's; threads started later inherit it from their creator."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), cpus)


def _own_cpus() -> None:
    """A local cluster's generator worker keeps to the CPUs it was given."""
    given = os.environ.get(CPUS_ENV)
    if given:
        _pin_worker([int(cpu) for cpu in given.split(",")])


def server_placement() -> dict:
    """Where this host would place a trial's server, and its other work."""
    _own_cpus()
    return placement(None).as_dict()


def start_server(key: str, spec: TrialSpec, use_cgroup: bool) -> dict:
    """Start the trial's server here and wait until it listens: {"port"} or {"failure"}."""
    _own_cpus()
    where = placement(None)
    if where.pinned:
        _pin_worker(where.client_cpus)
    launched = Launched.start(spec, where, use_cgroup)
    with _LOCK:
        _SERVED[key] = served = _Served(launched, where)
    if launched.proc is not None and launched.proc.stdout is not None:
        fd = launched.proc.stdout.fileno()
        served.fds[fd] = procs.identity(fd)
    port, why = launched.wait_ready(spec.ready_timeout)
    if port is None:
        return {"port": None, "failure": f"server did not start: {why}",
                "placement": where.as_dict()}
    served.sampler = TreeSampler(launched.proc.pid, spec.sample_interval, launched.cgroup)
    served.sampler.mark("ready")
    served.sampler.start()
    served.sampler.mark("load_start")
    if spec.count_syscalls:  # attached to the whole tree once it listens, as locally
        served.syscalls = SyscallCounter(procs.group_members(launched.proc.pid))
    return {"port": port, "failure": None, "placement": where.as_dict(),
            "pid": launched.proc.pid}


def arm_window(key: str, start_ns: int, end_ns: int, warmup_s: float) -> None:
    """Snapshot the server's CPU at the common window's edges (this host's clock),
    from a thread, so that the call returns at once; and, as a local trial does
    when the load begins, a memory reading once every generator is warming up
    (by `warmup_s` before the window at the latest), from which the memory
    figures are taken."""
    served = _SERVED[key]
    warm_ns = start_ns - int(warmup_s * 1e9)

    def marks() -> None:
        for name, at in (("warmup", warm_ns), ("start", start_ns), ("end", end_ns)):
            if served.held.wait(max(0.0, (at - time.time_ns()) / 1e9)):
                return  # the trial was stopped before its window closed
            if name == "warmup":
                served.warm_at = time.monotonic()
                served.sampler.wake()
                continue
            if name == "start":
                served.sampler.hold_costly_ticks(True)
                served.sampler.mark(name, memory=False)
                if served.syscalls is not None:
                    served.syscalls.enable()
            else:
                if served.syscalls is not None:
                    served.syscalls.disable()
                served.sampler.mark(name, memory=False)
                served.sampler.hold_costly_ticks(False)

    served.window = threading.Thread(target=marks, name=f"window-{key}", daemon=True)
    served.window.start()


def finish_server(key: str) -> dict:
    """The server's figures over the window, its state, and its stop."""
    with _LOCK:
        served = _SERVED.pop(key, None)
    if served is None:
        return {"stats": None, "exit_status": None, "log": "", "cleanup": None,
                "uncounted": None}
    launched, sampler = served.launched, served.sampler
    stats = None
    if served.window is not None:
        served.window.join(60)
    if sampler is not None:
        sampler.mark("load_end")
        sampler.stop()
        edges = ("start", "end") if {"start", "end"} <= sampler.marks.keys() else (
            "load_start", "load_end")
        memory_from = served.warm_at if edges[0] == "start" else None
        stats = sampler.stats(*edges, baseline="ready", memory_from=memory_from)
        stats["window"] = "loadgen" if edges[0] == "start" else "process"
        stats["cpus"] = served.where.server_cpus
    uncounted = None
    if served.syscalls is not None:
        count, uncounted = served.syscalls.close()
        if stats is not None:
            stats["syscalls"] = count
    status = launched.proc.poll() if launched.proc is not None else None
    log = procs.tail(launched.stderr_path)
    cleanup = launched.dispose()
    # Still open = the same number naming the same file, as a local trial checks.
    cleanup["leftover_fds"] = sum(procs.identity(fd) == ident for fd, ident in served.fds.items())
    return {"stats": stats, "exit_status": status, "log": log, "cleanup": cleanup,
            "uncounted": uncounted}


def run_generator(key: str, spec: TrialSpec, port: int, start_at_ns: int,
                  timeout: float) -> dict:
    """This host's share (spec.load_args) as `muxbench load --json --start-at`:
    {"load": its JSON or None, "exit_status", "stderr": its last lines}."""
    _own_cpus()
    cpus = sorted(os.sched_getaffinity(0))
    here = Placement(False, [], cpus, "a generator host: every CPU of its worker")
    argv = [*spec.load_argv(port, here), "--start-at", str(start_at_ns)]
    try:
        done = procs.run(argv, timeout=timeout, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"load": None, "exit_status": None, "cpus": cpus,
                "stderr": f"load generator did not finish within {timeout:.0f} s"}
    try:
        load = json.loads(done.stdout) if done.stdout.strip() else None
    except ValueError:
        load = None
    marks = {markers.WARMUP_START, markers.WINDOW_START, markers.WINDOW_END}
    lines = [line for line in done.stderr.splitlines() if line.strip() not in marks]
    return {"load": load, "exit_status": done.returncode, "stderr": " | ".join(lines[-3:]),
            "cpus": cpus}


def cleanup() -> int:
    """Kill everything this worker started (servers, generators); how many servers
    were still held.  Safe to run any number of times."""
    with _LOCK:
        left = list(_SERVED.items())
        _SERVED.clear()
    for _, served in left:
        served.held.set()
        if served.syscalls is not None:
            served.syscalls.close()
        served.launched.kill()
        with contextlib.suppress(OSError):
            served.launched.dispose()
    procs.kill_all()
    return len(left)
