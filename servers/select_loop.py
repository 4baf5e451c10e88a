"""select(2): the textbook's mechanism and its two costs.

Every call hands the kernel bitmaps of every watched fd and gets back copies
to scan, so a wait costs time in proportion to the fds watched, idle or not.
And a bitmap has FD_SETSIZE (1024) bits: a socket whose fd number is 1024 or
more cannot be watched at all -- Python's select() refuses it outright -- so
such a client is turned away (one log line a minute says so) while the
others are served.
"""

from __future__ import annotations

import select
import socket

from servers.limits import refuse
from servers.reactor import Connection, Reactor

FD_SETSIZE = 1024


class SelectServer(Reactor):
    def __init__(self, listener, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        self.readers: set[int] = {listener.fileno(), self.wake_fd}
        self.writers: set[int] = set()

    def admits(self, sock: socket.socket, peer: str) -> bool:
        if sock.fileno() < FD_SETSIZE:
            return True
        refuse("fd_setsize", "refused %s: fd %d >= FD_SETSIZE (%d), select() cannot watch it",
               peer, sock.fileno(), FD_SETSIZE)
        return False

    def watch(self, conn: Connection) -> None:
        self.rewatch(conn)

    def rewatch(self, conn: Connection) -> None:
        readable, writable = conn.interest
        (self.readers.add if readable else self.readers.discard)(conn.fd)
        (self.writers.add if writable else self.writers.discard)(conn.fd)

    def unwatch(self, conn: Connection) -> None:
        self.readers.discard(conn.fd)
        self.writers.discard(conn.fd)

    def serve_forever(self) -> None:
        dispatch = self.dispatch
        while True:
            readable, writable, _ = select.select(self.readers, self.writers, (), self.timeout())
            for fd in writable:
                dispatch(fd, False, True)
            for fd in readable:
                dispatch(fd, True, False)
            self.flush()
            self.expire()
