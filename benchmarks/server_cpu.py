"""How much CPU does a Python server spend per message, against a minimal C one?

Each trial starts a fresh server pinned to one CPU and drives it with the
minimal C echo client (loadgen/c) pinned to the other: 50 connections x 64 B,
one message in flight each.  The server's CPU time (user + system, read from
/proc around the client run) divided by the round trips completed is its CPU
per message.  Each round measures every contestant, the order reversed every
other round, so drift on a shared machine hits them alike; the median of the
per-round ratios is printed.  Target: the epoll model spends at most 1.3x the C server's CPU per
message.

A third contestant, the floor (benchmarks/floor/echo_server.py), is the
smallest Python loop doing the same syscalls as the C server.  Its ratio to C
is what CPython itself costs on this machine; a model's ratio to the floor is
what the model adds.

usage: python benchmarks/server_cpu.py [--models epoll,...] [--pairs 30] [--duration 1]
Exit status: 0 target met; 1 above target, or no C compiler (said so); 2 bad setup;
130 interrupted (Ctrl-C), with every process it started stopped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

# benchmarks/ is sys.path[0] when a benchmark runs as a script.
from common import (
    FLOOR,
    add_run_arguments,
    interleaved,
    placement_and_tools,
    ratios,
    run_c_client,
    run_main,
    spread,
    start_server,
)

# Importable once common has put the project on sys.path.
from muxbench import procs
from servers.models import MODELS

TARGET = 1.3
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cost:
    """Server CPU per round trip, µs: user (the program) and system (the kernel)."""

    user: float
    system: float


def total(cost: Cost) -> float:
    return cost.user + cost.system


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process, from /proc (the server here never forks).

    The kernel splits a process's run time into the two by sampling at each
    tick, so the split is an estimate; medians over rounds are what to read.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def trial(server_cmd: list[str], client_cmd: list[str], args: argparse.Namespace,
          server_cpu: int, client_cpu: int) -> Cost:
    """One fresh server, one client run; returns its CPU per round trip."""
    server, port = start_server(server_cmd, server_cpu)
    try:
        user, system = cpu_seconds(server.pid)
        summary = run_c_client(client_cmd, port, args, client_cpu, warmup=0)
        user_after, system_after = cpu_seconds(server.pid)
    finally:
        procs.kill_group(server)
    roundtrips, errors = int(summary["roundtrips"]), int(summary["errors"])
    if errors or not roundtrips:
        raise RuntimeError(f"client reported {errors} errors, {roundtrips} round trips")
    return Cost((user_after - user) * 1e6 / roundtrips,
                (system_after - system) * 1e6 / roundtrips)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="epoll",
                        help="comma-separated Python models to compare with C (default epoll)")
    add_run_arguments(parser)
    args = parser.parse_args()
    models = args.models.split(",")
    for model in models:
        if model not in MODELS:
            parser.error(f"unknown model {model!r} (choose from {', '.join(MODELS)})")
        if reason := MODELS[model].unavailable_reason():
            parser.error(f"model {model} is unavailable: {reason}")
    server_cpu, client_cpu, c_server, client = placement_and_tools("server_cpu")
    print(f"{args.conns} connections x {args.size} B, server on CPU {server_cpu}, "
          f"C client on CPU {client_cpu}, {args.duration:g} s per run")
    floor = [sys.executable, str(FLOOR / "echo_server.py")]
    worst = 0.0
    for model in models:
        servers = {"C": c_server, "floor": floor,
                   model: [sys.executable, "-m", "muxbench.cli", "serve", model, "-q"]}
        rounds: list[dict[str, Cost]] = []
        for got in interleaved(
                servers, args.pairs, lambda cmd: trial(cmd, client, args, server_cpu, client_cpu)):
            rounds.append(got)
            cost = {name: total(one) for name, one in got.items()}
            print(f"{model} round {len(rounds)}: C {cost['C']:6.2f}  floor {cost['floor']:6.2f}  "
                  f"{model} {cost[model]:6.2f} µs/msg   {model}/C {cost[model] / cost['C']:.2f}  "
                  f"floor/C {cost['floor'] / cost['C']:.2f}", flush=True)
        vs_c = ratios(rounds, model, "C", total)
        median = statistics.median(vs_c)
        worst = max(worst, median)
        print(f"{model}: median CPU per message {median:.2f}x the C server's "
              f"(target <= {TARGET}x)")
        print(f"  {spread(vs_c, TARGET, 'below')}")
        floor_vs_c = statistics.median(ratios(rounds, "floor", "C", total))
        print(f"  the Python floor: {floor_vs_c:.2f}x C; {model} over the floor: "
              f"{statistics.median(ratios(rounds, model, 'floor', total)):.2f}x")
        print("  median µs per message, user + system: " + ", ".join(
            f"{name} {statistics.median(got[name].user for got in rounds):.2f} + "
            f"{statistics.median(got[name].system for got in rounds):.2f}" for name in servers))
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    run_main("server_cpu", main)
