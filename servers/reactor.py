"""What every readiness-based model shares: accept, read, write, close.

A model says *how* it learns that a socket is ready (select, poll, epoll, a
sweep, a signal) by subclassing `Reactor` and filling in four hooks; the
bookkeeping around that answer is written once, here.  This is the shape of
CPython's `selectors`: one small interface, one short class per mechanism.

The write path follows one rule: write directly, and buffer only what the
kernel did not take.  Writability is watched only while a backlog exists, so
an echo round trip costs one readiness report, one recv and one send.

Level-triggered, those sends wait until the whole round of reports has been
read, then go out back to back (`flush`, which every model calls before it
waits again) -- Redis's "write before sleep".  Nothing is copied meanwhile,
and the syscalls are the same; what changes is that the clients' wake-ups
bunch up: a client woken by its answer finds its neighbours' answers
already there, rather than sleeping again between them.

Backpressure is decided by the protocol and applied here.  Echo pauses the
one client whose answers wait.  A chat room pauses every member while one is
behind (`servers.protocol.Throttle`): `paused` takes every member's read
interest away, and `expire()` drops the member that took nothing for
--max-stall seconds, which is why each model waits no longer than
`timeout()` while the room is held.
"""

from __future__ import annotations

import logging
import socket

from muxbench.net import RECV_SIZE
from servers import shutdown
from servers.net import (
    Acceptor,
    at_capacity,
    format_address,
    set_nonblocking,
    tune,
    write_or_queue,
)
from servers.protocol import Delivery, Limits, Outbox, ProtocolError

log = logging.getLogger("muxbench.serve")


class Connection:
    __slots__ = ("eof", "fd", "interest", "outbox", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: str, limits: Limits) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.outbox = Outbox(limits.max_output)
        self.eof = False  # the client half-closed: flush what is queued, then close
        self.interest = (False, False)  # (read, write) as last told to the mechanism


