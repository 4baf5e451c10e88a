"""One trial: start the server, drive it, sample it, stop it, say what happened.

The server runs through the same `muxbench serve` entry a user runs (or the C
reference binary), in its own process group, pinned to its CPU; the load
generator runs on the other CPUs and reports on stderr when its measurement
window opens and closes, which is when the sampler snapshots the server's
CPU.  Whatever goes wrong is recorded as the trial's status and reason, never
raised: a suite goes on after a failed trial.  Only KeyboardInterrupt passes
through, after every process of the trial is dead.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.cgroup import CpuCgroup
from bench.environment import ROOT, Placement
from bench.results import utc_now
from bench.sampler import TreeSampler
from bench.scenarios import REFERENCE, server_args
from bench.verdict import classify, derived

HOST = "127.0.0.1"
MUXBENCH = [sys.executable, "-m", "bench.cli"]
READY_TIMEOUT = 15.0
STOP_GRACE = 3.0
WINDOW_START = "muxbench load: window start"
WINDOW_END = "muxbench load: window end"


@dataclass
class TrialSpec:
    scenario: str
    workload: str
    model: str
    protocol: str
    point: dict
    repeat: int
    duration: float
    warmup: float
    sample_interval: float
    load_args: list[str]  # workload options of the point (bench.scenarios.load_args)
    connections: int
    reference_cmd: list[str] | None = None

    def server_argv(self) -> list[str]:
        if self.model == REFERENCE:
            return [*(self.reference_cmd or []), "--host", HOST, "--port", "0"]
        return [*MUXBENCH, "serve", self.model, "--protocol", self.protocol, "--host", HOST,
                "--port", "0", "-q", *server_args(self.point)]

    def load_argv(self, port: int, where: Placement) -> list[str]:
        argv = [*MUXBENCH, "load", "--host", HOST, "--port", str(port),
                *self.load_args, "--duration", f"{self.duration:g}",
                "--warmup", f"{self.warmup:g}", "--procs", str(len(where.client_cpus)), "--json"]
        if where.pinned:
            argv += ["--cpus", ",".join(map(str, where.client_cpus))]
        return argv

    def load_timeout(self) -> float:
        # Room to connect (a busy-polling server accepts slowly at 10000 clients) and to
        # drain, yet bounded: a stuck trial is killed and recorded, the suite goes on.
        return self.warmup + self.duration + 20.0 + self.connections / 200


@dataclass
class Launched:
    """A server process started ahead of its trial (see Suite.prelaunch)."""

    proc: subprocess.Popen
    stderr_path: Path
    cgroup: CpuCgroup | None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, spec: TrialSpec, where: Placement, use_cgroup: bool) -> Launched:
        with tempfile.NamedTemporaryFile(prefix="muxbench-server-", suffix=".log",
                                         delete=False) as log:
            stderr_path = Path(log.name)
        with open(stderr_path, "wb") as err:
            proc = procs.spawn(spec.server_argv(), cpus=where.server_cpus if where.pinned
                               else None, stdout=subprocess.PIPE, stderr=err, text=True,
                               cwd=ROOT)
        cgroup = CpuCgroup.create(str(proc.pid)) if use_cgroup else None
        if cgroup is not None and not cgroup.add(proc.pid):
            cgroup.remove()
            cgroup = None
        return cls(proc, stderr_path, cgroup)

    def dispose(self) -> dict:
        record = procs.stop_group(self.proc, STOP_GRACE)
        if self.cgroup is not None:
            # Whatever left the process group (setsid) is still in the cgroup.
            escaped = self.cgroup.wait_empty(0.5)
            if escaped:
                record["leftover_procs"] += len(escaped)
                procs.kill_pids(escaped)
                record["remaining_after_kill"] += len(self.cgroup.wait_empty(1.0))
            self.cgroup.remove()
        self.stderr_path.unlink(missing_ok=True)
        return record


def run_trial(spec: TrialSpec, where: Placement, server: Launched, on_window_end=None,
              fds_ahead=lambda: set()) -> dict:
    """Run one trial on an already launched server; always stops it.

    `fds_ahead()` names the descriptors held for servers launched ahead of
    their trial, which are not this trial's to close."""
    trial = {"scenario": spec.scenario, "model": spec.model, "protocol": spec.protocol,
             "point": spec.point, "repeat": spec.repeat, "status": "failed", "reason": None,
             "started_at": utc_now(), "duration_s": None, "server": None, "client": None,
             "derived": derived(None, None), "load": None, "cleanup": None}
    t0 = time.monotonic()
    fds_before = procs.open_fds() - {server.proc.stdout.fileno()}
    load_proc = None
    try:
        line = procs.read_ready_line(server.proc, READY_TIMEOUT)
        if not line or "listening on " not in line:
            trial["reason"] = ("server did not start: "
                               + (procs.tail(server.stderr_path) or repr(line)))
            return trial
        port = int(line.rsplit(":", 1)[1])
        sampler = TreeSampler(server.proc.pid, spec.sample_interval, server.cgroup)
        sampler.mark("ready")
        sampler.start()
        try:
            load_proc, outcome = _drive(spec, where, port, sampler, on_window_end)
        finally:
            sampler.stop()
        load, client = outcome["load"], outcome["client"]
        window = ("start", "end") if {"start", "end"} <= sampler.marks.keys() \
            else ("load_start", "load_end")
        stats = sampler.stats(*window, baseline="ready")
        stats["window"] = "loadgen" if window[0] == "start" else "process"
        trial.update(server=stats, client=client, load=load, derived=derived(stats, load),
                     timeline={name: round(mark.t - t0, 3) for name, mark in sampler.marks.items()})
        server_status = server.proc.poll()
        trial["status"], trial["reason"] = classify(
            spec.workload, load, outcome, server_status, procs.tail(server.stderr_path))
        return trial
    finally:
        if load_proc is not None:
            procs.kill_group(load_proc)
        cleanup = server.dispose()
        cleanup["leftover_fds"] = len(procs.open_fds() - fds_before - fds_ahead())
        trial["cleanup"] = cleanup
        trial["duration_s"] = round(time.monotonic() - t0, 3)
        trial.setdefault("timeline", {})["stopped"] = trial["duration_s"]
        if cleanup["leftover_procs"]:
            note = (f"cleanup: {cleanup['leftover_procs']} process(es) outlived the server's "
                    "stop" + ("" if cleanup["graceful"] else " (it ignored SIGTERM)")
                    + f"; {cleanup['killed']} killed")
            trial["reason"] = f"{trial['reason']}; {note}" if trial["reason"] else note


