"""Helpers shared by the tests: real server processes, always cleaned up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Children start as the harness's do: in a session of their own, with SIGINT at its
# default however pytest was started, and SIGKILLed if pytest itself dies.
from muxbench.procs import kill_group, spawn
from servers.models import MODELS

ROOT = Path(__file__).resolve().parent.parent
MUXBENCH = [sys.executable, "-m", "muxbench.cli"]


def model_params(cases: Iterable[str | tuple]) -> list:
    """pytest parameters, one per case: a model's name, or a tuple that starts with one.

    A model this machine cannot run (uvloop not installed) stays in the list as a
    skip that says why, so a missing model shows in every test report."""
    params = []
    for case in cases:
        values = case if isinstance(case, tuple) else (case,)
        reason = MODELS[values[0]].unavailable_reason()
        marks = [] if reason is None else [pytest.mark.skip(reason=f"{values[0]}: {reason}")]
        params.append(pytest.param(*values, marks=marks))
    return params


# Every model, as pytest parameters: those this machine cannot run are skipped, visibly.
AVAILABLE = model_params(MODELS)


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    host: str
    port: int
    stderr_path: Path

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Signal the server and wait for it; returns its exit status."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def stand_in_checkout(path: Path, cli: str) -> Path:
    """A directory whose `python -m muxbench.cli` runs `cli`: a tree for the
    regression gate to run `muxbench bench` from, without measuring anything."""
    (path / "muxbench").mkdir(parents=True)
    (path / "muxbench" / "__init__.py").write_text("")
    (path / "muxbench" / "cli.py").write_text(cli)
    return path


# A `muxbench bench` stand-in: writes its pid into its --out directory, then waits.
SLEEPING_BENCH = """\
import os, pathlib, sys, time
pathlib.Path(sys.argv[sys.argv.index("--out") + 1], "pid").write_text(str(os.getpid()))
time.sleep(120)
"""


# A prefix that runs a command with SIGINT ignored from its start, as a shell
# starts a background job: for tests of what holds however a run was started.
SIGINT_IGNORED = [sys.executable, "-c",
                  "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                  "os.execvp(sys.argv[1], sys.argv[1:])"]


@contextlib.contextmanager
def piped(argv: list[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """A child with its stdin and stdout piped to us, in its own process group;
    the group killed and the pipes closed on exit."""
    proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **popen)
    try:
        yield proc
    finally:
        kill_group(proc)
        proc.stdin.close()
        proc.stdout.close()


def serve(model: str, protocol: str = "echo", *extra: str, preexec_fn=None,
          ready_timeout: float = 10.0) -> contextlib.AbstractContextManager[ServerProcess]:
    """Run `muxbench serve MODEL` in its own process group; kill the group on exit."""
    return listening([*MUXBENCH, "serve", model, "--protocol", protocol, *extra],
                     preexec_fn=preexec_fn, ready_timeout=ready_timeout)


@contextlib.contextmanager
def listening(argv: list[str], preexec_fn=None,
              ready_timeout: float = 10.0) -> Iterator[ServerProcess]:
    """Run a server that prints "listening on HOST:PORT" first, in its own
    process group; kill the group on exit."""
    with tempfile.NamedTemporaryFile(prefix="muxbench-serve-", suffix=".log",
                                     delete=False) as err:
        stderr_path = Path(err.name)
    with open(stderr_path, "wb") as err_file:
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=ROOT,
                     preexec_fn=preexec_fn)
    try:
        line = read_line(proc, ready_timeout)
        if "listening on " not in line:
            raise RuntimeError(f"server did not start: {line!r}\n{stderr_path.read_text()}")
        host, _, port = line.split("listening on ", 1)[1].strip().rpartition(":")
        yield ServerProcess(proc, host.strip("[]"), int(port), stderr_path)
    finally:
        kill_group(proc)
        if proc.stdout:
            proc.stdout.close()
        stderr_path.unlink(missing_ok=True)


def read_line(proc: subprocess.Popen, timeout: float = 5.0) -> str | bytes:
    """The child's next line of output, once some of it came within `timeout`."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no ready line within {timeout} s")
    return proc.stdout.readline()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def recv_until_closed(sock: socket.socket) -> bytes:
    buf = bytearray()
    while chunk := sock.recv(65536):
        buf += chunk
    return bytes(buf)


def process_tree(pid: int) -> list[int]:
    """pids of pid's live descendants (via /proc, no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- chat rooms ------------------------------------------------------------------------


def join_room(server: ServerProcess, n: int,
              connect: Callable[[int], socket.socket] | None = None) -> list[socket.socket]:
    """n chat members, each known to be in the room: all saw the last one's hello.

    Each joins only once the one before it heard itself, so this holds for a
    model whose workers accept from queues of their own (reuseport): a client
    that has merely connected may not have been accepted yet, whatever its
    place in line.  `connect(i)` makes the i-th member's socket (default
    server.connect())."""
    socks: list[socket.socket] = []
    for i in range(n):
        sock = connect(i) if connect is not None else server.connect()
        socks.append(sock)
        hello = b"hello %d\n" % i
        sock.sendall(hello)
        for member in socks:
            assert recv_exactly(member, len(hello)) == hello
    return socks


def say_in_turns(socks: list[socket.socket], rounds: int) -> None:
    """Every member says `rounds` lines, in turns; each must get every sender's
    lines whole and in that sender's order (senders interleave as they may)."""
    for round_ in range(rounds):
        for i, sock in enumerate(socks):
            sock.sendall(b"%d from %d\n" % (round_, i))
    expected = {i: [b"%d from %d\n" % (r, i) for r in range(rounds)] for i in range(len(socks))}
    size = sum(len(line) for lines in expected.values() for line in lines)
    for sock in socks:
        got = recv_exactly(sock, size).splitlines(keepends=True)
        for i, lines in expected.items():
            assert [line for line in got if line.endswith(b" %d\n" % i)] == lines


# -- running `muxbench load` ------------------------------------------------------

# Options that keep a test's load run short: no warm-up, a brief drain, one worker.
FAST = ("--warmup", "0", "--drain", "0.5", "--procs", "1")


@dataclass
class LoadRun:
    status: int
    out: dict | None
    stdout: str
    stderr: str


def run_load(port: int, *args: str, timeout: float = 60.0, json_out: bool = True) -> LoadRun:
    """Run `muxbench load` against 127.0.0.1:port; parse its JSON when asked for."""
    argv = [*MUXBENCH, "load", "--port", str(port), *args] + (["--json"] if json_out else [])
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    parsed = json.loads(stdout) if json_out and stdout.strip() else None
    return LoadRun(proc.returncode, parsed, stdout, stderr)


MARKERS = ("muxbench load: warm-up start", "muxbench load: window start",
           "muxbench load: window end")


def await_window(proc: subprocess.Popen) -> None:
    """Read a `--json` generator's stderr up to its window's opening."""
    assert [proc.stderr.readline().strip() for _ in MARKERS[:2]] == list(MARKERS[:2])


def problem_lines(run: LoadRun) -> list[str]:
    """stderr without the markers: the one-line diagnosis, if any."""
    lines = [line for line in run.stderr.splitlines() if line not in MARKERS]
    assert all(line.startswith("muxbench load: ") for line in lines), run.stderr
    return lines


def assert_clean_exit(run: LoadRun) -> None:
    """Exit 0, unless the run was only flagged invalid (a busy shared machine can
    saturate the generator; that is reported, and is not what these tests check)."""
    assert run.status == (0 if run.out["valid"] else 1), run.stderr
