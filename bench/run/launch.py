"""What a trial runs: its specification, and its server process from start to stop.

A server is either a built-in model, run through the same `muxbench serve`
entry a user runs, or a command server: any program, in any language, started
from its own command line (the C reference is one).  Either way it runs in its
own process group, pinned to its CPU, and -- where the machine allows -- in its
own CPU-accounting cgroup.
"""

from __future__ import annotations

import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.run.scenarios import server_args
from bench.sample.cgroup import CpuCgroup
from bench.sample.environment import Placement
from muxbench import ROOT, procs
from muxbench.net import is_loopback

HOST = "127.0.0.1"
MUXBENCH = [sys.executable, "-m", "muxbench.cli"]

STOP_GRACE = 3.0
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")  # a command server's model name
READY_TIMEOUT = 15.0  # seconds a server has to listen after it is started


@dataclass(frozen=True)
class CommandServer:
    """A server started from its own command line, told where to listen.

    `command` is split into words as a POSIX shell would (shlex) but run
    without one; "{host}" and "{port}" are replaced wherever they appear in a
    word, and nothing else is touched, so braces of the program's own (a
    Python dict in `python3 -c '...'`) survive.  Such a program need print
    nothing, so it is not asked which port it took: the harness chooses the
    port, and the server is ready once a connection to it succeeds.
    """

    name: str
    command: str
    protocol: str = "echo"

    @classmethod
    def parse(cls, text: str, protocol: str, taken: Collection[str]) -> CommandServer:
        """A server from `NAME=COMMAND`, checked before anything runs: a simple
        name none of `taken` has, a command that splits, names a program that
        exists and says where to listen.  ValueError: one line saying what is wrong."""
        name, equals, command = text.partition("=")
        name = name.strip()
        if not equals:
            raise ValueError(f"--server {text!r}: expected NAME=COMMAND")
        if not NAME.fullmatch(name):
            raise ValueError(f"--server {name!r}: a name is a letter, then up to 39 letters, "
                             "digits, '-' or '_'")
        if name in taken:
            raise ValueError(f"--server {name}: the name is taken; choose one that is "
                             f"none of {', '.join(sorted(taken))}")
        server = cls(name, command.strip(), protocol)
        try:
            argv = server.argv(HOST, 0)
        except ValueError as exc:  # shlex: an unclosed quote or a trailing backslash
            raise ValueError(f"--server {name}: cannot split the command: {exc}") from None
        if not argv:
            raise ValueError(f"--server {name}: the command is empty")
        if "{port}" not in command:
            raise ValueError(f"--server {name}: the command must contain {{port}}, the port "
                             "the harness tells the server to listen on")
        if shutil.which(argv[0]) is None:
            raise ValueError(f"--server {name}: {argv[0]!r} is not an executable program "
                             "(or not on PATH)")
        return server

    def argv(self, host: str, port: int) -> list[str]:
        return [word.replace("{host}", host).replace("{port}", str(port))
                for word in shlex.split(self.command)]


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
    load_args: list[str]  # workload options of the point (bench.run.scenarios.load_args)
    connections: int
    server: CommandServer | None = None  # None: the built-in model `model`
    ready_timeout: float = READY_TIMEOUT
    workers: int | None = None  # --workers, for the models that take it
    count_syscalls: bool = False  # the scenario asks for the server's system calls
    host: str = HOST  # where the server listens: another address on a cluster's host
    family: str = ""  # its scenario's family: where a model stops (bench/run/capacity.py)
    load_procs: int | None = None  # generator processes (default one per client CPU)
    # The generator chooses its processes and source addresses (C100K, where it can).
    generator_spreads: bool = False
    sources: str | None = None  # the generator's --source, when it takes one
    # The slowest accept rate a trial waits for; slower, it times out (C100K: stopped).
    accepts_per_s: float = 200.0

    def with_host(self, host: str, load_args: list[str] | None = None) -> TrialSpec:
        """The same trial served at `host` (and driven with `load_args`, one
        generator host's share, when given)."""
        return replace(self, host=host, load_args=self.load_args if load_args is None
                       else load_args)

    def server_argv(self, port: int) -> list[str]:
        """The server's command line; a built-in model takes port 0 and says which it got."""
        if self.server is not None:
            return self.server.argv(self.host, port)
        return [*MUXBENCH, "serve", self.model, "--protocol", self.protocol, "--host", self.host,
                "--port", "0", "-q", *server_args(self.point),
                *(["--workers", str(self.workers)] if self.workers else [])]

    def load_argv(self, port: int, where: Placement) -> list[str]:
        argv = [*MUXBENCH, "load", "--host", self.host, "--port", str(port),
                *self.load_args, "--duration", f"{self.duration:g}",
                "--warmup", f"{self.warmup:g}", "--json"]
        if not self.generator_spreads:
            argv += ["--procs", str(self.load_procs or len(where.client_cpus))]
        if self.sources:
            argv += ["--source", self.sources]
        if not is_loopback(self.host):
            argv.append("--allow-remote")  # a cluster's own server host
        if where.pinned:
            argv += ["--cpus", ",".join(map(str, where.client_cpus))]
        return argv

    def load_timeout(self) -> float:
        # Room to connect (a busy-polling server accepts slowly at 10000 clients) and to
        # drain, yet bounded: a stuck trial is killed and recorded, the suite goes on.
        return self.warmup + self.duration + 20.0 + self.connections / self.accepts_per_s


