"""What only the models sized by --workers can get wrong: a fixed pool that
serves any number of clients, and a room spread over worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

import psutil
import pytest

from tests.support import (
    join_room,
    process_tree,
    recv_exactly,
    recv_until_closed,
    say_in_turns,
    serve,
    wait_for,
)

POOLS = ["prefork", "reuseport"]


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


# -- prefork and reuseport: worker processes -------------------------------------------


def workers_of(server, n: int) -> list[int]:
    """The server's n worker processes, once it has forked them all."""
    assert wait_for(lambda: len(process_tree(server.proc.pid)) == n, 10)
    return process_tree(server.proc.pid)


def state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


LISTEN = 0x0A  # a state in /proc/net/tcp


def sockets_on(port: int) -> list[tuple[int, int, int]]:
    """(remote port, state, inode) of each IPv4 TCP socket whose local port is `port`.

    The table is read a page at a time, and a row can be missed when others
    (another process's connections, on a busy machine) come and go meanwhile:
    callers look again until they find what they wait for."""
    local = f":{port:04X}"
    rows = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1].endswith(local):
                rows.append((int(fields[2].rsplit(":", 1)[1], 16), int(fields[3], 16),
                             int(fields[9])))
    return rows


def holders(inode: int, pids: list[int]) -> list[int]:
    """Which of pids hold the socket with this inode."""
    return [pid for pid in pids if f"socket:[{inode}]" in open_files(pid)]


def open_files(pid: int) -> set[str]:
    files = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            files.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return files


def accepted_by(server, client: socket.socket, workers: list[int]) -> int | None:
    """The worker that accepted `client`: the one holding the server's end of it
    (an inode once accepted; the chat hub holds a copy, and is no worker)."""
    port = client.getsockname()[1]
    for remote, _, inode in sockets_on(server.port):
        if remote == port and inode and (owners := holders(inode, workers)):
            return owners[0]
    return None


def connect_to_worker(server, workers: list[int], stopped: int | None) -> tuple[socket.socket, int]:
    """A new client, and the worker that accepted it.

    `stopped` is held in SIGSTOP meanwhile.  A worker that is not waiting in
    epoll_wait takes no EPOLLEXCLUSIVE wake-up, so another prefork worker
    must accept; a reuseport worker's own queue keeps what the hash gave it."""
    if stopped is not None:
        os.kill(stopped, signal.SIGSTOP)
    try:
        assert stopped is None or wait_for(lambda: state(stopped) == "T", 10)
        sock = server.connect(timeout=10)
        worker = None

        def accepted() -> bool:
            nonlocal worker
            worker = accepted_by(server, sock, workers)
            return worker is not None

        assert wait_for(accepted, 10), f"no worker accepted {sock.getsockname()}:\n{server.log()}"
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
    return sock, worker


@pytest.mark.parametrize("model", POOLS)
def test_chat_members_on_different_workers_hear_each_other_in_order(model):
    with serve(model, "chat", "--workers", "2") as server:
        workers = workers_of(server, 2)
        members: list[socket.socket] = []
        where: list[int] = []
        try:
            # Prefork: an idle first worker is woken for every connection, so it is
            # stopped while the next one connects.  Reuseport: the hash of the
            # client's port picks the worker; another client is tried until it differs.
            while len(set(where)) < 2 and len(members) < 40:
                stopped = where[0] if model == "prefork" and where else None
                sock, worker = connect_to_worker(server, workers, stopped)
                members.append(sock)
                where.append(worker)
                # Seated once it hears itself; so is everyone before it (the
                # hub reads the workers' hand-overs in the order they were sent).
                hello = b"hello %d\n" % len(members)
                sock.sendall(hello)
                for member in members:
                    assert recv_exactly(member, len(hello)) == hello
            assert set(where) == set(workers), where
            say_in_turns(members, 40)
        finally:
            for sock in members:
                sock.close()


@pytest.mark.parametrize("protocol", ["echo", "chat"])
@pytest.mark.parametrize("model", POOLS)
def test_workers_die_with_the_parent(model, protocol):
    with serve(model, protocol, "--workers", "2") as server:
        workers = workers_of(server, 2)
        socks = join_room(server, 3) if protocol == "chat" else [server.connect()
                                                                for _ in range(3)]
        try:
            for sock in socks:
                sock.sendall(b"ping\n")
            for sock in socks:  # chat: every member hears all three
                expected = b"ping\n" * (3 if protocol == "chat" else 1)
                assert recv_exactly(sock, len(expected)) == expected
            os.kill(server.proc.pid, signal.SIGKILL)  # the parent alone, not the group
            server.proc.wait(5)
            assert wait_for(lambda: all(state(pid) in ("Z", None) for pid in workers), 5)
            for sock in socks:
                assert recv_until_closed(sock) == b""
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.parametrize("model, listeners", [("prefork", 1), ("reuseport", 3)])
def test_prefork_workers_share_a_listener_reuseport_workers_have_one_each(model, listeners):
    with serve(model, "echo", "--workers", "3") as server:
        workers = workers_of(server, 3)

        def found() -> list[int]:  # the listening sockets on the port announced
            return [inode for _, state_, inode in sockets_on(server.port) if state_ == LISTEN]

        assert wait_for(lambda: len(found()) == listeners, 10), found()
        held = [holders(inode, workers) for inode in found()]
        if model == "prefork":
            assert held == [workers]  # one, which every worker accepts from
        else:
            assert sorted(held) == sorted([pid] for pid in workers), held  # one each
