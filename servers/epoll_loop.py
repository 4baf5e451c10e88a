"""epoll(7): the kernel keeps the interest list, and a wait returns only ready fds.

Unlike select and poll, nothing proportional to the number of watched fds is
copied or scanned per call: the cost of a wait follows the number of *ready*
fds.  Interest changes cost a syscall each (epoll_ctl), which is why the shared
code only asks for writability while a backlog exists.
"""

from __future__ import annotations

import select

from servers.reactor import Connection, Reactor


class EpollServer(Reactor):
    """Level-triggered: a fd is reported for as long as it stays ready."""

    def __init__(self, listener, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), self.listen_events)
        self.epoll.register(self.wake_fd, select.EPOLLIN)

    listen_events = select.EPOLLIN

    @staticmethod
    def events(conn: Connection) -> int:
        readable, writable = conn.interest
        return (select.EPOLLIN if readable else 0) | (select.EPOLLOUT if writable else 0)

    def watch(self, conn: Connection) -> None:
        self.epoll.register(conn.fd, self.events(conn))

    def rewatch(self, conn: Connection) -> None:
        self.epoll.modify(conn.fd, self.events(conn))

    def unwatch(self, conn: Connection) -> None:
        self.epoll.unregister(conn.fd)

    def serve_forever(self) -> None:
        readable = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
        dispatch, conns = self.dispatch, self.conns
        # Level-triggered, a report asks for one read: what is left is
        # reported again.  Edge-triggered, it asks for reads until EAGAIN.
        on_readable = self.on_readable if self.edge_triggered else self.read
        poll, only_in = self.epoll.poll, select.EPOLLIN
        while True:
            # Connections left unfinished (edge-triggered only) get no new
            # report: do not sleep while there are any.
            for fd, events in poll(0 if self.unfinished else self.timeout()):
                # The common report -- a client has bytes, nothing else -- is
                # handled here: a call less per message, a few percent of a
                # 64-byte echo.  Everything else goes through dispatch().
                conn = conns.get(fd)
                if events == only_in and conn is not None:
                    on_readable(conn)
                else:
                    dispatch(fd, events & readable, events & select.EPOLLOUT)
            self.flush()
            self.expire()
            if self.unfinished:
                self.read_unfinished()

    def close_all(self) -> None:
        super().close_all()
        self.epoll.close()


class EdgeTriggeredEpollServer(EpollServer):
    """Edge-triggered: a fd is reported once per change, so every handler
    reads, writes and accepts until EAGAIN -- data left behind would never
    be reported again.  A connection still readable after EDGE_READS reads
    waits on the ready list (`unfinished`) while the others are served, so
    that one client sending without pause cannot starve the rest.  In
    exchange each fd is registered once, for both directions, and never
    modified: no epoll_ctl per backlog episode."""

    edge_triggered = True
    listen_events = select.EPOLLIN | select.EPOLLET

    def watch(self, conn: Connection) -> None:
        self.epoll.register(
            conn.fd, select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
        )

    def rewatch(self, conn: Connection) -> None:
        pass
