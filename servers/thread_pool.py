"""A thread pool: one epoll dispatcher thread and a fixed pool of worker threads.

Half-sync/half-async (Schmidt and Cranor), the shape of Java NIO servers: the
asynchronous half, the main thread, waits in epoll for every socket and
accepts; the synchronous half, --workers threads, does the protocol work --
receive, the echo or the chat room, send.  Between the halves, a bounded
queue of ready connections.

A connection is registered with EPOLLONESHOT: once reported, it is reported
no more until it is re-armed, so it is queued once and served by one worker
at a time (its bytes are read, and its lines enter the room, in order), and
the worker that served it re-arms it; epoll_ctl may be called from any
thread.  That re-arm is an epoll_ctl per message that the single-threaded
epoll model does not make, and the queue a lock and a thread wake-up per
message: the price of spreading the protocol work over threads, which in
CPython take turns on one GIL.

When the queue is full the dispatcher waits for room in it, and so takes no
more reports: nothing more is read from any client, their bytes wait in the
kernel and TCP flow control slows the senders.  Nothing is dropped, and a
burst of ready connections costs bounded memory here.

Echo needs no lock: a connection is its worker's alone while it is served.
Chat keeps the room -- the protocol, every member's Outbox, the throttle --
behind one lock, as the thread model does: a worker receives outside it and
fans out inside it, writing to every member without blocking and queuing
what the kernel did not take.  A member that is behind holds the room as in
servers/reactor.py: no worker reads anyone meanwhile, and the dispatcher,
which owns the clock, drops the member that took nothing for --max-stall.

Only a connection's own worker closes its socket: a descriptor closed under
a worker's recv() could be reused by a new client, whose bytes that worker
would then read.  Another thread that drops a member shuts the socket down
instead, which raises a hang-up report that brings it a worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import signal
import socket
import threading
import time

from muxbench.net import RECV_SIZE
from servers import shutdown
from servers.net import (
    Acceptor,
    at_capacity,
    set_nonblocking,
    tune,
    write_or_queue,
)
from servers.protocol import Limits, ProtocolError
from servers.reactor import Connection

log = logging.getLogger("muxbench.serve")

# Ready connections queued per worker: enough that a worker done with one
# finds the next waiting, few enough that a burst waits in the kernel.
QUEUE_PER_WORKER = 8
# Time allowed, in total, for the workers to finish their task at shutdown.
JOIN_TIMEOUT = 1.0

IN, OUT, ONESHOT = select.EPOLLIN, select.EPOLLOUT, select.EPOLLONESHOT
HANGUP = select.EPOLLHUP | select.EPOLLERR
READABLE = IN | HANGUP | select.EPOLLRDHUP


class Conn(Connection):
    __slots__ = ("busy", "dropped")

    def __init__(self, sock: socket.socket, peer: str, limits: Limits) -> None:
        super().__init__(sock, peer, limits)
        self.dropped = False  # shut down: its worker closes it
        # Reported and not re-armed yet: one worker's alone.  Only the
        # dispatcher sets it, only that worker clears it.
        self.busy = False
        self.interest = 0  # here the epoll events it is armed with, or will be when re-armed


class ThreadPoolServer:
    def __init__(self, listener: socket.socket, protocol, options) -> None:
        set_nonblocking(listener)  # a reset between readiness and accept must not hang us
        self.listen_fd = listener.fileno()
        self.wake_fd = options.wake_fd
        self.acceptor = Acceptor(listener)
        self.protocol = protocol
        self.limits: Limits = protocol.limits
        self.pause_reading = protocol.pause_reading_while_backlogged
        self.throttle = protocol.throttle  # None: nothing room-wide (echo)
        self.paused = False  # the room reads nobody: a member is behind
        self.lock = threading.Lock()  # guards the room: see the module's docstring
        self.room = contextlib.nullcontext() if protocol.private else self.lock
        self.conns: dict[int, Conn] = {}
        self.epoll = select.epoll()
        self.epoll.register(self.listen_fd, IN)
        self.epoll.register(self.wake_fd, IN)
        # Written by a worker that held the room, so that a dispatcher asleep
        # without a timeout wakes to start the --max-stall clock.
        self.nudge = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self.nudge, IN)
        self.tasks: queue.Queue = queue.Queue(QUEUE_PER_WORKER * options.workers)
        self.workers = [threading.Thread(target=self.work, name=f"worker {i}", daemon=True)
                        for i in range(options.workers)]

    def run(self) -> None:
        try:
            # Python runs signal handlers in the main thread only, and a
            # signal another thread takes does not interrupt the dispatcher's
            # wait for room in the queue: workers block every signal (a
            # thread inherits the mask it was started with).
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            try:
                for worker in self.workers:
                    worker.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.dispatch()
        finally:
            self.stop()

    # -- the asynchronous half: the dispatcher ----------------------------------

    def dispatch(self) -> None:
        poll, conns, put = self.epoll.poll, self.conns, self.tasks.put
        while True:
            for fd, events in poll(self.timeout()):
                conn = conns.get(fd)
                if conn is not None:
                    # Busy: a report that raced a re-arm from another thread;
                    # the worker serving conn re-arms it when it is done.
                    if not conn.busy:
                        conn.busy = True
                        put((conn, events))  # waits while the queue is full
                elif fd == self.listen_fd:
                    self.accept()
                elif fd == self.nudge:
                    os.eventfd_read(self.nudge)
                elif fd == self.wake_fd:
                    shutdown.empty_wake_fd(fd)
            if self.throttle is not None and self.throttle.behind:
                with self.lock:
                    for member, reason in self.throttle.overdue():
                        self.drop(member, reason)

    def timeout(self) -> float | None:
        """How long a wait may last: until a member that is behind may be overdue."""
        if self.throttle is None or not self.throttle.behind:
            return None
        with self.lock:
            return self.throttle.wait_time()

    def accept(self) -> None:
        accepted = self.acceptor.client()  # survives EMFILE and aborts
        if accepted is None:
            return
        sock, peer = accepted
        with self.room:
            if at_capacity(self.limits.max_clients, len(self.conns), peer):
                sock.close()
                return
            tune(sock)
            set_nonblocking(sock)
            conn = Conn(sock, peer, self.limits)
            self.protocol.join(conn)
            conn.interest = self.events(conn)
            self.conns[conn.fd] = conn
            self.epoll.register(conn.fd, conn.interest | ONESHOT)

    # -- the synchronous half: the workers ----------------------------------------

    def work(self) -> None:
        get = self.tasks.get
        while (task := get()) is not None:
            self.serve(*task)

    def serve(self, conn: Conn, events: int) -> None:
        """A worker's task: conn was reported ready, and is this worker's until re-armed."""
        with self.room:
            if events & OUT and conn.outbox and not conn.dropped:
                self.write(conn)
            reading = self.reading(conn)
            if events & HANGUP and not (reading or conn.dropped):
                # Dead, and not to be read now: re-armed, it would be reported
                # again at once, and again.
                error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self.drop(conn, os.strerror(error) if error else "hung up")
        data, error = None, None
        if reading and events & READABLE:
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:  # the room paused, or the report was stale
                pass
            except OSError as exc:  # ECONNRESET and friends: the peer is gone
                error = exc.strerror
        with self.room:
            if conn.dropped:  # by another thread, while this one was in recv()
                pass
            elif error:
                self.drop(conn, error)
            elif data:
                try:
                    delivery = self.protocol.receive(conn, data)
                except ProtocolError as exc:
                    self.drop(conn, str(exc))
                else:
                    if delivery is not None:
                        self.deliver(*delivery)
            elif data is not None:  # b"": the client half-closed
                conn.eof = True
                self.leave(conn)
            self.finish(conn)

    def finish(self, conn: Conn) -> None:
        """The end of a task (room held): close conn if it is done, else re-arm it."""
        if conn.dropped or (conn.eof and not conn.outbox):
            del self.conns[conn.fd]  # first: until close() no new client can have its fd
            conn.sock.close()  # which also takes it out of the epoll set
            return
        conn.interest = self.events(conn)
        conn.busy = False  # before the re-arm, so that the report it raises finds conn free
        self.epoll.modify(conn.fd, conn.interest | ONESHOT)

    def deliver(self, keys: tuple, data: bytes) -> None:
        """Write to each receiver without blocking, queue the rest (room held)."""
        for member in keys:
            try:
                if write_or_queue(member.sock, member.outbox, data):
                    self.backlogged(member)
            except OSError as exc:  # the peer is gone
                self.drop(member, exc.strerror)
            except ProtocolError as exc:  # past the output limit
                self.drop(member, str(exc))

    def write(self, conn: Conn) -> None:
        """conn is writable and has a backlog: one send of it (room held)."""
        try:
            sent = conn.sock.send(conn.outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            self.drop(conn, exc.strerror)
            return
        conn.outbox.consume(sent)
        self.backlogged(conn)

    # -- the room's state: every method below runs with the room held -----------

    def reading(self, conn: Conn) -> bool:
        return not (conn.eof or conn.dropped or self.paused
                    or (self.pause_reading and conn.outbox))

    def events(self, conn: Conn) -> int:
        return (IN if self.reading(conn) else 0) | (OUT if conn.outbox else 0)

    def backlogged(self, conn: Conn) -> None:
        """conn's backlog changed: tell the room's throttle, then epoll."""
        if self.throttle is not None and self.throttle.note(conn, len(conn.outbox)):
            self.hold(self.throttle.paused)
        self.refresh(conn)

    def refresh(self, conn: Conn) -> None:
        """Re-arm conn if what it waits for changed; a busy one is re-armed by its worker."""
        if conn.busy or conn.dropped:
            return
        events = self.events(conn)
        if events != conn.interest:
            conn.interest = events
            self.epoll.modify(conn.fd, events | ONESHOT)

    def hold(self, paused: bool) -> None:
        """The room stops or starts reading: every member's interest changes."""
        self.paused = paused
        for conn in self.conns.values():
            self.refresh(conn)
        if paused:
            os.eventfd_write(self.nudge, 1)

    def leave(self, conn: Conn) -> None:
        self.protocol.leave(conn)
        # The member holding the room back may be the one leaving.
        if self.paused and not self.throttle.paused:
            self.hold(False)

    def drop(self, conn: Conn, reason: str | None) -> None:
        """Disconnect conn from any thread; its worker closes it (see the docstring)."""
        if conn.dropped:
            return
        conn.dropped = True
        if reason:
            log.info("dropped %s: %s", conn.peer, reason)
        if not conn.eof:
            self.leave(conn)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)

    # -- shutting down ---------------------------------------------------------------

    def stop(self) -> None:
        """Let each worker finish its task, then close every socket."""
        with contextlib.suppress(queue.Empty):
            while True:  # the queued tasks: their connections are closed below
                self.tasks.get_nowait()
        started = [worker for worker in self.workers if worker.ident is not None]
        for _ in started:
            self.tasks.put(None)  # never waits: the queue holds a task per worker and more
        deadline = time.monotonic() + JOIN_TIMEOUT
        for worker in started:
            worker.join(max(0.0, deadline - time.monotonic()))
        for conn in list(self.conns.values()):
            conn.sock.close()
        self.conns.clear()
        self.acceptor.close()
        self.epoll.close()
        os.close(self.nudge)
