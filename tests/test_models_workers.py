"""What only the models sized by --workers can get wrong: a fixed pool that
serves any number of clients, and a room spread over workers."""

from __future__ import annotations

import psutil
import pytest

from tests.support import join_room, recv_exactly, say_in_turns, serve


@pytest.mark.parametrize("workers", [1, 3])
def test_threadpool_serves_a_room_from_a_fixed_pool_in_order(workers):
    with serve("threadpool", "chat", "--workers", str(workers)) as server:
        socks = join_room(server, 12)
        try:
            # The dispatcher and the pool: no thread per client.
            assert psutil.Process(server.proc.pid).num_threads() == 1 + workers
            say_in_turns(socks, 40)
        finally:
            for sock in socks:
                sock.close()


def test_threadpool_full_queue_waits_and_loses_nothing():
    """A hundred clients ready at once, far more than one worker's queue holds:
    the dispatcher waits for room in it, and every byte still comes back."""
    with serve("threadpool", "echo", "--workers", "1") as server:
        socks = [server.connect() for _ in range(100)]
        try:
            payloads = [bytes([i]) * 4096 for i in range(len(socks))]
            for sock, payload in zip(socks, payloads, strict=True):
                sock.sendall(payload)
            for sock, payload in zip(socks, payloads, strict=True):
                assert recv_exactly(sock, len(payload)) == payload
        finally:
            for sock in socks:
                sock.close()


def test_workers_is_refused_where_it_means_nothing():
    with (pytest.raises(RuntimeError, match="does not apply to the epoll model"),
          serve("epoll", "echo", "--workers", "2")):
        pass
