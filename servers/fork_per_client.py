"""A process per client: fork() after accept(), the seed's multi-process model.

The parent accepts and forks; the child serves its one client with plain
blocking calls and exits.  The kernel isolates the clients completely --
which is the point, and the problem: processes share no memory, so anything
the clients share needs IPC.

Echo needs nothing shared: the child loops recv/sendall until the client is
done (a blocking sendall is the backpressure) and exits with os._exit(), never
returning into the parent's stack to run the parent's clean-up.

Chat needs the room.  Each child gets one end of a socketpair whose other end
the parent keeps; the parent is a hub (servers/hub.py), an epoll chat room
over those pairs, so the line and output limits, and the room's
backpressure, are enforced there, once.  The child relays bytes between its
client and the hub, both ways, without ever blocking on either side: a
client that stops reading must not stop its own lines reaching the room, and
a hub that is busy must not stall the client.  A client the hub drops has
its child terminated.  The hub also reaps the children (see there).
"""

from __future__ import annotations

import logging
import os
import signal
import socket

from muxbench.net import RECV_SIZE
from servers.hub import Hub, relay
from servers.limits import refuse
from servers.net import at_capacity, format_address, tune

log = logging.getLogger("muxbench.serve")


class ForkServer(Hub):
    def __init__(self, listener: socket.socket, protocol, options) -> None:
        super().__init__(listener, protocol, options)
        # A private protocol (echo) shares nothing between clients: each
        # child serves its client alone, with no hub.
        self.private = protocol.private

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
            keep = [s for s in (sock, child_end) if s is not None]
            pid = self.spawn(lambda: self.child(sock, child_end, peer), keep)
        except OSError as exc:  # EMFILE for the pair, EAGAIN or ENOMEM for fork
            refuse("fork", "refused %s: %s", peer, exc.strerror)
            for s in (sock, hub_end, child_end):
                if s is not None:
                    s.close()
            return
        sock.close()  # the parent's copy: the client is the child's now
        if hub_end is not None:
            child_end.close()
            self.adopt(hub_end, peer, pid)

    def release(self, far: object, dropped: bool) -> None:
        # Dropped by the hub (line too long, output backlog): the child may be
        # stuck writing to a client that does not read, so end it.  A pid
        # still in `children` is not reaped, so it cannot have been reused.
        if dropped and far in self.children:
            os.kill(far, signal.SIGTERM)

    # -- the child ----------------------------------------------------------------

    def child(self, sock: socket.socket, hub: socket.socket | None, peer: str) -> None:
        tune(sock)
        if hub is None:
            self.serve_private(sock, peer)
        else:
            relay(sock, hub, peer)

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
