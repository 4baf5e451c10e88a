"""`muxbench bench`: run a suite of trials and store results/<run-id>/results.json.

Trials of different models are interleaved and repeated; results.json is
rewritten atomically after every trial, so an interrupted or killed run keeps
every trial it completed.  Ctrl-C (or SIGTERM) stops within seconds: the
current trial's processes are killed, the file is written with status
"interrupted", and the exit status is 130.

Beside the built-in models, any server -- in any language -- runs the same
trials from its own command line (`--server NAME=COMMAND`): the C reference
server is one such server.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.results import SCHEMA_VERSION, ResultsWriter, new_run_id, point_latest, utc_now
from bench.run import capacity
from bench.run.console import Display, describe, summary_table
from bench.run.launch import READY_TIMEOUT, CommandServer, TrialSpec
from bench.run.runner import Runner
from bench.run.scenarios import (
    SCENARIOS,
    SUITE_SETTINGS,
    SUITES,
    PlannedTrial,
    connections,
    load_args,
    plan,
    scenario_models,
)
from bench.run.trial import stopped_record
from bench.sample import cgroup, taskstats
from bench.sample.cgroup import CpuCgroup
from bench.sample.environment import Placement, environment, loadavg, placement
from muxbench import procs
from muxbench.argtypes import cpu_list, float_where, positive_int
from servers.models import MODELS
from servers.reference import C_SERVER

EVERY = "all"  # --models all: every available model, also beside --server

EPILOG = f"""\
Bring your own server:
  muxbench bench --server NAME='COMMAND ... {{port}} ...' [--server-protocol echo|chat]
