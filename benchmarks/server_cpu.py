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
import statistics
import sys
from pathlib import Path

# benchmarks/ is sys.path[0] when a benchmark runs as a script.
from common import placement_and_tools, run_c_client, start_server, stop

TARGET = 1.3
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (the server here never forks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def trial(server_cmd: list[str], client_cmd: list[str], args: argparse.Namespace,
          server_cpu: int, client_cpu: int) -> float:
    """One fresh server, one client run; returns server CPU µs per round trip."""
    server, port = start_server(server_cmd, server_cpu)
    try:
        before = cpu_seconds(server.pid)
        summary = run_c_client(client_cmd, port, args, client_cpu, warmup=0)
        used = cpu_seconds(server.pid) - before
    finally:
        stop(server)
    roundtrips, errors = int(summary["roundtrips"]), int(summary["errors"])
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
    server_cpu, client_cpu, c_server, client = placement_and_tools("server_cpu")
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