def free_port(host: str = HOST) -> int:
    """A port of `host` nothing is bound to, outside the kernel's ephemeral range.

    The kernel gives connecting sockets their ports from that range, and a load
    generator connects all the time (churn, or the previous trial draining
    while this one starts): a port from it could be taken between this check
    and the server's bind.  The check binds without SO_REUSEADDR, so a port
    still held by a closed connection's TIME_WAIT is passed over too: a server
    that does not set the option could not bind it.
    """
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    below, above = range(1024, low), range(high + 1, 65536)
    pool = below if len(below) >= len(above) else above
    for _ in range(100):
        port = random.choice(pool)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port
    raise OSError(f"no free port on {host} in {pool.start}-{pool.stop - 1} after 100 tries")


@dataclass
class Launched:
    """A server process, started (often ahead of its trial) and, at the end, stopped.

    `port` is where a command server was told to listen (None for a built-in
    model, which says where it listens); `proc` is None when the server could
    not even be started, and `failure` says why."""

    proc: subprocess.Popen | None
    stderr_path: Path
    cgroup: CpuCgroup | None
    port: int | None = None
    failure: str | None = None
    started: float = field(default_factory=time.monotonic)
    host: str = HOST

    @classmethod
    def start(cls, spec: TrialSpec, where: Placement, use_cgroup: bool) -> Launched:
        with tempfile.NamedTemporaryFile(prefix="muxbench-server-", suffix=".log",
                                         delete=False) as log:
            stderr_path = Path(log.name)
        cpus = where.server_cpus if where.pinned else None
        try:
            with open(stderr_path, "wb") as err:
                if spec.server is None:
                    port = None
                    proc = procs.spawn(spec.server_argv(0), cpus=cpus, stdout=subprocess.PIPE,
                                       stderr=err, text=True, cwd=ROOT)
                else:
                    # Its output goes to the log: nobody reads a pipe that could fill and
                    # block it, and the last lines explain a server that never got ready.
                    # It runs where the user started the suite, as relative paths expect.
                    port = free_port(spec.host)
                    proc = procs.spawn(spec.server_argv(port), cpus=cpus,
                                       stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        except OSError as exc:  # not executable, no free port, out of processes
            return cls(None, stderr_path, None, failure=f"cannot start {spec.model}: {exc}")
        cgroup = CpuCgroup.create(str(proc.pid)) if use_cgroup else None
        if cgroup is not None and not cgroup.add(proc.pid):
            cgroup.remove()
            cgroup = None
        return cls(proc, stderr_path, cgroup, port, host=spec.host)

    def wait_ready(self, timeout: float) -> tuple[int | None, str]:
        """(the port it listens on, "") once it serves, else (None, why not).

        A built-in model's first stdout line names its port; a command server
        is ready when a connection to its port succeeds, and is given up on
        when it exits or `timeout` seconds pass first."""
        if self.proc is None:
            return None, self.failure or "not started"
        if self.port is None:
            line = procs.read_ready_line(self.proc, timeout)
            if line and "listening on " in line:
                return int(line.rsplit(":", 1)[1]), ""
            return None, procs.tail(self.stderr_path) or repr(line)
        deadline = time.monotonic() + timeout
        while (status := self.proc.poll()) is None:
            try:
                socket.create_connection((self.host, self.port), timeout=1.0).close()
                return self.port, ""
            except OSError:
                if time.monotonic() >= deadline:
                    return None, self._why(f"not listening on {self.host}:{self.port} "
                                           f"after {timeout:g} s")
                time.sleep(0.02)
        return None, self._why(f"exited with status {status}")

    def _why(self, what: str) -> str:
        log = procs.tail(self.stderr_path)
        return f"{what}: {log}" if log else what

    def kill(self) -> None:
        """SIGKILL its group at once (which also ends a wait for it to be ready)."""
        if self.proc is not None:
            procs.kill_group(self.proc)

    def dispose(self) -> dict:
        if self.proc is None:
            self.stderr_path.unlink(missing_ok=True)
            return {"graceful": True, "exit_status": None, "leftover_procs": 0, "killed": 0,
                    "remaining_after_kill": 0}
        record = procs.stop_group(self.proc, STOP_GRACE)
        if record["remaining_after_kill"]:
            # SIGKILL takes a process when it next runs, which on a busy server CPU
            # may be a moment after the count: what survives is what is left after it.
            deadline = time.monotonic() + 1.0
            while (left := procs.group_members(self.proc.pid)) and time.monotonic() < deadline:
                time.sleep(0.02)
            record["remaining_after_kill"] = len(left)
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
