"""What prefork and reuseport share: worker processes made up front, each its own epoll loop.

The parent forks --workers workers before any client arrives, then accepts
nothing: each worker runs an epoll loop over its listener -- prefork: the one
listener they share; reuseport: one of its own -- and serves its clients itself.

Echo shares nothing between clients: a worker is the epoll model, unchanged
but for how it watches its listener.

Chat needs one room across processes, and takes the fork model's hub
(servers/hub.py): for each client, the worker makes a socketpair, passes one
end to the parent over a control socket (SCM_RIGHTS, a SOCK_SEQPACKET pair
whose worker end every worker shares) and, in its epoll loop, relays between
the client and the other end, as a fork model's child does in a loop of its
own.  The parent is the hub: one room, its limits and its throttle, enforced
once.  Giving each worker its share of the room instead, the workers
exchanging lines, would split the throttle over processes -- a member behind
in one worker must hold the senders in all.  The price is the relay: a line
crosses a socketpair into the hub, and one out of it to each member.

With the pair, the worker passes the client's socket too: when the hub drops
a member (a line too long, a member that does not read) it shuts that socket
down, which ends the worker's relay at once; the fork model kills the child.

A member is seated when the hub reads its pair, not when it connects: with
more than one worker, a client that connected first may be seated after one
that connected later -- with reuseport, accepted after it.

--max-clients counts across the workers, in a semaphore they share.  The
workers die with the parent (muxbench.lifetime); a worker that dies on its
own is a bug, and the parent stops, status 1, rather than serve on with a hole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket

from muxbench.limits import raise_nofile
from servers import shutdown
from servers.epoll_loop import EpollServer
from servers.hub import Hub, Relay
from servers.limits import HEADROOM_FDS, refuse
from servers.models import Options
from servers.net import Acceptor, at_capacity, format_address, tune
from servers.reactor import Connection

log = logging.getLogger("muxbench.serve")

IN, OUT = select.EPOLLIN, select.EPOLLOUT


class WorkerPool(Hub):
    """The parent: forks the workers, reaps them, and is the room's hub."""

    #: How each worker watches its listener.
    listen_events = IN
    #: Whether each worker has an accept queue of its own (reuseport) or all share one.
    own_queues = False

    def __init__(self, listener: socket.socket, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        self.epoll.unregister(self.listen_fd)  # the workers accept, never the parent
        self.count = options.workers
        self.workers: set[int] = set()
        self.stopping = False
        self.places = Places(self.limits.max_clients)
        self.control = self.worker_control = None
        if not protocol.private:
            self.control, self.worker_control = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.control.setblocking(False)
            self.epoll.register(self.control.fileno(), IN)
        # Up front: the server says it listens once its workers exist, so
        # what a harness measures from then on is their serving, not their birth.
        try:
            self.fork_workers()
        except BaseException:  # out of processes, or a signal: end those made
            self.close_all()
            raise

    def listeners(self) -> list[socket.socket]:
        """The listener each worker accepts from, one per worker."""
        return [self.listener] * self.count

    def fork_workers(self) -> None:
        listeners = self.listeners()
        for listener in listeners:
            keep = [listener] if self.worker_control is None else [listener, self.worker_control]
            self.workers.add(self.spawn(lambda listener=listener: self.work(listener), keep))
        # The workers' copies are theirs; the one `muxbench serve` made stays
        # open in the parent until it exits (it says where the server listens).
        for listener in listeners:
            if listener is not self.listener:
                listener.close()

    def exited(self, pid: int, status: int) -> None:
        if pid in self.workers and not self.stopping:
            log.error("worker %d ended on its own (wait status %d): stopping", pid, status)
            raise SystemExit(1)

    def close_all(self) -> None:
        self.stopping = True
        super().close_all()

    # -- the hub: seat the members the workers pass on ------------------------------

    def dispatch(self, fd: int, readable: int, writable: int) -> None:
        if self.control is not None and fd == self.control.fileno():
            self.seat()
        else:
            super().dispatch(fd, readable, writable)

    def seat(self) -> None:
        """A worker passed a client's pair end and socket: seat it in the room."""
        try:
            name, fds, _, _ = socket.recv_fds(self.control, 1024, 2)
        except BlockingIOError:
            return
        peer = name.decode(errors="replace")
        if len(fds) < 2:  # out of descriptors: the kernel closed what did not fit
            for fd in fds:
                os.close(fd)
            log.warning("out of file descriptors: shed %s", peer)
            return
        self.adopt(socket.socket(fileno=fds[0]), peer, socket.socket(fileno=fds[1]))

    def release(self, far: object, dropped: bool) -> None:
        if dropped:  # wakes the worker's relay, which then ends
            with contextlib.suppress(OSError):  # the client is gone already
                far.shutdown(socket.SHUT_RDWR)
        far.close()

    # -- a worker (in the child) ----------------------------------------------------

    def work(self, listener: socket.socket) -> None:
        """A worker's life: its own loop, until SIGTERM."""
        options = Options(wake_fd=shutdown.install())
        if self.worker_control is None:
            server = EchoWorker(listener, self.protocol, options, self.listen_events, self.places,
                                self.own_queues)
        else:
            server = RelayWorker(listener, self.worker_control, options.wake_fd,
                                 self.listen_events, self.places)
        with contextlib.suppress(shutdown.Shutdown):
            server.run()


class Places:
    """--max-clients across processes: a semaphore the workers share."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.free = None
        if limit is not None:
            import multiprocessing  # only when a limit asks for it: a heavy import

            # The fork context unlinks the semaphore at once: nothing to clean up.
            self.free = multiprocessing.get_context("fork").BoundedSemaphore(limit)

    def take(self, peer: str) -> bool:
        if self.free is None or self.free.acquire(block=False):
            return True
        at_capacity(self.limit, self.limit, peer)  # logs the refusal
        return False

    def give(self) -> None:
        if self.free is not None:
            self.free.release()


class EchoWorker(EpollServer):
    """The epoll model, watching its listener the pool's way, counting its clients in
    Places, and holding no more than its descriptor limit allows.

    Full, a worker that shares its listener (prefork) stops watching it, so
    that the workers with room take the queue; one with a queue of its own
    (reuseport) sheds what lands there, so that nobody waits on it in vain.
    """

    def __init__(self, listener: socket.socket, protocol, options: Options,
                 listen_events: int, places: Places, own_queue: bool) -> None:
        self.listen_events = listen_events  # read by EpollServer.__init__
        super().__init__(listener, protocol, options)
        self.places = places
        self.own_queue = own_queue
        self.nofile = raise_nofile().soft
        self.capacity = self.nofile - HEADROOM_FDS
        self.accepting = True

    def on_acceptable(self) -> None:
        if len(self.conns) < self.capacity:
            super().on_acceptable()
        elif self.own_queue:
            accepted = self.acceptor.accept()
            if accepted is not None and accepted[0] is not None:
                accepted[0].close()
                refuse("worker full", "refused %s: worker %d is full (%d clients, "
                       "RLIMIT_NOFILE %d)", format_address(accepted[1]), os.getpid(),
                       len(self.conns), self.nofile)
        else:
            self.epoll.unregister(self.listen_fd)
            self.accepting = False
            refuse("worker full", "worker %d is full (%d clients, RLIMIT_NOFILE %d): it leaves "
                   "the queue to the others until a client leaves", os.getpid(),
                   len(self.conns), self.nofile)

    def admit(self, sock: socket.socket, addr: tuple) -> None:
        if self.places.take(format_address(addr)):
            super().admit(sock, addr)
        else:
            sock.close()

    def close(self, conn: Connection, reason: str | None = None) -> None:
        if self.conns.get(conn.fd) is conn:
            self.places.give()
        super().close(conn, reason)
        if not self.accepting and len(self.conns) < self.capacity:
            self.epoll.register(self.listen_fd, self.listen_events)
            self.accepting = True


class RelayWorker:
    """A worker of a chat room: accepts, passes each client to the hub, relays."""

    def __init__(self, listener: socket.socket, control: socket.socket, wake_fd: int,
                 listen_events: int, places: Places) -> None:
        self.listen_fd = listener.fileno()
        self.acceptor = Acceptor(listener)
        self.control = control
        self.wake_fd = wake_fd
        self.places = places
        self.relays: dict[int, Relay] = {}  # both fds of each relay
        self.watched: dict[int, int] = {}  # fd -> the events it is registered for
        self.epoll = select.epoll()
        self.epoll.register(self.listen_fd, listen_events)
        self.epoll.register(wake_fd, IN)

    def run(self) -> None:
        try:
            while True:
                for fd, _ in self.epoll.poll():
                    link = self.relays.get(fd)
                    if link is not None:
                        if link.step():
                            self.rewatch(link)
                        else:
                            self.end(link)
                    elif fd == self.listen_fd:
                        self.accept()
                    elif fd == self.wake_fd:
                        shutdown.empty_wake_fd(fd)
        finally:
            for link in set(self.relays.values()):
                link.client.close()
                link.hub.close()
            self.acceptor.close()
            self.epoll.close()

    def accept(self) -> None:
        accepted = self.acceptor.client()  # survives EMFILE and aborts
        if accepted is None:
            return
        sock, peer = accepted
        if not self.places.take(peer):
            sock.close()
            return
        hub_end = own_end = None
        try:
            hub_end, own_end = socket.socketpair()
            # The hub seats the member when it reads this; the client's bytes
            # wait in the pair until then.
            socket.send_fds(self.control, [peer.encode()], [hub_end.fileno(), sock.fileno()])
        except OSError as exc:  # EMFILE for the pair, ETOOMANYREFS for the passing
            log.warning("dropped %s: %s", peer, exc.strerror)
            for s in (sock, own_end):
                if s is not None:
                    s.close()
            self.places.give()
            return
        finally:
            if hub_end is not None:
                hub_end.close()  # the hub's now: the message holds it
        tune(sock)
        link = Relay(sock, own_end, peer)
        self.relays[sock.fileno()] = self.relays[own_end.fileno()] = link
        self.rewatch(link)

    def rewatch(self, link: Relay) -> None:
        for sock, (read, write) in zip((link.client, link.hub), link.wants(), strict=True):
            self.watch(sock.fileno(), (IN if read else 0) | (OUT if write else 0))

    def watch(self, fd: int, events: int) -> None:
        """Register, modify or unregister fd; no syscall when nothing changed.

        A socket waited on for nothing is unregistered rather than registered
        for nothing: epoll would still report its hang-up, over and over.
        """
        before = self.watched.get(fd, 0)
        if events == before:
            return
        if not events:
            self.epoll.unregister(fd)
            del self.watched[fd]
            return
        if before:
            self.epoll.modify(fd, events)
        else:
            self.epoll.register(fd, events)
        self.watched[fd] = events

    def end(self, link: Relay) -> None:
        for sock in (link.client, link.hub):
            fd = sock.fileno()
            del self.relays[fd]
            self.watched.pop(fd, None)  # closing takes it out of the epoll set
            sock.close()
        self.places.give()
