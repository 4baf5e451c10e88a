"""How much CPU does a Python server spend per message, against a minimal C one?

Each trial starts a fresh server pinned to one CPU and drives it with the
minimal C echo client (loadgen/c) pinned to the other: 50 connections x 64 B,
one message in flight each.  The server's CPU time (user + system, read from
/proc around the client run) divided by the round trips completed is its CPU
per message.  Python and C trials alternate in order, pair by pair, so drift
on a shared machine hits both alike; the median of the per-pair ratios is
printed.  Target: the epoll model spends at most 1.3x the C server's CPU per
message.

usage: python benchmarks/server_cpu.py [--models epoll,...] [--pairs 5] [--duration 3]
Exit status: 0 target met; 1 above target, or no C compiler (said so); 2 bad setup.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.native import echo_client_command  # noqa: E402
from servers.reference import reference_server_command  # noqa: E402

TARGET = 1.3
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (the server here never forks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pinned(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def trial(server_cmd: list[str], client_cmd: list[str], args: argparse.Namespace,
          server_cpu: int, client_cpu: int) -> float:
    """One fresh server, one client run; returns server CPU µs per round trip."""
    server = subprocess.Popen([*server_cmd, "--port", "0"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True, preexec_fn=pinned(server_cpu))
    try:
        line = server.stdout.readline()
        if "listening on " not in line:
            raise RuntimeError(f"server did not start: {line!r}")
        port = line.rsplit(":", 1)[1].strip()
        before = cpu_seconds(server.pid)
        out = subprocess.run(
            [*client_cmd, "--port", port, "--conns", str(args.conns), "--size", str(args.size),
             "--duration", str(args.duration), "--warmup", "0"],
            capture_output=True, text=True, preexec_fn=pinned(client_cpu),
            timeout=args.duration + 30, check=True)
        used = cpu_seconds(server.pid) - before
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        server.stdout.close()
    fields = out.stdout.split()
    roundtrips, errors = int(fields[fields.index("roundtrips") + 1]), int(fields[-1])
    if errors or not roundtrips:
        raise RuntimeError(f"client reported {errors} errors, {roundtrips} round trips")
    return used * 1e6 / roundtrips


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="epoll",
                        help="comma-separated Python models to compare with C (default epoll)")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs per model")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per client run")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("server_cpu: needs two CPUs (server on one, client on another)", file=sys.stderr)
        return 2
    server_cpu, client_cpu = cpus[0], cpus[1]
    c_server, client = reference_server_command(), echo_client_command()
    if c_server is None or client is None:
        print("server_cpu: no C compiler (gcc/cc) found; cannot build the C reference",
              file=sys.stderr)
        return 1
    print(f"{args.conns} connections x {args.size} B, server on CPU {server_cpu}, "
          f"C client on CPU {client_cpu}, {args.duration:g} s per run")
    worst = 0.0
    for model in args.models.split(","):
        py_server = [sys.executable, "-m", "bench.cli", "serve", model, "-q"]
        ratios = []
        for pair in range(args.pairs):
            order = [("c", c_server), ("py", py_server)]
            cost = {name: trial(cmd, client, args, server_cpu, client_cpu)
                    for name, cmd in (order if pair % 2 == 0 else order[::-1])}
            ratios.append(cost["py"] / cost["c"])
            print(f"{model} pair {pair + 1}: C {cost['c']:6.2f} µs/msg   {model} "
                  f"{cost['py']:6.2f} µs/msg   ratio {ratios[-1]:.2f}", flush=True)
        median = statistics.median(ratios)
        worst = max(worst, median)
        print(f"{model}: median CPU per message {median:.2f}x the C server's "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f}; target <= {TARGET}x)")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
