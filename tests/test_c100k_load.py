"""Many connections, small numbers: spread over processes and source addresses,
refused before the run when they cannot fit, and servers at their descriptor limit."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import threading
import time
from collections import Counter

import pytest

from loadgen.capacity import CapacityError, spread
from muxbench.limits import Nofile, port_range
from muxbench.procs import kill_group, spawn
from servers.limits import HEADROOM_FDS
from tests.support import (
    MUXBENCH,
    ROOT,
    await_window,
    model_params,
    process_tree,
    recv_exactly,
    recv_until_closed,
    serve,
    wait_for,
)


def nofile(limit: int):
    """A preexec_fn: soft and hard RLIMIT_NOFILE both `limit`, so nothing can raise it."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def load(port: int, *args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    argv = [*MUXBENCH, "load", "--port", str(port), "--duration", "0.3", "--warmup", "0",
            "--json", *args]
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                 preexec_fn=nofile(limit) if limit else None)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_procs_chosen_to_stay_under_a_lowered_descriptor_limit() -> None:
    with serve("epoll") as server:
        run = load(server.port, "--workload", "sparse", "--clients", "500", "--active", "3",
                   limit=200)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    # 200 descriptors, 32 kept for the worker's own: 168 connections each at most.
    assert out["procs"] >= 3
    connect = out["connect"]
    assert connect["wanted"] == connect["held"] == out["connected"] == 500
    assert connect["failed"] == 0 and connect["nofile_limit"] == 200
    assert out["active"] == 3 and out["idle"] == 497 and out["received"] > 0
    memory = out["generator_memory"]
    assert memory["pss_bytes"] > 0 and memory["uss_bytes"] >= memory["workers_uss_bytes"] > 0
    assert memory["uss_per_connection_bytes"] == memory["workers_uss_bytes"] / 500


def server_peers(port: int) -> Counter[str]:
    """Peer addresses of the established connections to the server's port, from ss."""
    lines = subprocess.run(["ss", "-Htn", "state", "established", "src", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    return Counter(line.split()[-1].rpartition(":")[0] for line in lines)


def test_connections_come_from_every_source_address_in_turn() -> None:
    with serve("epoll") as server:
        argv = [*MUXBENCH, "load", "--port", str(server.port), "--workload", "idle",
                "--clients", "30", "--source", "127.0.0.2-127.0.0.4", "--connect-rate", "3000",
                "--duration", "3", "--warmup", "0", "--json"]
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            await_window(proc)
            peers = server_peers(server.port)
        finally:
            kill_group(proc)
            out, err = proc.communicate()
    assert peers == {"127.0.0.2": 10, "127.0.0.3": 10, "127.0.0.4": 10}, (peers, out, err)


def _listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0), backlog=512)
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize("args, limit, says", [
    (["--clients", "500", "--procs", "1"], 200,
     "--procs 1 cannot hold 500 connections: 168 connections per process"),
    (["--clients", "500"], 30, "descriptor limit 30 leaves no room for connections"),
    (["--clients", "30000", "--source", "127.0.0.2"], None,
     "need 2 source addresses (ephemeral ports"),
    (["--clients", "10", "--source", "10.0.0.1-10.0.0.3"], None, "not loopback"),
    (["--clients", "10", "--source", "127.0.0.9-127.0.0.2"], None, "range ends before"),
])
def test_a_count_that_cannot_fit_is_refused_before_any_connect(args, limit, says) -> None:
    with _listener() as listener:
        run = load(listener.getsockname()[1], "--workload", "idle", *args, limit=limit)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and says in run.stderr, run.stderr


