"""io_uring: completion-based.  The kernel is told what to do, and says when it is done.

Readiness (epoll: "you may read now, go and do it") costs a report, then a
syscall per read and per write.  Here each operation is a queue entry -- one
multishot accept, a recv per connection, a send per backlog -- and one
`io_uring_enter` per loop turn submits the turn's entries and waits for
completions.  Reads take a buffer from a shared provided-buffer group, so an
idle connection holds none.  The bookkeeping is the reactor's: `watch` and
`rewatch` arm a recv where epoll would set EPOLLIN, `write` queues a send
where the others call send(2).  A recv in flight when its connection is
paused brings bytes that are `held` until reading resumes: one receive's
worth, as a readiness model would leave in the socket buffer.

The binding is `liburing` from PyPI: a manylinux wheel with liburing inside
(nothing to compile, no Debian headers), under liburing's own names, covering
multishot accept, buffer-select recv, send, cancel, poll and submit-and-wait
with a timeout.  Where it falls short: `io_uring_setup_buf_ring` cannot be
called from Python (its `int *err` has no Python form), so buffers are
provided the classic way, IORING_OP_PROVIDE_BUFFERS, batched into the turn's
submission; and reading a negative `cqe.res` raises OSError.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket

import liburing as uring

from muxbench.net import RECV_SIZE
from servers import shutdown
from servers.protocol import ProtocolError
from servers.reactor import Connection, Reactor

ACCEPT, RECV, SEND, WAKE, PROVIDE, CANCEL, LISTEN = range(7)
KIND_BITS = 3
ENTRIES = 1024  # submission queue; the completion queue is twice that, and overflow is kept
BUFFERS = 128  # provided receive buffers of RECV_SIZE, shared by every connection
GROUP = 0  # the buffer group id
BUFFER_SHIFT = uring.IORING_CQE_BUFFER_SHIFT
DISABLED = "/proc/sys/kernel/io_uring_disabled"


def unavailable() -> str | None:
    """Why this machine cannot run the model, or None: the sysctl, then a real ring.

    io_uring_disabled is 0 (allowed), 1 (only for io_uring_group) or 2 (off);
    a ring set up and torn down also catches a seccomp filter or a group rule.
    """
    try:
        with open(DISABLED) as f:
            setting = f.read().strip()
    except OSError:
        setting = "0"  # older kernels have no switch
    if setting == "2":
        return f"io_uring is disabled ({DISABLED} = 2)"
    ring = uring.Ring()
    try:
        uring.io_uring_queue_init(2, ring)
    except OSError as exc:
        return f"io_uring cannot be set up: {exc.strerror} ({DISABLED} = {setting})"
    uring.io_uring_queue_exit(ring)
    return None


class UringConnection(Connection):
    __slots__ = ("held", "receiving", "serial")

    def __init__(self, sock: socket.socket, peer: str, limits) -> None:
        super().__init__(sock, peer, limits)
        self.serial = 0  # set by watch(): names this connection in user_data
        self.receiving = False  # a recv is in flight
        self.held: bytes | None = None  # read while paused; b"" is an EOF


class UringServer(Reactor):
    """One ring, one submit-and-wait per turn; the reactor's rules on top."""

    connection = UringConnection

    def __init__(self, listener, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        self.ring = uring.Ring()
        uring.io_uring_queue_init(ENTRIES, self.ring)
        self.cqe = uring.Cqe()
        self.serials = itertools.count(1)
        self.by_serial: dict[int, UringConnection] = {}
        self.sends: dict[int, bytes] = {}  # user_data -> the bytes a send in flight reads
        self.buffers = [bytearray(RECV_SIZE) for _ in range(BUFFERS)]
        # Connections whose recv completed this turn: armed again after the
        # turn's flush, once an echo client's answer is queued and pauses it.
        self.rearm: list[UringConnection] = []
        self.resumed: list[UringConnection] = []  # paused with bytes held, reading again
        for bid in range(BUFFERS):
            self.provide(bid)
        self.arm_accept()
        self.arm_wake()

    # -- submissions -----------------------------------------------------------

    def sqe(self, user_data: int):
        sqe = uring.io_uring_get_sqe(self.ring)
        if sqe is None:  # the queue is full: hand it over now, and take a fresh entry
            uring.io_uring_submit(self.ring)
            sqe = uring.io_uring_get_sqe(self.ring)
        uring.io_uring_sqe_set_data64(sqe, user_data)
        return sqe

    def provide(self, bid: int) -> None:
        uring.io_uring_prep_provide_buffers(self.sqe(PROVIDE), self.buffers[bid], 1, GROUP, bid)

    def arm_accept(self) -> None:
        # Close-on-exec, as every socket Python makes itself (PEP 446).
        uring.io_uring_prep_multishot_accept(self.sqe(ACCEPT), self.listen_fd, None,
                                             socket.SOCK_CLOEXEC)

    def arm_wake(self) -> None:
        uring.io_uring_prep_poll_add(self.sqe(WAKE), self.wake_fd, select.POLLIN)

    def arm_recv(self, conn: UringConnection) -> None:
        """A recv into a buffer of the group, if the connection may read and has none out."""
        if conn.receiving or conn.held is not None or not self.reading(conn):
            return
        if self.by_serial.get(conn.serial) is not conn:
            return  # closed
        conn.receiving = True
        sqe = self.sqe(conn.serial << KIND_BITS | RECV)
        uring.io_uring_prep_recv(sqe, conn.fd, None, 0)
        uring.io_uring_sqe_set_flags(sqe, uring.IOSQE_BUFFER_SELECT)
        uring.io_uring_sqe_set_buf_group(sqe, GROUP)

    def arm_send(self, conn: UringConnection) -> None:
        user_data = conn.serial << KIND_BITS | SEND
        if user_data in self.sends or not conn.outbox:
            return
        # A snapshot: the outbox grows (and moves) while the kernel reads this.
        data = self.sends[user_data] = bytes(conn.outbox)
        uring.io_uring_prep_send(self.sqe(user_data), conn.fd, data, socket.MSG_NOSIGNAL)

    def cancel(self, user_data: int) -> None:
        uring.io_uring_prep_cancel64(self.sqe(CANCEL), user_data, 0)

    # -- the reactor's hooks ---------------------------------------------------

    def watch(self, conn: UringConnection) -> None:
        conn.serial = next(self.serials)
        self.by_serial[conn.serial] = conn
        self.arm_recv(conn)

    def rewatch(self, conn: UringConnection) -> None:
        if conn.held is not None and self.reading(conn):
            self.resumed.append(conn)
        else:
            self.arm_recv(conn)

    def unwatch(self, conn: UringConnection) -> None:
        # An operation in flight holds the socket open: without these the
        # peer would not see the close until its recv or send completed.
        self.by_serial.pop(conn.serial, None)
        if conn.receiving:
            self.cancel(conn.serial << KIND_BITS | RECV)
        if conn.serial << KIND_BITS | SEND in self.sends:
            self.cancel(conn.serial << KIND_BITS | SEND)

    def write(self, sock: socket.socket, outbox, data: bytes) -> bool:
        """Queue everything; the kernel takes it from a send entry (see Reactor.write)."""
        outbox.push(data)
        self.arm_send(self.conns[sock.fileno()])
        return True

    # -- completions -----------------------------------------------------------

    def completions(self) -> list[tuple[int, int, int]]:
        """Take every completion waiting: (user_data, res, flags), res < 0 an errno."""
        cqe, done = self.cqe, []
        for _ in uring.CqeIter(self.ring, cqe):
            entry = cqe[0]
            try:
                res = entry.res
            except OSError as exc:
                res = -exc.errno
            done.append((entry.user_data, res, entry.flags))
        if done:
            uring.io_uring_cq_advance(self.ring, len(done))
        return done

    def on_accept(self, res: int, flags: int) -> None:
        if res >= 0:
            sock = socket.socket(fileno=res)
            try:
                addr = sock.getpeername()
            except OSError:  # reset before we looked
                sock.close()
            else:
                self.admit(sock, addr)
        if flags & uring.IORING_CQE_F_MORE:
            return
        if -res in (errno.EMFILE, errno.ENFILE):
            # io_uring takes a descriptor before it looks at the queue, so at
            # the limit an accept fails at once, queue or not: re-armed, it
            # would spin.  Wait for a connection instead (LISTEN), and let the
            # reactor's accept shed it with its spare descriptor.
            uring.io_uring_prep_poll_add(self.sqe(LISTEN), self.listen_fd, select.POLLIN)
        else:
            self.arm_accept()  # the multishot ended (the kernel's choice, or an error)

    def on_recv(self, conn: UringConnection | None, res: int, flags: int) -> None:
        data = b""
        if flags & uring.IORING_CQE_F_BUFFER:
            bid = flags >> BUFFER_SHIFT
            data = bytes(memoryview(self.buffers[bid])[:res])
            self.provide(bid)
        if conn is None:
            return  # closed while the recv was out
        conn.receiving = False
        if res < 0:
            if res == -errno.ENOBUFS:  # the group ran dry this turn: try again after it
                self.rearm.append(conn)
            else:
                self.close(conn, os.strerror(-res))
            return
        if not self.reading(conn):
            conn.held = data  # paused meanwhile: keep it for when reading resumes
            return
        self.take(conn, data)

    def take(self, conn: UringConnection, data: bytes) -> None:
        """Hand received bytes to the protocol (b"": the client half-closed)."""
        if not data:
            self.on_eof(conn)
            return
        try:
            delivery = self.protocol.receive(conn.fd, data)
        except ProtocolError as exc:
            self.close(conn, str(exc))
            return
        if delivery is not None:
            self.pending.append(delivery)
        self.rearm.append(conn)

    def on_send(self, conn: UringConnection | None, user_data: int, res: int) -> None:
        del self.sends[user_data]
        if conn is None:
            return
        if res < 0:
            self.close(conn, os.strerror(-res))
            return
        conn.outbox.consume(res)
        if not conn.outbox and conn.eof:
            self.close(conn)
            return
        self.arm_send(conn)
        self.backlogged(conn)  # the throttle, and reading resumes where it was paused

    def serve_forever(self) -> None:
        ring, by_serial = self.ring, self.by_serial
        while True:
            wait = self.timeout()
            try:
                if wait is None:
                    uring.io_uring_submit_and_wait(ring, 1)
                else:
                    ts = uring.timespec(wait)
                    uring.io_uring_submit_and_wait_timeout(ring, self.cqe, 1, ts)
            except OSError as exc:  # a signal (its handler runs next), or the timeout
                if exc.errno not in (errno.EINTR, errno.ETIME):
                    raise
            for user_data, res, flags in self.completions():
                kind = user_data & ((1 << KIND_BITS) - 1)
                if kind == RECV:
                    self.on_recv(by_serial.get(user_data >> KIND_BITS), res, flags)
                elif kind == SEND:
                    self.on_send(by_serial.get(user_data >> KIND_BITS), user_data, res)
                elif kind == ACCEPT:
                    self.on_accept(res, flags)
                elif kind == LISTEN:
                    self.on_acceptable()
                    self.arm_accept()
                elif kind == WAKE:
                    shutdown.empty_wake_fd(self.wake_fd)
                    self.on_signal()
                    self.arm_wake()
            self.flush()
            self.expire()
            self.catch_up()

    def catch_up(self) -> None:
        """After the flush: bytes held while paused are taken, and recvs armed again."""
        resumed, self.resumed = self.resumed, []
        for conn in resumed:
            data, conn.held = conn.held, None
            if self.conns.get(conn.fd) is conn and data is not None:
                self.take(conn, data)
        if resumed:
            self.flush()
        rearm, self.rearm = self.rearm, []
        for conn in rearm:
            self.arm_recv(conn)

    def close_all(self) -> None:
        super().close_all()
        uring.io_uring_queue_exit(self.ring)  # cancels what is in flight, drops its files
