"""What a trial runs: its specification, and its server process from start to stop.

The server runs through the same `muxbench serve` entry a user runs (or the C
reference binary), in its own process group, pinned to its CPU, and -- where
the machine allows -- in its own CPU-accounting cgroup.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.cgroup import CpuCgroup
from bench.environment import ROOT, Placement
from bench.scenarios import REFERENCE, server_args

HOST = "127.0.0.1"
MUXBENCH = [sys.executable, "-m", "bench.cli"]

STOP_GRACE = 3.0

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
    """A server process, started (often ahead of its trial) and, at the end, stopped."""

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
