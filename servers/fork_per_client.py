"""A process per client: fork() after accept(), the seed's multi-process model.

The parent accepts and forks; the child serves its one client with plain
blocking calls and exits.  The kernel isolates the clients completely --
which is the point, and the problem: processes share no memory, so anything
the clients share needs IPC.

Echo needs nothing shared: the child loops recv/sendall until the client is
done (a blocking sendall is the backpressure) and exits with os._exit(), never
returning into the parent's stack to run the parent's clean-up.

Chat needs the room.  Each child gets one end of a socketpair whose other end
the parent keeps; the parent is a hub, an epoll chat room over those pairs
(the epoll model's own machinery), so the line and output limits, and the
room's backpressure, are enforced there, once.  The child relays bytes
between its client and the hub, both ways, without ever blocking on either
side: a client that stops reading must not stop its own lines reaching the
room, and a hub that is busy must not stall the client.  A client the hub
drops has its child terminated.

The parent reaps children as the textbook warns it must: SIGCHLD only wakes
the loop (through the wake fd of servers/shutdown.py), and the loop calls
waitpid(-1, WNOHANG) until none is left, because SIGCHLDs coalesce.  SIGCHLD
is never ignored outright: reaped children's CPU time is how the harness
counts their cost.  The parent has no threads, so fork() is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time

from muxbench.lifetime import die_with_parent
from muxbench.net import RECV_SIZE
from servers.epoll_loop import EpollServer
from servers.net import at_capacity, format_address, tune
from servers.reactor import Connection

log = logging.getLogger("muxbench.serve")

# Time allowed for the children to die of SIGTERM at shutdown, then of SIGKILL.
STOP_TIMEOUT = 1.2
KILL_TIMEOUT = 0.4


class ForkServer(EpollServer):
    def __init__(self, listener: socket.socket, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        # A private protocol (echo) shares nothing between clients: each
        # child serves its client alone, with no hub.
        self.private = protocol.private
        self.children: set[int] = set()  # pids forked and not reaped yet
        self.child_of: dict[int, int] = {}  # hub fd -> pid of the child at its other end

    def run(self) -> None:
        # A Python-level handler is what makes the interpreter write to the
        # wake fd the loop watches (servers/shutdown.py); the handler itself
        # has nothing to do: on_signal() reaps.
        previous = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        try:
            super().run()
        finally:
            signal.signal(signal.SIGCHLD, previous)

    def on_signal(self) -> None:
        self.reap()

    def reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)

    # -- the parent: accept, fork -----------------------------------------------

    def admit(self, sock: socket.socket, addr: tuple) -> None:
        peer = format_address(addr)
        if at_capacity(self.limits.max_clients, len(self.children), peer):
            sock.close()
            return
        hub_end = child_end = None
        try:
            if not self.private:
                hub_end, child_end = socket.socketpair()
            pid = self.fork(sock, child_end, peer)
        except OSError as exc:  # EMFILE for the pair, EAGAIN or ENOMEM for fork
            log.warning("dropped %s: %s", peer, exc.strerror)
            for s in (sock, hub_end, child_end):
                if s is not None:
                    s.close()
            return
        sock.close()  # the parent's copy: the client is the child's now
        if hub_end is not None:
            child_end.close()
            self.adopt(hub_end, peer, pid)

    def fork(self, sock: socket.socket, hub: socket.socket | None, peer: str) -> int:
        # Block signals across fork(): until the child has reset its handlers,
        # a SIGTERM would run the parent's handler in the child and unwind
        # the parent's clean-up there.  The parent gets any pending signal
        # when the mask is restored -- by then the child is on record, so
        # the shutdown that signal starts will end and reap it too.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
            if pid == 0:
                self.child(sock, hub, peer, mask)  # never returns
            self.children.add(pid)
            return pid
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def adopt(self, hub_end: socket.socket, peer: str, pid: int) -> None:
        """Seat the child's pipe in the room, as a client of the hub."""
        self.child_of[self.register(hub_end, peer).fd] = pid

    def close(self, conn: Connection, reason: str | None = None) -> None:
        super().close(conn, reason)
        pid = self.child_of.pop(conn.fd, None)
        # Dropped by the hub (line too long, output backlog): the child may be
        # stuck writing to a client that does not read, so end it.  A pid
        # still in `children` is not reaped, so it cannot have been reused.
        if reason and pid in self.children:
            os.kill(pid, signal.SIGTERM)

    def close_all(self) -> None:
        for pid in self.children:
            os.kill(pid, signal.SIGTERM)
        super().close_all()
        # A child dies at once of SIGTERM (its handler is the default), but
        # the kernel tears a thousand of them down in a second or more on a
        # busy machine.  The waits are bounded so that shutdown stays within
        # its budget; a child still dying after that is left to init to reap.
        self.wait_for_children(STOP_TIMEOUT)
        for pid in self.children:
            os.kill(pid, signal.SIGKILL)
        self.wait_for_children(KILL_TIMEOUT)
        if self.children:
            log.warning("%d children still exiting at shutdown", len(self.children))

    def wait_for_children(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.005)

    # -- the child ----------------------------------------------------------------

    def child(self, sock: socket.socket, hub: socket.socket | None, peer: str,
              mask: set) -> None:
        status = 1
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            die_with_parent()
            # The listener, the epoll fd and the other children's pipes are
            # the parent's: holding a copy of another child's pipe would keep
            # it open after the hub closed it, and that child would never see EOF.
            keep = sorted(s.fileno() for s in (sock, hub) if s is not None)
            close_fds_except(keep)
            tune(sock)
            if hub is None:
                self.serve_private(sock, peer)
            else:
                relay(sock, hub, peer)
            status = 0
        finally:
            os._exit(status)

    def serve_private(self, sock: socket.socket, peer: str) -> None:
        key = sock.fileno()
        self.protocol.join(key)
        try:
            while data := sock.recv(RECV_SIZE):
                delivery = self.protocol.receive(key, data)
                if delivery is not None:
                    sock.sendall(delivery[1])  # blocks while the client does not read
        except OSError as exc:  # ECONNRESET and friends: the peer is gone
            log.info("dropped %s: %s", peer, exc.strerror)


