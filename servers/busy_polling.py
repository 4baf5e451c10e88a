"""Busy polling, as in the seed's tcp_chatserv_nonb.c: ask every socket, every time.

Every socket is non-blocking (O_NONBLOCK through fcntl), and one loop tries
accept() on the listener and recv() on every client, over and over.  Nothing
ever sleeps unless `--interval` says so: the CPU burns whether or not anyone
talks, and with an interval a message waits up to one interval to be noticed.
"""

from __future__ import annotations

import time

from servers.reactor import Reactor


class PollingServer(Reactor):
    def __init__(self, listener, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        self.interval = options.interval

    def sweep(self) -> None:
        """Try every socket once: accept, flush backlogs, read."""
        self.on_acceptable()
        for conn in list(self.conns.values()):
            if conn.outbox:
                self.on_writable(conn)
            if self.conns.get(conn.fd) is conn:  # on_readable skips a paused one
                self.on_readable(conn)
        self.flush()
        self.expire()

    def serve_forever(self) -> None:
        while True:
            self.sweep()
            if self.interval:
                time.sleep(self.interval)
