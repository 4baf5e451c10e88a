"""What only the models with threads, children or admission code of their own can
get wrong (thread, fork, the pools, asyncio/uvloop), checked on real server processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.support import (
    join_room,
    model_params,
    process_tree,
    recv_exactly,
    recv_until_closed,
    say_in_turns,
    serve,
    wait_for,
)

OWN_MODELS = model_params(("thread", "fork", "threadpool", "prefork", "reuseport", "asyncio",
                           "uvloop"))


def live_children(pid: int) -> list[int]:
    """Descendants that have not exited; a zombie is a child nobody reaped."""
    return [p for p in process_tree(pid) if _state(p) not in ("Z", None)]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@pytest.mark.parametrize("protocol", ["echo", "chat"])
def test_thread_count_returns_to_baseline(protocol):
    with serve("thread", protocol) as server:
        proc = psutil.Process(server.proc.pid)
        baseline = proc.num_threads()
        socks = join_room(server, 20) if protocol == "chat" else [server.connect()
                                                                    for _ in range(20)]
        per_client = 2 if protocol == "chat" else 1  # chat adds a writer per member
        for sock in socks:
            if protocol == "echo":
                sock.sendall(b"ping\n")
                assert recv_exactly(sock, 5) == b"ping\n"
        assert proc.num_threads() == baseline + per_client * 20
        for sock in socks:
            sock.close()
        assert wait_for(lambda: proc.num_threads() == baseline), proc.num_threads()


@pytest.mark.parametrize("protocol", ["echo", "chat"])
def test_fork_children_are_reaped_when_clients_leave(protocol):
    with serve("fork", protocol) as server:
        socks = [server.connect() for _ in range(10)]
        for sock in socks:
            sock.sendall(b"ping\n")
            recv_exactly(sock, 5)
        assert len(live_children(server.proc.pid)) == 10
        for sock in socks:
            sock.close()
        # Not only exited: reaped, so no zombie is left in the tree either.
        assert wait_for(lambda: not process_tree(server.proc.pid)), process_tree(server.proc.pid)


def test_fork_chat_lines_cross_processes_in_order():
    with serve("fork", "chat") as server:
        socks = join_room(server, 3)
        assert len(live_children(server.proc.pid)) == 3  # one process per member
        say_in_turns(socks, 50)
        for sock in socks:
            sock.close()


def test_fork_half_close_flushes_through_the_hub():
    with serve("fork", "chat") as server:
        sender, other = join_room(server, 2)
        with sender, other:
            sender.sendall(b"last words\nunterminated")
            sender.shutdown(socket.SHUT_WR)
            assert recv_until_closed(sender) == b"last words\n"
            assert recv_exactly(other, 11) == b"last words\n"
            other.sendall(b"still here\n")
            assert recv_exactly(other, 11) == b"still here\n"


def test_fork_child_of_a_dropped_client_is_terminated():
    with serve("fork", "chat", "--max-output", "65536") as server:
        stalled, talker = join_room(server, 2)
        with stalled, talker:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            line = b"y" * 999 + b"\n"
            talker.settimeout(0.5)
            deadline = time.monotonic() + 20
            # Send until the hub drops the client that never reads; keep reading
            # our own copies so that only the stalled member falls behind.
            while "dropped" not in server.log() and time.monotonic() < deadline:
                talker.sendall(line * 50)
                with contextlib.suppress(TimeoutError):
                    recv_exactly(talker, len(line) * 50)
            assert "dropped" in server.log()
            # Its child was blocked writing to a client that never reads: it
            # must be ended, not left waiting for the client to read or leave.
            assert wait_for(lambda: len(live_children(server.proc.pid)) == 1, 5)


def test_fork_children_die_with_the_parent():
    # Echo children never hear from the parent: only the death signal ends them.
    with serve("fork", "echo") as server:
        socks = [server.connect() for _ in range(3)]
        for sock in socks:
            sock.sendall(b"ping\n")
            assert recv_exactly(sock, 5) == b"ping\n"
        children = live_children(server.proc.pid)
        assert len(children) == 3
        os.kill(server.proc.pid, signal.SIGKILL)  # the parent alone, not the group
        server.proc.wait(5)
        assert wait_for(lambda: all(_state(pid) in ("Z", None) for pid in children), 5)
        for sock in socks:
            assert recv_until_closed(sock) == b""
            sock.close()


@pytest.mark.parametrize("model", OWN_MODELS)
def test_max_clients_refuses_the_excess_and_logs_it(model):
    with serve(model, "echo", "--max-clients", "2") as server:
        a, b = server.connect(), server.connect()
        for sock in (a, b):
            sock.sendall(b"in\n")
            assert recv_exactly(sock, 3) == b"in\n"
        with server.connect() as third:
            assert recv_until_closed(third) == b""
        assert "refused" in server.log() and "--max-clients=2" in server.log()
        a.close()
        # A place came free: the next client is served.
        assert wait_for(lambda: _served(server), 5)
        b.close()


def _served(server) -> bool:
    try:
        with server.connect() as sock:
            sock.sendall(b"again\n")
            return recv_exactly(sock, 6) == b"again\n"
    except ConnectionError:  # refused: the server has not seen the close yet
        return False


@pytest.mark.parametrize("model", OWN_MODELS)
def test_long_line_drops_only_its_sender(model):
    with serve(model, "chat", "--max-line", "100") as server:
        rogue, other = join_room(server, 2)
        with rogue, other:
            rogue.sendall(b"z" * 80)
            rogue.sendall(b"z" * 80)  # 160 bytes and no newline yet: too long
            assert recv_until_closed(rogue) == b""
            assert wait_for(lambda: "line longer than 100 bytes" in server.log(), 5)
            other.sendall(b"ok\n")
            assert recv_exactly(other, 3) == b"ok\n"


@pytest.mark.parametrize("model", OWN_MODELS)
def test_slow_reader_gets_every_line_in_order_from_its_backlog(model):
    """A member that reads slowly is served from its backlog (thread: its writer
    thread; fork: its relay and the hub's Outbox), whole lines, in order."""
    with serve(model, "chat", "--max-output", str(16 * 1024 * 1024)) as server:
        def connect(i: int) -> socket.socket:
            sock = server.connect(timeout=20)
            if i == 0:  # a fixed, small window keeps the kernel from buffering it all
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            return sock

        slow, talker = join_room(server, 2, connect)
        with slow, talker:
            # 6 MB: more than the kernel's socket buffers take, so part of it waits
            # in the server's own backlog.
            payload = b"".join(b"%07d %s\n" % (i, b"w" * 90) for i in range(60000))
            talker.sendall(payload)  # the talker reads its own copy only afterwards
            got = bytearray()
            while len(got) < len(payload):
                chunk = slow.recv(65536)
                assert chunk, "the slow reader was disconnected"
                got += chunk
                time.sleep(0.001)
            assert bytes(got) == payload
            assert recv_exactly(talker, len(payload)) == payload
            assert "dropped" not in server.log()


@pytest.mark.parametrize("model", OWN_MODELS)
def test_signal_right_after_start_still_exits_zero(model):
    """The first moments of run() (asyncio: create_server() still pending; fork
    and thread: before the first accept) must not lose a SIGTERM."""
    for _ in range(8):
        with serve(model, "chat") as server:
            assert server.stop(signal.SIGTERM, timeout=5) == 0
