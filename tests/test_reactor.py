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

from muxbench.net import RECV_SIZE
from servers.epoll_loop import EdgeTriggeredEpollServer, EpollServer
from servers.models import Options
from servers.protocol import Chat, Echo, Limits
from servers.reactor import Connection
from servers.shutdown import Shutdown


def built(server_class, protocol) -> Iterator:
    wake_r, wake_w = os.pipe()
    listener = socket.create_server(("127.0.0.1", 0))
    server = server_class(listener, protocol, Options(wake_fd=wake_r))
    try:
        yield server
    finally:
        server.close_all()
        os.close(wake_r)
        os.close(wake_w)


@pytest.fixture
def edge_triggered() -> Iterator[EdgeTriggeredEpollServer]:
    yield from built(EdgeTriggeredEpollServer, Echo(Limits()))


@pytest.fixture
def level_triggered() -> Iterator[EpollServer]:
    yield from built(EpollServer, Echo(Limits()))


@pytest.fixture
def chat_room() -> Iterator[EpollServer]:
    """Level-triggered epoll serving a chat room."""
    yield from built(EpollServer, Chat(Limits()))


def seated(server, name: str) -> tuple[socket.socket, Connection]:
    client, served = socket.socketpair()
    return client, server.register(served, name)


def queued(sock: socket.socket) -> int:
    """Bytes waiting to be read on sock, read and counted without blocking."""
    total = 0
    while True:
        try:
            total += len(sock.recv(1 << 20, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return total


def hog(server, budget: int, reads: int) -> tuple[socket.socket, Connection]:
    """A client seated with `reads` full reads' worth queued; the budget set to `budget`.

    Each RECV_SIZE goes in its own write, so that each read takes exactly one.
    """
    server.EDGE_READS = budget
    client, conn = seated(server, "hog")
    for _ in range(reads):
        client.sendall(b"h" * RECV_SIZE)
    return client, conn


def test_one_report_reads_at_most_its_budget_and_the_loop_comes_back(edge_triggered):
    server = edge_triggered
    client, conn = hog(server, budget=2, reads=3)  # queued before the report is handled
    with client:
        server.on_readable(conn)  # one edge-triggered report
        assert server.unfinished == {conn.fd: conn}  # budget spent, data left: on the list
        assert queued(client) == 2 * RECV_SIZE

        server.read_unfinished()  # the loop's next round
        assert server.unfinished == {}  # read to EAGAIN this time
        assert queued(client) == RECV_SIZE


def test_a_connection_closed_while_on_the_ready_list_is_not_read(edge_triggered):
    server = edge_triggered
    client, conn = hog(server, budget=1, reads=2)
    with client:
        server.on_readable(conn)
        assert conn.fd in server.unfinished
        server.close(conn, "gone")
        server.read_unfinished()  # must not touch the closed socket
        assert server.unfinished == {}
        assert conn.sock.fileno() == -1


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


def test_a_round_of_reports_is_written_at_flush_in_the_order_it_was_read(chat_room):
    server = chat_room
    (a, conn_a), (b, conn_b) = seated(server, "a"), seated(server, "b")
    with a, b:
        b.sendall(b"from b\n")
        a.sendall(b"from a\n")
        server.read(conn_b)  # one round: b's report came first
        server.read(conn_a)
        assert queued(a) == queued(b) == 0  # read, not yet written
        assert len(server.pending) == 2  # one per line read, however many receive it
        server.flush()
        assert server.pending == []
        for client in (a, b):
            assert client.recv(100, socket.MSG_DONTWAIT) == b"from b\nfrom a\n"


def test_a_delivery_to_a_connection_closed_within_the_round_is_dropped(chat_room):
    server = chat_room
    (a, conn_a), (b, conn_b) = seated(server, "a"), seated(server, "b")
    with a, b:
        a.sendall(b"hello\n")
        server.read(conn_a)
        server.close(conn_b, "reset")  # later in the same round
        server.flush()  # must not write to b's closed socket
        assert a.recv(100, socket.MSG_DONTWAIT) == b"hello\n"
        assert b.recv(100) == b""


def test_an_eof_read_in_the_same_round_as_data_does_not_lose_the_data(level_triggered):
    """RFC 862 with a half-close: the echo of what came before the EOF is sent
    before the connection closes, even when both are read in one round."""
    server = level_triggered
    client, conn = seated(server, "half-closer")
    with client:
        client.sendall(b"last words")
        client.shutdown(socket.SHUT_WR)
        server.read(conn)  # the data: its echo waits for the round's flush
        server.read(conn)  # the EOF, in the same round
        assert conn.fd not in server.conns
        assert client.recv(100) == b"last words"
        assert client.recv(100) == b""


def test_a_newcomer_given_a_closed_clients_fd_gets_none_of_the_rounds_lines(chat_room):
    """Pending deliveries name receivers by fd; the fd of a client closed in
    the round may go to the next one accepted, which must not inherit them."""
    server = chat_room
    (a, conn_a), (b, conn_b) = seated(server, "a"), seated(server, "b")
    newcomer = socket.create_connection(server.listener.getsockname())
    with a, b, newcomer:
        a.sendall(b"before you came\n")
        server.read(conn_a)
        freed = conn_b.fd
        server.close(conn_b, "reset")
        server.on_acceptable()  # the same round: the newcomer is accepted
        (conn_new,) = (conn for conn in server.conns.values() if conn.peer != "a")
        assert conn_new.fd == freed  # the lowest free descriptor: b's
        server.flush()
        assert a.recv(100, socket.MSG_DONTWAIT) == b"before you came\n"
        with pytest.raises(BlockingIOError):
            newcomer.recv(100, socket.MSG_DONTWAIT)


@pytest.fixture
def held_room() -> Iterator[tuple[EpollServer, list[float]]]:
    """Level-triggered epoll serving a chat room whose throttle reads a clock
    the test moves by hand (now[0]): half of the 64 KiB limit holds the room."""
    now = [0.0]
    room = Chat(Limits(max_output=65536, max_stall=2.0), clock=lambda: now[0])
    for server in built(EpollServer, room):
        yield server, now


def fall_behind(server, talker, conn_talker, idle_conn) -> None:
    """Talk until the member that does not read holds the room (bounded)."""
    line = b"x" * 1023 + b"\n"
    for _ in range(1000):
        if server.paused:
            return
        talker.sendall(line * 16)
        server.read(conn_talker)
        server.flush()
        queued(talker)  # the talker reads its own copies
    pytest.fail(f"never held: the idle member's backlog is {len(idle_conn.outbox)} bytes")


def test_a_member_behind_holds_the_room_until_it_is_overdue(held_room):
    server, now = held_room
    (idle, conn_idle), (talker, conn_talker) = seated(server, "idle"), seated(server, "talker")
    conn_idle.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # little hidden
    with idle, talker:
        fall_behind(server, talker, conn_talker, conn_idle)
        assert conn_talker.interest[0] is False  # no member is read while one is behind
        talker.sendall(b"held\n")
        assert server.read(conn_talker) is False
        assert server.timeout() == 2.0
        now[0] = 1.9
        server.expire()
        assert conn_idle.fd in server.conns  # not yet
        now[0] = 2.0
        server.expire()
        assert conn_idle.fd not in server.conns  # dropped: it took nothing for 2 s
        assert not server.paused and conn_talker.interest == (True, False)
        assert server.timeout() is None
        assert server.read(conn_talker) is True
        server.flush()
        assert talker.recv(100, socket.MSG_DONTWAIT) == b"held\n"


def test_a_member_behind_that_keeps_taking_bytes_is_kept(held_room):
    server, now = held_room
    (slow, conn_slow), (talker, conn_talker) = seated(server, "slow"), seated(server, "talker")
    conn_slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with slow, talker:
        fall_behind(server, talker, conn_talker, conn_slow)
        for _ in range(100):  # a read now and then, each within --max-stall of the last
            if not server.paused:
                break
            now[0] += 1.5
            slow.recv(4096)
            server.on_writable(conn_slow)
            server.expire()
            assert conn_slow.fd in server.conns
        assert not server.paused  # caught up to the low water mark: the room reads again
        assert conn_talker.interest[0] is True
