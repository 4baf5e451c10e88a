"""`muxbench load`: drive a server with N clients and report latency and integrity.

Workloads: echo (closed loop with --depth messages in flight per connection,
or open loop with --rate), chat (every client in one room; --rate lines/s in
total, or closed loop: a client sends its next line once its own came back),
idle (connections held without traffic), churn (connect, one echo, close,
repeated; the client closes first), sparse (--active of the --clients
connections ping-pong, the rest stay idle).

Every echoed byte and every chat line is checked; the counters obey
sent == received + corrupted + lost (chat: expected_deliveries ==
deliveries + corrupted + lost).  Exit status: 0 clean run; 1 errors,
integrity failures or an invalid run (the generator was the bottleneck);
2 bad usage or a server that could not be reached -- partial results are
printed in every case; 130 interrupted.  Ctrl-C (or SIGTERM) inside the
measurement window ends the window there, waits for the replies still due
(--drain) and reports on the shorter window; a second one, or one before
the window opens, abandons the run with nothing to report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import textwrap

from loadgen import engine, summary
from loadgen.integrity import CHAT_MIN_SIZE, ECHO_MIN_SIZE
from loadgen.render import render
from muxbench.argtypes import cpu_list, number_in
from muxbench.net import is_loopback, raise_nofile_limit

WORKLOADS = ("echo", "chat", "idle", "churn", "sparse")


class UsageError(Exception):
    pass


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = textwrap.fill(__doc__.split("\n\n")[1].replace("\n", " "), 79)
    parser.epilog = __doc__.split("\n\n", 2)[2]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--host", metavar="HOST", default="127.0.0.1", help="server address (default 127.0.0.1)")
    add("--port", metavar="PORT", type=number_in(int, 1, 65535), required=True, help="server port")
    add("--workload", choices=WORKLOADS, default="echo", help="default echo")
    add("--clients", metavar="N", type=number_in(int, 1), default=10,
        help="connections (churn: connections cycling at once) (default 10)")
    add("--size", metavar="BYTES", type=number_in(int, 1, 1 << 24), default=64,
        help=f"message bytes (default 64; echo >= {ECHO_MIN_SIZE}, chat >= {CHAT_MIN_SIZE})")
    add("--rate", metavar="MSGS_PER_S", type=number_in(float, 0.001), default=None,
        help="open loop: total messages (chat: lines) per second over all clients; "
             "without it the loop is closed")
    add("--arrival", choices=("constant", "poisson"), default="constant",
        help="open-loop inter-send gaps (default constant)")
    add("--depth", metavar="D", type=number_in(int, 1, 1024), default=1,
        help="echo: messages in flight per connection (open loop: at most) (default 1)")
    add("--duration", metavar="S", type=number_in(float, 0.01, 3600), default=5.0,
        help="measurement window in seconds (default 5)")
    add("--warmup", metavar="S", type=number_in(float, 0, 600), default=1.0,
        help="seconds of load before the window opens (default 1)")
    add("--drain", metavar="S", type=number_in(float, 0, 60), default=3.0,
        help="at most this long after the window, wait for replies still outstanding "
             "(default 3; ends as soon as none is)")
    add("--procs", metavar="K", type=number_in(int, 1, 256), default=None,
        help="worker processes (default: one per CPU the generator may use)")
    add("--active", metavar="K", type=number_in(int, 1), default=1,
        help="sparse: how many of the --clients connections ping-pong (default 1)")
    add("--connect-timeout", metavar="S", type=number_in(float, 0.01, 60), default=3.0,
        help="seconds to wait for each connection (default 3)")
    add("--seed", metavar="N", type=int, default=1,
        help="seed of payloads and Poisson gaps (default 1)")
    add("--cpus", metavar="LIST", type=cpu_list, default=None,
        help="pin workers to these CPUs, e.g. 0 or 0,1 (default: no pinning)")
    add("--json", action="store_true",
        help="print one JSON object instead of the summary; stderr then also says "
             "'warm-up start', 'window start' and 'window end' as they happen")
    add("--allow-remote", action="store_true",
        help="allow a non-loopback target (refused by default)")


def _check(args: argparse.Namespace) -> None:
    if not args.allow_remote and not is_loopback(args.host):
        raise UsageError(f"refusing non-loopback target {args.host!r} (use --allow-remote)")
    if args.workload in ("echo", "sparse", "churn") and args.size < ECHO_MIN_SIZE:
        raise UsageError(f"--size must be at least {ECHO_MIN_SIZE} for {args.workload} "
                         "(each message carries a sequence header)")
    if args.workload == "chat" and args.size < CHAT_MIN_SIZE:
        raise UsageError(f"--size must be at least {CHAT_MIN_SIZE} for chat lines")
    if args.workload == "sparse" and args.active >= args.clients:
        raise UsageError("--active must be smaller than --clients (the rest stay idle)")
    if args.rate is not None and args.workload not in ("echo", "chat"):
        raise UsageError("--rate applies to the echo and chat workloads only")
    if args.cpus:
        allowed = os.sched_getaffinity(0)
        if not set(args.cpus) <= allowed:
            raise UsageError(f"--cpus {args.cpus} not within the CPUs allowed: {sorted(allowed)}")


def _resolve(host: str, port: int) -> tuple[int, str]:
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve {host!r}: {exc.strerror}") from None
    return info[0], info[4][0]


def _config(args: argparse.Namespace) -> engine.Config:
    cpus = args.cpus or sorted(os.sched_getaffinity(0))
    return engine.Config(
        workload=args.workload, host=args.host, port=args.port, clients=args.clients,
        size=args.size, rate=args.rate, arrival=args.arrival, depth=args.depth,
        duration=args.duration, warmup=args.warmup, procs=args.procs or len(cpus),
        active=args.active, connect_timeout=args.connect_timeout, drain=args.drain,
        seed=args.seed, cpus=args.cpus,
    )


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        family, address = _resolve(args.host, args.port)
    except UsageError as exc:
        print(f"muxbench load: {exc}", file=sys.stderr)
        return 2
    raise_nofile_limit()
    cfg = _config(args)

    def marker(line: str) -> None:
        if args.json:
            print(line, file=sys.stderr, flush=True)

    # SIGTERM (from `timeout`, say) ends a run as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        outcome = engine.run(cfg, family, address, marker)
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = summary.build(cfg, outcome)
    if args.json:
        print(json.dumps(out), flush=True)
    else:
        print(render(out), flush=True)
    if out["message"]:
        print(f"muxbench load: {out['message']}", file=sys.stderr, flush=True)
    return out["exit_status"]
