"""One trial: wait for the server, drive it, sample it, stop it, say what happened.

A trial runs in two halves so that the suite can overlap the dead time of
consecutive trials without ever overlapping what they measure: `begin()` waits
for the server to be ready and starts the sampler and the load generator (it
may run in a helper thread, while the previous trial drains and stops);
`finish()` waits for the generator, computes the figures and stops everything.
The load generator reports on stderr when its load begins (the warm-up, every
connection up), which is when the sampler reads the server's memory, and when
its window opens and closes, which is when the sampler snapshots the server's
CPU.

Whatever goes wrong is recorded as the trial's status and reason, never
raised: a suite goes on after a failed trial.  Only KeyboardInterrupt passes
through, after every process of the trial is dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from bench.results import utc_now
from bench.run.capacity import Box, Stop, in_run_reason, size
from bench.run.launch import Launched, TrialSpec
from bench.run.outcome import classify, figures, generator_bound
from bench.sample import procfs, sockstat
from bench.sample.environment import Placement
from bench.sample.sampler import TreeSampler
from bench.sample.syscalls import SyscallCounter
from muxbench import ROOT, markers, procs

# An invalid trial names the other work on the generator's CPUs past this
# share of them (its resolution is two clock ticks, 20 ms).
OTHERS_NOTED = 0.1


class Trial:
    def __init__(self, spec: TrialSpec, where: Placement, server: Launched,
                 on_window_end: Callable[[], None] | None = None) -> None:
        self.spec, self.where, self.server = spec, where, server
        self.on_window_end = on_window_end
        self.t0 = time.monotonic()
        self.started_at = utc_now()
        self.failure: str | None = None
        self.sampler: TreeSampler | None = None
        self.syscalls: SyscallCounter | None = None
        self.load_proc: subprocess.Popen | None = None
        self.output = ""  # the generator's stdout: one JSON object
        self.readers: list[threading.Thread] = []
        self.lines: list[str] = []
        self.warmup_at: float | None = None  # time.monotonic() of markers.WARMUP_START
        # At the window's edges: the time, the generator's CPUs' idle and
        # stolen seconds, and the orchestrator's own CPU seconds (it runs there too).
        self.client_marks: dict[str, tuple[float, float, float, float]] = {}
        self.rusage = None
        self.sockstat: dict[str, dict | None] = {}  # C100K points: before and in the window
        self.own_fds: dict[int, tuple[int, int]] = {}  # every fd it opens: (dev, inode)
        if server.proc is not None and server.proc.stdout is not None:
            self._remember(server.proc.stdout.fileno())

    def _remember(self, fd: int) -> None:
        self.own_fds[fd] = procs.identity(fd)

    # -- first half ---------------------------------------------------------
    def begin(self) -> None:
        try:
            self._begin()
        except Exception as exc:  # a helper thread must not die silently
            self.failure = f"harness error while starting the trial: {exc}"

    def _begin(self) -> None:
        port, why = self.server.wait_ready(self.spec.ready_timeout)
        if port is None:
            self.failure = f"server did not start: {why}"
            return
        self.sampler = TreeSampler(self.server.proc.pid, self.spec.sample_interval,
                                   self.server.cgroup)
        self.sampler.mark("ready")
        self.sampler.start()
        if self.spec.count_syscalls:
            # Every process of the tree by now (prefork's workers); later ones inherit.
            self.syscalls = SyscallCounter(procs.group_members(self.server.proc.pid))
        if self.spec.family:
            self.sockstat["before"] = sockstat.read()
        self.sampler.mark("load_start")
        # Pipes, not a temporary file: a pipe's inode is never reused soon, which is what
        # makes the leftover-descriptor check below exact.
        self.load_proc = procs.spawn(self.spec.load_argv(port, self.where),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        for stream, target in ((self.load_proc.stdout, self._slurp),
                               (self.load_proc.stderr, self._watch)):
            self._remember(stream.fileno())
            self.readers.append(threading.Thread(target=target, daemon=True))
            self.readers[-1].start()

    # A generator that runs out of time is killed and its pipes closed while these
    # readers may still be in a read: that ends the read (ValueError, or OSError for
    # the descriptor), and what was read before it is kept.
    def _slurp(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.output = self.load_proc.stdout.read()

    def _watch(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._watch_lines()

    def _watch_lines(self) -> None:
        for raw in self.load_proc.stderr:
            line = raw.strip()
            if line == markers.WARMUP_START:
                self.warmup_at = time.monotonic()
                self.sampler.wake()
            elif line == markers.WINDOW_START:
                self.sampler.hold_costly_ticks(True)  # first: a costly tick must stop now
                self._mark_client_cpus("start")
                self.sampler.mark("start", memory=False)
                if self.syscalls is not None:
                    self.syscalls.enable()
                if self.spec.family:
                    self.sockstat["window"] = sockstat.read()
            elif line == markers.WINDOW_END:
                if self.syscalls is not None:
                    self.syscalls.disable()
                self._mark_client_cpus("end")
                self.sampler.mark("end", memory=False)
                self.sampler.hold_costly_ticks(False)
                if self.on_window_end is not None:
                    self.on_window_end()
            elif line:
                self.lines.append(line)

    # -- second half --------------------------------------------------------
    def finish(self, previous_done: float | None = None) -> dict:
        """Wait for the load generator, judge, stop everything; the trial's record.

        `previous_done` is when the previous trial had stopped its server: a
        window that opened before it is flagged, never silently kept."""
        trial = blank_record(self.spec, "failed", self.failure, self.started_at)
        try:
            if self.failure is None:
                self._measure(trial, previous_done)
        finally:
            self._stop(trial)
        return trial

    def _measure(self, trial: dict, previous_done: float | None) -> None:
        timed_out = not self._wait_load(self.spec.load_timeout())
        if timed_out:
            procs.kill_group(self.load_proc)
        self._join_readers()
        self.sampler.mark("load_end")
        self.sampler.stop()
        try:
            load = json.loads(self.output) if self.output.strip() else None
        except ValueError:
            load = None
        marks = self.sampler.marks
        window = ("start", "end") if {"start", "end"} <= marks.keys() else ("load_start",
                                                                             "load_end")
        memory_from = self.warmup_at if window[0] == "start" else None
        stats = self.sampler.stats(*window, baseline="ready", memory_from=memory_from)
        stats["window"] = "loadgen" if window[0] == "start" else "process"
        uncounted = None
        if self.syscalls is not None:
            stats["syscalls"], uncounted = self.syscalls.close()
            self.syscalls = None
        client = None
        if self.rusage is not None:
            client = {"cpu_s": self.rusage.ru_utime + self.rusage.ru_stime, "source": "rusage",
                      "window": self._client_window(load)}
        trial.update(server=stats, client=client, load=load, derived=figures(stats, load),
                     timeline=self._timeline())
        outcome = {"timed_out": timed_out, "exit_status": self.load_proc.returncode,
                   "stderr": " | ".join(self.lines[-3:]), "timeout_s": self.spec.load_timeout()}
        trial["status"], trial["reason"] = classify(
            self.spec.workload, load, outcome, self.server.proc.poll(),
            procs.tail(self.server.stderr_path))
        trial["generator_bound"] = generator_bound(trial["status"], load)
        if self.spec.family:
            self._judge_limit(trial)
            held = (load or {}).get("connected") or 0
            trial["sockstat"] = self.sockstat
            trial["derived"]["kernel_mem_per_conn_bytes"] = sockstat.per_connection(
                self.sockstat.get("before"), self.sockstat.get("window"), held)
        if uncounted:
            note(trial, f"system calls not counted: {uncounted}")
        if trial["status"] == "invalid" and client is not None:
            others = others_note(client["window"], stats["wall_s"],
                                 len(self.where.client_cpus))
            if others:
                note(trial, others)
        if previous_done is not None and marks[window[0]].t < previous_done:
            lead = previous_done - marks[window[0]].t
            note(trial, f"overlap: the window opened {lead:.3f} s before the previous "
                         "trial's server had stopped")

    def _judge_limit(self, trial: dict) -> None:
        """A point the model did not hold (fewer connections, or out of time) is
        where it stopped: "stopped", with the reason its log or the run gives."""
        stopped = in_run_reason(trial, procs.tail(self.server.stderr_path), Box.read())
        if stopped is not None:
            stop = Stop(size(self.spec.point), *stopped)
            trial["status"], trial["reason"] = "stopped", stop.text()
            trial["stopped"] = {**asdict(stop), "before_run": False}

    def _mark_client_cpus(self, name: str) -> None:
        idle, steal = procfs.idle_and_steal(self.where.client_cpus)
        own = resource.getrusage(resource.RUSAGE_SELF)
        self.client_marks[name] = (time.monotonic(), idle, steal, own.ru_utime + own.ru_stime)

    def _client_window(self, load: dict | None) -> dict | None:
        """What the generator's CPUs did in its window: its own work (the
        network stack's included), the orchestrator's, and the rest -- other
        processes, kernel threads and interrupts, the noise a trial cannot
        control -- beside the time the hypervisor took them away (steal).
        None unless the server is pinned off those CPUs and the orchestrator
        onto them (as the suite does), or when a window edge is missing."""
        confined = os.sched_getaffinity(0) <= set(self.where.client_cpus)
        if not (self.where.pinned and confined and {"start", "end"} <= self.client_marks.keys()
                and load and load.get("client_cpu_s") is not None):
            return None
        (t0, idle0, steal0, own0), (t1, idle1, steal1, own1) = (self.client_marks["start"],
                                                                self.client_marks["end"])
        steal = steal1 - steal0
        busy = (t1 - t0) * len(self.where.client_cpus) - (idle1 - idle0) - steal
        generator, orchestrator = load["client_cpu_s"], own1 - own0
        return {"cpus": self.where.client_cpus, "busy_s": busy, "generator_s": generator,
                "orchestrator_s": orchestrator, "other_s": busy - generator - orchestrator,
                "steal_s": steal}

    def server_tasks(self) -> int:
        """Threads of the server's tree now (0 before it was ready)."""
        return self.sampler.tasks() if self.sampler is not None else 0

    def _timeline(self) -> dict[str, float]:
        times = {name: m.t for name, m in self.sampler.marks.items()}
        if self.warmup_at is not None:
            times["warmup"] = self.warmup_at
        return {name: round(t - self.t0, 3) for name, t in sorted(times.items(),
                                                                  key=lambda item: item[1])}

    def _join_readers(self) -> None:
        for reader in self.readers:
            reader.join(5)

    def _wait_load(self, timeout: float) -> bool:
        """Reap the load generator with wait4, for its exact CPU; False on timeout."""
        deadline = time.monotonic() + timeout
        proc = self.load_proc
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                self.rusage = usage
                return True
            time.sleep(0.01)
        return False

    def abort(self) -> None:
        """Stop whatever this trial started, without a record (the suite is stopping)."""
        self._stop({})

    def _stop(self, trial: dict) -> None:
        if self.load_proc is not None:
            procs.kill_group(self.load_proc)
        self._join_readers()
        if self.sampler is not None:
            self.sampler.stop()
        if self.syscalls is not None:
            self.syscalls.close()
        cleanup = self.server.dispose()
        # Still open = the same number naming the same file (numbers and inodes are both
        # reused, by the trial that started meanwhile, but not together).
        cleanup["leftover_fds"] = sum(procs.identity(fd) == ident
                                      for fd, ident in self.own_fds.items())
        trial["cleanup"] = cleanup
        trial["duration_s"] = round(time.monotonic() - self.t0, 3)
        trial.setdefault("timeline", {})["stopped"] = trial["duration_s"]
        if cleanup["leftover_procs"]:
            note(trial, f"cleanup: {cleanup['leftover_procs']} process(es) outlived the "
                         "server's stop" + ("" if cleanup["graceful"] else
                                            " (it ignored SIGTERM)")
                  + f"; {cleanup['killed']} killed")


