"""SO_REUSEPORT: worker processes, each with a listener of its own on the same port.

nginx's model (`listen ... reuseport`): --workers processes, each an epoll
loop over its own listening socket, every one bound to the same address with
SO_REUSEPORT (Linux 3.9).  The kernel picks a listener for each connection
by a hash of its addresses and ports, so each worker has an accept queue of
its own: no queue shared, no herd to wake, no lock to take.  The price is in
the hash: connections spread evenly in number, not by who is idle, so a
worker that is busy still gets its share of new clients, which wait.

The parent makes every listener before `muxbench serve` says where it
listens, so that no connection is refused meanwhile: the first is the one
`muxbench serve` made (with SO_REUSEPORT, which this model's entry asks
for), and the others bind beside it -- with --port 0, to the port the kernel
picked for the first.  Only sockets of the same effective user may join the
group: another user cannot bind the port beside the server, though the same
user can, and would take a share of its connections.  After that the workers
are the prefork model's (servers/workers.py), each with its own listener.
"""

from __future__ import annotations

import socket

from servers.net import tcp_listen
from servers.workers import WorkerPool


class ReuseportServer(WorkerPool):
    own_queues = True

    def __init__(self, listener: socket.socket, protocol, options) -> None:
        host, port = listener.getsockname()[:2]
        self.own = [listener] + [tcp_listen(host, port, reuse_port=True)
                                 for _ in range(1, options.workers)]
        super().__init__(listener, protocol, options)  # which forks the workers

    def listeners(self) -> list[socket.socket]:
        return self.own
