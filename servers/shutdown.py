"""How a server is told to stop: SIGTERM or SIGINT raise Shutdown in the main thread.

Raising from the handler, rather than setting a flag, is what unwinds a loop
blocked in epoll_wait, accept or sigwaitinfo: PEP 475 retries an interrupted
call when the handler returns, but not when it raises.

One gap remains.  A Python handler runs only between bytecodes of the main
thread; the C-level handler merely notes the signal.  A signal that lands just
before a blocking call -- after the interpreter's last look, before the
syscall -- interrupts nothing, and its Python handler waits until the call
returns, which for an idle server may be never.  `signal.set_wakeup_fd` closes
the gap: the C-level handler also writes the signal number to a pipe, so a
loop that watches the pipe's read end (the "wake fd") always wakes.
"""

from __future__ import annotations

import contextlib
import os
import signal


class Shutdown(BaseException):
    """Unwinds the serving loop; `muxbench serve` then exits 0."""


def _raise_shutdown(signum: int, frame: object) -> None:
    # A second signal must not interrupt the clean-up the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Shutdown(signum)


def install() -> int:
    """Make SIGTERM and SIGINT raise Shutdown; return the wake fd to watch."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, _raise_shutdown)
    signal.signal(signal.SIGINT, _raise_shutdown)
    return wake_r


def drain(wake_fd: int) -> None:
    """Empty the wake fd, so that a level-triggered wait does not report it again."""
    with contextlib.suppress(BlockingIOError):
        while os.read(wake_fd, 512):
            pass