def _drive(spec: TrialSpec, where: Placement, port: int, sampler: TreeSampler,
           on_window_end) -> tuple[subprocess.Popen, dict]:
    """Run the load generator to completion (or its timeout); marks the window."""
    with tempfile.TemporaryFile(mode="w+") as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        sampler.mark("load_start")
        proc = procs.spawn(spec.load_argv(port, where), stdout=out, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT)
        lines: list[str] = []
        reader = threading.Thread(target=_watch, args=(proc, sampler, lines, on_window_end),
                                  name="loadgen-stderr", daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(spec.load_timeout())
        except subprocess.TimeoutExpired:
            timed_out = True
            procs.kill_group(proc)
        finally:
            if proc.returncode is None:  # interrupted: kill it before the reader can hang
                procs.kill_group(proc)
            reader.join(5)
        sampler.mark("load_end")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        text = out.read()
    try:
        load = json.loads(text) if text.strip() else None
    except ValueError:
        load = None
    client = {"cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
              "source": "rusage"}
    return proc, {"load": load, "client": client, "exit_status": proc.returncode,
                  "timed_out": timed_out, "stderr": " | ".join(lines[-3:]),
                  "timeout_s": spec.load_timeout()}


def _watch(proc: subprocess.Popen, sampler: TreeSampler, lines: list[str], on_window_end) -> None:
    for raw in proc.stderr:
        line = raw.strip()
        if line == WINDOW_START:
            sampler.mark("start")
        elif line == WINDOW_END:
            sampler.mark("end")
            if on_window_end is not None:
                on_window_end()
        elif line:
            lines.append(line)
