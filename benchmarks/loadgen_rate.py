"""How fast is the load generator?  Its round-trip rate against a minimal C client's.

Both drive the same minimal C epoll echo server (servers/reference), 50
connections x 64 B, one message in flight each, one process pinned to one CPU;
the server is pinned to another.  The two clients take turns (interleaved, the
order alternating) so that drift on a shared machine hits both alike, and the
median of the per-pair ratios is printed.  Target: muxbench load reaches at
least 0.8x the C client's rate.  Each client's CPU time per round trip is
printed beside it: on a busy machine rates swing, CPU per message much less.

usage: python benchmarks/loadgen_rate.py [--pairs 5] [--duration 3] [--conns 50] [--size 64]
Exit status: 0 target met; 1 below target, or no C compiler (said so); 2 bad setup.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

# benchmarks/ is sys.path[0] when a benchmark runs as a script.
from common import (
    ROOT,
    pinned,
    placement_and_tools,
    run_c_client,
    start_server,
    stop,
)

TARGET = 0.8


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_c(cmd: list[str], port: int, args: argparse.Namespace, cpu: int) -> tuple[float, float]:
    """(round trips/s, CPU µs per round trip) of the C client."""
    before = children_cpu()
    rate = run_c_client(cmd, port, args, cpu, warmup=1)["rate"]
    # Its whole life (it has no start-up worth counting) over the messages of warm-up + window.
    return rate, (children_cpu() - before) / (rate * (args.duration + 1)) * 1e6


def run_muxbench(port: int, args: argparse.Namespace, cpu: int) -> tuple[float, float]:
    """(round trips/s, CPU µs per round trip inside the window) of muxbench load."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.cli", "load", "--port", str(port), "--workload", "echo",
         "--clients", str(args.conns), "--size", str(args.size), "--duration",
         str(args.duration), "--warmup", "1", "--procs", "1", "--cpus", str(cpu), "--json"],
        capture_output=True, text=True, cwd=ROOT, preexec_fn=pinned(cpu),
        timeout=args.duration + 60)
    result = json.loads(out.stdout)
    if result["errors"] or result["lost"] or result["corrupted"]:
        raise RuntimeError(f"muxbench load reported problems: {out.stderr.strip()}")
    return result["throughput_msgs_s"], result["client_cpu_s"] / result["received"] * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    client_cpu, server_cpu, server_cmd, client_cmd = placement_and_tools("loadgen_rate")
    server, port = start_server(server_cmd, server_cpu)
    ratios, cpu_ratios = [], []
    try:
        print(f"{args.conns} connections x {args.size} B, client on CPU {client_cpu}, "
              f"C server on CPU {server_cpu}, {args.duration:g} s per run")
        for pair in range(args.pairs):
            rates = {}
            for name in ("c", "py") if pair % 2 == 0 else ("py", "c"):
                rates[name] = (run_c(client_cmd, port, args, client_cpu) if name == "c"
                               else run_muxbench(port, args, client_cpu))
            (c_rate, c_cpu), (py_rate, py_cpu) = rates["c"], rates["py"]
            ratios.append(py_rate / c_rate)
            cpu_ratios.append(c_cpu / py_cpu)
            print(f"pair {pair + 1}: C client {c_rate:>9,.0f} msg/s ({c_cpu:5.1f} µs CPU/msg)"
                  f"   muxbench load {py_rate:>9,.0f} msg/s ({py_cpu:5.1f} µs CPU/msg)"
                  f"   ratio {ratios[-1]:.3f}", flush=True)
    finally:
        stop(server)
    median = statistics.median(ratios)
    verdict = "meets" if median >= TARGET else "BELOW"
    print(f"median ratio muxbench load / C client: {median:.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}; {verdict} the {TARGET}x target)")
    # Less sensitive to other load on the machine than rates are: the rate
    # ratio the two would reach if each were limited by its own CPU.
    print(f"median CPU-per-message ratio C / muxbench load: {statistics.median(cpu_ratios):.3f}"
          f" (min {min(cpu_ratios):.3f}, max {max(cpu_ratios):.3f})")
    return 0 if median >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
