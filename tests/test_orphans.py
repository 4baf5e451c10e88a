"""Nothing outlives its starter: kill a starter with SIGKILL, and its whole tree goes.

A harness killed outright runs no `finally`: whatever it started in a session
of its own is out of reach of any group kill, and only the kernel can still
end it, through the parent-death signal every child asks for.  Each case
starts one of our starters in a session of its own, waits until the
processes it starts exist, SIGKILLs the starter alone (not its group, which
would hide exactly the processes that escaped it), then checks that every
process of its tree is gone.

"Its tree" is read twice: the descendants seen while it ran (pid and start
time, so that a reused pid is not mistaken for a survivor), and every process
in /proc that carries the case's own token in its environment, which each
process of the tree inherits -- so a process the polling never caught, or
one that left the tree by another double fork, is still found.  Other
engineers' runs of the same commands on the machine carry no such token.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loadgen.native import echo_client_command
from servers.reference import reference_server_command
from tests.support import (
    MUXBENCH,
    ROOT,
    SLEEPING_BENCH,
    kill_group,
    serve,
    spawn,
    stand_in_checkout,
)

TOKEN = "MUXBENCH_ORPHAN_TOKEN"
# Bounds, not measurements: how long a starter may take to start what a case
# waits for, and how long the kernel may take to end a killed tree.
START_TIMEOUT = 60.0
GONE_TIMEOUT = 10.0

needs_cc = pytest.mark.skipif(reference_server_command() is None,
                              reason="no C compiler: the C reference server cannot be built")
needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                    reason="the speed scripts need two CPUs")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: with the pid, one process for good
    cmdline: str


def read_proc(pid: int) -> Proc | None:
    """A live, non-zombie process from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return Proc(pid, int(fields[1]), int(fields[19]),
                cmdline.replace(b"\0", b" ").decode(errors="replace").strip())


def processes() -> list[Proc]:
    return [p for entry in os.listdir("/proc") if entry.isdigit()
            and (p := read_proc(int(entry))) is not None]


def carrying(token: str) -> list[Proc]:
    """Live processes whose environment holds our token."""
    needle = f"{TOKEN}={token}".encode()
    found = []
    for proc in processes():
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0"):
                found.append(proc)
    return found