def test_sources_are_spread_automatically_when_one_address_has_too_few_ports() -> None:
    limit = Nofile(20000, 20000, 20000)
    low, high = port_range()
    ports = high - low + 1
    few = spread(1000, None, 2, None, True, limit)
    assert few.sources == [] and few.procs == 2
    many = spread(3 * ports, None, 2, None, True, limit)
    assert len(many.sources) == 6 and many.sources[0] == "127.0.0.2"  # half of each used
    assert many.procs == -(-3 * ports // (20000 - 32))
    with pytest.raises(CapacityError, match="give this host's addresses with --source"):
        spread(3 * ports, None, 2, None, False, limit)


LIMIT = 64  # descriptors of the server under test


@pytest.mark.parametrize("model", model_params(["epoll", "poll", "asyncio", "uvloop"]))
def test_server_at_its_descriptor_limit_refuses_in_one_line_and_serves_the_rest(model) -> None:
    clients: list[socket.socket] = []
    with serve(model, "echo", preexec_fn=nofile(LIMIT)) as server:
        try:
            for _ in range(2 * LIMIT):
                clients.append(server.connect())
            served = _echo_each(clients, b"ping")
            assert LIMIT - HEADROOM_FDS <= len(served) < LIMIT
            # The ones it holds are still served after the refusals.
            assert _echo_each(served, b"again") == served
            assert server.proc.poll() is None
            lines = [line for line in server.log().splitlines() if "refused" in line]
            assert len(lines) == 1 and "RLIMIT_NOFILE 64" in lines[0], server.log()
        finally:
            for sock in clients:
                sock.close()


def _echo_each(clients: list[socket.socket], data: bytes) -> list[socket.socket]:
    """The clients that echoed `data`; the others must have been closed cleanly."""
    served = []
    for sock in clients:
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            sock.sendall(data)
            reply = recv_exactly(sock, len(data))
            if reply == data:
                served.append(sock)
                continue
            assert reply == b"" and recv_until_closed(sock) == b""
    return served


@pytest.mark.parametrize("model, clients", [("prefork", 60), ("reuseport", 100)])
def test_full_workers_leave_the_rest_to_the_others(model, clients) -> None:
    """Two workers of 64 descriptors hold 32 clients each at most.  prefork's full
    worker stops accepting and the other takes the shared queue: all 60 are served.
    reuseport's sheds what its own queue gets: the excess is closed, never hung."""
    socks: list[socket.socket] = []
    with serve(model, "echo", "--workers", "2", preexec_fn=nofile(LIMIT)) as server:
        try:
            for _ in range(clients):
                socks.append(server.connect())
            served = _echo_each(socks, b"ping")
            if model == "prefork":
                assert len(served) == clients
            else:
                assert LIMIT // 2 <= len(served) <= 2 * (LIMIT - HEADROOM_FDS)
            assert _echo_each(served, b"again") == served
            lines = [line for line in server.log().splitlines() if "full" in line]
            assert len(lines) <= 2 and server.proc.poll() is None, server.log()
        finally:
            for sock in socks:
                sock.close()


def test_select_refuses_past_fd_setsize_in_one_line() -> None:
    socks: list[socket.socket] = []
    with serve("select") as server:
        try:
            for _ in range(1100):
                socks.append(server.connect())
            served = _echo_each(socks, b"ping")
            assert 900 < len(served) < 1024
            assert _echo_each(served, b"again") == served
            lines = [line for line in server.log().splitlines() if "FD_SETSIZE" in line]
            assert len(lines) == 1, server.log()
        finally:
            for sock in socks:
                sock.close()


def test_refused_connects_are_retried_and_counted() -> None:
    """The port is bound but not listening when the connects start (each is refused),
    and listens, answering every probe, once the workers exist."""
    clients = 20
    port_holder = socket.socket()
    port_holder.bind(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    accepted: list[socket.socket] = []

    def answer() -> None:
        while len(accepted) < clients:
            conn, _ = port_holder.accept()
            accepted.append(conn)
            conn.sendall(conn.recv(1))

    argv = [*MUXBENCH, "load", "--port", str(port), "--workload", "idle", "--clients",
            str(clients), "--procs", "1", "--duration", "0.2", "--warmup", "0", "--json"]
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert wait_for(lambda: process_tree(proc.pid), 30, 0.005)
        # The first connects are refused meanwhile; the back-off (50 ms doubling,
        # six times: 3.15 s) outlasts the wait.
        time.sleep(1.0)
        port_holder.listen(64)
        threading.Thread(target=answer, daemon=True).start()
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
        port_holder.close()
        for conn in accepted:
            conn.close()
    connect = json.loads(out)["connect"]
    assert connect["held"] == clients and connect["failed"] == 0, err
    assert connect["retries"] >= 1


@pytest.mark.parametrize("model, binds", [("thread", ["descriptors"]),
                                          ("fork", ["memory", "pids"])])
def test_thread_and_fork_state_their_limit_and_refuse_past_it(model, binds) -> None:
    """Under 64 descriptors the thread model holds 32 clients (its descriptors bind
    first); fork's children hold their own, so memory or pids bind it."""
    socks: list[socket.socket] = []
    with serve(model, "echo", preexec_fn=nofile(LIMIT)) as server:
        try:
            stated = next(line for line in server.log().splitlines() if "by default" in line)
            most = int(stated.split("at most ")[1].split()[0])
            assert any(f"{name} binds" in stated for name in binds) and most >= 1
            if model == "thread":
                assert most == LIMIT - HEADROOM_FDS
                for _ in range(most + 5):
                    socks.append(server.connect())
                assert len(_echo_each(socks, b"ping")) == most
                lines = [line for line in server.log().splitlines() if "refused" in line]
                assert len(lines) == 1 and f"--max-clients={most}" in lines[0], server.log()
        finally:
            for sock in socks:
                sock.close()
