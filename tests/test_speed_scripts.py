"""The speed benchmarks and the Python floor programs they measure against.

The ratios themselves are measured by `make speed` and never asserted here:
on a shared machine they swing too much to gate a test on.  These tests check
that the programs behave -- the floor server echoes and stops on SIGTERM, the
floor client checks what comes back as strictly as the C one does, and each
benchmark script runs a short round end to end, prints its verdict and leaves
nothing running.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from servers.reference import reference_server_command
from tests.faulty_servers import FaultyServer, at, echo, flipping
from tests.support import ROOT, listening, process_tree, recv_exactly

FLOOR = ROOT / "benchmarks" / "floor"
FLOOR_SERVER = [sys.executable, str(FLOOR / "echo_server.py"), "--port", "0"]

needs_cc = pytest.mark.skipif(reference_server_command() is None, reason="no C compiler")
needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                    reason="server and client each need a CPU")


def floor_client(port: int, *extra: str) -> tuple[int, dict[str, float]]:
    """Run the floor client briefly; (exit status, its summary line as a dict)."""
    out = subprocess.run(
        [sys.executable, str(FLOOR / "echo_client.py"), "--port", str(port), "--conns", "4",
         "--duration", "0.5", "--warmup", "0.1", *extra],
        capture_output=True, text=True, timeout=30)
    fields = out.stdout.split()
    return out.returncode, {k: float(v) for k, v in zip(fields[::2], fields[1::2], strict=True)}


def test_floor_server_echoes_every_client_and_exits_0_on_sigterm():
    with listening(FLOOR_SERVER) as server:
        with server.connect() as a, server.connect() as b:
            a.sendall(b"x" * 64)
            b.sendall(b"hello\n")
            assert recv_exactly(a, 64) == b"x" * 64
            assert recv_exactly(b, 6) == b"hello\n"
        assert server.stop() == 0


def test_floor_client_counts_round_trips_and_no_errors_against_an_honest_server():
    with listening(FLOOR_SERVER) as server:
        status, summary = floor_client(server.port)
    assert status == 0
    assert summary["errors"] == 0
    assert summary["roundtrips"] > 0
    assert summary["rate"] == pytest.approx(summary["roundtrips"] / 0.5)


def dies_at(n: int):
    """A fault: the server dies at message n of any connection."""
    return lambda conn, seq, message: None if seq == n else echo(conn, seq, message)


@pytest.mark.parametrize("fault, fewest, most", [
    (at(20, flipping(40)), 1, 1),  # one damaged echo is one error, and the run goes on
    (dies_at(10), 1, 2 * 4),  # every connection sees the end (a failed send, then EOF)
], ids=["damaged", "died"])
def test_floor_client_counts_what_went_wrong_as_errors(fault, fewest, most):
    server = FaultyServer(64, fault, probe=False)
    server.start()
    try:
        status, summary = floor_client(server.port)
    finally:
        server.stop()
    assert status == 1
    assert fewest <= summary["errors"] <= most


@needs_cc
@needs_two_cpus
@pytest.mark.parametrize("script, verdict", [
    ("server_cpu.py", "epoll: median CPU per message"),
    ("loadgen_rate.py", "median ratio muxbench load / C client"),
])
def test_speed_script_runs_a_short_round_and_leaves_nothing(script, verdict):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--pairs", "1", "--duration", "0.3",
         "--conns", "5"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    # 0: target met, 1: missed -- either way a finished measurement; 2 or a
    # traceback would be a broken script.
    assert out.returncode in (0, 1), out.stderr
    assert verdict in out.stdout
    assert "the Python floor" in out.stdout
    assert process_tree(os.getpid()) == []
    strays = [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_speed_process(pid)]
    assert strays == []


def _is_speed_process(pid: str) -> bool:
    """A floor program or a C yardstick still running (they run in sessions of their own)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:  # gone meanwhile
        return False
    return any(b"benchmarks/floor/" in arg or b"/muxbench/echo_" in arg for arg in argv)


@pytest.mark.parametrize("script, args, says", [
    ("server_cpu.py", ["--models", "epoll,nosuch"], "unknown model 'nosuch'"),
    ("server_cpu.py", ["--conns", "0"], "--conns: must be between 1 and 10000"),
    ("loadgen_rate.py", ["--size", "4"], "--size: must be between 16 and 65536"),
])
def test_speed_script_refuses_bad_input_in_one_line(script, args, says):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert says in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""  # refused before measuring anything
