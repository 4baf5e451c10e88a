"""`muxbench cluster up|down|status`: hosts made of network namespaces on this
machine, a Dask scheduler on their bridge and a Dask worker inside each, for
`muxbench bench --cluster ADDRESS` to run suites across (docs/cluster.md)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import os
import re
import shutil
import signal
import sys

from bench.cluster import daemons, hosts
from muxbench.argtypes import cpu_list, number_in

EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_PORT = 8786
# What tc accepts as a rate: a number and a unit in bits or bytes per second.
RATE_RE = re.compile(r"\d+(\.\d+)?([kmgt]?bit|[kmgt]?bps)", re.I)


def _prefix(text: str) -> str:
    if not hosts.PREFIX_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"a prefix is a lower-case letter then up to 7 letters or digits, got {text!r}")
    return text


def _rate(text: str) -> str:
    if not RATE_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"a rate as tc takes it (e.g. 100mbit, 1gbit), "
                                         f"got {text!r}")
    return text


def _subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        net = None
    if net is None or net.version != 4 or net.prefixlen != 24 \
            or not net.subnet_of(hosts.BENCH_NET):
        raise argparse.ArgumentTypeError(
            f"a /24 inside {hosts.BENCH_NET} (e.g. 198.18.7.0/24), got {text!r}")
    return net


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="make the hosts, start a scheduler and a worker on each; "
                        "print the scheduler's address last")
    down = sub.add_parser("down", help="end every process and remove every namespace and "
                          "link the cluster has; safe to run twice")
    status = sub.add_parser("status", help="what of the cluster exists; exit 0 only if all "
                            "of it is up")
    for each in (up, down, status):
        each.add_argument("--prefix", type=_prefix, default=hosts.DEFAULT_PREFIX,
                          help="names of namespaces and links start with PREFIX- "
                               "(default %(default)s); one cluster per prefix")
    up.add_argument("--generators", type=number_in(int, 1, hosts.MAX_GENERATORS), default=2,
                    metavar="N", help="generator hosts beside the server host (default 2)")
    up.add_argument("--subnet", type=_subnet,
                    help="the /24 of 198.18.0.0/15 to address the hosts from "
                         "(default: 198.18.0.0/24 for the default prefix, one derived "
                         "from the prefix otherwise)")
    up.add_argument("--port", type=number_in(int, 0, 65535), default=DEFAULT_PORT,
                    help="the scheduler's port on the bridge (default %(default)s; "
                         "0: any free one)")
    up.add_argument("--server-cpus", type=cpu_list, metavar="LIST",
                    help="pin the server host's worker, and so what it runs, to these CPUs "
                         "(e.g. 0 or 0-1), and the scheduler and generator hosts' workers "
                         "to the others, as if each were its own machine (default: no "
                         "pinning)")
    up.add_argument("--rate-limit", type=_rate, metavar="RATE",
                    help="cap every host's link each way (tc tbf), e.g. 1gbit")
    up.add_argument("--delay", type=number_in(float, 0.0, 10000.0), metavar="MS",
                    help="add MS milliseconds each way (tc netem; skipped, with a "
                         "message, where the kernel has no netem)")
    up.add_argument("--loss", type=number_in(float, 0.0, 100.0), metavar="PCT",
                    help="drop PCT%% of packets each way (netem, as --delay)")
    up.add_argument("--timeout", type=number_in(float, 1.0), default=90.0, metavar="S",
                    help="seconds for the scheduler and every worker to be ready "
                         "(default %(default)s)")


def run(args: argparse.Namespace) -> int:
    if args.action != "status" and (why := hosts.missing_privilege()):
        print(f"muxbench cluster {args.action}: making network namespaces {why}; "
              "run it as root", file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.action == "status":
            return status(args.prefix)
        return up(args) if args.action == "up" else down(args.prefix)
    except (hosts.HostsError, daemons.DaemonError, OSError) as exc:
        print(f"muxbench cluster {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def up(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("distributed") is None:
        print("muxbench cluster up: Dask is not installed: pip install 'muxbench[cluster]' "
              "(make install does)", file=sys.stderr)
        return EXIT_FAILED
    if args.server_cpus and (why := _bad_split(args.server_cpus)):
        print(f"muxbench cluster up: --server-cpus: {why}", file=sys.stderr)
        return EXIT_USAGE
    prefix = args.prefix
    made = hosts.existing(prefix)
    if made["namespaces"] or made["links"] or hosts.state_dir(prefix).exists():
        print(f"muxbench cluster up: a cluster {prefix!r} exists (or its remains): "
              f"run `muxbench cluster down --prefix {prefix}` first", file=sys.stderr)
        return EXIT_FAILED
    state = hosts.plan(prefix, args.generators, args.subnet)
    if holder := hosts.subnet_in_use(state["subnet"]):
        print(f"muxbench cluster up: {state['subnet']} is in use here ({holder}); "
              "choose another with --subnet or --prefix", file=sys.stderr)
        return EXIT_FAILED
    ready = False
    # A `kill` of a half-made cluster's maker undoes it, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        ready = _bring_up(state, args)
    finally:
        if not ready:
            teardown(prefix, state)
    return 0


def _bad_split(server: list[int]) -> str | None:
    usable = os.sched_getaffinity(0)
    if not set(server) <= usable:
        return f"CPUs {sorted(set(server) - usable)} are not among this machine's {sorted(usable)}"
    if not usable - set(server):
        return f"no CPU of {sorted(usable)} would be left for the generator hosts"
    return None


def _others(server: list[int] | None) -> list[int] | None:
    return sorted(os.sched_getaffinity(0) - set(server)) if server else None


def _bring_up(state: dict, args: argparse.Namespace) -> bool:
    directory = hosts.state_dir(state["prefix"])
    (directory / "work").mkdir(parents=True)
    state.update(state="starting", namespaces=[], links=[], scheduler=None)

    def record(kind: str, name: str) -> None:
        state[kind].append(name)
        hosts.save_state(state)

    hosts.save_state(state)
    hosts.make(state, record)
    done, skipped = hosts.shape(state, args.rate_limit, args.delay, args.loss)
    for line in skipped:
        print(f"muxbench cluster up: {line}", file=sys.stderr)
    state["shaping"] = {"rate": args.rate_limit, "delay_ms": args.delay,
                        "loss_pct": args.loss, "applied": done, "skipped": skipped}
    state["scheduler"] = daemons.start(
        daemons.scheduler_argv(directory, state["bridge_address"], args.port),
        directory / "scheduler.log", cpus=_others(args.server_cpus))
    hosts.save_state(state)
    for host in state["hosts"]:
        cpus = args.server_cpus if host["role"] == "server" else _others(args.server_cpus)
        host["worker"] = daemons.start(daemons.worker_argv(directory, host),
                                       directory / f"{host['name']}.log", host["netns"], cpus)
        hosts.save_state(state)
    address = daemons.scheduler_address(directory, state["scheduler"], args.timeout)
    state["scheduler"]["address"] = address
    daemons.wait_ready(address, state["hosts"], args.timeout)
    state["state"] = "up"
    path = hosts.save_state(state)
    print(f"bridge {state['bridge']} {state['bridge_address']}/24")
    for host in state["hosts"]:
        cpus = host["worker"]["cpus"]
        print(f"host {host['name']:<7} {host['netns']:<16} {host['address']:<14} "
              f"worker pid {host['worker']['pid']} ({host['role']}=1)"
              + (f" on CPUs {','.join(map(str, cpus))}" if cpus else ""))
    for line in done:
        print(line)
    print(f"state in {path}; `muxbench cluster down --prefix {state['prefix']}` removes all")
    print(address, flush=True)
    return True


def teardown(prefix: str, state: dict | None) -> tuple[int, dict[str, list[str]]]:
    """End every process of the cluster and remove what it made; what was removed."""
    records = []
    if state:
        records = [r for r in [state.get("scheduler")]
                   + [h.get("worker") for h in state.get("hosts", [])] if r]
    inside = [pid for ns in hosts.existing(prefix)["namespaces"]
              for pid in hosts.namespace_pids(ns)]
    killed = daemons.kill(records, f"{hosts.state_dir(prefix)}/", inside)
    removed = hosts.remove(prefix)
    shutil.rmtree(hosts.state_dir(prefix), ignore_errors=True)
    with contextlib.suppress(OSError):  # only when no other cluster is up
        hosts.RUN_ROOT.rmdir()
    return killed, removed


def down(prefix: str) -> int:
    state = None
    with contextlib.suppress(OSError, ValueError):
        state = hosts.load_state(prefix)
    killed, removed = teardown(prefix, state)
    if not (killed or removed["namespaces"] or removed["links"] or state):
        print(f"nothing of cluster {prefix!r} to remove")
        return 0
    print(f"cluster {prefix!r} removed: {killed} processes ended, "
          f"namespaces {' '.join(removed['namespaces']) or '-'}, "
          f"links {' '.join(removed['links']) or '-'}")
    return 0


def status(prefix: str) -> int:
    state = None
    with contextlib.suppress(OSError, ValueError):
        state = hosts.load_state(prefix)
    made = hosts.existing(prefix)
    if state is None:
        if not (made["namespaces"] or made["links"]):
            print(f"cluster {prefix!r}: not up")
            return EXIT_FAILED
        print(f"cluster {prefix!r}: remains without a state file: namespaces "
              f"{' '.join(made['namespaces']) or '-'}, links {' '.join(made['links']) or '-'}"
              f"; `muxbench cluster down --prefix {prefix}` removes them")
        return EXIT_FAILED
    scheduler = state.get("scheduler") or {}
    address = scheduler.get("address", "-")
    checks = [scheduler and daemons.alive(scheduler), daemons.reachable(address),
              state["bridge"] in made["links"]]
    lines = [f"scheduler {address}: pid {scheduler.get('pid', '-')} "
             f"{_word(checks[0], 'alive', 'gone')}, "
             f"{_word(checks[1], 'accepting', 'not accepting')}",
             f"bridge {state['bridge']} {state['bridge_address']}/24: "
             f"{_word(checks[2], 'present', 'missing')}"]
    for host in state["hosts"]:
        worker = host.get("worker") or {}
        ok = [host["netns"] in made["namespaces"], host["veth"] in made["links"],
              bool(worker) and daemons.alive(worker)]
        checks += ok
        lines.append(f"host {host['name']:<7} ({host['role']}) {host['netns']} "
                     f"{host['address']}: namespace {_word(ok[0], 'present', 'missing')}, "
                     f"link {_word(ok[1], 'present', 'missing')}, "
                     f"worker pid {worker.get('pid', '-')} {_word(ok[2], 'alive', 'gone')}")
    shaping = state.get("shaping") or {}
    lines += [f"links: {line}" for line in shaping.get("applied", []) + shaping.get("skipped", [])]
    whole = all(checks)
    print(f"cluster {prefix!r}: {'up' if whole else 'broken'} ({state['subnet']})")
    print("\n".join(lines))
    return 0 if whole else EXIT_FAILED


def _word(ok: bool, yes: str, no: str) -> str:
    return yes if ok else no
