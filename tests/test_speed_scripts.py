"""The speed benchmarks and the Python floor programs they measure against.

The ratios themselves are measured by `make speed` and never asserted here:
on a shared machine they swing too much to gate a test on.  These tests check
that the programs behave -- the floor server echoes and stops on SIGTERM, the
floor client checks what comes back as strictly as the C one does, and each
benchmark script runs a short round end to end, prints its verdict and leaves
nothing running -- and that the interval they print around a median covers it
as often as it claims to.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.common import median_interval, spread
from servers.reference import reference_server_command
from tests.faulty_servers import FaultyServer, at, echo, flipping
from tests.support import ROOT, kill_group, listening, process_tree, recv_exactly, spawn

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
    # Everything the script starts inherits this mark, and only that: a speed script
    # someone else runs on the same machine is none of this test's business.
    mark = f"MUXBENCH_TEST_RUN={os.getpid()}-{script}"
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--pairs", "1", "--duration", "0.3",
         "--conns", "5"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, **dict([mark.split("=")])})
    # 0: target met, 1: missed -- either way a finished measurement; 2 or a
    # traceback would be a broken script.
    assert out.returncode in (0, 1), out.stderr
    assert verdict in out.stdout
    assert "the Python floor" in out.stdout
    assert process_tree(os.getpid()) == []
    strays = [pid for pid in os.listdir("/proc") if pid.isdigit() and _marked(pid, mark)]
    assert strays == []


def _cmdline(pid: int | str) -> bytes:
    """The NUL-separated argv of pid; empty once it has gone (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:  # gone meanwhile
        return b""


def _marked(pid: str, mark: str) -> bool:
    """Whether pid (a floor program, a C yardstick, in a session of its own) still runs
    with `mark` in its environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return mark.encode() in f.read().split(b"\0")
    except OSError:  # gone meanwhile, or a zombie's
        return False


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@needs_cc
@needs_two_cpus
@pytest.mark.parametrize("script, starting", [
    # Python servers take a while to say "listening": Ctrl-C lands while the
    # script waits for that line, before it holds the server in a try block.
    ("server_cpu.py", b"floor/echo_server.py"),
    ("loadgen_rate.py", b"floor/echo_client.py"),
])
def test_ctrl_c_ends_a_speed_script_in_one_line_and_leaves_nothing(script, starting):
    proc = spawn(
        [sys.executable, str(ROOT / "benchmarks" / script), "--pairs", "20", "--duration", "0.3",
         "--conns", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen.update(process_tree(proc.pid))
            if any(starting in _cmdline(pid) for pid in seen):
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"{script} never started {starting.decode()}")
        # What Ctrl-C sends: SIGINT to the foreground process group, the script
        # and its clients.  Its servers run in sessions of their own, where the
        # terminal's signal never reaches them: the script must stop them itself.
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    assert proc.returncode == 130
    assert err.strip().splitlines() == [f"{script.removesuffix('.py')}: interrupted"]
    time.sleep(0.2)  # a killed child of the script's is reaped by init once the script is gone
    assert [pid for pid in seen if _running(pid)] == []


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


# -- how far one run's median can be trusted ----------------------------------

def _coverage(n: int, low: int, high: int) -> float:
    """P(the low-th and high-th of n draws, 1-based, enclose the population median)."""
    return sum(math.comb(n, i) for i in range(low, high)) / 2 ** n


@pytest.mark.parametrize("n", range(6, 61))
def test_median_interval_is_the_narrowest_symmetric_one_with_95_percent_coverage(n):
    # Ranks 1..n stand for any n sorted rounds: the interval is read off them.
    low, high = (int(bound) for bound in median_interval([float(r) for r in range(1, n + 1)]))
    assert low + high == n + 1  # symmetric
    assert _coverage(n, low, high) >= 0.95
    assert _coverage(n, low + 1, high - 1) < 0.95  # one rank narrower would not do


def test_median_interval_needs_six_rounds():
    assert median_interval([1.2, 1.3, 1.1, 1.4, 1.25]) is None
    assert "too few rounds" in spread([1.2, 1.3, 1.1, 1.4, 1.25], 1.3, "below")


def test_median_interval_covers_a_long_tailed_median_as_often_as_it_says():
    rng = random.Random(20261130)
    median = math.exp(0.25)  # of lognormal(0.25, 0.4): ratios on a noisy machine
    trials, n = 2000, 15
    covered = 0
    for _ in range(trials):
        low, high = median_interval([rng.lognormvariate(0.25, 0.4) for _ in range(n)])
        covered += low <= median <= high
    # 15 rounds: ranks 4 and 12, which enclose the median with probability 0.965.
    assert 0.94 <= covered / trials <= 0.985


@pytest.mark.parametrize("values, target, better, says", [
    ([1.20, 1.21, 1.22, 1.23, 1.24, 1.25, 1.26, 1.27], 1.3, "below", "all of it meets"),
    ([1.31, 1.32, 1.33, 1.34, 1.35, 1.36, 1.37, 1.38], 1.3, "below", "all of it misses"),
    ([1.20, 1.25, 1.28, 1.29, 1.31, 1.33, 1.36, 1.40], 1.3, "below", "cannot tell"),
    ([0.70, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76, 0.77], 0.8, "above", "all of it misses"),
    ([0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88], 0.8, "above", "all of it meets"),
])
def test_spread_says_whether_the_run_settles_the_target(values, target, better, says):
    text = spread(values, target, better)
    assert says in text
    assert f"min {min(values):.3g}, max {max(values):.3g}" in text