@dataclass
class Tree:
    """A starter in its own session, and every descendant of it seen so far."""

    starter: subprocess.Popen
    token: str
    log: Path
    seen: dict[int, Proc] = field(default_factory=dict)

    def poll(self) -> list[Proc]:
        """The starter's live descendants now; each is remembered."""
        children: dict[int, list[Proc]] = {}
        for proc in processes():
            children.setdefault(proc.ppid, []).append(proc)
        found, todo = [], [self.starter.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child.pid)
        self.seen.update((p.pid, p) for p in found)
        return found

    def wait_for(self, what: str, ready: Callable[[list[Proc]], bool]) -> None:
        """Poll until `ready(descendants)`, bounded; fail saying what did run."""
        deadline = time.monotonic() + START_TIMEOUT
        while not ready(self.poll()):
            if self.starter.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} never ran (starter exit status {self.starter.returncode}); "
                            f"seen: {[p.cmdline for p in self.seen.values()]}; "
                            f"starter's stderr: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def survivors(self) -> list[Proc]:
        alive = {p.pid: p for p in carrying(self.token)}
        for pid, then in self.seen.items():
            now = read_proc(pid)
            if now is not None and now.start == then.start:
                alive[pid] = now
        return list(alive.values())

    def kill_starter_and_wait(self) -> list[Proc]:
        """SIGKILL the starter alone; whatever of its tree is still alive after
        GONE_TIMEOUT (at once, when all is well)."""
        self.poll()
        os.kill(self.starter.pid, signal.SIGKILL)
        self.starter.wait()
        deadline = time.monotonic() + GONE_TIMEOUT
        while (left := self.survivors()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left


@contextlib.contextmanager
def started(argv: list[str], tmp_path: Path) -> Iterator[Tree]:
    """Run argv in a session of its own, its tree marked with a fresh token; on
    the way out, whatever happened, SIGKILL every process group of the tree."""
    token = uuid.uuid4().hex
    log = tmp_path / "starter.log"
    with open(log, "wb") as err:
        proc = spawn(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=err, env={**os.environ, TOKEN: token})
    tree = Tree(proc, token, log)
    try:
        yield tree
    finally:
        if proc.poll() is None:
            tree.poll()
        groups = {proc.pid}
        for p in tree.survivors():  # pid and start time checked: never a stranger's group
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(p.pid))
        for pgid in groups - {os.getpgrp(), proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        kill_group(proc)


def running(text: str) -> Callable[[Proc], bool]:
    return lambda p: text in p.cmdline


def has(procs: list[Proc], match: Callable[[Proc], bool]) -> Proc | None:
    return next((p for p in procs if match(p)), None)


def has_child(procs: list[Proc], match: Callable[[Proc], bool]) -> bool:
    """Some process matching `match` has a child of its own (a forked worker)."""
    parents = {p.pid for p in procs if match(p)}
    return any(p.ppid in parents for p in procs)


def assert_none_left(tree: Tree) -> None:
    left = tree.kill_starter_and_wait()
    assert not left, (f"outlived their SIGKILLed starter by {GONE_TIMEOUT:g} s: "
                      + "; ".join(f"{p.pid} {p.cmdline}" for p in left))


def trial_running(server: Callable[[list[Proc]], object]) -> Callable[[list[Proc]], bool]:
    """A trial is under way: its server (as `server` sees it) and a worker of
    its load generator (bench -> `muxbench load` -> worker) both exist."""
    load = running("muxbench.cli load ")
    return lambda procs: bool(server(procs)) and has_child(procs, load)


BENCH_CASES = {
    "epoll": trial_running(lambda procs: has(procs, running("muxbench.cli serve epoll "))),
    # The C reference: a program that is not Python, started from its command line.
    "c-epoll": trial_running(lambda procs: has(procs, running("echo_epoll"))),
    # bench -> `muxbench serve fork` -> a child per client.
    "fork": trial_running(lambda procs: has_child(procs, running("muxbench.cli serve fork "))),
    # bench -> `muxbench serve prefork` -> its workers, forked before any client.
    "prefork": trial_running(lambda procs: has_child(procs,
                                                     running("muxbench.cli serve prefork "))),
}


@pytest.mark.parametrize("model", [
    "epoll", pytest.param("c-epoll", marks=needs_cc), "fork", "prefork"])
def test_bench_killed_takes_its_servers_and_load_generators_with_it(model, tmp_path):
    argv = [*MUXBENCH, "bench", "--suite", "quick", "--scenarios", "echo_clients",
            "--models", model, "--out", str(tmp_path / "results")]
    with started(argv, tmp_path) as tree:
        tree.wait_for(f"a {model} trial", BENCH_CASES[model])
        assert_none_left(tree)


def test_load_killed_takes_its_workers_with_it(tmp_path):
    with serve("epoll") as server:
        argv = [*MUXBENCH, "load", "--port", str(server.port), "--workload", "echo",
                "--clients", "4", "--procs", "2", "--warmup", "0", "--duration", "60"]
        with started(argv, tmp_path) as tree:
            tree.wait_for("two workers", lambda procs: len(procs) >= 2)
            assert_none_left(tree)


@needs_cc
@needs_two_cpus
@pytest.mark.parametrize("script", ["server_cpu.py", "loadgen_rate.py"])
def test_speed_script_killed_takes_its_server_and_client_with_it(script, tmp_path):
    # A long client run, so that the client is certainly running when the
    # script is killed; the C server and the C client are what each starts first.
    argv = [sys.executable, str(ROOT / "benchmarks" / script), "--pairs", "1",
            "--duration", "60", "--conns", "1"]
    with started(argv, tmp_path) as tree:
        tree.wait_for("the C server and the C client", lambda procs: bool(
            has(procs, running("echo_epoll")) and has(procs, running("echo_client"))))
        assert_none_left(tree)


# A starter of our own: it starts argv its way (`start`), then waits to be killed.
HOLDER = """
import subprocess, sys, threading, time
sys.path.insert(0, {root!r})
argv = {argv!r}
{start}
time.sleep(120)
"""


def hold(argv: list[str], start: str) -> list[str]:
    return [sys.executable, "-c", HOLDER.format(root=str(ROOT), argv=argv, start=start)]


def test_a_child_started_from_a_thread_outlives_the_thread_but_not_the_process(tmp_path):
    # The kernel's parent-death signal follows the thread that forked: the
    # suite starts a trial's load generator from a helper thread that ends
    # first.  The child must outlive that thread, and not the process.
    joined = tmp_path / "joined"  # made once the thread that started the child has ended
    argv = hold(["sleep", "120"], "from muxbench import procs\n"
                "thread = threading.Thread(target=procs.spawn, args=(argv,))\n"
                "thread.start()\n"
                "thread.join()\n"
                f"open({str(joined)!r}, 'w').close()")
    with started(argv, tmp_path) as tree:
        tree.wait_for("the thread that started the child", lambda procs: joined.exists())
        # The launcher may still be between its exec and sleep's (its command line reads
        # empty meanwhile): wait for sleep itself.  Killed when the thread ended, it never
        # comes, and this fails.
        tree.wait_for("sleep 120, after its starting thread ended",
                      lambda procs: has(procs, running("sleep 120")))
        assert_none_left(tree)


@needs_cc
@pytest.mark.parametrize("program", ["server", "client"])
def test_the_c_programs_die_with_a_parent_that_started_them_any_way(program, tmp_path):
    # Started by anything (here a plain Popen in a session of its own, no
    # launcher of ours), the C yardsticks still die with their starter.
    with serve("epoll") as server:
        argv = ([*reference_server_command(), "--port", "0"] if program == "server" else
                [*echo_client_command(), "--port", str(server.port), "--conns", "1",
                 "--duration", "60", "--warmup", "0"])
        holder = hold(argv, "subprocess.Popen(argv, start_new_session=True)")
        with started(holder, tmp_path) as tree:
            tree.wait_for(f"the C {program}", lambda procs: has(procs, running(argv[0])))
            assert_none_left(tree)


def test_a_gate_killed_takes_its_bench_run_with_it(tmp_path):
    # bench/gate/regress.py runs `muxbench bench` from the tree it measures; a
    # stand-in tree keeps the run from measuring anything.
    checkout = stand_in_checkout(tmp_path / "checkout", SLEEPING_BENCH)
    out = tmp_path / "out"
    out.mkdir()
    argv = hold([str(checkout), str(out)], "from pathlib import Path\n"
                "from bench.gate import regress\n"
                "regress.bench_run(Path(argv[0]), Path(argv[1]), [])")
    with started(argv, tmp_path) as tree:
        tree.wait_for("the bench run", lambda procs: (out / "pid").exists()
                      and has(procs, running("muxbench.cli bench ")))
        assert_none_left(tree)


def test_a_test_child_dies_with_the_test_run(tmp_path):
    # tests/support.py starts a test's servers and clients: a pytest killed
    # outright must not leave them running.
    argv = hold(["sleep", "120"], "from tests.support import spawn\nspawn(argv)")
    with started(argv, tmp_path) as tree:
        tree.wait_for("the test's child", lambda procs: has(procs, running("sleep 120")))
        assert_none_left(tree)