def close_fds_except(keep: list[int]) -> None:
    low = 3
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def relay(client: socket.socket, hub: socket.socket, peer: str) -> None:
    """Pump bytes between the client and the hub until the hub is done with it.

    Every socket is non-blocking and each direction has a bounded buffer, so
    neither a client that does not read nor a hub that is busy can wedge the
    other direction.  Towards the client the child holds one receive's worth
    at most, and reads the hub only while the client takes it: what the
    client has not taken then waits in the hub's Outbox, where the room's
    throttle counts it.  (A relay that buffered more would hide a member
    that does not read, then drop it all at once -- or, counted by the hub,
    drop a member that reads but whose relay got less CPU for a moment.)
    Towards the hub, the child stops reading the client while the hub does
    not take its bytes, so a held room pushes back on the client through TCP.
    The client's EOF is passed on as a half-close; the hub closing its end
    means the client has left or was dropped: flush what is pending, exit.
    """
    client.setblocking(False)
    hub.setblocking(False)
    up, down = bytearray(), bytearray()  # client -> hub, hub -> client
    client_open = hub_open = True  # still reading from each side
    half_close = False  # the client's EOF is still to be passed on to the hub
    poller = select.poll()
    try:
        while hub_open or down:
            watch(poller, client, (select.POLLIN if client_open and not up else 0)
                  | (select.POLLOUT if down else 0))
            watch(poller, hub, (select.POLLIN if hub_open and not down else 0)
                  | (select.POLLOUT if up else 0))
            poller.poll()
            if down:
                del down[:send(client, down)]
            if client_open and not up:
                client_open = fill(client, up, RECV_SIZE)
                half_close = not client_open
            try:  # an error on the hub's side means the parent closed it or died
                if up:
                    del up[:send(hub, up)]
                if half_close:
                    hub.shutdown(socket.SHUT_WR)
                    half_close = False
                if hub_open and not down:
                    hub_open = fill(hub, down, RECV_SIZE)
            except OSError:
                return
    except OSError as exc:  # the client's side: ECONNRESET and friends
        log.info("dropped %s: %s", peer, exc.strerror)


def watch(poller: select.poll, sock: socket.socket, events: int) -> None:
    if events:
        poller.register(sock, events)  # registering again modifies
    else:
        # Left out rather than registered for nothing: poll would still
        # report the socket's hang-up, over and over.
        with contextlib.suppress(KeyError):
            poller.unregister(sock)


def send(sock: socket.socket, data: bytes) -> int:
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0


def fill(sock: socket.socket, buf: bytearray, limit: int) -> bool:
    """Read into buf until it holds `limit` bytes or nothing is left; False at EOF."""
    while len(buf) < limit:
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            return True
        if not data:
            return False
        buf += data
    return True
