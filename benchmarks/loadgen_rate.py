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
import os
import resource
import signal
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.native import echo_client_command  # noqa: E402
from servers.reference import reference_server_command  # noqa: E402

TARGET = 0.8


def pinned(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def start_server(cmd: list[str], cpu: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*cmd, "--port", "0"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=pinned(cpu))
    line = proc.stdout.readline()
    if "listening on " not in line:
        raise RuntimeError(f"C server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_c(cmd: list[str], port: int, args: argparse.Namespace, cpu: int) -> tuple[float, float]:
    """(round trips/s, CPU µs per round trip) of the C client."""
    before = children_cpu()
    out = subprocess.run(
        [*cmd, "--port", str(port), "--conns", str(args.conns), "--size", str(args.size),
         "--duration", str(args.duration), "--warmup", "1"],
        capture_output=True, text=True, preexec_fn=pinned(cpu), timeout=args.duration + 30,
        check=True)
    fields = out.stdout.split()
    rate = float(fields[fields.index("rate") + 1])
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
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("loadgen_rate: needs two CPUs (client on one, server on another)", file=sys.stderr)
        return 2
    client_cpu, server_cpu = cpus[0], cpus[1]
    server_cmd, client_cmd = reference_server_command(), echo_client_command()
    if server_cmd is None or client_cmd is None:
        print("loadgen_rate: no C compiler (gcc/cc) found; cannot build the C yardsticks",
              file=sys.stderr)
        return 1
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
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        server.stdout.close()
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
