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

Where how these signals are taken changes in several steps -- two handlers
and a wake fd here, an event loop's own machinery in asyncio_server -- the
steps are made inside `held()`: a blocked signal is not lost but kept pending
by the kernel, and delivered when unblocked, to whatever is in place by then.
No signal sees the change half made.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown(BaseException):
    """Unwinds the serving loop; `muxbench serve` then exits 0."""


def _raise_shutdown(signum: int, frame: object) -> None:
    # A second signal must not interrupt the clean-up the first one started.
    for other in SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Shutdown(signum)


@contextlib.contextmanager
def held() -> Iterator[Callable[[], None]]:
    """Keep SIGTERM and SIGINT pending for the block; yield a `release` to let them in sooner.

    On the way out the signal mask is put back as it was, and a signal that
    came meanwhile is delivered then.  `release()` does the same earlier, for
    a block whose last part must already take signals (an event loop that is
    running by then, and that only then reads its wake fd).
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

    def release() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    try:
        yield release
    finally:
        release()


def install() -> int:
    """Make SIGTERM and SIGINT raise Shutdown; return the wake fd to watch.

    A signal that comes while this is under way raises Shutdown as soon as
    everything is in place, not before: not with one signal's handler set and
    the other's still the default, nor before the wake fd is there.
    """
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with held():
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in SIGNALS:
            signal.signal(signum, _raise_shutdown)
    return wake_r


def empty_wake_fd(wake_fd: int) -> None:
    """Empty the wake fd, so that a level-triggered wait does not report it again."""
    with contextlib.suppress(BlockingIOError):
        while os.read(wake_fd, 512):
            pass