def others_note(window: dict | None, wall_s: float, cpus: int) -> str | None:
    """Why a generator may have fallen behind, when other work, the
    orchestrator (the bench itself, sampling) or the hypervisor took more than
    OTHERS_NOTED of its CPUs in the window."""
    if window is None:
        return None
    taken = [f"{who} took {window[key]:.2f} s" for key, who in
             (("other_s", "other work"), ("orchestrator_s", "the orchestrator"),
              ("steal_s", "the hypervisor"))
             if window[key] > OTHERS_NOTED * wall_s * cpus]
    if not taken:
        return None
    return f"{' and '.join(taken)} of the generator's CPU in its {wall_s:.2f} s window"


def note(trial: dict, text: str) -> None:
    """Add a note to a trial's reason."""
    trial["reason"] = f"{trial['reason']}; {text}" if trial["reason"] else text


def blank_record(spec: TrialSpec, status: str, reason: str | None,
                 started_at: str | None = None) -> dict:
    """A trial's record before (or without) any measurement."""
    return {"scenario": spec.scenario, "model": spec.model, "protocol": spec.protocol,
            "point": spec.point, "repeat": spec.repeat, "workers": spec.workers,
            "status": status, "reason": reason, "started_at": started_at or utc_now(),
            "duration_s": None, "generator_bound": False, "server": None, "client": None,
            "derived": figures(None, None), "load": None, "cleanup": None}


def stopped_record(spec: TrialSpec, stop: Stop) -> dict:
    """The record of a point not run: the model cannot hold it, or stopped at a
    smaller one (bench/run/capacity.py)."""
    trial = blank_record(spec, "stopped", stop.text())
    trial["duration_s"] = 0.0
    trial["stopped"] = {**asdict(stop), "before_run": True}
    return trial


def run_trial(spec: TrialSpec, where: Placement, server: Launched) -> dict:
    """Both halves in a row (no overlap): for tests and one-off trials."""
    trial = Trial(spec, where, server)
    trial.begin()
    return trial.finish()
