"""Signal-driven I/O: the seed's "interrupt" model.

With O_ASYNC and F_SETOWN on a socket, the kernel sends this process SIGIO
when the socket becomes readable or writable (or is reset or closed).  The
server sleeps in sigwaitinfo() until one comes, then sweeps its sockets.

Two facts shape the loop.  Standard signals coalesce, and Python's siginfo
carries no si_fd, so a SIGIO says only "something happened": every wake-up
rescans every socket, O(N), and drains each until EAGAIN (a SIGIO is an edge:
data left behind would never raise another) -- or until its read budget is
spent, and then sweeps again before sleeping.  And SIGIO stays blocked the
whole time, so one that arrives during a sweep waits, pending, for the next
sigwaitinfo(): no wake-up is lost and none is taken asynchronously mid-update.
"""

from __future__ import annotations

import fcntl
import os
import signal

from servers.busy_polling import PollingServer
from servers.reactor import Connection


def arm(fd: int) -> None:
    """Ask for SIGIO to this process whenever fd changes state."""
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_ASYNC)


class SigioServer(PollingServer):
    edge_triggered = True

    def __init__(self, listener, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
        arm(listener.fileno())
        # A SIGTERM that lands just before sigwaitinfo() writes to the wake
        # fd (servers/shutdown.py), and that write raises a SIGIO: we wake.
        arm(self.wake_fd)

    def watch(self, conn: Connection) -> None:
        # File status flags are not inherited through accept(): arm each one.
        arm(conn.fd)

    def serve_forever(self) -> None:
        while True:
            self.unfinished.clear()  # the sweep reads every connection anyway
            self.sweep()
            if self.unfinished:  # data is waiting that raises no SIGIO
                continue
            timeout = self.timeout()  # a chat room held back by a member: see expire()
            if timeout is None:
                signal.sigwaitinfo({signal.SIGIO})
            else:
                signal.sigtimedwait({signal.SIGIO}, timeout)
