"""What every model must survive, each model x both protocols, with real sockets."""

from __future__ import annotations

import os
import resource
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from tests.support import (
    AVAILABLE,
    join_room,
    recv_exactly,
    recv_until_closed,
    serve,
    wait_for,
)

PROTOCOLS = ["echo", "chat"]


@pytest.fixture(params=AVAILABLE)
def model(request) -> str:
    return request.param


@pytest.fixture(params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def exchange(server, protocol: str, sock: socket.socket, payload: bytes = b"ping 1\n") -> None:
    """One request on an open connection; asserts the reply (echo: same bytes; chat: the line)."""
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


def read_concurrently(sock: socket.socket, n: int) -> tuple[threading.Thread, bytearray]:
    got = bytearray()

    def reader() -> None:
        while len(got) < n:
            chunk = sock.recv(65536)
            if not chunk:
                return
            got.extend(chunk)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread, got


def test_big_transfer_with_partial_writes(model, protocol):
    """Multi-MiB in one go: the server's sends are partial and must be resumed in order."""
    with serve(model, protocol) as server, server.connect(timeout=20) as sock:
        if protocol == "echo":
            payload = os.urandom(4 * 1024 * 1024)
        else:  # many lines, none longer than the line limit
            payload = b"".join(b"%06d %s\n" % (i, b"x" * 900) for i in range(4000))
        thread, got = read_concurrently(sock, len(payload))
        sock.sendall(payload)
        thread.join(20)
        assert bytes(got) == payload


def test_message_split_across_writes_arrives_whole(model, protocol):
    with serve(model, protocol) as server:
        # Chat: both must be members before a's line.
        a, b = join_room(server, 2) if protocol == "chat" else (server.connect(), server.connect())
        with a, b:
            for piece in (b"hel", b"lo wo", b"rld", b"\n"):
                a.sendall(piece)
                time.sleep(0.02)
            assert recv_exactly(a, 12) == b"hello world\n"
            if protocol == "chat":
                assert recv_exactly(b, 12) == b"hello world\n"


def test_half_close_gets_everything_back_then_close(model, protocol):
    with serve(model, protocol) as server, server.connect() as sock:
        payload = b"line one\nline two\n" * 2000 + b"unterminated"
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = recv_until_closed(sock)
        expected = payload if protocol == "echo" else payload.rsplit(b"\n", 1)[0] + b"\n"
        assert got == expected


def test_a_client_sending_without_pause_does_not_starve_the_others(model):
    """epoll(7)'s warning: a loop that drains one fd until EAGAIN while its
    client keeps sending serves nobody else.  Each ping must come back while
    the flood goes on, well within the bound (milliseconds, in practice)."""
    with serve(model, "echo") as server:
        hog, other = server.connect(timeout=10), server.connect(timeout=10)
        stop = threading.Event()

        def flood() -> None:
            chunk = b"h" * (1 << 20)
            while not stop.is_set():
                hog.sendall(chunk)

        flooder = threading.Thread(target=flood, daemon=True)
        drainer, _ = read_concurrently(hog, 1 << 62)  # reads until the server closes
        with hog, other:
            exchange(server, "echo", other, b"seated")
            flooder.start()
            try:
                time.sleep(0.2)  # the flood is under way
                for i in range(5):
                    started = time.monotonic()
                    exchange(server, "echo", other, b"ping %d" % i)
                    assert time.monotonic() - started < 2.0, "starved by the flooding client"
                    assert flooder.is_alive()
            finally:
                stop.set()
                flooder.join(10)
                hog.shutdown(socket.SHUT_WR)
                drainer.join(10)


def test_reset_mid_traffic_does_not_hurt_the_others(model, protocol):
    with serve(model, protocol) as server, server.connect() as steady:
        for _ in range(20):
            victim = server.connect()
            victim.sendall(b"y" * 200_000 + b"\n")  # the server is mid-reply when the RST lands
            reset(victim)
        exchange(server, protocol, steady, b"still here\n")
        assert server.proc.poll() is None


def test_reset_between_readiness_and_accept(model, protocol):
    with serve(model, protocol) as server:
        for _ in range(50):  # queued connections reset before the server accepts them
            sock = socket.socket()
            sock.connect(server.address)
            reset(sock)
        with server.connect() as sock:
            exchange(server, protocol, sock)
        assert server.proc.poll() is None


def test_eleven_hundred_clients(model, protocol):
    """select refuses fds >= FD_SETSIZE with a log line; everyone else serves all of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    clients: list[socket.socket] = []
    try:
        with serve(model, protocol) as server:
            for _ in range(1100):
                clients.append(server.connect(timeout=20))
            if protocol == "chat":
                # Every client must be a member before the first one's "hi".  (select
                # refuses the last ones.)
                speaker = clients[900 if model == "select" else -1]
                speaker.settimeout(120)  # fork: a thousand forks take a while on a busy box
                exchange(server, protocol, speaker, b"sync\n")
                hear_all(speaker, clients, b"sync\n", deadline=120.0)
                clients[0].sendall(b"hi\n")
            else:
                for sock in clients:
                    sock.sendall(b"hi\n")
            replies = gather(clients, b"hi\n", deadline=3.0 if model == "select" else 60.0)
            served = sum(b"hi\n" in reply for reply in replies)
            if model != "select" and served != len(clients):
                missing = next(r for r in replies if b"hi\n" not in r)
                pytest.fail(f"a client got {missing!r}; server log:\n{server.log()}")
            if model == "select":
                assert 900 < served < 1024, served
                assert "FD_SETSIZE" in server.log()
            else:
                assert served == 1100
            assert server.proc.poll() is None
    finally:
        for sock in clients:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def gather(socks: list[socket.socket], marker: bytes, deadline: float,
           again: Callable[[], object] | None = None) -> list[bytearray]:
    """Read all sockets at once until each got `marker`, was closed, or time ran out;
    `again()` is called every AGAIN seconds meanwhile."""
    import selectors

    replies = [bytearray() for _ in socks]
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(socks):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, i)
        end = time.monotonic() + deadline
        next_again = time.monotonic() + AGAIN
        while sel.get_map() and time.monotonic() < end:
            for key, _ in sel.select(0.5):
                try:
                    chunk = key.fileobj.recv(256)
                except ConnectionResetError:
                    chunk = b""
                replies[key.data] += chunk
                if not chunk or marker in replies[key.data]:
                    sel.unregister(key.fileobj)
            if again is not None and time.monotonic() >= next_again:
                again()
                next_again = time.monotonic() + AGAIN
    return replies


AGAIN = 2.0  # seconds


def hear_all(speaker: socket.socket, socks: list[socket.socket], line: bytes,
             deadline: float) -> None:
    """Until each of socks heard the speaker say `line`, was closed, or time ran out:
    each that heard it is then a chat member (the caller checks what follows).
    Connecting earlier is not being seated earlier where workers accept from
    queues of their own (reuseport): one that was not seated yet when the line
    went out hears it said again."""
    speaker.sendall(line)
    gather(socks, line, deadline, again=lambda: speaker.sendall(line))


def limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))


def test_out_of_descriptors_keeps_serving_without_spinning(model, protocol):
    with serve(model, protocol, preexec_fn=limit_fds) as server:
        first = server.connect()
        # Served before the others come: a worker of its own accept queue (reuseport)
        # may meet them first otherwise.
        exchange(server, protocol, first, b"first\n")
        extra = [socket.create_connection(server.address) for _ in range(80)]
        try:
            # The excess connections are shed or wait in the queue: either way the server
            # must not spin on a listener it cannot accept from.
            proc = psutil.Process(server.proc.pid)
            tree = [proc, *proc.children(recursive=True)]
            before = sum(sum(p.cpu_times()[:2]) for p in tree)
            time.sleep(1.0)
            after = sum(sum(p.cpu_times()[:2]) for p in tree if p.is_running())
            if model != "polling":  # polling spins by design
                assert after - before < 0.3, f"{after - before:.2f} s CPU in 1 s while idle"
            exchange(server, protocol, first, b"again\n")
        finally:
            first.close()
            for sock in extra:
                sock.close()


def test_reader_that_never_reads_is_dropped_and_others_keep_up(model):
    with serve(model, "chat", "--max-output", "262144") as server:
        def connect(i: int) -> socket.socket:
            sock = server.connect(timeout=10)
            if i == 0:  # the one that stalls
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            return sock

        stalled, talker, listener = join_room(server, 3, connect)
        with stalled, talker, listener:
            line = b"x" * 1000 + b"\n"
            batches, batch = 60, line * 100  # 6 MB: far past kernel buffers plus the limit
            thread, got = read_concurrently(listener, len(batch) * batches)
            echo_thread, echoed = read_concurrently(talker, len(batch) * batches)
            rss = psutil.Process(server.proc.pid).memory_info().rss
            for i in range(1, batches + 1):
                talker.sendall(batch)
                # The readers keep up (each stays within the limit); only `stalled` lags.
                assert wait_for(lambda i=i: min(len(got), len(echoed)) >= i * len(batch), 10), (
                    f"after batch {i}: listener {len(got)}, talker {len(echoed)} bytes; "
                    f"log:\n{server.log()}")
            thread.join(5)
            echo_thread.join(5)
            assert bytes(got) == batch * batches
            assert server.log().count("dropped") == 1, server.log()
            grown = psutil.Process(server.proc.pid).memory_info().rss - rss
            assert grown < 32 * 1024 * 1024, f"server grew {grown / 2**20:.1f} MiB"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero_quickly_and_leaves_nothing(model, protocol, sig):
    with serve(model, protocol) as server:
        clients = [server.connect() for _ in range(5)]
        for sock in clients:
            exchange(server, protocol, sock, b"hello\n") if protocol == "echo" else None
        pgid = os.getpgid(server.proc.pid)
        start = time.monotonic()
        assert server.stop(sig, timeout=5) == 0
        assert time.monotonic() - start < 2.0
        assert wait_for(lambda: not _group_alive(pgid), 2.0), "a process of the server survived"
        for sock in clients:
            sock.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_bad_port_is_one_line_and_status_two(tmp_path):
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "muxbench.cli", "serve", "epoll", "--port", str(port)],
            capture_output=True, text=True, timeout=10,
        )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "in use" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "muxbench.cli", "serve", "epoll", "--host", "no.such.host.invalid"],
        capture_output=True, text=True, timeout=10,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    # Past 65535 a port must be refused, not wrapped round to another one.
    wrapped = subprocess.run(
        [sys.executable, "-m", "muxbench.cli", "serve", "epoll", "--port", "70000"],
        capture_output=True, text=True, timeout=10,
    )
    assert wrapped.returncode == 2 and wrapped.stdout == ""
    assert "--port: must be between 0 and 65535" in wrapped.stderr.splitlines()[-1]
