"""Scale-out: does the C reference server's round-trip rate grow with more generator hosts?

One Python load generator costs about as much per round trip as the server it
drives, so one generator host cannot saturate a fast server.  This script runs
the C reference server (servers/reference) on a cluster's server host and
drives it, closed-loop echo of 64-byte messages with --clients connections per
generator host, from 1, 2, ... N generator hosts at once (one common window,
the hosts' histograms merged: bench/cluster/).  The numbers of hosts are
interleaved and repeated; each row is the median of its repeats.  It then says
what the curve shows:

  grows              the most hosts gave a rate GROWS times the best of fewer hosts;
  server saturated   they did not, and the server's CPUs were busy (>= SATURATED
                     of them): more generators cannot help, the server is the limit;
  generators share CPUs  it did not, the server had CPU to spare, and the
                     generator hosts run on the same CPUs as each other or as the
                     server: hosts added here add no CPU (namespaces of one machine);
  generator-limited  it did not, with CPU to spare on separate CPUs: something
                     else (the network, a lock) holds the generators back.

usage: python benchmarks/scale_out.py [--cluster local|tcp://HOST:PORT] [--hosts N]
       [--clients 20] [--repeats 3] [--duration 3]
Exit status: 0 measured; 1 a trial failed; 2 bad usage or no cluster / C compiler.
"""

from __future__ import annotations

import argparse
import statistics
import sys

# benchmarks/ is sys.path[0] when a benchmark runs as a script.
from common import run_main

from bench.cluster.engine import Cluster, ClusterError, check_address
from bench.cluster.runner import ClusterRunner
from bench.run.console import Display
from bench.run.launch import CommandServer, TrialSpec
from muxbench.argtypes import float_where, positive_int
from servers.reference import C_SERVER, reference_server_template

GROWS = 1.10  # the most hosts must beat the best of fewer by 10% to count as growth
SATURATED = 0.90  # share of the server's CPUs busy that counts as saturated
SIZE = 64


def spec(hosts: int, clients: int, repeat: int, duration: float, command: str) -> TrialSpec:
    total = clients * hosts
    return TrialSpec(scenario="scale_out", workload="echo", model=C_SERVER, protocol="echo",
                     point={"hosts": hosts, "clients": total}, repeat=repeat,
                     duration=duration, warmup=0.5, sample_interval=0.25,
                     load_args=["--workload", "echo", "--clients", str(total),
                                "--size", str(SIZE)],
                     connections=total, server=CommandServer(C_SERVER, command, "echo"))


def row(records: list[dict]) -> dict:
    ok = [r for r in records if r["status"] == "ok" or r.get("generator_bound")]
    rates = [r["load"]["throughput_msgs_s"] for r in ok]
    server_cpu = [r["server"]["cpu_util"] for r in ok if r["server"]]
    gens = [h for r in ok for h in r["hosts"] if h["role"] == "generator"]
    gen_cpu = [h["load"]["client_cpu_util"] for h in gens if h.get("load")]
    server_cpus = {c for r in ok for c in (r["server"] or {}).get("cpus") or []}
    gen_cpus = {h["host"]: frozenset(h.get("cpus") or []) for h in gens}
    return {"rate": statistics.median(rates) if rates else None,
            "spread": (min(rates), max(rates)) if rates else None,
            "server_cpu": statistics.median(server_cpu) if server_cpu else None,
            "server_cpus": len(server_cpus) or 1,
            "gen_cpu": statistics.median(gen_cpu) if gen_cpu else None,
            "shared": _shared(server_cpus, gen_cpus), "ok": len(ok), "n": len(records)}


def _shared(server: set[int], generators: dict[str, frozenset[int]]) -> bool:
    """Whether generator hosts share CPUs with each other or with the server."""
    seen: set[int] = set(server)
    for cpus in generators.values():
        if cpus & seen:
            return True
        seen |= cpus
    return False


def verdict(rows: dict[int, dict]) -> str:
    counts = sorted(k for k, r in rows.items() if r["rate"])
    if len(counts) < 2:
        return "too few points: run with at least two generator hosts"
    # Against the best of the fewer hosts, not merely the one before: a rate
    # that fell and rose again has not grown.
    last = rows[counts[-1]]
    best = max(rows[k]["rate"] for k in counts[:-1])
    if last["rate"] >= GROWS * best:
        return "grows: the most generator hosts gave the highest rate, by 10% or more"
    if (last["server_cpu"] or 0) >= SATURATED * last["server_cpus"]:
        return (f"server saturated: {last['server_cpu']:.2f} of its {last['server_cpus']} "
                "CPU(s) busy, more generators cannot raise the rate")
    if last["shared"]:
        return ("generators share CPUs: the hosts run on the same CPUs (as namespaces of "
                "one machine do), so a host added brings no CPU of its own")
    return "generator-limited: the server had CPU to spare and the generators their own CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", default="local", help="local or tcp://HOST:PORT")
    parser.add_argument("--hosts", type=positive_int, default=None,
                        help="up to this many generator hosts (default: every one)")
    parser.add_argument("--clients", type=positive_int, default=20,
                        help="connections per generator host (default 20)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="default 3")
    parser.add_argument("--duration", default=3.0, help="window seconds (default 3)",
                        type=float_where(lambda v: v > 0, "must be a positive number"))
    args = parser.parse_args()
    try:
        check_address(args.cluster)
    except ValueError as exc:
        parser.error(str(exc))
    command = reference_server_template()
    if command is None:
        print("scale_out: no C compiler: the C reference server cannot be built", file=sys.stderr)
        return 2
    try:
        cluster = Cluster(args.cluster)
        _, generators = cluster.hosts()
    except ClusterError as exc:
        print(f"scale_out: {exc}", file=sys.stderr)
        return 2
    most = min(args.hosts or len(generators), len(generators))
    plan = [(k, r) for r in range(args.repeats) for k in range(1, most + 1)]
    specs = [spec(k, args.clients, r, args.duration, command) for k, r in plan]
    runner = ClusterRunner(specs, cluster, use_cgroup=True)
    records: dict[int, list[dict]] = {}
    try:
        with Display(len(specs)) as display:
            for index, (k, _) in enumerate(plan):
                runner.max_generators = k
                records.setdefault(k, []).append(runner.run(index, display))
    finally:
        runner.close()
        cluster.close()
    rows = {k: row(v) for k, v in sorted(records.items())}
    print(f"{'hosts':>5} {'clients':>7} {'msg/s (median)':>15} {'range':>19} "
          f"{'server CPU':>10} {'gen CPU':>8} {'ok':>5}")
    for k, r in rows.items():
        rate = f"{r['rate']:,.0f}" if r["rate"] else "-"
        spread = f"{r['spread'][0]:,.0f}-{r['spread'][1]:,.0f}" if r["spread"] else "-"
        server = f"{r['server_cpu']:.2f}" if r["server_cpu"] is not None else "-"
        gen = f"{r['gen_cpu']:.2f}" if r["gen_cpu"] is not None else "-"
        print(f"{k:>5} {k * args.clients:>7} {rate:>15} {spread:>19} {server:>10} {gen:>8} "
              f"{r['ok']:>2}/{r['n']}")
    print(f"verdict: {verdict(rows)}")
    failed = [rec["reason"] for recs in records.values() for rec in recs
              if rec["status"] == "failed"]
    for reason in failed:
        print(f"failed: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main("scale_out", main)
