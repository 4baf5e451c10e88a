"""How many system calls does a message cost the server: epoll against io_uring?

io_uring's promise is fewer syscalls: the reads, writes and re-arms of a loop
turn are queue entries, and one io_uring_enter submits them all and waits.
This script counts.  Each trial starts a fresh server pinned to one CPU and,
once it listens, attaches a counter to it: `perf stat -e raw_syscalls:sys_enter`
where perf can (little overhead), else `strace -c -f` (slows the server, so
turns batch more than they would).  Start-up is not counted.  `muxbench load`
then drives it from the other CPU (echo, --clients x --size bytes, closed
loop), and the count is divided by the messages the client got back.  Models
alternate, the order reversed every other round; medians are printed.
`--tool strace` also prints which syscalls they were.

usage: python benchmarks/syscalls.py [--models epoll,uring] [--pairs 3] [--duration 3]
       [--conns 50] [--size 64] [--tool perf|strace]
Exit status: 0 measured; 2 bad setup (no perf or strace, a server that will not start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ is sys.path[0] when a benchmark runs as a script.
from common import add_run_arguments, interleaved, run_main, start_server

from muxbench import procs

ATTACH = 0.5  # seconds a counter has to attach before the load starts


def counter_command(tool: str, pid: int, out: Path) -> list[str]:
    if tool == "perf":
        return ["perf", "stat", "-e", "raw_syscalls:sys_enter", "-x", ",", "-o", str(out),
                "-p", str(pid)]
    return ["strace", "-c", "-f", "-o", str(out), "-p", str(pid)]


def parse_counts(tool: str, text: str) -> tuple[int, dict[str, int]]:
    """(total syscalls, per-syscall counts where the tool gives them)."""
    if tool == "perf":
        for line in text.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] == "raw_syscalls:sys_enter":
                return int(fields[0]), {}
        raise RuntimeError(f"no syscall count in perf's output: {text!r}")
    calls: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[3].isdigit():
            calls[fields[-1]] = int(fields[3])
    if "total" not in calls:
        raise RuntimeError(f"no total in strace's summary: {text[-300:]!r}")
    return calls.pop("total"), calls


def trial(model: str, args, tool: str, cpus: list[int]) -> dict:
    """One fresh server, counted while one load run drives it."""
    server, port = start_server([sys.executable, "-m", "muxbench.cli", "serve", model], cpus[0])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "counts"
            counter = procs.spawn(counter_command(tool, server.pid, out),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(ATTACH)
                load = procs.run(
                    [sys.executable, "-m", "muxbench.cli", "load", "--port", str(port),
                     "--workload", "echo", "--clients", str(args.conns), "--size", str(args.size),
                     "--duration", str(args.duration), "--warmup", "0", "--json"],
                    cpus=[cpus[1]], timeout=args.duration + 60, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
                if load.returncode:
                    raise RuntimeError(f"{model}: muxbench load failed: {load.stderr[-500:]}")
                summary = json.loads(load.stdout)
                counter.send_signal(signal.SIGINT)  # both tools write their counts on SIGINT
                counter.wait(30)
            finally:
                procs.kill_group(counter)
            total, calls = parse_counts(tool, out.read_text())
    finally:
        procs.kill_group(server)
    if summary["errors"] or not summary["received"]:
        raise RuntimeError(f"{model}: the load reported {summary['errors']} errors, "
                           f"{summary['received']} received")
    return {"syscalls": total, "messages": summary["received"], "calls": calls,
            "per_message": total / summary["received"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="epoll,uring")
    parser.add_argument("--tool", choices=("perf", "strace"),
                        default="perf" if shutil.which("perf") else "strace")
    add_run_arguments(parser)
    parser.set_defaults(pairs=3, duration=3.0)
    args = parser.parse_args()
    if shutil.which(args.tool) is None:
        print(f"syscalls: {args.tool} is not installed (apt-get install "
              f"{'linux-perf' if args.tool == 'perf' else 'strace'})", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    cpus = cpus if len(cpus) > 1 else cpus * 2  # one CPU: both sides share it (said below)
    models = args.models.split(",")
    rounds = list(interleaved({m: m for m in models}, args.pairs,
                              lambda m: trial(m, args, args.tool, cpus)))
    print(f"{args.tool}; echo, {args.conns} clients x {args.size} B, {args.duration:g} s a "
          f"trial, {args.pairs} rounds; server on CPU {cpus[0]}, client on CPU {cpus[1]}")
    for model in models:
        got = [r[model] for r in rounds]
        per = [g["per_message"] for g in got]
        print(f"{model:8} syscalls/message median {statistics.median(per):.3f} "
              f"(min {min(per):.3f}, max {max(per):.3f}); messages/trial median "
              f"{statistics.median(g['messages'] for g in got):.0f}")
        calls = got[len(got) // 2]["calls"]
        if calls:
            messages = got[len(got) // 2]["messages"]
            top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
            print("         " + ", ".join(f"{name} {n / messages:.3f}" for name, n in top))
    return 0


if __name__ == "__main__":
    run_main("syscalls", main)
