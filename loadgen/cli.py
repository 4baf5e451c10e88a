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
2 bad usage, a server that could not be reached, or a count this machine
cannot hold (said before any connect: descriptors, ports, memory, pids) --
partial results are printed whenever there are any; 130 interrupted.  Ctrl-C
(or SIGTERM) inside the measurement window ends the window there, waits for
the replies still due (--drain) and reports on the shorter window; a second
one, or one before the window opens, abandons the run with nothing to report.
Many connections are spread over worker processes and source addresses by
themselves (docs/c100k.md).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import textwrap
import time

from loadgen import engine, summary
from loadgen.capacity import MAX_PROCS, CapacityError, Spread, parse_sources, spread
from loadgen.connect import CONNECT_BATCH
from loadgen.integrity import CHAT_MIN_SIZE, ECHO_MIN_SIZE
from loadgen.render import render
from muxbench.argtypes import cpu_list, number_in
from muxbench.limits import raise_nofile
from muxbench.net import is_loopback

WORKLOADS = ("echo", "chat", "idle", "churn", "sparse")
# A --start-at further away than this is a mistake (seconds given for nanoseconds,
# say) rather than a plan: the generator would hold its connections that long.
MAX_START_AHEAD_NS = 600 * 10**9


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
    add("--procs", metavar="K", type=number_in(int, 1, MAX_PROCS), default=None,
        help="worker processes (default: one per CPU the generator may use, or as many "
             "as the connections need, each below its descriptor limit); a K that "
             "cannot hold --clients is refused before any connect")
    add("--source", metavar="A[-B]", default=None,
        help="bind each connection to one of these local IPv4 addresses (an inclusive "
             "range), taken in turn: each reaches a server port from its own ephemeral "
             "ports.  Default: none; on loopback, 127.0.0.2 up to .250, as many as "
             "keep each below half its ports, when one address would pass that")
    add("--connect-rate", metavar="N", type=number_in(float, 1), default=None,
        help="at most N connects per second over all workers (default: no pacing, "
             f"{CONNECT_BATCH} in progress per worker); refused or timed-out connects "
             "are retried with back-off and counted")
    add("--active", metavar="K", type=number_in(int, 1), default=1,
        help="sparse: how many of the --clients connections ping-pong (default 1)")
    add("--connect-timeout", metavar="S", type=number_in(float, 0.01, 60), default=3.0,
        help="seconds to wait for each connection (default 3)")
    add("--seed", metavar="N", type=int, default=1,
        help="seed of payloads and Poisson gaps (default 1)")
    add("--cpus", metavar="LIST", type=cpu_list, default=None,
        help="pin workers to these CPUs, e.g. 0 or 0,1 (default: no pinning)")
    add("--start-at", metavar="UNIX_NS", type=number_in(int, 1), default=None,
        help="open the window at this instant (nanoseconds since the epoch, this host's "
             "clock), after at least --warmup of load: generators on several hosts then "
             "share one window; a window that opens late is recorded as it ran")
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
    if args.start_at is not None and args.start_at > time.time_ns() + MAX_START_AHEAD_NS:
        raise UsageError(f"--start-at {args.start_at} is more than "
                         f"{MAX_START_AHEAD_NS // 10**9} s away (nanoseconds since the epoch?)")
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


def _sources(args: argparse.Namespace) -> list[str] | None:
    if args.source is None:
        return None
    try:
        sources = parse_sources(args.source)
    except ValueError as exc:
        raise UsageError(f"--source: {exc}") from None
    if not args.allow_remote and not all(ipaddress.ip_address(a).is_loopback for a in sources):
        raise UsageError(f"--source {args.source}: not loopback (use --allow-remote)")
    return sources


def _spread(args: argparse.Namespace, family: int, address: str) -> Spread:
    sources = _sources(args)
    if sources and family != socket.AF_INET:
        raise UsageError(f"--source is IPv4 and {args.host} is not")
    nofile = raise_nofile()
    cpus = len(args.cpus or os.sched_getaffinity(0))
    if args.workload == "churn":
        # Churn cycles its connections: no count to hold, only one per slot at a time.
        return Spread(args.procs or cpus, sources or [], nofile.soft, nofile)
    loopback_v4 = family == socket.AF_INET and ipaddress.ip_address(address).is_loopback
    try:
        return spread(args.clients, args.procs, cpus, sources, loopback_v4, nofile)
    except CapacityError as exc:
        raise UsageError(f"cannot hold {args.clients} connections: {exc}") from None


def _config(args: argparse.Namespace, where: Spread) -> engine.Config:
    return engine.Config(
        workload=args.workload, host=args.host, port=args.port, clients=args.clients,
        size=args.size, rate=args.rate, arrival=args.arrival, depth=args.depth,
        duration=args.duration, warmup=args.warmup, procs=where.procs,
        active=args.active, connect_timeout=args.connect_timeout, drain=args.drain,
        seed=args.seed, cpus=args.cpus, start_at_ns=args.start_at, sources=where.sources,
        connect_rate=args.connect_rate, nofile_limit=where.nofile.soft,
    )


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        family, address = _resolve(args.host, args.port)
        where = _spread(args, family, address)
    except UsageError as exc:
        print(f"muxbench load: {exc}", file=sys.stderr)
        return 2
    cfg = _config(args, where)

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