runs a server of yours, in any language, through every scenario of that
protocol open to all models, exactly as the built-in models run: pinned to the
server CPU, sampled, cleaned up, stored under the model name NAME (its command
line is kept in the run's environment.servers).  The command is split like a
shell's words and run without a shell, in the current directory; {{port}}
(required) and {{host}} (127.0.0.1) are replaced by the address it must listen
on, on a free port the harness picks.  It need print nothing: it is ready once
a connection to that address succeeds, within --ready-timeout seconds, or the
trial fails with the reason (its exit status, or "not listening", and the last
lines of its output) and the suite goes on.  With --server and no --models,
only the --server entries run; --models names the built-in ones to run beside
them ({EVERY}: every available one, {C_SERVER} included).  Example:
  muxbench bench --suite quick --server mine='./echo-server --port {{port}}' --models epoll
"""


def _names(values: list[str] | None) -> list[str]:
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].split(": ", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep EPILOG's lines
    parser.epilog = EPILOG
    parser.add_argument("--suite", choices=SUITES, default="default",
                        help="quick (<= 2 min, a few points of every scenario), default "
                             "(<= 10 min, what `make bench` runs) or full (up to 10000 "
                             "clients, 5 repeats); default: default")
    parser.add_argument("--models", action="append", metavar="M[,M...]",
                        help="only these models (repeatable; default every available one, "
                             f"plus {C_SERVER} where gcc exists, or none beside --server; "
                             f"'{EVERY}': every available one)")
    parser.add_argument("--server", action="append", metavar="NAME=COMMAND",
                        help="also run this server, started by COMMAND with {host} and "
                             "{port} filled in (repeatable; see below)")
    parser.add_argument("--server-protocol", choices=("echo", "chat"), default=None,
                        help="what every --server speaks: echo (RFC 862) or chat (every "
                             "line to every client); default echo")
    parser.add_argument("--ready-timeout", default=READY_TIMEOUT, metavar="S",
                        type=float_where(lambda v: v > 0, "must be a positive number"),
                        help="seconds a server has to start listening before its trial "
                             f"fails (default {READY_TIMEOUT:g})")
    parser.add_argument("--scenarios", action="append", metavar="S[,S...]",
                        help="only these scenarios (repeatable): " + ", ".join(SCENARIOS))
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="repeats of every point (default: the suite's)")
    parser.add_argument("--duration-scale", default=1.0,
                        type=float_where(lambda v: v > 0, "must be a positive number"),
                        help="multiply every measurement window and warm-up (default 1)")
    parser.add_argument("--server-cpus", type=cpu_list, default=None, metavar="LIST",
                        help="pin every server to these CPUs, e.g. 0-3 (default: the first "
                             "usable CPU); the load generator gets every other one, and the "
                             "multi-worker models one worker per server CPU")
    parser.add_argument("--out", default="results",
                        help="directory holding the runs and the `latest` link (default results)")
    parser.add_argument("--no-cgroup", action="store_true",
                        help="measure server CPU with psutil even where a cgroup could be made")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials the suite would run, and run none")


def available_models(wanted: list[str]) -> tuple[list[str], dict[str, str],
                                                 dict[str, CommandServer]]:
    """(built-in models to run, {model: why it is skipped}, {name: command server}:
    the C reference where it can be built); `wanted` empty: every one."""
    skipped: dict[str, str] = {}
    models = []
    for name, model in MODELS.items():
        reason = model.unavailable_reason()
        if reason:
            skipped[name] = reason
        elif not wanted or name in wanted:
            models.append(name)
    servers = {}
    if not wanted or C_SERVER in wanted:
        try:
            from servers.reference import reference_server_template
            command = reference_server_template()
            if command is None:
                skipped[C_SERVER] = "no C compiler found, the C reference server is skipped"
            else:
                servers[C_SERVER] = CommandServer(C_SERVER, command, "echo")
        except (ImportError, RuntimeError, OSError) as exc:
            skipped[C_SERVER] = f"C reference server unavailable: {exc}"
    return models, skipped, servers


def command_servers(values: list[str] | None, protocol: str) -> dict[str, CommandServer]:
    """The --server entries, each checked (ValueError: one line on the first bad one)."""
    servers: dict[str, CommandServer] = {}
    for text in values or []:
        server = CommandServer.parse(text, protocol, taken={*MODELS, C_SERVER, EVERY})
        if server.name in servers:
            raise ValueError(f"--server {server.name}: given twice")
        servers[server.name] = server
    return servers


def _spec(planned: PlannedTrial, args: argparse.Namespace, servers: dict[str, CommandServer],
          where: Placement) -> TrialSpec:
    settings = SUITE_SETTINGS[args.suite]
    sc = planned.scenario
    sized = planned.model in MODELS and MODELS[planned.model].takes_workers
    conns = connections(planned.point)
    # A generator that spreads by itself (it has --source) picks its processes too.
    spreads = bool(sc.family) and capacity.GENERATOR_SPREADS
    load_procs = sources = None
    if spreads:
        sources = capacity.sources(conns, capacity.Box.read())
    elif sc.family:
        load_procs = capacity.generator_procs(conns, capacity.Box.read(),
                                              len(where.client_cpus))
    return TrialSpec(
        scenario=sc.name, workload=sc.workload, model=planned.model, protocol=sc.protocol,
        point=planned.point, repeat=planned.repeat,
        duration=(sc.duration or settings.duration) * args.duration_scale,
        # A server accepts a thousand connections in a fraction of a second, or a
        # second on a busy machine: the window must not open before it has them all.
        warmup=((sc.warmup or settings.warmup) + conns / 1000 * sc.settle_per_1000)
        * args.duration_scale,
        family=sc.family, load_procs=load_procs, generator_spreads=spreads, sources=sources,
        accepts_per_s=sc.accepts_per_s,
        sample_interval=settings.sample_interval,
        load_args=load_args(sc, planned.point), connections=connections(planned.point),
        server=servers.get(planned.model), ready_timeout=args.ready_timeout,
        # Every model gets the same CPUs; the multi-worker ones one worker on each.
        workers=planned.point.get("workers", len(where.server_cpus)) if sized else None,
        count_syscalls=sc.count_syscalls)


def _run_dir(out: Path, suite: str) -> Path:
    base = new_run_id(suite)
    run_dir, n = out / base, 1
    while run_dir.exists():  # two runs in one second (tests do that)
        n += 1
        run_dir = out / f"{base}.{n}"
    run_dir.mkdir(parents=True)
    return run_dir


class OpenError(Exception):
    """Where the trials were to run cannot be had (no cluster, say): one line, exit 2."""


# Where a suite's trials run: (a runner -- run(index, display) gives a trial's
# record, close() stops what is left --, and what the run's environment records
# of a cluster, None for this machine).  The local one is the default; a cluster
# one (bench/cluster/) is given by the command that offers --cluster.
Opener = Callable[[argparse.Namespace, list[TrialSpec], Placement], tuple[Any, dict | None]]


def local_opener(args: argparse.Namespace, specs: list[TrialSpec],
                 where: Placement) -> tuple[Runner, None]:
    return Runner(specs, where, use_cgroup=not args.no_cgroup), None


def run(args: argparse.Namespace, opener: Opener = local_opener) -> int:
    wanted_models, wanted_scenarios = _names(args.models), _names(args.scenarios)
    try:
        if args.server_protocol and not args.server:
            raise ValueError("--server-protocol describes --server entries, and none is given")
        own = command_servers(args.server, args.server_protocol or "echo")
    except ValueError as exc:
        print(f"muxbench bench: {exc}", file=sys.stderr)
        return 2
    known = [*MODELS, C_SERVER, *own]
    unknown = ([m for m in wanted_models if m not in known and m != EVERY]
               + [s for s in wanted_scenarios if s not in SCENARIOS])
    if unknown:
        print(f"muxbench bench: unknown model or scenario: {', '.join(unknown)} "
              f"(models: {', '.join(known)}, or {EVERY}; scenarios: "
              f"{', '.join(SCENARIOS)})", file=sys.stderr)
        return 2
    if own and not wanted_models:
        models, skipped, servers = [], {}, {}  # the user's servers alone
    else:
        models, skipped, servers = available_models(
            [] if EVERY in wanted_models else wanted_models)
    servers = {**own, **servers}  # the C reference last, as the limit drawn over the rest
    scenarios = [SCENARIOS[s] for s in wanted_scenarios] or [
        s for s in SCENARIOS.values() if args.suite in s.runs_in]
    repeats = args.repeats or SUITE_SETTINGS[args.suite].repeats
    planned = plan(args.suite, scenarios, models, repeats, servers)
    if not planned:
        print("muxbench bench: nothing to run for these models and scenarios", file=sys.stderr)
        return 2
    try:
        where = placement(args.server_cpus)
    except ValueError as exc:
        print(f"muxbench bench: --server-cpus: {exc}", file=sys.stderr)
        return 2
    specs = [_spec(p, args, servers, where) for p in planned]
    if args.dry_run:
        for spec in specs:
            print(describe(spec.scenario, spec.model, spec.point, spec.repeat))
        print(f"{len(specs)} trials")
        return 0
    meta = {s.name: {**s.metadata(), "models": scenario_models(s, args.suite, models, servers)}
            for s in scenarios}
    return _execute(args, specs, meta, skipped, servers, where, opener)


def _execute(args, specs: list[TrialSpec], scenarios: dict, skipped: dict[str, str],
             servers: dict[str, CommandServer], where: Placement, opener: Opener) -> int:
    out = Path(args.out)
    try:
        runner, cluster = opener(args, specs, where)
    except (OpenError, ValueError) as exc:
        print(f"muxbench bench: {exc}", file=sys.stderr)
        return 2
    try:
        run_dir = _run_dir(out, args.suite)
    except OSError as exc:
        runner.close()
        print(f"muxbench bench: cannot create a run directory under {out}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    env = environment(where)
    if cluster is not None:  # the server's placement is the server host's
        env["placement"] = cluster.pop("placement", env["placement"])
        env["cluster"] = cluster
    env["skipped_models"] = skipped
    env["servers"] = {name: {"command": server.command, "protocol": server.protocol}
                      for name, server in servers.items()}
    env["cpu_accounting"] = _cpu_accounting(args.no_cgroup)
    env["ctx_switch_accounting"] = ("taskstats: one kernel request per process"
                                    if taskstats.shared() else "/proc: one file per thread")
    results = {"schema_version": SCHEMA_VERSION, "run_id": run_dir.name, "suite": args.suite,
               "status": "running", "started_at": utc_now(), "finished_at": None,
               "environment": env, "scenarios": scenarios,
               "trials": []}
    path = run_dir / "results.json"
    writer = ResultsWriter(path)

    def save() -> None:
        try:
            writer.save(results)
        except OSError as exc:
            raise _Unwritable(f"cannot write {path}: {exc.strerror or exc}") from None

    try:
        save()
    except _Unwritable as exc:
        print(f"muxbench bench: {exc}", file=sys.stderr)
        return 2
    point_latest(out, run_dir)
    previous = _install_interrupt()
    error: str | None = None
    own_cpus = os.sched_getaffinity(0)
    try:
        if where.pinned and cluster is None:
            # The orchestrator (and so the load generator it starts) stays off the server's CPU.
            os.sched_setaffinity(0, where.client_cpus)
        with Display(len(specs)) as display:
            placed = where.note if cluster is None else cluster["note"]
            display.note(f"muxbench bench: {len(specs)} trials -> {path}  ({placed})")
            for name, reason in skipped.items():
                display.note(f"muxbench bench: skipping {name}: {reason}")
            for name, server in servers.items():
                display.note(f"muxbench bench: {name} ({server.protocol}): {server.command}")
            if env["loadavg_before"][0] > (env["cpus"] or 1):
                display.note(f"muxbench bench: warning: load average "
                             f"{env['loadavg_before'][0]:.1f} on {env['cpus']} CPUs; other work "
                             "competes with the server and the load generator")
            limits = capacity.Limits()
            for index in range(len(specs)):
                results["trials"].append(_run_or_stop(runner, index, limits, display))
                save()
        results["status"] = "complete"
    except KeyboardInterrupt:
        results["status"] = "interrupted"
    except _Unwritable as exc:  # the run directory went away or turned read-only
        results["status"] = "interrupted"
        error = str(exc)
    finally:
        runner.close()
        procs.kill_all()
        cgroup.remove_own()
        os.sched_setaffinity(0, own_cpus)
        results["finished_at"] = utc_now()
        env["loadavg_after"] = loadavg()
        if error is None:
            try:
                save()
            except _Unwritable as exc:
                error = str(exc)
        _restore(previous)
    if error is not None:
        print(f"muxbench bench: {error}", file=sys.stderr)
        return 2
    Display(0).console.print(summary_table(results))
    failed = sum(t["status"] != "ok" for t in results["trials"])
    print(f"muxbench bench: {results['status']}: {len(results['trials'])} trials "
          f"({failed} not ok) in {path}", file=sys.stderr)
    return 130 if results["status"] == "interrupted" else 0


def _run_or_stop(runner: Runner, index: int, limits: capacity.Limits, display: Display) -> dict:
    """Run trial `index`, unless its model cannot hold the point (a family's
    scenarios): then it is "stopped" without running, and a started server is
    dropped.  A model that stops at N in the run is not tried past N."""
    spec = runner.specs[index]
    if not spec.family:
        return runner.run(index, display)
    n = capacity.size(spec.point)
    stop = limits.past(spec.family, spec.model, n)
    if stop is None:
        why = capacity.refusal(spec.model, spec.point, spec.connections, spec.workers,
                               capacity.Box.read(), capacity.GENERATOR_SPREADS)
        if why is not None:
            stop = limits.record(spec.family, spec.model, n, why, inclusive=False)
    if stop is not None:
        runner.drop(index)
        record = stopped_record(spec, stop)
        display.finished(describe(spec.scenario, spec.model, spec.point, spec.repeat), record)
        return record
    record = runner.run(index, display)
    if record["status"] == "stopped":
        stopped = record["stopped"]
        limits.record(spec.family, spec.model, stopped["at"], stopped["why"],
                      stopped["inclusive"])
    return record


class _Unwritable(Exception):
    """results.json cannot be written: the run ends with what is already saved."""


def _cpu_accounting(disabled: bool) -> str:
    if disabled:
        return "psutil (cgroup accounting disabled by --no-cgroup)"
    probe = CpuCgroup.create("probe")
    if probe is None:
        return "psutil: tree walk plus reaped children (no writable CPU cgroup here)"
    probe.remove()
    return f"cgroup {probe.version} under {probe.path.parent} (one group per server)"


def _install_interrupt() -> dict:
    def interrupted(signum, frame):
        # Once: the clean-up that follows must not be interrupted in turn.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, interrupted)
    return previous


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
