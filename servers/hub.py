"""A chat room across processes: a hub in the parent, a relay per client.

Processes share no memory, so clients served by different processes can
share a room only through IPC.  The fork model's answer, which prefork and
reuseport take too: the parent is a hub, an epoll chat room (the epoll
model's own machinery) whose members are not clients but one end of a
socketpair each; at the other end a relay pumps bytes between the pair and
the client.  The line and output limits, and the room's backpressure, are
enforced in the hub, once, as in the single-process models; relays only move
bytes.  When the hub drops a member, it ends what is at the far end of the
pair (`release`): the fork model kills that client's child, the worker
models shut the client's socket down.

The hub is also the parent of every process it serves through, and reaps
them as the textbook warns it must: SIGCHLD only wakes the loop (through the
wake fd of servers/shutdown.py), and the loop calls waitpid(-1, WNOHANG)
until none is left, because SIGCHLDs coalesce.  SIGCHLD is never ignored
outright: reaped children's CPU time is how the harness counts their cost.
The parent has no threads, so fork() is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable

from muxbench.lifetime import die_with_parent
from muxbench.net import RECV_SIZE
from servers.epoll_loop import EpollServer
from servers.reactor import Connection

log = logging.getLogger("muxbench.serve")

# Time allowed for the children to die of SIGTERM at shutdown, then of SIGKILL.
STOP_TIMEOUT = 1.2
KILL_TIMEOUT = 0.4


class Hub(EpollServer):
    """A parent process: the room of the clients its children serve, and their reaper."""

    def __init__(self, listener: socket.socket, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        self.children: set[int] = set()  # pids forked and not reaped yet
        self.far: dict[int, object] = {}  # hub fd -> what is at the other end of its pair

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
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.exited(pid, status)

    def exited(self, pid: int, status: int) -> None:
        """A child was reaped."""

    def spawn(self, work: Callable[[], None], keep: list[socket.socket]) -> int:
        """Fork a child that keeps only the sockets in `keep`, runs work() and exits."""
        # Block signals across fork(): until the child has reset its handlers,
        # a SIGTERM would run the parent's handler in the child and unwind
        # the parent's clean-up there.  The parent gets any pending signal
        # when the mask is restored -- by then the child is on record, so
        # the shutdown that signal starts will end and reap it too.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                        signal.signal(signum, signal.SIG_DFL)
                    signal.set_wakeup_fd(-1)
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    die_with_parent()
                    # The listener, the epoll fd and the other children's pipes
                    # are the parent's: holding a copy of another child's pipe
                    # would keep it open after the hub closed it, and that
                    # child would never see EOF.
                    close_fds_except(sorted(s.fileno() for s in keep))
                    work()
                    status = 0
                finally:
                    os._exit(status)  # never back into the parent's stack and clean-up
            self.children.add(pid)
            return pid
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def adopt(self, hub_end: socket.socket, peer: str, far: object) -> None:
        """Seat a pair's end in the room, as a client of the hub; `far` is what is
        at the other end, for release()."""
        self.far[self.register(hub_end, peer).fd] = far

    def release(self, far: object, dropped: bool) -> None:
        """The hub is done with a member: end what is at the far end of its pair
        if the hub dropped it (it may be stuck on a client that does not read)."""

    def close(self, conn: Connection, reason: str | None = None) -> None:
        super().close(conn, reason)
        far = self.far.pop(conn.fd, None)
        if far is not None:
            self.release(far, dropped=bool(reason))

    def close_all(self) -> None:
        for pid in self.children:
            os.kill(pid, signal.SIGTERM)
        super().close_all()
        for far in self.far.values():
            self.release(far, dropped=False)
        self.far.clear()
        # A child dies at once of SIGTERM, but the kernel tears a thousand of
        # them down in a second or more on a busy machine.  The waits are
        # bounded so that shutdown stays within its budget; a child still
        # dying after that is left to init to reap.
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


def close_fds_except(keep: list[int]) -> None:
    low = 3
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


class Relay:
    """Bytes between a client and its pair's end, both ways, until the hub is done with it.

    Every socket is non-blocking and each direction has a bounded buffer, so
    neither a client that does not read nor a hub that is busy can wedge the
    other direction.  Towards the client the relay holds one receive's worth
    at most, and reads the hub only while the client takes it: what the
    client has not taken then waits in the hub's Outbox, where the room's
    throttle counts it.  (A relay that buffered more would hide a member
    that does not read, then drop it all at once -- or, counted by the hub,
    drop a member that reads but whose relay got less CPU for a moment.)
    Towards the hub, the relay stops reading the client while the hub does
    not take its bytes, so a held room pushes back on the client through TCP.
    The client's EOF is passed on as a half-close; the hub closing its end
    means the client has left or was dropped: flush what is pending, end.
    """

    __slots__ = ("client", "client_open", "down", "half_close", "hub", "hub_open", "peer", "up")

    def __init__(self, client: socket.socket, hub: socket.socket, peer: str) -> None:
        client.setblocking(False)
        hub.setblocking(False)
        self.client, self.hub, self.peer = client, hub, peer
        self.up, self.down = bytearray(), bytearray()  # client -> hub, hub -> client
        self.client_open = self.hub_open = True  # still reading from each side
        self.half_close = False  # the client's EOF is still to be passed on to the hub

    def wants(self) -> tuple[tuple[bool, bool], tuple[bool, bool]]:
        """Whether to wait to (read, write) the client, and the hub."""
        return ((self.client_open and not self.up, bool(self.down)),
                (self.hub_open and not self.down, bool(self.up)))

    def step(self) -> bool:
        """Move what each side will take now; False once the relay is over."""
        try:
            if self.down:
                del self.down[:send(self.client, self.down)]
            if self.client_open and not self.up:
                self.client_open = fill(self.client, self.up, RECV_SIZE)
                self.half_close = not self.client_open
            try:  # an error on the hub's side means the parent closed it or died
                if self.up:
                    del self.up[:send(self.hub, self.up)]
                if self.half_close:
                    self.hub.shutdown(socket.SHUT_WR)
                    self.half_close = False
                if self.hub_open and not self.down:
                    self.hub_open = fill(self.hub, self.down, RECV_SIZE)
            except OSError:
                return False
        except OSError as exc:  # the client's side: ECONNRESET and friends
            # Unless the hub let go first: it dropped the client, and said why.
            if not hung_up(self.hub):
                log.info("dropped %s: %s", self.peer, exc.strerror)
            return False
        return self.hub_open or bool(self.down)


def relay(client: socket.socket, hub: socket.socket, peer: str) -> None:
    """Relay one client until the hub is done with it: a child's whole life."""
    link = Relay(client, hub, peer)
    poller = select.poll()
    while True:
        for sock, (read, write) in zip((client, hub), link.wants(), strict=True):
            watch(poller, sock, (select.POLLIN if read else 0) | (select.POLLOUT if write else 0))
        poller.poll()
        if not link.step():
            return


def watch(poller: select.poll, sock: socket.socket, events: int) -> None:
    if events:
        poller.register(sock, events)  # registering again modifies
    else:
        # Left out rather than registered for nothing: poll would still
        # report the socket's hang-up, over and over.
        with contextlib.suppress(KeyError):
            poller.unregister(sock)


def hung_up(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, 0)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


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