class Reactor:
    """Base of the single-threaded models; subclasses supply the mechanism."""

    #: A readiness report is an edge: it is not repeated for data left behind,
    #: so every report is worked until EAGAIN (read, accept, write).  True for
    #: epoll with EPOLLET, and for SIGIO.
    edge_triggered = False

    #: Reads one edge may take before its connection yields (1 MiB at
    #: RECV_SIZE).  Reading until EAGAIN in one go lets a client that sends
    #: without pause hold the loop for as long as it likes; epoll(7)'s answer
    #: is a ready list served round robin, which `unfinished` is.
    EDGE_READS = 16

    #: What a connection is: a model that keeps more per connection subclasses it.
    connection: type[Connection] = Connection

    #: How flush() hands a delivery to the kernel: `write_or_queue(sock, outbox,
    #: data)`, True when something is left queued.  A completion-based model
    #: queues everything and submits the send itself.
    write = staticmethod(write_or_queue)

    def __init__(self, listener: socket.socket, protocol, options) -> None:
        set_nonblocking(listener)  # a reset between readiness and accept must not hang us
        self.listener = listener
        self.listen_fd = listener.fileno()
        self.wake_fd = options.wake_fd  # each mechanism watches it beside the listener
        self.protocol = protocol
        self.limits: Limits = protocol.limits
        self.pause_reading = protocol.pause_reading_while_backlogged
        self.throttle = protocol.throttle  # None: nothing room-wide (echo)
        self.paused = False  # the room reads nobody: a member is behind
        self.conns: dict[int, Connection] = {}
        # Edge-triggered: connections left readable when their read budget ran out.
        # No new report will come for that data, so the loop must come back.
        self.unfinished: dict[int, Connection] = {}
        self.acceptor = Acceptor(listener)
        # Deliveries read in this round of reports, not yet written (flush()):
        # as the protocol made them, one per read however many receive it.
        self.pending: list[Delivery] = []

    # -- the mechanism: what a model fills in ---------------------------------

    def watch(self, conn: Connection) -> None:
        """Start watching a new connection (interest is conn.interest)."""

    def rewatch(self, conn: Connection) -> None:
        """conn.interest changed."""

    def unwatch(self, conn: Connection) -> None:
        """Stop watching conn; it is about to be closed."""

    def serve_forever(self) -> None:
        raise NotImplementedError

    def on_signal(self) -> None:
        """A signal whose handler returned (SIGTERM and SIGINT raise Shutdown instead)."""

    def admits(self, sock: socket.socket, peer: str) -> bool:
        """Can the mechanism watch this socket at all?  (select cannot past FD_SETSIZE.)"""
        return True

    # -- shared bookkeeping ----------------------------------------------------

    def run(self) -> None:
        try:
            self.serve_forever()
        finally:
            self.close_all()

    def dispatch(self, fd: int, readable: int, writable: int) -> None:
        """Act on one readiness report from the mechanism."""
        if fd == self.listen_fd:
            self.on_acceptable()
            return
        conn = self.conns.get(fd)
        if conn is None:
            if fd == self.wake_fd:
                shutdown.empty_wake_fd(fd)
                self.on_signal()
            return  # else: closed earlier in this batch of reports
        if writable:
            self.on_writable(conn)
        if readable and self.conns.get(fd) is conn:
            self.on_readable(conn)

    def close_all(self) -> None:
        """Shutting down: close every socket.

        Nothing is unwatched one by one -- the mechanism goes down whole after
        this -- and that matters: Shutdown is raised wherever the signal finds
        the loop, so a connection may be in `conns` but not yet watched.
        """
        for conn in self.conns.values():
            conn.sock.close()
        self.conns.clear()
        self.acceptor.close()

    def on_acceptable(self) -> None:
        while True:
            accepted = self.acceptor.accept()
            if accepted is None:
                return
            sock, addr = accepted
            if sock is not None:
                self.admit(sock, addr)
            if not self.edge_triggered:
                return  # level-triggered: the next report brings the next one

    def admit(self, sock: socket.socket, addr: tuple) -> None:
        peer = format_address(addr)
        if at_capacity(self.limits.max_clients, len(self.conns), peer) or not self.admits(
            sock, peer
        ):
            sock.close()
            return
        tune(sock)
        self.register(sock, peer)

    def register(self, sock: socket.socket, peer: str) -> Connection:
        """Seat a connected socket in the protocol and the mechanism."""
        # Pending deliveries name their receivers by fd, and this socket may
        # have the fd of a client closed earlier in the round: send them first.
        self.flush()
        set_nonblocking(sock)
        conn = self.connection(sock, peer, self.limits)
        self.conns[conn.fd] = conn
        self.protocol.join(conn.fd)
        conn.interest = (self.reading(conn), False)
        self.watch(conn)
        return conn

    def on_readable(self, conn: Connection) -> None:
        """A readiness report: one read, or on an edge up to EDGE_READS."""
        if not self.edge_triggered:
            self.read(conn)
            return
        for _ in range(self.EDGE_READS):
            more = self.read(conn)
            if self.pending:
                # Written before the next read, so that an echo client which does
                # not read is paused after one receive's worth, as level-triggered.
                self.flush()
            if not (more and self.conns.get(conn.fd) is conn and self.reading(conn)):
                return
        self.unfinished[conn.fd] = conn

    def read(self, conn: Connection) -> bool:
        """Receive once and queue what the protocol makes of it; True if bytes came.

        This is the per-message path, kept to one call beside the protocol's:
        each Python call here costs a few percent of a 64-byte echo.
        """
        if conn.eof or self.paused or (self.pause_reading and conn.outbox):
            # Paused (edge-triggered reports come regardless); resumed by
            # on_writable, or for the whole room by hold().
            return False
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:  # ECONNRESET and friends: the peer is gone
            self.close(conn, exc.strerror)
            return False
        if not data:
            self.on_eof(conn)
            return False
        try:
            delivery = self.protocol.receive(conn.fd, data)
        except ProtocolError as exc:
            self.close(conn, str(exc))
            return False
        if delivery is not None:
            self.pending.append(delivery)
        return True

    def flush(self) -> None:
        """Write every delivery of this round, in the order they were read."""
        pending, self.pending = self.pending, []
        conns, write = self.conns, self.write
        for keys, out in pending:
            for fd in keys:
                target = conns.get(fd)
                if target is None:
                    continue  # closed since (a reset, or a write below failed)
                try:
                    if write(target.sock, target.outbox, out):
                        self.backlogged(target)  # watch for writability
                except OSError as exc:  # the peer is gone
                    self.close(target, exc.strerror)
                except ProtocolError as exc:  # past the output limit
                    self.close(target, str(exc))

    def read_unfinished(self) -> None:
        """Come back, once round, to the connections whose read budget ran out."""
        unfinished, self.unfinished = self.unfinished, {}
        for fd, conn in unfinished.items():
            if self.conns.get(fd) is conn:  # not closed (nor its fd reused) meanwhile
                self.on_readable(conn)

    def on_eof(self, conn: Connection) -> None:
        """The client half-closed: flush what is queued for it, then close."""
        conn.eof = True
        self.leave(conn)
        # What this round read before the EOF goes out first: a loop may read
        # a connection twice in one round (on_writable resumes a paused one).
        self.flush()
        if self.conns.get(conn.fd) is not conn:
            return  # a write in the flush found it gone
        if conn.outbox:
            self.refresh(conn)
        else:
            self.close(conn)

    def on_writable(self, conn: Connection) -> None:
        outbox = conn.outbox
        was_paused = not self.reading(conn)
        while outbox:
            try:
                sent = conn.sock.send(outbox)
            except BlockingIOError:
                break
            except OSError as exc:
                self.close(conn, exc.strerror)
                return
            outbox.consume(sent)
            if not self.edge_triggered:
                break
        if not outbox and conn.eof:
            self.close(conn)
            return
        self.backlogged(conn)
        # Data that arrived while reading was paused raised no new edge, so
        # an edge-triggered or signal-driven loop would never read it.
        if was_paused and self.reading(conn):
            self.on_readable(conn)

    def reading(self, conn: Connection) -> bool:
        return not (conn.eof or self.paused or (self.pause_reading and conn.outbox))

    def backlogged(self, conn: Connection) -> None:
        """conn's backlog changed: tell the room's throttle, then the mechanism."""
        if self.throttle is not None and self.throttle.note(conn.fd, len(conn.outbox)):
            self.hold(self.throttle.paused)
        self.refresh(conn)

    def hold(self, paused: bool) -> None:
        """The room stops or starts reading: every member's interest changes.

        One interest change per member per episode (an epoll_ctl each, for
        epoll); the throttle's two water marks keep episodes apart.
        """
        self.paused = paused
        for conn in self.conns.values():
            self.refresh(conn)
        if self.edge_triggered and not paused:
            # What arrived while the room was held raised its one edge then.
            self.unfinished.update(self.conns)

    def expire(self) -> None:
        """Drop the members that held the room for --max-stall seconds without reading."""
        if self.throttle is None or not self.throttle.behind:
            return
        for fd, reason in self.throttle.overdue():
            self.close(self.conns[fd], reason)

    def timeout(self) -> float | None:
        """How long a wait may last: until a member that is behind may be overdue."""
        return None if self.throttle is None else self.throttle.wait_time()

    def refresh(self, conn: Connection) -> None:
        interest = (self.reading(conn), bool(conn.outbox))
        if interest != conn.interest:
            conn.interest = interest
            self.rewatch(conn)

    def close(self, conn: Connection, reason: str | None = None) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        if reason:
            log.info("dropped %s: %s", conn.peer, reason)
        self.unwatch(conn)
        conn.sock.close()
        self.leave(conn)

    def leave(self, conn: Connection) -> None:
        self.protocol.leave(conn.fd)
        # The member holding the room back may be the one leaving.
        if self.paused and not self.throttle.paused:
            self.hold(False)
