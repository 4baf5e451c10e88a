"""poll(2): an array of (fd, events) handed to the kernel on every call.

No FD_SETSIZE ceiling, and the interest set is kept between calls here, but
the kernel still copies in and scans every watched fd per call: the cost of a
wait grows with the number of connections, busy or idle.
"""

from __future__ import annotations

import select

from servers.reactor import Connection, Reactor


class PollServer(Reactor):
    def __init__(self, listener, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        self.poller = select.poll()
        self.poller.register(listener.fileno(), select.POLLIN)
        self.poller.register(self.wake_fd, select.POLLIN)

    @staticmethod
    def events(conn: Connection) -> int:
        readable, writable = conn.interest
        return (select.POLLIN if readable else 0) | (select.POLLOUT if writable else 0)

    def watch(self, conn: Connection) -> None:
        self.poller.register(conn.fd, self.events(conn))

    def rewatch(self, conn: Connection) -> None:
        self.poller.modify(conn.fd, self.events(conn))

    def unwatch(self, conn: Connection) -> None:
        self.poller.unregister(conn.fd)

    def serve_forever(self) -> None:
        readable = select.POLLIN | select.POLLHUP | select.POLLERR
        dispatch = self.dispatch
        poll = self.poller.poll
        while True:
            timeout = self.timeout()
            for fd, events in poll(None if timeout is None else timeout * 1000):  # ms
                dispatch(fd, events & readable, events & select.POLLOUT)
            self.flush()
            self.expire()
