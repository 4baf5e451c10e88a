"""`muxbench serve MODEL`: run one model until SIGTERM or SIGINT.

The first stdout line, flushed, says `listening on HOST:PORT` with the real
port, so a harness that asked for port 0 learns where to connect.  Diagnostics
go to stderr, one line each.  Exit status: 0 after a signal, 2 for bad
arguments or an address that cannot be listened on.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from muxbench.argtypes import number_in, positive_int
from muxbench.limits import raise_nofile
from muxbench.net import is_loopback
from servers import shutdown
from servers.models import MODELS, Options, load
from servers.net import ListenError, format_address, tcp_listen
from servers.protocol import PROTOCOLS, Limits

log = logging.getLogger("muxbench.serve")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].split(": ", 1)[1]
    parser.add_argument("model", choices=list(MODELS), metavar="MODEL",
                        help="one of: " + ", ".join(MODELS))
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="echo",
                        help="echo (RFC 862) or chat (newline-delimited room); default echo")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; a name or IPv6 works)")
    parser.add_argument("--port", type=number_in(int, 0, 65535), default=0,
                        help="port to bind; 0 picks a free one (default)")
    defaults = Limits()
    parser.add_argument("--max-clients", type=positive_int, default=None,
                        help="refuse connections beyond this many (default: no limit; thread and "
                             "fork: what pids, map entries and memory allow here, said at start)")
    parser.add_argument("--max-line", type=positive_int, default=defaults.max_line,
                        help=f"chat: longest line in bytes (default {defaults.max_line})")
    parser.add_argument("--max-output", type=positive_int, default=defaults.max_output,
                        help="bytes queued for one client before it is dropped at once; "
                             "chat stops reading the room while a member has more than "
                             f"half of it queued (default {defaults.max_output})")
    parser.add_argument("--max-stall", type=number_in(float, 0.001, 3600),
                        default=defaults.max_stall, metavar="SECONDS",
                        help="chat: seconds a member with more than half --max-output "
                             "queued may take nothing before it is dropped "
                             f"(default {defaults.max_stall:g})")
    parser.add_argument("--interval", type=number_in(float, 0, 10), default=0.0,
                        help="polling only: seconds to sleep between sweeps (default 0: busy-wait)")
    workers = ", ".join(name for name, model in MODELS.items() if model.takes_workers)
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help=f"{workers} only: worker threads or processes (default: the "
                             "number of CPUs this process may run on)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="log only warnings (dropped and refused clients), not every drop")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format=f"muxbench serve[{args.model}]: %(message)s",
        stream=sys.stderr,
    )
    model = MODELS[args.model]
    reason = model.unavailable_reason()
    if reason:
        print(f"muxbench serve: model {args.model} is unavailable: {reason}", file=sys.stderr)
        return 2
    if args.interval and args.model != "polling":
        print("muxbench serve: --interval applies only to the polling model", file=sys.stderr)
        return 2
    if args.workers and not model.takes_workers:
        print(f"muxbench serve: --workers does not apply to the {args.model} model",
              file=sys.stderr)
        return 2
    # The CPUs this server was given (a harness pins it): one worker each.
    workers = args.workers or len(os.sched_getaffinity(0))
    nofile = raise_nofile()
    try:
        listener = tcp_listen(args.host, args.port, reuse_port=model.reuse_port)
    except ListenError as exc:
        print(f"muxbench serve: {exc}", file=sys.stderr)
        return 2
    # Said once, listening: how many clients one process of this server can hold.
    log.info("%s", nofile.describe())
    if not is_loopback(listener.getsockname()[0]):
        log.warning("bound to %s, which is not a loopback address: reachable from the network",
                    format_address(listener.getsockname()))
    max_clients = args.max_clients
    if max_clients is None and model.default_clients:
        max_clients = load(model.default_clients)(PROTOCOLS[args.protocol].private)
    limits = Limits(max_line=args.max_line, max_output=args.max_output,
                    max_stall=args.max_stall, max_clients=max_clients)
    protocol = PROTOCOLS[args.protocol](limits)
    try:
        wake_fd = shutdown.install()  # a signal during it raises Shutdown at its end
        server = model.server_class()(
            listener, protocol, Options(interval=args.interval, wake_fd=wake_fd, workers=workers))
        sized = f", {workers} workers" if model.takes_workers else ""
        print(f"muxbench serve: {args.model} ({args.protocol}{sized}) listening on "
              f"{format_address(listener.getsockname())}", flush=True)
        server.run()
    except shutdown.Shutdown:
        pass
    finally:
        listener.close()
    return 0
