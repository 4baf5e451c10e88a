"""The shared reactor's bookkeeping, driven step by step in-process on real sockets.

The model tests (test_servers.py) show behaviour from outside; here a single
readiness report is handed to the reactor by hand, so what it does with it is
checked exactly rather than by timing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from servers.epoll_loop import EdgeTriggeredEpollServer
from servers.models import Options
from servers.protocol import Echo, Limits
from servers.shutdown import Shutdown


@pytest.fixture
def edge_triggered() -> Iterator[EdgeTriggeredEpollServer]:
    wake_r, wake_w = os.pipe()
    listener = socket.create_server(("127.0.0.1", 0))
    server = EdgeTriggeredEpollServer(listener, Echo(Limits()), Options(wake_fd=wake_r))
    try:
        yield server
    finally:
        server.close_all()
        os.close(wake_r)
        os.close(wake_w)


def test_shutdown_closes_a_connection_the_signal_caught_half_registered(edge_triggered):
    """Shutdown is raised wherever the signal finds the loop -- here, after a
    connection was seated but before it was watched.  Closing everything must
    still work, and close that connection too."""
    server = edge_triggered
    client, served = socket.socketpair()

    def signal_lands(conn) -> None:
        raise Shutdown(15)

    server.watch = signal_lands
    with client:
        with pytest.raises(Shutdown):
            server.register(served, "late")
        assert len(server.conns) == 1
        server.close_all()
        assert server.conns == {}
        assert client.recv(1) == b""  # the server's end is closed
