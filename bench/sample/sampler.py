"""Resource sampling of a server's whole process tree, from the orchestrator.

Nothing runs inside the measured processes: a thread here reads /proc a few
times a second (memory, threads, fds; less often for a big tree, so that the
reading takes at most MAX_SHARE of a CPU, the load generator's) and `mark()`
takes exact CPU and context-switch snapshots at the moments the load generator
opens and closes its measurement window, so CPU is a difference of two
cumulative counters, not an integral of samples.

Memory is read neither at the window's opening nor at its close: at the
opening a big tree's reading would take the generator's CPU just as its
schedule begins, and at the close the generator is already closing its
connections, so a reading races the server's teardown.  The memory of a window
is instead that of the ticks that lie wholly between the moment the load began
(`wake()` asks for one then, during the warm-up) and the window's end; inside
the window only cheap ticks run (`hold_costly_ticks()`).  What each of these
cost before it was so: docs/method.md.

CPU of a tree: with a cgroup (bench/sample/cgroup.py) the kernel's counter for the
group.  Otherwise psutil: the sum over the live processes of the tree of their
own user+system time plus `children_*` -- the time of children they waited
for.  A child that exited and was reaped is then counted exactly once, in its
parent's `children_*`; a live one once, by itself; so a fork-per-client server
is charged for every child, gone or not.

Context switches: the kernel keeps them per thread.  Its taskstats interface
(bench/sample/taskstats.py) sums them over a process's threads, exited ones too, in
one request; without it they are read from /proc per task, since /proc's
per-process line shows only the main thread's.  A reaped process's count is
not inherited by anyone, so the last value seen of every task is kept.
Memory is summed over the tree: RSS (which counts shared pages once per
process, so a forking server looks huge), USS and PSS (shared pages split
between sharers: the honest "memory of the tree").  PSS of anonymous pages
alone is kept too, for memory per connection: file pages (libpython, the C
extensions) are shared with every other Python process on the machine, so
their share of PSS moves by a MiB as the load generator or the previous trial
comes and goes, while anonymous pages -- heap, stacks, pages a forked child
copied on write -- are shared only within the tree, and are what a
connection adds.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from bench.sample import procfs, taskstats
from bench.sample.cgroup import CpuCgroup

# At most this share of a CPU goes to the periodic ticks.
MAX_SHARE = 0.1
# CPU seconds a tick may cost inside the measurement window (see hold_costly_ticks()).
WINDOW_TICK_MAX = 0.02


@dataclass
class Mark:
    t: float  # time.monotonic()
    cpu: float  # total seconds
    user: float  # user and system: only their ratio is used to split `cpu`
    system: float
    ctx_voluntary: int
    ctx_involuntary: int


@dataclass
class MemorySample:
    t: float  # time.monotonic() when the reading was done
    rss: int
    uss: int
    pss: int
    pss_anon: int | None  # None where the kernel does not split PSS (before 5.10)
    threads: int
    fds: int
    procs: int
    began: float  # ... and when it began: a sample counts for a span it lies within


@dataclass
class TreeSampler:
    pid: int
    interval: float = 0.2
    cgroup: CpuCgroup | None = None
    samples: list[MemorySample] = field(default_factory=list)
    marks: dict[str, Mark] = field(default_factory=dict)
    # Context switches per process from the kernel in one request; None: per
    # task from /proc, a file a thread.
    kernel: taskstats.Taskstats | None = field(default_factory=taskstats.shared)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._restart = threading.Event()  # wake(): drop the tick in progress
        self._holding = threading.Event()  # hold_costly_ticks(): the window is open
        self.tick_cost = 0.0  # CPU seconds of the last whole tick
        self._thread: threading.Thread | None = None
        self._ctx_seen: dict[tuple[int, int], tuple[int, int]] = {}
        # The sampler's own CPU, spent on the load generator's CPUs: reported so
        # that its intrusion is a number, not a guess.
        self.cost = 0.0

    @property
    def cpu_source(self) -> str:
        return "cgroup" if self.cgroup else "psutil"

    # -- reading the tree -------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """The tree: the cgroup's members when there is one (a daemonised
        grandchild cannot escape it), else the server and its descendants."""
        if self.cgroup:
            return [proc for pid in self.cgroup.procs() if (proc := _process(pid))]
        root = _process(self.pid)
        if root is None:
            return []
        try:
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return [root]

    def pids(self) -> list[int]:
        """The tree's process ids, without a psutil object each: the window's
        marks read them, where building an object per process would cost the
        load generator's CPU time."""
        return self.cgroup.procs() if self.cgroup else [proc.pid for proc in self.processes()]

    def tasks(self) -> int:
        """Threads of every process of the tree, now: one read of the cgroup's
        list where there is one, not a memory reading, which may be missing."""
        if self.cgroup:
            return self.cgroup.threads()
        return sum(len(procfs.tasks(pid)) for pid in self.pids())

    def cpu(self) -> tuple[float, float, float]:
        """Cumulative (total, user, system) seconds of the tree, reaped children included."""
        if self.cgroup:
            return self.cgroup.cpu()
        user = system = 0.0
        for proc in self.processes():
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue  # exited between listing and reading: its parent will count it
            user += t.user + t.children_user
            system += t.system + t.children_system
        return user + system, user, system

    def ctx(self) -> tuple[int, int]:
        """Cumulative (voluntary, involuntary) switches of every task seen so far."""
        for pid in self.pids():
            if self.kernel is not None:
                counts = self.kernel.ctx_switches(pid)  # its exited threads included
                if counts is not None:
                    self._ctx_seen[(pid, 0)] = counts
                continue
            for task in procfs.tasks(pid):
                counts = procfs.ctx_switches(pid, task)
                if counts is not None:
                    self._ctx_seen[(pid, task)] = counts
        return (sum(v for v, _ in self._ctx_seen.values()),
                sum(i for _, i in self._ctx_seen.values()))

    def sample(self, t: float | None = None,
               abandon: Callable[[], bool] | None = None) -> MemorySample | None:
        """Read the tree's memory (stamped `t`, default now); None, and
        nothing kept, if `abandon()` turns true on the way."""
        began = time.monotonic() if t is None else t
        memory: dict[str, int | None] = dict.fromkeys(procfs.ROLLUP, 0)
        threads = fds = procs = 0
        for proc in self.processes():
            if abandon is not None and abandon():
                return None
            mem = procfs.rollup(proc.pid)
            if mem is None:
                continue  # exited meanwhile
            try:
                with proc.oneshot():
                    proc_threads, proc_fds = proc.num_threads(), proc.num_fds()
            except psutil.Error:
                continue
            threads += proc_threads
            fds += proc_fds
            for key, value in mem.items():
                total = memory[key]
                memory[key] = None if total is None or value is None else total + value
            procs += 1
        one = MemorySample(time.monotonic() if t is None else t, **memory,
                           threads=threads, fds=fds, procs=procs, began=began)
        if procs:
            self.samples.append(one)
        return one

    # -- driving ----------------------------------------------------------
    def mark(self, name: str, memory: bool = True) -> Mark:
        """Snapshot CPU and context switches now (then, if `memory`, a memory
        sample stamped with the mark's time)."""
        spent = time.thread_time()
        t = time.monotonic()
        total, user, system = self.cpu()  # first and unlocked: a tick must not delay it
        with self._lock:
            vol, invol = self.ctx()
            self.marks[name] = Mark(t, total, user, system, vol, invol)
            if memory:
                self.sample(t)
            self.cost += time.thread_time() - spent
            return self.marks[name]

    def tick(self) -> bool:
        """Context switches and a memory sample; False if the sample was abandoned."""
        spent = time.thread_time()
        with self._lock:
            self.ctx()
            done = self.sample(abandon=self._abandoning) is not None
            self.cost += time.thread_time() - spent
            return done

    def _abandoning(self) -> bool:
        return self._stop.is_set() or self._restart.is_set() or self._held()

    def _held(self) -> bool:
        """Ticks are held and cost more than a window allows: none may run now."""
        return self._holding.is_set() and self.tick_cost > WINDOW_TICK_MAX

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Tick now, on the sampler's thread, not the caller's; a tick in
        progress is dropped, having begun too early to count."""
        self._restart.set()
        self._wake.set()

    def hold_costly_ticks(self, on: bool) -> None:
        """While on, ticks that cost more than WINDOW_TICK_MAX wait, and one
        in progress is dropped -- wake()'s too, if it has not finished by
        then: the window then has no memory figures rather than a starved
        generator, whose CPU the sampler shares.  A small tree's ticks go on,
        and the window still gets its memory readings."""
        if on:
            self._holding.set()
        else:
            self._holding.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        wait = self.interval
        while True:
            self._wake.wait(wait)
            if self._stop.is_set():
                return
            self._wake.clear()
            self._restart.clear()
            if self._held():
                wait = self.interval
                continue
            spent = self.cost
            if not self.tick():
                wait = 0.0 if self._restart.is_set() else self.interval
                continue
            # The sampler runs on the load generator's CPUs, and a big tree's
            # tick would starve the generator: space the ticks so that they
            # take at most MAX_SHARE of a CPU.
            self.tick_cost = self.cost - spent
            wait = max(self.interval, self.tick_cost * (1 - MAX_SHARE) / MAX_SHARE)

    # -- results ----------------------------------------------------------
    def stats(self, start: str = "start", end: str = "end", baseline: str | None = None,
              memory_from: float | None = None) -> dict:
        """The contract's "server" object for the window between two marks; its
        memory from the samples that lie between `memory_from` (default: the
        start) and the end -- none there, no memory figures."""
        a, b = self.marks[start], self.marks[end]
        wall = b.t - a.t
        cpu, user, system = b.cpu - a.cpu, b.user - a.user, b.system - a.system
        share = user / (user + system) if user + system > 0 else 1.0
        since = a.t if memory_from is None else memory_from
        window = [s for s in self.samples if since <= s.began and s.t <= b.t]
        out = {
            "cpu_user_s": cpu * share, "cpu_system_s": cpu * (1 - share), "cpu_s": cpu,
            "cpu_source": self.cpu_source, "wall_s": wall,
            "cpu_util": cpu / wall if wall > 0 else None,
            "ctx_voluntary": b.ctx_voluntary - a.ctx_voluntary,
            "ctx_involuntary": b.ctx_involuntary - a.ctx_involuntary,
            "samples": len(window), "sampler_cpu_s": self.cost,
        }
        out.update(_memory_stats(window))
        if baseline is not None:
            before = [s for s in self.samples if s.t <= self.marks[baseline].t]
            out["pss_baseline_bytes"] = before[-1].pss if before else None
            out["pss_anon_baseline_bytes"] = before[-1].pss_anon if before else None
        return out


def _memory_stats(window: list[MemorySample]) -> dict:
    if not window:
        keys = ("rss_peak_bytes", "rss_mean_bytes", "uss_peak_bytes", "pss_peak_bytes",
                "pss_mean_bytes", "pss_anon_mean_bytes", "threads_peak", "fds_peak",
                "procs_peak")
        return dict.fromkeys(keys)
    return {
        "rss_peak_bytes": max(s.rss for s in window),
        "rss_mean_bytes": statistics.fmean(s.rss for s in window),
        "uss_peak_bytes": max(s.uss for s in window),
        "pss_peak_bytes": max(s.pss for s in window),
        "pss_mean_bytes": statistics.fmean(s.pss for s in window),
        "pss_anon_mean_bytes": (None if any(s.pss_anon is None for s in window)
                                else statistics.fmean(s.pss_anon for s in window)),
        "threads_peak": max(s.threads for s in window),
        "fds_peak": max(s.fds for s in window),
        "procs_peak": max(s.procs for s in window),
    }


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None
