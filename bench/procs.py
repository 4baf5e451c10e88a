"""Processes the harness starts: each in its own group, each killed by the harness.

Every child is started with an argument list in a new session (so a Ctrl-C at
the terminal reaches only the orchestrator, which then decides what dies),
registered in `LIVE`, and killed group-wide by `kill_group()`.  Whatever
happens -- a crash, a timeout, a KeyboardInterrupt in the middle of a trial --
`kill_all()` in the suite's `finally` leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

LIVE: set[subprocess.Popen] = set()


def spawn(argv: list[str], *, cpus: list[int] | None = None, **popen) -> subprocess.Popen:
    """Start argv in a new session; pin it to `cpus` before it can start children."""
    proc = subprocess.Popen(argv, start_new_session=True, **popen)
    LIVE.add(proc)
    if cpus:
        # Right after exec the child is still starting its interpreter, long
        # before it accepts a client and creates a thread or child, so the
        # affinity set here is the one every later thread and child inherits.
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(proc.pid, cpus)
    return proc


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
    `remaining_after_kill` is the harness's own guarantee and should be 0."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(grace)
        graceful = True
    except subprocess.TimeoutExpired:
        status, graceful = None, False
    # A well-behaved server reaps its children on the way out; give the last of
    # them a moment to be collected before calling them left behind.
    deadline = time.monotonic() + 0.5
    left = group_members(proc.pid)
    while left and graceful and time.monotonic() < deadline:
        time.sleep(0.02)
        left = group_members(proc.pid)
    killed = kill_group(proc)
    return {"graceful": graceful, "exit_status": status if graceful else proc.returncode,
            "leftover_procs": len(left) + (not graceful), "killed": killed,
            "remaining_after_kill": len(group_members(proc.pid))}


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_all() -> None:
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
