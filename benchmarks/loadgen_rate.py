"""How fast is the load generator?  Its round-trip rate against a minimal C client's.

Both drive the same minimal C epoll echo server (servers/reference), 50
connections x 64 B, one message in flight each, one process pinned to one CPU;
the server is pinned to another.  The clients take turns (interleaved, the
order reversed every other round) so that drift on a shared machine hits all
alike, and the median of the per-round ratios is printed.  Target: muxbench
load reaches at least 0.8x the C client's rate.  Each client's CPU time per
round trip is printed beside it: on a busy machine rates swing, CPU per
message much less.

A third contestant, the floor (benchmarks/floor/echo_client.py), is the C
client's loop written in Python and nothing more, one send per reply as in
C.  Its ratio to C is what the interpreter costs such a loop on this
machine; the generator's ratio to the floor is what its recording and
accounting cost, less what it gains by sending a round's messages together.

usage: python benchmarks/loadgen_rate.py [--pairs 30] [--duration 1] [--conns 50] [--size 64]
Exit status: 0 target met; 1 below target, or no C compiler (said so); 2 bad setup;
130 interrupted (Ctrl-C), with every process it started stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# benchmarks/ is sys.path[0] when a benchmark runs as a script.
from common import (
    FLOOR,
    ROOT,
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

TARGET = 0.8


def run_client(cmd: list[str], port: int, args: argparse.Namespace,
               cpu: int) -> tuple[float, float]:
    """(round trips/s, CPU µs per round trip) of the C client or the floor.

    The CPU is the client's own count, from its first send to its last: its
    start-up and connecting are left out, as muxbench load leaves them out.
    """
    summary = run_c_client(cmd, port, args, cpu, warmup=1)
    return summary["rate"], summary["cpu_us_per_roundtrip"]


def run_muxbench(port: int, args: argparse.Namespace, cpu: int) -> tuple[float, float]:
    """(round trips/s, CPU µs per round trip inside the window) of muxbench load."""
    out = procs.run(
        [sys.executable, "-m", "muxbench.cli", "load", "--port", str(port), "--workload", "echo",
         "--clients", str(args.conns), "--size", str(args.size), "--duration",
         str(args.duration), "--warmup", "1", "--procs", "1", "--cpus", str(cpu), "--json"],
        cpus=[cpu], timeout=args.duration + 60, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    if not out.stdout.strip():  # exit 1 with a result is a run flagged invalid; that still counts
        raise RuntimeError(f"muxbench load gave no result (exit {out.returncode}): "
                           f"{out.stderr.strip().splitlines()[-1:]}")
    result = json.loads(out.stdout)
    if result["errors"] or result["lost"] or result["corrupted"]:
        raise RuntimeError(f"muxbench load reported problems: {out.stderr.strip()}")
    return result["throughput_msgs_s"], result["client_cpu_s"] / result["received"] * 1e6


def rate(result: tuple[float, float]) -> float:
    return result[0]


def per_cpu(result: tuple[float, float]) -> float:
    """Round trips per CPU-µs: the rate a client limited only by its own CPU would reach."""
    return 1 / result[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    args = parser.parse_args()
    client_cpu, server_cpu, server_cmd, client_cmd = placement_and_tools("loadgen_rate")
    floor_cmd = [sys.executable, str(FLOOR / "echo_client.py")]
    clients = {"C": lambda port: run_client(client_cmd, port, args, client_cpu),
               "floor": lambda port: run_client(floor_cmd, port, args, client_cpu),
               "load": lambda port: run_muxbench(port, args, client_cpu)}
    rounds: list[dict[str, tuple[float, float]]] = []  # name -> (rate, CPU µs per message)
    server, port = start_server(server_cmd, server_cpu)
    try:
        print(f"{args.conns} connections x {args.size} B, client on CPU {client_cpu}, "
              f"C server on CPU {server_cpu}, {args.duration:g} s per run")
        for got in interleaved(clients, args.pairs, lambda run: run(port)):
            rounds.append(got)
            (c_rate, c_cpu), (f_rate, f_cpu), (py_rate, py_cpu) = (
                got["C"], got["floor"], got["load"])
            print(f"round {len(rounds)}: C {c_rate:>7,.0f} msg/s ({c_cpu:4.1f} µs CPU/msg)  "
                  f"floor {f_rate:>7,.0f} ({f_cpu:4.1f})  "
                  f"muxbench load {py_rate:>7,.0f} ({py_cpu:4.1f})   "
                  f"load/C {py_rate / c_rate:.3f}", flush=True)
    finally:
        procs.kill_group(server)
    vs_c = ratios(rounds, "load", "C", rate)
    median = statistics.median(vs_c)
    verdict = "meets" if median >= TARGET else "BELOW"
    print(f"median ratio muxbench load / C client: {median:.3f} ({verdict} the {TARGET}x target)")
    print(f"  {spread(vs_c, TARGET, 'above')}")
    # Less sensitive to other load on the machine than rates are: the rate
    # ratio the two would reach if each were limited by its own CPU.
    print(f"median CPU-per-message ratio C / muxbench load: "
          f"{statistics.median(ratios(rounds, 'load', 'C', per_cpu)):.3f}")
    print(f"  the Python floor: {statistics.median(ratios(rounds, 'floor', 'C', rate)):.3f}x"
          f" C's rate; muxbench load: "
          f"{statistics.median(ratios(rounds, 'load', 'floor', rate)):.3f}x the floor's")
    return 0 if median >= TARGET else 1


if __name__ == "__main__":
    run_main("loadgen_rate", main)
