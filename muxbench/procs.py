"""Processes the harness starts: each in its own group, each dying with the harness.

The one place where the harness, the regression gate, the speed scripts and
the tests start, stop and kill processes.  Every child is started with an
argument list in a new session (so a Ctrl-C at the terminal reaches only the
orchestrator, which then decides what dies), registered in `LIVE`, and killed
group-wide by `kill_group()`.  Whatever happens -- a crash, a timeout, a
KeyboardInterrupt in the middle of a trial -- `kill_all()` in the suite's
`finally` leaves nothing running.  And where no `finally` runs (the
orchestrator SIGKILLed), every child has asked the kernel for SIGKILL when its
parent dies (muxbench.lifetime).

That request is tied to the thread that forked, and the suite starts a trial
from a helper thread that ends long before the trial's load generator does.
So every child is forked by one thread kept for the purpose, which lives as
long as the process: `spawn()` hands the start to it and waits.  It blocks
every signal, so that they reach the main thread (where Python runs the
handlers, and where a Ctrl-C then cannot land between a child's start and its
registration in `LIVE`); the launcher unblocks them in the child, and puts
back to their defaults the signals a Python process or a background start
ignores.  A consequence: nothing started here outlives this process, not even
after a normal exit; a daemon meant to stay must be started some other way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from muxbench import lifetime

LIVE: set[subprocess.Popen] = set()
KILL_SETTLE = 2.0  # seconds a SIGKILLed group has to go before what is left counts as surviving
_starter = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="procs-starter",
    initializer=signal.pthread_sigmask, initargs=(signal.SIG_BLOCK, signal.valid_signals()))


def spawn(argv: list[str], *, cpus: list[int] | None = None, **popen) -> subprocess.Popen:
    """Start argv in a new session, pinned to `cpus` from its first instruction,
    to die with this process; OSError (as Popen) when argv[0] cannot be run.

    It starts with no signal blocked and SIGINT, SIGPIPE and SIGXFSZ at their
    defaults, however this process was started (muxbench.lifetime): as from a
    shell, so that an interrupt sent to it works as from a terminal."""
    program = argv[0]
    if os.sep in program and popen.get("cwd") is not None:
        program = os.path.join(popen["cwd"], program)
    env = os.environ if popen.get("env") is None else popen["env"]
    if shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        # The launcher would fail only after the start; fail here, as Popen does.
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return _starter.submit(_start, lifetime.command(argv, cpus), popen).result()


def _start(argv: list[str], popen: dict) -> subprocess.Popen:
    proc = subprocess.Popen(argv, start_new_session=True, **popen)
    LIVE.add(proc)
    return proc


def run(argv: list[str], *, timeout: float, cpus: list[int] | None = None,
        **popen) -> subprocess.CompletedProcess:
    """spawn() argv, collect its piped output, kill its group however it ends;
    subprocess.TimeoutExpired after `timeout` seconds."""
    proc = spawn(argv, **popen, cpus=cpus)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


def wait_gone(pgid: int, timeout: float) -> list[int]:
    """Poll until no live process is left in group pgid, at most `timeout`
    seconds; whatever is still there then.

    SIGKILL ends a process only when it next runs, which on a busy CPU may be
    a moment after the signal: only what is left after that moment survived."""
    deadline = time.monotonic() + timeout
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def kill_group(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """SIGKILL proc's whole group, reap the leader; returns how many were alive."""
    alive = group_members(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()
    LIVE.discard(proc)
    return len(alive)


def stop_group(proc: subprocess.Popen, grace: float) -> dict:
    """SIGTERM the leader and give it `grace` seconds to exit and take its
    children with it; then SIGKILL whatever of the group is left.

    `leftover_procs` counts what the server left behind (itself, if it ignored
    SIGTERM, and any child that outlived it): the server's fault, recorded.
    `remaining_after_kill` is the harness's own guarantee and should be 0:
    what is still in the group up to KILL_SETTLE seconds after the SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(grace)
        graceful = True
    except subprocess.TimeoutExpired:
        status, graceful = None, False
    # A well-behaved server reaps its children on the way out; give the last of
    # them a moment to be collected before calling them left behind.
    left = set(wait_gone(proc.pid, 0.5) if graceful else group_members(proc.pid))
    if not graceful:
        left.add(proc.pid)  # counted once, whether or not it is exiting just now
    killed = kill_group(proc)
    return {"graceful": graceful, "exit_status": status if graceful else proc.returncode,
            "leftover_procs": len(left), "killed": killed,
            "remaining_after_kill": len(wait_gone(proc.pid, KILL_SETTLE))}


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_all() -> None:
    """Kill every group spawn() started, a start still under way included."""
    _starter.submit(lambda: None).result()  # the starter is done with what it was given
    for proc in list(LIVE):
        kill_group(proc)


def read_ready_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """The first stdout line, or None if none came within timeout (or it exited)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
    return proc.stdout.readline() or None


def identity(fd: int) -> tuple[int, int] | None:
    """(device, inode) of an open descriptor, None when it is closed."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def tail(path: Path, lines: int = 3) -> str:
    """The last few lines of a log, joined on one line (for a failure reason)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
