"""No process of ours outlives the one that started it, however that one dies.

A starter killed with SIGKILL runs no clean-up, and a child it put in a
session of its own is out of reach of any group kill: only the kernel can
still end it.  Linux does so for a child that asked with
`prctl(PR_SET_PDEATHSIG, sig)`: it is sent `sig` when its parent dies.

Two ways in:

- `die_with_parent()`, for a child forked by Python code of ours (a load
  generator's worker, a fork server's child): called in the child right after
  fork.
- `command()`, for a program started with exec, which may be any program:
  the command line runs this file as a tiny launcher that asks for the signal
  and then execs the program (the request survives exec, except into a
  set-user-ID or file-capability binary).  The alternative,
  `subprocess.Popen(preexec_fn=...)`, runs Python in the forked child of a
  parent that has threads (the harness samples and reads pipes in threads),
  which the subprocess documentation warns can deadlock on a lock another
  thread held at fork; it also forbids vfork.  The launcher runs in a fresh
  interpreter after exec, where no other thread's lock exists, and costs a
  Python start-up (~10 ms of CPU, before the program runs).  Its parent's pid
  is passed in, so that a parent that died before the request took effect is
  noticed.

The "parent" the kernel watches is the *thread* that forked: a child started
from a helper thread is killed when that thread ends, while the process that
started it goes on.  So a forked child must be forked by a thread that lives
as long as its process (the load generator and the fork server fork from their
main thread, and have no other); muxbench/procs.py starts every exec'd child from
one such thread.

The signal reaches the process started, not the children it forks (fork
clears the request): a program that forks must pass it on, as the load
generator and the fork server do.  A `--server` program that does not is
stopped by its process group or cgroup, which only a living harness can do.

usage (as the launcher): python -I -S lifetime.py PARENT_PID CPUS PROGRAM [ARG...]
where CPUS is "" or a comma-separated list of CPUs to pin the program to.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
LAUNCHER = os.path.abspath(__file__)  # run by path: the child may start in another directory
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Have the kernel send this process `sig` when its parent dies.

    `parent` is the pid this process should have as its parent (default: the
    one it has now, read before asking).  If the parent died before the
    request took effect, this process has already been handed to another
    parent and no signal will ever come: it exits at once, status 1.
    """
    expected = os.getppid() if parent is None else parent
    if _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != expected:
        os._exit(1)


def command(argv: list[str], cpus: list[int] | None = None) -> list[str]:
    """argv run so that it gets SIGKILL when the calling process dies (and is
    pinned to `cpus` before it starts, with no signal blocked and SIGINT,
    SIGPIPE and SIGXFSZ at their defaults); to be started by this process's
    longest-lived thread (see the module's docstring)."""
    return [sys.executable, "-I", "-S", LAUNCHER, str(os.getpid()),
            ",".join(map(str, cpus or ())), *argv]


def _launch(parent: str, cpus: str, *argv: str) -> None:
    """Ask for the parent-death signal, pin, exec argv; never returns."""
    die_with_parent(signal.SIGKILL, int(parent))
    if cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})
    # The starter may hand its children a mask that blocks signals (its
    # starting thread blocks them all, so that signals reach its main thread);
    # a program starts with none blocked, as from a shell.
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    # An ignored signal stays ignored across exec.  This launcher, as any
    # Python, ignores SIGPIPE and SIGXFSZ (subprocess puts them back for what
    # it starts, but that was the launcher), and a starter run in the
    # background (`nohup CMD &`) has SIGINT ignored: a program would ignore an
    # interrupt sent to it (a Python one installs no KeyboardInterrupt).  Each
    # starts with all three at their defaults, as from a shell.
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"{argv[0]}: cannot run: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(127)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(f"usage: {sys.argv[0]} PARENT_PID CPUS PROGRAM [ARG...]")
    _launch(*sys.argv[1:])
